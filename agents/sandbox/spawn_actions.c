/*
 * spawn_actions.c - where a posix_spawn file-actions list moves its child.
 *
 * The child runs the list inside the C library, out of the agent's sight, so the agent checks
 * each action when it is recorded.  After an `addchdir_np` or `addfchdir_np`, a relative path
 * in a later action, and a relative program given to posix_spawn with the list, are found by
 * the child from that new directory, not from the parent's: this file remembers, per list, the
 * virtual directory the child will be in, and which of the list's own descriptors name which
 * directory (an `addopen` then `addfchdir_np` of the same number).
 *
 * Lists are told apart by address; posix_spawn_file_actions_init and _destroy forget one.  The
 * room is fixed (no allocation): a chdir action that finds no room is refused with ENOMEM, as
 * the C library refuses a list it cannot grow; descriptor actions are never refused, but once
 * one went unrecorded, an fchdir to a descriptor of a list without a record is (EACCES).
 */
#define _GNU_SOURCE
#include "sandbox.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdint.h>
#include <string.h>

#define SPAWN_LISTS 16
#define SPAWN_FDS 4

struct spawn_fd {
    int fd;                     /* -1: free */
    char path[PATH_MAX];        /* virtual directory the list opened on fd */
};

struct spawn_list {
    const void *fa;             /* NULL: free */
    char dir[PATH_MAX];         /* the child's virtual cwd at this point ("": the parent's) */
    uint64_t touched;           /* fds 0..63 the list dup'ed over or closed */
    int touched_high;           /* the same for any fd from 64 on */
    struct spawn_fd fds[SPAWN_FDS];
};

static struct spawn_list g_lists[SPAWN_LISTS] SB_LARGE;
static int g_lists_lock;
static int g_lists_lost;        /* a list's descriptor changes went unrecorded (no room) */

static void lists_lock(void)
{
    while (__atomic_test_and_set(&g_lists_lock, __ATOMIC_ACQUIRE))
        ;
}

static void lists_unlock(void)
{
    __atomic_clear(&g_lists_lock, __ATOMIC_RELEASE);
}

/* The list's record (made when `make`), or NULL.  Called locked. */
static struct spawn_list *list_of(const void *fa, int make)
{
    struct spawn_list *free_one = NULL;
    for (int i = 0; i < SPAWN_LISTS; i++) {
        if (g_lists[i].fa == fa)
            return &g_lists[i];
        if (!g_lists[i].fa && !free_one)
            free_one = &g_lists[i];
    }
    if (!make || !free_one)
        return NULL;
    free_one->fa = fa;
    free_one->dir[0] = '\0';
    free_one->touched = 0;
    free_one->touched_high = 0;
    for (int i = 0; i < SPAWN_FDS; i++)
        free_one->fds[i].fd = -1;
    return free_one;
}

void sb_spawn_forget(const void *fa)
{
    lists_lock();
    struct spawn_list *l = list_of(fa, 0);
    if (l)
        l->fa = NULL;
    lists_unlock();
}

int sb_spawn_resolve(const void *fa, int op, const char *path, int flags, struct sb_result *r)
{
    char joined[PATH_MAX];
    int use = 0;
    if (fa && path && !sb_string_unreadable(path) && path[0] != '/' && path[0] != '\0') {
        lists_lock();
        struct spawn_list *l = list_of(fa, 0);
        if (l && l->dir[0]) {
            size_t dl = strlen(l->dir);
            int n = snprintf(joined, sizeof joined, "%s/%s", dl == 1 ? "" : l->dir, path);
            use = n > 0 && (size_t)n < sizeof joined ? 1 : -1;
        }
        lists_unlock();
    }
    if (use < 0)
        return r->err = ENAMETOOLONG;
    /* the list's directory is a resolved virtual path: walking the joined text applies the
     * program's "." and ".." from there, as the child's kernel will */
    return sb_resolve(op, AT_FDCWD, use ? joined : path, flags, r);
}

/* The child will stand in vdir ("" when not known: the action fails in the child). */
static int set_dir(const void *fa, const char *vdir)
{
    size_t n = strlen(vdir);
    if (n + 1 > PATH_MAX)
        return ENAMETOOLONG;            /* as the child's own chdir would be refused */
    lists_lock();
    struct spawn_list *l = list_of(fa, 1);
    if (l)
        memcpy(l->dir, vdir, n + 1);
    lists_unlock();
    return l ? 0 : ENOMEM;
}

int sb_spawn_chdir(const void *fa, const struct sb_result *r)
{
    return r->vpath[0] ? set_dir(fa, r->vpath) : 0;
}

/* What the list itself made of fd: 1 opened it on a directory it knows (path filled), 0 dup'ed
 * over or closed it, -1 left it alone (the parent's).  Called locked. */
static int fd_record(struct spawn_list *l, int fd, char *path, size_t size)
{
    if (!l || fd < 0)
        return -1;
    for (int i = 0; i < SPAWN_FDS; i++)
        if (l->fds[i].fd == fd) {
            snprintf(path, size, "%s", l->fds[i].path);
            return 1;
        }
    if (fd < 64 ? (int)((l->touched >> fd) & 1) : l->touched_high)
        return 0;
    return -1;
}

/* The list opened fd on vpath (known: a path to remember) or changed it otherwise. */
static int fd_note(const void *fa, int fd, const char *vpath)
{
    if (fd < 0)
        return 0;                       /* the child's action fails (EBADF) */
    lists_lock();
    struct spawn_list *l = list_of(fa, 1);
    if (l) {
        int slot = -1;
        for (int i = 0; i < SPAWN_FDS; i++) {
            if (l->fds[i].fd == fd)
                l->fds[i].fd = -1;
            if (l->fds[i].fd == -1 && slot < 0)
                slot = i;
        }
        size_t n = vpath ? strlen(vpath) : 0;
        if (vpath && vpath[0] == '/' && slot >= 0 && n + 1 <= PATH_MAX) {
            l->fds[slot].fd = fd;
            memcpy(l->fds[slot].path, vpath, n + 1);
        } else if (fd < 64) {
            l->touched |= 1ULL << fd;   /* out of room counts as unknown */
        } else {
            l->touched_high = 1;
        }
        if (l->fds[slot < 0 ? 0 : slot].fd == fd && fd < 64)
            l->touched &= ~(1ULL << fd);
    } else {
        g_lists_lost = 1;               /* not refused: only a later fchdir needs to know */
    }
    lists_unlock();
    return 0;
}

int sb_spawn_opened(const void *fa, int fd, const struct sb_result *r)
{
    return fd_note(fa, fd, r->vpath);
}

int sb_spawn_fd_changed(const void *fa, int fd)
{
    return fd_note(fa, fd, NULL);
}

int sb_spawn_fchdir(const void *fa, int fd)
{
    char v[PATH_MAX];
    lists_lock();
    struct spawn_list *l = list_of(fa, 0);
    int known = fd_record(l, fd, v, sizeof v);
    if (!l && g_lists_lost)
        known = 0;                      /* its dup2/close/open may have gone unrecorded */
    lists_unlock();
    if (known == 0)
        return EACCES;                  /* dup'ed over or closed by the list: not checkable */
    if (known < 0) {
        /* the parent's descriptor, inherited: the place it names must allow a chdir */
        struct sb_result r;
        int e = sb_resolve(SB_OP_CHDIR, fd, "", SB_EMPTY_OK | SB_KERNEL_ERRS, &r);
        if (e)
            return e;
        if (sb_fd_path(fd, v, sizeof v) != 0)
            return 0;                   /* EBADF and the like: the child's fchdir fails */
    } else {
        int e = sb_check(sb_lookup(sb_current(), v), SB_OP_CHDIR);
        if (e)
            return e;
    }
    return set_dir(fa, v);
}
