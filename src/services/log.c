/* Logging: one line per message on stderr, prefixed with the program. */
#include <stdarg.h>
#include <stdio.h>

#include "config.h"
#include "log.h"
#include "services.h"

void log_msg(int level, const char *fmt, ...)
{
    if (level > config.verbose)
        return;
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    fprintf(stderr, "usbd-lua: %s\n", line);
    if (config.verbose >= 2)
        fflush(stderr);  /* buffered at -vv (reqlog.c); this may be another thread */
}

void usbd_log(int level, const char *msg)
{
    if (level <= config.verbose)
        fprintf(stderr, "usbd-lua: %s\n", msg);
}

int usbd_verbosity(void)
{
    return config.verbose;
}

const char *usbd_version(void)
{
    return USBD_VERSION;
}
