/* usbd-lua: parse the command line, settle signals, hand over to Lua. */
#include <stdio.h>

#include "config.h"
#include "server/luahost.h"
#include "server/process.h"
#include "server/tls.h"

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
    if (config.lua_path)
        return luahost_print_paths();
    /* The credentials, before the device opens: a missing file is a
     * one-line error at once. */
    if (!config.help && tls_setup(err, sizeof err) < 0) {
        fprintf(stderr, "usbd-lua: %s\n", err);
        return 2;
    }

    /* Before any other thread starts, so that every thread inherits the
     * mask and only the signal thread takes the signals. --help DEVICE
     * serves nothing and needs none of it. */
    if (!config.help && process_start(err, sizeof err) < 0) {
        fprintf(stderr, "usbd-lua: %s\n", err);
        return 1;
    }
    return process_finish(luahost_run());
}
