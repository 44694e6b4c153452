/*
 * policy.c — Condor's mechanism in the agent: the shadow decides per file (bypass_rx_policy,
 * asked once per path and remembered for the run of this process), the agent obeys:
 *
 *   export    remote calls as in remote.c, maybe on another export file (a remap);
 *   local:    the execution machine's own file, opened here;
 *   URL       fetched whole by the shadow, copied into a sealed read-only memfd, read here;
 *
 * and for export files one of three bufferings:
 *
 *   none      remote.c's calls (sequential read-ahead);
 *   buffer    a cache of `size` bytes in `block`-aligned blocks (direct-mapped): reads fetch
 *             whole blocks, the offset is kept here, writes wait in the blocks;
 *   stage     the whole file is fetched at the first read, writes wait until close.
 *
 * Exactness: a write that waits is written back before any other call reaches the shadow
 * (bypass_rpc_before_call), so every other call of this process - a stat, another descriptor
 * of the same file, a read of any file - sees it, and before fork, exec and spawn; from then
 * on the files open then go direct (their offset may be shared with another process).  Reads
 * are coherent within the process as remote.c's read-ahead is (any remote write of this
 * process drops older cached blocks), not with other processes writing the same bytes.  A
 * write that fails when written back makes the next fsync or close fail with its error.
 *
 * Counting: what the program did with each remote file (reads, writes, seeks, bytes) is
 * counted here and sent with its close (bypass_rx_tally), for the shadow's I/O report.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bypass_runtime.h"
#include "rpc_client.h"
#include "policy.h"

int bypass_shadow_bypass_rx_policy(int dslot, const char *path, char *where, size_t size, long *bufsize,
                                   long *block);
ssize_t bypass_shadow_bypass_rx_pull(const char *url, void *buf, size_t count, off_t offset);
int bypass_shadow_bypass_rx_tally(int slot, int close, long reads, long rbytes, long writes, long wbytes,
                                  long seeks);
ssize_t bypass_shadow_bypass_rx_pread(int slot, void *buf, size_t count, off_t offset);
ssize_t bypass_shadow_bypass_rx_pwrite(int slot, const void *buf, size_t count, off_t offset);
off_t bypass_shadow_bypass_rx_lseek(int slot, off_t offset, int whence);
int bypass_shadow_bypass_rx_close(int slot);

enum { NO_POLICY = 0, EXPORT = 1, LOCAL = 2, URL = 3 };
enum { DIRECT = 0, BUFFER = 1, STAGE = 2 };
#define STAGE_BLOCK (4u << 20)       /* a staged file travels in blocks this big */
#define PULL_CHUNK (1u << 20)

struct blk {
    long long tag;          /* block number, -1 empty */
    size_t len;             /* full blocks: the file's bytes in it when fetched or written */
    size_t dlo, dhi;        /* bytes waiting to be written back (dlo == dhi: none) */
    int full;               /* fetched (all of [0, block) known) or only [dlo, dhi) written */
};

struct pol {
    struct pol *next, *prev;    /* every buffered file, for write-back before other calls */
    int slot;                   /* a descriptor of it (the one used last) */
    int mode, off;              /* DIRECT / BUFFER / STAGE; off: gone direct for good */
    int have_pos, err, staged, listed;
    off_t pos;                  /* the program's offset while have_pos (the shadow's is stale) */
    size_t block, nblk;
    struct blk *b;
    char *mem;
    unsigned gen;               /* rmt_write_gen() when the cached blocks were known good */
    long long io[5];            /* reads, bytes read, writes, bytes written, seeks */
};

static pthread_mutex_t pol_lock = PTHREAD_MUTEX_INITIALIZER;
static struct pol *all;
static int dirty;                       /* blocks waiting to be written back, all files */
static __thread int own_call;           /* a call policy.c makes (pol_lock held): no hook */
static int no_policy;                   /* the shadow has none: ask no more */
static int names_stay;                  /* no local: or URL remaps: pol_redirect need not ask */
static int exiting;                     /* after the exit handlers: nothing waits */

/* ---- the decisions: one round trip per path, remembered ----------------------------------- */

struct known {
    struct known *next;
    int kind;
    long size, block;
    int fd;                 /* a URL's copy, once made (an agent descriptor: see url_copy) */
    char *where;            /* the local path or URL ("" for the export) */
    char path[];
};
#define KNOWN_BUCKETS 256
static struct known *known[KNOWN_BUCKETS];

static unsigned hash(const char *s)
{
    unsigned h = 2166136261u;
    while (*s)
        h = (h ^ (unsigned char)*s++) * 16777619u;
    return h % KNOWN_BUCKETS;
}

static struct known *recall(const char *path)
{
    for (struct known *k = known[hash(path)]; k; k = k->next)
        if (strcmp(k->path, path) == 0)
            return k;
    return NULL;
}

static struct known *remember(const char *path, const struct pol_choice *c)
{
    size_t n = strlen(path) + 1;
    struct known *k = malloc(sizeof *k + n);
    char *where = k ? strdup(c->where) : NULL;
    if (!where) {
        free(k);
        return NULL;            /* asked again next time: only slower */
    }
    memcpy(k->path, path, n);
    k->kind = c->kind;
    k->fd = -1;
    k->size = c->size;
    k->block = c->block;
    k->where = where;
    unsigned h = hash(path);
    k->next = known[h];
    known[h] = k;
    return k;
}

/* A URL's bytes, pulled from the shadow's copy into a sealed, read-only (0444) memfd. */
static int url_copy(const char *url)
{
    int m = memfd_create("bypass-url", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    char *chunk = m >= 0 ? malloc(PULL_CHUNK) : NULL;
    int e = errno;
    if (!chunk)
        goto fail;
    for (off_t at = 0;;) {
        ssize_t n = bypass_shadow_bypass_rx_pull(url, chunk, PULL_CHUNK, at);
        if (n < 0 || (n > 0 && write(m, chunk, (size_t)n) != n)) {
            e = n < 0 ? errno : EIO;
            goto fail;
        }
        at += n;
        if ((size_t)n < PULL_CHUNK)
            break;
    }
    free(chunk);
    fcntl(m, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL);
    fchmod(m, 0444);
    return m;
fail:
    free(chunk);
    if (m >= 0)
        close(m);
    errno = e;
    return -1;
}

/* The shadow's decision for (dslot, rpath) into *c: from memory, else asked (and remembered
 * for absolute names).  Returns the entry remembered (or NULL), with *asked_failed set when the
 * shadow refused (errno set: a URL it could not fetch). */
static struct known *decide(int dslot, const char *rpath, struct pol_choice *c, int *failed)
{
    c->kind = EXPORT;
    c->size = c->block = 0;
    c->where[0] = 0;
    *failed = 0;
    if (__atomic_load_n(&no_policy, __ATOMIC_RELAXED))
        return NULL;
    pthread_mutex_lock(&pol_lock);
    struct known *k = dslot < 0 ? recall(rpath) : NULL;
    if (k) {
        c->kind = k->kind;
        c->size = k->size;
        c->block = k->block;
        snprintf(c->where, sizeof c->where, "%s", k->where);
    }
    pthread_mutex_unlock(&pol_lock);
    if (k)
        return k;
    int kind = bypass_shadow_bypass_rx_policy(dslot, rpath, c->where, sizeof c->where, &c->size, &c->block);
    if (kind < 0) {
        c->kind = EXPORT;
        *failed = 1;
        return NULL;
    }
    c->where[sizeof c->where - 1] = 0;
    if (kind & 16) {
        __atomic_store_n(&names_stay, 1, __ATOMIC_RELAXED);
        kind &= ~16;
    }
    if (kind == NO_POLICY) {
        __atomic_store_n(&no_policy, 1, __ATOMIC_RELAXED);
        return NULL;
    }
    c->kind = kind;
    if (dslot >= 0)
        return NULL;
    pthread_mutex_lock(&pol_lock);
    k = recall(rpath);
    if (!k)
        k = remember(rpath, c);
    pthread_mutex_unlock(&pol_lock);
    return k;
}

/* A URL's copy for this process, kept as one of the agent's own descriptors (the program can
 * neither close nor reuse its number): -1 when none can be kept. */
#define URL_COPIES_MAX 8
static int url_copies;

static int kept_copy(struct known *k)
{
    pthread_mutex_lock(&pol_lock);
    if (k->fd < 0 && url_copies < URL_COPIES_MAX) {
        own_call = 1;
        int m = url_copy(k->where);
        own_call = 0;
        if (m >= 0) {
            k->fd = bypass_fd_move_high(m);
            if (bypass_fd_register(&k->fd) < 0) {
                close(k->fd);
                k->fd = -1;
            } else {
                url_copies++;
            }
        }
    }
    int fd = k->fd;
    pthread_mutex_unlock(&pol_lock);
    return fd;
}

int pol_redirect(int dslot, char *rpath, size_t cap)
{
    struct pol_choice c;
    int failed;
    if (dslot >= 0 || __atomic_load_n(&no_policy, __ATOMIC_RELAXED) || __atomic_load_n(&names_stay, __ATOMIC_RELAXED))
        return 0;
    int e = errno;
    struct known *k = decide(dslot, rpath, &c, &failed);
    errno = e;
    if (!k || (c.kind != LOCAL && c.kind != URL))
        return 0;               /* (a URL the shadow could not fetch: its name in the export) */
    if (c.kind == LOCAL) {
        if (snprintf(rpath, cap, "%s", c.where) >= (int)cap)
            return 0;
        return 1;
    }
    int fd = kept_copy(k);
    if (fd < 0)
        return 0;               /* (opens still read the URL: pol_choose) */
    snprintf(rpath, cap, "/proc/self/fd/%d", fd);
    return 1;
}

int pol_choose(int *dslot, const char **rpath, int flags, mode_t mode, struct pol_choice *c)
{
    int failed;
    decide(*dslot, *rpath, c, &failed);
    if (failed)
        return -1;              /* (a URL that could not be fetched: the open's error) */
    if (c->kind == LOCAL)
        return open(c->where, flags, mode);      /* (libc's: we are inside the agent) */
    if (c->kind == URL) {
        if ((flags & O_ACCMODE) != O_RDONLY || (flags & O_TRUNC)) {
            errno = EROFS;
            return -1;
        }
        int m = url_copy(c->where);
        if (m < 0)
            return -1;
        char self[40];
        snprintf(self, sizeof self, "/proc/self/fd/%d", m);
        int fd = open(self, O_RDONLY | (flags & (O_CLOEXEC | O_NONBLOCK | O_NOATIME)));
        int e = errno;
        close(m);
        errno = e;
        return fd;
    }
    return -2;                  /* the export (a remap there is the shadow's: see _full) */
}

/* ---- the open files ------------------------------------------------------------------------- */

struct pol *pol_new(const struct pol_choice *c, int flags, int fd)
{
    struct pol *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->slot = fd;
    if (c && c->size != 0 && !(flags & (O_PATH | O_DIRECTORY)) && !exiting) {
        p->mode = c->size < 0 ? STAGE : BUFFER;
        p->block = p->mode == STAGE ? STAGE_BLOCK : (size_t)c->block;
        if (p->block == 0 || p->block > BYPASS_RPC_MAX_PAYLOAD)
            p->block = p->block ? BYPASS_RPC_MAX_PAYLOAD : 32768;
        p->nblk = p->mode == STAGE ? 0 : ((size_t)c->size + p->block - 1) / p->block;
    }
    pthread_mutex_lock(&pol_lock);
    p->next = all;
    if (all)
        all->prev = p;
    all = p;
    p->listed = 1;
    pthread_mutex_unlock(&pol_lock);
    return p;
}

static void unlist(struct pol *p)
{
    if (!p->listed)
        return;
    if (p->prev)
        p->prev->next = p->next;
    else
        all = p->next;
    if (p->next)
        p->next->prev = p->prev;
    p->listed = 0;
}

void pol_free(struct pol *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&pol_lock);
    for (size_t i = 0; p->b && i < p->nblk; i++)
        if (p->b[i].dhi > p->b[i].dlo)
            dirty--;                /* (a close wrote them back; a lost file cannot) */
    unlist(p);
    pthread_mutex_unlock(&pol_lock);
    free(p->b);
    free(p->mem);
    free(p);
}

int pol_buffered(const struct pol *p, int flags, int writing)
{
    return p && p->mode != DIRECT && !p->off && !exiting && !(writing && (flags & O_APPEND));
}

void pol_count(int fd, struct pol *p, int what, ssize_t n)
{
    if (!p)
        return;
    p->slot = fd;
    __atomic_add_fetch(&p->io[what * 2], 1, __ATOMIC_RELAXED);
    if (what < 2 && n > 0)
        __atomic_add_fetch(&p->io[what * 2 + 1], n, __ATOMIC_RELAXED);
}

/* ---- the cache (under pol_lock) ------------------------------------------------------------ */

static struct blk *slot_for(struct pol *p, long long tag, char **mem)
{
    size_t i = p->mode == STAGE ? (size_t)tag : (size_t)tag % p->nblk;
    if (p->mode == STAGE && i >= p->nblk) {
        size_t n = p->nblk ? p->nblk : 1;
        while (n <= i)
            n *= 2;
        struct blk *b = realloc(p->b, n * sizeof *b);
        if (b)
            p->b = b;
        char *m = b ? realloc(p->mem, n * p->block) : NULL;
        if (!m)
            return NULL;
        p->mem = m;
        for (size_t j = p->nblk; j < n; j++)
            p->b[j] = (struct blk){ .tag = -1 };
        p->nblk = n;
    }
    if (!p->b) {
        p->b = malloc(p->nblk * sizeof *p->b);
        p->mem = p->b ? malloc(p->nblk * p->block) : NULL;
        if (!p->mem) {
            free(p->b);
            p->b = NULL;
            return NULL;
        }
        for (size_t j = 0; j < p->nblk; j++)
            p->b[j] = (struct blk){ .tag = -1 };
    }
    *mem = p->mem + i * p->block;
    return &p->b[i];
}

static void write_back(struct pol *p, struct blk *b, char *mem)
{
    if (b->dhi <= b->dlo)
        return;
    own_call = 1;
    off_t at = (off_t)b->tag * (off_t)p->block + (off_t)b->dlo;
    for (size_t done = b->dlo; done < b->dhi;) {
        ssize_t n = bypass_shadow_bypass_rx_pwrite(p->slot, mem + done, b->dhi - done, at);
        if (n <= 0) {
            if (!p->err)
                p->err = n < 0 ? errno : EIO;
            break;
        }
        done += (size_t)n;
        at += n;
    }
    own_call = 0;
    int current = p->gen == rmt_write_gen();
    rmt_wrote();                    /* other descriptors' cached bytes may be stale now */
    if (current)
        p->gen = rmt_write_gen();   /* ours are what was written */
    b->dlo = b->dhi = 0;
    if (!b->full)
        b->tag = -1;
    dirty--;
}

static void write_back_file(struct pol *p)
{
    for (size_t i = 0; p->b && i < p->nblk; i++)
        write_back(p, &p->b[i], p->mem + i * p->block);
}

static void write_back_all(void)
{
    for (struct pol *p = all; p && dirty > 0; p = p->next)
        write_back_file(p);
}

/* Everything else that reaches the shadow sees the writes that wait here. */
void bypass_rpc_before_call(int64_t call)
{
    (void)call;
    if (own_call || __atomic_load_n(&dirty, __ATOMIC_RELAXED) <= 0 || rmt_in_vfork())
        return;
    int e = errno;
    pthread_mutex_lock(&pol_lock);
    write_back_all();
    pthread_mutex_unlock(&pol_lock);
    errno = e;
}

/* Blocks cached before another write of this process may be stale: drop them. */
static void check_fresh(struct pol *p)
{
    if (p->gen == rmt_write_gen())
        return;
    for (size_t i = 0; p->b && i < p->nblk; i++)
        if (p->b[i].dhi <= p->b[i].dlo)
            p->b[i].tag = -1;
    p->staged = 0;
    p->gen = rmt_write_gen();
}

static int fetch(struct pol *p, struct blk *b, char *mem, long long tag)
{
    write_back_all();              /* a read sees every write of this process */
    check_fresh(p);
    own_call = 1;              /* (nothing waits now: no hook needed) */
    ssize_t n = bypass_shadow_bypass_rx_pread(p->slot, mem, p->block, (off_t)tag * (off_t)p->block);
    own_call = 0;
    if (n < 0)
        return -1;
    *b = (struct blk){ .tag = tag, .len = (size_t)n, .full = 1 };
    return 0;
}

static int know_pos(int fd, struct pol *p)
{
    p->slot = fd;
    if (p->have_pos)
        return 0;
    own_call = 1;
    off_t at = bypass_shadow_bypass_rx_lseek(fd, 0, SEEK_CUR);
    own_call = 0;
    if (at < 0)
        return -1;
    p->pos = at;
    p->have_pos = 1;
    return 0;
}

/* stage: the whole file, block after block, at the first read */
static int stage_in(struct pol *p)
{
    for (long long tag = 0; !p->staged; tag++) {
        char *mem;
        struct blk *b = slot_for(p, tag, &mem);
        if (!b) {
            errno = ENOMEM;
            return -1;
        }
        if (!(b->full && b->tag == tag) && fetch(p, b, mem, tag) < 0)
            return -1;
        if (b->len < p->block)
            p->staged = 1;
    }
    return 0;
}

ssize_t pol_read(int fd, struct pol *p, void *buf, size_t n)
{
    pthread_mutex_lock(&pol_lock);
    ssize_t rc = -1;
    if (know_pos(fd, p) < 0)
        goto out;
    if (dirty > 0)
        write_back_all();
    check_fresh(p);
    if (p->mode == STAGE && stage_in(p) < 0)
        goto out;
    size_t done = 0;
    int failed = 0;
    while (done < n) {
        long long tag = p->pos / (off_t)p->block;
        size_t in = (size_t)(p->pos % (off_t)p->block);
        char *mem;
        struct blk *b = slot_for(p, tag, &mem);
        if (!b)
            errno = ENOMEM;
        if (!b || (!(b->full && b->tag == tag) && fetch(p, b, mem, tag) < 0)) {
            failed = 1;             /* what was read is the answer; the error comes next time */
            break;
        }
        if (b->len <= in)
            break;                  /* the end of the file */
        size_t k = b->len - in < n - done ? b->len - in : n - done;
        memcpy((char *)buf + done, mem + in, k);
        done += k;
        p->pos += (off_t)k;
        if (b->len < p->block && in + k == b->len)
            break;                  /* the file ends in this block */
    }
    rc = done || !failed ? (ssize_t)done : -1;
out:
    pthread_mutex_unlock(&pol_lock);
    return rc;
}

ssize_t pol_write(int fd, struct pol *p, const void *buf, size_t n)
{
    pthread_mutex_lock(&pol_lock);
    ssize_t rc = -1;
    if (p->err) {
        errno = p->err;             /* an earlier write could not be written back */
        p->err = 0;
        goto out;
    }
    if (know_pos(fd, p) < 0)
        goto out;
    check_fresh(p);
    size_t done = 0;
    while (done < n) {
        long long tag = p->pos / (off_t)p->block;
        size_t in = (size_t)(p->pos % (off_t)p->block);
        size_t k = p->block - in < n - done ? p->block - in : n - done;
        char *mem;
        struct blk *b = slot_for(p, tag, &mem);
        if (!b) {
            errno = ENOMEM;
            break;
        }
        if (b->tag != tag || (!b->full && (in > b->dhi || in + k < b->dlo))) {
            write_back(p, b, mem);      /* (another block's, or not next to these bytes) */
            *b = (struct blk){ .tag = tag, .dlo = in, .dhi = in };
        }
        if (b->full && in > b->len)
            memset(mem + b->len, 0, in - b->len);   /* a hole between the file's end and these */
        memcpy(mem + in, (const char *)buf + done, k);
        if (b->dhi <= b->dlo) {
            b->dlo = in;
            b->dhi = in + k;
            dirty++;
        } else {
            b->dlo = in < b->dlo ? in : b->dlo;
            b->dhi = in + k > b->dhi ? in + k : b->dhi;
        }
        if (b->full && in + k > b->len)
            b->len = in + k;
        done += k;
        p->pos += (off_t)k;
    }
    rc = done ? (ssize_t)done : n == 0 ? 0 : -1;
out:
    pthread_mutex_unlock(&pol_lock);
    return rc;
}

off_t pol_lseek(int fd, struct pol *p, off_t off, int whence)
{
    pthread_mutex_lock(&pol_lock);
    off_t rc = -1;
    p->slot = fd;
    if (whence == SEEK_SET || (whence == SEEK_CUR && p->have_pos)) {
        off_t base = whence == SEEK_SET ? 0 : p->pos;
        if ((off < 0 && base + off < 0) || (off > 0 && base > INT64_MAX - off)) {
            errno = EINVAL;         /* the kernel's answer for a negative or too large offset */
        } else {
            p->pos = rc = base + off;
            p->have_pos = 1;
        }
    } else {
        /* SEEK_END, SEEK_DATA, SEEK_HOLE: the shadow knows the file (our writes sent first) */
        write_back_file(p);
        own_call = 1;
        rc = p->have_pos ? bypass_shadow_bypass_rx_lseek(fd, p->pos, SEEK_SET) : 0;
        if (rc >= 0)
            rc = bypass_shadow_bypass_rx_lseek(fd, off, whence);
        own_call = 0;
        if (rc >= 0) {
            p->pos = rc;
            p->have_pos = 1;
        }
    }
    pthread_mutex_unlock(&pol_lock);
    return rc;
}

int pol_settle(int fd, struct pol *p)
{
    if (p->mode == DIRECT)
        return 0;
    pthread_mutex_lock(&pol_lock);
    p->slot = fd;
    write_back_file(p);
    int rc = 0;
    if (p->have_pos) {
        own_call = 1;
        rc = bypass_shadow_bypass_rx_lseek(fd, p->pos, SEEK_SET) < 0 ? -1 : 0;
        own_call = 0;
        p->have_pos = 0;
    }
    pthread_mutex_unlock(&pol_lock);
    return rc;
}

int pol_sync(struct pol *p)
{
    pthread_mutex_lock(&pol_lock);
    write_back_file(p);
    int e = p->err;
    p->err = 0;
    pthread_mutex_unlock(&pol_lock);
    if (e) {
        errno = e;
        return -1;
    }
    return 0;
}

static int send_counts(int fd, struct pol *p, int close)
{
    long long c[5];
    for (int i = 0; i < 5; i++)
        c[i] = __atomic_exchange_n(&p->io[i], 0, __ATOMIC_RELAXED);
    if (!close && !(c[0] | c[2] | c[4]))
        return 0;
    return bypass_shadow_bypass_rx_tally(fd, close, (long)c[0], (long)c[1], (long)c[2], (long)c[3], (long)c[4]);
}

int pol_close(int fd, struct pol *p, int last)
{
    int e = 0;
    if (p->mode != DIRECT) {
        pthread_mutex_lock(&pol_lock);
        p->slot = fd;
        write_back_file(p);
        e = p->err;
        p->err = 0;
        if (last)
            unlist(p);
        pthread_mutex_unlock(&pol_lock);
    }
    int rc = send_counts(fd, p, 1);
    if (!last && p->slot == fd)
        p->slot = -1;               /* (the next call through another descriptor sets it) */
    if (rc == 0 && e) {
        errno = e;
        rc = -1;
    }
    return rc;
}

/* Counts of every open file: sent before exec (the new image starts again) and at exit.
 * Under pol_lock. */
static void send_all_counts(void)
{
    own_call = 1;
    for (struct pol *p = all; p; p = p->next)
        if (p->slot >= 0)
            send_counts(p->slot, p, 0);
    own_call = 0;
}

void pol_shared(int how)
{
    pthread_mutex_lock(&pol_lock);
    write_back_all();
    for (struct pol *p = all; p; p = p->next) {
        p->off = 1;
        p->have_pos = 0;            /* (settled by remote.c before this) */
        if (how == 1)
            memset(p->io, 0, sizeof p->io);     /* the child's own count starts here */
    }
    if (how < 0)
        send_all_counts();
    pthread_mutex_unlock(&pol_lock);
}

void pol_settle_for_vfork_child(void)
{
    pthread_mutex_lock(&pol_lock);
    for (struct pol *p = all; p; p = p->next) {
        if (p->mode == DIRECT || p->slot < 0)
            continue;
        write_back_file(p);
        if (p->have_pos)
            bypass_shadow_bypass_rx_lseek(p->slot, p->pos, SEEK_SET);
        p->have_pos = 0;
        p->off = 1;
    }
    pthread_mutex_unlock(&pol_lock);
}

__attribute__((destructor)) static void pol_at_exit(void)
{
    bypass_guard_enter();
    pthread_mutex_lock(&pol_lock);
    write_back_all();
    __atomic_store_n(&exiting, 1, __ATOMIC_RELAXED);   /* stdio flushes after us: direct */
    send_all_counts();
    pthread_mutex_unlock(&pol_lock);
    bypass_guard_leave();
}
