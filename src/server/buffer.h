/* Request payload buffers: page-aligned (so O_DIRECT can use them as they
 * are), recycled by size class so a busy connection does not map and unmap
 * memory for every request. Used by the event-loop thread only. */
#ifndef USBD_BUFFER_H
#define USBD_BUFFER_H

#include <stddef.h>
#include <stdint.h>

uint8_t *buffer_get(size_t len);
void buffer_put(uint8_t *ptr, size_t len);

#endif
