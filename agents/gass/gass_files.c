/*
 * gass_files.c -- the file operations the gass agent's actions call for URLs, and the table of
 * descriptors gass handed out.
 *
 * The table is keyed by the (st_dev, st_ino) of the local file behind a descriptor, not by the
 * descriptor number: dup(), dup2(), fcntl(F_DUPFD) and freopen() all make new descriptors of
 * the same file without gass seeing them, and an inode key follows them for free.
 *
 * Write-back: a staged write is uploaded by the last process to hold it, when it closes its last
 * descriptor of it or exits (exit, _exit, _Exit). "Last" is the kernel's own count: the program's
 * open file description carries a shared flock(), which is shared by every dup, fork and exec of
 * it and released only when the last descriptor anywhere is closed. Whoever can then take an
 * exclusive flock on the staging file through a descriptor of its own is the last holder, and
 * that lock is also its claim to the upload (no second process sends the file). A process that
 * inherited a staged descriptor across exec has lost the table; it finds the descriptor again at
 * start-up through a record in the cache, writes/<dev>.<ino>, that says where the file goes.
 * An upload that fails where the program can no longer be told (at exit) is reported on stderr
 * and its data kept in the cache's unsent/ directory.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

#include "gass_internal.h"

/* Guard functions of the agent runtime: code running outside an agent action (our exit
 * handler) must bracket its libc calls with them. Weak, so tests link this without the runtime. */
extern void bypass_guard_enter(void) __attribute__((weak));
extern void bypass_guard_leave(void) __attribute__((weak));

struct open_url {
    int writing;               /* 1: staged for upload; 0: a cached copy opened for reading */
    dev_t dev;                 /* the local file behind the descriptors */
    ino_t ino;
    unsigned long long fake_ino;
    /* writing only */
    struct gass_url *url;
    char root[GASS_ROOT_MAX];  /* the cache it is staged in */
    char staging[PATH_MAX];
    char record[PATH_MAX];     /* writes/<dev>.<ino>: how a process after exec finds it */
    int always_upload;         /* new or truncated: upload even if nothing was written */
    struct stat snapshot;      /* staging file right after it was filled */
    char source[PATH_MAX];     /* the cached copy it was filled from, to detect "unchanged" */
    dev_t source_dev;
    ino_t source_ino;
};

/* Read entries only serve fstat(): a bounded ring is enough, the oldest is forgotten. */
#define MAX_READ_ENTRIES 512

static pthread_mutex_t table_lock = PTHREAD_MUTEX_INITIALIZER;
static struct open_url read_entries[MAX_READ_ENTRIES];
static int read_next, read_count;
static struct open_url **writes;
static int write_count, write_cap;
/* Read without the lock on every close(): no pending write means nothing to do. */
static volatile int pending_writes;

static void remember_read(const struct stat *st, const struct gass_url *u)
{
    pthread_mutex_lock(&table_lock);
    struct open_url *e = &read_entries[read_next];
    read_next = (read_next + 1) % MAX_READ_ENTRIES;
    if (read_count < MAX_READ_ENTRIES)
        read_count++;
    memset(e, 0, sizeof *e);
    e->dev = st->st_dev;
    e->ino = st->st_ino;
    e->fake_ino = u->ino;
    pthread_mutex_unlock(&table_lock);
}

/* Caller holds table_lock. */
static int add_write_locked(struct open_url *e)
{
    if (write_count == write_cap) {
        int cap = write_cap ? write_cap * 2 : 8;
        struct open_url **bigger = realloc(writes, (size_t)cap * sizeof *writes);
        if (bigger == NULL) {
            errno = ENOMEM;
            return -1;
        }
        writes = bigger;
        write_cap = cap;
    }
    writes[write_count++] = e;
    pending_writes = write_count;
    return 0;
}

static int add_write(struct open_url *e)
{
    pthread_mutex_lock(&table_lock);
    int rc = add_write_locked(e);
    pthread_mutex_unlock(&table_lock);
    return rc;
}

/* Find (and with `take`, remove) the write entry for a local file. Caller holds the lock. */
static struct open_url *find_write(dev_t dev, ino_t ino, int take)
{
    for (int i = 0; i < write_count; i++) {
        struct open_url *e = writes[i];
        if (e->dev == dev && e->ino == ino) {
            if (take) {
                writes[i] = writes[--write_count];
                pending_writes = write_count;
            }
            return e;
        }
    }
    return NULL;
}

static void free_write(struct open_url *e)
{
    free(e->url);
    free(e);
}

/* ---- stat ---------------------------------------------------------------------------------- */

static void fill_stat(struct stat *st, const struct gass_url *u, long long size, long long mtime)
{
    memset(st, 0, sizeof *st);
    st->st_dev = makedev(GASS_FAKE_DEV_MAJOR, GASS_FAKE_DEV_MINOR);
    st->st_ino = (ino_t)u->ino;
    st->st_mode = S_IFREG | 0644;
    st->st_nlink = 1;
    st->st_uid = geteuid();
    st->st_gid = getegid();
    st->st_size = size;
    st->st_blksize = 65536; /* invites large reads */
    st->st_blocks = (size + 511) / 512;
    st->st_atim.tv_sec = st->st_mtim.tv_sec = st->st_ctim.tv_sec = mtime;
}

int gass_stat(const char *text, struct stat *st)
{
    struct gass_url u;
    struct gass_response r;
    if (gass_url_parse(text, &u) < 0 || gass_http_head(&u, &r) < 0)
        return -1;
    if (r.length < 0 || r.mtime < 0) {
        /* The server does not say (chunked replies, dynamic pages): the true size is only known
         * by fetching, which also makes the cached copy current for the open that follows. */
        char path[PATH_MAX];
        int fd = gass_cache_open(&u, 0, &r, path, sizeof path);
        if (fd < 0)
            return -1;
        struct stat local;
        int rc = fstat(fd, &local);
        close(fd);
        if (rc < 0)
            return -1;
        fill_stat(st, &u, local.st_size, local.st_mtim.tv_sec);
        return 0;
    }
    fill_stat(st, &u, r.length, r.mtime);
    return 0;
}

/* Replace the local identity of a gass descriptor by the URL's, matching gass_stat. */
static int fixup_identity(dev_t dev, ino_t ino, unsigned long long *fake)
{
    int found = 0;
    pthread_mutex_lock(&table_lock);
    for (int i = 0; i < write_count && !found; i++)
        if (writes[i]->dev == dev && writes[i]->ino == ino) {
            *fake = writes[i]->fake_ino;
            found = 1;
        }
    for (int i = 0; i < read_count && !found; i++)
        if (read_entries[i].dev == dev && read_entries[i].ino == ino) {
            *fake = read_entries[i].fake_ino;
            found = 1;
        }
    pthread_mutex_unlock(&table_lock);
    return found;
}

void gass_fstat_fixup(struct stat *st)
{
    unsigned long long fake;
    if ((read_count || pending_writes) && fixup_identity(st->st_dev, st->st_ino, &fake)) {
        st->st_dev = makedev(GASS_FAKE_DEV_MAJOR, GASS_FAKE_DEV_MINOR);
        st->st_ino = (ino_t)fake;
    }
}

int gass_statx(const char *text, unsigned int mask, void *buf)
{
    (void)mask; /* we fill what we know whatever was asked, as the kernel may */
    struct stat st;
    if (gass_stat(text, &st) < 0)
        return -1;
    struct statx *stx = buf;
    memset(stx, 0, sizeof *stx);
    stx->stx_mask = STATX_TYPE | STATX_MODE | STATX_NLINK | STATX_UID | STATX_GID |
                    STATX_ATIME | STATX_MTIME | STATX_CTIME | STATX_INO | STATX_SIZE |
                    STATX_BLOCKS;
    stx->stx_blksize = (unsigned)st.st_blksize;
    stx->stx_nlink = (unsigned)st.st_nlink;
    stx->stx_uid = st.st_uid;
    stx->stx_gid = st.st_gid;
    stx->stx_mode = (unsigned short)st.st_mode;
    stx->stx_ino = st.st_ino;
    stx->stx_size = (unsigned long long)st.st_size;
    stx->stx_blocks = (unsigned long long)st.st_blocks;
    stx->stx_atime.tv_sec = stx->stx_mtime.tv_sec = stx->stx_ctime.tv_sec = st.st_mtim.tv_sec;
    stx->stx_dev_major = GASS_FAKE_DEV_MAJOR;
    stx->stx_dev_minor = GASS_FAKE_DEV_MINOR;
    return 0;
}

void gass_statx_fixup(void *buf)
{
    struct statx *stx = buf;
    unsigned long long fake;
    if ((read_count || pending_writes) &&
        fixup_identity(makedev(stx->stx_dev_major, stx->stx_dev_minor), stx->stx_ino, &fake)) {
        stx->stx_dev_major = GASS_FAKE_DEV_MAJOR;
        stx->stx_dev_minor = GASS_FAKE_DEV_MINOR;
        stx->stx_ino = fake;
    }
}

int gass_access(const char *text, int amode)
{
    struct gass_url u;
    struct gass_response r;
    if (gass_url_parse(text, &u) < 0)
        return -1;
    if (amode & X_OK) {
        errno = EACCES;
        return -1;
    }
    /* F_OK/R_OK: the server must have it. W_OK alone on a missing URL is ENOENT too, as for a
     * missing local file; whether a write is allowed is the server's decision at upload. */
    return gass_http_head(&u, &r) < 0 ? -1 : 0;
}

/* ---- open ---------------------------------------------------------------------------------- */

static int copy_fd(int from, int to)
{
    char buf[65536];
    for (;;) {
        ssize_t n = read(from, buf, sizeof buf);
        if (n == 0)
            return 0;
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        for (ssize_t done = 0; done < n;) {
            ssize_t w = write(to, buf + done, (size_t)(n - done));
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0)
                return -1;
            done += w;
        }
    }
}

static int open_for_reading(const struct gass_url *u, int flags)
{
    struct gass_response r;
    char path[PATH_MAX];
    int fd = gass_cache_open(u, flags & (O_CLOEXEC | O_NONBLOCK | O_NOCTTY), &r, path, sizeof path);
    struct stat st;
    if (fd >= 0 && fstat(fd, &st) == 0)
        remember_read(&st, u);
    return fd;
}

/* writes/<dev>.<ino> of a staged file: what a process that inherits a descriptor of it across
 * exec needs to upload it. It holds the URL as given, credentials included (they are needed
 * for the PUT), so it is 0600 in the 0700 cache and removed as soon as the upload is done. */
static int save_record(struct open_url *e)
{
    char tmp[PATH_MAX + 16], text[GASS_URL_MAX + 3 * PATH_MAX];
    snprintf(e->record, sizeof e->record, "%s/writes/%llx.%llu", e->root,
             (unsigned long long)e->dev, (unsigned long long)e->ino);
    snprintf(tmp, sizeof tmp, "%s.XXXXXX", e->record);
    const struct stat *s = &e->snapshot;
    int n = snprintf(text, sizeof text,
                     "url %s\nstaging %s\nalways %d\nsnapshot %lld %lld %ld %lld %ld\n"
                     "source %llu %llu %s\n",
                     e->url->full, e->staging, e->always_upload, (long long)s->st_size,
                     (long long)s->st_mtim.tv_sec, s->st_mtim.tv_nsec, (long long)s->st_ctim.tv_sec,
                     s->st_ctim.tv_nsec, (unsigned long long)e->source_dev,
                     (unsigned long long)e->source_ino, e->source);
    int fd = mkostemp(tmp, O_CLOEXEC);
    if (fd < 0)
        return -1;
    int ok = n > 0 && (size_t)n < sizeof text && write(fd, text, (size_t)n) == n;
    if (close(fd) < 0 || !ok || rename(tmp, e->record) < 0) {
        int saved = ok ? errno : EIO;
        unlink(tmp);
        e->record[0] = '\0';
        errno = saved;
        return -1;
    }
    return 0;
}

/* The entry for a record, if `st` (an inherited descriptor's file) is its staging file. */
static struct open_url *load_record(const char *root, const char *path, const struct stat *st)
{
    char text[GASS_URL_MAX + 3 * PATH_MAX];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    ssize_t n = read(fd, text, sizeof text - 1);
    close(fd);
    struct open_url *e = calloc(1, sizeof *e);
    if (n <= 0 || e == NULL || (e->url = malloc(sizeof *e->url)) == NULL) {
        free(e);
        return NULL;
    }
    text[n] = '\0';
    int fields = 0;
    long long size = 0, msec = 0, csec = 0;
    unsigned long long sdev = 0, sino = 0;
    for (char *line = text, *next; line && *line; line = next) {
        next = strchr(line, '\n');
        if (next)
            *next++ = '\0';
        int used = 0;
        if (strncmp(line, "url ", 4) == 0 && gass_url_parse(line + 4, e->url) == 0)
            fields |= 1;
        else if (strncmp(line, "staging ", 8) == 0)
            fields |= snprintf(e->staging, sizeof e->staging, "%s", line + 8) > 0 ? 2 : 0;
        else if (sscanf(line, "always %d", &e->always_upload) == 1)
            fields |= 4;
        else if (sscanf(line, "snapshot %lld %lld %ld %lld %ld", &size, &msec,
                        &e->snapshot.st_mtim.tv_nsec, &csec, &e->snapshot.st_ctim.tv_nsec) == 5)
            fields |= 8;
        else if (sscanf(line, "source %llu %llu %n", &sdev, &sino, &used) >= 2 && used > 0)
            fields |= snprintf(e->source, sizeof e->source, "%s", line + used) >= 0 ? 16 : 0;
    }
    struct stat staged;
    if (fields != 31 || stat(e->staging, &staged) < 0 || staged.st_dev != st->st_dev ||
        staged.st_ino != st->st_ino) {
        free_write(e);
        return NULL; /* a stale record, or not this file */
    }
    e->writing = 1;
    e->dev = st->st_dev;
    e->ino = st->st_ino;
    e->fake_ino = e->url->ino;
    e->snapshot.st_size = size;
    e->snapshot.st_mtim.tv_sec = msec;
    e->snapshot.st_ctim.tv_sec = csec;
    e->source_dev = (dev_t)sdev;
    e->source_ino = (ino_t)sino;
    snprintf(e->root, sizeof e->root, "%s", root);
    snprintf(e->record, sizeof e->record, "%s", path);
    return e;
}

static int open_for_writing(const struct gass_url *u, int flags)
{
    struct gass_response r;
    struct open_url *e = calloc(1, sizeof *e);
    if (e == NULL || (e->url = malloc(sizeof *u)) == NULL) {
        free(e);
        errno = ENOMEM;
        return -1;
    }
    memcpy(e->url, u, sizeof *u);
    e->writing = 1;
    e->fake_ino = u->ino;

    if ((flags & O_CREAT) && (flags & O_EXCL)) {
        if (gass_http_head(u, &r) == 0) {
            errno = EEXIST;
            goto fail;
        }
        if (errno != ENOENT)
            goto fail;
    }

    int stage = gass_cache_stage_path(e->staging, sizeof e->staging);
    if (stage < 0)
        goto fail;

    if (flags & (O_TRUNC | O_EXCL)) {
        e->always_upload = 1; /* starts empty: the result must reach the server as is */
    } else {
        /* Keep the server's content, as open() without O_TRUNC keeps a file's. */
        int cached = gass_cache_open(u, 0, &r, e->source, sizeof e->source);
        if (cached >= 0) {
            struct stat src;
            int rc = fstat(cached, &src) == 0 ? copy_fd(cached, stage) : -1;
            int saved = errno;
            close(cached);
            if (rc < 0) {
                errno = saved;
                goto fail_stage;
            }
            e->source_dev = src.st_dev;
            e->source_ino = src.st_ino;
        } else if (errno == ENOENT && (flags & O_CREAT)) {
            e->always_upload = 1;
        } else {
            goto fail_stage;
        }
    }
    if (fstat(stage, &e->snapshot) < 0)
        goto fail_stage;
    close(stage);
    e->dev = e->snapshot.st_dev;
    e->ino = e->snapshot.st_ino;

    /* The program's descriptor, with its own access mode and flags (O_APPEND, O_CLOEXEC...),
     * marked with the shared lock that tells when its last holder is gone. */
    int fd = open(e->staging, flags & ~(O_CREAT | O_EXCL | O_TRUNC | O_DIRECTORY));
    if (fd < 0 || flock(fd, LOCK_SH) < 0 || gass_cache_ensure_dirs(e->root, sizeof e->root) < 0 ||
        save_record(e) < 0 || add_write(e) < 0) {
        int saved = errno;
        if (fd >= 0)
            close(fd);
        if (e->record[0])
            unlink(e->record);
        unlink(e->staging);
        free_write(e);
        errno = saved;
        return -1;
    }
    gass_dlog(GASS_DEBUG_CACHE, "staging %s for upload%s", u->logname, e->always_upload ? "" : " (if changed)");
    return fd;

fail_stage:;
    int saved = errno;
    close(stage);
    unlink(e->staging);
    errno = saved;
fail:
    saved = errno;
    free_write(e);
    errno = saved;
    return -1;
}

int gass_open(const char *text, int flags, mode_t mode)
{
    (void)mode; /* the server decides permissions; the staging file is private (0600) */
    struct gass_url u;
    if (gass_url_parse(text, &u) < 0)
        return -1;
    if (flags & O_DIRECTORY) {
        errno = ENOTDIR;
        return -1;
    }
    if ((flags & O_ACCMODE) == O_RDONLY && !(flags & O_TRUNC))
        return open_for_reading(&u, flags);
    return open_for_writing(&u, flags);
}

static int mode_flags(const char *mode)
{
    int flags;
    switch (mode[0]) {
    case 'r': flags = 0; break;
    case 'w': flags = O_CREAT | O_TRUNC; break;
    case 'a': flags = O_CREAT | O_APPEND; break;
    default: errno = EINVAL; return -1;
    }
    int plus = 0;
    for (const char *p = mode + 1; *p && *p != ','; p++) {
        if (*p == '+')
            plus = 1;
        else if (*p == 'x')
            flags |= O_EXCL;
        else if (*p == 'e')
            flags |= O_CLOEXEC;
    }
    if (plus)
        flags |= O_RDWR;
    else
        flags |= mode[0] == 'r' ? O_RDONLY : O_WRONLY;
    return flags;
}

/* Forget a write entry without uploading (the FILE could not be made). */
static void discard(int fd)
{
    struct stat st;
    struct open_url *e = NULL;
    if (fstat(fd, &st) == 0) {
        pthread_mutex_lock(&table_lock);
        e = find_write(st.st_dev, st.st_ino, 1);
        pthread_mutex_unlock(&table_lock);
    }
    close(fd);
    if (e) {
        unlink(e->record);
        unlink(e->staging);
        free_write(e);
    }
}

FILE *gass_fopen(const char *url, const char *mode)
{
    int flags = mode_flags(mode);
    if (flags < 0)
        return NULL;
    int fd = gass_open(url, flags, 0666);
    if (fd < 0)
        return NULL;
    FILE *fp = fdopen(fd, mode);
    if (fp == NULL) {
        int saved = errno;
        discard(fd);
        errno = saved;
    }
    return fp;
}

FILE *gass_freopen(const char *url, const char *mode, FILE *stream)
{
    int flags = mode_flags(mode);
    if (flags < 0)
        return NULL;
    int fd = gass_open(url, flags, 0666);
    if (fd < 0)
        return NULL;
    /* Reopen the stream on our file through /proc, keeping the FILE the program holds;
     * 'x' would refuse the existing staging file, so it is dropped (checked above). */
    char path[64], plain[16];
    size_t n = 0;
    for (const char *p = mode; *p && *p != ',' && n < sizeof plain - 1; p++)
        if (*p != 'x')
            plain[n++] = *p;
    plain[n] = '\0';
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    FILE *fp = freopen(path, plain, stream);
    int saved = errno;
    if (fp == NULL)
        discard(fd);
    else if (flock(fileno(fp), LOCK_SH) < 0) { /* its own description: mark it too */
        saved = errno;
        fclose(fp);
        discard(fd);
        fp = NULL;
    } else {
        close(fd); /* the stream has its own descriptor of the same file now */
    }
    errno = saved;
    return fp;
}

/* ---- close and write-back ------------------------------------------------------------------ */

/* Call fn(name, arg) for each entry of the directory open as `dfd` (not "." and ".."), until it
 * returns nonzero; returns that value. getdents64 into a stack buffer rather than opendir():
 * this runs in _exit, maybe in a vfork child, where malloc is best left alone. */
static int each_entry(int dfd, int (*fn)(const char *name, void *arg), void *arg)
{
    char buf[4096] __attribute__((aligned(8)));
    for (;;) {
        long n = syscall(SYS_getdents64, dfd, buf, sizeof buf);
        if (n <= 0)
            return 0;
        for (long off = 0; off < n;) {
            struct {
                unsigned long long ino;
                long long off;
                unsigned short reclen;
                unsigned char type;
                char name[];
            } *d = (void *)(buf + off);
            off += d->reclen;
            if (d->name[0] == '.' && (d->name[1] == '\0' || (d->name[1] == '.' && d->name[2] == '\0')))
                continue;
            int stop = fn(d->name, arg);
            if (stop)
                return stop;
        }
    }
}

/* Apply fn to each descriptor of this process (except the one used to list them). */
struct fd_walk {
    int self;
    int (*fn)(int fd, const struct stat *st, void *arg);
    void *arg;
};

static int visit_fd(const char *name, void *arg)
{
    struct fd_walk *w = arg;
    int fd = atoi(name);
    struct stat st;
    if (fd == w->self || fstat(fd, &st) < 0)
        return 0;
    return w->fn(fd, &st, w->arg);
}

static int each_fd(int (*fn)(int fd, const struct stat *st, void *arg), void *arg)
{
    int dfd = open("/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        return 0;
    struct fd_walk w = {dfd, fn, arg};
    int rc = each_entry(dfd, visit_fd, &w);
    close(dfd);
    return rc;
}

static int same_content(const char *a, const char *b)
{
    int fa = open(a, O_RDONLY | O_CLOEXEC), fb = open(b, O_RDONLY | O_CLOEXEC);
    int same = fa >= 0 && fb >= 0;
    static __thread char ba[65536], bb[65536];
    while (same) {
        ssize_t na = read(fa, ba, sizeof ba), nb = read(fb, bb, sizeof bb);
        if (na != nb || na < 0 || memcmp(ba, bb, (size_t)na) != 0)
            same = 0;
        else if (na == 0)
            break;
    }
    if (fa >= 0)
        close(fa);
    if (fb >= 0)
        close(fb);
    return same;
}

/* Was the staged copy of a server file changed? Timestamps can miss a write made within the
 * same clock tick as the copy, so equal metadata is confirmed by comparing the bytes. */
static int changed(const struct open_url *e, const struct stat *now)
{
    if (e->always_upload)
        return 1;
    if (now->st_size != e->snapshot.st_size ||
        now->st_mtim.tv_sec != e->snapshot.st_mtim.tv_sec ||
        now->st_mtim.tv_nsec != e->snapshot.st_mtim.tv_nsec ||
        now->st_ctim.tv_sec != e->snapshot.st_ctim.tv_sec ||
        now->st_ctim.tv_nsec != e->snapshot.st_ctim.tv_nsec)
        return 1;
    struct stat src;
    if (stat(e->source, &src) < 0 || src.st_dev != e->source_dev || src.st_ino != e->source_ino)
        return 1; /* the copy it came from is gone: cannot tell, upload to be safe */
    return !same_content(e->staging, e->source);
}

enum { HELD = -1, GONE = -2 };

static int holds(int fd, const struct stat *st, void *arg)
{
    (void)fd;
    const struct open_url *e = arg;
    return st->st_dev == e->dev && st->st_ino == e->ino;
}

/* Try to become the uploader of `e`: a descriptor of its staging file holding an exclusive
 * lock, or HELD (a descriptor of the program's is still open, here or in another process), or
 * GONE (another process has uploaded it). Caller holds table_lock, so `e` stays valid. */
static int claim(const struct open_url *e)
{
    /* Our own descriptors first: where flock() is emulated with per-process POSIX locks (NFS),
     * a process never conflicts with itself. */
    if (each_fd(holds, (void *)e))
        return HELD;
    int fd = open(e->staging, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return GONE;
    struct stat st;
    if (fstat(fd, &st) < 0 || st.st_dev != e->dev || st.st_ino != e->ino) {
        close(fd);
        return GONE;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
        close(fd);
        return HELD;
    }
    /* An uploader unlinks before it lets go of its lock: a name still there is still ours. */
    if (fstat(fd, &st) < 0 || st.st_nlink == 0) {
        close(fd);
        return GONE;
    }
    return fd;
}

/* An upload failed where nobody can be told: keep the data as unsent/<key>.<time>.<pid>.<ino>
 * (the staging file's inode: unique among files kept at once), with the destination in
 * <that>.url, and say so in one line. */
static void keep_unsent(const struct open_url *e, const char *why)
{
    char path[PATH_MAX + 96], url_path[PATH_MAX + 112];
    snprintf(path, sizeof path, "%s/unsent/%s.%lld.%d.%llu", e->root, e->url->key,
             (long long)time(NULL), (int)getpid(), (unsigned long long)e->ino);
    snprintf(url_path, sizeof url_path, "%s.url", path);
    int kept = rename(e->staging, path) == 0;
    if (kept) {
        int fd = open(url_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (fd >= 0) {
            char line[GASS_URL_MAX + 2];
            int n = snprintf(line, sizeof line, "%s\n", e->url->redacted);
            ssize_t ignored = write(fd, line, n > 0 && (size_t)n < sizeof line ? (size_t)n : 0);
            (void)ignored;
            close(fd);
        }
        gass_log("upload of %s failed (%s); its data is kept in %s", e->url->logname, why, path);
    } else {
        gass_log("upload of %s failed (%s) and its data could not be kept (%s)",
                 e->url->logname, why, strerror(errno));
        unlink(e->staging);
    }
}

/* Send a finished staging file (`fd`, from claim()) to the server and drop the entry. With
 * `told` the program learns of a failure from close(), so the data goes; without, it is kept.
 * 0, or -1 with errno. */
static int upload(struct open_url *e, int fd, int told)
{
    int rc = 0, saved = 0;
    struct stat st;
    char why[400] = "";
    if (fstat(fd, &st) < 0) {
        rc = -1;
        saved = errno;
    } else if (!changed(e, &st)) {
        gass_dlog(GASS_DEBUG_HTTP, "%s unchanged, not uploaded", e->url->logname);
    } else {
        struct gass_response r;
        rc = gass_http_put(e->url, fd, st.st_size, &r);
        saved = errno;
        if (rc < 0 && r.error[0])
            snprintf(why, sizeof why, "%s", r.error);
        else if (rc < 0)
            snprintf(why, sizeof why, "HTTP %ld: %s", r.status, strerror(saved));
        if (rc < 0 && told)
            gass_log("upload of %s failed (%s)", e->url->logname, why);
        /* Either way our cached copy (if any) no longer describes the server's file. */
        gass_cache_forget(e->url);
    }
    if (rc < 0 && !told)
        keep_unsent(e, why[0] ? why : strerror(saved));
    else
        unlink(e->staging);
    unlink(e->record);
    close(fd); /* releases the claim, after the name is gone */
    free_write(e);
    errno = saved;
    return rc;
}

/* Take `e` out of the table if this process is to upload it (or it is gone); the claim or
 * HELD/GONE. Caller holds table_lock. */
static int claim_entry(struct open_url *e)
{
    int fd = claim(e);
    if (fd != HELD)
        find_write(e->dev, e->ino, 1);
    return fd;
}

/* After a descriptor of (dev, ino) was closed with result `rc`/`err`: upload if that was the
 * last descriptor anywhere of a staged write, and fold the upload's error into the result. */
static int finish_close(dev_t dev, ino_t ino, int rc, int err)
{
    pthread_mutex_lock(&table_lock);
    struct open_url *e = find_write(dev, ino, 0);
    int fd = e ? claim_entry(e) : HELD;
    pthread_mutex_unlock(&table_lock);
    if (fd == GONE)
        free_write(e);
    else if (fd >= 0 && upload(e, fd, 1) < 0 && rc == 0) {
        rc = -1;
        err = errno;
    }
    errno = err;
    return rc;
}

void gass_close_prepare(int fd, struct gass_closing *c)
{
    struct stat st;
    c->staged = pending_writes && fstat(fd, &st) == 0;
    if (c->staged) {
        c->dev = st.st_dev;
        c->ino = st.st_ino;
    }
}

void gass_fclose_prepare(FILE *stream, struct gass_closing *c)
{
    int fd;
    c->staged = 0;
    if (pending_writes && stream != NULL && (fd = fileno(stream)) >= 0)
        gass_close_prepare(fd, c);
}

int gass_close_finish(const struct gass_closing *c, int rc)
{
    if (!c->staged)
        return rc;
    return finish_close(c->dev, c->ino, rc, errno);
}

int gass_close(int fd)
{
    struct gass_closing c;
    gass_close_prepare(fd, &c);
    int rc = close(fd);
    return gass_close_finish(&c, rc);
}

int gass_fclose(FILE *fp)
{
    struct gass_closing c;
    gass_fclose_prepare(fp, &c);
    int rc = fclose(fp);
    return gass_close_finish(&c, rc) == 0 ? 0 : EOF;
}

/* The process is ending: its descriptors of staged files are as good as closed. */
static int close_if_staged(int fd, const struct stat *st, void *arg)
{
    (void)arg;
    if (find_write(st->st_dev, st->st_ino, 0) != NULL)
        close(fd);
    return 0;
}

/* _exit may be called from a signal handler, maybe one that interrupted this very thread
 * inside gass: never wait for ever on the table, never start an exchange inside another. */
static int lock_table_patiently(void)
{
    for (int i = 0; i < 200; i++) {
        if (pthread_mutex_trylock(&table_lock) == 0)
            return 0;
        struct timespec pause = {0, 10 * 1000 * 1000};
        nanosleep(&pause, NULL);
    }
    return -1;
}

static int sync_at_exit(int from_exit_call)
{
    int rc = 0, err = 0;
    if (!pending_writes)
        return 0;
    if (from_exit_call && lock_table_patiently() < 0) {
        gass_log("exit while gass is busy: staged files not uploaded (left in the cache's tmp/)");
        errno = EBUSY;
        return -1;
    }
    if (!from_exit_call)
        pthread_mutex_lock(&table_lock);
    each_fd(close_if_staged, NULL);
    pthread_mutex_unlock(&table_lock);
    int no_network = from_exit_call && gass_http_busy();
    for (int i = 0;;) {
        if (from_exit_call ? lock_table_patiently() < 0 : pthread_mutex_lock(&table_lock) != 0)
            break;
        struct open_url *e = NULL;
        int fd = HELD;
        /* Entries still held by another process stay in the table: they are theirs to send. */
        while (fd == HELD && i < write_count) {
            e = writes[i];
            fd = claim_entry(e);
            if (fd == HELD)
                i++;
        }
        pthread_mutex_unlock(&table_lock);
        if (fd == HELD)
            break;
        if (fd == GONE) {
            free_write(e);
        } else if (no_network) {
            keep_unsent(e, "exit in the middle of a transfer");
            unlink(e->record);
            close(fd);
            free_write(e);
            rc = -1;
            err = EINTR;
        } else if (upload(e, fd, 0) < 0) {
            rc = -1;
            err = errno;
        }
    }
    errno = err;
    return rc;
}

int gass_sync_all(void)
{
    return sync_at_exit(0);
}

/* Before _exit/_Exit (which skip atexit handlers): upload what this process was the last to
 * hold. A failed upload turns a successful exit status into 1 (its data is kept). */
void gass_exit_uploads(int *status)
{
    if (!pending_writes)
        return;
    int saved = errno;
    if (sync_at_exit(1) < 0 && *status == 0)
        *status = 1;
    errno = saved;
}

/* At exit, files the program never closed (or closed inside libc, e.g. stdout by exit()) are
 * still pending. Registered from a constructor, i.e. before main() registers its own handlers,
 * so it runs after them (atexit is last-in first-out): gnulib's close_stdout has closed stdout
 * through fclose() -- and had the upload error reported -- by then. */
static void at_exit(void)
{
    if (!pending_writes)
        return;
    if (bypass_guard_enter)
        bypass_guard_enter();
    fflush(NULL); /* stdio buffers are flushed after atexit handlers: do it now */
    if (gass_sync_all() < 0)
        _exit(1); /* the program's output did not arrive: it must not look successful */
    if (bypass_guard_leave)
        bypass_guard_leave();
}

/* exec: descriptors without FD_CLOEXEC survive it, and the new image takes them over from
 * their records (adopt_fd below). A staged file this process holds only through FD_CLOEXEC
 * descriptors (Python's open() makes those) is closed by the exec itself, where gass cannot
 * see it: before exec, it is marked writes/exec.<pid>.<start time>.<dev>.<ino> (a link to its
 * record), and the new image -- same pid, same start time; a recycled pid has another -- sends
 * it at start-up if by then nobody holds it. */
static int exec_tag(char *tag, size_t size)
{
    char stat_text[1024];
    int fd = open("/proc/self/stat", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, stat_text, sizeof stat_text - 1);
    close(fd);
    if (n <= 0)
        return -1;
    stat_text[n] = '\0';
    /* Field 22 (start time) counted from the 3rd, after the command name's ')'. */
    const char *p = strrchr(stat_text, ')');
    for (int field = 2; p != NULL && field < 22; field++)
        p = strchr(p + 1, ' ');
    if (p == NULL)
        return -1;
    snprintf(tag, size, "exec.%d.%llu.", (int)getpid(), strtoull(p + 1, NULL, 10));
    return 0;
}

static int survives_exec(int fd, const struct stat *st, void *arg)
{
    const struct open_url *e = arg;
    return st->st_dev == e->dev && st->st_ino == e->ino && !(fcntl(fd, F_GETFD) & FD_CLOEXEC);
}

void gass_before_exec(void)
{
    char tag[64], mark[PATH_MAX];
    if (!pending_writes || exec_tag(tag, sizeof tag) < 0)
        return;
    int saved = errno;
    pthread_mutex_lock(&table_lock);
    for (int i = 0; i < write_count; i++) {
        struct open_url *e = writes[i];
        if (each_fd(survives_exec, e))
            continue;
        snprintf(mark, sizeof mark, "%s/writes/%s%llx.%llu", e->root, tag,
                 (unsigned long long)e->dev, (unsigned long long)e->ino);
        if (link(e->record, mark) < 0 && errno != EEXIST)
            gass_log("%s: cannot mark for upload after exec: %s", e->url->logname, strerror(errno));
    }
    pthread_mutex_unlock(&table_lock);
    errno = saved;
}

/* A process that inherited staged descriptors across exec takes them over from their records:
 * checked at start-up, and costs one failed open() when nothing is being written anywhere. */
struct adopt {
    char root[GASS_ROOT_MAX];
    char tag[64];              /* "" until needed */
};

static int any_entry(const char *name, void *arg)
{
    (void)name;
    (void)arg;
    return 1;
}

static int adopt_fd(int fd, const struct stat *st, void *arg)
{
    (void)fd;
    struct adopt *a = arg;
    char path[PATH_MAX];
    if (!S_ISREG(st->st_mode) || find_write(st->st_dev, st->st_ino, 0) != NULL)
        return 0;
    snprintf(path, sizeof path, "%s/writes/%llx.%llu", a->root, (unsigned long long)st->st_dev,
             (unsigned long long)st->st_ino);
    if (access(path, F_OK) < 0)
        return 0;
    struct open_url *e = load_record(a->root, path, st);
    if (e != NULL && add_write_locked(e) < 0)
        free_write(e);
    return 0;
}

/* A mark left by this process's previous image before exec: send the file if nobody holds it. */
static int finish_exec_mark(const char *name, void *arg)
{
    struct adopt *a = arg;
    size_t len = strlen(a->tag);
    unsigned long long dev, ino;
    if (strncmp(name, a->tag, len) != 0 || sscanf(name + len, "%llx.%llu", &dev, &ino) != 2)
        return 0;
    char mark[PATH_MAX], record[PATH_MAX];
    snprintf(mark, sizeof mark, "%s/writes/%s", a->root, name);
    snprintf(record, sizeof record, "%s/writes/%llx.%llu", a->root, dev, ino);
    struct stat st = {.st_dev = (dev_t)dev, .st_ino = (ino_t)ino};
    struct open_url *e = load_record(a->root, record, &st);
    unlink(mark);
    if (e == NULL)
        return 0;
    int fd = claim(e);
    if (fd >= 0)
        upload(e, fd, 0);
    else
        free_write(e); /* held by another process, which sends it; or already sent */
    return 0;
}

static void adopt_inherited(void)
{
    struct adopt a = {.tag = ""};
    char dir[PATH_MAX];
    gass_cache_dir(a.root, sizeof a.root);
    snprintf(dir, sizeof dir, "%s/writes", a.root);
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        return;
    int some = each_entry(dfd, any_entry, NULL);
    if (some && exec_tag(a.tag, sizeof a.tag) == 0) {
        lseek(dfd, 0, SEEK_SET);
        each_entry(dfd, finish_exec_mark, &a);
    }
    close(dfd);
    if (!some)
        return;
    pthread_mutex_lock(&table_lock);
    each_fd(adopt_fd, &a);
    pthread_mutex_unlock(&table_lock);
}

/* fork() while another thread holds the table would leave the child's copy locked forever. */
static void before_fork(void) { pthread_mutex_lock(&table_lock); }
static void after_fork(void) { pthread_mutex_unlock(&table_lock); }

/* GNU tar reads an archive name "host:path" as a file on a remote host reached with rsh, and
 * "http://h/x.tgz" has a colon before its first slash: tar would run rsh to a host called
 * "http". When tar is given a URL, add --force-local through TAR_OPTIONS (which tar reads
 * before its arguments) so the name reaches open() and thus gass. glibc passes argc/argv to
 * shared-library constructors, which is what makes this check possible before main(). */
static void tar_force_local(int argc, char **argv)
{
    if (argc < 2 || argv == NULL || argv[0] == NULL)
        return;
    const char *name = strrchr(argv[0], '/');
    name = name ? name + 1 : argv[0];
    if (strcmp(name, "tar") != 0 && strcmp(name, "gtar") != 0)
        return;
    int has_url = 0;
    for (int i = 1; i < argc && !has_url; i++)
        has_url = argv[i] && (strstr(argv[i], "http://") || strstr(argv[i], "https://"));
    const char *options = getenv("TAR_OPTIONS");
    if (!has_url || (options && strstr(options, "--force-local")))
        return;
    char value[4096];
    snprintf(value, sizeof value, "%s%s--force-local", options ? options : "", options ? " " : "");
    setenv("TAR_OPTIONS", value, 1);
}

__attribute__((constructor)) static void gass_init(int argc, char **argv, char **envp)
{
    (void)envp;
    atexit(at_exit);
    pthread_atfork(before_fork, after_fork, after_fork);
    if (bypass_guard_enter)
        bypass_guard_enter();
    adopt_inherited();
    if (bypass_guard_leave)
        bypass_guard_leave();
    tar_force_local(argc, argv);
}

int gass_unlink(const char *text)
{
    struct gass_url u;
    struct gass_response r;
    if (gass_url_parse(text, &u) < 0)
        return -1;
    int rc = gass_http_delete(&u, &r);
    int saved = errno;
    gass_cache_forget(&u);
    errno = saved;
    return rc;
}

int gass_truncate(const char *text, off_t length)
{
    int fd = gass_open(text, O_WRONLY, 0);
    if (fd < 0)
        return -1;
    if (ftruncate(fd, length) < 0) {
        int saved = errno;
        discard(fd);
        errno = saved;
        return -1;
    }
    return gass_close(fd);
}
