/*
 * webfs.c -- mounts, catalogs, the skeleton and fetching for the webfs agent (see webfs.h).
 *
 * Runs inside agent actions (or the constructor, under the guard), so the libc calls made here
 * reach libc directly, never the agent again.  Settings are read once, at start, through
 * bypass_getenv: the mount list is fixed for the whole run.
 */
#define _GNU_SOURCE
#include "webfs.h"
#include "webfs_internal.h"

#include "../gass/gass_internal.h"
#include "bypass_runtime.h"

#include <dirent.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

static struct wf_mount wf_mounts[WF_MAX_MOUNTS];
static int wf_nmounts;
static int wf_loaded_any;
char wf_cache[WF_ROOT_MAX];
static long long wf_ttl = 300;
static long long wf_cache_max = 8LL << 30;
static pthread_mutex_t wf_lock = PTHREAD_MUTEX_INITIALIZER;
/* The current directory as the program knows it: -1 not known yet, 0 outside every tree,
 * 1 inside one (wf_vcwd holds the program's path). */
static int wf_cwd_state = -1;
static char wf_vcwd[PATH_MAX];

int wf_active(void) { return wf_nmounts > 0; }

int wf_debug_on;
/* For the end-of-process summary under BYPASS_WEBFS_DEBUG. */
static unsigned long wf_hits, wf_misses, wf_fetch_errors;
static unsigned long long wf_fetched_bytes;
static double wf_fetch_seconds;

/* ------------------------------------------------------------------ configuration */

static int add_mount(const char *prefix, size_t plen, char *err, size_t esize)
{
    if (wf_nmounts == WF_MAX_MOUNTS) {
        snprintf(err, esize, "more than %d mounts", WF_MAX_MOUNTS);
        return -1;
    }
    while (plen > 1 && prefix[plen - 1] == '/')
        plen--;
    if (plen < 2 || prefix[0] != '/' || plen >= WF_PREFIX_MAX) {
        snprintf(err, esize, "mount prefix '%.*s' must be an absolute path other than /", (int)plen, prefix);
        return -1;
    }
    for (size_t i = 0; i + 1 < plen; i++)
        if (prefix[i] == '/' && (prefix[i + 1] == '/' || (prefix[i + 1] == '.' && (i + 2 == plen || prefix[i + 2] == '/' ||
                                                                                     (prefix[i + 2] == '.' && (i + 3 == plen || prefix[i + 3] == '/')))))) {
            snprintf(err, esize, "mount prefix '%.*s' must be a plain path (no //, . or ..)", (int)plen, prefix);
            return -1;
        }
    struct wf_mount *m = &wf_mounts[wf_nmounts++];
    memset(m, 0, sizeof *m);
    memcpy(m->prefix, prefix, plen);
    m->prefix[plen] = '\0';
    m->plen = plen;
    return 0;
}

static int add_mirror(const char *url, size_t len, char *err, size_t esize)
{
    struct wf_mount *m = &wf_mounts[wf_nmounts - 1];
    while (len > 0 && url[len - 1] == '/')
        len--;
    if (m->nmirrors == WF_MAX_MIRRORS) {
        snprintf(err, esize, "%s: more than %d mirrors", m->prefix, WF_MAX_MIRRORS);
        return -1;
    }
    if (len == 0 || len >= WF_URL_MAX / 2) {
        snprintf(err, esize, "%s: empty or too long URL", m->prefix);
        return -1;
    }
    char text[WF_URL_MAX];
    memcpy(text, url, len);
    text[len] = '\0';
    struct gass_url u;
    if (strncasecmp(text, "http://", 7) != 0 && strncasecmp(text, "https://", 8) != 0) {
        snprintf(err, esize, "%s: '%s' is not an http:// or https:// URL", m->prefix, text);
        return -1;
    }
    if (gass_url_parse(text, &u) < 0 || strchr(text, '?') || strchr(text, '#')) {
        snprintf(err, esize, "%s: malformed URL '%s'", m->prefix, text);
        return -1;
    }
    memcpy(m->mirror[m->nmirrors++], text, len + 1);
    return 0;
}

static int add_proxy(const char *url, size_t len, char *err, size_t esize)
{
    struct wf_mount *m = &wf_mounts[wf_nmounts - 1];
    if (m->nproxies == WF_MAX_MIRRORS) {
        snprintf(err, esize, "%s: more than %d proxies", m->prefix, WF_MAX_MIRRORS);
        return -1;
    }
    char *p = m->proxy[m->nproxies];
    if (len == 6 && strncmp(url, "DIRECT", 6) == 0)
        p[0] = '\0';
    else if (len >= WF_URL_MAX || (strncasecmp(url, "http://", 7) != 0 && strncasecmp(url, "https://", 8) != 0)) {
        snprintf(err, esize, "%s: proxy '%.*s' is not DIRECT or an http(s):// URL", m->prefix, (int)len, url);
        return -1;
    } else {
        memcpy(p, url, len);
        p[len] = '\0';
    }
    m->nproxies++;
    return 0;
}

/* key=FILE (the mount is a Bypass repository signed with that key's private half), proxy=URL or
 * proxy=DIRECT (requests go through the proxies, in turn), or a mirror's URL. */
static int add_option_or_mirror(const char *word, size_t len, char *err, size_t esize)
{
    if (len >= 6 && strncmp(word, "proxy=", 6) == 0)
        return add_proxy(word + 6, len - 6, err, esize);
    if (len < 4 || strncmp(word, "key=", 4) != 0)
        return add_mirror(word, len, err, esize);
    char file[PATH_MAX];
    if (len - 4 == 0 || len - 4 >= sizeof file || word[4] != '/') {
        /* absolute: every process of the job reads it at start, wherever its current directory is */
        snprintf(err, esize, "%s: key= wants the public key file's absolute path", wf_mounts[wf_nmounts - 1].prefix);
        return -1;
    }
    memcpy(file, word + 4, len - 4);
    file[len - 4] = '\0';
    return wf_repo_key(&wf_mounts[wf_nmounts - 1], file, err, esize);
}

/* "PREFIX=URL[,URL...][,key=FILE][,proxy=URL...]" entries separated by blanks. */
static int parse_inline(const char *s, char *err, size_t esize)
{
    while (*s) {
        while (*s == ' ' || *s == '\t' || *s == '\n')
            s++;
        if (!*s)
            break;
        const char *end = s + strcspn(s, " \t\n");
        const char *eq = memchr(s, '=', (size_t)(end - s));
        if (!eq) {
            snprintf(err, esize, "BYPASS_WEBFS_MOUNTS: '%.*s' is not PREFIX=URL[,URL...]", (int)(end - s), s);
            return -1;
        }
        if (add_mount(s, (size_t)(eq - s), err, esize) < 0)
            return -1;
        const char *u = eq + 1;
        while (u < end) {
            const char *c = memchr(u, ',', (size_t)(end - u));
            if (!c)
                c = end;
            if (add_option_or_mirror(u, (size_t)(c - u), err, esize) < 0)
                return -1;
            u = c + 1;
        }
        if (wf_mounts[wf_nmounts - 1].nmirrors == 0) {
            snprintf(err, esize, "BYPASS_WEBFS_MOUNTS: %s has no URL", wf_mounts[wf_nmounts - 1].prefix);
            return -1;
        }
        s = end;
    }
    return 0;
}

/* A repositories file: "PREFIX URL [URL...] [key=FILE] [proxy=URL...]" a line, '#' starts a comment. */
static int parse_file(const char *name, char *err, size_t esize)
{
    int fd = open(name, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, esize, "%s: %s", name, strerror(errno));
        return -1;
    }
    static char text[65536];
    size_t got = 0;
    ssize_t n;
    while ((n = read(fd, text + got, sizeof text - 1 - got)) > 0)
        got += (size_t)n;
    int e = errno;
    close(fd);
    if (n < 0) {
        snprintf(err, esize, "%s: %s", name, strerror(e));
        return -1;
    }
    if (got == sizeof text - 1) {
        snprintf(err, esize, "%s: larger than %zu bytes", name, sizeof text - 2);
        return -1;
    }
    text[got] = '\0';
    int lineno = 0;
    for (char *line = text; line && *line;) {
        char *next = strchr(line, '\n');
        if (next)
            *next++ = '\0';
        lineno++;
        char *hash = strchr(line, '#');
        if (hash)
            *hash = '\0';
        char *save = NULL, *word = strtok_r(line, " \t\r", &save);
        if (word) {
            char why[512];
            if (add_mount(word, strlen(word), why, sizeof why) < 0) {
                snprintf(err, esize, "%s:%d: error: %s", name, lineno, why);
                return -1;
            }
            while ((word = strtok_r(NULL, " \t\r", &save)))
                if (add_option_or_mirror(word, strlen(word), why, sizeof why) < 0) {
                    snprintf(err, esize, "%s:%d: error: %s", name, lineno, why);
                    return -1;
                }
            if (wf_mounts[wf_nmounts - 1].nmirrors == 0) {
                snprintf(err, esize, "%s:%d: error: %s has no URL", name, lineno, wf_mounts[wf_nmounts - 1].prefix);
                return -1;
            }
        }
        line = next;
    }
    return 0;
}

static int make_dir(const char *path)
{
    if (mkdir(path, 0700) == 0 || errno == EEXIST)
        return 0;
    return -1;
}

int wf_init_from_env(char *err, size_t esize)
{
    const char *d = bypass_getenv("BYPASS_WEBFS_DEBUG");
    wf_debug_on = d && *d && strcmp(d, "0") != 0;
    const char *file = bypass_getenv("BYPASS_WEBFS_REPOS");
    const char *list = bypass_getenv("BYPASS_WEBFS_MOUNTS");
    if (file && *file && parse_file(file, err, esize) < 0)
        return -1;
    if (list && parse_inline(list, err, esize) < 0)
        return -1;
    for (int i = 0; i < wf_nmounts; i++)
        for (int j = 0; j < i; j++)
            if (strcmp(wf_mounts[i].prefix, wf_mounts[j].prefix) == 0) {
                snprintf(err, esize, "%s is mounted twice", wf_mounts[i].prefix);
                return -1;
            }
    if (!wf_nmounts)
        return 0;
    const char *ttl = bypass_getenv("BYPASS_WEBFS_TTL");
    if (ttl && *ttl) {
        char *end;
        wf_ttl = strtoll(ttl, &end, 10);
        if (*end || wf_ttl < 0) {
            snprintf(err, esize, "BYPASS_WEBFS_TTL='%s' is not a number of seconds", ttl);
            return -1;
        }
    }
    const char *max = bypass_getenv("BYPASS_WEBFS_CACHE_MAX");
    if (max && *max) {
        char *end;
        errno = 0;
        long long v = strtoll(max, &end, 10);
        int shift = *end == 'K' || *end == 'k' ? 10 : *end == 'M' || *end == 'm' ? 20 : *end == 'G' || *end == 'g' ? 30 : 0;
        if (shift)
            end++;
        if (errno || end == max || *end || v <= 0 || v > (LLONG_MAX >> shift)) {
            snprintf(err, esize, "BYPASS_WEBFS_CACHE_MAX='%s' is not a size (bytes, or with K, M, G)", max);
            return -1;
        }
        wf_cache_max = v << shift;
    }
    const char *c = bypass_getenv("BYPASS_WEBFS_CACHE");
    const char *xdg = bypass_getenv("XDG_CACHE_HOME") ? bypass_getenv("XDG_CACHE_HOME") : getenv("XDG_CACHE_HOME");
    const char *home = getenv("HOME");
    int n;
    if (c && *c)
        n = snprintf(wf_cache, sizeof wf_cache, "%s", c);
    else if (xdg && *xdg == '/')
        n = snprintf(wf_cache, sizeof wf_cache, "%s/bypass-webfs", xdg);
    else if (home && *home == '/')
        n = snprintf(wf_cache, sizeof wf_cache, "%s/.cache/bypass-webfs", home);
    else
        n = snprintf(wf_cache, sizeof wf_cache, "/tmp/bypass-webfs-%u", (unsigned)getuid());
    if (n < 0 || (size_t)n >= sizeof wf_cache - 200 || wf_cache[0] != '/') {
        snprintf(err, esize, "cache directory '%s' must be an absolute path shorter than %zu", wf_cache,
                 sizeof wf_cache - 200);
        return -1;
    }
    for (int i = 0; i < wf_nmounts; i++) {
        struct wf_mount *m = &wf_mounts[i];
        unsigned long long h = gass_hash64(m->prefix, m->plen, m->repo ? 0x62797061 : 0x77656266);
        if (m->repo)
            h = gass_hash64(m->pub, sizeof m->pub, h);
        for (int j = 0; j < m->nmirrors; j++)
            h = gass_hash64(m->mirror[j], strlen(m->mirror[j]), h);
        snprintf(m->key, sizeof m->key, "%016llx", h);
    }
    return 0;
}

/* ------------------------------------------------------------------ small path tools */

/* Lexically clean an absolute path: no "//", ".", ".."; a trailing '/' is kept, because it
 * changes what the kernel answers (ENOTDIR for a file). */
static int normalize(const char *in, char *out, size_t size)
{
    size_t len = 0;
    const char *p = in;
    int trailing = 0;
    if (size < 2)
        return ENAMETOOLONG;
    out[len++] = '/';
    while (*p) {
        while (*p == '/')
            p++;
        if (!*p)
            break;
        const char *e = p + strcspn(p, "/");
        size_t n = (size_t)(e - p);
        trailing = *e == '/';
        if (n == 1 && p[0] == '.') {
        } else if (n == 2 && p[0] == '.' && p[1] == '.') {
            if (len > 1) {
                len--;
                while (len > 1 && out[len - 1] != '/')
                    len--;
            }
        } else {
            if (len + n + 2 > size)
                return ENAMETOOLONG;
            if (out[len - 1] != '/')
                out[len++] = '/';
            memcpy(out + len, p, n);
            len += n;
        }
        p = e;
    }
    if (len > 1 && out[len - 1] == '/')
        len--;
    if (trailing && len > 1)
        out[len++] = '/';
    out[len] = '\0';
    return 0;
}

static struct wf_mount *mount_of(const char *path, const char **rest)
{
    for (int i = 0; i < wf_nmounts; i++) {
        struct wf_mount *m = &wf_mounts[i];
        if (strncmp(path, m->prefix, m->plen) == 0 && (path[m->plen] == '/' || path[m->plen] == '\0')) {
            *rest = path + m->plen;
            return m;
        }
    }
    return NULL;
}

/* Worth a closer look: starts with a prefix, or could reach one after cleaning. */
static int maybe_in_mount(const char *path)
{
    const char *rest;
    if (mount_of(path, &rest))
        return 1;
    return strstr(path, "//") || strstr(path, "/.");
}

static int has_dotdot(const char *p)
{
    for (const char *s = strstr(p, ".."); s; s = strstr(s + 2, ".."))
        if ((s == p || s[-1] == '/') && (s[2] == '\0' || s[2] == '/'))
            return 1;
    return 0;
}

int wf_lock_path(const char *path)
{
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        return -1;
    while (flock(fd, LOCK_EX) < 0)
        if (errno != EINTR) {
            close(fd);
            return -1;
        }
    return fd;
}

/* ------------------------------------------------------------------ HTTP */

void wf_url_for(const struct wf_mount *m, int mirror, const char *rel, char *out, size_t size)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t n = (size_t)snprintf(out, size, "%s", m->mirror[mirror]);
    for (const unsigned char *p = (const unsigned char *)rel; *p && n + 4 < size; p++) {
        if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || strchr("/-._~", *p))
            out[n++] = (char)*p;
        else {
            out[n++] = '%';
            out[n++] = hex[*p >> 4];
            out[n++] = hex[*p & 15];
        }
    }
    out[n] = '\0';
}

/* GET into fd (truncated first); 0 or an errno, with the reason logged. */
int wf_fetch(const char *url, int fd)
{
    struct gass_url u;
    if (gass_url_parse(url, &u) < 0)
        return EINVAL;
    if (ftruncate(fd, 0) < 0 || lseek(fd, 0, SEEK_SET) < 0)
        return errno;
    struct gass_response r;
    memset(&r, 0, sizeof r);
    double t0 = gass_now();
    if (gass_http_get(&u, fd, NULL, NULL, &r) < 0) {
        int e = errno ? errno : EIO;
        wf_say("%s: %s", u.logname, r.error[0] ? r.error : strerror(e));
        return e;
    }
    wf_dbg_to(BYPASS_DEBUG_CACHE, "fetched %s (%lld bytes, %.3f s)", u.logname, (long long)lseek(fd, 0, SEEK_END), gass_now() - t0);
    return 0;
}

static int fetch_via(struct wf_mount *m, const char *url, int fd);

int wf_fetch_via(struct wf_mount *m, const char *url, int fd, long long limit)
{
    gass_max_size_override = limit;
    int e = fetch_via(m, url, fd);
    gass_max_size_override = 0;
    return e;
}

static int fetch_via(struct wf_mount *m, const char *url, int fd)
{
    if (!m->nproxies)
        return wf_fetch(url, fd);
    int first = __atomic_load_n(&m->proxy_first, __ATOMIC_RELAXED), e = EIO;
    for (int k = 0; k < m->nproxies; k++) {
        int i = (first + k) % m->nproxies;
        gass_proxy_override = m->proxy[i];
        e = wf_fetch(url, fd);
        gass_proxy_override = NULL;
        /* an answer from the origin through the proxy (a file it lacks included) ends the search */
        if (!e || e == ENOENT || e == EACCES || e == EPERM) {
            if (i != first) {
                /* this process and the next ones (the cache remembers) start with it */
                __atomic_store_n(&m->proxy_first, i, __ATOMIC_RELAXED);
                char path[PATH_MAX], tmp[PATH_MAX + 16], text[16];
                snprintf(path, sizeof path, "%s/mounts/%s.proxy", wf_cache, m->key);
                snprintf(tmp, sizeof tmp, "%s.%d", path, (int)getpid());
                int n = snprintf(text, sizeof text, "%d\n", i), tf = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
                if (tf >= 0) {
                    int ok = write(tf, text, (size_t)n) == n;
                    close(tf);
                    if (!ok || rename(tmp, path) < 0)
                        unlink(tmp);
                }
            }
            return e;
        }
        int next = (i + 1) % m->nproxies;
        if (k + 1 < m->nproxies)
            wf_say("%s: proxy %s failed (%s), trying %s", m->prefix, m->proxy[i][0] ? m->proxy[i] : "DIRECT",
                   strerror(e), m->proxy[next][0] ? m->proxy[next] : "DIRECT");
    }
    return e;
}

static int file_sha1(int fd, char hex[41], long long *size)
{
    enum { CHUNK = 65536 };
    char *buf = malloc(CHUNK);
    if (!buf)
        return ENOMEM;
    struct wf_sha1 s;
    wf_sha1_init(&s);
    off_t at = 0;
    for (;;) {
        ssize_t n = pread(fd, buf, CHUNK, at);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            int e = errno;
            free(buf);
            return e;
        }
        if (n == 0)
            break;
        wf_sha1_update(&s, buf, (size_t)n);
        at += n;
    }
    free(buf);
    *size = at;
    wf_sha1_hex(&s, hex);
    return 0;
}

/* ------------------------------------------------------------------ the catalog */

struct entry {
    char type;         /* D F L E */
    char *name;
    long long mode, size, mtime;
    char *sum;         /* 40 hex digits, or "0" */
    char *target;      /* L only */
};

/* Split one catalog line in place. */
static int parse_line(char *line, struct entry *e)
{
    memset(e, 0, sizeof *e);
    if (line[0] == 'E' && line[1] == '\0') {
        e->type = 'E';
        return 0;
    }
    if (!strchr("DFL", line[0]) || line[0] == '\0' || line[1] != ' ')
        return -1;
    e->type = line[0];
    e->name = line + 2;
    char *tab = strchr(e->name, '\t');
    if (!tab)
        return -1;
    *tab = '\0';
    char *p = tab + 1, *end;
    long long *nums[3] = {&e->mode, &e->size, &e->mtime};
    for (int i = 0; i < 3; i++) {
        errno = 0;
        *nums[i] = strtoll(p, &end, 10);
        if (end == p || *end != ' ' || errno)
            return -1;
        p = end + 1;
    }
    e->sum = p;
    end = strchr(p, ' ');
    if (e->type == 'L') {
        if (!end)
            return -1;
        *end = '\0';
        e->target = end + 1;
        if (!*e->target)
            return -1;
    } else if (end)
        return -1;
    if (e->size < 0 || e->mode < 0 || e->mode > 0177777)
        return -1;
    if (e->type == 'F') {
        if (!S_ISREG(e->mode) || strlen(e->sum) != 40 || strspn(e->sum, "0123456789abcdef") != 40)
            return -1;
        if (e->size == 0 && strcmp(e->sum, "da39a3ee5e6b4b0d3255bfef95601890afd80709") != 0)
            return -1;
    }
    if (e->type == 'D' && !S_ISDIR(e->mode))
        return -1;
    if (e->type == 'L' && !S_ISLNK(e->mode))
        return -1;
    return 0;
}

static int bad_name(const char *n)
{
    return !*n || strchr(n, '/') || strcmp(n, ".") == 0 || strcmp(n, "..") == 0 || strlen(n) > NAME_MAX;
}

/* Reads a file line by line without allocating. */
struct lines {
    int fd;
    char buf[65536];
    size_t start, end;
    char line[WF_LINE_MAX];
};

static int next_line(struct lines *l, char **out)
{
    size_t n = 0;
    for (;;) {
        if (l->start == l->end) {
            ssize_t got = read(l->fd, l->buf, sizeof l->buf);
            if (got < 0) {
                if (errno == EINTR)
                    continue;
                return -1;
            }
            if (got == 0) {
                if (n == 0)
                    return 0;
                return -1; /* every line of a catalog ends with a newline */
            }
            l->start = 0;
            l->end = (size_t)got;
        }
        char c = l->buf[l->start++];
        if (c == '\n') {
            l->line[n] = '\0';
            *out = l->line;
            return 1;
        }
        if (c == '\0' || n + 1 >= sizeof l->line)
            return -1;
        l->line[n++] = c;
    }
}

/* Walk the catalog.  With `build` set, create the skeleton under `root`; with `want` set, find
 * that relative path ("/a/b") and copy its entry's sum, size, mode and mtime out. */
struct walk {
    const char *root;
    int build;
    const char *want;
    char sum[41];
    long long size, mode, mtime;
    int found;
};

static int walk_catalog(const char *catalog, struct walk *w)
{
    /* cold path (a catalog load or a download): the buffers are allocated, not on the stack */
    struct lines *l = malloc(sizeof *l);
    if (!l)
        return ENOMEM;
    l->fd = open(catalog, O_RDONLY | O_CLOEXEC);
    if (l->fd < 0) {
        int e = errno;
        free(l);
        return e;
    }
    l->start = l->end = 0;
    char path[PATH_MAX];
    size_t plen = 0;
    size_t stack[WF_MAX_DEPTH];
    long long dmode[WF_MAX_DEPTH], dtime[WF_MAX_DEPTH];
    int depth = 0, rc = EIO, first = 1, done = 0;
    size_t rootlen = w->root ? strlen(w->root) : 0;
    char *line;
    int got;
    while ((got = next_line(l, &line)) == 1) {
        if (done)
            goto out; /* anything after the root's E */
        struct entry e;
        if (parse_line(line, &e) < 0)
            goto out;
        if (first) {
            if (e.type != 'D')
                goto out;
            first = 0;
            stack[depth] = plen;
            dmode[depth] = e.mode;
            dtime[depth] = e.mtime;
            depth++;
            if (w->build && mkdir(w->root, 0700) < 0)
                goto fail;
            continue;
        }
        if (e.type == 'E') {
            depth--;
            if (w->build) {
                char full[PATH_MAX];
                snprintf(full, sizeof full, "%s%.*s", w->root, (int)plen, path);
                struct timespec ts[2] = {{dtime[depth] + WF_GROWFS_MTIME_OFFSET, 0},
                                         {dtime[depth] + WF_GROWFS_MTIME_OFFSET, 0}};
                if (chmod(full, (mode_t)(dmode[depth] & 07777)) < 0 || utimensat(AT_FDCWD, full, ts, 0) < 0)
                    goto fail;
            }
            plen = stack[depth];
            if (depth == 0)
                done = 1;
            continue;
        }
        if (bad_name(e.name))
            goto out;
        size_t n = strlen(e.name);
        if (plen + n + 2 >= sizeof path || rootlen + plen + n + 2 >= PATH_MAX)
            goto out;
        size_t parent = plen;
        path[plen] = '/';
        memcpy(path + plen + 1, e.name, n + 1);
        plen += n + 1;
        if (w->want && e.type == 'F' && strcmp(path, w->want) == 0) {
            memcpy(w->sum, e.sum, 41);
            w->size = e.size;
            w->mode = e.mode;
            w->mtime = e.mtime;
            w->found = 1;
            rc = 0;
            break;
        }
        if (w->build) {
            char full[PATH_MAX];
            snprintf(full, sizeof full, "%s%s", w->root, path);
            struct timespec ts[2] = {{e.mtime + WF_GROWFS_MTIME_OFFSET, 0}, {e.mtime + WF_GROWFS_MTIME_OFFSET, 0}};
            if (e.type == 'D') {
                if (mkdir(full, 0700) < 0)
                    goto fail;
            } else if (e.type == 'L') {
                if (symlink(e.target, full) < 0 || utimensat(AT_FDCWD, full, ts, AT_SYMLINK_NOFOLLOW) < 0)
                    goto fail;
            } else {
                /* a sparse placeholder: size and times right, no blocks until fetched */
                int fd = open(full, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
                if (fd < 0)
                    goto fail;
                int bad = ftruncate(fd, (off_t)e.size) < 0 || fchmod(fd, (mode_t)(e.mode & 07777)) < 0 ||
                          futimens(fd, ts) < 0;
                close(fd);
                if (bad)
                    goto fail;
            }
        }
        if (e.type == 'D') {
            if (depth == WF_MAX_DEPTH)
                goto out;
            stack[depth] = parent;
            dmode[depth] = e.mode;
            dtime[depth] = e.mtime;
            depth++;
        } else
            plen = parent;
    }
    if (got < 0 || (!w->want && !done))
        goto out;
    rc = w->want && !w->found ? ENOENT : 0;
    goto out;
fail:
    rc = errno ? errno : EIO;
    wf_say("cannot build %s: %s", w->root, strerror(rc));
out:
    close(l->fd);
    free(l);
    return rc;
}

/* ------------------------------------------------------------------ loading a mount */

/* Fetch and check the catalog of m from its mirrors into <cache>/tmp; fill sum. */
static int fetch_catalog(struct wf_mount *m, char *tmp, size_t tsize, char sum[41])
{
    int last = EIO;
    for (int i = 0; i < m->nmirrors; i++) {
        char url[WF_URL_MAX];
        snprintf(url, sizeof url, "%s/.growfschecksum", m->mirror[i]);
        snprintf(tmp, tsize, "%s/tmp/catalog.%d.XXXXXX", wf_cache, (int)getpid());
        int fd = mkostemp(tmp, O_CLOEXEC);
        if (fd < 0)
            return errno;
        int e = wf_fetch_via(m, url, fd, 4096);
        char text[128];
        ssize_t n = e ? -1 : pread(fd, text, sizeof text - 1, 0);
        if (!e && (n < 40 || strspn(text, "0123456789abcdef") < 40 || (n > 40 && !strchr(" \t\n", text[40])))) {
            wf_say("%s: .growfschecksum is not a SHA-1", m->mirror[i]);
            e = EIO;
        }
        if (!e) {
            memcpy(sum, text, 40);
            sum[40] = '\0';
            snprintf(url, sizeof url, "%s/.growfsdir", m->mirror[i]);
            e = wf_fetch_via(m, url, fd, 0);
        }
        if (!e) {
            char got[41];
            long long size;
            e = file_sha1(fd, got, &size);
            if (!e && strcmp(got, sum) != 0) {
                wf_say("%s/.growfsdir: SHA-1 %s does not match .growfschecksum %s: refused", m->mirror[i], got, sum);
                e = EIO;
            }
        }
        close(fd);
        if (!e) {
            if (i > 0 || wf_debug_on)
                wf_say("%s: catalog %s from %s", m->prefix, sum, m->mirror[i]);
            return 0;
        }
        unlink(tmp);
        last = e;
        if (i + 1 < m->nmirrors)
            wf_say("%s: mirror %s failed (%s), trying %s", m->prefix, m->mirror[i], strerror(e), m->mirror[i + 1]);
    }
    return last;
}

int wf_lock_tree(const char *sum, char tree[PATH_MAX])
{
    char lockp[PATH_MAX];
    snprintf(tree, PATH_MAX, "%s/trees/%s", wf_cache, sum);
    snprintf(lockp, sizeof lockp, "%s/trees/%s.lock", wf_cache, sum);
    return wf_lock_path(lockp);
}

/* Build trees/<sum> from a checked catalog (once: under the tree's lock). */
static int install_tree(const char *tmpcat, const char *sum)
{
    char tree[PATH_MAX], work[PATH_MAX], root[PATH_MAX], cat[PATH_MAX];
    int lk = wf_lock_tree(sum, tree);
    if (lk < 0)
        return errno;
    int rc = 0;
    struct stat st;
    if (stat(tree, &st) == 0)
        goto done;
    /* a whole pass over the catalog first: a catalog that is bad on its last line must not leave
     * a half-built tree behind */
    struct walk check = {0};
    rc = walk_catalog(tmpcat, &check);
    if (rc) {
        wf_say("catalog %s is malformed: refused", sum);
        goto done;
    }
    snprintf(work, sizeof work, "%s/trees/%s.tmp-%d", wf_cache, sum, (int)getpid());
    if (snprintf(root, sizeof root, "%s/root", work) >= (int)sizeof root ||
        snprintf(cat, sizeof cat, "%s/catalog", work) >= (int)sizeof cat) {
        rc = ENAMETOOLONG;
        goto done;
    }
    if (mkdir(work, 0700) < 0) {
        rc = errno;
        goto done;
    }
    struct walk w = {.root = root, .build = 1};
    rc = walk_catalog(tmpcat, &w);
    if (!rc && (link(tmpcat, cat) < 0 || rename(work, tree) < 0))
        rc = errno;
    if (rc)
        wf_say("catalog %s: the local tree could not be made (%s); %s is left to remove", sum, strerror(rc), work);
done:
    close(lk);
    return rc;
}

static int set_root(struct wf_mount *m, const char *tree)
{
    if (!realpath(tree, m->tree))
        return errno;
    int n = snprintf(m->root, sizeof m->root, "%s/root", m->tree);
    if (n < 0 || (size_t)n >= sizeof m->root)
        return ENAMETOOLONG;
    struct stat st;
    if (stat(m->root, &st) < 0)
        return errno;
    m->rlen = (size_t)n;
    m->dev = st.st_dev;
    return 0;
}

/* Without the network: the tree the cache last used for m, if any. */
static int peek(struct wf_mount *m)
{
    char cur[PATH_MAX];
    snprintf(cur, sizeof cur, "%s/mounts/%s", wf_cache, m->key);
    return set_root(m, cur);
}

static int load(struct wf_mount *m)
{
    if (__atomic_load_n(&m->state, __ATOMIC_ACQUIRE) == 1)
        return 0;
    pthread_mutex_lock(&wf_lock);
    int rc = 0;
    if (m->state != 0) {
        rc = m->state == 1 ? 0 : m->err;
        goto out;
    }
    /* the common case, every process of a job: a catalog checked less than the TTL ago; no
     * lock, no directory to make (the link is replaced atomically when it changes) */
    char cur[PATH_MAX];
    snprintf(cur, sizeof cur, "%s/mounts/%s", wf_cache, m->key);
    struct stat st;
    if (lstat(cur, &st) == 0 && time(NULL) - st.st_mtime < wf_ttl && set_root(m, cur) == 0)
        goto ok;
    char dirs[3][PATH_MAX];
    snprintf(dirs[0], PATH_MAX, "%s/mounts", wf_cache);
    snprintf(dirs[1], PATH_MAX, "%s/trees", wf_cache);
    snprintf(dirs[2], PATH_MAX, "%s/tmp", wf_cache);
    char parent[PATH_MAX];
    snprintf(parent, sizeof parent, "%s", wf_cache);
    for (char *s = parent + 1; *s; s++)
        if (*s == '/') {
            *s = '\0';
            (void)make_dir(parent);
            *s = '/';
        }
    if (make_dir(wf_cache) < 0 || make_dir(dirs[0]) < 0 || make_dir(dirs[1]) < 0 || make_dir(dirs[2]) < 0) {
        rc = errno;
        wf_say("cache %s: %s", wf_cache, strerror(rc));
        goto fail;
    }
    char lockp[PATH_MAX];
    snprintf(lockp, sizeof lockp, "%s/mounts/%s.lock", wf_cache, m->key);
    int lk = wf_lock_path(lockp);
    if (lk < 0) {
        rc = errno;
        goto fail;
    }
    int have = lstat(cur, &st) == 0;
    if (have && time(NULL) - st.st_mtime < wf_ttl && set_root(m, cur) == 0) {
        close(lk);
        goto ok;
    }
    char tmpcat[PATH_MAX], sum[65];
    if (m->repo) {
        rc = wf_repo_fetch(m, sum);
        if (rc == 0)
            rc = wf_repo_install(m, sum);
    } else {
        rc = fetch_catalog(m, tmpcat, sizeof tmpcat, sum);
        if (rc == 0) {
            rc = install_tree(tmpcat, sum);
            unlink(tmpcat);
        }
    }
    if (rc == 0) {
        {
            char target[PATH_MAX], tmpl[PATH_MAX];
            snprintf(target, sizeof target, "../trees/%s", sum);
            if (snprintf(tmpl, sizeof tmpl, "%s.new-%d", cur, (int)getpid()) >= (int)sizeof tmpl)
                rc = ENAMETOOLONG;
            unlink(tmpl);
            if (rc == 0 && (symlink(target, tmpl) < 0 || rename(tmpl, cur) < 0))
                rc = errno;
        }
    } else if (have && set_root(m, cur) == 0) {
        wf_say("%s: no mirror answered (%s); using the cached catalog", m->prefix, strerror(rc));
        close(lk);
        goto ok;
    }
    if (rc == 0 && m->repo)
        wf_repo_committed(m);
    close(lk);
    if (rc == 0)
        rc = set_root(m, cur);
    if (rc)
        goto fail;
ok:
    if (m->repo && (rc = wf_repo_attach(m)) != 0)
        goto fail;
    if (m->nproxies > 1) {
        char path[PATH_MAX], text[16];
        snprintf(path, sizeof path, "%s/mounts/%s.proxy", wf_cache, m->key);
        int pf = open(path, O_RDONLY | O_CLOEXEC);
        ssize_t n = pf >= 0 ? read(pf, text, sizeof text - 1) : -1;
        if (pf >= 0)
            close(pf);
        if (n > 0) {
            text[n] = '\0';
            int i = atoi(text);
            if (i >= 0 && i < m->nproxies)
                m->proxy_first = i;
        }
    }
    rc = 0;
    wf_dbg_to(BYPASS_DEBUG_POLICY, "%s is %s", m->prefix, m->root);
    __atomic_store_n(&m->state, 1, __ATOMIC_RELEASE);
    wf_loaded_any = 1;
    goto out;
fail:
    wf_say("%s: cannot mount (%s)", m->prefix, strerror(rc));
    m->err = rc;
    m->state = -1;
out:
    pthread_mutex_unlock(&wf_lock);
    return rc;
}

/* ------------------------------------------------------------------ mapping */

static struct wf_mount *root_of(const char *real, const char **rest)
{
    for (int i = 0; i < wf_nmounts; i++) {
        struct wf_mount *m = &wf_mounts[i];
        if (m->rlen && strncmp(real, m->root, m->rlen) == 0 && (real[m->rlen] == '/' || real[m->rlen] == '\0')) {
            *rest = real + m->rlen;
            return m;
        }
    }
    return NULL;
}

static int wf_peeked;

/* Where each mount's tree was last, from the cache alone: enough to recognise skeleton paths
 * (an inherited current directory, /proc links) before anything is loaded. */
static void peek_all(void)
{
    if (__atomic_load_n(&wf_peeked, __ATOMIC_ACQUIRE))
        return;
    pthread_mutex_lock(&wf_lock);
    if (!wf_peeked) {
        for (int i = 0; i < wf_nmounts; i++)
            if (wf_mounts[i].state == 0 && peek(&wf_mounts[i]) != 0)
                wf_mounts[i].rlen = 0;
        __atomic_store_n(&wf_peeked, 1, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&wf_lock);
}

int wf_unmap(const char *real, char *out, size_t size)
{
    if (!wf_nmounts || !real)
        return 0;
    peek_all();
    const char *rest;
    struct wf_mount *m = root_of(real, &rest);
    if (!m)
        return 0;
    char tmp[PATH_MAX];
    int n = snprintf(tmp, sizeof tmp, "%s%s", m->prefix, rest);
    if (n < 0 || (size_t)n >= size)
        return -1;
    memcpy(out, tmp, (size_t)n + 1);
    return 1;
}

static void cwd_refresh(void)
{
    char real[PATH_MAX];
    wf_cwd_state = 0;
    if (!getcwd(real, sizeof real))
        return;
    if (wf_unmap(real, wf_vcwd, sizeof wf_vcwd) != 1)
        return;
    const char *rest;
    struct wf_mount *m = root_of(real, &rest);
    pthread_mutex_lock(&wf_lock);
    if (m->state == 0) {
        /* inherited: the tree is in use, take it as it is */
        m->state = 1;
        wf_loaded_any = 1;
        if (m->repo)
            (void)wf_repo_attach(m);
    }
    pthread_mutex_unlock(&wf_lock);
    wf_cwd_state = 1;
}

void wf_cwd_unknown(void) { wf_cwd_state = -1; }

static int dir_of_fd(int dirfd, char *out, size_t size)
{
    char proc[64], real[PATH_MAX];
    snprintf(proc, sizeof proc, "/proc/self/fd/%d", dirfd);
    ssize_t n = readlink(proc, real, sizeof real - 1);
    if (n <= 0)
        return 0;
    real[n] = '\0';
    return wf_unmap(real, out, size) == 1;
}

int wf_map(int op, int dirfd, const char *path, struct wf_path *r)
{
    r->use = path;
    r->m = NULL;
    if (!wf_nmounts || !path || bypass_unreadable_string(path))
        return 0;
    char v[PATH_MAX];
    const char *src;
    if (path[0] == '/') {
        if (!maybe_in_mount(path))
            return 0;
        src = path;
    } else if (path[0] == '\0') {
        return 0;
    } else if (dirfd == AT_FDCWD) {
        if (wf_cwd_state < 0)
            cwd_refresh();
        if (wf_cwd_state == 0)
            return 0;
        if ((size_t)snprintf(v, sizeof v, "%s/%s", wf_vcwd, path) >= sizeof v)
            return ENAMETOOLONG;
        src = v;
    } else {
        /* relative to a descriptor: the kernel resolves inside the skeleton by itself, except
         * for ".." (which could climb out of it) and writes (which must be refused) */
        if (!wf_loaded_any ||
            (op != WF_WRITE && op != WF_EXEC && !has_dotdot(path) && !__atomic_load_n(&wf_repo_pending, __ATOMIC_RELAXED)))
            return 0;
        char dir[PATH_MAX];
        if (!dir_of_fd(dirfd, dir, sizeof dir))
            return 0;
        if ((size_t)snprintf(v, sizeof v, "%s/%s", dir, path) >= sizeof v)
            return ENAMETOOLONG;
        src = v;
    }
    char n[PATH_MAX];
    int e = normalize(src, n, sizeof n);
    if (e)
        return e;
    const char *rest;
    struct wf_mount *m = mount_of(n, &rest);
    if (!m) {
        if (src != path || mount_of(path, &rest)) {
            /* a relative path from inside a tree that leaves it: the real place */
            memcpy(r->buf, n, strlen(n) + 1);
            r->use = r->buf;
        }
        return 0;
    }
    if (op == WF_WRITE)
        return EROFS;
    e = load(m);
    if (e)
        return e;
    /* a Bypass repository's subtree is in the skeleton once its catalog is: fetch those on the way */
    if (m->repo && __atomic_load_n(&m->pending, __ATOMIC_ACQUIRE) && (e = wf_repo_enter(m, rest)) != 0)
        return e;
    if (m->rlen + strlen(rest) + 1 > sizeof r->buf)
        return ENAMETOOLONG;
    memcpy(r->buf, m->root, m->rlen);
    memcpy(r->buf + m->rlen, rest, strlen(rest) + 1);
    r->use = r->buf;
    r->m = m;
    return 0;
}

static int is_placeholder(const struct stat *st)
{
    if (!S_ISREG(st->st_mode) || st->st_size == 0 || st->st_blocks != 0)
        return 0;
    for (int i = 0; i < wf_nmounts; i++)
        if (wf_mounts[i].rlen && wf_mounts[i].dev == st->st_dev)
            return 1;
    return 0;
}

void wf_fix_stat(struct stat *st)
{
    if (wf_loaded_any && is_placeholder(st))
        st->st_blocks = (st->st_size + 4095) / 4096 * 8;
}

void wf_fix_statx(void *p)
{
    struct statx *sx = p;
    if (!wf_loaded_any || !(sx->stx_mask & STATX_BLOCKS) || !S_ISREG(sx->stx_mode) || sx->stx_size == 0 ||
        sx->stx_blocks != 0)
        return;
    for (int i = 0; i < wf_nmounts; i++)
        if (wf_mounts[i].rlen && major(wf_mounts[i].dev) == (unsigned)sx->stx_dev_major &&
            minor(wf_mounts[i].dev) == (unsigned)sx->stx_dev_minor)
            sx->stx_blocks = (sx->stx_size + 4095) / 4096 * 8;
}

/* ------------------------------------------------------------------ the cache's size */

/* Bytes of fetched files in the whole cache, kept in CACHE/used under CACHE/used.lock, so that
 * a fetch costs no walk; only going over BYPASS_WEBFS_CACHE_MAX walks the trees. */
struct victim {
    struct timespec atime;
    long long size;
    char path[PATH_MAX];
};
struct victims {
    struct victim *v;
    size_t n, cap;
    long long total;
    const char *keep;
};
static __thread struct victims *wf_victims;

static int collect(const char *path, const struct stat *st, int flag, struct FTW *f)
{
    (void)f;
    struct victims *vs = wf_victims;
    if (flag != FTW_F || !S_ISREG(st->st_mode) || st->st_size == 0 || st->st_blocks == 0 || !strstr(path, "/root/"))
        return 0;
    vs->total += st->st_size;
    if (strcmp(path, vs->keep) == 0)
        return 0;
    if (vs->n == vs->cap) {
        size_t cap = vs->cap ? vs->cap * 2 : 256;
        struct victim *nv = realloc(vs->v, cap * sizeof *nv);
        if (!nv)
            return 1;
        vs->v = nv;
        vs->cap = cap;
    }
    struct victim *v = &vs->v[vs->n++];
    v->atime = st->st_atim;
    v->size = st->st_size;
    snprintf(v->path, sizeof v->path, "%s", path);
    return 0;
}

static int by_atime(const void *a, const void *b)
{
    const struct victim *x = a, *y = b;
    if (x->atime.tv_sec != y->atime.tv_sec)
        return x->atime.tv_sec < y->atime.tv_sec ? -1 : 1;
    return x->atime.tv_nsec < y->atime.tv_nsec ? -1 : x->atime.tv_nsec > y->atime.tv_nsec;
}

/* Turn a fetched file back into a placeholder: a new sparse file renamed over it, so that a
 * process still holding (or running) the old one keeps it intact. */
static int unfetch(const char *path)
{
    struct stat st;
    if (lstat(path, &st) < 0 || !S_ISREG(st.st_mode))
        return -1;
    char tmp[PATH_MAX], dir[PATH_MAX];
    if (snprintf(tmp, sizeof tmp, "%s.evict-%d", path, (int)getpid()) >= (int)sizeof tmp)
        return -1;
    snprintf(dir, sizeof dir, "%s", path);
    *strrchr(dir, '/') = '\0';
    struct stat ds;
    int have = stat(dir, &ds) == 0;
    int opened = have && !(ds.st_mode & S_IWUSR) && chmod(dir, ds.st_mode | S_IWUSR | S_IXUSR) == 0;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    int rc = -1;
    if (fd >= 0) {
        struct timespec ts[2] = {st.st_atim, st.st_mtim};
        if (ftruncate(fd, st.st_size) == 0 && fchmod(fd, st.st_mode & 07777) == 0 && futimens(fd, ts) == 0 &&
            rename(tmp, path) == 0)
            rc = 0;
        close(fd);
        if (rc)
            unlink(tmp);
    }
    if (opened)
        chmod(dir, ds.st_mode & 07777);
    if (have) {
        struct timespec dt[2] = {ds.st_atim, ds.st_mtim};
        utimensat(AT_FDCWD, dir, dt, 0);
    }
    return rc;
}

static void account(long long added, const char *keep)
{
    char usedp[PATH_MAX], lockp[PATH_MAX], trees[PATH_MAX];
    snprintf(usedp, sizeof usedp, "%s/used", wf_cache);
    snprintf(lockp, sizeof lockp, "%s/used.lock", wf_cache);
    snprintf(trees, sizeof trees, "%s/trees", wf_cache);
    int lk = wf_lock_path(lockp);
    if (lk < 0)
        return;
    long long used = 0;
    char text[32];
    int fd = open(usedp, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        ssize_t n = read(fd, text, sizeof text - 1);
        close(fd);
        if (n > 0) {
            text[n] = '\0';
            used = strtoll(text, NULL, 10);
        }
    }
    used += added;
    if (used > wf_cache_max) {
        struct victims vs = {.keep = keep};
        wf_victims = &vs;
        /* FTW_PHYS: never follow a tree's symlinks out of the cache */
        int walked = nftw(trees, collect, 16, FTW_PHYS) == 0;
        wf_victims = NULL;
        if (walked) {
            used = vs.total;
            qsort(vs.v, vs.n, sizeof *vs.v, by_atime);
            long long goal = wf_cache_max - wf_cache_max / 10;
            size_t evicted = 0;
            for (size_t i = 0; i < vs.n && used > goal; i++)
                if (unfetch(vs.v[i].path) == 0) {
                    used -= vs.v[i].size;
                    evicted++;
                }
            wf_dbg_to(BYPASS_DEBUG_CACHE, "cache over %lld bytes: %zu files evicted, %lld bytes kept", wf_cache_max, evicted, used);
        }
        free(vs.v);
    }
    char tmp[PATH_MAX];
    if (snprintf(tmp, sizeof tmp, "%s.%d", usedp, (int)getpid()) >= (int)sizeof tmp) {
        close(lk);
        return;
    }
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd >= 0) {
        int n = snprintf(text, sizeof text, "%lld\n", used < 0 ? 0 : used);
        int ok = write(fd, text, (size_t)n) == n;
        close(fd);
        if (!ok || rename(tmp, usedp) < 0)
            unlink(tmp);
    }
    close(lk);
}

/* A GROW-FS file: its catalog line, then the mirrors in turn until one sends the right bytes. */
static int growfs_fill(struct wf_mount *m, const char *rel, int fd, struct wf_file *f)
{
    struct walk w = {.want = rel};
    char catalog[PATH_MAX];
    snprintf(catalog, sizeof catalog, "%s/catalog", m->tree);
    int rc = walk_catalog(catalog, &w);
    if (rc) {
        wf_say("%s%s: not in the catalog (%s)", m->prefix, rel, strerror(rc));
        return EIO;
    }
    f->size = w.size;
    f->mode = w.mode;
    f->mtime.tv_sec = w.mtime + WF_GROWFS_MTIME_OFFSET;
    f->mtime.tv_nsec = 0;
    rc = EIO;
    for (int i = 0; i < m->nmirrors; i++) {
        char url[WF_URL_MAX + PATH_MAX];
        wf_url_for(m, i, rel, url, sizeof url);
        int e = wf_fetch_via(m, url, fd, w.size ? w.size : 1);
        if (e == EFBIG) {
            wf_say("%s%s: %s sent more than the catalog's %lld bytes: refused", m->prefix, rel, m->mirror[i], w.size);
            e = EIO;
        }
        if (!e) {
            char got[41];
            long long size;
            e = file_sha1(fd, got, &size);
            if (!e && (size != w.size || strcmp(got, w.sum) != 0)) {
                wf_say("%s%s: %s sent %lld bytes with SHA-1 %s, the catalog says %lld bytes %s: refused", m->prefix,
                       rel, m->mirror[i], size, got, w.size, w.sum);
                e = EIO;
            }
        }
        if (!e)
            return 0;
        rc = e;
        if (i + 1 < m->nmirrors)
            wf_say("%s%s: trying mirror %s", m->prefix, rel, m->mirror[i + 1]);
    }
    if (rc == ENOENT || rc == EACCES || rc == EPERM || rc == EISDIR) {
        /* the catalog says the file is there: a server without it is a broken server, and
         * "no such file" for a name stat just found would mislead */
        wf_say("%s%s: listed in the catalog but no mirror serves it (%s)", m->prefix, rel, strerror(rc));
        rc = EIO;
    }
    return rc;
}

/* The skeleton path of placeholder descriptor fd, read under the tree's fetch.lock.  Another
 * process may have renamed the fetched file over the placeholder since this one opened it: the
 * kernel then names the old inode "PATH (deleted)", and PATH is where the content now is.  Every
 * rename over a placeholder is a fill's, made under the same lock, so here it has finished: a
 * link count of 0 (a placeholder is never hard-linked) means the suffix is there and is the
 * kernel's, never part of the file's own name. */
static int held_path(int fd, char *out, size_t size)
{
    static const char gone[] = " (deleted)";
    const size_t glen = sizeof gone - 1;
    struct stat st;
    char proc[64];
    snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
    if (fstat(fd, &st) < 0)
        return errno;
    ssize_t n = readlink(proc, out, size - 1);
    if (n <= 0 || (size_t)n >= size - 1)
        return EIO;
    out[n] = '\0';
    if (st.st_nlink == 0) {
        if ((size_t)n <= glen || strcmp(out + n - glen, gone) != 0)
            return EIO;
        out[n - glen] = '\0';
    }
    return 0;
}

/* Fetch the file behind skeleton path `real` (a placeholder), check it, put it in place.  With
 * `held`, a descriptor of the placeholder, real (size bytes) is first read again from it. */
static int fill(struct wf_mount *m, char *real, size_t size, int held)
{
    const char *rel = real + m->rlen;
    char lockp[PATH_MAX];
    snprintf(lockp, sizeof lockp, "%s/fetch.lock", m->tree);
    int lk = wf_lock_path(lockp);
    if (lk < 0)
        return errno;
    int rc = 0, fetched = 0;
    struct wf_file f = {0};
    struct stat st;
    if (held >= 0) {
        const char *rest;
        rc = held_path(held, real, size);
        if (!rc && root_of(real, &rest) != m)
            rc = EIO;
        if (rc)
            goto out;
    }
    if (stat(real, &st) < 0) {
        rc = errno;
        goto out;
    }
    if (!is_placeholder(&st))
        goto out; /* another process filled it meanwhile */
    fetched = 1;
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s/fetch.XXXXXX", m->tree);
    int fd = mkostemp(tmp, O_CLOEXEC);
    if (fd < 0) {
        rc = errno;
        goto out;
    }
    rc = m->repo ? wf_repo_fill(m, rel, fd, &f) : growfs_fill(m, rel, fd, &f);
    if (rc == 0) {
        /* atime "now": the cache evicts the least recently used first */
        struct timespec ts[2] = {{0, UTIME_NOW}, f.mtime};
        if (fchmod(fd, (mode_t)(f.mode & 07777)) < 0 || futimens(fd, ts) < 0)
            rc = errno;
    }
    close(fd);
    if (rc == 0) {
        /* renaming into the directory changes its times: put the catalog's back */
        char dir[PATH_MAX];
        snprintf(dir, sizeof dir, "%s", real);
        *strrchr(dir, '/') = '\0';
        struct stat ds;
        int have = stat(dir, &ds) == 0;
        int r2 = rename(tmp, real);
        if (r2 < 0 && errno == EACCES && have && chmod(dir, ds.st_mode | S_IWUSR | S_IXUSR) == 0) {
            r2 = rename(tmp, real);
            chmod(dir, ds.st_mode & 07777);
        }
        if (r2 < 0)
            rc = errno;
        else if (have) {
            struct timespec dt[2] = {ds.st_atim, ds.st_mtim};
            utimensat(AT_FDCWD, dir, dt, 0);
        }
    }
    if (rc)
        unlink(tmp);
out:
    close(lk);
    if (rc == 0 && fetched)
        account(f.size, real);
    return rc;
}

int wf_after_open(int fd, int flags, int dirfd, const struct wf_path *r)
{
    if (!wf_loaded_any || (!r->m && (dirfd == AT_FDCWD || r->use[0] == '/') && wf_cwd_state != 1))
        return 0;
    if (flags & O_PATH)
        return 0;
    struct stat st;
    if (fstat(fd, &st) < 0)
        return 0;
    if (!is_placeholder(&st)) {
        if (wf_debug_on && r->m && S_ISREG(st.st_mode))
            __atomic_add_fetch(&wf_hits, 1, __ATOMIC_RELAXED);
        if (BYPASS_DEBUG_ON(BYPASS_DEBUG_CACHE) && r->m && S_ISREG(st.st_mode))
            bypass_debug_write(BYPASS_DEBUG_CACHE, "hit %s (in the cache)", r->use);
        return 0;
    }
    /* the mount only: the exact name is read under the fetch lock */
    char proc[64], real[PATH_MAX];
    snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(proc, real, sizeof real - 1);
    if (n <= 0)
        return EIO;
    real[n] = '\0';
    const char *rest;
    struct wf_mount *m = root_of(real, &rest);
    if (!m)
        return 0;
    double t0 = gass_now();
    int e = fill(m, real, sizeof real, fd);
    if (wf_debug_on) {
        __atomic_add_fetch(e ? &wf_fetch_errors : &wf_misses, 1, __ATOMIC_RELAXED);
        if (!e) {
            wf_fetched_bytes += (unsigned long long)st.st_size;
            wf_fetch_seconds += gass_now() - t0;
        }
    }
    if (e)
        return e;
    int nfd = open(real, (flags & ~(O_CREAT | O_EXCL | O_TRUNC | O_TMPFILE)) | O_CLOEXEC);
    if (nfd < 0)
        return errno;
    /* the program's descriptor keeps its number and its close-on-exec flag (fopen "re") */
    int fdflags = fcntl(fd, F_GETFD);
    int again = dup3(nfd, fd, fdflags >= 0 && (fdflags & FD_CLOEXEC) ? O_CLOEXEC : 0) < 0 ? errno : 0;
    close(nfd);
    return again;
}

/* ------------------------------------------------------------------ libraries found through $ORIGIN */

/* The dynamic loader's own opens are invisible to a preload, but $ORIGIN in a program's RUNPATH
 * expands to the directory the kernel ran it from: the skeleton.  So before a program from a tree
 * runs, the libraries it names (DT_NEEDED) that its $ORIGIN-relative RUNPATH/RPATH finds in the
 * tree are fetched, and theirs in turn. */
static void *read_at(int fd, off_t off, size_t len)
{
    char *b = malloc(len + 1);
    if (b && pread(fd, b, len, off) != (ssize_t)len) {
        free(b);
        return NULL;
    }
    if (b)
        b[len] = '\0';
    return b;
}

static off_t vaddr_to_offset(const Elf64_Phdr *ph, size_t n, Elf64_Addr va)
{
    for (size_t i = 0; i < n; i++)
        if (ph[i].p_type == PT_LOAD && va >= ph[i].p_vaddr && va < ph[i].p_vaddr + ph[i].p_filesz)
            return (off_t)(va - ph[i].p_vaddr + ph[i].p_offset);
    return -1;
}

static int fill(struct wf_mount *m, char *real, size_t size, int held);

/* A Bypass repository's library directory may be a subtree whose catalog is not loaded yet. */
static int enter_subtree(const char *skeleton_path)
{
    char n[PATH_MAX];
    const char *rest;
    struct wf_mount *m;
    if (!wf_repo_pending || normalize(skeleton_path, n, sizeof n) != 0 || !(m = root_of(n, &rest)) || !m->repo)
        return 0;
    return wf_repo_enter(m, rest);
}

static void prefetch_libs(const char *file, int depth)
{
    if (depth > 8)
        return;
    int fd = open(file, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    Elf64_Ehdr eh;
    Elf64_Phdr ph[64];
    Elf64_Dyn *dyn = NULL;
    char *str = NULL;
    if (pread(fd, &eh, sizeof eh, 0) != (ssize_t)sizeof eh || memcmp(eh.e_ident, ELFMAG, SELFMAG) != 0 ||
        eh.e_ident[EI_CLASS] != ELFCLASS64 || eh.e_phentsize != sizeof(Elf64_Phdr) || eh.e_phnum > 64)
        goto out;
    size_t n = eh.e_phnum;
    if (pread(fd, ph, n * sizeof *ph, (off_t)eh.e_phoff) != (ssize_t)(n * sizeof *ph))
        goto out;
    size_t ndyn = 0;
    for (size_t i = 0; i < n; i++)
        if (ph[i].p_type == PT_DYNAMIC && ph[i].p_filesz <= 65536) {
            dyn = read_at(fd, (off_t)ph[i].p_offset, ph[i].p_filesz);
            ndyn = ph[i].p_filesz / sizeof *dyn;
        }
    if (!dyn)
        goto out;
    Elf64_Addr strtab = 0;
    Elf64_Xword strsz = 0, path = (Elf64_Xword)-1;
    for (size_t i = 0; i < ndyn && dyn[i].d_tag != DT_NULL; i++) {
        if (dyn[i].d_tag == DT_STRTAB)
            strtab = dyn[i].d_un.d_ptr;
        else if (dyn[i].d_tag == DT_STRSZ)
            strsz = dyn[i].d_un.d_val;
        else if (dyn[i].d_tag == DT_RUNPATH || (dyn[i].d_tag == DT_RPATH && path == (Elf64_Xword)-1))
            path = dyn[i].d_un.d_val;
    }
    off_t stroff = vaddr_to_offset(ph, n, strtab);
    if (stroff < 0 || strsz == 0 || strsz > (1 << 20) || path >= strsz || !(str = read_at(fd, stroff, strsz)))
        goto out;
    str[strsz - 1] = '\0';
    char origin[PATH_MAX];
    snprintf(origin, sizeof origin, "%s", file);
    *strrchr(origin, '/') = '\0';
    for (size_t i = 0; i < ndyn && dyn[i].d_tag != DT_NULL; i++) {
        if (dyn[i].d_tag != DT_NEEDED || dyn[i].d_un.d_val >= strsz)
            continue;
        const char *need = str + dyn[i].d_un.d_val;
        if (strchr(need, '/'))
            continue;
        for (const char *p = str + path; *p;) {
            const char *e = p + strcspn(p, ":");
            const char *rest = NULL;
            if (e - p >= 7 && strncmp(p, "$ORIGIN", 7) == 0)
                rest = p + 7;
            else if (e - p >= 9 && strncmp(p, "${ORIGIN}", 9) == 0)
                rest = p + 9;
            char cand[PATH_MAX], real[PATH_MAX];
            if (rest && snprintf(cand, sizeof cand, "%s%.*s/%s", origin, (int)(e - rest), rest, need) < (int)sizeof cand &&
                enter_subtree(cand) == 0 && realpath(cand, real)) {
                const char *in;
                struct wf_mount *m = root_of(real, &in);
                struct stat st;
                if (m && stat(real, &st) == 0 && S_ISREG(st.st_mode)) {
                    if (is_placeholder(&st) && fill(m, real, sizeof real, -1) != 0)
                        break; /* the loader will say what is missing */
                    prefetch_libs(real, depth + 1);
                    break;
                }
            }
            p = *e ? e + 1 : e;
        }
    }
out:
    free(str);
    free(dyn);
    close(fd);
}

int wf_before_exec(const struct wf_path *r)
{
    if (!r->m)
        return 0;
    int fd = open(r->use, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0; /* the exec itself reports why */
    int e = wf_after_open(fd, O_RDONLY | O_CLOEXEC, AT_FDCWD, r);
    close(fd);
    char real[PATH_MAX];
    if (!e && realpath(r->use, real))
        prefetch_libs(real, 0);
    return e;
}

int wf_script(const struct wf_path *r, const char *asked, char *const *argv, char **out, size_t room,
              char *line, size_t lsize, struct wf_path *interp)
{
    if (!r->m)
        return 0;
    int fd = open(r->use, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, line, lsize - 1);
    close(fd);
    if (n < 3 || line[0] != '#' || line[1] != '!')
        return 0;
    line[n] = '\0';
    char *nl = strchr(line, '\n');
    if (!nl)
        return -ENOEXEC; /* longer than the kernel reads: it would refuse too */
    *nl = '\0';
    char *p = line + 2;
    p += strspn(p, " \t");
    char *name = p;
    p += strcspn(p, " \t");
    char *arg = NULL;
    if (*p) {
        *p++ = '\0';
        p += strspn(p, " \t");
        size_t len = strlen(p);
        while (len && (p[len - 1] == ' ' || p[len - 1] == '\t'))
            p[--len] = '\0';
        if (len)
            arg = p;
    }
    if (!*name)
        return -ENOEXEC;
    int e = wf_map(WF_EXEC, AT_FDCWD, name, interp);
    if (!e)
        e = wf_before_exec(interp);
    if (e)
        return -e;
    size_t k = 0, argc = 0;
    while (argv && argv[argc])
        argc++;
    if (argc + 3 > room)
        return -E2BIG;
    out[k++] = name;
    if (arg)
        out[k++] = arg;
    out[k++] = (char *)asked;
    for (size_t i = 1; i < argc; i++)
        out[k++] = argv[i];
    out[k] = NULL;
    return (int)k;
}

int wf_search_path(const char *file, struct wf_path *r)
{
    const char *path = getenv("PATH");
    if (!path)
        path = "/bin:/usr/bin";
    int any = 0;
    for (const char *p = path; *p;) {
        const char *e = p + strcspn(p, ":");
        const char *rest;
        char dir[PATH_MAX], n[PATH_MAX];
        if ((size_t)(e - p) < sizeof dir) {
            memcpy(dir, p, (size_t)(e - p));
            dir[e - p] = '\0';
            if (dir[0] == '/' && normalize(dir, n, sizeof n) == 0 && mount_of(n, &rest))
                any = 1;
        }
        p = *e ? e + 1 : e;
    }
    if (!any)
        return 1;
    int last = ENOENT;
    for (const char *p = path;;) {
        const char *e = p + strcspn(p, ":");
        char cand[PATH_MAX];
        int len = e == p ? snprintf(cand, sizeof cand, "%s", file)
                         : snprintf(cand, sizeof cand, "%.*s/%s", (int)(e - p), p, file);
        if (len > 0 && (size_t)len < sizeof cand) {
            struct wf_path t;
            if (wf_map(WF_EXEC, AT_FDCWD, cand, &t) == 0) {
                struct stat st;
                if (stat(t.use, &st) == 0 && S_ISREG(st.st_mode) && access(t.use, X_OK) == 0) {
                    memcpy(r->buf, t.use, strlen(t.use) + 1);
                    r->use = r->buf;
                    r->m = t.m;
                    return 0;
                }
                if (errno == EACCES)
                    last = EACCES;
            }
        }
        if (!*e)
            break;
        p = e + 1;
    }
    return last;
}

/* ------------------------------------------------------------------ ftw, nftw */

static __thread const struct wf_path *walk_map;
static __thread int (*walk_fn)(const char *, const struct stat *, int);
static __thread int (*walk_nfn)(const char *, const struct stat *, int, struct FTW *);

static const char *walk_name(const char *real, char *out, int *shift)
{
    *shift = 0;
    if (wf_unmap(real, out, PATH_MAX) == 1) {
        *shift = (int)strlen(out) - (int)strlen(real);
        return out;
    }
    return real;
}

/* The callback sees the stat the program would see for the tree (a fixed copy). */
static const struct stat *fixed_stat(const struct stat *st, struct stat *copy)
{
    if (!st)
        return NULL;
    *copy = *st;
    wf_fix_stat(copy);
    return copy;
}

static int walk_tramp(const char *p, const struct stat *st, int flag)
{
    char out[PATH_MAX];
    int shift;
    struct stat copy;
    st = fixed_stat(st, &copy);
    return walk_fn(walk_name(p, out, &shift), st, flag);
}

static int nwalk_tramp(const char *p, const struct stat *st, int flag, struct FTW *f)
{
    char out[PATH_MAX];
    int shift;
    struct stat copy;
    st = fixed_stat(st, &copy);
    const char *name = walk_name(p, out, &shift);
    struct FTW g = *f;
    g.base += shift;
    return walk_nfn(name, st, flag, &g);
}

int wf_ftw(const char *dir, int (*fn)(const char *, const struct stat *, int), int nopenfd, const struct wf_path *r)
{
    const struct wf_path *saved = walk_map;
    int (*sfn)(const char *, const struct stat *, int) = walk_fn;
    walk_map = r;
    walk_fn = fn;
    int rc = ftw(dir, walk_tramp, nopenfd);
    walk_map = saved;
    walk_fn = sfn;
    return rc;
}

int wf_nftw(const char *dir, int (*fn)(const char *, const struct stat *, int, struct FTW *), int nopenfd, int flags,
            const struct wf_path *r)
{
    const struct wf_path *saved = walk_map;
    int (*sfn)(const char *, const struct stat *, int, struct FTW *) = walk_nfn;
    walk_map = r;
    walk_nfn = fn;
    int rc = nftw(dir, nwalk_tramp, nopenfd, flags);
    walk_map = saved;
    walk_nfn = sfn;
    return rc;
}

/* ------------------------------------------------------------------ start-up and end */

__attribute__((destructor)) static void wf_summary(void)
{
    if (wf_debug_on && (wf_hits || wf_misses || wf_fetch_errors))
        wf_say("summary: %lu opens from the cache, %lu files fetched (%llu bytes, %.3f s), %lu failed; hit rate %.0f%%",
               wf_hits, wf_misses, wf_fetched_bytes, wf_fetch_seconds, wf_fetch_errors,
               100.0 * (double)wf_hits / (double)(wf_hits + wf_misses + wf_fetch_errors));
}

__attribute__((constructor(102))) static void wf_agent_init(void)
{
    bypass_guard_enter();
    char err[PATH_MAX + 256];
    err[0] = '\0';
    if (wf_init_from_env(err, sizeof err) < 0) {
        /* a run must not go on with a mount list other than the one asked for */
        wf_say("error: %s", err);
        _exit(2);
    }
    bypass_guard_leave();
}
