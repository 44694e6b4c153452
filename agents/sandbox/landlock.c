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
static uint64_t rights_at(const struct ll *ll, const char *p, size_t pl)
{
    const struct want *best = NULL;
    for (int i = 0; i < ll->n; i++)
        if (beneath(p, pl, ll->w[i].path, ll->w[i].len) && (!best || ll->w[i].len >= best->len))
            best = &ll->w[i];
    return best ? best->rights : 0;
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

/* Grant r on (at, p); kind: 'd' a directory, 'f' not one, 0 unknown (asked here). */
static void add_rule_at(struct ll *ll, int at, const char *p, int kind, uint64_t r)
{
    r &= ll->handled;
    if (!r)
        return;
    int fd = openat(at, p, O_PATH | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return;                         /* not there: nothing to grant */
    struct stat st;
    if (kind == 'f' || (kind == 0 && fstat(fd, &st) == 0 && !S_ISDIR(st.st_mode)))
        r &= LL_FILE;
    struct landlock_path_beneath_attr pb = { .allowed_access = r, .parent_fd = fd };
    long rc = r ? syscall(SYS_landlock_add_rule, ll->ruleset, LANDLOCK_RULE_PATH_BENEATH, &pb, 0) : 0;
    if (rc < 0 && errno == EINVAL && kind == 'd' && (r & LL_FILE) != r) {
        /* no longer the directory the listing named: grant what a file may have */
        pb.allowed_access = r & LL_FILE;
        rc = pb.allowed_access ? syscall(SYS_landlock_add_rule, ll->ruleset,
                                         LANDLOCK_RULE_PATH_BENEATH, &pb, 0) : 0;
    }
    if (rc < 0)
        ll->failed = errno;
    close(fd);
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

static void grant(struct ll *ll, const char *p, uint64_t r, int depth)
{
    size_t pl = strlen(p);
    if (!narrower_below(ll, p, pl, r) || depth > 64) {
        add_rule(ll, p, r);
        return;
    }
    note_inexact(ll, p);
    add_rule(ll, p, r & LANDLOCK_ACCESS_FS_READ_DIR);
    DIR *d = opendir(p);
    if (!d)
        return;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.' && (!de->d_name[1] || (de->d_name[1] == '.' && !de->d_name[2])))
            continue;
        char c[PATH_MAX];
        if ((size_t)snprintf(c, sizeof c, "%s/%s", pl == 1 ? "" : p, de->d_name) >= sizeof c)
            continue;
        /* the listing's own type where the file system gives one: a stat less per child */
        int dir = de->d_type == DT_DIR;
        if (de->d_type == DT_UNKNOWN) {
            struct stat st;
            if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
                continue;
            de->d_type = S_ISLNK(st.st_mode) ? DT_LNK : S_ISDIR(st.st_mode) ? DT_DIR : DT_REG;
            dir = S_ISDIR(st.st_mode);
        }
        if (de->d_type == DT_LNK)
            continue;                   /* a link's target is granted where it lives */
        uint64_t cr = rights_at(ll, c, strlen(c));
        if (!cr)
            continue;
        if (!dir)
            cr &= LL_FILE;
        if (narrower_below(ll, c, strlen(c), cr))
            grant(ll, c, cr, depth + 1);
        else
            add_rule_at(ll, dirfd(d), de->d_name, dir ? 'd' : 'f', cr);
    }
    closedir(d);
}

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

int sb_landlock_install(const struct sb_mounts *m, const char *private_dir, char *inexact,
                        size_t inexact_size)
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
    char (*reals)[PATH_MAX] = malloc((size_t)m->n * PATH_MAX);
    if (!reals)
        return ENOMEM;
    for (int i = 0; i < m->n; i++) {
        const struct sb_entry *e = &m->e[i];
        const char *real = e->prefix;
        uint64_t r = 0;
        if (e->kind == SB_DENY || e->kind == SB_ENOENT) {
            /* the real place is where the entry around it puts the prefix */
            const struct sb_entry *up = NULL;
            for (int j = 0; j < m->n; j++) {
                const struct sb_entry *o = &m->e[j];
                if (o->plen < e->plen && o->target && o->kind != SB_IDENTITY &&
                    beneath(e->prefix, e->plen, o->prefix, o->plen) &&
                    (!up || o->plen >= up->plen))
                    up = o;
            }
            if (up && !e->glob && sb_lookup(m, e->prefix) == e &&
                sb_translate(up, e->prefix, reals[i], PATH_MAX) == 0)
                real = reals[i];
        }
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
    free(reals);
    if (private_dir && *private_dir) {
        /* other runs' private directories beside this one's: no access, whatever the list
         * grants around them (those made later get none anyway: see note_inexact) */
        char pat[PATH_MAX];
        const char *slash = strrchr(private_dir, '/');
        glob_t g = { 0 };
        if (slash && (size_t)snprintf(pat, sizeof pat, "%.*s/bypass-private-*",
                                      (int)(slash - private_dir), private_dir) < sizeof pat &&
            glob(pat, GLOB_NOSORT, NULL, &g) == 0) {
            for (size_t k = 0; k < g.gl_pathc; k++)
                if (strcmp(g.gl_pathv[k], private_dir) != 0)
                    want_put(&w, &n, &cap, g.gl_pathv[k], 0, 1);
        }
        globfree(&g);
        want_put(&w, &n, &cap, private_dir, 0, 1);
    }

    struct landlock_ruleset_attr attr = { .handled_access_fs = handled };
    int rs = (int)syscall(SYS_landlock_create_ruleset, &attr, sizeof attr, 0);
    if (rs < 0) {
        rc = errno;
        goto out;
    }
    struct ll ll = { rs, handled, w, n, inexact, inexact_size, 0, 0 };
    if (inexact_size)
        inexact[0] = '\0';
    grant(&ll, "/", rights_at(&ll, "/", 1), 0);
    for (int i = 0; i < n; i++)
        if (w[i].len > 1 && w[i].rights)
            grant(&ll, w[i].path, w[i].rights, 0);
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
