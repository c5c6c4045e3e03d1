/* usbd-lua: parse the command line, settle signals, hand over to Lua. */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>

#include "config.h"
#include "luahost.h"

int main(int argc, char **argv)
{
    char err[512];
    cli_defaults(&config);
    int rc = cli_parse(&config, argc, argv, err, sizeof err);
    if (rc < 0) {
        fprintf(stderr, "usbd-lua: %s\n", err);
        return 2;
    }
    if (rc > 0)
        return 0;

    /* SIGINT and SIGTERM arrive through the event loop's signalfd; block
     * them before any thread starts so every thread inherits the mask. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    return luahost_run();
}
