#ifndef USBD_LOG_H
#define USBD_LOG_H
/* level 0: always (errors); 1: -v; 2: -vv. */
void log_msg(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#endif
