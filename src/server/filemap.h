/* File mappings that lend a file's page cache to replies (filemap.c;
 * Lua: usbd.file's map). */
#ifndef USBD_FILEMAP_H
#define USBD_FILEMAP_H

#include <stddef.h>
#include <stdint.h>

/* A read-only shared mapping of a file, for lending its page cache to
 * replies. Address space is reserved beyond the file's size (it may grow);
 * bytes past its end are never handed out. */
typedef struct usbd_filemap usbd_filemap;
/* fd is duplicated (the caller keeps its own). NULL with a message in err. */
usbd_filemap *usbd_filemap_open(int fd, char *err, size_t errlen);
/* Settles borrowed replies first, then unmaps. */
void usbd_filemap_close(usbd_filemap *m);
/* [pos, pos+len) in memory if all of it is inside the file and in the page
 * cache now (mincore), else NULL: a page fault there would wait for the
 * disk on the thread that sends. */
const uint8_t *usbd_filemap_resident(usbd_filemap *m, uint64_t pos, uint64_t len);

#endif
