/* Threads other than the one running Lua take no signals. The process's
 * signals (SIGINT, SIGTERM, SIGUSR1, SIGHUP, SIGCHLD) go to the signal
 * thread's sigwait. SIGPROF, which LuaJIT's profiler (--profile) asks the
 * kernel for, goes to whichever thread is running when the process's CPU
 * timer expires. The profiler's handler, run on any thread but the Lua
 * thread, races that thread over the VM's dispatch table and can leave it
 * spinning in the profiler's hook for good (LuaJIT issue 1460, fixed after
 * the 2.1 that Debian ships). So every thread we start, and every call into
 * a library that starts threads of its own (RocksDB's open, librados and
 * librbd), runs with every signal blocked, which new threads inherit. */
#include <signal.h>

#include "services.h"

void signals_block_all(sigset_t *old)
{
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, old);
}

void signals_restore(const sigset_t *old)
{
    pthread_sigmask(SIG_SETMASK, old, NULL);
}

int thread_start(pthread_t *t, const pthread_attr_t *attr, void *(*fn)(void *), void *arg)
{
    sigset_t old;
    signals_block_all(&old);
    int rc = pthread_create(t, attr, fn, arg);
    signals_restore(&old);
    return rc;
}
