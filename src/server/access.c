/* Who may connect over TCP (see access.h). The lists are short and read
 * once per accept, so a linear scan is all they need. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "access.h"
#include "services/services.h"

struct access_list access_allow, access_deny;
static struct access_log refusals;

static int fail(char *err, size_t errlen, const char *opt, const char *entry, const char *why)
{
    snprintf(err, errlen, "%s '%s': %s", opt, entry, why);
    return -1;
}

/* One ADDR[/PREFIX] entry, entry[0..len). */
static int parse_entry(struct access_net *out, const char *entry, size_t len, const char *opt,
                       char *err, size_t errlen)
{
    char text[INET6_ADDRSTRLEN + 8];
    if (len == 0)
        return fail(err, errlen, opt, "", "an empty entry: want ADDR[/PREFIX],...");
    if (len >= sizeof text) {
        snprintf(err, errlen, "%s '%.*s': not an address (want ADDR[/PREFIX], e.g. 192.0.2.0/24 or 2001:db8::/32)",
                 opt, (int)(len > 64 ? 64 : len), entry);
        return -1;
    }
    memcpy(text, entry, len);
    text[len] = '\0';
    char *slash = strchr(text, '/');
    if (slash)
        *slash = '\0';
    memset(out, 0, sizeof *out);
    unsigned max;
    if (inet_pton(AF_INET, text, out->addr.bytes) == 1) {
        out->addr.family = 4;
        max = 32;
    } else if (inet_pton(AF_INET6, text, out->addr.bytes) == 1) {
        out->addr.family = 6;
        max = 128;
        /* ::ffff:a.b.c.d is the IPv4 address, as peers are compared. */
        static const uint8_t mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
        if (memcmp(out->addr.bytes, mapped, 12) == 0) {
            memmove(out->addr.bytes, out->addr.bytes + 12, 4);
            memset(out->addr.bytes + 4, 0, 12);
            out->addr.family = 4;
            max = 32;
            if (slash) {  /* a prefix counts the mapped form's 96 bits */
                char *end;
                errno = 0;
                long p = strtol(slash + 1, &end, 10);
                if (errno || end == slash + 1 || *end || p < 96 || p > 128)
                    return fail(err, errlen, opt, text, "a prefix of an IPv4-mapped address is from 96 to 128");
                out->prefix = (uint8_t)(p - 96);
                return 0;
            }
        }
    } else {
        snprintf(err, errlen, "%s '%s': not an address (want ADDR[/PREFIX], e.g. 192.0.2.0/24 or 2001:db8::/32)",
                 opt, text);
        return -1;
    }
    out->prefix = (uint8_t)max;
    if (slash) {
        const char *p = slash + 1;
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (errno || end == p || *end || *p < '0' || *p > '9' || v < 0 || v > (long)max) {
            snprintf(err, errlen, "%s '%s/%s': the prefix must be a number from 0 to %u", opt, text, p, max);
            return -1;
        }
        out->prefix = (uint8_t)v;
    }
    /* Bits past the prefix are ignored: 192.0.2.7/24 is 192.0.2.0/24. */
    for (unsigned bit = out->prefix; bit < max; bit++)
        out->addr.bytes[bit / 8] &= (uint8_t)~(0x80u >> (bit % 8));
    return 0;
}

int access_list_add(struct access_list *l, const char *spec, const char *opt, char *err, size_t errlen)
{
    const char *p = spec;
    for (;;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        struct access_net net;
        if (parse_entry(&net, p, len, opt, err, errlen) < 0)
            return -1;
        if (l->n == l->cap) {
            size_t cap = l->cap * 2 + 8;
            struct access_net *grown = realloc(l->nets, cap * sizeof *grown);
            if (!grown) {
                snprintf(err, errlen, "%s: out of memory", opt);
                return -1;
            }
            l->nets = grown;
            l->cap = cap;
        }
        l->nets[l->n++] = net;
        if (!comma)
            return 0;
        p = comma + 1;
    }
}

void access_list_free(struct access_list *l)
{
    free(l->nets);
    memset(l, 0, sizeof *l);
}

static bool net_contains(const struct access_net *net, const struct access_addr *a)
{
    if (net->addr.family != a->family)
        return false;
    unsigned full = net->prefix / 8, rest = net->prefix % 8;
    if (memcmp(net->addr.bytes, a->bytes, full) != 0)
        return false;
    if (rest == 0)
        return true;
    uint8_t mask = (uint8_t)(0xff00u >> rest);
    return (net->addr.bytes[full] & mask) == (a->bytes[full] & mask);
}

bool access_list_match(const struct access_list *l, const struct access_addr *a)
{
    for (size_t i = 0; i < l->n; i++)
        if (net_contains(&l->nets[i], a))
            return true;
    return false;
}

bool access_permitted(const struct access_list *allow, const struct access_list *deny,
                      const struct access_addr *a)
{
    if (access_list_match(deny, a))
        return false;
    return allow->n == 0 || access_list_match(allow, a);
}

bool access_addr_from(const struct sockaddr *sa, socklen_t len, struct access_addr *out)
{
    memset(out, 0, sizeof *out);
    if (sa->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
        out->family = 4;
        memcpy(out->bytes, &((const struct sockaddr_in *)sa)->sin_addr, 4);
        return true;
    }
    if (sa->sa_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6)) {
        const struct in6_addr *in6 = &((const struct sockaddr_in6 *)sa)->sin6_addr;
        if (IN6_IS_ADDR_V4MAPPED(in6)) {
            out->family = 4;
            memcpy(out->bytes, in6->s6_addr + 12, 4);
        } else {
            out->family = 6;
            memcpy(out->bytes, in6->s6_addr, 16);
        }
        return true;
    }
    return false;
}

void access_addr_format(const struct access_addr *a, char *buf, size_t len)
{
    if (!inet_ntop(a->family == 4 ? AF_INET : AF_INET6, a->bytes, buf, (socklen_t)len))
        snprintf(buf, len, "?");
}

static uint32_t addr_hash(const struct access_addr *a)
{
    uint32_t h = 2166136261u;  /* FNV-1a */
    for (int i = 0; i < 16; i++)
        h = (h ^ a->bytes[i]) * 16777619u;
    return h ^ a->family;
}

bool access_log_refusal(struct access_log *lg, const struct access_addr *a, double now, uint64_t *held_back)
{
    if (now - lg->window_start >= ACCESS_LOG_WINDOW) {
        lg->window_start = now;
        lg->lines = 0;
    }
    /* A small table of the addresses logged lately: a slot taken by
     * another address is reused, which at worst logs an address again. */
    uint32_t i = addr_hash(a) % ACCESS_LOG_SLOTS;
    bool seen = lg->slot[i].used && memcmp(&lg->slot[i].addr, a, sizeof *a) == 0 &&
                now - lg->slot[i].at < ACCESS_LOG_WINDOW;
    if (seen || lg->lines >= ACCESS_LOG_BURST) {
        lg->suppressed++;
        return false;
    }
    lg->slot[i].addr = *a;
    lg->slot[i].at = now;
    lg->slot[i].used = true;
    lg->lines++;
    *held_back = lg->suppressed;
    lg->suppressed = 0;
    return true;
}

bool access_check_peer(const struct sockaddr *sa, socklen_t len)
{
    struct access_addr a;
    if ((access_allow.n == 0 && access_deny.n == 0) || !access_addr_from(sa, len, &a))
        return true;
    if (access_permitted(&access_allow, &access_deny, &a))
        return true;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t held;
    if (access_log_refusal(&refusals, &a, ts.tv_sec + ts.tv_nsec / 1e9, &held)) {
        char text[INET6_ADDRSTRLEN];
        access_addr_format(&a, text, sizeof text);
        if (held)
            log_msg(0, "refused a client from %s (not in --allow, or in --deny); "
                    "%llu more refusals not logged", text, (unsigned long long)held);
        else
            log_msg(0, "refused a client from %s (not in --allow, or in --deny)", text);
    }
    return false;
}
