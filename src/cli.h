/* What the command line's parsing offers Lua (cli.c): device arguments are
 * sizes too. */
#ifndef USBD_CLI_H
#define USBD_CLI_H

#include <stdint.h>

/* "1G", "64k", "4096" -> bytes; -1 if malformed or too large. */
int64_t usbd_parse_size(const char *s);

#endif
