/* What C files get from the services beyond the API that Lua sees
 * (usbd.h): the parts no device may call. */
#ifndef USBD_SERVICES_H
#define USBD_SERVICES_H

#include <stdbool.h>

/* file.c: fd was opened by usbd_file_open with O_DIRECT (the ring takes
 * its reads and writes of any size: no copy runs on the loop's thread). */
bool file_is_direct(int fd);

#endif
