/*
 * webfs_internal.h -- what the webfs agent's own files share (webfs.c: mounts, GROW-FS, the
 * skeleton; webfs_repo.c: Bypass repositories).  Not for actions: they use webfs.h.
 */
#ifndef BYPASS_WEBFS_INTERNAL_H
#define BYPASS_WEBFS_INTERNAL_H

#include "bypass_runtime.h"

#include <limits.h>
#include <sys/types.h>
#include <time.h>

#define WF_MAX_MOUNTS 16
#define WF_MAX_MIRRORS 8
#define WF_URL_MAX 2048
#define WF_PREFIX_MAX 1024
#define WF_ROOT_MAX (PATH_MAX - 512)
#define WF_MAX_DEPTH 256
#define WF_LINE_MAX (3 * PATH_MAX)
/* make_growfs (cctools 7.x as Debian ships it) writes each mtime as Unix time minus this
 * constant; measured against touch -d @1000000000, which it lists as -199163600. */
#define WF_GROWFS_MTIME_OFFSET 1199163600LL

struct wf_mount {
    char prefix[WF_PREFIX_MAX];
    size_t plen;
    int nmirrors;
    char mirror[WF_MAX_MIRRORS][WF_URL_MAX];
    char key[17];
    int state;  /* 0 not loaded, 1 loaded, -1 failed (err) */
    int err;
    char tree[WF_ROOT_MAX];  /* <cache>/trees/<catalog sha1, or root catalog sha256> */
    char root[WF_ROOT_MAX];  /* tree + "/root": what the prefix stands for */
    size_t rlen;
    dev_t dev;
    int nproxies;                /* proxy=URL|DIRECT settings, tried in turn ("" is DIRECT) */
    char proxy[WF_MAX_MIRRORS][WF_URL_MAX];
    int proxy_first;             /* the proxy that answered last: tried first */
    /* Bypass repositories only (a key was given) */
    int norder;                  /* mirrors fastest first, as their manifests came (0: as given) */
    int order[WF_MAX_MIRRORS];
    int repo;
    unsigned char pub[32];       /* the publisher's Ed25519 public key */
    long long revision;          /* of the manifest wf_repo_fetch accepted */
    char manifest_root[65];
    struct wf_nested *nested;    /* this process's view of the tree's nested catalogs */
    int nnested, nested_cap, pending;
    char **wants;                /* where symlinks of loaded subtrees lead (repository paths) */
    int nwants, wants_done;
};

/* A nested catalog of a Bypass repository: the subtree at `path` (from the repository's root)
 * is described by catalog `hash`; `loaded` once its entries are in the skeleton. */
struct wf_nested {
    char *path;
    size_t len;
    char hash[65];
    int loaded;
};

extern char wf_cache[WF_ROOT_MAX];
extern int wf_debug_on;
extern int wf_repo_pending; /* nested catalogs of loaded repositories not in the skeleton yet */

/* One line on stderr, "bypass[webfs]: ...", one write() so concurrent processes do not mix. */
#define wf_say(...) bypass_log(__VA_ARGS__)
#define wf_dbg(...)                                                            \
    do {                                                                       \
        if (wf_debug_on)                                                       \
            wf_say(__VA_ARGS__);                                               \
    } while (0)
/* A line of one debug subsystem: `bypass run -d cache,policy -o FILE` when it is on, else as wf_dbg. */
#define wf_dbg_to(subsystem, ...)                                              \
    do {                                                                       \
        if (BYPASS_DEBUG_ON(subsystem))                                        \
            bypass_debug_write((subsystem), __VA_ARGS__);                      \
        else                                                                   \
            wf_dbg(__VA_ARGS__);                                               \
    } while (0)

int wf_lock_path(const char *path);     /* an flock'ed lock file's descriptor, or -1 */
int wf_lock_tree(const char *sum, char tree[PATH_MAX]); /* CACHE/trees/<sum>'s lock; its path */
int wf_fetch(const char *url, int fd);  /* GET into fd (truncated first); 0 or an errno, logged */
/* ... through m's proxies in turn; a body longer than limit (0: no bound) is EFBIG, for the caller
 * to say what it is (the catalog says how long it can be: a longer body is a broken server) */
int wf_fetch_via(struct wf_mount *m, const char *url, int fd, long long limit);
void wf_url_for(const struct wf_mount *m, int mirror, const char *rel, char *out, size_t size);

/* What an open needs to put a fetched file in place. */
struct wf_file {
    long long size, mode;
    struct timespec mtime;
};

/* webfs_repo.c: Bypass repositories (bypass publish) */
int wf_repo_key(struct wf_mount *m, const char *file, char *err, size_t esize);
int wf_repo_fetch(struct wf_mount *m, char root[65]);     /* the signed manifest's root catalog */
int wf_repo_install(struct wf_mount *m, const char *root); /* CACHE/trees/<root> from its catalog */
void wf_repo_committed(struct wf_mount *m);                /* the mount now uses what it fetched */
int wf_repo_attach(struct wf_mount *m);                    /* the tree's nested catalogs, read */
int wf_repo_enter(struct wf_mount *m, const char *rest);   /* nested catalogs on the way to rest */
int wf_repo_fill(struct wf_mount *m, const char *rel, int fd, struct wf_file *f);

#endif
