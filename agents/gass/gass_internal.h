/*
 * gass_internal.h -- what the gass support files share with each other (not part of the
 * interface the spec's actions use; that is gass.h).
 */
#ifndef BYPASS_GASS_INTERNAL_H
#define BYPASS_GASS_INTERNAL_H

#include <limits.h>
#include <stddef.h>
#include <sys/types.h>
#include <time.h>

#include "gass.h"

#define GASS_URL_MAX 4096

/* Descriptors from gass_open are reported by fstat with this st_dev and an inode number derived
 * from the URL, the same values gass_stat gives the URL itself. */
#define GASS_FAKE_DEV_MAJOR 0x6761u /* "ga" */
#define GASS_FAKE_DEV_MINOR 0x7373u /* "ss" */

/* A URL split into the forms gass needs. Credentials only ever live in `full`, which goes to
 * libcurl and nowhere else. */
struct gass_url {
    int https;
    int has_userinfo;            /* user:pass@ given (maybe empty) */
    char full[GASS_URL_MAX];     /* what libcurl gets: the text minus any #fragment */
    char redacted[GASS_URL_MAX]; /* scheme://host[:port]/path?query without user:pass@ */
    char logname[GASS_URL_MAX];  /* redacted, query elided (signed URLs carry tokens there) */
    char user[128];              /* user name only: part of the cache key, never a path */
    char key[17];                /* 16 hex digits naming the URL's cache files */
    unsigned long long ino;      /* synthetic inode number for stat */
};

/* gass_url.c */
int gass_url_parse(const char *text, struct gass_url *u); /* 0, or -1 with EINVAL/ENAMETOOLONG */
unsigned long long gass_hash64(const void *data, size_t len, unsigned long long seed);
const char *gass_env(const char *name);
long long gass_env_number(const char *name, long long fallback); /* K/M/G suffixes allowed */
int gass_debug(void);
void gass_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* A debug line of one subsystem: into `bypass run -d http,cache -o FILE` when that subsystem is
 * on, else to stderr under BYPASS_GASS_DEBUG=1, else nowhere. */
#define GASS_DEBUG_CACHE (1u << 5)     /* BYPASS_DEBUG_CACHE of bypass_runtime.h */
#define GASS_DEBUG_HTTP (1u << 6)      /* BYPASS_DEBUG_HTTP */
void gass_dlog(unsigned subsystem, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int gass_status_errno(long status);
double gass_now(void); /* CLOCK_MONOTONIC seconds, for progress and rates */
time_t gass_http_date(const char *text); /* an HTTP date as Unix time, -1 if unreadable */
/* A Content-Length value: 1*DIGIT with optional surrounding blanks and nothing else, no overflow.
 * Its value, or -1 if it is not one. */
long long gass_parse_length(const char *text, size_t len);

#define GASS_DEFAULT_CACHE_MAX (4LL << 30)
/* A response whose header block is larger than this is refused (EIO) by both paths. */
#define GASS_MAX_HEADER_BYTES (64 * 1024)

/* The bounds of one request, taken from the environment when it starts. Both paths (gass_quick.c
 * and libcurl) work against the same deadline, so a request handed from one to the other never
 * gets the time twice. */
struct gass_limits {
    double started;       /* gass_now() at the start */
    double deadline;      /* the whole request is over by then: BYPASS_GASS_TIMEOUT */
    double connect_s;     /* BYPASS_GASS_CONNECT_TIMEOUT */
    double read_s;        /* BYPASS_GASS_READ_TIMEOUT: the low-speed window */
    long long low_speed;  /* BYPASS_GASS_LOW_SPEED: fewer bytes/s than this over read_s fails */
    long long max_size;   /* BYPASS_GASS_MAX_SIZE: largest body taken (default: the cache size) */
};
void gass_limits_init(struct gass_limits *l);

/* A progress line on stderr for a download that takes longer than a second, when stderr is a
 * terminal and BYPASS_GASS_PROGRESS is not 0 (BYPASS_GASS_DEBUG logs progress instead). */
struct gass_progress {
    double started, last;
    int shown;            /* a line is on the terminal and needs its newline at the end */
    int enabled;
};
void gass_progress_start(struct gass_progress *p, double started);
void gass_progress_update(struct gass_progress *p, const struct gass_url *u, long long done,
                          long long total);
void gass_progress_end(struct gass_progress *p);

struct gass_response;
/* gass_quick.c: 1 if the request was answered without libcurl (*rc and errno as the gass_http_*
 * functions set them), 0 if the caller must make it with libcurl. */
int gass_quick_request(const struct gass_url *u, const char *method, const char *if_none_match,
                       const char *if_modified_since, int out_fd, const struct gass_limits *l,
                       struct gass_response *r, int *rc);
/* 1 if requests for `u` go through a proxy (BYPASS_GASS_PROXY, http_proxy, all_proxy), taking
 * no_proxy into account. */
int gass_proxied(const struct gass_url *u);
/* This thread's proxy for its next requests, set by a caller that chooses proxies itself (webfs,
 * per repository): NULL the environment's as above, "" none, else the proxy's URL. */
extern __thread const char *gass_proxy_override;
/* This thread's bound on the next bodies, below BYPASS_GASS_MAX_SIZE (0: none): a caller that
 * knows how long an answer can be (webfs: a file's size in a catalog) refuses longer ones early. */
extern __thread long long gass_max_size_override;

/* gass_http.c */
struct gass_response {
    long status;              /* final HTTP status after redirects, 0 if none */
    long long length;         /* Content-Length, -1 if unknown */
    long long mtime;          /* Last-Modified as a Unix time, -1 if unknown */
    char etag[256];           /* ETag of the final response, "" if none */
    char last_modified[128];  /* the Last-Modified header text, for If-Modified-Since */
    char error[320];          /* what went wrong in transport, "" if nothing (or an HTTP status) */
};
/* Each returns 0 for a 2xx (or 304 for a conditional GET) and -1 with errno otherwise; `r` is
 * filled in either case as far as the exchange went. */
int gass_http_head(const struct gass_url *u, struct gass_response *r);
int gass_http_get(const struct gass_url *u, int out_fd, const char *if_none_match,
                  const char *if_modified_since, struct gass_response *r);
int gass_http_put(const struct gass_url *u, int in_fd, long long size, struct gass_response *r);
int gass_http_delete(const struct gass_url *u, struct gass_response *r);
int gass_http_busy(void); /* nonzero while this thread is inside one of the above */

/* gass_cache.c */
/* The cache root is at most this long, so "<root>/data/<key>.meta" and the like never truncate. */
#define GASS_ROOT_MAX (PATH_MAX - 128)
int gass_cache_ensure_dirs(char *root, size_t size); /* root of the cache, created 0700 */
/* Make the cache copy of `u` current (one download even with concurrent processes) and open it
 * with O_RDONLY | extra_flags. Fills *r with what the server said (status 200 or 304; or 0 when
 * the entry was trusted under BYPASS_GASS_MAX_AGE) and `data_path` with the cached file. */
int gass_cache_open(const struct gass_url *u, int extra_flags, struct gass_response *r,
                    char *data_path, size_t path_size);
void gass_cache_forget(const struct gass_url *u);  /* after PUT/DELETE: next open refetches */
int gass_cache_stage_path(char *path, size_t size); /* mkstemp in the cache's tmp dir; fd */

#endif
