/* cutfs: a FUSE file system for tests that cuts the power.
 *
 *   build/cutfs BACKING MOUNTPOINT [-f] [-s] [FUSE options]
 *
 * It mirrors the directory BACKING at MOUNTPOINT. BACKING plays the disk:
 * what is in it survives a power cut, what cutfs holds in memory does not.
 * kill -9 of a program keeps the page cache, so it cannot show whether the
 * program made its writes durable in the right order; a cut here can.
 *
 * The model:
 *   - Names and metadata are durable at once: create, mknod, mkdir, unlink,
 *     rmdir, rename, link, symlink, chmod, chown and utimens go straight to
 *     BACKING. (A simplification: a store fsyncs its directory after them
 *     anyway.)
 *   - A file's contents and size are not: every write and every change of
 *     size (truncate, of a path too, ftruncate, open with O_TRUNC,
 *     fallocate that grows, a write past the end, a punched hole) is
 *     pending state of the file, in memory, keyed by the backing inode
 *     number (a rename keeps it; the file's last name unlinked, it goes
 *     with the last handle). It is kept per 4096-byte page, each holding
 *     the page as it reads, plus a pending size. Reads and getattr see it
 *     on top of BACKING, as they would see the page cache.
 *   - fsync and fdatasync of a file write its pending pages and size to
 *     BACKING and forget them. close, fsyncdir and sync_file_range make
 *     nothing durable. Unmounting does, as a clean shutdown would.
 *   - Writing "cut SEED [P]" (P from 0 to 1, 0.5 if not given) to
 *     MOUNTPOINT/.cutfs (not in BACKING) cuts the power: for every
 *     file with pending state (by inode number, then pages by index) a PRNG
 *     seeded with SEED keeps the size change with probability P and each
 *     pending page with probability P, clipped to the size the file ends
 *     with; the rest is lost. From then on every operation fails with EIO,
 *     as on a dead machine, until unmounted; stderr has a line saying
 *     what was kept. Writing "sync" makes everything durable. Reading
 *     .cutfs gives one line of counters: "pending_files N pending_pages N
 *     cuts N applied_pages N dropped_pages N".
 *
 * Writes through mmap reach cutfs when the kernel writes the pages back
 * (msync, fsync, close, memory pressure); until then they are in the
 * kernel and lost in a cut, like any dirty page. No direct_io (mmap needs
 * the page cache) and no writeback cache (a write reaches cutfs before it
 * returns). File locks stay in the kernel.
 * One mutex serialises everything: this is for correctness, not speed. */
#define FUSE_USE_VERSION 31
#include <fuse.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <linux/falloc.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096u
#define CTL "/.cutfs"

/* ---- A hash table of nodes keyed by a 64-bit number ---------------------- */

struct hnode {
    uint64_t key;
    struct hnode *next;
};

struct htab {
    struct hnode **b;
    size_t nb, n;       /* buckets (a power of two), nodes */
};

static size_t ht_slot(const struct htab *t, uint64_t key)
{
    return (size_t)((key * 0x9E3779B97F4A7C15ull) >> 32) & (t->nb - 1);
}

static struct hnode *ht_find(const struct htab *t, uint64_t key)
{
    if (!t->nb)
        return NULL;
    for (struct hnode *n = t->b[ht_slot(t, key)]; n; n = n->next)
        if (n->key == key)
            return n;
    return NULL;
}

static void ht_add(struct htab *t, struct hnode *n)
{
    if (t->n >= t->nb) {
        size_t nb = t->nb ? t->nb * 2 : 16;
        struct hnode **b = calloc(nb, sizeof *b);
        if (!b) {
            perror("cutfs");
            abort();    /* losing pending state silently would lie */
        }
        struct htab nt = { b, nb, 0 };
        for (size_t i = 0; i < t->nb; i++)
            for (struct hnode *m = t->b[i], *next; m; m = next) {
                next = m->next;
                size_t s = ht_slot(&nt, m->key);
                m->next = b[s];
                b[s] = m;
            }
        free(t->b);
        t->b = b;
        t->nb = nb;
    }
    size_t s = ht_slot(t, n->key);
    n->next = t->b[s];
    t->b[s] = n;
    t->n++;
}

static void ht_del(struct htab *t, struct hnode *n)
{
    for (struct hnode **p = &t->b[ht_slot(t, n->key)]; *p; p = &(*p)->next)
        if (*p == n) {
            *p = n->next;
            t->n--;
            return;
        }
}

static int by_key(const void *a, const void *b)
{
    uint64_t x = (*(struct hnode *const *)a)->key, y = (*(struct hnode *const *)b)->key;
    return x < y ? -1 : x > y;
}

/* The nodes sorted by key, so that a cut is the same given the same state. */
static struct hnode **ht_sorted(const struct htab *t)
{
    struct hnode **v = malloc((t->n ? t->n : 1) * sizeof *v);
    if (!v) {
        perror("cutfs");
        abort();
    }
    size_t k = 0;
    for (size_t i = 0; i < t->nb; i++)
        for (struct hnode *n = t->b[i]; n; n = n->next)
            v[k++] = n;
    qsort(v, k, sizeof *v, by_key);
    return v;
}

/* ---- Files and their pending state --------------------------------------- */

struct page {
    struct hnode h;         /* key: page index */
    uint8_t *data;          /* PAGE bytes; NULL: all zero (a punched hole) */
};

struct file {
    struct hnode h;         /* key: the backing inode number */
    int fd;                 /* on BACKING, read-write; kept while open or pending */
    int handles;            /* open FUSE handles */
    uint64_t dsize;         /* durable size: BACKING's */
    uint64_t size;          /* the size as it reads now */
    uint64_t zfrom;         /* durable bytes from here on read as zero: the least
                             * size since the last sync (a shrink then a grow) */
    struct htab pages;
    size_t grown;           /* pending pages wholly past dsize, for st_blocks */
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int bfd = -1;                /* BACKING */
static struct htab files;
static bool dead;
static uint64_t ncuts, napplied, ndropped;
static int ctl_handle;              /* fi->fh of .cutfs handles points here */
static struct timespec started;     /* .cutfs's times */

static const char *rel(const char *path)
{
    return path[1] ? path + 1 : ".";
}

static bool is_ctl(const char *path)
{
    return path && strcmp(path, CTL) == 0;
}

static bool pending(const struct file *f)
{
    return f->pages.n || f->size != f->dsize || f->zfrom != f->dsize;
}

static void drop_pages(struct file *f)
{
    for (size_t i = 0; i < f->pages.nb; i++)
        for (struct hnode *h = f->pages.b[i], *next; h; h = next) {
            next = h->next;
            free(((struct page *)h)->data);
            free(h);
        }
    free(f->pages.b);
    memset(&f->pages, 0, sizeof f->pages);
    f->grown = 0;
}

static void reset(struct file *f, uint64_t dsize)
{
    drop_pages(f);
    f->dsize = f->size = f->zfrom = dsize;
}

/* Forget f once nothing needs it: no handle, and nothing pending or no
 * name left (an unlinked file's pending state dies with it). */
static void maybe_free(struct file *f)
{
    if (f->handles)
        return;
    struct stat st;
    if (pending(f) && fstat(f->fd, &st) == 0 && st.st_nlink > 0)
        return;
    ht_del(&files, &f->h);
    drop_pages(f);
    close(f->fd);
    free(f);
}

/* After an unlink or a rename over it: ino may have lost its last name. */
static void forget_if_unlinked(ino_t ino)
{
    struct file *f = (struct file *)ht_find(&files, ino);
    if (f)
        maybe_free(f);
}

/* The file open as fd (ours now): its existing record, or a new one. */
static struct file *adopt(int fd)
{
    struct stat st;
    if (fstat(fd, &st) < 0)
        return NULL;
    struct file *f = (struct file *)ht_find(&files, st.st_ino);
    if (f) {
        close(fd);
        return f;
    }
    f = calloc(1, sizeof *f);
    if (!f)
        return NULL;
    f->h.key = st.st_ino;
    f->fd = fd;
    f->dsize = f->size = f->zfrom = (uint64_t)st.st_size;
    ht_add(&files, &f->h);
    return f;
}

/* Open path on BACKING for cutfs's own use: read-write where it can be
 * (we are root), else as asked. */
static struct file *open_file(const char *path, int flags, mode_t mode, int *err)
{
    int keep = flags & (O_CREAT | O_EXCL | O_NOFOLLOW);
    int fd = openat(bfd, rel(path), keep | O_RDWR | O_CLOEXEC, mode);
    if (fd < 0 && (errno == EISDIR || errno == EROFS || errno == ETXTBSY || errno == EACCES))
        fd = openat(bfd, rel(path), keep | (flags & O_ACCMODE) | O_CLOEXEC, mode);
    if (fd < 0) {
        *err = -errno;
        return NULL;
    }
    struct file *f = adopt(fd);
    if (!f) {
        *err = -errno;
        close(fd);
    }
    return f;
}

/* Bytes [off, off+len) as they read, pending pages aside: BACKING's below
 * zfrom, zeroes above. */
static int read_durable(const struct file *f, uint8_t *buf, uint64_t off, size_t len)
{
    size_t have = 0;
    if (off < f->zfrom) {
        size_t want = f->zfrom - off < len ? (size_t)(f->zfrom - off) : len;
        while (have < want) {
            ssize_t r = pread(f->fd, buf + have, want - have, (off_t)(off + have));
            if (r < 0 && errno == EINTR)
                continue;
            if (r < 0)
                return -errno;
            if (r == 0)
                break;
            have += (size_t)r;
        }
    }
    memset(buf + have, 0, len - have);
    return 0;
}

/* Bytes [off, off+len) as they read. */
static int read_visible(const struct file *f, uint8_t *buf, uint64_t off, size_t len)
{
    int rc = read_durable(f, buf, off, len);
    if (rc < 0 || !f->pages.n)
        return rc;
    for (uint64_t i = off / PAGE; i * PAGE < off + len; i++) {
        struct page *p = (struct page *)ht_find(&f->pages, i);
        if (!p)
            continue;
        uint64_t from = i * PAGE > off ? i * PAGE : off;
        uint64_t to = (i + 1) * PAGE < off + len ? (i + 1) * PAGE : off + len;
        if (p->data)
            memcpy(buf + (from - off), p->data + (from - i * PAGE), to - from);
        else
            memset(buf + (from - off), 0, to - from);
    }
    return 0;
}

static void page_free(struct file *f, struct page *p)
{
    ht_del(&f->pages, &p->h);
    if (p->h.key * PAGE >= f->dsize)
        f->grown--;
    free(p->data);
    free(p);
}

/* Page i, pending, with its bytes in memory: a new one starts as the page
 * reads now, unless whole says the caller overwrites all of it. */
static int page_get(struct file *f, uint64_t i, bool whole, struct page **out)
{
    struct page *p = (struct page *)ht_find(&f->pages, i);
    if (p && p->data) {
        *out = p;
        return 0;
    }
    uint8_t *data = malloc(PAGE);
    if (!data)
        return -ENOMEM;
    if (p)
        memset(data, 0, PAGE);
    else if (!whole) {
        int rc = read_durable(f, data, i * PAGE, PAGE);
        if (rc < 0) {
            free(data);
            return rc;
        }
    }
    if (!p) {
        p = calloc(1, sizeof *p);
        if (!p) {
            free(data);
            return -ENOMEM;
        }
        p->h.key = i;
        ht_add(&f->pages, &p->h);
        if (i * PAGE >= f->dsize)
            f->grown++;
    }
    p->data = data;
    *out = p;
    return 0;
}

static int write_pending(struct file *f, const uint8_t *buf, size_t len, uint64_t off)
{
    for (uint64_t pos = off; pos < off + len;) {
        uint64_t i = pos / PAGE, in = pos % PAGE;
        size_t n = PAGE - in < off + len - pos ? PAGE - in : (size_t)(off + len - pos);
        struct page *p;
        int rc = page_get(f, i, n == PAGE, &p);
        if (rc < 0)
            return rc;
        memcpy(p->data + in, buf + (pos - off), n);
        pos += n;
    }
    if (off + len > f->size)
        f->size = off + len;
    return 0;
}

static void truncate_pending(struct file *f, uint64_t size)
{
    if (size < f->size && f->pages.n) {
        /* Pages past the new end go; the one it cuts reads zero after it,
         * should the file grow again. */
        struct hnode **v = ht_sorted(&f->pages);
        size_t n = f->pages.n;
        for (size_t k = 0; k < n; k++) {
            struct page *p = (struct page *)v[k];
            if (p->h.key * PAGE >= size)
                page_free(f, p);
            else if ((p->h.key + 1) * PAGE > size && p->data)
                memset(p->data + size % PAGE, 0, PAGE - size % PAGE);
        }
        free(v);
    }
    f->size = size;
    if (size < f->zfrom)
        f->zfrom = size;
}

/* Zero [off, off+len) within the size, as a punched hole reads. */
static int punch_pending(struct file *f, uint64_t off, uint64_t len)
{
    uint64_t end = off + len < f->size ? off + len : f->size;
    for (uint64_t pos = off; pos < end;) {
        uint64_t i = pos / PAGE, in = pos % PAGE;
        uint64_t n = PAGE - in < end - pos ? PAGE - in : end - pos;
        struct page *p = (struct page *)ht_find(&f->pages, i);
        if (!p && i * PAGE >= f->zfrom) {
            pos += n;           /* reads as zero already */
            continue;
        }
        if (n == PAGE) {
            if (!p) {
                p = calloc(1, sizeof *p);
                if (!p)
                    return -ENOMEM;
                p->h.key = i;
                ht_add(&f->pages, &p->h);
                if (i * PAGE >= f->dsize)
                    f->grown++;
            }
            free(p->data);
            p->data = NULL;
        } else {
            int rc = page_get(f, i, false, &p);
            if (rc < 0)
                return rc;
            memset(p->data + in, 0, n);
        }
        pos += n;
    }
    return 0;
}

/* ---- Making pending state durable: all of it, or what a cut keeps -------- */

/* splitmix64: small, and the same everywhere. */
static uint64_t prng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static bool chance(uint64_t *s, double p)
{
    return (double)(prng_next(s) >> 11) * 0x1.0p-53 < p;
}

static int pwrite_all(int fd, const uint8_t *buf, size_t len, uint64_t off)
{
    while (len) {
        ssize_t w = pwrite(fd, buf, len, (off_t)off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return -errno;
        buf += w, len -= (size_t)w, off += (uint64_t)w;
    }
    return 0;
}

static int write_zeroes(int fd, uint64_t off, size_t len)
{
    static const uint8_t zero[PAGE];
    if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)len) == 0)
        return 0;   /* past BACKING's end it is a no-op: growing zero-fills */
    return pwrite_all(fd, zero, len, off);
}

struct outcome {
    bool sized;                 /* the size change was kept */
    size_t applied, dropped;    /* pages */
};

/* Write f's pending state to BACKING: all of it without a PRNG, else what
 * the PRNG keeps (with probability p each), and forget it. On an error the
 * state stays, so that a later fsync may try again. */
static int persist(struct file *f, uint64_t *prng, double p, struct outcome *o)
{
    memset(o, 0, sizeof *o);
    bool sized = f->size != f->dsize || f->zfrom != f->dsize;
    if (sized && prng)
        sized = chance(prng, p);
    uint64_t end = sized ? f->size : f->dsize;
    int rc = 0;
    if (sized && f->zfrom < f->dsize && ftruncate(f->fd, (off_t)f->zfrom) < 0)
        return -errno;
    struct hnode **v = ht_sorted(&f->pages);
    size_t n = f->pages.n;
    for (size_t k = 0; k < n && rc == 0; k++) {
        struct page *pg = (struct page *)v[k];
        bool keep = prng ? chance(prng, p) : true;
        uint64_t at = pg->h.key * PAGE;
        if (!keep || at >= end) {
            o->dropped++;
            continue;
        }
        size_t len = end - at < PAGE ? (size_t)(end - at) : PAGE;
        rc = pg->data ? pwrite_all(f->fd, pg->data, len, at) : write_zeroes(f->fd, at, len);
        o->applied++;
    }
    free(v);
    if (rc == 0 && sized && ftruncate(f->fd, (off_t)f->size) < 0)
        rc = -errno;
    if (rc < 0)
        return rc;
    o->sized = sized;
    reset(f, end);
    return 0;
}

static int sync_all(void)
{
    struct hnode **v = ht_sorted(&files);
    size_t n = files.n;
    int rc = 0;
    for (size_t k = 0; k < n; k++) {
        struct file *f = (struct file *)v[k];
        struct outcome o;
        int r = pending(f) ? persist(f, NULL, 1, &o) : 0;
        if (r < 0)
            rc = r;
        else
            maybe_free(f);
    }
    free(v);
    return rc;
}

/* The power cut. One line of stderr says what each file kept. */
static int cut(uint64_t seed, double p)
{
    char *log = NULL;
    size_t loglen = 0;
    FILE *out = open_memstream(&log, &loglen);
    if (!out)
        return -ENOMEM;
    uint64_t prng = seed;
    size_t applied = 0, dropped = 0;
    struct hnode **v = ht_sorted(&files);
    size_t n = files.n;
    for (size_t k = 0; k < n; k++) {
        struct file *f = (struct file *)v[k];
        if (!pending(f))
            continue;
        struct stat st;
        if (fstat(f->fd, &st) == 0 && st.st_nlink == 0) {
            fprintf(out, "; ino %llu unlinked: %zu pages gone", (unsigned long long)f->h.key, f->pages.n);
            dropped += f->pages.n;
            reset(f, f->dsize);
            continue;
        }
        uint64_t from = f->dsize, to = f->size;
        bool resized = f->size != f->dsize || f->zfrom != f->dsize;
        struct outcome o;
        int rc = persist(f, &prng, p, &o);
        if (rc < 0) {
            fprintf(out, "; ino %llu: %s", (unsigned long long)f->h.key, strerror(-rc));
            dropped += f->pages.n;
            reset(f, f->dsize);
            continue;
        }
        applied += o.applied;
        dropped += o.dropped;
        fprintf(out, "; ino %llu: pages %zu applied %zu dropped", (unsigned long long)f->h.key,
                o.applied, o.dropped);
        if (resized)
            fprintf(out, ", size %llu -> %llu %s", (unsigned long long)from, (unsigned long long)to,
                    o.sized ? "applied" : "dropped");
    }
    free(v);
    fclose(out);
    fprintf(stderr, "cutfs: cut seed %llu p %g: %zu pages applied, %zu dropped%s\n",
            (unsigned long long)seed, p, applied, dropped, log ? log : "");
    free(log);
    ncuts++;
    napplied += applied;
    ndropped += dropped;
    dead = true;
    return 0;
}

/* ---- The control file ------------------------------------------------------ */

static int ctl_command(const char *buf, size_t len)
{
    char cmd[256];
    if (len >= sizeof cmd)
        return -EINVAL;
    memcpy(cmd, buf, len);
    cmd[len] = 0;
    char word[16], extra[2];
    unsigned long long seed;
    double p = 0.5;
    if (sscanf(cmd, " %15s", word) != 1)
        return -EINVAL;
    if (strcmp(word, "sync") == 0 && sscanf(cmd, " %*s %1s", extra) < 1)
        return dead ? -EIO : sync_all();
    if (strcmp(word, "cut") != 0)
        return -EINVAL;
    int k = sscanf(cmd, " %*s %llu %lf %1s", &seed, &p, extra);
    if (k < 1 || k > 2 || !(p >= 0 && p <= 1))
        return -EINVAL;
    return dead ? -EIO : cut(seed, p);
}

static int ctl_read(char *buf, size_t size, off_t off)
{
    size_t nfiles = 0, npages = 0;
    for (size_t i = 0; i < files.nb; i++)
        for (struct hnode *h = files.b[i]; h; h = h->next) {
            nfiles += pending((struct file *)h);
            npages += ((struct file *)h)->pages.n;
        }
    char line[256];
    int n = snprintf(line, sizeof line,
                     "pending_files %zu pending_pages %zu cuts %llu applied_pages %llu dropped_pages %llu\n",
                     nfiles, npages, (unsigned long long)ncuts, (unsigned long long)napplied,
                     (unsigned long long)ndropped);
    if (off >= n)
        return 0;
    size_t len = (size_t)(n - off) < size ? (size_t)(n - off) : size;
    memcpy(buf, line + off, len);
    return (int)len;
}

static void ctl_stat(struct stat *st)
{
    memset(st, 0, sizeof *st);
    st->st_mode = S_IFREG | 0666;
    st->st_nlink = 1;
    st->st_ino = 1;     /* BACKING's files are never 1 on ext4 and tmpfs */
    st->st_atim = st->st_mtim = st->st_ctim = started;
}

/* ---- FUSE operations ------------------------------------------------------- */

/* Every operation on BACKING runs under the lock, and fails once the
 * power is cut. */
#define ENTER() do {                    \
        pthread_mutex_lock(&lock);      \
        if (dead) {                     \
            pthread_mutex_unlock(&lock); \
            return -EIO;                \
        }                               \
    } while (0)
#define LEAVE(rc) do { int rc_ = (rc); pthread_mutex_unlock(&lock); return rc_; } while (0)

static struct file *fh_file(const struct fuse_file_info *fi)
{
    if (!fi || !fi->fh || fi->fh == (uint64_t)(uintptr_t)&ctl_handle)
        return NULL;
    return (struct file *)(uintptr_t)fi->fh;
}

static bool fh_ctl(const struct fuse_file_info *fi)
{
    return fi && fi->fh == (uint64_t)(uintptr_t)&ctl_handle;
}

static int errno_or(int rc)
{
    return rc < 0 ? -errno : 0;
}

static void *cutfs_init(struct fuse_conn_info *conn, struct fuse_config *cfg)
{
    /* Our inode numbers, so that tests may compare them. Operations on an
     * open file go by handle. (An open file unlinked is renamed to
     * .fuse_hidden* by libfuse, and unlinked at its last close; a cut can
     * leave it behind, main() removes it at the next mount.) */
    cfg->use_ino = 1;
    cfg->nullpath_ok = 1;
    /* Write-through: every write() reaches us before it returns. */
    conn->want &= ~FUSE_CAP_WRITEBACK_CACHE;
    return NULL;
}

static void cutfs_destroy(void *data)
{
    /* An unmount is a clean shutdown: what is pending becomes durable. */
    pthread_mutex_lock(&lock);
    if (!dead && sync_all() < 0)
        fprintf(stderr, "cutfs: could not write everything back at unmount\n");
    pthread_mutex_unlock(&lock);
}

static int cutfs_getattr(const char *path, struct stat *st, struct fuse_file_info *fi)
{
    if (is_ctl(path) || fh_ctl(fi)) {
        ctl_stat(st);
        return 0;
    }
    ENTER();
    struct file *f = fh_file(fi);
    int rc = f ? fstat(f->fd, st) : fstatat(bfd, rel(path), st, AT_SYMLINK_NOFOLLOW);
    if (rc < 0)
        LEAVE(-errno);
    if (!f && S_ISREG(st->st_mode))
        f = (struct file *)ht_find(&files, st->st_ino);
    if (f && pending(f)) {
        /* Blocks: BACKING's below zfrom, and a page for each pending one
         * past the durable end (an estimate, as st_blocks is anyway). */
        blkcnt_t below = (blkcnt_t)((f->zfrom + PAGE - 1) / PAGE * (PAGE / 512));
        st->st_size = (off_t)f->size;
        st->st_blocks = (st->st_blocks < below ? st->st_blocks : below) + (blkcnt_t)f->grown * (PAGE / 512);
    }
    LEAVE(0);
}

static int cutfs_access(const char *path, int mask)
{
    if (is_ctl(path))
        return 0;
    ENTER();
    LEAVE(errno_or(faccessat(bfd, rel(path), mask, 0)));
}

static int cutfs_readlink(const char *path, char *buf, size_t size)
{
    ENTER();
    ssize_t n = readlinkat(bfd, rel(path), buf, size - 1);
    if (n < 0)
        LEAVE(-errno);
    buf[n] = 0;
    LEAVE(0);
}

struct dir {
    DIR *d;
    bool root;      /* lists .cutfs too */
};

static int cutfs_opendir(const char *path, struct fuse_file_info *fi)
{
    ENTER();
    struct dir *d = calloc(1, sizeof *d);
    if (!d)
        LEAVE(-ENOMEM);
    int fd = openat(bfd, rel(path), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0 || !(d->d = fdopendir(fd))) {
        int rc = -errno;
        if (fd >= 0)
            close(fd);
        free(d);
        LEAVE(rc);
    }
    d->root = strcmp(path, "/") == 0;
    fi->fh = (uint64_t)(uintptr_t)d;
    LEAVE(0);
}

static int cutfs_readdir(const char *path, void *buf, fuse_fill_dir_t fill, off_t off,
                         struct fuse_file_info *fi, enum fuse_readdir_flags flags)
{
    ENTER();
    struct dir *d = (struct dir *)(uintptr_t)fi->fh;
    /* Offsets of 0 to fill: libfuse gathers the whole listing at once. */
    rewinddir(d->d);
    struct dirent *e;
    while ((e = readdir(d->d))) {
        if (d->root && strcmp(e->d_name, CTL + 1) == 0)
            continue;
        struct stat st = { .st_ino = e->d_ino, .st_mode = (mode_t)e->d_type << 12 };
        if (fill(buf, e->d_name, &st, 0, 0))
            LEAVE(0);
    }
    if (d->root) {
        struct stat st;
        ctl_stat(&st);
        fill(buf, CTL + 1, &st, 0, 0);
    }
    LEAVE(0);
}

static int cutfs_releasedir(const char *path, struct fuse_file_info *fi)
{
    struct dir *d = (struct dir *)(uintptr_t)fi->fh;
    closedir(d->d);
    free(d);
    return 0;
}

/* Names: straight to BACKING. .cutfs is not to be made or moved. */
static int cutfs_mknod(const char *path, mode_t mode, dev_t rdev)
{
    if (is_ctl(path))
        return -EEXIST;
    ENTER();
    LEAVE(errno_or(mknodat(bfd, rel(path), mode, rdev)));
}

static int cutfs_mkdir(const char *path, mode_t mode)
{
    if (is_ctl(path))
        return -EEXIST;
    ENTER();
    LEAVE(errno_or(mkdirat(bfd, rel(path), mode)));
}

static int cutfs_unlink(const char *path)
{
    if (is_ctl(path))
        return -EPERM;
    ENTER();
    struct stat st;
    bool had = fstatat(bfd, rel(path), &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode);
    if (unlinkat(bfd, rel(path), 0) < 0)
        LEAVE(-errno);
    if (had)
        forget_if_unlinked(st.st_ino);
    LEAVE(0);
}

static int cutfs_rmdir(const char *path)
{
    ENTER();
    LEAVE(errno_or(unlinkat(bfd, rel(path), AT_REMOVEDIR)));
}

static int cutfs_symlink(const char *target, const char *path)
{
    if (is_ctl(path))
        return -EEXIST;
    ENTER();
    LEAVE(errno_or(symlinkat(target, bfd, rel(path))));
}

static int cutfs_rename(const char *from, const char *to, unsigned int flags)
{
    if (is_ctl(from) || is_ctl(to))
        return -EPERM;
    ENTER();
    struct stat st;
    bool had = !(flags & RENAME_EXCHANGE) && fstatat(bfd, rel(to), &st, AT_SYMLINK_NOFOLLOW) == 0 &&
               S_ISREG(st.st_mode);
    if (renameat2(bfd, rel(from), bfd, rel(to), flags) < 0)
        LEAVE(-errno);
    if (had)
        forget_if_unlinked(st.st_ino);
    LEAVE(0);
}

static int cutfs_link(const char *from, const char *to)
{
    if (is_ctl(from) || is_ctl(to))
        return -EPERM;
    ENTER();
    LEAVE(errno_or(linkat(bfd, rel(from), bfd, rel(to), 0)));
}

static int cutfs_chmod(const char *path, mode_t mode, struct fuse_file_info *fi)
{
    if (is_ctl(path) || fh_ctl(fi))
        return 0;
    ENTER();
    struct file *f = fh_file(fi);
    LEAVE(errno_or(f ? fchmod(f->fd, mode) : fchmodat(bfd, rel(path), mode, 0)));
}

static int cutfs_chown(const char *path, uid_t uid, gid_t gid, struct fuse_file_info *fi)
{
    if (is_ctl(path) || fh_ctl(fi))
        return 0;
    ENTER();
    struct file *f = fh_file(fi);
    LEAVE(errno_or(f ? fchown(f->fd, uid, gid) : fchownat(bfd, rel(path), uid, gid, AT_SYMLINK_NOFOLLOW)));
}

static int cutfs_utimens(const char *path, const struct timespec ts[2], struct fuse_file_info *fi)
{
    if (is_ctl(path) || fh_ctl(fi))
        return 0;
    ENTER();
    struct file *f = fh_file(fi);
    LEAVE(errno_or(f ? futimens(f->fd, ts) : utimensat(bfd, rel(path), ts, AT_SYMLINK_NOFOLLOW)));
}

/* Size: pending, like contents. */
static int cutfs_truncate(const char *path, off_t size, struct fuse_file_info *fi)
{
    if (is_ctl(path) || fh_ctl(fi))
        return 0;   /* echo > .cutfs truncates it first */
    ENTER();
    struct file *f = fh_file(fi);
    int rc = 0;
    if (!f && !(f = open_file(path, O_WRONLY, 0, &rc)))
        LEAVE(rc);
    truncate_pending(f, (uint64_t)size);
    maybe_free(f);
    LEAVE(0);
}

static int do_open(const char *path, struct fuse_file_info *fi, mode_t mode)
{
    if (is_ctl(path)) {
        if (fi->flags & O_CREAT && fi->flags & O_EXCL)
            return -EEXIST;
        fi->fh = (uint64_t)(uintptr_t)&ctl_handle;
        fi->direct_io = 1;  /* its reads are not to be cached */
        return 0;
    }
    ENTER();
    int rc = 0;
    struct file *f = open_file(path, fi->flags, mode, &rc);
    if (!f)
        LEAVE(rc);
    f->handles++;
    if (fi->flags & O_TRUNC)
        truncate_pending(f, 0);
    fi->fh = (uint64_t)(uintptr_t)f;
    LEAVE(0);
}

static int cutfs_open(const char *path, struct fuse_file_info *fi)
{
    return do_open(path, fi, 0);
}

static int cutfs_create(const char *path, mode_t mode, struct fuse_file_info *fi)
{
    return do_open(path, fi, mode);
}

static int cutfs_read(const char *path, char *buf, size_t size, off_t off, struct fuse_file_info *fi)
{
    if (fh_ctl(fi)) {
        pthread_mutex_lock(&lock);
        LEAVE(ctl_read(buf, size, off));
    }
    ENTER();
    struct file *f = fh_file(fi);
    if ((uint64_t)off >= f->size)
        LEAVE(0);
    if (size > f->size - (uint64_t)off)
        size = (size_t)(f->size - (uint64_t)off);
    int rc = read_visible(f, (uint8_t *)buf, (uint64_t)off, size);
    LEAVE(rc < 0 ? rc : (int)size);
}

static int cutfs_write(const char *path, const char *buf, size_t size, off_t off, struct fuse_file_info *fi)
{
    if (fh_ctl(fi)) {
        pthread_mutex_lock(&lock);
        int rc = ctl_command(buf, size);
        LEAVE(rc < 0 ? rc : (int)size);
    }
    ENTER();
    int rc = write_pending(fh_file(fi), (const uint8_t *)buf, size, (uint64_t)off);
    LEAVE(rc < 0 ? rc : (int)size);
}

static int cutfs_statfs(const char *path, struct statvfs *st)
{
    ENTER();
    LEAVE(errno_or(fstatvfs(bfd, st)));
}

/* close: nothing becomes durable. */
static int cutfs_flush(const char *path, struct fuse_file_info *fi)
{
    if (fh_ctl(fi))
        return 0;
    ENTER();
    LEAVE(0);
}

static int cutfs_release(const char *path, struct fuse_file_info *fi)
{
    struct file *f = fh_file(fi);
    if (!f)
        return 0;
    pthread_mutex_lock(&lock);
    f->handles--;
    maybe_free(f);
    LEAVE(0);
}

static int cutfs_fsync(const char *path, int datasync, struct fuse_file_info *fi)
{
    if (fh_ctl(fi))
        return 0;
    ENTER();
    struct file *f = fh_file(fi);
    struct outcome o;
    LEAVE(pending(f) ? persist(f, NULL, 1, &o) : 0);
}

static int cutfs_fsyncdir(const char *path, int datasync, struct fuse_file_info *fi)
{
    ENTER();
    LEAVE(0);
}

static int cutfs_fallocate(const char *path, int mode, off_t off, off_t len, struct fuse_file_info *fi)
{
    if (fh_ctl(fi))
        return -EOPNOTSUPP;
    ENTER();
    struct file *f = fh_file(fi);
    if (!f)
        LEAVE(-EBADF);
    if (off < 0 || len <= 0)
        LEAVE(-EINVAL);
    uint64_t end = (uint64_t)off + (uint64_t)len;
    switch (mode) {
    case 0:
        if (end > f->size)
            truncate_pending(f, end);
        LEAVE(0);
    case FALLOC_FL_KEEP_SIZE:
        LEAVE(0);   /* space only: a file system may always have it */
    case FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE:
        LEAVE(punch_pending(f, (uint64_t)off, (uint64_t)len));
    default:
        LEAVE(-EOPNOTSUPP);
    }
}

static const struct fuse_operations ops = {
    .init = cutfs_init,
    .destroy = cutfs_destroy,
    .getattr = cutfs_getattr,
    .access = cutfs_access,
    .readlink = cutfs_readlink,
    .opendir = cutfs_opendir,
    .readdir = cutfs_readdir,
    .releasedir = cutfs_releasedir,
    .mknod = cutfs_mknod,
    .mkdir = cutfs_mkdir,
    .unlink = cutfs_unlink,
    .rmdir = cutfs_rmdir,
    .symlink = cutfs_symlink,
    .rename = cutfs_rename,
    .link = cutfs_link,
    .chmod = cutfs_chmod,
    .chown = cutfs_chown,
    .utimens = cutfs_utimens,
    .truncate = cutfs_truncate,
    .open = cutfs_open,
    .create = cutfs_create,
    .read = cutfs_read,
    .write = cutfs_write,
    .statfs = cutfs_statfs,
    .flush = cutfs_flush,
    .release = cutfs_release,
    .fsync = cutfs_fsync,
    .fsyncdir = cutfs_fsyncdir,
    .fallocate = cutfs_fallocate,
};

/* Files libfuse hid (open when unlinked) and a cut left: gone at the next
 * mount, as a journal's orphans are. */
static int remove_hidden(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
    if (type == FTW_F && strncmp(path + ftw->base, ".fuse_hidden", 12) == 0 && unlink(path) == 0)
        fprintf(stderr, "cutfs: removed %s, unlinked before a cut\n", path);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 3 || argv[1][0] == '-') {
        fprintf(stderr, "usage: %s BACKING MOUNTPOINT [-f] [-s] [FUSE options]\n", argv[0]);
        return 2;
    }
    /* Opened now: fuse_main may daemonise and leave the working directory. */
    bfd = open(argv[1], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (bfd < 0) {
        fprintf(stderr, "cutfs: %s: %s\n", argv[1], strerror(errno));
        return 1;
    }
    nftw(argv[1], remove_hidden, 16, FTW_PHYS);
    clock_gettime(CLOCK_REALTIME, &started);
    argv[1] = argv[0];
    return fuse_main(argc - 1, argv + 1, &ops, NULL);
}
