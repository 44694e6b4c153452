/*
 * webfs.h -- support library of the webfs agent: read-only GROW-FS trees served over HTTP,
 * mounted at path prefixes.  See README.md for the settings and the design.
 *
 * The tree's catalog (.growfsdir, checked against .growfschecksum) is turned once per cache
 * into a local *skeleton*: real directories, symlinks and sparse placeholder files with the
 * catalog's modes, sizes and times.  Paths under a prefix are rewritten to the skeleton, so
 * the kernel itself answers stat, readdir, readlink, realpath and access.  Opening a placeholder
 * fetches the file, checks its SHA-1 against the catalog and renames it over the placeholder;
 * from then on the file is an ordinary local file (warm cache costs what local disk costs).
 */
#ifndef BYPASS_WEBFS_H
#define BYPASS_WEBFS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/types.h>

/* What a call will do with the path, which decides what the agent does about it. */
enum { WF_LOOK = 0, WF_OPEN = 1, WF_WRITE = 2, WF_EXEC = 3 };

struct wf_mount;

/* The path to give the kernel for one path argument. */
struct wf_path {
    const char *use;       /* the program's own path or buf */
    struct wf_mount *m;    /* the mount it is in, NULL if outside every mount */
    char buf[4096];
};

int wf_active(void);
/* 0 with r->use set, or an errno (EROFS for a write in a tree, EIO/ETIMEDOUT/... when the
 * tree's catalog cannot be had). */
int wf_map(int op, int dirfd, const char *path, struct wf_path *r);
/* After an open that may have reached the skeleton: fetch a placeholder's content and put it
 * under the same descriptor number.  0 or an errno (the caller closes fd then). */
int wf_after_open(int fd, int flags, int dirfd, const struct wf_path *r);
/* Before exec of the path the kernel will get: make sure the file is there. */
int wf_before_exec(const struct wf_path *r);
/* stat results of placeholders report the blocks the file will have. */
void wf_fix_stat(struct stat *st);
void wf_fix_statx(void *stx);
/* A real path inside a skeleton written back as the program's path; 1 if changed. */
int wf_unmap(const char *real, char *out, size_t size);
void wf_cwd_unknown(void);
/* A "#!" script inside a tree: the kernel would give its interpreter the skeleton's path, so
 * the agent runs the interpreter itself, with the program's path `asked`.  Fills out[] (room
 * entries) with the interpreter's argv, interp with its path; >0 done, 0 not a script, -errno. */
int wf_script(const struct wf_path *r, const char *asked, char *const *argv, char **out, size_t room,
              char *line, size_t lsize, struct wf_path *interp);
/* execvp-style search of $PATH that knows the mounts; 0 with r filled, or an errno; 1 when no
 * PATH entry is in a mount (the caller lets libc search). */
int wf_search_path(const char *file, struct wf_path *r);

/* ftw/nftw callbacks see the program's paths. */
int wf_ftw(const char *dir, int (*fn)(const char *, const struct stat *, int), int nopenfd,
           const struct wf_path *r);
struct FTW;
int wf_nftw(const char *dir, int (*fn)(const char *, const struct stat *, int, struct FTW *), int nopenfd,
            int flags, const struct wf_path *r);

/* webfs_sha1.c */
struct wf_sha1 {
    uint32_t h[5];
    uint64_t len;
    unsigned char buf[64];
    size_t used;
};
void wf_sha1_init(struct wf_sha1 *s);
void wf_sha1_update(struct wf_sha1 *s, const void *data, size_t n);
void wf_sha1_hex(struct wf_sha1 *s, char out[41]);

#endif
