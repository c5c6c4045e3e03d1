/* Who may connect over TCP: --allow and --deny lists of address prefixes,
 * checked when a client is accepted, and the rate-limited log of the
 * clients refused. Used by the loop thread (and cli.c while parsing). */
#ifndef USBD_ACCESS_H
#define USBD_ACCESS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* An address: IPv4 (family 4, the first 4 bytes) or IPv6 (family 6). An
 * IPv4 client reaching an IPv6 socket (::ffff:a.b.c.d) counts as IPv4. */
struct access_addr {
    uint8_t family;
    uint8_t bytes[16];
};

/* ADDR/PREFIX: the first prefix bits of addr. */
struct access_net {
    struct access_addr addr;
    uint8_t prefix;
};

struct access_list {
    struct access_net *nets;
    size_t n, cap;
};

/* Add the comma-separated ADDR[/PREFIX] entries of spec to l (opt names the
 * option in errors). 0, or -1 with a one-line message in err. */
int access_list_add(struct access_list *l, const char *spec, const char *opt, char *err, size_t errlen);
void access_list_free(struct access_list *l);
bool access_list_match(const struct access_list *l, const struct access_addr *a);

/* May a at connect? A match in deny refuses it; otherwise an empty allow
 * list admits every address, a list that is not empty only its own. */
bool access_permitted(const struct access_list *allow, const struct access_list *deny,
                      const struct access_addr *a);

/* The address of an accepted peer; false for one that is not IP (Unix). */
bool access_addr_from(const struct sockaddr *sa, socklen_t len, struct access_addr *out);
/* "192.0.2.1", "2001:db8::1". */
void access_addr_format(const struct access_addr *a, char *buf, size_t len);

/* The refusals' log: an address is logged at most once per
 * ACCESS_LOG_WINDOW seconds, and at most ACCESS_LOG_BURST lines are written
 * in any window; what is held back is counted and said in the next line
 * written. A scan from many addresses writes a few lines a minute. */
enum { ACCESS_LOG_SLOTS = 256, ACCESS_LOG_BURST = 10, ACCESS_LOG_WINDOW = 60 };

struct access_log {
    struct { struct access_addr addr; double at; bool used; } slot[ACCESS_LOG_SLOTS];
    double window_start;
    unsigned lines;         /* written in the current window */
    uint64_t suppressed;    /* refusals not logged since the last line */
};

/* A refusal of a at time now (seconds): true if it is to be logged, with
 * *held_back the refusals not logged since the last line written. */
bool access_log_refusal(struct access_log *lg, const struct access_addr *a, double now, uint64_t *held_back);

/* The server's lists (--allow, --deny) and its log. */
extern struct access_list access_allow, access_deny;
/* At accept: true to serve the peer at sa; false after logging (rate
 * limited) that it was refused. Non-IP peers are always served. */
bool access_check_peer(const struct sockaddr *sa, socklen_t len);

#endif
