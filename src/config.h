/* What the command line says: filled by cli.c, read everywhere else. */
#ifndef USBD_CONFIG_H
#define USBD_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define USBD_VERSION "0.1.0"

struct usbd_config {
    const char *script;      /* SCRIPT.lua */
    const char *nbd_device;  /* /dev/nbdN, or NULL */
    const char *unix_path;   /* -U */
    const char *port;        /* -p */
    const char *ip;          /* -i, default 127.0.0.1 */
    bool readonly;           /* -r */
    bool check;              /* --check: test the device instead of serving */
    bool help;               /* --help DEVICE: print the keys DEVICE takes, instead */
    bool lua_path;           /* --lua-path: print what plain luajit needs to require "usbd" */
    int verbose;             /* -v, repeatable */
    int64_t seed;                /* --seed: --check's random choices; -1: from the clock */
    /* The words after SCRIPT: KEY=VALUE pairs and the devices below it. */
    char **args;
    int nargs;
    /* Limits, each with a sane default (see cli.c). */
    uint32_t max_request;        /* bytes in one READ or WRITE */
    uint32_t max_inflight;       /* requests in flight per connection */
    uint64_t max_inflight_bytes; /* payload bytes in flight per connection */
    uint32_t max_connections;
    uint32_t handshake_timeout;  /* seconds */
    uint32_t job_threads;        /* worker threads for blocking calls; 0: default */
    uint32_t connections;        /* --connections: the kernel's to /dev/nbdN; 0: one per core */
    uint32_t ublk_recovery;      /* --ublk-recovery: seconds a dead server's ublk device waits; 0: none */
    /* Server operations (src/server/reqlog.c, src/server/process.c). */
    const char *trace_path;  /* --trace FILE: a record per request */
    const char *profile_path; /* --profile FILE: LuaJIT's profiler over the serving */
    const char *jit_log_path; /* --jit-log FILE: LuaJIT's trace log (jit.v) over the serving */
    const char *pidfile;     /* --pidfile FILE */
    const char *run;         /* --run CMD: serve while CMD runs */
    bool exit_last;          /* --exit-last: stop when the last client has gone */
    /* Who may connect (src/server/access.c holds the --allow and --deny
     * lists), and the Unix socket's permissions. */
    bool access_lists;       /* --allow or --deny given */
    int socket_mode;         /* --socket-mode, octal; -1: as the umask leaves it */
    int64_t socket_gid;      /* --socket-group; -1: the process's group */
    /* TLS (src/server/tls.c). */
    int tls;                 /* USBD_TLS_OFF, _ON (offered), _REQUIRE */
    const char *tls_certificates;  /* --tls-certificates DIR */
    const char *tls_psk;     /* --tls-psk FILE */
    bool tls_verify_peer;    /* --tls-verify-peer */
};

enum { USBD_TLS_OFF = 0, USBD_TLS_ON = 1, USBD_TLS_REQUIRE = 2 };

extern struct usbd_config config;

/* Parse argv into cfg. Returns 0 to go on (with cfg->help set: describe
 * cfg->script and the devices below it; with cfg->lua_path: print it), 1 when --help/--version was
 * handled (exit 0), -1 with a one-line message in err (exit 2). */
int cli_parse(struct usbd_config *cfg, int argc, char **argv, char *err, size_t errlen);
void cli_defaults(struct usbd_config *cfg);

#endif
