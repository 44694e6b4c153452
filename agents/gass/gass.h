/*
 * gass.h -- support library of the gass agent: URLs in place of file names.
 *
 * The gass agent's actions (agents/gass/gass.bypass) call these functions when a path
 * argument is an http:// or https:// URL; every other path goes to the next layer untouched.
 *
 *   read:   the URL is fetched into a per-user cache (validated with ETag/Last-Modified) and the
 *           program gets a real descriptor of the cached file, so read/mmap/lseek/fstat all work.
 *   write:  the program gets a descriptor of a private staging file; when the last descriptor of
 *           it is closed -- in any process: dup, fork and exec share it -- or its last holder
 *           exits (exit, _exit, _Exit), the file is sent back with PUT. An upload error is
 *           close()'s error; at exit, where nobody can be told, it is a line on stderr, the data
 *           is kept in the cache's unsent/ directory and exit status 0 becomes 1.
 *   stat:   HEAD only (size from Content-Length, mtime from Last-Modified), no body.
 *
 * Every function follows the libc convention: -1 (or NULL) with errno set on failure.
 * They may call open/read/write/stat directly: they run inside agent actions, where the
 * agent's own wrappers pass straight through to libc.
 *
 * Environment (read each time, so a test can change it between calls):
 *   BYPASS_GASS_CACHE            cache directory (default $XDG_CACHE_HOME/bypass-gass,
 *                                else $HOME/.cache/bypass-gass, else /tmp/bypass-gass-<uid>)
 *   BYPASS_GASS_CACHE_MAX        cache size limit, bytes with optional K/M/G suffix (default 4G)
 *   BYPASS_GASS_MAX_SIZE         largest body a download may have (default: BYPASS_GASS_CACHE_MAX);
 *                                a larger one is EFBIG
 *   BYPASS_GASS_MAX_AGE          seconds a validated cache entry is trusted without asking the
 *                                server again (default 0: revalidate on every open)
 *   BYPASS_GASS_CONNECT_TIMEOUT  seconds to establish a connection (default 10)
 *   BYPASS_GASS_READ_TIMEOUT     seconds (default 30): no byte for that long, a response whose
 *                                headers are not complete within it, or a transfer that moves
 *                                fewer than BYPASS_GASS_LOW_SPEED bytes/s over it, is ETIMEDOUT
 *   BYPASS_GASS_LOW_SPEED        bytes per second (default 1024), see above
 *   BYPASS_GASS_TIMEOUT          seconds one request may take in all, connect included
 *                                (default 3600); then ETIMEDOUT. Fractions are allowed in all
 *                                the timeouts. No request waits longer than these, whichever
 *                                path (gass_quick.c or libcurl) it takes.
 *   BYPASS_GASS_MAX_REDIRS       redirects followed (default 10)
 *   BYPASS_GASS_PROXY            proxy for every request (as libcurl's CURLOPT_PROXY); libcurl's
 *                                http_proxy, https_proxy, all_proxy and no_proxy apply too
 *   BYPASS_GASS_PROGRESS         0: no progress line (default: one on stderr for a download that
 *                                takes more than a second, when stderr is a terminal)
 *   BYPASS_GASS_QUICK            0: every request through libcurl (default: plain http without
 *                                libcurl where gass_quick.c can)
 *   BYPASS_GASS_INSECURE         1: do not verify TLS certificates
 *   BYPASS_GASS_DEBUG            1: log requests and transfer progress to stderr
 *   BYPASS_GASS_LIBCURL          the libcurl to dlopen (default libcurl.so.4)
 */
#ifndef BYPASS_GASS_H
#define BYPASS_GASS_H

#include <stdio.h>
#include <sys/stat.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/* 1 if `path` starts with http:// or https:// (scheme case-insensitive), else 0.
 * Cheap: called for every path the program passes to a trapped call. NULL-safe. */
int gass_is_url(const char *path);

/* Open a URL. Read-only opens return a descriptor of the cached copy; O_WRONLY/O_RDWR opens
 * return a descriptor of a staging file that is uploaded when its last descriptor is closed
 * (O_TRUNC/new files start empty, otherwise with the server's current content;
 * O_CREAT|O_EXCL fails with EEXIST if the server has the file). */
int gass_open(const char *url, int flags, mode_t mode);

/* fopen/freopen for URLs ("r", "w", "a", "r+", ... with b, e, x, m as in glibc). */
FILE *gass_fopen(const char *url, const char *mode);
FILE *gass_freopen(const char *url, const char *mode, FILE *stream);

/* stat/lstat of a URL with HEAD. The inode number is derived from the URL, and gass_fstat_fixup
 * gives descriptors opened by gass_open the same st_dev/st_ino, so programs that compare
 * stat(name) with fstat(fd) (cp does) see the same file. */
int gass_stat(const char *url, struct stat *st);
void gass_fstat_fixup(struct stat *st);
/* statx-compatible: fill only what HEAD gives; `stx` is a struct statx *. */
int gass_statx(const char *url, unsigned int mask, void *stx);
void gass_statx_fixup(void *stx);

/* access(): F_OK/R_OK by HEAD; W_OK is granted (the server decides at upload time);
 * X_OK is refused with EACCES. */
int gass_access(const char *url, int amode);

/* Closing with write-back, in two halves around the real close so that an agent action can
 * call the next layer itself:
 *     struct gass_closing c;
 *     gass_close_prepare(fd, &c);          (or gass_fclose_prepare(stream, &c))
 *     int rc = close(fd);
 *     return gass_close_finish(&c, rc);    (uses errno as close() left it)
 * finish uploads if that was the last descriptor of a write-staged URL and folds an upload
 * failure into the result (-1 with errno). Both are two loads when no URL is open for writing. */
struct gass_closing {
    int staged; /* 1: the descriptor may belong to a staged write */
    dev_t dev;
    ino_t ino;
};
void gass_close_prepare(int fd, struct gass_closing *c);
void gass_fclose_prepare(FILE *stream, struct gass_closing *c);
int gass_close_finish(const struct gass_closing *c, int rc);

/* The same, for code that is not an agent action: close()/fclose() plus write-back. */
int gass_close(int fd);
int gass_fclose(FILE *fp);

/* The process is ending: close its descriptors of staged files and upload each one no other
 * process still holds (used at exit). 0, or -1/errno when an upload failed -- its data is then
 * kept in the cache's unsent/ directory and a line says where. */
int gass_sync_all(void);
/* The same before _exit/_Exit; a failed upload turns *status 0 into 1. */
void gass_exit_uploads(int *status);
/* Before exec: staged files this process holds only through close-on-exec descriptors are
 * marked, so that the new image sends them (they are closed by the exec itself). */
void gass_before_exec(void);

/* unlink(URL) sends DELETE. rename() involving a URL fails with EXDEV, so mv falls back to
 * copy + unlink, which gass supports. */
int gass_unlink(const char *url);

/* truncate(URL, length): staged, truncated, uploaded. */
int gass_truncate(const char *url, off_t length);

/* Cache maintenance, also used by tests and the `bypass gass cache` command. */
const char *gass_cache_dir(char *buf, size_t size);
int gass_cache_clear(void);

#ifdef __cplusplus
}
#endif
#endif
