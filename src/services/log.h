/* Logging from Lua, and the version (log.c). */
#ifndef USBD_LOG_H
#define USBD_LOG_H

/* Logging to stderr; level 0 always, 1 only with -v. */
void usbd_log(int level, const char *msg);
int usbd_verbosity(void);

const char *usbd_version(void);

#endif
