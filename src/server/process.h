/* The process around the server: signals, --pidfile, --run (src/server/process.c). */
#ifndef USBD_PROCESS_H
#define USBD_PROCESS_H

#include <stddef.h>

/* In main, before any other thread: block the signals this file handles and
 * start the thread that takes them; make --run's private socket when no
 * -U/-p is given. 0, or -1 with a one-line message in err. */
int process_start(char *err, size_t errlen);
/* Serving has started: write the pid file, start the --run command with
 * uri (NULL in kernel mode). 0, or -1 with err. */
int process_serving(const char *uri, char *err, size_t errlen);
/* The server is done with status: stop the --run command if it still runs,
 * remove the pid file and the private socket's folder; returns the status
 * to exit with (the command's, under --run). */
int process_finish(int status);

#endif
