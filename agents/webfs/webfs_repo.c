/*
 * webfs_repo.c -- Bypass repositories (written by `bypass publish`, bypass/publish.py) for the
 * webfs agent: the signed manifest, SQLite catalogs nested per subtree, compressed objects named
 * by the SHA-256 of their content.
 *
 * Trust runs in one chain: the manifest is signed with the key the mount names; it names the root
 * catalog by hash; each catalog names its files and nested catalogs by hash.  Every object is
 * decompressed and hashed before anything of it is used, so a server (or an alien cache) can make
 * a file fail with EIO but can never make it read a wrong byte.
 *
 * The skeleton (webfs.c) is built a catalog at a time: the root catalog when the mount is first
 * used, a nested catalog when a path at or below its directory is first looked up.  TREE/nested
 * lists the nested catalogs the skeleton knows ("N hash path") and those already in it ("L path"),
 * appended under the tree's lock, so processes sharing the cache share what was loaded.
 */
#define _GNU_SOURCE
#include "webfs_internal.h"

#include "../gass/gass_internal.h"
#include "webfs_dl.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int wf_repo_pending;

#define MANIFEST_FILE "bypass.manifest"
#define MANIFEST_MAX 1024
#define CATALOG_MAX (1LL << 30)
static const char EMPTY_SHA256[] = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

static pthread_mutex_t repo_lock = PTHREAD_MUTEX_INITIALIZER;
static char wf_alien[WF_ROOT_MAX]; /* BYPASS_WEBFS_ALIEN: objects shared by many nodes, "" if none */

/* ------------------------------------------------------------------ small tools */

static int hex_digit(int c) { return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1; }

/* exactly 2n lowercase hex digits -> n bytes */
static int unhex(const char *s, size_t len, unsigned char *out, size_t n)
{
    if (len != 2 * n)
        return -1;
    for (size_t i = 0; i < n; i++) {
        int a = hex_digit(s[2 * i]), b = hex_digit(s[2 * i + 1]);
        if (a < 0 || b < 0)
            return -1;
        out[i] = (unsigned char)(a << 4 | b);
    }
    return 0;
}

static int is_hash(const char *s)
{
    unsigned char b[32];
    return s && unhex(s, strlen(s), b, sizeof b) == 0;
}

static ssize_t read_small(const char *path, char *buf, size_t size)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    size_t got = 0;
    ssize_t n = 0;
    while (got < size - 1 && (n = read(fd, buf + got, size - 1 - got)) != 0) {
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            break;
        got += (size_t)n;
    }
    close(fd);
    if (n < 0)
        return -1;
    buf[got] = '\0';
    return (ssize_t)got;
}

static int remove_one(const char *p, const struct stat *st, int flag, struct FTW *f)
{
    (void)st, (void)f;
    return flag == FTW_DP ? rmdir(p) : unlink(p), 0;
}

static int open_up(const char *p, const struct stat *st, int flag, struct FTW *f)
{
    (void)f;
    if (flag == FTW_D)
        chmod(p, (st->st_mode & 07777) | S_IRWXU);
    return 0;
}

/* A half-built tree: nothing of it may stay (its directories may have been made read-only). */
static void remove_tree(const char *dir)
{
    nftw(dir, open_up, 16, FTW_PHYS);
    nftw(dir, remove_one, 16, FTW_PHYS | FTW_DEPTH);
}

/* ------------------------------------------------------------------ the key */

int wf_repo_key(struct wf_mount *m, const char *file, char *err, size_t esize)
{
    /* the shared alien cache is a setting of every repository: read it with the first key */
    const char *alien = bypass_getenv("BYPASS_WEBFS_ALIEN");
    if (alien && *alien && !wf_alien[0]) {
        if (alien[0] != '/' || strlen(alien) >= sizeof wf_alien - 200) {
            snprintf(err, esize, "BYPASS_WEBFS_ALIEN='%s' must be an absolute path", alien);
            return -1;
        }
        snprintf(wf_alien, sizeof wf_alien, "%s", alien);
    }
    if (m->repo) {
        snprintf(err, esize, "%s: more than one key=", m->prefix);
        return -1;
    }
    char text[256];
    ssize_t n = read_small(file, text, sizeof text);
    if (n < 0) {
        snprintf(err, esize, "%s: key file %s: %s", m->prefix, file, strerror(errno));
        return -1;
    }
    static const char tag[] = "bypass-ed25519 ";
    size_t hexlen = strspn(text + (n >= 15 ? 15 : 0), "0123456789abcdef");
    if (n < 15 || strncmp(text, tag, 15) != 0 || unhex(text + 15, hexlen, m->pub, sizeof m->pub) < 0 ||
        strspn(text + 15 + hexlen, " \t\r\n") != strlen(text + 15 + hexlen)) {
        snprintf(err, esize, "%s: key file %s is not a public key from bypass keygen ('bypass-ed25519 <64 hex digits>')",
                 m->prefix, file);
        return -1;
    }
    m->repo = 1;
    return 0;
}

/* ------------------------------------------------------------------ the manifest */

struct manifest {
    long long revision, published;
    char root[65];
};

static int number_line(const char *line, const char *key, long long *v)
{
    size_t k = strlen(key);
    if (strncmp(line, key, k) != 0 || line[k] != ' ' || line[k + 1] < '0' || line[k + 1] > '9')
        return -1;
    char *end;
    errno = 0;
    *v = strtoll(line + k + 1, &end, 10);
    return errno || *end != '\n' ? -1 : 0;
}

/* The manifest's exact shape (bypass/publish.py), its signature checked before any of it is used;
 * text[n] is '\0'. */
static const char *check_manifest(char *text, size_t n, const unsigned char pub[32], struct manifest *mf)
{
    if (n == 0 || memchr(text, '\0', n) || text[n - 1] != '\n')
        return "not a manifest (empty, binary or cut short)";
    char *sig = NULL;
    for (char *p = text; p < text + n; p = strchr(p, '\n') + 1)
        if (strncmp(p, "signature ", 10) == 0)
            sig = p;
    if (!sig)
        return "not signed";
    unsigned char raw[64];
    if (unhex(sig + 10, (size_t)(text + n - 1 - (sig + 10)), raw, sizeof raw) < 0)
        return "malformed signature line";
    int ok = wf_ed25519_verify(pub, text, (size_t)(sig - text), raw);
    if (ok < 0)
        return "signature not checkable (libcrypto cannot be used)";
    if (ok == 0)
        return "signature does not match the configured key";
    /* signed: now the body is the publisher's; still read it strictly */
    *sig = '\0';
    char *line[4] = {text, NULL, NULL, NULL};
    for (int i = 1; i < 4; i++) {
        char *nl = strchr(line[i - 1], '\n');
        if (!nl)
            return "too few lines";
        line[i] = nl + 1;
    }
    char *end = strchr(line[3], '\n');
    if (!end || end[1] != '\0')
        return "unexpected lines";
    if (strncmp(line[0], "bypass-repository 1\n", 20) != 0)
        return "not format 'bypass-repository 1'";
    if (number_line(line[1], "revision", &mf->revision) < 0 || mf->revision < 1)
        return "bad revision line";
    if (strncmp(line[2], "root ", 5) != 0 || unhex(line[2] + 5, (size_t)(line[3] - 1 - (line[2] + 5)), raw, 32) < 0)
        return "bad root line";
    memcpy(mf->root, line[2] + 5, 64);
    mf->root[64] = '\0';
    if (number_line(line[3], "published", &mf->published) < 0)
        return "bad published line";
    return NULL;
}

/* The newest revision this cache has accepted for the mount, and the mirrors' order then:
 * "REVISION ROOT I,J,K". */
static int read_seen(const struct wf_mount *m, long long *rev, char root[65], char order[64])
{
    char path[PATH_MAX], text[192];
    snprintf(path, sizeof path, "%s/mounts/%s.revision", wf_cache, m->key);
    order[0] = '\0';
    if (read_small(path, text, sizeof text) < 0 || sscanf(text, "%lld %64s %63s", rev, root, order) < 2)
        return 0;
    return 1;
}

/* One mirror's manifest: 0 with mf filled, or an errno (the reason said). */
static int ask_manifest(struct wf_mount *m, int i, struct manifest *mf, int have_seen, long long seen,
                        const char *seen_root)
{
    char url[WF_URL_MAX + 32], tmp[PATH_MAX];
    snprintf(url, sizeof url, "%s/" MANIFEST_FILE, m->mirror[i]);
    snprintf(tmp, sizeof tmp, "%s/tmp/manifest.%d.XXXXXX", wf_cache, (int)getpid());
    int fd = mkostemp(tmp, O_CLOEXEC);
    if (fd < 0)
        return errno;
    unlink(tmp);
    int e = wf_fetch_via(m, url, fd, MANIFEST_MAX);
    if (e == EFBIG) {
        wf_say("%s/" MANIFEST_FILE ": larger than a manifest can be: refused", m->mirror[i]);
        e = EIO;
    }
    char text[MANIFEST_MAX + 1];
    ssize_t n = e ? -1 : pread(fd, text, sizeof text, 0);
    close(fd);
    if (e)
        return e;
    const char *why = NULL;
    if (n < 0 || n > MANIFEST_MAX)
        why = n < 0 ? strerror(errno) : "larger than a manifest can be";
    else {
        text[n] = '\0';
        why = check_manifest(text, (size_t)n, m->pub, mf);
    }
    if (!why && have_seen && (mf->revision < seen || (mf->revision == seen && strcmp(mf->root, seen_root) != 0)))
        why = "older than the revision this cache already has (a replayed manifest?)";
    if (why) {
        wf_say("%s/" MANIFEST_FILE ": %s: refused", m->mirror[i], why);
        return EIO;
    }
    return 0;
}

/* Every mirror is asked (the manifest is small, and asked once per TTL): the newest good revision
 * wins, and the mirrors that sent a good one are used fastest first from then on. */
int wf_repo_fetch(struct wf_mount *m, char root[65])
{
    long long seen = 0;
    char seen_root[65] = "", order[64];
    int have_seen = read_seen(m, &seen, seen_root, order);
    struct manifest mf[WF_MAX_MIRRORS];
    double took[WF_MAX_MIRRORS];
    int good[WF_MAX_MIRRORS], best = -1, last = EIO;
    for (int i = 0; i < m->nmirrors; i++) {
        double t0 = gass_now();
        int e = ask_manifest(m, i, &mf[i], have_seen, seen, seen_root);
        took[i] = gass_now() - t0;
        good[i] = e == 0;
        if (e) {
            last = e;
            if (m->nmirrors > 1)
                wf_say("%s: mirror %s failed (%s); the others are used", m->prefix, m->mirror[i], strerror(e));
            continue;
        }
        wf_dbg("%s: mirror %s: revision %lld in %.1f ms", m->prefix, m->mirror[i], mf[i].revision, took[i] * 1e3);
        if (best < 0 || mf[i].revision > mf[best].revision)
            best = i;
    }
    if (best < 0)
        return last;
    /* good mirrors by time, then the others as configured (they may come back) */
    int n = 0;
    for (int i = 0; i < m->nmirrors; i++)
        if (good[i]) {
            int at = n++;
            while (at > 0 && took[m->order[at - 1]] > took[i]) {
                m->order[at] = m->order[at - 1];
                at--;
            }
            m->order[at] = i;
        }
    for (int i = 0; i < m->nmirrors; i++)
        if (!good[i])
            m->order[n++] = i;
    m->norder = n;
    memcpy(root, mf[best].root, 65);
    m->revision = mf[best].revision;
    memcpy(m->manifest_root, mf[best].root, 65);
    if (wf_debug_on || m->order[0] != 0)
        wf_say("%s: revision %lld (root catalog %.12s); fastest mirror %s", m->prefix, mf[best].revision,
               mf[best].root, m->mirror[m->order[0]]);
    return 0;
}

void wf_repo_committed(struct wf_mount *m)
{
    char path[PATH_MAX], tmp[PATH_MAX + 16], text[192];
    snprintf(path, sizeof path, "%s/mounts/%s.revision", wf_cache, m->key);
    snprintf(tmp, sizeof tmp, "%s.%d", path, (int)getpid());
    int n = snprintf(text, sizeof text, "%lld %s ", m->revision, m->manifest_root);
    for (int k = 0; k < m->norder; k++)
        n += snprintf(text + n, sizeof text - (size_t)n, "%s%d", k ? "," : "", m->order[k]);
    text[n++] = '\n';
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return;
    int ok = write(fd, text, (size_t)n) == n;
    close(fd);
    if (!ok || rename(tmp, path) < 0)
        unlink(tmp);
}

/* The mirrors' order the cache last measured (processes within the TTL ask no manifest). */
static void read_order(struct wf_mount *m)
{
    long long rev;
    char root[65], order[64];
    if (m->norder || !read_seen(m, &rev, root, order))
        return;
    int n = 0;
    for (char *p = order; *p && n < m->nmirrors;) {
        char *end;
        long i = strtol(p, &end, 10);
        if (end == p || i < 0 || i >= m->nmirrors)
            return; /* not ours (the mount list changed): as configured */
        m->order[n++] = (int)i;
        p = *end == ',' ? end + 1 : end;
    }
    if (n == m->nmirrors)
        m->norder = n;
}

static int mirror_at(const struct wf_mount *m, int k) { return m->norder == m->nmirrors ? m->order[k] : k; }

/* ------------------------------------------------------------------ objects */

/* Inflate `in` into `out` (rewritten from the start) and check it is the object `hash`. */
static int from_compressed(int in, const char *hash, long long limit, int out, long long *size)
{
    if (out >= 0 && (ftruncate(out, 0) < 0 || lseek(out, 0, SEEK_SET) < 0))
        return errno;
    char got[65];
    int e = wf_inflate_fd(in, out, limit, got, size);
    if (e)
        return e == ENOSYS ? EIO : e;
    return strcmp(got, hash) == 0 ? 0 : EIO;
}

/* Keep a checked object in the alien cache for other nodes: written aside, renamed in whole. */
static void alien_store(int in, const char *hash)
{
    char dir[WF_ROOT_MAX + 16], tmp[PATH_MAX], dest[PATH_MAX];
    snprintf(dir, sizeof dir, "%s/data/%.2s", wf_alien, hash);
    snprintf(dest, sizeof dest, "%s/%s", dir, hash + 2);
    if (access(dest, F_OK) == 0)
        return;
    char data[WF_ROOT_MAX + 8];
    snprintf(data, sizeof data, "%s/data", wf_alien);
    (void)mkdir(data, 0777);
    (void)mkdir(dir, 0777);
    snprintf(tmp, sizeof tmp, "%s/.new.%d.XXXXXX", dir, (int)getpid());
    int out = mkostemp(tmp, O_CLOEXEC);
    if (out < 0)
        return; /* a read-only alien cache: fine */
    char buf[65536];
    off_t at = 0;
    ssize_t n;
    int ok = 1;
    while ((n = pread(in, buf, sizeof buf, at)) > 0) {
        if (write(out, buf, (size_t)n) != n) {
            ok = 0;
            break;
        }
        at += n;
    }
    ok = ok && n == 0 && fchmod(out, 0644) == 0;
    close(out);
    if (!ok || rename(tmp, dest) < 0)
        unlink(tmp);
    else
        wf_dbg("stored %s in the alien cache", hash);
}

/* Object `hash` (at most `limit` bytes once inflated) into `out`: from the alien cache if it has
 * a good copy, else from the mirrors in turn.  `what` names it in messages. */
static int get_object(struct wf_mount *m, const char *hash, long long limit, int out, long long *size,
                      const char *what)
{
    if (wf_alien[0]) {
        char path[PATH_MAX];
        snprintf(path, sizeof path, "%s/data/%.2s/%s", wf_alien, hash, hash + 2);
        int in = open(path, O_RDONLY | O_CLOEXEC);
        if (in >= 0) {
            int e = from_compressed(in, hash, limit, out, size);
            close(in);
            if (!e) {
                wf_dbg("%s%s: from the alien cache", m->prefix, what);
                return 0;
            }
            wf_say("%s%s: the alien cache's copy %s is damaged: ignored", m->prefix, what, path);
        }
    }
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s/tmp/object.%d.XXXXXX", wf_cache, (int)getpid());
    int in = mkostemp(tmp, O_CLOEXEC);
    if (in < 0)
        return errno;
    unlink(tmp);
    int rc = EIO;
    for (int k = 0; k < m->nmirrors; k++) {
        int i = mirror_at(m, k);
        char rel[80], url[WF_URL_MAX + 80];
        snprintf(rel, sizeof rel, "/data/%.2s/%s", hash, hash + 2);
        wf_url_for(m, i, rel, url, sizeof url);
        /* zlib's worst case for `limit` bytes is a little more than limit (compressBound) */
        int e = wf_fetch_via(m, url, in, limit + limit / 1000 + 1024);
        if (e == EFBIG) {
            wf_say("%s%s: %s sent more than the object can be: refused", m->prefix, what, m->mirror[i]);
            e = EIO;
        }
        if (!e && (e = from_compressed(in, hash, limit, out, size)) != 0) {
            wf_say("%s%s: %s sent object %.16s... that is corrupt, truncated or not what its name says: refused",
                   m->prefix, what, m->mirror[i], hash);
            e = EIO;
        }
        if (!e) {
            rc = 0;
            if (wf_alien[0])
                alien_store(in, hash);
            break;
        }
        rc = e;
        if (k + 1 < m->nmirrors)
            wf_say("%s%s: trying mirror %s", m->prefix, what, m->mirror[mirror_at(m, k + 1)]);
    }
    close(in);
    if (rc == ENOENT || rc == EACCES || rc == EPERM || rc == EISDIR) {
        wf_say("%s%s: object %.16s... is named by a signed catalog but no mirror serves it (%s)", m->prefix, what, hash,
               strerror(rc));
        rc = EIO;
    } else if (rc && rc != EIO)
        wf_say("%s%s: no mirror could send it (%s)", m->prefix, what, strerror(rc));
    return rc;
}

/* The checked catalog `hash` as a file: CACHE/catalogs/<hash>, fetched once. */
static int get_catalog(struct wf_mount *m, const char *hash, const char *what, char *path, size_t size)
{
    char dir[WF_ROOT_MAX + 16];
    snprintf(dir, sizeof dir, "%s/catalogs", wf_cache);
    if ((size_t)snprintf(path, size, "%s/%s", dir, hash) >= size)
        return ENAMETOOLONG;
    if (access(path, F_OK) == 0)
        return 0;
    (void)mkdir(dir, 0700);
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s/.new.%d.XXXXXX", dir, (int)getpid());
    int fd = mkostemp(tmp, O_CLOEXEC);
    if (fd < 0)
        return errno;
    long long got;
    double t0 = gass_now();
    int rc = get_object(m, hash, CATALOG_MAX, fd, &got, what);
    close(fd);
    if (!rc && rename(tmp, path) < 0)
        rc = errno;
    if (rc)
        unlink(tmp);
    else
        wf_dbg("%s%s: catalog %.12s loaded (%lld bytes, %.3f s)", m->prefix, what, hash, got, gass_now() - t0);
    return rc;
}

/* ------------------------------------------------------------------ building the skeleton */

/* "/a/b" below a catalog's root: plain names only, so nothing is ever made outside `base`. */
static int plain_rel(const char *rel)
{
    if (rel[0] != '/' || strlen(rel) >= PATH_MAX - 512)
        return 0;
    for (const char *p = rel; *p == '/';) {
        const char *e = p + 1 + strcspn(p + 1, "/");
        size_t n = (size_t)(e - p - 1);
        if (n == 0 || n > NAME_MAX || (n == 1 && p[1] == '.') || (n == 2 && p[1] == '.' && p[2] == '.'))
            return 0;
        p = e;
    }
    return 1;
}

static int set_times(const char *path, long long sec, long long nsec, int flags)
{
    struct timespec ts[2] = {{(time_t)sec, nsec}, {(time_t)sec, nsec}};
    return utimensat(AT_FDCWD, path, ts, flags);
}

static const char *check_row(const char *type, long long mode, long long size, long long nsec, const char *hash,
                             const char *target, const char *nested)
{
    if (!type || strlen(type) != 1 || !strchr("DFL", type[0]))
        return "unknown entry type";
    if (mode < 0 || mode > 0177777 || size < 0 || nsec < 0 || nsec > 999999999)
        return "mode, size or time out of range";
    if (type[0] == 'D' && (!S_ISDIR(mode) || (nested && !is_hash(nested))))
        return "bad directory entry";
    if (type[0] == 'F' && (!S_ISREG(mode) || !is_hash(hash) || (size == 0 && strcmp(hash, EMPTY_SHA256) != 0)))
        return "bad file entry";
    if (type[0] == 'L' && (!S_ISLNK(mode) || !target || !*target || strlen(target) >= PATH_MAX))
        return "bad symlink entry";
    return NULL;
}

/* The entries of catalog `db` (rooted at repository path `croot`) under directory `base`, which
 * this makes.  Nested catalogs it names are left as empty directories and listed in `nested`. */
/* Where symlink `link` (a repository path) with `target` leads, as a repository path, lexically;
 * 0 if it stays in the repository. */
static int link_goal(const char *prefix, const char *link, const char *target, char *out, size_t size)
{
    char joined[2 * PATH_MAX];
    size_t plen = strlen(prefix);
    if (target[0] == '/') {
        if (strncmp(target, prefix, plen) != 0 || (target[plen] != '/' && target[plen] != '\0'))
            return -1;
        snprintf(joined, sizeof joined, "%s", target + plen);
    } else
        snprintf(joined, sizeof joined, "%.*s/%s", (int)(strrchr(link, '/') - link), link, target);
    size_t len = 0;
    for (const char *p = joined; *p;) {
        while (*p == '/')
            p++;
        const char *e = p + strcspn(p, "/");
        size_t n = (size_t)(e - p);
        if (n == 2 && p[0] == '.' && p[1] == '.') {
            if (len == 0)
                return -1; /* above the repository's root */
            while (len > 0 && out[--len] != '/')
                ;
        } else if (n && !(n == 1 && p[0] == '.')) {
            if (len + n + 2 > size)
                return -1;
            out[len++] = '/';
            memcpy(out + len, p, n);
            len += n;
        }
        p = e;
    }
    out[len] = '\0';
    return 0;
}

static int build(const char *prefix, const char *db, const char *hash, const char *croot, const char *base, int nested)
{
    struct wf_query q;
    int rc = wf_query_open(&q, db,
                           "SELECT path, type, mode, size, mtime, mtime_ns, hash, target, nested FROM entries ORDER BY path",
                           NULL);
    if (rc)
        return rc;
    size_t clen = strlen(croot);
    const char *why = NULL;
    int rows = 0, got;
    char full[PATH_MAX];
    while ((got = wf_query_next(&q)) == 1) {
        const char *path = wf_query_text(&q, 0), *type = wf_query_text(&q, 1);
        long long mode = wf_query_int(&q, 2), size = wf_query_int(&q, 3), sec = wf_query_int(&q, 4),
                  nsec = wf_query_int(&q, 5);
        const char *fhash = wf_query_text(&q, 6), *target = wf_query_text(&q, 7), *sub = wf_query_text(&q, 8);
        if (!path || (why = check_row(type, mode, size, nsec, fhash, target, sub)) != NULL)
            break;
        if (rows++ == 0) {
            if (strcmp(path, croot) != 0 || type[0] != 'D') {
                why = "its first entry is not its root directory";
                break;
            }
            if (mkdir(base, 0700) < 0)
                goto fail;
            continue;
        }
        if (strncmp(path, croot, clen) != 0 || !plain_rel(path + clen)) {
            why = "an entry outside its subtree or with an unusable name";
            break;
        }
        snprintf(full, sizeof full, "%s%s", base, path + clen);
        if (type[0] == 'D') {
            if (mkdir(full, 0700) < 0)
                goto fail;
            if (sub) {
                char line[PATH_MAX + 80];
                int n = snprintf(line, sizeof line, "N %s %s\n", sub, path);
                if (write(nested, line, (size_t)n) != n)
                    goto fail;
            }
        } else if (type[0] == 'L') {
            if (symlink(target, full) < 0 || set_times(full, sec, nsec, AT_SYMLINK_NOFOLLOW) < 0)
                goto fail;
            /* the kernel follows it in the skeleton: its goal's subtree must be there too ("W") */
            char goal[PATH_MAX], line[PATH_MAX + 8];
            if (link_goal(prefix, path, target, goal, sizeof goal) == 0 &&
                (strncmp(goal, croot, clen) != 0 || (goal[clen] != '/' && goal[clen] != '\0'))) {
                int n = snprintf(line, sizeof line, "W %s\n", goal);
                if (n > 0 && n < (int)sizeof line && write(nested, line, (size_t)n) != n)
                    goto fail;
            }
        } else {
            /* a sparse placeholder: size and times right, no blocks until fetched */
            int fd = open(full, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
            if (fd < 0)
                goto fail;
            struct timespec ts[2] = {{(time_t)sec, nsec}, {(time_t)sec, nsec}};
            int bad = ftruncate(fd, (off_t)size) < 0 || fchmod(fd, (mode_t)(mode & 07777)) < 0 || futimens(fd, ts) < 0;
            close(fd);
            if (bad)
                goto fail;
        }
    }
    if (!why && got < 0)
        why = "unreadable";
    if (!why && rows == 0)
        why = "empty";
    wf_query_close(&q);
    if (why) {
        wf_say("catalog %.16s... (%s): %s: refused", hash, *croot ? croot : "/", why);
        return EIO;
    }
    /* directories last, deepest first: their modes may forbid what was made inside them */
    rc = wf_query_open(&q, db, "SELECT path, mode, mtime, mtime_ns FROM entries WHERE type = 'D' ORDER BY path DESC",
                       NULL);
    if (rc)
        return rc;
    while ((got = wf_query_next(&q)) == 1) {
        const char *path = wf_query_text(&q, 0);
        snprintf(full, sizeof full, "%s%s", base, path + clen);
        if (chmod(full, (mode_t)(wf_query_int(&q, 1) & 07777)) < 0 ||
            set_times(full, wf_query_int(&q, 2), wf_query_int(&q, 3), 0) < 0)
            goto fail;
    }
    wf_query_close(&q);
    return got < 0 ? EIO : 0;
fail:
    rc = errno ? errno : EIO;
    wf_query_close(&q);
    if (rc == ENOENT || rc == EEXIST || rc == ENOTDIR) {
        /* an entry without its directory, or one twice: the catalog, not the cache, is wrong */
        wf_say("catalog %.16s... (%s): entries that do not make a tree (%s): refused", hash, *croot ? croot : "/",
               strerror(rc));
        return EIO;
    }
    wf_say("cannot build %s: %s", base, strerror(rc));
    return rc;
}

int wf_repo_install(struct wf_mount *m, const char *root)
{
    char tree[PATH_MAX], work[WF_ROOT_MAX + 100], base[PATH_MAX], nestp[PATH_MAX], db[PATH_MAX];
    int lk = wf_lock_tree(root, tree);
    if (lk < 0)
        return errno;
    int rc = 0;
    if (access(tree, F_OK) == 0)
        goto done;
    rc = get_catalog(m, root, "", db, sizeof db);
    if (rc)
        goto done;
    snprintf(work, sizeof work, "%s/trees/%s.tmp-%d", wf_cache, root, (int)getpid());
    snprintf(base, sizeof base, "%s/root", work);
    snprintf(nestp, sizeof nestp, "%s/nested", work);
    remove_tree(work);
    if (mkdir(work, 0700) < 0) {
        rc = errno;
        goto done;
    }
    int nf = open(nestp, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    rc = nf < 0 ? errno : build(m->prefix, db, root, "", base, nf);
    if (nf >= 0)
        close(nf);
    if (!rc && rename(work, tree) < 0)
        rc = errno;
    if (rc)
        remove_tree(work);
done:
    close(lk);
    return rc;
}

/* ------------------------------------------------------------------ nested catalogs */

static struct wf_nested *find_nested(struct wf_mount *m, const char *path)
{
    for (int i = 0; i < m->nnested; i++)
        if (strcmp(m->nested[i].path, path) == 0)
            return &m->nested[i];
    return NULL;
}

/* Read TREE/nested into this process's view (again: other processes append to it). */
static int attach_locked(struct wf_mount *m)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/nested", m->tree);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? 0 : errno;
    struct stat st;
    char *text = NULL;
    int rc = 0;
    if (fstat(fd, &st) < 0 || !(text = malloc((size_t)st.st_size + 1)) ||
        pread(fd, text, (size_t)st.st_size, 0) != st.st_size) {
        rc = errno ? errno : EIO;
        goto out;
    }
    text[st.st_size] = '\0';
    /* the wants are read again whole (the nested catalogs are merged by path) */
    for (int i = 0; i < m->nwants; i++)
        free(m->wants[i]);
    m->nwants = 0;
    for (char *line = text, *nl; (nl = strchr(line, '\n')) != NULL; line = nl + 1) {
        *nl = '\0'; /* a line still being written has no newline yet: read it next time */
        if (line[0] == 'N' && line[1] == ' ' && strlen(line) > 67 && line[66] == ' ') {
            line[66] = '\0';
            if (!is_hash(line + 2) || find_nested(m, line + 67))
                continue;
            if (m->nnested == m->nested_cap) {
                int cap = m->nested_cap ? 2 * m->nested_cap : 16;
                struct wf_nested *n = realloc(m->nested, (size_t)cap * sizeof *n);
                if (!n) {
                    rc = ENOMEM;
                    goto out;
                }
                m->nested = n;
                m->nested_cap = cap;
            }
            struct wf_nested *n = &m->nested[m->nnested];
            if (!(n->path = strdup(line + 67))) {
                rc = ENOMEM;
                goto out;
            }
            n->len = strlen(n->path);
            memcpy(n->hash, line + 2, 65);
            n->loaded = 0;
            m->nnested++;
        } else if (line[0] == 'W' && line[1] == ' ' && line[2] == '/') {
            char **w = realloc(m->wants, (size_t)(m->nwants + 1) * sizeof *w);
            if (!w || !(w[m->nwants] = strdup(line + 2))) {
                if (w)
                    m->wants = w;
                rc = ENOMEM;
                goto out;
            }
            m->wants = w;
            m->nwants++;
        } else if (line[0] == 'L' && line[1] == ' ') {
            struct wf_nested *n = find_nested(m, line + 2);
            if (n)
                n->loaded = 1;
        }
    }
out:
    free(text);
    close(fd);
    int pending = 0;
    for (int i = 0; i < m->nnested; i++)
        pending += !m->nested[i].loaded;
    __atomic_add_fetch(&wf_repo_pending, pending - m->pending, __ATOMIC_RELAXED);
    __atomic_store_n(&m->pending, pending, __ATOMIC_RELEASE);
    return rc;
}

int wf_repo_attach(struct wf_mount *m)
{
    pthread_mutex_lock(&repo_lock);
    read_order(m);
    int rc = attach_locked(m);
    pthread_mutex_unlock(&repo_lock);
    return rc;
}

/* Put nested catalog n's subtree into the skeleton: built aside, renamed over its empty directory. */
static int load_nested(struct wf_mount *m, struct wf_nested *n)
{
    /* not fetch.lock: a fill holds that while it looks the catalogs up (under repo_lock) */
    char lockp[PATH_MAX];
    snprintf(lockp, sizeof lockp, "%s/catalog.lock", m->tree);
    int lk = wf_lock_path(lockp);
    if (lk < 0)
        return errno;
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s", n->path); /* attach may move the array */
    int rc = attach_locked(m);
    n = find_nested(m, path);
    if (rc || !n || n->loaded)
        goto done;
    char db[PATH_MAX], work[WF_ROOT_MAX + 32], base[PATH_MAX], nestp[PATH_MAX], dest[PATH_MAX], dir[PATH_MAX];
    rc = get_catalog(m, n->hash, path, db, sizeof db);
    if (rc)
        goto done;
    snprintf(work, sizeof work, "%s/nest.tmp-%d", m->tree, (int)getpid());
    snprintf(base, sizeof base, "%s/d", work);
    snprintf(nestp, sizeof nestp, "%s/nested", work);
    if ((size_t)snprintf(dest, sizeof dest, "%s%s", m->root, path) >= sizeof dest) {
        rc = ENAMETOOLONG;
        goto done;
    }
    remove_tree(work);
    if (mkdir(work, 0700) < 0) {
        rc = errno;
        goto done;
    }
    int nf = open(nestp, O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    rc = nf < 0 ? errno : build(m->prefix, db, n->hash, path, base, nf);
    if (!rc) {
        /* the parent may be read-only, and the rename changes its times: both put back */
        snprintf(dir, sizeof dir, "%s", dest);
        *strrchr(dir, '/') = '\0';
        struct stat ds;
        int have = stat(dir, &ds) == 0;
        int opened = have && !(ds.st_mode & S_IWUSR) && chmod(dir, ds.st_mode | S_IWUSR | S_IXUSR) == 0;
        if (rename(base, dest) < 0)
            rc = errno;
        if (opened)
            chmod(dir, ds.st_mode & 07777);
        if (have) {
            struct timespec dt[2] = {ds.st_atim, ds.st_mtim};
            utimensat(AT_FDCWD, dir, dt, 0);
        }
    }
    if (!rc) {
        /* what it nests, then that it is loaded: one append, so readers see both or neither */
        char tail[PATH_MAX + 8];
        int tl = snprintf(tail, sizeof tail, "L %s\n", path);
        if (write(nf, tail, (size_t)tl) != tl)
            rc = errno ? errno : EIO;
        struct stat ns;
        char *all = NULL;
        if (!rc && fstat(nf, &ns) == 0 && (all = malloc((size_t)ns.st_size)) != NULL &&
            pread(nf, all, (size_t)ns.st_size, 0) == ns.st_size) {
            char treep[PATH_MAX];
            snprintf(treep, sizeof treep, "%s/nested", m->tree);
            int tf = open(treep, O_WRONLY | O_APPEND | O_CLOEXEC);
            if (tf < 0 || write(tf, all, (size_t)ns.st_size) != ns.st_size)
                rc = errno ? errno : EIO;
            if (tf >= 0)
                close(tf);
        } else if (!rc)
            rc = errno ? errno : ENOMEM;
        free(all);
    }
    if (nf >= 0)
        close(nf);
    remove_tree(work);
    if (!rc)
        rc = attach_locked(m);
    else
        wf_say("%s%s: the subtree's catalog could not be loaded (%s)", m->prefix, path, strerror(rc));
done:
    close(lk);
    return rc;
}

static int covers(const struct wf_nested *n, const char *rest)
{
    return strncmp(rest, n->path, n->len) == 0 && (rest[n->len] == '\0' || rest[n->len] == '/');
}

int wf_repo_enter(struct wf_mount *m, const char *rest)
{
    pthread_mutex_lock(&repo_lock);
    int rc = 0;
    for (;;) {
        struct wf_nested *want = NULL;
        for (int i = 0; i < m->nnested && !want; i++)
            if (!m->nested[i].loaded && covers(&m->nested[i], rest))
                want = &m->nested[i];
        /* and once per process, what symlinks in loaded subtrees point into */
        while (!want && m->wants_done < m->nwants) {
            for (int i = 0; i < m->nnested && !want; i++)
                if (!m->nested[i].loaded && covers(&m->nested[i], m->wants[m->wants_done]))
                    want = &m->nested[i];
            if (!want) /* kept while a deeper subtree on its way may still show up */
                m->wants_done++;
        }
        if (!want || (rc = load_nested(m, want)) != 0)
            break;
    }
    pthread_mutex_unlock(&repo_lock);
    return rc;
}

/* ------------------------------------------------------------------ files */

int wf_repo_fill(struct wf_mount *m, const char *rel, int fd, struct wf_file *f)
{
    /* the catalog that lists rel: the deepest nested one above it, else the root */
    const char *hash = strrchr(m->tree, '/') + 1;
    size_t best = 0;
    pthread_mutex_lock(&repo_lock);
    for (int i = 0; i < m->nnested; i++)
        if (m->nested[i].loaded && m->nested[i].len > best && covers(&m->nested[i], rel)) {
            best = m->nested[i].len;
            hash = m->nested[i].hash;
        }
    char chash[65];
    snprintf(chash, sizeof chash, "%s", hash);
    pthread_mutex_unlock(&repo_lock);
    char db[PATH_MAX];
    int rc = get_catalog(m, chash, rel, db, sizeof db);
    if (rc)
        return rc;
    struct wf_query q;
    rc = wf_query_open(&q, db, "SELECT hash, size, mode, mtime, mtime_ns FROM entries WHERE path = ?1 AND type = 'F'", rel);
    if (rc)
        return rc;
    char fhash[65] = "";
    if (wf_query_next(&q) == 1) {
        const char *h = wf_query_text(&q, 0);
        if (is_hash(h))
            memcpy(fhash, h, 65);
        f->size = wf_query_int(&q, 1);
        f->mode = wf_query_int(&q, 2);
        f->mtime.tv_sec = (time_t)wf_query_int(&q, 3);
        f->mtime.tv_nsec = wf_query_int(&q, 4);
    }
    wf_query_close(&q);
    if (!fhash[0]) {
        wf_say("%s%s: not in its catalog %.16s...", m->prefix, rel, chash);
        return EIO;
    }
    long long got;
    rc = get_object(m, fhash, f->size, fd, &got, rel);
    if (!rc && got != f->size) {
        wf_say("%s%s: object %.16s... has %lld bytes, the catalog says %lld: refused", m->prefix, rel, fhash, got,
               f->size);
        rc = EIO;
    }
    return rc;
}
