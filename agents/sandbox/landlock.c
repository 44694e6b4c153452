/*
 * landlock.c - the mount list as a Landlock ruleset, so that what the preload
 * layer cannot see (raw system calls, io_uring, static programs, the loader's
 * own opens, dlopen) still cannot read a DENY place or change a read-only one.
 *
 * Landlock only grants, and a grant covers everything beneath its directory.
 * A list is turned into grants on real paths: an entry gets its mode's rights
 * (DENY and ENOENT none); a directory with a narrower entry somewhere below it
 * cannot be granted as a whole, so it gets only READ_DIR (if its mode reads)
 * and each of its children gets its own grant, recursing towards the narrower
 * entries.  What that cannot say exactly is reported in one line: in such a
 * directory names can be listed down to the narrower place, nothing can be
 * created or removed directly in it, and entries made there later get none of
 * its rights.
 */
#define _GNU_SOURCE
#include "sandbox.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <linux/landlock.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef LANDLOCK_ACCESS_FS_REFER
#define LANDLOCK_ACCESS_FS_REFER (1ULL << 13)
#endif
#ifndef LANDLOCK_ACCESS_FS_TRUNCATE
#define LANDLOCK_ACCESS_FS_TRUNCATE (1ULL << 14)
#endif
#ifndef LANDLOCK_ACCESS_FS_IOCTL_DEV
#define LANDLOCK_ACCESS_FS_IOCTL_DEV (1ULL << 15)
#endif

#define LL_R (LANDLOCK_ACCESS_FS_READ_FILE | LANDLOCK_ACCESS_FS_READ_DIR)
#define LL_W (LANDLOCK_ACCESS_FS_WRITE_FILE | LANDLOCK_ACCESS_FS_REMOVE_DIR |                    \
              LANDLOCK_ACCESS_FS_REMOVE_FILE | LANDLOCK_ACCESS_FS_MAKE_CHAR |                    \
              LANDLOCK_ACCESS_FS_MAKE_DIR | LANDLOCK_ACCESS_FS_MAKE_REG |                        \
              LANDLOCK_ACCESS_FS_MAKE_SOCK | LANDLOCK_ACCESS_FS_MAKE_FIFO |                      \
              LANDLOCK_ACCESS_FS_MAKE_BLOCK | LANDLOCK_ACCESS_FS_MAKE_SYM |                      \
              LANDLOCK_ACCESS_FS_REFER | LANDLOCK_ACCESS_FS_TRUNCATE)
#define LL_X LANDLOCK_ACCESS_FS_EXECUTE
#define LL_FILE (LANDLOCK_ACCESS_FS_EXECUTE | LANDLOCK_ACCESS_FS_WRITE_FILE |                    \
                 LANDLOCK_ACCESS_FS_READ_FILE | LANDLOCK_ACCESS_FS_TRUNCATE |                    \
                 LANDLOCK_ACCESS_FS_IOCTL_DEV)

struct want {
    const char *path;           /* real path, canonical */
    size_t len;
    uint64_t rights;
    int restricts;              /* may narrow what a covering entry grants */
};

struct ll {
    int ruleset;
    uint64_t handled;
    const struct want *w;
    int n;
    char *reached;              /* per wanted place: granted on the way by grant() */
    int kept[128];              /* the walk's descriptors not closed yet (close_kept) */
    int nkept;
    char *inexact;              /* the directories split, for the message */
    size_t inexact_size, inexact_len;
    int failed;
};

static uint64_t mode_rights(int mode)
{
    uint64_t r = 0;
    if (mode & SB_R)
        r |= LL_R | LANDLOCK_ACCESS_FS_IOCTL_DEV;
    if (mode & SB_W)
        r |= LL_W | LANDLOCK_ACCESS_FS_IOCTL_DEV;
    if (mode & SB_X)
        r |= LL_X;
    return r;
}

/* p is at or below the directory d (both canonical). */
static int beneath(const char *p, size_t pl, const char *d, size_t dl)
{
    if (dl == 1)
        return 1;
    return pl >= dl && memcmp(p, d, dl) == 0 && (p[dl] == '/' || p[dl] == '\0');
}

/* Rights the list gives the real path p: the wanted place with the longest
 * path covering it (the later line for equal paths). */
static uint64_t want_rights(const struct want *w, int n, const char *p, size_t pl)
{
    const struct want *best = NULL;
    for (int i = 0; i < n; i++)
        if (beneath(p, pl, w[i].path, w[i].len) && (!best || w[i].len >= best->len))
            best = &w[i];
    return best ? best->rights : 0;
}

static uint64_t rights_at(const struct ll *ll, const char *p, size_t pl)
{
    return want_rights(ll->w, ll->n, p, pl);
}

/* Is there a place strictly below p that must have less than r? */
static int narrower_below(const struct ll *ll, const char *p, size_t pl, uint64_t r)
{
    for (int i = 0; i < ll->n; i++) {
        const struct want *w = &ll->w[i];
        if (w->restricts && w->len > pl && beneath(w->path, w->len, p, pl) &&
            (w->rights & r & ll->handled) != (r & ll->handled))
            return 1;
    }
    return 0;
}

/* The walk below uses raw system calls (sb_sys4): a call by name here would reach the agent's
 * own wrapper of openat, opendir or readdir first, and the ruleset is built once per run, in
 * its first process's start, where every call counts (issue 11: under 0.3 ms). */

/* Grant r through fd, a descriptor of the place; kind: 'd' a directory, 'f' not one, 0 unknown.
 * The kernel refuses a directory's rights on a file (EINVAL), which is how an unknown kind is
 * learnt: a failed call costs less than an fstat for every place. */
static void add_rule_fd(struct ll *ll, int fd, int kind, uint64_t r)
{
    if (kind == 'f')
        r &= LL_FILE;
    struct landlock_path_beneath_attr pb = { .allowed_access = r, .parent_fd = fd };
    long rc = r ? sb_sys4(SYS_landlock_add_rule, ll->ruleset, LANDLOCK_RULE_PATH_BENEATH,
                          (long)&pb, 0) : 0;
    if (rc == -EINVAL && kind != 'f' && (r & LL_FILE) != r) {
        /* a file (or no longer the directory the listing named): what a file may have */
        pb.allowed_access = r & LL_FILE;
        rc = pb.allowed_access ? sb_sys4(SYS_landlock_add_rule, ll->ruleset,
                                         LANDLOCK_RULE_PATH_BENEATH, (long)&pb, 0) : 0;
    }
    if (rc < 0)
        ll->failed = (int)-rc;
    else if (pb.allowed_access)
        sb_landlock_rules++;
}

/* Close the descriptors the walk kept open so far.  None is closed during the walk, so each open
 * takes the lowest free number and the numbers kept mostly follow each other: sorted, they are
 * closed a run of consecutive numbers (all of them ours) at a time, a close_range for many rules
 * instead of a close each. */
static void close_kept(struct ll *ll)
{
    for (int i = 1; i < ll->nkept; i++)
        for (int j = i; j > 0 && ll->kept[j - 1] > ll->kept[j]; j--) {
            int t = ll->kept[j];
            ll->kept[j] = ll->kept[j - 1];
            ll->kept[j - 1] = t;
        }
    for (int i = 0; i < ll->nkept; ) {
        int j = i;
        while (j + 1 < ll->nkept && ll->kept[j + 1] == ll->kept[j] + 1)
            j++;
        sb_sys4(SYS_close_range, ll->kept[i], ll->kept[j], 0, 0);
        i = j + 1;
    }
    ll->nkept = 0;
}

static void keep(struct ll *ll, int fd)
{
    ll->kept[ll->nkept++] = fd;
    if (ll->nkept == (int)(sizeof ll->kept / sizeof ll->kept[0]))
        close_kept(ll);
}

/* Grant r on (at, p). */
static void add_rule_at(struct ll *ll, int at, const char *p, int kind, uint64_t r)
{
    r &= ll->handled;
    if (!r)
        return;
    int fd = (int)sb_sys4(SYS_openat, at, (long)p, O_PATH | O_CLOEXEC | O_NOFOLLOW, 0);
    if (fd == -EMFILE && ll->nkept) {
        close_kept(ll);
        fd = (int)sb_sys4(SYS_openat, at, (long)p, O_PATH | O_CLOEXEC | O_NOFOLLOW, 0);
    }
    if (fd < 0)
        return;                         /* not there: nothing to grant */
    add_rule_fd(ll, fd, kind, r);
    keep(ll, fd);
}

static void add_rule(struct ll *ll, const char *p, uint64_t r)
{
    add_rule_at(ll, AT_FDCWD, p, 0, r);
}

static void note_inexact(struct ll *ll, const char *p)
{
    size_t l = strlen(p);
    for (const char *at = ll->inexact; (at = strstr(at, p)) != NULL; at += l)
        if ((at == ll->inexact || at[-1] == ' ') && (at[l] == ',' || at[l] == '\0'))
            return;                     /* named already */
    if (ll->inexact_len + l + 3 < ll->inexact_size) {
        if (ll->inexact_len) {
            memcpy(ll->inexact + ll->inexact_len, ", ", 2);
            ll->inexact_len += 2;
        }
        memcpy(ll->inexact + ll->inexact_len, p, l + 1);
        ll->inexact_len += l;
    }
}

/* The wanted place at exactly p, if any: the walk below reaches it and grants it as a later
 * grant() of its own would, so that one is left out. */
static void mark_reached(const struct ll *ll, const char *p, size_t pl, uint64_t r)
{
    for (int i = 0; i < ll->n; i++)
        if (ll->w[i].len == pl && ll->w[i].rights == r && memcmp(ll->w[i].path, p, pl) == 0)
            ll->reached[i] = 1;
}

static void grant(struct ll *ll, const char *p, uint64_t r, int depth)
{
    size_t pl = strlen(p);
    if (!narrower_below(ll, p, pl, r) || depth > 64) {
        add_rule(ll, p, r);
        return;
    }
    note_inexact(ll, p);
    /* one descriptor both for the directory's own READ_DIR and for its listing */
    int d = (int)sb_sys4(SYS_openat, AT_FDCWD, (long)p,
                         O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW, 0);
    if (d == -EMFILE && ll->nkept) {
        close_kept(ll);
        d = (int)sb_sys4(SYS_openat, AT_FDCWD, (long)p,
                         O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW, 0);
    }
    if (d >= 0) {
        if (r & ll->handled & LANDLOCK_ACCESS_FS_READ_DIR)
            add_rule_fd(ll, d, 'd', r & ll->handled & LANDLOCK_ACCESS_FS_READ_DIR);
    } else {
        /* a link: no grant of its own, its target listed (as opendir follows it) */
        add_rule(ll, p, r & LANDLOCK_ACCESS_FS_READ_DIR);
        d = (int)sb_sys4(SYS_openat, AT_FDCWD, (long)p, O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0);
        if (d < 0)
            return;
    }
    char buf[4096] __attribute__((aligned(8)));
    long got;
    while ((got = sb_sys4(SYS_getdents64, d, (long)buf, sizeof buf, 0)) > 0) {
        for (long off = 0; off < got; ) {
            struct sb_dirent64 *de = (struct sb_dirent64 *)(buf + off);
            off += de->d_reclen;
            if (de->d_name[0] == '.' &&
                (!de->d_name[1] || (de->d_name[1] == '.' && !de->d_name[2])))
                continue;
            char c[PATH_MAX];
            size_t nl = strlen(de->d_name);
            size_t base = pl == 1 ? 0 : pl;
            if (base + 1 + nl + 1 > sizeof c)
                continue;
            memcpy(c, p, base);
            c[base] = '/';
            memcpy(c + base + 1, de->d_name, nl + 1);
            size_t cl = base + 1 + nl;
            /* the listing's own type where the file system gives one: a stat less per child */
            unsigned char type = de->d_type;
            if (type == DT_UNKNOWN) {
                struct stat st;
                if (sb_sys4(SYS_newfstatat, d, (long)de->d_name, (long)&st,
                            AT_SYMLINK_NOFOLLOW) < 0)
                    continue;
                type = S_ISLNK(st.st_mode) ? DT_LNK : S_ISDIR(st.st_mode) ? DT_DIR : DT_REG;
            }
            if (type == DT_LNK)
                continue;               /* a link's target is granted where it lives */
            int dir = type == DT_DIR;
            uint64_t cr = rights_at(ll, c, cl);
            if (!cr)
                continue;
            mark_reached(ll, c, cl, cr);
            if (!dir)
                cr &= LL_FILE;
            if (narrower_below(ll, c, cl, cr))
                grant(ll, c, cr, depth + 1);
            else
                add_rule_at(ll, d, de->d_name, dir ? 'd' : 'f', cr);
        }
    }
    keep(ll, d);
}

int sb_landlock_rules;

int sb_landlock_abi(void)
{
    long v = syscall(SYS_landlock_create_ruleset, NULL, 0, LANDLOCK_CREATE_RULESET_VERSION);
    return v < 0 ? -errno : (int)v;
}

/* Want `place` with rights r; a later want for the same place replaces an earlier one. */
static void want_put(struct want **w, int *n, int *cap, const char *place, uint64_t r,
                     int restricts)
{
    int j = 0;
    while (j < *n && strcmp((*w)[j].path, place) != 0)
        j++;
    if (j == *n) {
        if (*n == *cap) {
            int nc = *cap ? 2 * *cap : 32;
            struct want *nw = realloc(*w, (size_t)nc * sizeof *nw);
            if (!nw)
                return;
            *w = nw;
            *cap = nc;
        }
        (*w)[j].path = strdup(place);
        if (!(*w)[j].path)
            return;
        (*n)++;
    }
    (*w)[j].len = strlen((*w)[j].path);
    (*w)[j].rights = r;
    (*w)[j].restricts = restricts;
}

int sb_landlock_install(const struct sb_mounts *m, const char *private_dir, const char *self_path,
                        char *inexact, size_t inexact_size)
{
    int abi = sb_landlock_abi();
    if (abi < 0)
        return -abi;
    uint64_t handled = (LANDLOCK_ACCESS_FS_MAKE_SYM << 1) - 1;
    if (abi >= 2)
        handled |= LANDLOCK_ACCESS_FS_REFER;
    if (abi >= 3)
        handled |= LANDLOCK_ACCESS_FS_TRUNCATE;
    if (abi >= 5)
        handled |= LANDLOCK_ACCESS_FS_IOCTL_DEV;

    struct want *w = NULL;
    int n = 0, cap = 0, rc = 0, note_inexact_glob = 0;
    char real_place[PATH_MAX];          /* want_put keeps its own copy */
    /* a PRIVATE line's real place is out of the program's reach, as a DENY place is: first, so
     * that any line granting that same real place (a redirect's target) replaces this */
    for (int i = 0; i < m->n; i++) {
        const struct sb_entry *e = &m->e[i];
        if (e->kind == SB_PRIVATE && !e->glob && e->plen > 1 &&
            sb_prefix_real(m, e, real_place, sizeof real_place) == 0)
            want_put(&w, &n, &cap, real_place, 0, 1);
    }
    for (int i = 0; i < m->n; i++) {
        const struct sb_entry *e = &m->e[i];
        const char *real = e->prefix;
        uint64_t r = 0;
        if ((e->kind == SB_DENY || e->kind == SB_ENOENT) && !e->glob &&
            sb_lookup(m, e->prefix) == e &&
            sb_prefix_real(m, e, real_place, sizeof real_place) == 0)
            real = real_place;
        switch (e->kind) {
        case SB_IDENTITY:
            r = mode_rights(e->mode);
            break;
        case SB_REDIRECT:
        case SB_PRIVATE:
            if (!e->target)
                continue;
            real = e->target;
            r = mode_rights(e->mode);
            break;
        default:                        /* DENY, ENOENT */
            break;
        }
        /* a glob line holds the names that match at the start */
        glob_t g = { 0 };
        size_t count = 1;
        if (e->glob) {
            if (glob(e->prefix, GLOB_NOSORT, NULL, &g) != 0) {
                globfree(&g);
                continue;
            }
            count = g.gl_pathc;
            note_inexact_glob = 1;
        }
        /* the implicit device lines only add (executing a device is refused anyway) */
        for (size_t k = 0; k < count; k++)
            want_put(&w, &n, &cap, e->glob ? g.gl_pathv[k] : real, r, e->line > 0 || e->plen == 1);
        if (e->glob)
            globfree(&g);
    }
    const char *slash = private_dir ? strrchr(private_dir, '/') : NULL;
    size_t dl = slash ? (size_t)(slash - private_dir) : 0;
    if (slash && want_rights(w, n, private_dir, dl ? dl : 1)) {
        /* other runs' private directories beside this one's: no access, whatever the list
         * grants around them (those made later get none anyway: see note_inexact).  Listed by
         * hand rather than by glob(): the C library's listing costs this start more.  Where
         * the list grants nothing (the real /tmp behind `/tmp PRIVATE`), nothing to list. */
        char dir[PATH_MAX];
        int d = -1;
        if (dl < sizeof dir) {
            memcpy(dir, private_dir, dl);
            dir[dl ? dl : 1] = '\0';
            if (!dl)
                dir[0] = '/';
            d = (int)sb_sys4(SYS_openat, AT_FDCWD, (long)dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0);
        }
        char buf[4096] __attribute__((aligned(8)));
        long got;
        while (d >= 0 && (got = sb_sys4(SYS_getdents64, d, (long)buf, sizeof buf, 0)) > 0) {
            for (long off = 0; off < got; ) {
                struct sb_dirent64 *de = (struct sb_dirent64 *)(buf + off);
                off += de->d_reclen;
                char sib[PATH_MAX];
                size_t nl = strlen(de->d_name);
                if (strncmp(de->d_name, "bypass-private-", 15) != 0 || dl + 1 + nl + 1 > sizeof sib)
                    continue;
                memcpy(sib, private_dir, dl);
                sib[dl] = '/';
                memcpy(sib + dl + 1, de->d_name, nl + 1);
                if (strcmp(sib, private_dir) != 0)
                    want_put(&w, &n, &cap, sib, 0, 1);
            }
        }
        if (d >= 0)
            sb_sys4(SYS_close, d, 0, 0, 0);
        want_put(&w, &n, &cap, private_dir, 0, 1);
    }

    struct landlock_ruleset_attr attr = { .handled_access_fs = handled };
    int rs = (int)syscall(SYS_landlock_create_ruleset, &attr, sizeof attr, 0);
    if (rs < 0) {
        rc = errno;
        goto out;
    }
    char *reached = calloc((size_t)n + 1, 1);
    if (!reached) {
        close(rs);
        rc = ENOMEM;
        goto out;
    }
    struct ll ll = { .ruleset = rs, .handled = handled, .w = w, .n = n, .reached = reached,
                     .inexact = inexact, .inexact_size = inexact_size };
    sb_landlock_rules = 0;
    if (inexact_size)
        inexact[0] = '\0';
    grant(&ll, "/", rights_at(&ll, "/", 1), 0);
    for (int i = 0; i < n; i++)
        if (w[i].len > 1 && w[i].rights && !reached[i])
            grant(&ll, w[i].path, w[i].rights, 0);
    if (self_path && *self_path) {
        /* children load the agent by the name they were given, whatever the list says of the
         * place it is in (the real /tmp behind `/tmp PRIVATE`, say).  A rule only adds, and the
         * name is followed to the file, as the loader follows it. */
        int fd = (int)sb_sys4(SYS_openat, AT_FDCWD, (long)self_path, O_PATH | O_CLOEXEC, 0);
        if (fd >= 0) {
            add_rule_fd(&ll, fd, 'f', LANDLOCK_ACCESS_FS_READ_FILE);
            keep(&ll, fd);
        }
    }
    close_kept(&ll);
    free(reached);
    if (note_inexact_glob)
        note_inexact(&ll, "names a glob line matches later");
    rc = ll.failed;
    if (!rc && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        rc = errno;
    if (!rc && syscall(SYS_landlock_restrict_self, rs, 0) < 0)
        rc = errno;
    close(rs);
out:
    for (int i = 0; i < n; i++)
        free((char *)w[i].path);
    free(w);
    return rc;
}
