/* The process around the server: signals, the pid file and --run.
 *
 * Signals: SIGINT, SIGTERM, SIGUSR1, SIGHUP and SIGCHLD are blocked in every thread
 * and taken by one thread of their own (sigwaitinfo), never by a handler,
 * so what they do runs in an ordinary thread and the Lua thread need not be
 * responsive for them to work:
 *   - the first SIGINT/SIGTERM asks the loop to stop (loop_post); the device
 *     is flushed and closed on the Lua thread as usual;
 *   - one that comes STOP_GRACE_MS or more after the first means a person
 *     insisting because the Lua thread has not come back (a device stuck in
 *     read_at, say): this thread cleans up what others would see (the Unix
 *     socket, the pid file, the kernel's nbd device, see loop_abort), says
 *     so in one line and ends the process with _exit(1) without touching
 *     the device or anything the Lua thread may hold;
 *   - one that comes sooner is the first one delivered again, and ignored:
 *     timeout(1) sends its SIGTERM to the server and then to its process
 *     group, make passes the SIGTERM it gets on to the command it runs, so
 *     a server in that group gets the same stop twice, microseconds apart,
 *     while its device is still flushing;
 *   - SIGUSR1 asks the loop for statistics;
 *   - SIGHUP asks it to ask the device its size again (a resize);
 *   - SIGCHLD reaps the --run command: its end stops the server, and its
 *     status becomes the exit status. */
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "process.h"
#include "reqlog.h"
#include "server.h"
#include "services/services.h"

extern char **environ;

/* A repeated SIGINT/SIGTERM sooner than this after the first is the same
 * stop delivered twice, not a person insisting (see the top). */
#define STOP_GRACE_MS 1000

static sigset_t taken;                 /* the signals the thread takes */
static char private_dir[64];           /* --run's private socket lives here */
static char private_sock[96];
static atomic_bool pidfile_written;
static pthread_mutex_t run_lock = PTHREAD_MUTEX_INITIALIZER;
static pid_t run_pid;                  /* the --run command while it runs */
static int run_status = -1;            /* its exit status once it has ended */

static void say(const char *a, const char *b, const char *c)
{
    /* write(2) only: this runs while another thread may hold stdio's locks. */
    const char *parts[] = { "usbd-lua: ", a, b, c, "\n" };
    for (size_t i = 0; i < sizeof parts / sizeof *parts; i++)
        if (parts[i]) {
            ssize_t rc = write(2, parts[i], strlen(parts[i]));
            (void)rc;
        }
}

static void remove_private_dir(void)
{
    if (private_dir[0]) {
        unlink(private_sock);
        rmdir(private_dir);
    }
}

static void force_exit(int sig)
{
    say(sig == SIGINT ? "SIGINT" : "SIGTERM",
        " again: the device did not return; exiting without flushing or closing it", NULL);
    reqlog_flush_if_free();
    loop_abort();
    if (atomic_load(&pidfile_written))
        unlink(config.pidfile);
    remove_private_dir();
    _exit(1);
}

static void reap_run(void)
{
    pthread_mutex_lock(&run_lock);
    int st;
    bool ended = run_pid > 0 && waitpid(run_pid, &st, WNOHANG) == run_pid;
    if (ended) {
        run_pid = 0;
        if (WIFEXITED(st)) {
            run_status = WEXITSTATUS(st);
        } else {
            run_status = 128 + WTERMSIG(st);
            fprintf(stderr, "usbd-lua: the --run command was killed by signal %d\n", WTERMSIG(st));
        }
    }
    pthread_mutex_unlock(&run_lock);
    if (ended)
        loop_post(LOOP_POST_RUN_ENDED);
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void *signal_thread(void *arg)
{
    int64_t first_stop = -1;   /* when the first SIGINT/SIGTERM came, in ms */
    for (;;) {
        int sig = sigwaitinfo(&taken, NULL);
        if (sig == SIGUSR1) {
            loop_post(LOOP_POST_STATS);
        } else if (sig == SIGHUP) {
            loop_post(LOOP_POST_RESIZE);
        } else if (sig == SIGCHLD) {
            reap_run();
        } else if (sig == SIGINT || sig == SIGTERM) {
            if (config.check) {
                /* Nothing to serve or to hand back: stop the check here. */
                say(sig == SIGINT ? "SIGINT" : "SIGTERM",
                    ": --check stopped; what it changed on the device may not be put back", NULL);
                _exit(128 + sig);
            }
            if (first_stop < 0) {
                first_stop = now_ms();
                loop_post(LOOP_POST_STOP);
            } else if (now_ms() - first_stop >= STOP_GRACE_MS) {
                force_exit(sig);
            }
        }
    }
    return NULL;
}

/* glibc gives each thread that allocates an arena of its own, up to 8 per
 * core: the job threads (RocksDB's memtables and cache, codecs) would
 * each keep the memory they freed. One per core keeps the threads apart
 * as well: with 16 job threads on 2 cores, a dedupdisk's RSS after 4 KiB
 * random rewrites fell by 34 MiB at the same speed. MALLOC_ARENA_MAX or
 * GLIBC_TUNABLES in the environment take precedence. */
static void bound_malloc_arenas(void)
{
    if (getenv("MALLOC_ARENA_MAX") || getenv("GLIBC_TUNABLES"))
        return;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    mallopt(M_ARENA_MAX, cores > 0 ? (int)cores : 1);
}

int process_start(char *err, size_t errlen)
{
    bound_malloc_arenas();
    sigemptyset(&taken);
    sigaddset(&taken, SIGINT);
    sigaddset(&taken, SIGTERM);
    sigaddset(&taken, SIGUSR1);
    sigaddset(&taken, SIGHUP);
    sigaddset(&taken, SIGCHLD);
    pthread_sigmask(SIG_BLOCK, &taken, NULL);
    signal(SIGPIPE, SIG_IGN);

    if (config.run && !config.unix_path && !config.port) {
        snprintf(private_dir, sizeof private_dir, "/tmp/usbd-lua-XXXXXX");
        if (!mkdtemp(private_dir)) {
            snprintf(err, errlen, "cannot make a folder for --run's socket in /tmp: %s", strerror(errno));
            private_dir[0] = '\0';
            return -1;
        }
        snprintf(private_sock, sizeof private_sock, "%s/socket", private_dir);
        config.unix_path = private_sock;
    }

    pthread_t t;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    int rc = thread_start(&t, &attr, signal_thread, NULL);  /* sigwait takes blocked signals */
    pthread_attr_destroy(&attr);
    if (rc) {
        snprintf(err, errlen, "cannot start the signal thread: %s", strerror(rc));
        remove_private_dir();
        return -1;
    }
    return 0;
}

/* Write it under a temporary name and rename it, so that a reader sees no
 * file or the whole pid, never an empty file. */
static int write_pidfile(char *err, size_t errlen)
{
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.%ld.tmp", config.pidfile, (long)getpid());
    FILE *f = fopen(tmp, "we");
    if (!f || fprintf(f, "%ld\n", (long)getpid()) < 0 || fclose(f) != 0 ||
        rename(tmp, config.pidfile) != 0) {
        snprintf(err, errlen, "cannot write the pid file '%s': %s", config.pidfile, strerror(errno));
        unlink(tmp);
        return -1;
    }
    atomic_store(&pidfile_written, true);
    return 0;
}

/* 'it'\''s' : a value the shell reads back exactly. */
static void shell_quote(char *out, size_t len, const char *s)
{
    size_t n = 0;
    if (n < len - 1) out[n++] = '\'';
    for (; *s && n + 5 < len; s++) {
        if (*s == '\'') {
            memcpy(out + n, "'\\''", 4);
            n += 4;
        } else {
            out[n++] = *s;
        }
    }
    out[n++] = '\'';
    out[n] = '\0';
}

static int start_run(const char *uri, char *err, size_t errlen)
{
    /* As nbdkit's captive mode: shell variables set before the command. */
    char quri[1024], qsock[1024], qport[64];
    shell_quote(quri, sizeof quri, uri ? uri : "");
    shell_quote(qsock, sizeof qsock, config.unix_path ? config.unix_path : "");
    shell_quote(qport, sizeof qport, config.port ? config.port : "");
    size_t len = strlen(config.run) + 4 * 1024;
    char *script = malloc(len);
    if (!script) {
        snprintf(err, errlen, "--run: out of memory");
        return -1;
    }
    snprintf(script, len, "uri=%s\nnbd=%s\nunixsocket=%s\nport=%s\n%s\n",
             quri, quri, qsock, qport, config.run);

    posix_spawnattr_t attr;
    posix_spawnattr_init(&attr);
    sigset_t none;
    sigemptyset(&none);
    posix_spawnattr_setsigmask(&attr, &none);
    sigset_t defaults = taken;
    sigaddset(&defaults, SIGPIPE);
    posix_spawnattr_setsigdefault(&attr, &defaults);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    char *argv[] = { "sh", "-c", script, NULL };
    pthread_mutex_lock(&run_lock);
    int rc = posix_spawn(&run_pid, "/bin/sh", NULL, &attr, argv, environ);
    if (rc)
        run_pid = 0;
    pthread_mutex_unlock(&run_lock);
    posix_spawnattr_destroy(&attr);
    free(script);
    if (rc) {
        snprintf(err, errlen, "--run: cannot start /bin/sh: %s", strerror(rc));
        return -1;
    }
    /* It may have ended before run_pid was set: look once more. */
    reap_run();
    return 0;
}

int process_serving(const char *uri, char *err, size_t errlen)
{
    if (config.pidfile && write_pidfile(err, errlen) < 0)
        return -1;
    if (config.run && start_run(uri, err, errlen) < 0)
        return -1;
    return 0;
}

int process_finish(int status)
{
    pthread_mutex_lock(&run_lock);
    pid_t pid = run_pid;
    pthread_mutex_unlock(&run_lock);
    if (pid > 0) {
        /* The server stopped first (a signal, --exit-last): the command
         * loses its disk. SIGTERM, and SIGKILL if 5 s are not enough. */
        kill(pid, SIGTERM);
        for (int i = 0; i < 600 && pid > 0; i++) {
            if (i == 500)
                kill(pid, SIGKILL);
            struct timespec ms10 = { 0, 10 * 1000 * 1000 };
            nanosleep(&ms10, NULL);
            reap_run();
            pthread_mutex_lock(&run_lock);
            pid = run_pid;
            pthread_mutex_unlock(&run_lock);
        }
    }
    if (atomic_load(&pidfile_written))
        unlink(config.pidfile);
    remove_private_dir();
    pthread_mutex_lock(&run_lock);
    int rs = run_status;
    pthread_mutex_unlock(&run_lock);
    if (config.run && rs >= 0 && status == 0)
        return rs;
    return status;
}
