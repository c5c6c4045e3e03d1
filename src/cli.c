/* The command line: options, positional SCRIPT, /dev/nbdN and KEY=VALUE. */
#include <errno.h>
#include <getopt.h>
#include <grp.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "config.h"
#include "server/access.h"

struct usbd_config config;

static const char usage[] =
"usage: usbd-lua [OPTIONS] DEVICE [/dev/nbdN] [KEY=VALUE ...] [-- DEVICE [KEY=VALUE ...] ...]\n"
"       usbd-lua [OPTIONS] DEVICE [/dev/nbdN] [KEY=VALUE ...] [ DEVICE ... ] [ DEVICE ... ] ...\n"
"\n"
"Serve the block device that DEVICE (a script, or a shipped device's name) implements, over NBD;\n"
"each DEVICE after it stands below the one before, each [ ] group below a device on several.\n"
"\n"
"  /dev/nbdN              attach to the kernel's nbd driver as /dev/nbdN\n"
"  /dev/ublkbN            serve as /dev/ublkbN through the kernel's ublk driver\n"
"  -U, --unix PATH        serve on a Unix socket\n"
"  -p, --port PORT        serve on TCP\n"
"  -i, --ip ADDR          TCP address to listen on (default 127.0.0.1)\n"
"  -r, --readonly         refuse writes, advertise a read-only export\n"
"  -v, --verbose          log connections and errno errors; -vv every request\n"
"      --check            test that the device keeps the contract, instead of serving\n"
"      --seed N           with --check: replay the run that printed '# seed N'\n"
"      --max-request SIZE     largest READ/WRITE payload (default 64M)\n"
"      --max-inflight N       requests in flight per connection (default 256)\n"
"      --max-inflight-bytes SIZE  payload in flight per connection (default 32M)\n"
"      --max-connections N    simultaneous clients (default 64)\n"
"      --handshake-timeout S  seconds a client may take to negotiate (default 30)\n"
"      --threads N            worker threads for blocking device calls (default 16)\n"
"      --connections N        the kernel's connections to /dev/nbdN, or ublk queues\n"
"                             (default: one per core)\n"
"      --ublk-recovery S      /dev/ublkbN: if the server dies, hold its requests S\n"
"                             seconds for a restarted one to take the device back\n"
"      --trace FILE           write a record per request to FILE (see README)\n"
"      --profile FILE         sample where the device's Lua spends its time\n"
"                             (LuaJIT's profiler), written to FILE at exit\n"
"      --jit-log FILE         log to FILE each trace LuaJIT compiles or abandons,\n"
"                             and why (jit.v): is the device's Lua compiled?\n"
"      --pidfile FILE         write the server's pid to FILE once it serves\n"
"      --run CMD              serve while the shell command CMD runs ($uri, $nbd,\n"
"                             $unixsocket, $port are set), then exit with its status\n"
"      --exit-last            stop when the last client has disconnected\n"
"      --lua-path             print the LUA_PATH and USBD_LIB that luajit and busted\n"
"                             need to require \"usbd\": eval \"$(usbd-lua --lua-path)\"\n"
"      --allow ADDR[/PREFIX],...  serve only TCP clients from these addresses\n"
"      --deny ADDR[/PREFIX],...   refuse TCP clients from these (before --allow)\n"
"      --socket-mode MODE     the Unix socket's permissions, in octal (e.g. 0660)\n"
"      --socket-group GROUP   the Unix socket's group (a name or a number)\n"
"      --tls off|on|require   TLS (NBD_OPT_STARTTLS): on offers it, require\n"
"                             serves no export without it (default off)\n"
"      --tls-certificates DIR X.509: DIR holds ca-cert.pem, server-cert.pem,\n"
"                             server-key.pem\n"
"      --tls-psk FILE         pre-shared keys, one username:hexkey a line\n"
"      --tls-verify-peer      with certificates: clients must show one the CA signed\n"
"  -h, --help [DEVICE]    this text; with DEVICE, the KEY=VALUE pairs it takes\n"
"  -V, --version          the version\n"
"\n"
"With neither /dev/nbdN nor -U/-p, the first free /dev/nbdN is used (with\n"
"--run, a private Unix socket). SIGUSR1 prints statistics; SIGHUP serves the\n"
"device's size anew (a grown file); a second\n"
"SIGINT/SIGTERM, 1 s or more after the first, ends a server whose device\n"
"does not return (one sooner is the same stop delivered twice, and ignored).\n"
"KEY=VALUE pairs reach the device's open(args) as a table of strings. Each further\n"
"DEVICE stands below the one before it, with its own KEY=VALUE pairs:\n"
"  usbd-lua -U s.sock tracedisk out=t.log -- cryptdisk keyfile=k -- filedisk path=x.img\n";

void cli_defaults(struct usbd_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    access_list_free(&access_allow);
    access_list_free(&access_deny);
    cfg->ip = "127.0.0.1";
    cfg->max_request = 64u << 20;         /* nbdkit's, and what clients send (a 42 MB read) */
    cfg->max_inflight = 256;
    /* A connection is read from while under this, so it holds at most this
     * plus one largest request: 96 MiB, for 64 clients 6 GiB at most. */
    cfg->max_inflight_bytes = 32u << 20;
    cfg->max_connections = 64;
    cfg->handshake_timeout = 30;
    cfg->seed = -1;
    cfg->socket_mode = -1;
    cfg->socket_gid = -1;
}

/* Every SIZE, on the command line and in KEY=VALUE pairs: see cli.h.
 * 0 with *out set, or why not: NOT_A_SIZE, NOT_WHOLE or TOO_LARGE. */
enum { NOT_A_SIZE = 1, NOT_WHOLE, TOO_LARGE };

static int parse_size(const char *s, int64_t *out)
{
    if (!s || *s < '0' || *s > '9')
        return NOT_A_SIZE;
    bool large = false;
    uint64_t whole = 0;
    for (; *s >= '0' && *s <= '9'; s++) {
        uint64_t digit = (uint64_t)(*s - '0');
        if (large || whole > ((uint64_t)INT64_MAX - digit) / 10)
            large = true;
        else
            whole = whole * 10 + digit;
    }
    /* The decimal part is frac / den, of 18 digits at most: a digit past
     * them other than 0 is taken for a fraction of a byte. */
    uint64_t frac = 0, den = 1;
    bool lost = false;
    if (*s == '.') {
        s++;
        if (*s < '0' || *s > '9')
            return NOT_A_SIZE;
        for (; *s >= '0' && *s <= '9'; s++) {
            if (den < UINT64_C(1000000000000000000)) {
                frac = frac * 10 + (uint64_t)(*s - '0');
                den *= 10;
            } else if (*s != '0') {
                lost = true;
            }
        }
    }
    int shift = 0;
    switch (*s) {
    case 'k': case 'K': shift = 10; s++; break;
    case 'm': case 'M': shift = 20; s++; break;
    case 'g': case 'G': shift = 30; s++; break;
    case 't': case 'T': shift = 40; s++; break;
    case 'p': case 'P': shift = 50; s++; break;
    }
    if (shift && (*s == 'i' || *s == 'I'))
        s++;
    if (*s == 'b' || *s == 'B')
        s++;
    if (*s)
        return NOT_A_SIZE;
    if (lost)
        return NOT_WHOLE;
    if (large || whole > ((uint64_t)INT64_MAX >> shift))
        return TOO_LARGE;
    uint64_t bytes = whole << shift;
    unsigned __int128 part = (unsigned __int128)frac << shift;
    if (part % den)
        return NOT_WHOLE;
    if ((uint64_t)(part / den) > (uint64_t)INT64_MAX - bytes)
        return TOO_LARGE;
    *out = (int64_t)(bytes + (uint64_t)(part / den));
    return 0;
}

int64_t usbd_parse_size(const char *s)
{
    int64_t n;
    return parse_size(s, &n) == 0 ? n : -1;
}

const char *usbd_size_error(char *err, size_t errlen, const char *key, const char *value)
{
    int64_t n;
    int why = parse_size(value, &n);
    char said[256];   /* KEY=VALUE, or 'VALUE' without a key */
    if (key && *key)
        snprintf(said, sizeof said, "%s=%s", key, value ? value : "");
    else
        snprintf(said, sizeof said, "'%s'", value ? value : "");
    const char *k = key && *key ? key : "", *eq = key && *key ? "=" : "";
    if (why == TOO_LARGE)
        snprintf(err, errlen, "%s: too large; a size is less than 8192P (2^63 bytes)", said);
    else
        snprintf(err, errlen, "%s: %s; use bytes or a number with K, M, G, T or P (1024-based,"
                 " B or iB after it optional), like %s%s1G or %s%s1.5G",
                 said, why == NOT_WHOLE ? "not a whole number of bytes" : "not a size", k, eq, k, eq);
    return err;
}

static int fail(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -1;
}

/* n in the largest unit it is a whole number of: 4096 is "4K". */
static const char *size_text(char *out, size_t len, uint64_t n)
{
    static const char units[] = "KMGTP";
    int u = 0;
    while (n && n % 1024 == 0 && u < 5) {
        n /= 1024;
        u++;
    }
    snprintf(out, len, "%" PRIu64 "%.*s", n, u ? 1 : 0, u ? &units[u - 1] : "");
    return out;
}

static int parse_count(const char *opt, const char *s, uint64_t min, uint64_t max,
                       bool size, uint64_t *out, char *err, size_t errlen)
{
    int64_t v = size ? usbd_parse_size(s) : -1;
    if (size && v < 0) {
        usbd_size_error(err, errlen, opt, s);
        return -1;
    }
    if (!size) {
        char *end;
        errno = 0;
        unsigned long long n = strtoull(s, &end, 10);
        if (!errno && *s >= '0' && *s <= '9' && !*end && n <= INT64_MAX)
            v = (int64_t)n;
    }
    if (size && (v < 0 || (uint64_t)v < min || (uint64_t)v > max)) {
        char lo[32], hi[32];
        return fail(err, errlen, "%s=%s: want a size from %s to %s", opt, s,
                    size_text(lo, sizeof lo, min), size_text(hi, sizeof hi, max));
    }
    if (v < 0 || (uint64_t)v < min || (uint64_t)v > max)
        return fail(err, errlen, "%s=%s: want a whole number from %" PRIu64 " to %" PRIu64,
                    opt, s, min, max);
    *out = (uint64_t)v;
    return 0;
}

enum { OPT_CHECK = 256, OPT_MAX_REQUEST, OPT_MAX_INFLIGHT, OPT_MAX_INFLIGHT_BYTES,
       OPT_MAX_CONNECTIONS, OPT_HANDSHAKE_TIMEOUT, OPT_THREADS,
       OPT_TRACE, OPT_PIDFILE, OPT_RUN, OPT_EXIT_LAST, OPT_SEED, OPT_PROFILE, OPT_JIT_LOG,
       OPT_ALLOW, OPT_DENY, OPT_SOCKET_MODE, OPT_SOCKET_GROUP, OPT_TLS,
       OPT_TLS_CERTIFICATES, OPT_TLS_PSK, OPT_TLS_VERIFY_PEER, OPT_LUA_PATH,
       OPT_CONNECTIONS, OPT_UBLK_RECOVERY };

/* --socket-group: a group's name or number. */
static int parse_group(const char *s, int64_t *gid, char *err, size_t errlen)
{
    char *end;
    errno = 0;
    unsigned long n = strtoul(s, &end, 10);
    if (*s >= '0' && *s <= '9' && !*end && !errno && n < UINT32_MAX) {
        *gid = (int64_t)n;
        return 0;
    }
    struct group gr, *found = NULL;
    char buf[16384];
    if (getgrnam_r(s, &gr, buf, sizeof buf, &found) != 0 || !found)
        return fail(err, errlen, "--socket-group '%s': no such group", s);
    *gid = (int64_t)found->gr_gid;
    return 0;
}

/* The options, in front of the positional words once done (getopt moves
 * them): 0, 1 for --version, -1 with a message in err. */
static int parse_options(struct usbd_config *cfg, int argc, char **argv, char *err, size_t errlen)
{
    static const struct option longopts[] = {
        { "unix", required_argument, NULL, 'U' },
        { "port", required_argument, NULL, 'p' },
        { "ip", required_argument, NULL, 'i' },
        { "readonly", no_argument, NULL, 'r' },
        { "verbose", no_argument, NULL, 'v' },
        { "help", no_argument, NULL, 'h' },
        { "version", no_argument, NULL, 'V' },
        { "max-request", required_argument, NULL, OPT_MAX_REQUEST },
        { "max-inflight", required_argument, NULL, OPT_MAX_INFLIGHT },
        { "max-inflight-bytes", required_argument, NULL, OPT_MAX_INFLIGHT_BYTES },
        { "max-connections", required_argument, NULL, OPT_MAX_CONNECTIONS },
        { "handshake-timeout", required_argument, NULL, OPT_HANDSHAKE_TIMEOUT },
        { "threads", required_argument, NULL, OPT_THREADS },
        { "connections", required_argument, NULL, OPT_CONNECTIONS },
        { "ublk-recovery", required_argument, NULL, OPT_UBLK_RECOVERY },
        { "check", no_argument, NULL, OPT_CHECK },
        { "trace", required_argument, NULL, OPT_TRACE },
        { "profile", required_argument, NULL, OPT_PROFILE },
        { "jit-log", required_argument, NULL, OPT_JIT_LOG },
        { "pidfile", required_argument, NULL, OPT_PIDFILE },
        { "run", required_argument, NULL, OPT_RUN },
        { "exit-last", no_argument, NULL, OPT_EXIT_LAST },
        { "lua-path", no_argument, NULL, OPT_LUA_PATH },
        { "seed", required_argument, NULL, OPT_SEED },
        { "allow", required_argument, NULL, OPT_ALLOW },
        { "deny", required_argument, NULL, OPT_DENY },
        { "socket-mode", required_argument, NULL, OPT_SOCKET_MODE },
        { "socket-group", required_argument, NULL, OPT_SOCKET_GROUP },
        { "tls", required_argument, NULL, OPT_TLS },
        { "tls-certificates", required_argument, NULL, OPT_TLS_CERTIFICATES },
        { "tls-psk", required_argument, NULL, OPT_TLS_PSK },
        { "tls-verify-peer", no_argument, NULL, OPT_TLS_VERIFY_PEER },
        { 0 }
    };
    uint64_t v;
    int c;

    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":U:p:i:rvhV", longopts, NULL)) != -1) {
        switch (c) {
        case 'U': cfg->unix_path = optarg; break;
        case 'p': cfg->port = optarg; break;
        case 'i': cfg->ip = optarg; break;
        case 'r': cfg->readonly = true; break;
        case OPT_CHECK: cfg->check = true; break;
        case 'v': cfg->verbose++; break;
        case 'h': cfg->help = true; break;
        case 'V':
            if (cfg->help)  /* --help came first: cli_parse prints the usage */
                return 1;
            printf("usbd-lua %s\n", USBD_VERSION);
            return 1;
        case OPT_MAX_REQUEST:
            if (parse_count("--max-request", optarg, 4096, 1u << 30, true, &v, err, errlen))
                return -1;
            cfg->max_request = (uint32_t)v;
            break;
        case OPT_MAX_INFLIGHT:
            if (parse_count("--max-inflight", optarg, 1, 65536, false, &v, err, errlen))
                return -1;
            cfg->max_inflight = (uint32_t)v;
            break;
        case OPT_MAX_INFLIGHT_BYTES:
            if (parse_count("--max-inflight-bytes", optarg, 4096, UINT64_C(1) << 40, true, &v, err, errlen))
                return -1;
            cfg->max_inflight_bytes = v;
            break;
        case OPT_MAX_CONNECTIONS:
            if (parse_count("--max-connections", optarg, 1, 100000, false, &v, err, errlen))
                return -1;
            cfg->max_connections = (uint32_t)v;
            break;
        case OPT_HANDSHAKE_TIMEOUT:
            if (parse_count("--handshake-timeout", optarg, 1, 86400, false, &v, err, errlen))
                return -1;
            cfg->handshake_timeout = (uint32_t)v;
            break;
        case OPT_THREADS:
            if (parse_count("--threads", optarg, 1, 256, false, &v, err, errlen))
                return -1;
            cfg->job_threads = (uint32_t)v;
            break;
        case OPT_CONNECTIONS:
            if (parse_count("--connections", optarg, 1, 64, false, &v, err, errlen))
                return -1;
            cfg->connections = (uint32_t)v;
            break;
        case OPT_UBLK_RECOVERY:
            if (parse_count("--ublk-recovery", optarg, 1, 86400, false, &v, err, errlen))
                return -1;
            cfg->ublk_recovery = (uint32_t)v;
            break;
        case OPT_TRACE:
        case OPT_PROFILE:
        case OPT_JIT_LOG:
        case OPT_PIDFILE:
        case OPT_RUN:
            if (!*optarg)
                return fail(err, errlen, "--%s needs a value that is not empty",
                            c == OPT_TRACE ? "trace" : c == OPT_PROFILE ? "profile" : c == OPT_JIT_LOG ? "jit-log" : c == OPT_PIDFILE ? "pidfile" : "run");
            if (c == OPT_TRACE)
                cfg->trace_path = optarg;
            else if (c == OPT_PROFILE)
                cfg->profile_path = optarg;
            else if (c == OPT_JIT_LOG)
                cfg->jit_log_path = optarg;
            else if (c == OPT_PIDFILE)
                cfg->pidfile = optarg;
            else
                cfg->run = optarg;
            break;
        case OPT_EXIT_LAST: cfg->exit_last = true; break;
        case OPT_LUA_PATH: cfg->lua_path = true; break;
        case OPT_SEED:
            if (parse_count("--seed", optarg, 0, UINT32_MAX, false, &v, err, errlen))
                return -1;
            cfg->seed = (int64_t)v;
            break;
        case OPT_ALLOW:
        case OPT_DENY:
            if (access_list_add(c == OPT_ALLOW ? &access_allow : &access_deny, optarg,
                                c == OPT_ALLOW ? "--allow" : "--deny", err, errlen) < 0)
                return -1;
            cfg->access_lists = true;
            break;
        case OPT_SOCKET_MODE: {
            char *end;
            errno = 0;
            unsigned long m = strtoul(optarg, &end, 8);
            if (errno || end == optarg || *end || *optarg < '0' || *optarg > '7' || m > 07777)
                return fail(err, errlen, "--socket-mode '%s': want an octal mode such as 0660", optarg);
            cfg->socket_mode = (int)m;
            break;
        }
        case OPT_SOCKET_GROUP:
            if (parse_group(optarg, &cfg->socket_gid, err, errlen) < 0)
                return -1;
            break;
        case OPT_TLS:
            if (strcmp(optarg, "off") == 0)
                cfg->tls = USBD_TLS_OFF;
            else if (strcmp(optarg, "on") == 0)
                cfg->tls = USBD_TLS_ON;
            else if (strcmp(optarg, "require") == 0)
                cfg->tls = USBD_TLS_REQUIRE;
            else
                return fail(err, errlen, "--tls '%s': want off, on or require", optarg);
            break;
        case OPT_TLS_CERTIFICATES:
        case OPT_TLS_PSK:
            if (!*optarg)
                return fail(err, errlen, "--%s needs a value that is not empty",
                            c == OPT_TLS_PSK ? "tls-psk" : "tls-certificates");
            if (c == OPT_TLS_PSK)
                cfg->tls_psk = optarg;
            else
                cfg->tls_certificates = optarg;
            break;
        case OPT_TLS_VERIFY_PEER: cfg->tls_verify_peer = true; break;
        case ':':
            return fail(err, errlen, "option '%s' needs a value: see usbd-lua --help", argv[optind - 1]);
        default:
            return fail(err, errlen, "unknown option '%s': see usbd-lua --help", argv[optind - 1]);
        }
    }
    return 0;
}

int cli_parse(struct usbd_config *cfg, int argc, char **argv, char *err, size_t errlen)
{
    uint64_t v;
    int rc = parse_options(cfg, argc, argv, err, errlen);
    /* Once --help is given, the rest only matters for a DEVICE to
     * describe: whatever would end the parsing prints the usage, as --help
     * did before it looked for a DEVICE. */
    if (rc != 0 && cfg->help) {
        fputs(usage, stdout);
        return 1;
    }
    if (rc != 0)
        return rc;

    /* --lua-path prints and exits (main.c): nothing to serve. */
    if (cfg->lua_path && !cfg->help) {
        if (optind < argc)
            return fail(err, errlen, "--lua-path prints the paths and serves nothing: leave out '%s'", argv[optind]);
        return 0;
    }
    /* getopt has moved every option in front, so the rest is positional. */
    if (optind >= argc && cfg->help) {
        fputs(usage, stdout);
        return 1;
    }
    if (optind >= argc)
        return fail(err, errlen, "no device script given: usbd-lua SCRIPT.lua [-U PATH | -p PORT | /dev/nbdN] (see --help)");
    cfg->script = argv[optind++];
    if (optind < argc && strncmp(argv[optind], "/dev/", 5) == 0)
        cfg->nbd_device = argv[optind++];
    /* KEY=VALUE pairs and the layers below (lua/usbd/device.lua reads them). */
    cfg->args = argv + optind;
    cfg->nargs = argc - optind;
    if (cfg->help)  /* --help DEVICE: luahost describes it, and the devices below it */
        return 0;
    if (cfg->seed >= 0 && !cfg->check)
        return fail(err, errlen, "--seed replays a --check run: give --check too");
    if (cfg->check && (cfg->nbd_device || cfg->unix_path || cfg->port))
        return fail(err, errlen, "--check tests the device without serving it: leave out -U, -p and /dev/nbdN");
    if (cfg->check && (cfg->run || cfg->pidfile || cfg->trace_path || cfg->profile_path || cfg->jit_log_path || cfg->exit_last))
        return fail(err, errlen, "--check tests the device without serving it: leave out --run, --pidfile, --trace, --profile, --jit-log and --exit-last");
    if (cfg->run && cfg->nbd_device)
        return fail(err, errlen, "--run and %s exclude each other: --run serves its command on a socket (-U, -p, or a private one)", cfg->nbd_device);
    if (cfg->exit_last && !cfg->unix_path && !cfg->port && !cfg->run)
        return fail(err, errlen, "--exit-last waits for clients to leave: serve with -U or -p (or --run), not on /dev/nbdN");
    if (cfg->connections && (cfg->unix_path || cfg->port || cfg->run || cfg->check))
        return fail(err, errlen, "--connections sets the kernel's connections to /dev/nbdN: leave it out with -U, -p, --run and --check");
    if (cfg->ublk_recovery && !(cfg->nbd_device && strncmp(cfg->nbd_device, "/dev/ublkb", 10) == 0))
        return fail(err, errlen, "--ublk-recovery keeps a ublk device for a restarted server: serve /dev/ublkbN");
    if (cfg->nbd_device && (cfg->unix_path || cfg->port))
        return fail(err, errlen, "%s and -U/-p exclude each other: attach to the kernel or serve sockets, not both", cfg->nbd_device);
    if (cfg->access_lists && !cfg->port)
        return fail(err, errlen, "--allow and --deny filter TCP clients: serve with -p (a Unix socket's clients are governed by --socket-mode and --socket-group)");
    if ((cfg->socket_mode >= 0 || cfg->socket_gid >= 0) && !cfg->unix_path)
        return fail(err, errlen, "--socket-mode and --socket-group set the permissions of -U's socket: give -U PATH");
    if (cfg->tls && cfg->nbd_device)
        return fail(err, errlen, "--tls serves network clients: %s is the kernel's, on a private socket pair", cfg->nbd_device);
    if (cfg->tls && !cfg->unix_path && !cfg->port && !cfg->run)
        return fail(err, errlen, "--tls serves network clients: serve with -p or -U (or --run)");
    if (cfg->tls && !cfg->tls_certificates && !cfg->tls_psk)
        return fail(err, errlen, "--tls=%s needs credentials: --tls-certificates DIR or --tls-psk FILE",
                    cfg->tls == USBD_TLS_ON ? "on" : "require");
    if (cfg->tls_certificates && cfg->tls_psk)
        return fail(err, errlen, "--tls-certificates and --tls-psk exclude each other: choose one kind of credentials");
    if ((cfg->tls_certificates || cfg->tls_psk || cfg->tls_verify_peer) && !cfg->tls)
        return fail(err, errlen, "TLS credentials given without --tls: add --tls=on or --tls=require");
    if (cfg->tls_verify_peer && !cfg->tls_certificates)
        return fail(err, errlen, "--tls-verify-peer checks client certificates: give --tls-certificates DIR");
    if (cfg->port) {
        if (parse_count("--port", cfg->port, 1, 65535, false, &v, err, errlen))
            return -1;
    }
    return 0;
}
