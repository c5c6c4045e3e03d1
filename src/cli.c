/* The command line: options, positional SCRIPT, /dev/nbdN and KEY=VALUE. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "config.h"

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
"  -v, --verbose          log connections and requests (repeat for more)\n"
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
"      --trace FILE           write a record per request to FILE (see README)\n"
"      --profile FILE         sample where the device's Lua spends its time\n"
"                             (LuaJIT's profiler), written to FILE at exit\n"
"      --pidfile FILE         write the server's pid to FILE once it serves\n"
"      --run CMD              serve while the shell command CMD runs ($uri, $nbd,\n"
"                             $unixsocket, $port are set), then exit with its status\n"
"      --exit-last            stop when the last client has disconnected\n"
"  -h, --help [DEVICE]    this text; with DEVICE, the KEY=VALUE pairs it takes\n"
"  -V, --version          the version\n"
"\n"
"With neither /dev/nbdN nor -U/-p, the first free /dev/nbdN is used (with\n"
"--run, a private Unix socket). SIGUSR1 prints statistics; a second\n"
"SIGINT/SIGTERM ends a server whose device does not return.\n"
"KEY=VALUE pairs reach the device's open(args) as a table of strings. Each further\n"
"DEVICE stands below the one before it, with its own KEY=VALUE pairs:\n"
"  usbd-lua -U s.sock tracedisk out=t.log -- cryptdisk keyfile=k -- filedisk path=x.img\n";

void cli_defaults(struct usbd_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->ip = "127.0.0.1";
    cfg->max_request = 64u << 20;         /* nbdkit's, and what clients send (a 42 MB read) */
    cfg->max_inflight = 256;
    /* A connection is read from while under this, so it holds at most this
     * plus one largest request: 96 MiB, for 64 clients 6 GiB at most. */
    cfg->max_inflight_bytes = 32u << 20;
    cfg->max_connections = 64;
    cfg->handshake_timeout = 30;
    cfg->seed = -1;
}

int64_t usbd_parse_size(const char *s)
{
    if (!s || *s < '0' || *s > '9')
        return -1;
    errno = 0;
    char *end;
    unsigned long long n = strtoull(s, &end, 10);
    if (errno)
        return -1;
    int shift = 0;
    switch (*end) {
    case 'k': case 'K': shift = 10; end++; break;
    case 'm': case 'M': shift = 20; end++; break;
    case 'g': case 'G': shift = 30; end++; break;
    case 't': case 'T': shift = 40; end++; break;
    case 'p': case 'P': shift = 50; end++; break;
    }
    if (shift && (*end == 'i' || *end == 'I'))
        end++;
    if (*end == 'b' || *end == 'B')
        end++;
    if (*end)
        return -1;
    if (n > (unsigned long long)(INT64_MAX >> shift))
        return -1;
    return (int64_t)(n << shift);
}

static int fail(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -1;
}

static int parse_count(const char *opt, const char *s, uint64_t min, uint64_t max,
                       bool size, uint64_t *out, char *err, size_t errlen)
{
    int64_t v = size ? usbd_parse_size(s) : -1;
    if (!size) {
        char *end;
        errno = 0;
        unsigned long long n = strtoull(s, &end, 10);
        if (!errno && *s >= '0' && *s <= '9' && !*end && n <= INT64_MAX)
            v = (int64_t)n;
    }
    if (v < 0 || (uint64_t)v < min || (uint64_t)v > max)
        return fail(err, errlen, "%s '%s': want a %s from %" PRIu64 " to %" PRIu64,
                    opt, s, size ? "size" : "number", min, max);
    *out = (uint64_t)v;
    return 0;
}

enum { OPT_CHECK = 256, OPT_MAX_REQUEST, OPT_MAX_INFLIGHT, OPT_MAX_INFLIGHT_BYTES,
       OPT_MAX_CONNECTIONS, OPT_HANDSHAKE_TIMEOUT, OPT_THREADS,
       OPT_TRACE, OPT_PIDFILE, OPT_RUN, OPT_EXIT_LAST, OPT_SEED, OPT_PROFILE,
       OPT_CONNECTIONS };

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
        { "check", no_argument, NULL, OPT_CHECK },
        { "trace", required_argument, NULL, OPT_TRACE },
        { "profile", required_argument, NULL, OPT_PROFILE },
        { "pidfile", required_argument, NULL, OPT_PIDFILE },
        { "run", required_argument, NULL, OPT_RUN },
        { "exit-last", no_argument, NULL, OPT_EXIT_LAST },
        { "seed", required_argument, NULL, OPT_SEED },
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
        case OPT_TRACE:
        case OPT_PROFILE:
        case OPT_PIDFILE:
        case OPT_RUN:
            if (!*optarg)
                return fail(err, errlen, "--%s needs a value that is not empty",
                            c == OPT_TRACE ? "trace" : c == OPT_PROFILE ? "profile" : c == OPT_PIDFILE ? "pidfile" : "run");
            if (c == OPT_TRACE)
                cfg->trace_path = optarg;
            else if (c == OPT_PROFILE)
                cfg->profile_path = optarg;
            else if (c == OPT_PIDFILE)
                cfg->pidfile = optarg;
            else
                cfg->run = optarg;
            break;
        case OPT_EXIT_LAST: cfg->exit_last = true; break;
        case OPT_SEED:
            if (parse_count("--seed", optarg, 0, UINT32_MAX, false, &v, err, errlen))
                return -1;
            cfg->seed = (int64_t)v;
            break;
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
    if (cfg->check && (cfg->run || cfg->pidfile || cfg->trace_path || cfg->profile_path || cfg->exit_last))
        return fail(err, errlen, "--check tests the device without serving it: leave out --run, --pidfile, --trace, --profile and --exit-last");
    if (cfg->run && cfg->nbd_device)
        return fail(err, errlen, "--run and %s exclude each other: --run serves its command on a socket (-U, -p, or a private one)", cfg->nbd_device);
    if (cfg->exit_last && !cfg->unix_path && !cfg->port && !cfg->run)
        return fail(err, errlen, "--exit-last waits for clients to leave: serve with -U or -p (or --run), not on /dev/nbdN");
    if (cfg->connections && (cfg->unix_path || cfg->port || cfg->run || cfg->check))
        return fail(err, errlen, "--connections sets the kernel's connections to /dev/nbdN: leave it out with -U, -p, --run and --check");
    if (cfg->nbd_device && (cfg->unix_path || cfg->port))
        return fail(err, errlen, "%s and -U/-p exclude each other: attach to the kernel or serve sockets, not both", cfg->nbd_device);
    if (cfg->port) {
        if (parse_count("--port", cfg->port, 1, 65535, false, &v, err, errlen))
            return -1;
    }
    return 0;
}
