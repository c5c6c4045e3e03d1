/* Statistics: requests, bytes and errors by kind of request, and latency
 * percentiles from a log-bucketed histogram (8 buckets per power of two,
 * so a percentile is within 1/8 of the truth; the maximum is exact).
 * Updated on the loop thread only, at reply time; read by usbd_stats_get
 * and printed by usbd_stats_print (at exit and on SIGUSR1). */
#include <malloc.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "nbd.h"
#include "serve.h"
#include "stats.h"

#define SUB_BITS 3
#define NBUCKETS 512   /* (64 - SUB_BITS + 1) << SUB_BITS fits */
#define NKINDS (USBD_STATS_KINDS - 1)   /* the last entry is "all" */

static const char *const kind_names[USBD_STATS_KINDS] = {
    "READ", "WRITE", "FLUSH", "TRIM", "WRITE_ZEROES", "BLOCK_STATUS", "CACHE", "other", "all"
};

struct kind_stats {
    uint64_t requests, bytes, errors, max_ns;
    uint64_t hist[NBUCKETS];
};

static struct kind_stats kinds[NKINDS];
static uint64_t started_ns;

uint64_t stats_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

double usbd_now(void)
{
    return (double)stats_now_ns() / 1e9;
}

static int kind_of(uint16_t type)
{
    switch (type) {
    case NBD_CMD_READ: return 0;
    case NBD_CMD_WRITE: return 1;
    case NBD_CMD_FLUSH: return 2;
    case NBD_CMD_TRIM: return 3;
    case NBD_CMD_WRITE_ZEROES: return 4;
    case NBD_CMD_BLOCK_STATUS: return 5;
    case NBD_CMD_CACHE: return 6;
    default: return 7;
    }
}

static unsigned bucket_of(uint64_t ns)
{
    if (ns < (1u << SUB_BITS))
        return (unsigned)ns;
    unsigned e = 63u - (unsigned)__builtin_clzll(ns);  /* >= SUB_BITS */
    unsigned m = (unsigned)(ns >> (e - SUB_BITS)) & ((1u << SUB_BITS) - 1);
    return ((e - SUB_BITS + 1) << SUB_BITS) + m;
}

/* The middle of bucket b, in nanoseconds. */
static double bucket_value(unsigned b)
{
    if (b < (1u << SUB_BITS))
        return b;
    unsigned e = (b >> SUB_BITS) + SUB_BITS - 1, m = b & ((1u << SUB_BITS) - 1);
    double width = (double)(UINT64_C(1) << (e - SUB_BITS));
    return ((1u << SUB_BITS) + m) * width + width / 2;
}

void stats_record(uint16_t type, uint32_t length, uint32_t error, uint64_t latency_ns)
{
    struct kind_stats *k = &kinds[kind_of(type)];
    if (!started_ns)
        started_ns = stats_now_ns();
    k->requests++;
    if (error)
        k->errors++;
    else
        k->bytes += length;
    if (latency_ns > k->max_ns)
        k->max_ns = latency_ns;
    k->hist[bucket_of(latency_ns)]++;
}

void stats_start(void)
{
    memset(kinds, 0, sizeof kinds);
    started_ns = stats_now_ns();
}

/* p in (0, 1]: the latency under which that share of requests finished. */
static double percentile(const uint64_t *hist, uint64_t n, double p, uint64_t max_ns)
{
    if (n == 0)
        return 0;
    uint64_t want = (uint64_t)(p * (double)n + 0.999999), seen = 0;
    for (unsigned b = 0; b < NBUCKETS; b++) {
        seen += hist[b];
        if (seen >= want) {
            double v = bucket_value(b);
            return v > (double)max_ns ? (double)max_ns : v;
        }
    }
    return (double)max_ns;
}

static void fill(usbd_stats_kind *out, const struct kind_stats *k)
{
    out->requests = k->requests;
    out->bytes = k->bytes;
    out->errors = k->errors;
    out->p50 = percentile(k->hist, k->requests, 0.50, k->max_ns) / 1e9;
    out->p90 = percentile(k->hist, k->requests, 0.90, k->max_ns) / 1e9;
    out->p99 = percentile(k->hist, k->requests, 0.99, k->max_ns) / 1e9;
    out->max = (double)k->max_ns / 1e9;
}

double usbd_stats_get(usbd_stats_kind *out)
{
    static struct kind_stats all;
    memset(&all, 0, sizeof all);
    for (int i = 0; i < NKINDS; i++) {
        const struct kind_stats *k = &kinds[i];
        fill(&out[i], k);
        all.requests += k->requests;
        all.bytes += k->bytes;
        all.errors += k->errors;
        if (k->max_ns > all.max_ns)
            all.max_ns = k->max_ns;
        for (unsigned b = 0; b < NBUCKETS; b++)
            all.hist[b] += k->hist[b];
    }
    fill(&out[NKINDS], &all);
    return started_ns ? (double)(stats_now_ns() - started_ns) / 1e9 : 0;
}

const char *usbd_stats_kind_name(int kind)
{
    return kind >= 0 && kind < USBD_STATS_KINDS ? kind_names[kind] : NULL;
}

/* Where the memory is: the process's resident set (anonymous: the heaps;
 * the rest mapped files, such as a dedupdisk's hash index), the Lua
 * heap, and what malloc holds for every C part (RocksDB's memtables and
 * cache, codecs, buffers) and how much of that is in use. */
static void print_memory(double lua_heap)
{
    long rss = -1, anon = -1;
    FILE *f = fopen("/proc/self/status", "r");
    char line[128];
    while (f && fgets(line, sizeof line, f)) {
        sscanf(line, "VmRSS: %ld", &rss);
        sscanf(line, "RssAnon: %ld", &anon);
    }
    if (f)
        fclose(f);
    struct mallinfo2 m = mallinfo2();
    const double MiB = 1024.0 * 1024.0;
    fprintf(stderr, "  memory: RSS %.1f MiB (%.1f anonymous), Lua heap %.1f MiB, malloc %.1f MiB "
            "in use of %.1f held\n", rss / 1024.0, anon / 1024.0, lua_heap / MiB,
            (double)(m.uordblks + m.hblkhd) / MiB, (double)(m.arena + m.hblkhd) / MiB);
}

void usbd_stats_print(double lua_heap)
{
    usbd_stats_kind s[USBD_STATS_KINDS];
    double uptime = usbd_stats_get(s);
    fprintf(stderr, "usbd-lua: statistics after %.3f s\n", uptime);
    for (int i = 0; i < USBD_STATS_KINDS; i++) {
        if (s[i].requests == 0 && i != NKINDS)
            continue;
        fprintf(stderr, "  %s: %llu requests, %llu bytes, %llu errors; latency p50 %.0f us, "
                "p90 %.0f us, p99 %.0f us, max %.0f us\n", kind_names[i],
                (unsigned long long)s[i].requests, (unsigned long long)s[i].bytes,
                (unsigned long long)s[i].errors, s[i].p50 * 1e6, s[i].p90 * 1e6,
                s[i].p99 * 1e6, s[i].max * 1e6);
    }
    usbd_borrow_stats b;
    usbd_borrow_get_stats(&b);
    if (b.borrowed_bytes || b.copied_bytes)  /* the zero-copy read path (borrow.c) */
        fprintf(stderr, "  borrowed: %llu bytes sent from the device's memory, %llu copied (no room), "
                "%llu settled in %llu replies\n", (unsigned long long)b.borrowed_bytes,
                (unsigned long long)b.copied_bytes, (unsigned long long)b.settled_bytes,
                (unsigned long long)b.settled_replies);
    print_memory(lua_heap);
    fflush(stderr);
}
