/*
 * webfs_dl.c -- the three libraries a Bypass repository needs, loaded with dlopen on first use:
 * libcrypto (SHA-256, Ed25519 signatures), zlib (objects are compressed), libsqlite3 (catalogs).
 *
 * Why dlopen: a program that never mounts a Bypass repository must not pay for (or clash with)
 * these libraries, and linking them would run their constructors in every process, as gass says
 * of libcurl.  Only opaque pointers and a few documented constants of libcrypto and SQLite are
 * used, so no headers are needed for them; zlib's z_stream is a structure we must fill, so its
 * header is included (zlib1g-dev) -- its functions are still reached through dlsym only.
 */
#define _GNU_SOURCE
#include "webfs_dl.h"

#include "bypass_runtime.h"

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#define EVP_PKEY_ED25519_ID 1087   /* NID_ED25519 */
#define SQLITE_OK_ 0
#define SQLITE_ROW_ 100
#define SQLITE_DONE_ 101
#define SQLITE_OPEN_READONLY_ 0x00000001
#define SQLITE_OPEN_URI_ 0x00000040
#define SQLITE_NULL_ 5

static void *dl_open_first(const char *const *names, const char *what)
{
    const char *why = "";
    for (int i = 0; names[i]; i++) {
        void *h = dlopen(names[i], RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE);
        if (h)
            return h;
        why = dlerror();
    }
    bypass_log("cannot load %s (%s): Bypass repositories cannot be read", what, why ? why : "");
    return NULL;
}

#define RESOLVE(lib, table, field, symbol, name)                               \
    do {                                                                       \
        *(void **)&table.field = dlsym(lib, symbol);                           \
        if (!table.field) {                                                    \
            bypass_log("%s lacks %s: Bypass repositories cannot be read", name, symbol); \
            return;                                                            \
        }                                                                      \
    } while (0)

/* ------------------------------------------------------------------ libcrypto */

static struct {
    void *(*md_ctx_new)(void);
    void (*md_ctx_free)(void *);
    const void *(*sha256)(void);
    int (*digest_init)(void *, const void *, void *);
    int (*digest_update)(void *, const void *, size_t);
    int (*digest_final)(void *, unsigned char *, unsigned int *);
    void *(*pkey_new_raw_public)(int, void *, const unsigned char *, size_t);
    void (*pkey_free)(void *);
    int (*verify_init)(void *, void **, const void *, void *, void *);
    int (*verify)(void *, const unsigned char *, size_t, const unsigned char *, size_t);
} evp;
static pthread_once_t crypto_once = PTHREAD_ONCE_INIT;
static int crypto_ready;

static void load_crypto(void)
{
    static const char *const names[] = {"libcrypto.so.3", "libcrypto.so", NULL};
    void *lib = dl_open_first(names, "libcrypto");
    if (!lib)
        return;
    RESOLVE(lib, evp, md_ctx_new, "EVP_MD_CTX_new", "libcrypto");
    RESOLVE(lib, evp, md_ctx_free, "EVP_MD_CTX_free", "libcrypto");
    RESOLVE(lib, evp, sha256, "EVP_sha256", "libcrypto");
    RESOLVE(lib, evp, digest_init, "EVP_DigestInit_ex", "libcrypto");
    RESOLVE(lib, evp, digest_update, "EVP_DigestUpdate", "libcrypto");
    RESOLVE(lib, evp, digest_final, "EVP_DigestFinal_ex", "libcrypto");
    RESOLVE(lib, evp, pkey_new_raw_public, "EVP_PKEY_new_raw_public_key", "libcrypto");
    RESOLVE(lib, evp, pkey_free, "EVP_PKEY_free", "libcrypto");
    RESOLVE(lib, evp, verify_init, "EVP_DigestVerifyInit", "libcrypto");
    RESOLVE(lib, evp, verify, "EVP_DigestVerify", "libcrypto");
    crypto_ready = 1;
}

static int crypto(void)
{
    pthread_once(&crypto_once, load_crypto);
    return crypto_ready;
}

int wf_sha256_init(struct wf_sha256 *s)
{
    s->ctx = NULL;
    if (!crypto())
        return ENOSYS;
    s->ctx = evp.md_ctx_new();
    if (!s->ctx || evp.digest_init(s->ctx, evp.sha256(), NULL) != 1) {
        wf_sha256_drop(s);
        return ENOMEM;
    }
    return 0;
}

void wf_sha256_update(struct wf_sha256 *s, const void *data, size_t n)
{
    if (s->ctx && evp.digest_update(s->ctx, data, n) != 1)
        wf_sha256_drop(s); /* the final step then fails: never a digest of part of the data */
}

int wf_sha256_hex(struct wf_sha256 *s, char out[65])
{
    unsigned char md[32];
    unsigned int n = 0;
    int ok = s->ctx && evp.digest_final(s->ctx, md, &n) == 1 && n == 32;
    wf_sha256_drop(s);
    if (!ok)
        return EIO;
    for (int i = 0; i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
    return 0;
}

void wf_sha256_drop(struct wf_sha256 *s)
{
    if (s->ctx)
        evp.md_ctx_free(s->ctx);
    s->ctx = NULL;
}

int wf_ed25519_verify(const unsigned char key[32], const void *msg, size_t n, const unsigned char sig[64])
{
    if (!crypto())
        return -1;
    void *pkey = evp.pkey_new_raw_public(EVP_PKEY_ED25519_ID, NULL, key, 32);
    void *ctx = evp.md_ctx_new();
    int ok = pkey && ctx && evp.verify_init(ctx, NULL, NULL, NULL, pkey) == 1 &&
             evp.verify(ctx, sig, 64, msg, n) == 1;
    if (ctx)
        evp.md_ctx_free(ctx);
    if (pkey)
        evp.pkey_free(pkey);
    if (!pkey || !ctx)
        return -1;
    return ok;
}

/* ------------------------------------------------------------------ zlib */

static struct {
    int (*init)(z_streamp, const char *, int);
    int (*inflate)(z_streamp, int);
    int (*end)(z_streamp);
} zl;
static pthread_once_t zlib_once = PTHREAD_ONCE_INIT;
static int zlib_ready;

static void load_zlib(void)
{
    static const char *const names[] = {"libz.so.1", "libz.so", NULL};
    void *lib = dl_open_first(names, "zlib");
    if (!lib)
        return;
    RESOLVE(lib, zl, init, "inflateInit_", "zlib");
    RESOLVE(lib, zl, inflate, "inflate", "zlib");
    RESOLVE(lib, zl, end, "inflateEnd", "zlib");
    zlib_ready = 1;
}

static int write_all(int fd, const unsigned char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return errno;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

int wf_inflate_fd(int in, int out, long long limit, char hex[65], long long *size)
{
    pthread_once(&zlib_once, load_zlib);
    if (!zlib_ready)
        return ENOSYS;
    enum { CHUNK = 65536 };
    unsigned char *ibuf = malloc(2 * CHUNK), *obuf = ibuf + CHUNK;
    if (!ibuf)
        return ENOMEM;
    struct wf_sha256 h;
    int rc = wf_sha256_init(&h);
    if (rc) {
        free(ibuf);
        return rc;
    }
    z_stream z;
    memset(&z, 0, sizeof z);
    if (zl.init(&z, ZLIB_VERSION, (int)sizeof z) != Z_OK) {
        wf_sha256_drop(&h);
        free(ibuf);
        return ENOMEM;
    }
    long long total = 0;
    off_t at = 0;
    int zr = Z_OK;
    rc = EIO; /* until the stream ends properly: truncated or corrupt data is never accepted */
    while (zr != Z_STREAM_END) {
        ssize_t n = pread(in, ibuf, CHUNK, at);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            rc = n < 0 ? errno : EIO;
            goto out;
        }
        at += n;
        z.next_in = ibuf;
        z.avail_in = (uInt)n;
        do { /* until inflate leaves room in the output: then it has used all the input it can */
            z.next_out = obuf;
            z.avail_out = CHUNK;
            zr = zl.inflate(&z, Z_NO_FLUSH);
            if (zr != Z_OK && zr != Z_STREAM_END && zr != Z_BUF_ERROR)
                goto out;
            size_t got = CHUNK - z.avail_out;
            total += (long long)got;
            if (total > limit)
                goto out; /* more than the catalog says: stop writing what a server sends */
            wf_sha256_update(&h, obuf, got);
            if (out >= 0 && (rc = write_all(out, obuf, got)) != 0)
                goto out;
            rc = EIO;
        } while (z.avail_out == 0 && zr != Z_STREAM_END);
        if (zr == Z_STREAM_END && (z.avail_in > 0 || pread(in, ibuf, 1, at) != 0))
            goto out; /* bytes after the stream's end */
    }
    rc = wf_sha256_hex(&h, hex);
    *size = total;
out:
    wf_sha256_drop(&h);
    zl.end(&z);
    free(ibuf);
    return rc;
}

/* ------------------------------------------------------------------ libsqlite3 */

static struct {
    int (*open)(const char *, void **, int, const char *);
    int (*close)(void *);
    int (*prepare)(void *, const char *, int, void **, const char **);
    int (*bind_text)(void *, int, const char *, int, void (*)(void *));
    int (*step)(void *);
    int (*finalize)(void *);
    const unsigned char *(*column_text)(void *, int);
    long long (*column_int64)(void *, int);
    int (*column_type)(void *, int);
    const char *(*errmsg)(void *);
} sq;
static pthread_once_t sqlite_once = PTHREAD_ONCE_INIT;
static int sqlite_ready;

static void load_sqlite(void)
{
    static const char *const names[] = {"libsqlite3.so.0", "libsqlite3.so", NULL};
    void *lib = dl_open_first(names, "libsqlite3");
    if (!lib)
        return;
    RESOLVE(lib, sq, open, "sqlite3_open_v2", "libsqlite3");
    RESOLVE(lib, sq, close, "sqlite3_close", "libsqlite3");
    RESOLVE(lib, sq, prepare, "sqlite3_prepare_v2", "libsqlite3");
    RESOLVE(lib, sq, bind_text, "sqlite3_bind_text", "libsqlite3");
    RESOLVE(lib, sq, step, "sqlite3_step", "libsqlite3");
    RESOLVE(lib, sq, finalize, "sqlite3_finalize", "libsqlite3");
    RESOLVE(lib, sq, column_text, "sqlite3_column_text", "libsqlite3");
    RESOLVE(lib, sq, column_int64, "sqlite3_column_int64", "libsqlite3");
    RESOLVE(lib, sq, column_type, "sqlite3_column_type", "libsqlite3");
    RESOLVE(lib, sq, errmsg, "sqlite3_errmsg", "libsqlite3");
    sqlite_ready = 1;
}

int wf_query_open(struct wf_query *q, const char *db, const char *sql, const char *arg)
{
    memset(q, 0, sizeof q[0]);
    pthread_once(&sqlite_once, load_sqlite);
    if (!sqlite_ready)
        return ENOSYS;
    /* immutable: a checked catalog never changes, so SQLite takes no lock and writes nothing */
    char uri[4200];
    if ((size_t)snprintf(uri, sizeof uri, "file:%s?immutable=1", db) >= sizeof uri)
        return ENAMETOOLONG;
    if (sq.open(uri, &q->db, SQLITE_OPEN_READONLY_ | SQLITE_OPEN_URI_, NULL) != SQLITE_OK_ ||
        sq.prepare(q->db, sql, -1, &q->st, NULL) != SQLITE_OK_ ||
        (arg && sq.bind_text(q->st, 1, arg, -1, (void (*)(void *))(intptr_t)-1) != SQLITE_OK_)) {
        bypass_log("catalog %s: %s", db, q->db ? sq.errmsg(q->db) : "cannot open");
        wf_query_close(q);
        return EIO;
    }
    return 0;
}

int wf_query_next(struct wf_query *q)
{
    int r = sq.step(q->st);
    return r == SQLITE_ROW_ ? 1 : r == SQLITE_DONE_ ? 0 : -1;
}

const char *wf_query_text(struct wf_query *q, int col)
{
    return sq.column_type(q->st, col) == SQLITE_NULL_ ? NULL : (const char *)sq.column_text(q->st, col);
}

long long wf_query_int(struct wf_query *q, int col) { return sq.column_int64(q->st, col); }

void wf_query_close(struct wf_query *q)
{
    if (q->st)
        sq.finalize(q->st);
    if (q->db)
        sq.close(q->db);
    q->st = q->db = NULL;
}
