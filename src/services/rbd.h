/* Ceph RBD images through librbd (rbd.c; Lua: usbd.rbd). */
#ifndef USBD_RBD_H
#define USBD_RBD_H

#include <stddef.h>
#include <stdint.h>

#include "types.h"

typedef struct usbd_rbd usbd_rbd;  /* a connection, a pool and an open image */

typedef struct usbd_rbd_config {
    const char *conf;      /* ceph.conf; NULL: CEPH_CONF, else /etc/ceph */
    const char *id;        /* client id; NULL: admin */
    const char *pool;
    const char *image;
    const char *snap;      /* NULL: the image itself; else read-only */
    uint64_t create_size;  /* > 0: create the image if it does not exist */
    int32_t timeout;       /* seconds to reach the cluster (0: 30) */
    int32_t io_timeout;    /* seconds an I/O may wait for OSDs (0: forever) */
    uint8_t readonly;
    uint8_t exclusive;     /* take the exclusive lock: one writer */
    uint8_t _pad[6];
} usbd_rbd_config;

/* Connect and open; NULL with a one-line message in err on failure. */
usbd_rbd *usbd_rbd_open(const usbd_rbd_config *cfg, char *err, size_t errlen);
void usbd_rbd_close(usbd_rbd *r);
/* 1 if the image has a valid fast-diff object map: finding its allocated
 * objects is then cheap (no object is visited). */
int usbd_rbd_fast_diff(usbd_rbd *r);
/* Call changed() whenever the image's header changes (a resize by another
 * client, a snapshot taken), until the image closes. changed runs on a
 * thread of librbd's: it must be a C function safe from any thread. One
 * per image; 0, or -errno. */
int usbd_rbd_watch(usbd_rbd *r, void (*changed)(void));

/* A job on an image: ctx the usbd_rbd, arg the operation, ptr/len/pos as
 * for files. EXTENTS finds the allocated data in [pos, pos+len): ptr has
 * room for fd (offset, length) pairs of uint64_t; result is how many.
 * SIZE: result is the image's size in bytes now (after a resize by
 * another client, librbd reads the new one from the cluster). */
enum {
    USBD_RBD_READ = 1,
    USBD_RBD_WRITE = 2,
    USBD_RBD_DISCARD = 3,
    USBD_RBD_WRITE_ZEROES = 4,
    USBD_RBD_FLUSH = 5,
    USBD_RBD_EXTENTS = 6,
    USBD_RBD_SIZE = 7
};
/* Start the job in librbd (not EXTENTS or SIZE); when done, the loop hands it back
 * as a USBD_EV_JOB event. 0, or -errno if it could not start. */
int usbd_rbd_submit(usbd_job *job);
/* The same, blocking, as a job's run function (EXTENTS and SIZE too). */
void usbd_job_rbd(usbd_job *job);

#endif
