/*
 * gass_cache.c -- the per-user cache of fetched URLs.
 *
 * Layout under the cache root (see gass.h for where the root is):
 *   data/<key>        the body of a URL, mtime = the server's Last-Modified
 *   data/<key>.meta   text: url, etag, last-modified, size, validated (Unix time)
 *   locks/<key>.lock  flock()ed while the entry is checked, fetched or evicted
 *   tmp/              write-staging files (and downloads in progress where O_TMPFILE is missing)
 *   writes/<dev>.<ino>  a staged write's destination, for processes that inherit it across exec
 *                     (see gass_files.c); removed when it is uploaded
 *   unsent/<key>.<time>.<pid>.<ino>  data of an upload that failed at exit, with <that>.url naming
 *                     where it was going: kept for the user, never removed by gass
 * <key> is a hash of the URL without credentials (see gass_url_parse), so no user name or
 * password ever appears in a path.
 *
 * Concurrency: every process fetching a URL takes its lock exclusively, so when several start
 * at once the first downloads and the others, once they get the lock, find the fresh copy and
 * only revalidate (304). A download goes to an unnamed O_TMPFILE file in tmp/ -- so a process
 * killed mid-download leaves nothing behind -- and is published, once its length is the one the
 * server announced, by naming it and rename()ing it over data/<key>: a reader sees a whole old
 * file or a whole new one, and descriptors already open keep the old one.
 *
 * Size limit: after a download, if data/ holds more than BYPASS_GASS_CACHE_MAX bytes, the least
 * recently opened entries (atime, set explicitly on every open since mounts are often relatime)
 * are removed until 90 % of the limit.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "gass_internal.h"


const char *gass_cache_dir(char *buf, size_t size)
{
    const char *dir = gass_env("BYPASS_GASS_CACHE");
    const char *base;
    if (dir != NULL)
        snprintf(buf, size, "%s", dir);
    else if ((base = gass_env("XDG_CACHE_HOME")) != NULL)
        snprintf(buf, size, "%s/bypass-gass", base);
    else if ((base = gass_env("HOME")) != NULL)
        snprintf(buf, size, "%s/.cache/bypass-gass", base);
    else
        snprintf(buf, size, "/tmp/bypass-gass-%u", (unsigned)getuid());
    return buf;
}

static int make_dir(const char *path)
{
    if (mkdir(path, 0700) == 0 || errno == EEXIST)
        return 0;
    if (errno == ENOENT) { /* parent missing: create it, then retry */
        char parent[PATH_MAX];
        snprintf(parent, sizeof parent, "%s", path);
        char *slash = strrchr(parent, '/');
        if (slash != NULL && slash != parent) {
            *slash = '\0';
            if (make_dir(parent) == 0 && (mkdir(path, 0700) == 0 || errno == EEXIST))
                return 0;
        }
    }
    return -1;
}

int gass_cache_ensure_dirs(char *root, size_t size)
{
    /* The mkdirs cost a few syscalls; skip them when this process already made this root. */
    static __thread char made[GASS_ROOT_MAX];
    gass_cache_dir(root, size);
    if (strlen(root) >= GASS_ROOT_MAX - 1) {
        errno = ENAMETOOLONG;
        return -1;
    }
    if (strcmp(made, root) == 0)
        return 0;
    static const char *const subdirs[] = {"data", "locks", "tmp", "writes", "unsent"};
    char path[PATH_MAX];
    if (make_dir(root) < 0) {
        gass_log("cannot create the cache directory %s: %s", root, strerror(errno));
        return -1;
    }
    for (size_t i = 0; i < sizeof subdirs / sizeof subdirs[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", root, subdirs[i]);
        if (make_dir(path) < 0) {
            gass_log("cannot create %s: %s", path, strerror(errno));
            return -1;
        }
    }
    snprintf(made, sizeof made, "%s", root);
    return 0;
}

/* Block until this process holds the lock file `name`; returns its descriptor. flock() (not
 * fcntl locks) because it is per open file description: threads of one process exclude each
 * other too, and a lock never disappears because some other descriptor of the file closed. */
static int lock_file(const char *root, const char *name, int nonblocking)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/locks/%s.lock", root, name);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        return -1;
    while (flock(fd, LOCK_EX | (nonblocking ? LOCK_NB : 0)) < 0) {
        if (errno != EINTR) {
            int saved = errno;
            close(fd);
            errno = saved;
            return -1;
        }
    }
    return fd;
}

static void unlock_file(int fd)
{
    if (fd >= 0)
        close(fd); /* closing the only descriptor releases the flock */
}

struct meta {
    char url[GASS_URL_MAX];
    char etag[256];
    char last_modified[128];
    long long size;
    long long validated;
};

static int read_meta(const char *path, struct meta *m)
{
    memset(m, 0, sizeof *m);
    m->size = -1;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    char text[GASS_URL_MAX + 1024];
    ssize_t n = read(fd, text, sizeof text - 1);
    close(fd);
    if (n <= 0)
        return -1;
    text[n] = '\0';
    for (char *line = text, *next; line && *line; line = next) {
        next = strchr(line, '\n');
        if (next)
            *next++ = '\0';
        char *value = strchr(line, ' ');
        if (value == NULL)
            continue;
        *value++ = '\0';
        if (strcmp(line, "url") == 0)
            snprintf(m->url, sizeof m->url, "%s", value);
        else if (strcmp(line, "etag") == 0)
            snprintf(m->etag, sizeof m->etag, "%s", value);
        else if (strcmp(line, "last-modified") == 0)
            snprintf(m->last_modified, sizeof m->last_modified, "%s", value);
        else if (strcmp(line, "size") == 0)
            m->size = atoll(value);
        else if (strcmp(line, "validated") == 0)
            m->validated = atoll(value);
    }
    return 0;
}

static int write_meta(const char *root, const char *key, const struct meta *m)
{
    char tmp[PATH_MAX], path[PATH_MAX], text[GASS_URL_MAX + 1024];
    snprintf(tmp, sizeof tmp, "%s/tmp/%s.meta.XXXXXX", root, key);
    snprintf(path, sizeof path, "%s/data/%s.meta", root, key);
    int n = snprintf(text, sizeof text, "url %s\netag %s\nlast-modified %s\nsize %lld\nvalidated %lld\n",
                     m->url, m->etag, m->last_modified, m->size, m->validated);
    int fd = mkostemp(tmp, O_CLOEXEC);
    if (fd < 0)
        return -1;
    int ok = write(fd, text, (size_t)n) == n;
    close(fd);
    if (!ok || rename(tmp, path) < 0) {
        unlink(tmp);
        return -1;
    }
    return 0;
}

int gass_cache_stage_path(char *path, size_t size)
{
    char root[GASS_ROOT_MAX];
    if (gass_cache_ensure_dirs(root, sizeof root) < 0)
        return -1;
    snprintf(path, size, "%s/tmp/stage.%d.XXXXXX", root, (int)getpid());
    return mkostemp(path, O_CLOEXEC);
}

struct victim {
    char name[32];
    long long size;
    struct timespec atime;
};

static int by_atime(const void *a, const void *b)
{
    const struct victim *x = a, *y = b;
    if (x->atime.tv_sec != y->atime.tv_sec)
        return x->atime.tv_sec < y->atime.tv_sec ? -1 : 1;
    return (x->atime.tv_nsec > y->atime.tv_nsec) - (x->atime.tv_nsec < y->atime.tv_nsec);
}

static void remove_entry(const char *root, const char *key)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/data/%s.meta", root, key);
    unlink(path);
    snprintf(path, sizeof path, "%s/data/%s", root, key);
    unlink(path);
}

/* Keep data/ under the size limit, least recently opened first. Never removes `keep` (the entry
 * just fetched), and skips entries another process holds locked right now. */
static void evict(const char *root, const char *keep)
{
    long long limit = gass_env_number("BYPASS_GASS_CACHE_MAX", GASS_DEFAULT_CACHE_MAX);
    /* One evictor at a time; if another process is at it, it will do our share. */
    int guard = lock_file(root, "evict", 1);
    if (guard < 0)
        return;
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/data", root);
    DIR *dir = opendir(path);
    struct victim *list = NULL;
    size_t count = 0, cap = 0;
    long long total = 0;
    struct dirent *e;
    while (dir && (e = readdir(dir)) != NULL) {
        if (e->d_name[0] == '.' || strlen(e->d_name) != 16)
            continue; /* "." "..", and the .meta files */
        struct stat st;
        if (fstatat(dirfd(dir), e->d_name, &st, 0) < 0 || !S_ISREG(st.st_mode))
            continue;
        total += st.st_size;
        if (count == cap) {
            cap = cap ? cap * 2 : 64;
            struct victim *bigger = realloc(list, cap * sizeof *list);
            if (bigger == NULL)
                break;
            list = bigger;
        }
        memcpy(list[count].name, e->d_name, 17); /* 16 hex digits and the NUL */
        list[count].size = st.st_size;
        list[count].atime = st.st_atim;
        count++;
    }
    if (dir)
        closedir(dir);
    if (total > limit) {
        qsort(list, count, sizeof *list, by_atime);
        long long target = limit / 10 * 9;
        for (size_t i = 0; i < count && total > target; i++) {
            if (strcmp(list[i].name, keep) == 0)
                continue;
            int lock = lock_file(root, list[i].name, 1);
            if (lock < 0)
                continue;
            remove_entry(root, list[i].name);
            unlock_file(lock);
            total -= list[i].size;
            gass_dlog(GASS_DEBUG_CACHE, "cache: evicted %s (%lld bytes)", list[i].name, list[i].size);
        }
    }
    free(list);
    unlock_file(guard);
}

/* A file to download into: unnamed (O_TMPFILE) when the file system can, so that nothing is
 * left if the process dies; else a mkstemp name in tmp/ returned in `named` ("" if unnamed). */
static int download_file(const char *root, const char *key, char *named, size_t size)
{
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s/tmp", root);
    named[0] = '\0';
    int fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (fd >= 0 || (errno != EOPNOTSUPP && errno != EISDIR && errno != EINVAL))
        return fd;
    snprintf(named, size, "%s/tmp/%s.XXXXXX", root, key);
    return mkostemp(named, O_CLOEXEC);
}

/* Close the finished download `fd` and make it data/<key>. Called with the key's lock held, so
 * the fixed intermediate name cannot collide. 0, or -1 with errno (nothing left behind). */
static int publish(int fd, const char *root, const char *key, const char *named,
                   const char *data_path)
{
    char proc[64], name[PATH_MAX];
    int rc = 0;
    if (named[0] == '\0') {
        snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
        snprintf(name, sizeof name, "%s/tmp/%s.publish", root, key);
        unlink(name); /* left by a process that died between linkat and rename */
        rc = linkat(AT_FDCWD, proc, AT_FDCWD, name, AT_SYMLINK_FOLLOW);
    } else {
        snprintf(name, sizeof name, "%s", named);
    }
    int saved = errno;
    if (close(fd) < 0 && rc == 0) {
        rc = -1;
        saved = errno;
    }
    if (rc == 0 && rename(name, data_path) < 0) {
        rc = -1;
        saved = errno;
    }
    if (rc < 0)
        unlink(name);
    errno = saved;
    return rc;
}

int gass_cache_open(const struct gass_url *u, int extra_flags, struct gass_response *r,
                    char *data_path, size_t path_size)
{
    char root[GASS_ROOT_MAX], meta_path[PATH_MAX], tmp[PATH_MAX];
    memset(r, 0, sizeof *r);
    if (gass_cache_ensure_dirs(root, sizeof root) < 0)
        return -1;
    snprintf(data_path, path_size, "%s/data/%s", root, u->key);
    snprintf(meta_path, sizeof meta_path, "%s/data/%s.meta", root, u->key);

    int lock = lock_file(root, u->key, 0);
    if (lock < 0)
        return -1;

    /* What do we have? An entry counts only if it is for this very URL and whole. */
    struct meta m;
    struct stat st;
    int have = read_meta(meta_path, &m) == 0 && strcmp(m.url, u->redacted) == 0 &&
               stat(data_path, &st) == 0 && st.st_size == m.size;
    long long max_age = gass_env_number("BYPASS_GASS_MAX_AGE", 0);
    time_t now = time(NULL);
    int downloaded = 0;

    if (have && max_age > 0 && now - m.validated < max_age) {
        gass_dlog(GASS_DEBUG_CACHE, "cache: %s hit (validated %lld s ago)", u->logname, (long long)(now - m.validated));
        r->status = 0; /* trusted without asking */
        r->length = m.size;
        snprintf(r->etag, sizeof r->etag, "%s", m.etag);
    } else {
        int out = download_file(root, u->key, tmp, sizeof tmp);
        if (out < 0)
            goto fail;
        /* Conditional only if we have a copy with validators; otherwise a plain GET. */
        int rc = gass_http_get(u, out, have ? m.etag : NULL, have ? m.last_modified : NULL, r);
        if (rc == 0 && r->status == 304 && !have) {
            errno = EIO; /* 304 to an unconditional request: a broken server */
            rc = -1;
        }
        if (rc == 0 && r->status != 304 && (fstat(out, &st) < 0 ||
                                              (r->length >= 0 && st.st_size != r->length))) {
            /* Never cache what does not have the announced length (both HTTP paths check this
             * already; this is the last line). */
            gass_log("GET %s: %lld bytes received, %lld announced", u->logname,
                     (long long)st.st_size, r->length);
            errno = EIO;
            rc = -1;
        }
        if (rc < 0 || r->status == 304) {
            int saved = errno;
            close(out);
            if (tmp[0])
                unlink(tmp);
            errno = saved;
            if (rc < 0)
                goto fail;
        } else {
            /* A fresh body: give it the server's mtime, then publish it atomically. */
            struct timespec times[2] = {{0, UTIME_NOW}, {0, UTIME_OMIT}};
            time_t lm = r->mtime >= 0 ? (time_t)r->mtime : gass_http_date(r->last_modified);
            if (lm != (time_t)-1) {
                times[1].tv_sec = lm;
                times[1].tv_nsec = 0;
            }
            futimens(out, times);
            if (publish(out, root, u->key, tmp, data_path) < 0)
                goto fail;
            snprintf(m.url, sizeof m.url, "%s", u->redacted);
            snprintf(m.etag, sizeof m.etag, "%s", r->etag);
            snprintf(m.last_modified, sizeof m.last_modified, "%s", r->last_modified);
            m.size = st.st_size;
            downloaded = 1;
        }
        m.validated = now;
        write_meta(root, u->key, &m); /* best effort: without it the next open refetches */
        gass_dlog(GASS_DEBUG_CACHE, "cache: %s %s", u->logname,
                  downloaded ? (have ? "changed, fetched again" : "miss, fetched") : "revalidated (304)");
    }

    int fd = open(data_path, O_RDONLY | O_CLOEXEC | extra_flags);
    if (fd < 0)
        goto fail;
    /* Mark the entry as used for LRU eviction (atime only; mtime is the server's). */
    struct timespec used[2] = {{0, UTIME_NOW}, {0, UTIME_OMIT}};
    futimens(fd, used);
    unlock_file(lock);
    if (downloaded)
        evict(root, u->key);
    return fd;

fail:;
    int saved = errno;
    unlock_file(lock);
    errno = saved;
    return -1;
}

void gass_cache_forget(const struct gass_url *u)
{
    char root[GASS_ROOT_MAX];
    if (gass_cache_ensure_dirs(root, sizeof root) < 0)
        return;
    int lock = lock_file(root, u->key, 0);
    remove_entry(root, u->key);
    unlock_file(lock);
}

int gass_cache_clear(void)
{
    /* Remove every entry nobody is using right now, and downloads/stagings abandoned for more
     * than an hour (a crashed process); live ones are left alone. */
    char root[GASS_ROOT_MAX], path[PATH_MAX];
    if (gass_cache_ensure_dirs(root, sizeof root) < 0)
        return -1;
    snprintf(path, sizeof path, "%s/data", root);
    DIR *dir = opendir(path);
    struct dirent *e;
    while (dir && (e = readdir(dir)) != NULL) {
        if (strlen(e->d_name) != 16)
            continue;
        int lock = lock_file(root, e->d_name, 1);
        if (lock < 0)
            continue;
        remove_entry(root, e->d_name);
        unlock_file(lock);
    }
    if (dir)
        closedir(dir);
    snprintf(path, sizeof path, "%s/tmp", root);
    dir = opendir(path);
    time_t now = time(NULL);
    while (dir && (e = readdir(dir)) != NULL) {
        struct stat st;
        if (e->d_name[0] == '.' || fstatat(dirfd(dir), e->d_name, &st, 0) < 0)
            continue;
        if (now - st.st_mtime > 3600)
            unlinkat(dirfd(dir), e->d_name, 0);
    }
    if (dir)
        closedir(dir);
    return 0;
}
