/* rbd.c: Ceph RBD images through librbd.
 *
 * usbd_rbd_open connects to a cluster (librados), opens a pool and an image
 * in it, and for a writer takes the image's exclusive lock, so that a second
 * server on the same image is refused instead of writing beside the first.
 *
 * I/O is asynchronous: usbd_rbd_submit starts a job's read, write, discard,
 * write-zeroes or flush with librbd's aio calls, straight into or out of the
 * job's buffer (the request's), and returns. librbd completes it on one of
 * its own threads, which hands the job back as finished (jobs_finished),
 * exactly as a worker of jobs.c would: no thread of ours is parked per
 * request, and as many requests are in flight as clients send.
 * usbd_job_rbd does the same operation blocking, for callers outside the
 * loop (a device's open, --check, specs) and for the worker pool
 * (extents, whose librbd call has no aio form). */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>

#include <rados/librados.h>
#include <rbd/librbd.h>

#include "rbd.h"
#include "services.h"

struct usbd_rbd {
    rados_t cluster;
    rados_ioctx_t io;
    rbd_image_t image;
    uint64_t watch;          /* rbd_update_watch's handle, if watching */
    void (*changed)(void);   /* usbd_rbd_watch's callback, or NULL */
};

/* librados and librbd start threads as they go; they must take no
 * signals (threads.c). Each call that may start threads runs with every
 * signal blocked, so the threads inherit that. */
#define WITH_SIGNALS_BLOCKED(stmt) do {                 \
        sigset_t old_;                                  \
        signals_block_all(&old_);                       \
        stmt;                                           \
        signals_restore(&old_);                         \
    } while (0)

static void close_parts(usbd_rbd *r)
{
    /* No callback after this returns: librbd waits for one running. */
    if (r->image && r->changed)
        rbd_update_unwatch(r->image, r->watch);
    if (r->image)
        rbd_close(r->image);
    if (r->io)
        rados_ioctx_destroy(r->io);
    if (r->cluster)
        rados_shutdown(r->cluster);
    free(r);
}

/* What went wrong, in words a user acts on. */
static const char *why(int rc)
{
    switch (-rc) {
    case ETIMEDOUT: return "no answer within the timeout (is the cluster up? are conf= and its mon host right?)";
    case EACCES: case EPERM: return "permission denied (check id=, the keyring and the client's caps)";
    default: return strerror(-rc);
    }
}

usbd_rbd *usbd_rbd_open(const usbd_rbd_config *cfg, char *err, size_t errlen)
{
    usbd_rbd *r = calloc(1, sizeof *r);
    int rc;
    char timeout[32];
    const char *name = cfg->image, *pool = cfg->pool, *snap = cfg->snap;
    const char *id = cfg->id && *cfg->id ? cfg->id : NULL;
    if (!r) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    WITH_SIGNALS_BLOCKED(rc = rados_create(&r->cluster, id));
    if (rc < 0) {
        r->cluster = NULL;
        snprintf(err, errlen, "cannot start librados for client.%s: %s", id ? id : "admin", strerror(-rc));
        goto fail;
    }
    /* conf NULL: CEPH_CONF, then the usual places (/etc/ceph/ceph.conf). */
    rc = rados_conf_read_file(r->cluster, cfg->conf && *cfg->conf ? cfg->conf : NULL);
    if (rc < 0) {
        if (cfg->conf && *cfg->conf)
            snprintf(err, errlen, "cannot read the Ceph configuration %s: %s", cfg->conf, strerror(-rc));
        else
            snprintf(err, errlen, "no Ceph configuration found (give conf=FILE, or set CEPH_CONF): %s", strerror(-rc));
        goto fail;
    }
    rados_conf_parse_env(r->cluster, NULL);  /* CEPH_ARGS */
    /* Start-up must end in bounded time when the cluster is unreachable. */
    snprintf(timeout, sizeof timeout, "%d", cfg->timeout > 0 ? cfg->timeout : 30);
    rados_conf_set(r->cluster, "client_mount_timeout", timeout);
    rados_conf_set(r->cluster, "rados_mon_op_timeout", timeout);
    if (cfg->io_timeout > 0) {
        snprintf(timeout, sizeof timeout, "%d", cfg->io_timeout);
        rados_conf_set(r->cluster, "rados_osd_op_timeout", timeout);
    }
    /* A trim must read back as zeroes, even one that covers part of an
     * object (by default librbd would skip those). */
    rados_conf_set(r->cluster, "rbd_skip_partial_discard", "false");
    WITH_SIGNALS_BLOCKED(rc = rados_connect(r->cluster));
    if (rc < 0) {
        snprintf(err, errlen, "cannot connect to the Ceph cluster%s%s as client.%s: %s",
                 cfg->conf && *cfg->conf ? " of " : "", cfg->conf && *cfg->conf ? cfg->conf : "",
                 id ? id : "admin", why(rc));
        rados_shutdown(r->cluster);  /* a failed connect still needs this */
        r->cluster = NULL;
        goto fail;
    }
    rc = rados_ioctx_create(r->cluster, pool, &r->io);
    if (rc < 0) {
        r->io = NULL;
        if (rc == -ENOENT)
            snprintf(err, errlen, "pool %s does not exist (ceph osd pool create %s)", pool, pool);
        else
            snprintf(err, errlen, "cannot open pool %s: %s", pool, why(rc));
        goto fail;
    }
    int readonly = cfg->readonly || (snap && *snap);
    WITH_SIGNALS_BLOCKED(rc = readonly
        ? rbd_open_read_only(r->io, name, &r->image, snap && *snap ? snap : NULL)
        : rbd_open(r->io, name, &r->image, NULL));
    if (rc == -ENOENT && !readonly && cfg->create_size > 0) {
        int order = 0;
        rc = rbd_create2(r->io, name, cfg->create_size,
                         RBD_FEATURE_LAYERING | RBD_FEATURE_EXCLUSIVE_LOCK |
                         RBD_FEATURE_OBJECT_MAP | RBD_FEATURE_FAST_DIFF, &order);
        if (rc < 0 && rc != -EEXIST) {  /* EEXIST: another creator won the race */
            snprintf(err, errlen, "cannot create image %s/%s: %s", pool, name, why(rc));
            r->image = NULL;
            goto fail;
        }
        WITH_SIGNALS_BLOCKED(rc = rbd_open(r->io, name, &r->image, NULL));
    }
    if (rc < 0) {
        r->image = NULL;
        if (rc == -ENOENT && snap && *snap)
            snprintf(err, errlen, "image %s/%s or its snapshot %s does not exist", pool, name, snap);
        else if (rc == -ENOENT)
            snprintf(err, errlen, "image %s/%s does not exist (give size=SIZE to create it)", pool, name);
        else
            snprintf(err, errlen, "cannot open image %s/%s: %s", pool, name, why(rc));
        goto fail;
    }
    if (!readonly && cfg->exclusive) {
        WITH_SIGNALS_BLOCKED(rc = rbd_lock_acquire(r->image, RBD_LOCK_MODE_EXCLUSIVE));
        if (rc < 0) {
            if (rc == -EROFS || rc == -EBUSY)
                snprintf(err, errlen, "image %s/%s is in use: another client holds its exclusive lock", pool, name);
            else if (rc == -EINVAL)
                snprintf(err, errlen, "image %s/%s has no exclusive-lock feature (rbd feature enable %s/%s exclusive-lock)",
                         pool, name, pool, name);
            else
                snprintf(err, errlen, "cannot lock image %s/%s: %s", pool, name, why(rc));
            goto fail;
        }
    }
    return r;
fail:
    close_parts(r);
    return NULL;
}

void usbd_rbd_close(usbd_rbd *r)
{
    if (r)
        close_parts(r);
}

int usbd_rbd_fast_diff(usbd_rbd *r)
{
    uint64_t features = 0, flags = 0;
    if (rbd_get_features(r->image, &features) < 0 || rbd_get_flags(r->image, &flags) < 0)
        return 0;
    return (features & RBD_FEATURE_FAST_DIFF) && !(flags & RBD_FLAG_FAST_DIFF_INVALID);
}

/* On a librbd thread: the image's header has changed. */
static void header_changed(void *arg)
{
    usbd_rbd *r = arg;
    r->changed();
}

int usbd_rbd_watch(usbd_rbd *r, void (*changed)(void))
{
    if (r->changed)
        return -EBUSY;
    r->changed = changed;
    int rc;
    WITH_SIGNALS_BLOCKED(rc = rbd_update_watch(r->image, &r->watch, header_changed, r));
    if (rc < 0)
        r->changed = NULL;
    return rc;
}

/* ---- I/O ------------------------------------------------------------- */

static void finish(usbd_job *job, ssize_t rc)
{
    job->err = rc < 0 ? (int32_t)-rc : 0;
    job->result = rc < 0 ? 0 : rc;
}

/* On a librbd thread: the operation is done; the job is Lua's again. */
static void completed(rbd_completion_t c, void *arg)
{
    usbd_job *job = arg;
    ssize_t rc = rbd_aio_get_return_value(c);
    /* A read that stopped short (the image shrank under us) must not hand
     * the client whatever the buffer held before. */
    if (job->arg == USBD_RBD_READ && rc >= 0 && (uint64_t)rc < job->len)
        memset(job->ptr + rc, 0, job->len - (uint64_t)rc);
    finish(job, rc);
    rbd_aio_release(c);
    jobs_finished(job);
}

int usbd_rbd_submit(usbd_job *job)
{
    usbd_rbd *r = job->ctx;
    rbd_completion_t c;
    int rc = rbd_aio_create_completion(job, completed, &c);
    if (rc < 0)
        return rc;
    switch (job->arg) {
    case USBD_RBD_READ:
        rc = rbd_aio_read2(r->image, job->pos, job->len, (char *)job->ptr, c, 0);
        break;
    case USBD_RBD_WRITE:
        rc = rbd_aio_write2(r->image, job->pos, job->len, (const char *)job->ptr, c, 0);
        break;
    case USBD_RBD_DISCARD:
        rc = rbd_aio_discard(r->image, job->pos, job->len, c);
        break;
    case USBD_RBD_WRITE_ZEROES:
        rc = rbd_aio_write_zeroes(r->image, job->pos, job->len, c, 0, 0);
        break;
    case USBD_RBD_FLUSH:
        rc = rbd_aio_flush(r->image, c);
        break;
    default:
        rc = -EINVAL;
    }
    if (rc < 0)
        rbd_aio_release(c);  /* never started: no callback will come */
    return rc < 0 ? rc : 0;
}

struct extents { uint64_t *runs; uint64_t cap, n; };

static int one_extent(uint64_t off, size_t len, int exists, void *arg)
{
    struct extents *e = arg;
    if (!exists)
        return 0;
    if (e->n >= e->cap)
        return -ERANGE;  /* full: stop, and say so */
    e->runs[2 * e->n] = off;
    e->runs[2 * e->n + 1] = len;
    e->n++;
    return 0;
}

void usbd_job_rbd(usbd_job *job)
{
    usbd_rbd *r = job->ctx;
    ssize_t rc;
    switch (job->arg) {
    case USBD_RBD_READ:
        rc = rbd_read2(r->image, job->pos, job->len, (char *)job->ptr, 0);
        if (rc >= 0 && (uint64_t)rc < job->len)
            memset(job->ptr + rc, 0, job->len - (uint64_t)rc);
        break;
    case USBD_RBD_WRITE:
        rc = rbd_write2(r->image, job->pos, job->len, (const char *)job->ptr, 0);
        break;
    case USBD_RBD_DISCARD:
        rc = rbd_discard(r->image, job->pos, job->len);
        break;
    case USBD_RBD_WRITE_ZEROES:
        rc = rbd_write_zeroes(r->image, job->pos, job->len, 0, 0);
        break;
    case USBD_RBD_FLUSH:
        rc = rbd_flush(r->image);
        break;
    case USBD_RBD_EXTENTS: {
        /* [pos, pos+len): ptr holds room for fd (offset, length) pairs
         * of allocated data, whole objects at a time (cheap with the
         * object map). */
        struct extents e = { (uint64_t *)job->ptr, job->fd > 0 ? (uint64_t)job->fd : 0, 0 };
        /* Writes already answered may still sit in librbd's cache, not yet
         * in the object map: push them out first, or their objects would
         * be reported as holes. */
        rc = rbd_flush(r->image);
        if (rc >= 0)
            rc = rbd_diff_iterate2(r->image, NULL, job->pos, job->len, 1, 1, one_extent, &e);
        if (rc == -ERANGE)
            rc = 0;  /* as many as fit: the caller looks at what they cover */
        if (rc >= 0)
            rc = (ssize_t)e.n;
        break;
    }
    case USBD_RBD_SIZE: {
        uint64_t size;
        rc = rbd_get_size(r->image, &size);
        if (rc >= 0)
            rc = (ssize_t)size;
        break;
    }
    default:
        rc = -EINVAL;
    }
    finish(job, rc);
}
