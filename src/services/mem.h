/* Memory for devices (mem.c; Lua: usbd.buffer). */
#ifndef USBD_MEM_H
#define USBD_MEM_H

#include <stddef.h>
#include <stdint.h>

/* Zeroed, page-aligned; large regions are mapped lazily. */
uint8_t *usbd_mem_alloc(size_t len);
void usbd_mem_free(uint8_t *ptr, size_t len);
/* Zero [ptr, ptr+len), giving whole pages back to the system. */
void usbd_mem_discard(uint8_t *ptr, size_t len);
int usbd_mem_is_zero(const uint8_t *ptr, size_t len);
/* 1 when the len bytes at a and at b are the same. */
int usbd_mem_equal(const uint8_t *a, const uint8_t *b, size_t len);

#endif
