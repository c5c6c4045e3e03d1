/* What the command line's parsing offers Lua (cli.c): device arguments are
 * sizes too. */
#ifndef USBD_CLI_H
#define USBD_CLI_H

#include <stddef.h>
#include <stdint.h>

/* Every SIZE, of an option or a device's KEY=VALUE, goes through here:
 * a number of bytes ("4096"), or a number with K, M, G, T or P after it,
 * each 1024 times the one before, in either case, and optionally B or iB
 * after that ("64k", "1G", "1GB", "1GiB": KB is 1024 bytes, as K is). The
 * number may have a decimal part when the bytes come out whole ("1.5G",
 * "0.5K"; not "1.3K" or "1.5"). -1 if malformed, not whole or past
 * INT64_MAX. */
int64_t usbd_parse_size(const char *s);
/* The one-line error for a value usbd_parse_size refuses, naming the key
 * (an option's "--max-request", a device's "size"; NULL for none) and the
 * forms it takes: "size=10Q: not a size; use bytes or ...". Returns err. */
const char *usbd_size_error(char *err, size_t errlen, const char *key, const char *value);

#endif
