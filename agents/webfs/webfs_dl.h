/*
 * webfs_dl.h -- SHA-256 and Ed25519 (libcrypto), inflate (zlib) and read-only SQLite queries
 * (libsqlite3) for Bypass repositories; each library is dlopen'd on first use (webfs_dl.c).
 * Functions return 0 or an errno (ENOSYS when the library cannot be loaded, said on stderr).
 */
#ifndef BYPASS_WEBFS_DL_H
#define BYPASS_WEBFS_DL_H

#include <stddef.h>

struct wf_sha256 {
    void *ctx;
};
int wf_sha256_init(struct wf_sha256 *s);
void wf_sha256_update(struct wf_sha256 *s, const void *data, size_t n);
int wf_sha256_hex(struct wf_sha256 *s, char out[65]); /* and drops the context */
void wf_sha256_drop(struct wf_sha256 *s);

/* 1 the signature is good, 0 it is not, -1 libcrypto is not usable. */
int wf_ed25519_verify(const unsigned char key[32], const void *msg, size_t n, const unsigned char sig[64]);

/* Inflate the zlib stream in `in` (read from offset 0) into `out` (-1: nowhere), at most `limit`
 * bytes; the SHA-256 of what came out and its size.  EIO for a corrupt, truncated or too long
 * stream or bytes after its end. */
int wf_inflate_fd(int in, int out, long long limit, char hex[65], long long *size);

/* One read-only query on an immutable SQLite file, with at most one text parameter. */
struct wf_query {
    void *db, *st;
};
int wf_query_open(struct wf_query *q, const char *db, const char *sql, const char *arg);
int wf_query_next(struct wf_query *q); /* 1 a row, 0 done, -1 an error */
const char *wf_query_text(struct wf_query *q, int col); /* NULL for SQL NULL */
long long wf_query_int(struct wf_query *q, int col);
void wf_query_close(struct wf_query *q);

#endif
