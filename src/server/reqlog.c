/* The request log and the trace. Every request is counted (stats.c) when
 * its reply is queued, with the error that goes on the wire, whether the
 * server refused it or the device failed it. One formatter makes the record;
 * it goes to stderr at -vv and to the --trace file, both buffered and
 * written out once per turn of the loop.
 *
 * A record, one line, fields separated by one space:
 *   TIME CONN COMMAND OFFSET LENGTH FLAGS RESULT LATENCY_US
 *   1764092266.123456 1 READ 4096 512 - EIO(ENODATA) 41.5
 * TIME: seconds since the epoch at reply time; CONN: the connection's number
 * (from 1, in order of arrival); COMMAND: READ, WRITE, FLUSH, TRIM,
 * WRITE_ZEROES, BLOCK_STATUS, CACHE (else CMD<n>); FLAGS: FUA, NO_HOLE, DF,
 * REQ_ONE, FAST_ZERO joined by '|', or '-'; RESULT: OK or the NBD error
 * sent, followed by the device's errno in parentheses when that differs;
 * LATENCY_US: from the request's header arriving to its reply being queued. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "config.h"
#include "nbd.h"
#include "reqlog.h"
#include "server.h"
#include "stats.h"

static FILE *trace;
static bool dirty;

static const char *command_name(uint16_t type, char *tmp, size_t len)
{
    static const char *const names[] = {
        [NBD_CMD_READ] = "READ", [NBD_CMD_WRITE] = "WRITE", [NBD_CMD_DISC] = "DISC",
        [NBD_CMD_FLUSH] = "FLUSH", [NBD_CMD_TRIM] = "TRIM", [NBD_CMD_CACHE] = "CACHE",
        [NBD_CMD_WRITE_ZEROES] = "WRITE_ZEROES", [NBD_CMD_BLOCK_STATUS] = "BLOCK_STATUS",
    };
    if (type < sizeof names / sizeof *names && names[type])
        return names[type];
    snprintf(tmp, len, "CMD%u", type);
    return tmp;
}

static void flag_names(uint16_t flags, char *out, size_t len)
{
    static const char *const names[] = { "FUA", "NO_HOLE", "DF", "REQ_ONE", "FAST_ZERO" };
    size_t n = 0;
    out[0] = '\0';
    for (unsigned bit = 0; bit < 16 && n < len; bit++) {
        if (!(flags & (1u << bit)))
            continue;
        int w = bit < 5 ? snprintf(out + n, len - n, "%s%s", n ? "|" : "", names[bit])
                        : snprintf(out + n, len - n, "%s0x%x", n ? "|" : "", 1u << bit);
        n += w > 0 ? (size_t)w : 0;
    }
    if (!n)
        snprintf(out, len, "-");
}

/* An errno's name (NBD errors have Linux's numbers). */
static const char *errno_name(int e, char *tmp, size_t len)
{
    const char *s = e == ENOTSUP ? "ENOTSUP" : strerrorname_np(e);
    if (s)
        return s;
    snprintf(tmp, len, "E%d", e);
    return tmp;
}

static void result_text(const struct request *r, char *out, size_t len)
{
    char t1[16], t2[16];
    if (r->error == 0 && r->dev_errno == 0)
        snprintf(out, len, "OK");
    else if (r->dev_errno == 0 || (uint32_t)r->dev_errno == r->error)
        snprintf(out, len, "%s", errno_name((int)r->error, t1, sizeof t1));
    else
        snprintf(out, len, "%s(%s)", errno_name((int)r->error, t1, sizeof t1),
                 errno_name(r->dev_errno, t2, sizeof t2));
}

/* "READ offset 4096 length 512": the request, for error lines. */
static void describe(const struct request *r, char *out, size_t len)
{
    char t[16];
    snprintf(out, len, "%s offset %llu length %u", command_name(r->pub.type, t, sizeof t),
             (unsigned long long)r->pub.offset, r->pub.length);
}

int reqlog_open(const char *trace_path, char *err, size_t errlen)
{
    stats_start();
    if (config.verbose >= 2)
        setvbuf(stderr, NULL, _IOFBF, 64 * 1024);  /* a line per request: flushed per turn */
    if (!trace_path)
        return 0;
    trace = fopen(trace_path, "we");
    if (!trace) {
        snprintf(err, errlen, "cannot write the trace file '%s': %s", trace_path, strerror(errno));
        return -1;
    }
    setvbuf(trace, NULL, _IOFBF, 256 * 1024);
    return 0;
}

static size_t format_record(uint64_t conn_id, const struct request *r, uint64_t latency_ns,
                            char *line, size_t len)
{
    struct timespec now;
    char t[16], flags[64], result[48];
    clock_gettime(CLOCK_REALTIME, &now);
    flag_names(r->pub.flags, flags, sizeof flags);
    result_text(r, result, sizeof result);
    int n = snprintf(line, len, "%lld.%06ld %llu %s %llu %u %s %s %.1f\n",
                     (long long)now.tv_sec, now.tv_nsec / 1000, (unsigned long long)conn_id,
                     command_name(r->pub.type, t, sizeof t), (unsigned long long)r->pub.offset,
                     r->pub.length, flags, result, (double)latency_ns / 1e3);
    return n < 0 ? 0 : (size_t)n < len ? (size_t)n : len - 1;
}

void reqlog_reply(uint64_t conn_id, const struct request *r)
{
    uint64_t latency = stats_now_ns() - r->started_ns;
    stats_record(r->pub.type, r->pub.length, r->error, latency);
    if (trace || config.verbose >= 2) {
        char line[256];
        size_t n = format_record(conn_id, r, latency, line, sizeof line);
        if (trace)
            fwrite(line, 1, n, trace);
        if (config.verbose >= 2) {
            fputs("usbd-lua: ", stderr);
            fwrite(line, 1, n, stderr);
        }
        dirty = true;
    } else if (config.verbose == 1 && r->dev_errno && !r->failure_logged) {
        /* -v: device errors, each once (-vv has them in the request line). */
        char what[96], t[16];
        describe(r, what, sizeof what);
        fprintf(stderr, "usbd-lua: %s: %s\n", what, errno_name(r->dev_errno, t, sizeof t));
    }
}

void reqlog_failure(const struct request *r, int err, const char *why)
{
    char what[96], t[16];
    describe(r, what, sizeof what);
    fprintf(stderr, "usbd-lua: %s: device error, answered with %s: %s\n", what,
            errno_name(err, t, sizeof t), why);
    dirty = true;
}

void reqlog_flush(void)
{
    if (dirty && trace)
        fflush(trace);
    if (dirty || config.verbose >= 2)  /* stderr is buffered at -vv: other lines wait there too */
        fflush(stderr);
    dirty = false;
}

void reqlog_flush_if_free(void)
{
    FILE *streams[] = { trace, stderr };
    for (int i = 0; i < 2; i++)
        if (streams[i] && ftrylockfile(streams[i]) == 0) {
            fflush_unlocked(streams[i]);
            funlockfile(streams[i]);
        }
}

/* The file stays open to the end: another thread may flush it on a forced
 * exit (see process.c). */
void reqlog_close(void)
{
    dirty = true;
    reqlog_flush();
}
