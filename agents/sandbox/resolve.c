/*
 * resolve.c - path resolution for the sandbox agent.
 *
 * sb_resolve() turns (dirfd, path) into an absolute virtual path, walking
 * it component by component the way the kernel would: "." and ".." are
 * applied to the path resolved so far, and every symlink met on the way is
 * read and followed *in the virtual namespace* (an absolute link target is
 * a virtual path, subject to the mount list like any other).  The real path
 * handed to the kernel therefore contains no symlink the kernel could follow
 * into a place the mount list forbids, except in the last component when the
 * caller asked not to follow it (the actions then use O_NOFOLLOW /
 * AT_SYMLINK_NOFOLLOW and come back here when the kernel reports a link).
 *
 * Cost control (the hot path must stay close to a plain syscall):
 *   - the entry governing the path only changes when the walk reaches an
 *     entry's exact prefix, so there is no lookup per component;
 *   - real directories seen by lstat are remembered in a small hash set
 *     keyed by real path; a hit means "a directory, not a symlink" and saves
 *     the lstat.  The set is flushed by every rename/rmdir/symlink/unlink done
 *     through the agent (sb_cache_flush) and can be switched off with
 *     BYPASS_SANDBOX_CACHE=0.  See README.md for what that leaves open.
 *   - the virtual cwd and descriptors opened through the agent are known to
 *     be resolved already, so relative paths only walk their own components,
 *     and a plain path below such a descriptor goes to the kernel unchanged;
 *   - the walk of an absolute path's directory part is remembered (a few
 *     slots keyed by its text), valid until the directory cache is flushed.
 */
#define _GNU_SOURCE
#include "sandbox.h"

#include <alloca.h>
#include <ctype.h>
#include <dirent.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <poll.h>
#include <pthread.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* Hooks into the Bypass runtime when linked into an agent; absent (NULL) in
 * unit tests that load this library on its own. */
extern void bypass_guard_enter(void) __attribute__((weak));
extern void bypass_guard_leave(void) __attribute__((weak));
extern const char *bypass_self_path(void) __attribute__((weak));
/* Debug output of the runtime (weak: the tests load this file without it), `bypass run -d policy`
 * and `-d process`. */
extern unsigned bypass_debug_mask __attribute__((weak));
extern void bypass_debug_write(unsigned subsystem, const char *fmt, ...) __attribute__((weak, format(printf, 2, 3)));
#define SB_DEBUG_PROCESS (1u << 1)     /* BYPASS_DEBUG_PROCESS */
#define SB_DEBUG_POLICY (1u << 4)      /* BYPASS_DEBUG_POLICY */

static struct sb_mounts g_m SB_HOT;
int sb_g_active SB_HOT;   /* a list is installed (sandbox.h) */
static int g_cache_on SB_HOT = 1;
static int g_erofs SB_HOT;
static int g_allow_static SB_HOT;
static int g_quiet SB_HOT;
static int g_cleanup SB_HOT;
static int g_landlock SB_HOT;                  /* the run is held by a Landlock ruleset */
static int g_landlock_wanted SB_HOT;
static int g_has_globs SB_HOT;                 /* the list has a glob line (root_prepare) */
static pid_t g_private_owner SB_HOT;
/* A copy of stderr for the report at exit: programs such as coreutils close
 * fd 2 in their own exit handlers, which run before ours. */
static int g_errfd SB_HOT = -1;
static dev_t g_errdev SB_HOT;
static ino_t g_errino SB_HOT;

static void keep_stderr(void)
{
    struct stat st;
    g_errfd = fcntl(2, F_DUPFD_CLOEXEC, 900);
    if (g_errfd >= 0 && fstat(g_errfd, &st) == 0) {
        g_errdev = st.st_dev;
        g_errino = st.st_ino;
    }
}

static int report_fd(void)
{
    struct stat st;
    if (g_errfd >= 0 && fstat(g_errfd, &st) == 0 && st.st_dev == g_errdev && st.st_ino == g_errino)
        return g_errfd;
    return 2;
}
static char g_private[PATH_MAX] SB_LARGE;

/* walk state of "/" (see root_prepare) */
static const struct sb_entry *g_root_e SB_HOT;
static char g_root_r[PATH_MAX] SB_LARGE;
static size_t g_root_rl SB_HOT;
static uint64_t g_root_h;

static struct sb_stats g_stats SB_HOT;
/* Plain increments: the counters are for tests and benchmarks, a lost update
 * under threads does not matter, a locked instruction per call would. */
#define STAT_INC(f) (g_stats.f++)

static void sb_msg_to(int fd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define sb_msg(...) sb_msg_to(2, __VA_ARGS__)
static void sb_msg_to(int fd, const char *fmt, ...)
{
    char buf[PATH_MAX + 512];
    int n = snprintf(buf, sizeof buf, "bypass sandbox: ");
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(buf + n, sizeof buf - (size_t)n - 1, fmt, ap);
    va_end(ap);
    if (k < 0)
        return;
    n += k;
    if ((size_t)n > sizeof buf - 2)
        n = (int)sizeof buf - 2;
    buf[n++] = '\n';
    ssize_t w = write(fd, buf, (size_t)n);
    (void)w;
}

/* ---- directory cache ------------------------------------------------------ */

#define CACHE_SLOTS 4096u         /* 96 KB, mapped once a process caches more than a few */
#define CACHE_PROBE 8
#define CACHE_ARENA (4u << 20)
#define SMALL_SLOTS 64u           /* with its names, under one page of .bss */
#define SMALL_ARENA 2048u

struct cslot {
    uint64_t h;
    uint32_t gen;
    uint32_t off;
    uint32_t len;
};

/* A process starts on the small table: most processes of a run (a compiler, find, a shell's
 * command) cache a few dozen directories, and the big table's slots, spread by the hash, cost
 * a page fault each on first use.  Past half of the small table the big one is mapped and the
 * cache starts over there (a new generation, so that no reader mixes the two). */
struct ctab {
    struct cslot *slots;
    char *arena;
    uint32_t mask, arena_size;
};
static struct {
    struct cslot slots[SMALL_SLOTS];
    char arena[SMALL_ARENA];
} g_small SB_LARGE __attribute__((aligned(64)));
static struct ctab g_small_tab SB_HOT = { g_small.slots, g_small.arena, SMALL_SLOTS - 1, SMALL_ARENA };
static struct ctab g_big_tab SB_HOT;
static struct ctab *g_tab = &g_small_tab;
static uint32_t g_arena_used SB_HOT, g_arena_gen SB_HOT, g_cache_count SB_HOT;
static uint32_t g_gen SB_HOT = 1;
static int g_cache_lock SB_HOT;

/* Incremental string hash: cheap per byte (no multiply chain); mixed once
 * with fmix64 where a slot index is taken.  Hits are confirmed by comparing
 * the strings, so the hash only spreads the probes. */
static inline uint64_t fnv_add(uint64_t h, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        h = ((h << 7) | (h >> 57)) ^ (unsigned char)s[i];
    return h;
}

static inline uint64_t fmix64(uint64_t k)
{
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    k *= 0xc4ceb9fe1a85ec53ULL;
    k ^= k >> 33;
    return k;
}
#define FNV_INIT 0x9e3779b97f4a7c15ULL

static inline int cache_trylock(void)
{
    return !__atomic_test_and_set(&g_cache_lock, __ATOMIC_ACQUIRE);
}
static inline void cache_unlock(void)
{
    __atomic_clear(&g_cache_lock, __ATOMIC_RELEASE);
}

/* Lock-free: slots are only filled while the lock is held, and a slot, the
 * arena or the table is only reused or replaced after the generation moved
 * on, which the reader checks again after comparing. */
static int cache_has(uint64_t h, const char *r, size_t rl)
{
    if (!g_cache_on)
        return 0;
    uint32_t gen = __atomic_load_n(&g_gen, __ATOMIC_ACQUIRE);
    const struct ctab *t = __atomic_load_n(&g_tab, __ATOMIC_ACQUIRE);
    h = fmix64(h);
    for (unsigned i = 0; i < CACHE_PROBE; i++) {
        struct cslot *s = &t->slots[(h + i) & t->mask];
        if (__atomic_load_n(&s->gen, __ATOMIC_ACQUIRE) != gen)
            return 0;
        if (s->h == h && s->len == rl && s->off + rl <= t->arena_size &&
            memcmp(t->arena + s->off, r, rl) == 0) {
            __atomic_thread_fence(__ATOMIC_ACQUIRE);
            return __atomic_load_n(&s->gen, __ATOMIC_RELAXED) == gen &&
                   __atomic_load_n(&g_gen, __ATOMIC_RELAXED) == gen;
        }
    }
    return 0;
}

/* The small table is full: map the big one and start over there.  0, or -1 (then the cache
 * starts over in the small table). */
static int cache_grow(void)
{
    void *a = mmap(NULL, CACHE_SLOTS * sizeof(struct cslot), PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    void *b = mmap(NULL, CACHE_ARENA, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (a == MAP_FAILED || b == MAP_FAILED) {
        if (a != MAP_FAILED) munmap(a, CACHE_SLOTS * sizeof(struct cslot));
        if (b != MAP_FAILED) munmap(b, CACHE_ARENA);
        return -1;
    }
    g_big_tab = (struct ctab){ a, b, CACHE_SLOTS - 1, CACHE_ARENA };
    __atomic_store_n(&g_tab, &g_big_tab, __ATOMIC_RELEASE);
    return 0;
}

static void cache_add(uint64_t h, const char *r, size_t rl)
{
    if (!g_cache_on || !cache_trylock())
        return;
    uint32_t gen = __atomic_load_n(&g_gen, __ATOMIC_ACQUIRE);
    if (g_arena_gen != gen) {
        g_arena_gen = gen;
        g_arena_used = 0;
        g_cache_count = 0;
    }
    struct ctab *t = g_tab;
    if (g_arena_used + rl > t->arena_size || g_cache_count >= (t->mask + 1) / 2) {
        /* full: a new generation (readers of the old one see it), in the big table if this
         * was the small one */
        gen = __atomic_add_fetch(&g_gen, 1, __ATOMIC_ACQ_REL);
        if (t == &g_small_tab && cache_grow() == 0)
            t = &g_big_tab;
        g_arena_gen = gen;
        g_arena_used = 0;
        g_cache_count = 0;
        if (rl > t->arena_size) {
            cache_unlock();
            return;
        }
    }
    h = fmix64(h);
    for (unsigned i = 0; i < CACHE_PROBE; i++) {
        struct cslot *s = &t->slots[(h + i) & t->mask];
        if (s->gen == gen) {
            if (s->h == h && s->len == rl && memcmp(t->arena + s->off, r, rl) == 0)
                break;
            continue;
        }
        memcpy(t->arena + g_arena_used, r, rl);
        s->gen = 0;                     /* invalid while being filled */
        __atomic_thread_fence(__ATOMIC_RELEASE);
        s->h = h;
        s->off = g_arena_used;
        s->len = (uint32_t)rl;
        __atomic_store_n(&s->gen, gen, __ATOMIC_RELEASE);
        g_arena_used += (uint32_t)rl;
        g_cache_count++;
        break;
    }
    cache_unlock();
}

void sb_cache_flush(void)
{
    __atomic_add_fetch(&g_gen, 1, __ATOMIC_ACQ_REL);
}

void sb_set_cache(int on)
{
    g_cache_on = on;
    sb_cache_flush();
}

/* ---- resolved bases: the virtual cwd and directory descriptors ------------- */

/* A base is a virtual directory path already resolved, kept with what the
 * walk needs to continue from it (its real path, entry and hash), so that
 * a relative path only costs its own components. */
struct base {
    unsigned vl, rl, hl;
    int notdir;                 /* opened without O_DIRECTORY: maybe a file (the kernel says) */
    const struct sb_entry *e;   /* NULL: only v is known */
    uint64_t h;
};

/* Fill (r, rl, e, h) for the virtual path v (defined with the walk below). */
static int base_compute(const char *v, size_t vl, char *r, struct base *b);

/* ---- virtual cwd ------------------------------------------------------------ */

/* A vfork child shares this memory with its parent: a chdir it makes before
 * exec must not move the parent's virtual cwd.  g_pid is this process (kept
 * by an atfork handler); a chdir from another pid marks the child in
 * g_vfork_pid, whose relative paths then use the kernel's cwd, until the
 * parent, running again, sees a pid not its own there and clears it. */
static pid_t g_pid SB_HOT;
static pid_t g_vfork_pid SB_HOT;

static void note_fork_child(void)
{
    g_pid = (pid_t)sb_sys4(SYS_getpid, 0, 0, 0, 0);     /* not getpid(): a page of the C library */
    g_vfork_pid = 0;
}

/* Each buffer holds the virtual cwd and, right after its NUL, its real path: one page for both
 * where they are short (two arrays cost every process that sets its cwd two page faults). */
static char g_cwdbuf[2][2 * PATH_MAX] SB_LARGE;
static struct base g_cwdbase[2] SB_HOT;
static unsigned g_cwd_seq SB_HOT;   /* (seq / 2) & 1 is the current buffer */
/* Set by sb_install: the cwd is asked of the kernel where it is first needed, not at start,
 * so that a program that never names a relative path pays neither the getcwd nor the pages
 * of the buffers above.  A chdir seen by the agent makes it known. */
static int g_cwd_unknown SB_HOT;

void sb_set_cwd(const char *vpath)
{
    if (g_pid && getpid() != g_pid) {
        __atomic_store_n(&g_vfork_pid, getpid(), __ATOMIC_RELEASE);
        return;
    }
    unsigned s = __atomic_load_n(&g_cwd_seq, __ATOMIC_ACQUIRE);
    unsigned idx = ((s / 2) + 1) & 1;
    sb_copy(g_cwdbuf[idx], PATH_MAX, vpath);
    struct base *b = &g_cwdbase[idx];
    b->vl = (unsigned)strlen(g_cwdbuf[idx]);
    b->e = NULL;
    if (sb_g_active && vpath[0] == '/' &&
        base_compute(g_cwdbuf[idx], b->vl, g_cwdbuf[idx] + b->vl + 1, b) != 0)
        b->e = NULL;
    __atomic_store_n(&g_cwd_seq, s + 2, __ATOMIC_RELEASE);
    __atomic_store_n(&g_cwd_unknown, 0, __ATOMIC_RELEASE);
}

static int real_cwd_virtual(char *out, size_t size);

void sb_cwd_from_kernel(void)
{
    char v[PATH_MAX];
    if (real_cwd_virtual(v, sizeof v) == 0)
        sb_set_cwd(v);
}

/* The kernel's cwd as a virtual path, reversed in the one buffer (PATH_MAX bytes): this runs
 * deep in a first relative call (an open below the result of its check), where every buffer
 * more is a page of stack more. */
static int real_cwd_here(char *buf)
{
    long n = sb_sys4(SYS_getcwd, (long)buf, PATH_MAX, 0, 0);
    if ((n >= 0 && buf[0] != '/') || n == -ENAMETOOLONG) {
        if (!getcwd(buf, PATH_MAX))     /* the C library's own answer where the kernel has none */
            return errno;
    } else if (n < 0) {
        return (int)-n;
    }
    if (sb_g_active)
        sb_reverse(&g_m, buf, buf, PATH_MAX);
    return 0;
}

static int real_cwd_virtual(char *out, size_t size)
{
    char real[PATH_MAX];
    int rc = real_cwd_here(real);
    if (rc)
        return rc;
    if (strlen(real) + 1 > size)
        return ERANGE;
    strcpy(out, real);
    return 0;
}

/* Copy the cwd (and, when r is not NULL and known, its base) out. */
static int cwd_get(char *buf, size_t size, char *r, struct base *b)
{
    pid_t vf = __atomic_load_n(&g_vfork_pid, __ATOMIC_ACQUIRE);
    if (__builtin_expect(vf != 0, 0)) {
        if (getpid() == vf) {
            if (b)
                b->e = NULL;
            return real_cwd_virtual(buf, size);
        }
        __atomic_compare_exchange_n(&g_vfork_pid, &vf, 0, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
    }
    if (__builtin_expect(__atomic_load_n(&g_cwd_unknown, __ATOMIC_ACQUIRE), 0)) {
        char c[PATH_MAX];
        int rc = real_cwd_here(c);
        if (rc || (g_pid && getpid() != g_pid)) {
            /* the kernel cannot say (a removed cwd: its errno, asked again next time), or a
             * vfork child, whose answer must not become its parent's cwd */
            if (b)
                b->e = NULL;
            if (!rc && strlen(c) + 1 > size)
                rc = ERANGE;
            if (!rc)
                strcpy(buf, c);
            return rc;
        }
        sb_set_cwd(c);
    }
    for (int tries = 0; tries < 8; tries++) {
        unsigned s = __atomic_load_n(&g_cwd_seq, __ATOMIC_ACQUIRE);
        unsigned idx = (s / 2) & 1;
        const char *c = g_cwdbuf[idx];
        size_t l = strnlen(c, PATH_MAX);
        if (l == 0)
            break;
        if (l + 1 > size)
            return ERANGE;
        memcpy(buf, c, l);
        buf[l] = '\0';
        if (b) {
            *b = g_cwdbase[idx];
            if (b->e && b->vl == l)
                memcpy(r, c + l + 1, b->rl + 1);
            else
                b->e = NULL;
        }
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (__atomic_load_n(&g_cwd_seq, __ATOMIC_ACQUIRE) == s)
            return 0;
    }
    if (b)
        b->e = NULL;
    return real_cwd_virtual(buf, size);
}

int sb_getcwd(char *buf, size_t size)
{
    /* The kernel's getcwd, which the program would have made natively, is the only one that
     * knows the directory was removed meanwhile (by any path, by any process): ENOENT then.
     * The name stays the virtual cwd's. */
    char real[PATH_MAX];
    if (sb_sys4(SYS_getcwd, (long)real, sizeof real, 0, 0) == -ENOENT)
        return ENOENT;
    return cwd_get(buf, size, NULL, NULL);
}

/* ---- descriptor table ----------------------------------------------------- */

#define FD_MAX 1024

struct fdslot {
    unsigned seq;
    unsigned len;
    struct base b;
    unsigned quick;             /* a plain name up to this long may be looked up as given */
};

/* The quick verdict's room for a directory slot (see sb_name_verdict), found when it is filled. */
static unsigned quick_lookup_room(const struct base *b, const char *v);
static struct fdslot g_fds[FD_MAX] SB_LARGE;
/* FD_MAX * 2 * FD_PATH (virtual, real), mapped on first use.  Kept small so
 * that a program's few descriptors share a page or two; longer paths are not
 * kept (the kernel is asked through /proc instead). */
#define FD_PATH 512
static char *g_fdpaths SB_HOT;

static inline char *fd_vbuf(int fd) { return g_fdpaths + (size_t)fd * 2 * FD_PATH; }
static inline char *fd_rbuf(int fd) { return fd_vbuf(fd) + FD_PATH; }

/* The paths' room, mapped on first use.  0 if it cannot be. */
static int fd_paths_map(void)
{
    if (__atomic_load_n(&g_fdpaths, __ATOMIC_ACQUIRE))
        return 1;
    void *a = mmap(NULL, (size_t)FD_MAX * 2 * FD_PATH, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (a == MAP_FAILED)
        return 0;
    char *expected = NULL;
    if (!__atomic_compare_exchange_n(&g_fdpaths, &expected, (char *)a, 0,
                                     __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
        munmap(a, (size_t)FD_MAX * 2 * FD_PATH);
    return 1;
}

static void fd_slot_put(int fd, const char *v, size_t l, const char *r, const struct base *b,
                        int notdir);

void sb_fd_note(int fd, const char *vpath)
{
    if (fd < 0 || fd >= FD_MAX || !vpath)
        return;
    size_t l = strlen(vpath);
    char r[PATH_MAX];
    struct base b;
    b.e = NULL;
    if (l + 1 <= FD_PATH && vpath[0] == '/' &&
        (!sb_g_active || (base_compute(vpath, l, r, &b) == 0 && b.rl + 1 <= FD_PATH)))
        fd_slot_put(fd, vpath, l, r, &b, 0);
    else
        sb_fd_forget(fd);
}

/* Fill fd's slot: the virtual path v (l bytes) and, when b->e is known, the base with its real
 * path r.  Readers check seq (odd while written, see fd_table_get). */
static void fd_slot_put(int fd, const char *v, size_t l, const char *r, const struct base *b,
                        int notdir)
{
    if (!fd_paths_map())
        return;
    struct fdslot *s = &g_fds[fd];
    __atomic_add_fetch(&s->seq, 1, __ATOMIC_ACQ_REL);
    memcpy(fd_vbuf(fd), v, l);
    fd_vbuf(fd)[l] = '\0';
    s->len = (unsigned)l;
    s->b = *b;
    s->b.notdir = notdir;
    s->b.vl = b->e ? b->vl : (unsigned)l;
    s->quick = notdir ? 0 : quick_lookup_room(&s->b, v);
    if (b->e) {
        memcpy(fd_rbuf(fd), r, b->rl);
        fd_rbuf(fd)[b->rl] = '\0';
    }
    __atomic_add_fetch(&s->seq, 1, __ATOMIC_ACQ_REL);
}

void sb_fd_forget(int fd)
{
    if (fd < 0 || fd >= FD_MAX)
        return;
    struct fdslot *s = &g_fds[fd];
    if (s->len == 0)
        return;
    __atomic_add_fetch(&s->seq, 1, __ATOMIC_ACQ_REL);
    s->len = 0;
    __atomic_add_fetch(&s->seq, 1, __ATOMIC_ACQ_REL);
}

void sb_fd_forget_range(unsigned int lo, unsigned int hi)
{
    for (unsigned int fd = lo; fd <= hi && fd < FD_MAX; fd++)
        sb_fd_forget((int)fd);
}

/* The table's path for fd (and, when r is not NULL, its base).  1 if known. */
static int fd_table_get(int fd, char *out, size_t outsize, char *r, struct base *b)
{
    if (fd < 0 || fd >= FD_MAX || !g_fdpaths)
        return 0;
    struct fdslot *s = &g_fds[fd];
    unsigned s1 = __atomic_load_n(&s->seq, __ATOMIC_ACQUIRE);
    if (s1 & 1)
        return 0;
    unsigned l = s->len;
    if (l == 0 || l + 1 > outsize)
        return 0;
    memcpy(out, fd_vbuf(fd), l);
    out[l] = '\0';
    if (b) {
        *b = s->b;
        if (b->e)
            memcpy(r, fd_rbuf(fd), b->rl + 1);
    }
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    return __atomic_load_n(&s->seq, __ATOMIC_ACQUIRE) == s1;
}

/* A copy names what the original names: its slot as it is, nothing computed again. */
void sb_fd_dup(int oldfd, int newfd)
{
    if (oldfd == newfd)
        return;
    if (newfd < 0 || newfd >= FD_MAX || oldfd < 0 || oldfd >= FD_MAX || !g_fdpaths) {
        sb_fd_forget(newfd);
        return;
    }
    /* straight from slot to slot (a tree walk dups every directory it opens), then the old
     * slot's sequence number says whether what was copied is whole */
    const struct fdslot *o = &g_fds[oldfd];
    struct fdslot *s = &g_fds[newfd];
    unsigned s1 = __atomic_load_n(&o->seq, __ATOMIC_ACQUIRE);
    unsigned l = o->len;
    if ((s1 & 1) || l == 0) {
        sb_fd_forget(newfd);
        return;
    }
    __atomic_add_fetch(&s->seq, 1, __ATOMIC_ACQ_REL);
    s->len = l;
    s->b = o->b;
    s->quick = o->quick;
    memcpy(fd_vbuf(newfd), fd_vbuf(oldfd), l + 1);
    if (s->b.e)
        memcpy(fd_rbuf(newfd), fd_rbuf(oldfd), s->b.rl + 1);
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    int whole = __atomic_load_n(&o->seq, __ATOMIC_ACQUIRE) == s1;
    if (!whole)
        s->len = 0;
    __atomic_add_fetch(&s->seq, 1, __ATOMIC_ACQ_REL);
}

/* After an open through the agent: the walk that checked the path has just computed what
 * sb_fd_note would compute again from the virtual path (the entry and the real path). */
void sb_fd_note_result(int fd, const struct sb_result *res, int dir)
{
    size_t vl = strlen(res->vpath), rl = strlen(res->rpath);
    const char *r = res->rpath;
    /* "dir/." opened: the walk kept the "/." for the kernel (ENOTDIR on a file), the
     * descriptor is the directory before it */
    if (dir && rl > 3 && memcmp(r + rl - 2, "/.", 2) == 0) {
        rl -= 2;
        if (vl > 3 && memcmp(res->vpath + vl - 2, "/.", 2) == 0)
            vl -= 2;
    }
    /* the walk's own answer only: not a /proc object, not the root, without the "/" or "/."
     * kept at the end for the kernel (sb_resolve), no glob entry to match again */
    if (fd < 0 || fd >= FD_MAX || !sb_g_active || !res->entry || res->magic || g_has_globs ||
        vl < 2 || vl + 1 > FD_PATH || rl < 2 || rl + 1 > FD_PATH || r[0] != '/' ||
        r[rl - 1] == '/' || (r[rl - 1] == '.' && r[rl - 2] == '/') || res->vpath[vl - 1] == '/' ||
        memcmp(r, "/proc/", 6) == 0) {
        if (dir == 1)
            sb_fd_note(fd, res->vpath);
        else
            sb_fd_forget(fd);           /* the kernel names it when asked (sb_fd_path) */
        return;
    }
    /* a file is no base for names: its hash is left to the rare walk that needs it */
    struct base b = { .vl = (unsigned)vl, .rl = (unsigned)rl, .hl = dir ? (unsigned)rl : 0,
                      .e = res->entry, .h = dir ? fnv_add(FNV_INIT, r, rl) : FNV_INIT };
    fd_slot_put(fd, res->vpath, vl, r, &b, !dir);
}

/* Real path behind a descriptor, from the kernel.  0 or errno. */
static int proc_fd_real(pid_t pid, int fd, char *out, size_t outsize)
{
    char link[64];
    if (pid) {
        snprintf(link, sizeof link, "/proc/%d/fd/%d", (int)pid, fd);
    } else if (fd < 0) {
        return EBADF;
    } else {
        /* the number written by hand: the common case, asked by programs that format nothing */
        char digits[16];
        int k = 0;
        unsigned u = (unsigned)fd;
        do
            digits[k++] = (char)('0' + u % 10);
        while ((u /= 10) != 0);
        memcpy(link, "/proc/self/fd/", 14);
        for (int i = 0; i < k; i++)
            link[14 + i] = digits[k - 1 - i];
        link[14 + k] = '\0';
    }
    STAT_INC(readlinks);
    ssize_t n = readlink(link, out, outsize - 1);
    if (n < 0)
        return errno == ENOENT ? EBADF : errno;
    out[n] = '\0';
    return 0;
}

int sb_fd_path(int fd, char *out, size_t outsize)
{
    if (fd_table_get(fd, out, outsize, NULL, NULL)) {
        STAT_INC(fd_hits);
        return 0;
    }
    STAT_INC(fd_misses);
    char real[PATH_MAX];
    int rc = proc_fd_real(0, fd, real, sizeof real);
    if (rc)
        return rc;
    if (real[0] != '/')
        return ENOTDIR;
    if (sb_g_active)
        sb_reverse(&g_m, real, out, outsize);
    else
        sb_copy(out, outsize, real);
    return 0;
}

int sb_fchdir_done(int fd)
{
    char v[PATH_MAX];
    int rc = sb_fd_path(fd, v, sizeof v);
    if (rc == 0)
        sb_set_cwd(v);
    return rc;
}

/* ---- install / configuration --------------------------------------------- */

static int env_true(const char *name)
{
    const char *v = getenv(name);
    return v && *v && strcmp(v, "0") != 0 && strcasecmp(v, "no") != 0 &&
           strcasecmp(v, "false") != 0;
}

static void root_prepare(void);
static int g_hides_names SB_HOT;

/* Read every setting at once, before the agent calls setenv(): some
 * programs (bash) replace getenv/setenv with their own, and after the first
 * setenv their getenv no longer sees the original environment. */
static int g_settings_read SB_HOT;
static void read_settings(void)
{
    const char *cv = getenv(SB_ENV_CACHE);
    g_cache_on = !(cv && strcmp(cv, "0") == 0);
    g_erofs = env_true(SB_ENV_ROFS);
    g_allow_static = env_true(SB_ENV_ALLOW_STATIC);
    g_quiet = env_true(SB_ENV_QUIET);
    const char *cl = getenv(SB_ENV_CLEANUP);
    g_cleanup = !env_true(SB_ENV_KEEP_PRIVATE) && !env_true(SB_ENV_QUIET) &&
                !(cl && strcmp(cl, "0") == 0);
    const char *kv = getenv(SB_ENV_KERNEL);
    g_landlock_wanted = !(kv && strcmp(kv, "0") == 0);
    g_landlock = 0;                     /* until kernel_enforce installs it */
    g_settings_read = 1;
}

void sb_install(struct sb_mounts *m, const char *cwd)
{
    if (sb_g_active)
        sb_mounts_free(&g_m);
    g_m = *m;
    memset(m, 0, sizeof *m);
    sb_g_active = 1;
    root_prepare();
    __atomic_store_n(&sb_listings_filtered, g_hides_names, __ATOMIC_RELEASE);
    sb_cache_flush();
    if (g_fdpaths)                      /* a list installed before (tests): start afresh */
        for (int i = 0; i < FD_MAX; i++)
            sb_fd_forget(i);
    if (cwd)
        sb_set_cwd(cwd);
    else
        __atomic_store_n(&g_cwd_unknown, 1, __ATOMIC_RELEASE);
    if (!g_settings_read)
        read_settings();
    g_settings_read = 0;
}

void sb_uninstall(void)
{
    g_root_e = NULL;
    if (sb_g_active)
        sb_mounts_free(&g_m);
    sb_g_active = 0;
    __atomic_store_n(&sb_listings_filtered, 0, __ATOMIC_RELEASE);
    sb_cache_flush();
}


const struct sb_mounts *sb_current(void)
{
    return sb_g_active ? &g_m : NULL;
}

const char *sb_private_dir(void)
{
    return g_private[0] ? g_private : NULL;
}

static int rm_tree(const char *path)
{
    /* Depth-first removal that never follows a symlink. */
    struct stat st;
    if (lstat(path, &st) < 0)
        return errno;
    if (!S_ISDIR(st.st_mode))
        return unlink(path) < 0 ? errno : 0;
    DIR *d = opendir(path);
    if (!d)
        return errno;
    int rc = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        char child[PATH_MAX];
        if ((size_t)snprintf(child, sizeof child, "%s/%s", path, de->d_name) >= sizeof child) {
            rc = ENAMETOOLONG;
            continue;
        }
        int r = rm_tree(child);
        if (r && !rc)
            rc = r;
    }
    closedir(d);
    if (rmdir(path) < 0 && !rc)
        rc = errno;
    return rc;
}

static void private_end(void)
{
    if (g_cleanup) {
        int rc = rm_tree(g_private);
        if (rc)
            sb_msg_to(report_fd(), "could not remove private directory %s: %s", g_private,
                      strerror(rc));
    } else if (!g_quiet) {
        sb_msg_to(report_fd(), "private directory kept: %s", g_private);
    }
}

void sb_atexit_report(void)
{
    if (!g_private[0] || getpid() != g_private_owner)
        return;
    if (bypass_guard_enter)
        bypass_guard_enter();
    private_end();
    if (bypass_guard_leave)
        bypass_guard_leave();
}

/* The run's first process owns the end of its private directory, however it
 * ends (_exit, a signal) and although its Landlock domain will not let it
 * remove the directory: a helper started before the ruleset, in a session of
 * its own and not a child of the program's (double fork), waits for the
 * process to exit and then removes or reports the directory.  0 if started.
 * The middle process only forks the helper and leaves, so it is a vfork child:
 * the program's memory is copied once, for the helper (about 0.1 ms less). */
static int start_watcher(void)
{
    int pfd = (int)syscall(SYS_pidfd_open, getpid(), 0);
    if (pfd < 0)
        return -1;
    pid_t mid = vfork();
    if (mid == 0) {
        pid_t helper = fork();
        if (helper != 0)
            _exit(helper < 0);
        setsid();
        int ef = g_errfd >= 0 ? g_errfd : pfd;
        int keep[2] = { pfd < ef ? pfd : ef, pfd < ef ? ef : pfd };
        if (keep[0] > 0)
            syscall(SYS_close_range, 0, keep[0] - 1, 0);
        if (keep[1] > keep[0] + 1)
            syscall(SYS_close_range, keep[0] + 1, keep[1] - 1, 0);
        syscall(SYS_close_range, keep[1] + 1, ~0U, 0);
        struct pollfd pl = { .fd = pfd, .events = POLLIN };
        while (poll(&pl, 1, -1) < 0 && errno == EINTR)
            ;
        private_end();
        _exit(0);
    }
    close(pfd);
    if (mid < 0)
        return -1;
    int status = 0;
    while (waitpid(mid, &status, 0) < 0 && errno == EINTR)
        ;
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -1;
}

/* ---- the sealed policy ------------------------------------------------------
 * The run's first process reads the mount list and the settings once and keeps
 * them, as text, in a sealed memfd.  Every process of the run inherits it (the
 * agent keeps it open across exec and guarded like the runtime's own
 * descriptors) and reads its policy from there and from nothing else; the
 * environment only names the descriptor, and every exec puts the run's values
 * back.  So neither a changed BYPASS_* variable nor a rewritten mount-list file
 * can loosen the sandbox of a process of the run. */

#define POLICY_MAGIC "bypass-sandbox-policy 1\n"
#define POLICY_SEALS (F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE)
#define POLICY_FD_MIN 900

extern int bypass_fd_register(int *slot) __attribute__((weak));

static int g_policy_fd SB_HOT = -1;
static char g_mounts_file[PATH_MAX] SB_LARGE;
static int g_tamper_said SB_HOT;
/* "NAME=value" of the variables the run fixes in its children's environment: written where a
 * child is about to start (env_strings), not at start-up, so that a process that starts none
 * pays neither the formatting nor the pages. */
static char g_env_policy[64] SB_HOT;
static char g_env_mounts[PATH_MAX + 32] SB_LARGE;
static char g_env_private[PATH_MAX + 32] SB_LARGE;
static int g_env_policy_fd SB_HOT = -1;       /* the descriptor g_env_policy names */
static int g_env_paths_ready SB_HOT;

static void say_tamper(const char *name, const char *value)
{
    if (__atomic_exchange_n(&g_tamper_said, 1, __ATOMIC_ACQ_REL))
        return;
    sb_msg("a program set %s=%s; the run's sealed policy is kept", name, value);
}

static void policy_keep(int fd)
{
    g_policy_fd = fd;
    if (bypass_fd_register)
        bypass_fd_register(&g_policy_fd);
}

/* Fill the strings above.  The descriptor's number is read each time: the runtime moves the
 * descriptor when the program dup2()s over it.  Two threads may fill them at once; they
 * write the same bytes. */
static void env_strings(void)
{
    int fd = __atomic_load_n(&g_policy_fd, __ATOMIC_ACQUIRE);
    if (__atomic_load_n(&g_env_policy_fd, __ATOMIC_ACQUIRE) != fd) {
        snprintf(g_env_policy, sizeof g_env_policy, "%s=%d", SB_ENV_POLICY, fd);
        __atomic_store_n(&g_env_policy_fd, fd, __ATOMIC_RELEASE);
    }
    if (!__atomic_load_n(&g_env_paths_ready, __ATOMIC_ACQUIRE)) {
        snprintf(g_env_mounts, sizeof g_env_mounts, "%s=%s", SB_ENV_MOUNTS, g_mounts_file);
        snprintf(g_env_private, sizeof g_env_private, "%s=%s", SB_ENV_PRIVATE, g_private);
        __atomic_store_n(&g_env_paths_ready, 1, __ATOMIC_RELEASE);
    }
}

/* v in decimal, written backwards to end (its NUL): the start of the digits.  Not snprintf: the
 * first process would fault in the C library's formatting code for this alone. */
static char *decimal_text(unsigned long v, char *end)
{
    *end = '\0';
    do
        *--end = (char)('0' + v % 10);
    while (v /= 10);
    return end;
}

/* Seal the run's policy: header lines, a blank line, the mount list's text. */
static int policy_make(const char *text, char *err, size_t errsize)
{
    if (strchr(g_mounts_file, '\n') || strchr(g_private, '\n')) {
        snprintf(err, errsize, "%s:0: error: cannot seal the policy: unusual file names",
                 g_mounts_file);
        return -1;
    }
    char owner[24];
    char flags[] = { (char)('0' + g_erofs), (char)('0' + g_allow_static), (char)('0' + g_cleanup),
                     (char)('0' + g_quiet), (char)('0' + g_cache_on), (char)('0' + g_landlock) };
    /* the header's lines and the list, in one write */
    struct iovec v[] = {
        { POLICY_MAGIC "file=", sizeof POLICY_MAGIC - 1 + 5 }, { g_mounts_file, strlen(g_mounts_file) },
        { "\nprivate=", 9 }, { g_private, strlen(g_private) }, { "\nowner=", 7 },
        { NULL, 0 }, { "\nflags=", 7 }, { flags, sizeof flags }, { "\n\n", 2 },
        { (void *)text, strlen(text) },
    };
    v[5].iov_base = decimal_text((unsigned long)(g_private_owner > 0 ? g_private_owner : 0),
                                 owner + sizeof owner - 1);
    v[5].iov_len = strlen(v[5].iov_base);
    size_t total = 0;
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++)
        total += v[i].iov_len;
    int fd = memfd_create("bypass-sandbox-policy", MFD_ALLOW_SEALING);
    long sealed = 0, wrote = 0;
    if (fd < 0 || (wrote = sb_sys4(SYS_writev, fd, (long)v, sizeof v / sizeof v[0], 0)) < 0 ||
        (size_t)wrote != total ||
        (sealed = sb_sys4(SYS_fcntl, fd, F_ADD_SEALS, POLICY_SEALS, 0)) < 0) {
        if (sealed < 0 || wrote < 0)
            errno = (int)-(sealed < 0 ? sealed : wrote);
        else if (fd >= 0)
            errno = ENOSPC;             /* a short write to a memfd: out of memory for it */
        snprintf(err, errsize, "%s:0: error: cannot seal the policy: %s", g_mounts_file,
                 strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    /* inherited by every exec of the run; raw calls: the agent's own fcntl and close wrappers
     * would note and forget a descriptor the program never had */
    int hi = (int)sb_sys4(SYS_fcntl, fd, F_DUPFD, POLICY_FD_MIN, 0);
    if (hi >= 0) {
        sb_sys4(SYS_close, fd, 0, 0, 0);
        fd = hi;
    }
    policy_keep(fd);
    /* the number alone: the children's strings (env_strings) wait for a first child, as in
     * every other process, and their pages with them */
    char digits[24];
    setenv(SB_ENV_POLICY, decimal_text((unsigned long)fd, digits + sizeof digits - 1), 1);
    return 0;
}

/* The policy text behind fd (malloc'd), if fd is a sealed policy.  Raw system calls: by name,
 * fcntl() would reach the agent's own wrapper, and with it a dlsym of the real function, in
 * every process of the run. */
static char *policy_read(int fd)
{
    struct stat st;
    long seals = sb_sys4(SYS_fcntl, fd, F_GET_SEALS, 0, 0);
    if (seals < 0 || (seals & POLICY_SEALS) != POLICY_SEALS ||
        sb_sys4(SYS_fstat, fd, (long)&st, 0, 0) < 0 ||
        st.st_size < (off_t)sizeof POLICY_MAGIC || st.st_size > (16 << 20))
        return NULL;
    char *text = malloc((size_t)st.st_size + 1);
    if (!text)
        return NULL;
    if (sb_sys4(SYS_pread64, fd, (long)text, (long)st.st_size, 0) != st.st_size ||
        memcmp(text, POLICY_MAGIC, sizeof POLICY_MAGIC - 1) != 0 ||
        memchr(text, '\0', (size_t)st.st_size)) {
        free(text);
        return NULL;
    }
    text[st.st_size] = '\0';
    return text;
}

/* A descriptor or pid number as the policy and the environment write it: decimal digits only,
 * below INT_MAX; -1 for anything else.  (Not strtol: its code is pages of the C library that
 * most processes of a run would touch for this alone.) */
static int decimal(const char *s)
{
    long n = 0;
    if (!*s)
        return -1;
    for (; *s; s++) {
        if (*s < '0' || *s > '9' || (n = n * 10 + (*s - '0')) >= INT_MAX)
            return -1;
    }
    return (int)n;
}

/* An inherited policy the environment no longer names: each open descriptor is asked for its
 * seals (one fcntl, which fails at once for anything but a memfd), not for its name in /proc
 * (a readlink each); policy_read checks the seals and the text.  Listed by raw system calls:
 * this runs in the start of every run's first process. */
static int policy_find(void)
{
    /* A run that holds Landlock set no_new_privs, which no process can clear: without it this
     * process is no child of such a run, and listing /proc/self/fd (its entries are made on
     * demand, about 0.1 ms) would find nothing.  A child of a run without kernel enforcement
     * that drops the policy's name this way starts a run of its own, as one that drops every
     * BYPASS_* setting does (README, "Without Landlock"). */
    if (sb_sys4(SYS_prctl, PR_GET_NO_NEW_PRIVS, 0, 0, 0) == 0)
        return -1;
    int d = (int)sb_sys4(SYS_openat, AT_FDCWD, (long)"/proc/self/fd",
                         O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0);
    if (d < 0)
        return -1;
    int found = -1;
    char buf[2048] __attribute__((aligned(8)));
    long got;
    while (found < 0 && (got = sb_sys4(SYS_getdents64, d, (long)buf, sizeof buf, 0)) > 0) {
        for (long off = 0; found < 0 && off < got; ) {
            struct sb_dirent64 *de = (struct sb_dirent64 *)(buf + off);
            off += de->d_reclen;
            int fd = decimal(de->d_name);
            if (fd < 0 || fd == d)
                continue;
            char *text = policy_read(fd);
            if (text)
                found = fd;
            free(text);
        }
    }
    sb_sys4(SYS_close, d, 0, 0, 0);
    return found;
}

static const char *policy_field(const char *text, const char *key, char *out, size_t size)
{
    size_t kl = strlen(key);
    for (const char *l = text; *l && *l != '\n'; l = strchr(l, '\n') + 1) {
        const char *e = strchr(l, '\n');
        if (!e)
            break;
        if ((size_t)(e - l) > kl && memcmp(l, key, kl) == 0 && l[kl] == '=') {
            /* copied by hand: snprintf would fault in the C library's formatting code in
             * every process of the run, most of which never format anything */
            size_t n = (size_t)(e - l) - kl - 1;
            if (n >= size)
                n = size - 1;
            memcpy(out, l + kl + 1, n);
            out[n] = '\0';
            return out;
        }
    }
    out[0] = '\0';
    return out;
}

/* Install the policy a process of the run inherited. */
static int policy_install(int fd, char *text, char *err, size_t errsize)
{
    char owner[32], flags[16];
    policy_field(text, "file", g_mounts_file, sizeof g_mounts_file);
    policy_field(text, "private", g_private, sizeof g_private);
    policy_field(text, "owner", owner, sizeof owner);
    policy_field(text, "flags", flags, sizeof flags);
    if (strlen(flags) == 6) {
        g_erofs = flags[0] == '1';
        g_allow_static = flags[1] == '1';
        g_cleanup = flags[2] == '1';
        g_quiet = flags[3] == '1';
        g_cache_on = flags[4] == '1';
        g_landlock = flags[5] == '1';
    }
    g_settings_read = 1;
    const char *body = text;            /* after the blank line (not strstr: one page less) */
    while (*body && !(body[0] == '\n' && body[1] == '\n'))
        body++;
    if (!*body)
        body = NULL;
    struct sb_mounts m;
    if (!body || sb_mounts_parse(&m, body + 2, g_mounts_file, err, errsize) < 0)
        return -1;
    if (g_private[0] && sb_private_attach_canonical(&m, g_private, 0, err, errsize) < 0) {
        sb_mounts_free(&m);
        return -1;
    }
    g_private_owner = (pid_t)decimal(owner);
    if (g_private[0] && g_private_owner == g_pid) {
        keep_stderr();                  /* the first process of the run, after an exec */
        atexit(sb_atexit_report);
    }
    policy_keep(fd);
    const char *v = getenv(SB_ENV_MOUNTS);
    if (v && strcmp(v, g_mounts_file) != 0)
        say_tamper(SB_ENV_MOUNTS, v);
    v = getenv(SB_ENV_PRIVATE);
    if (v && g_private[0] && strcmp(v, g_private) != 0)
        say_tamper(SB_ENV_PRIVATE, v);
    sb_install(&m, NULL);
    return 0;
}

/* Hold the run to the list with Landlock too; say what that cannot do. */
static void kernel_enforce(const struct sb_mounts *m)
{
    char inexact[1024];
    int rc = sb_landlock_install(m, g_private, bypass_self_path ? bypass_self_path() : NULL,
                                 inexact, sizeof inexact);
    g_landlock = rc == 0;
    if (rc == ENOSYS || rc == EOPNOTSUPP)
        sb_msg("Landlock is not available here (%s): the list is enforced by the preload "
               "layer only, which raw system calls and static programs bypass", strerror(rc));
    else if (rc)
        sb_msg("could not install the Landlock ruleset (%s): the list is enforced by the "
               "preload layer only", strerror(rc));
    else if (inexact[0])
        sb_msg("Landlock holds the list except in %s (a narrower line below): there names "
               "can be listed, nothing created or removed directly, and entries made later "
               "get no access", inexact);
}

/* What a child needs to start its own children, made once in the parent rather than in each
 * fork child (where it would be made again for every exec, on copied pages). */
static void before_fork(void)
{
    if (sb_g_active && g_policy_fd >= 0)
        env_strings();
    if (bypass_self_path)
        bypass_self_path();
}

/* The start-up's account (`bypass run -d process`): the CPU time of each step of a process's
 * start, in the thread's own clock (a clock the kernel keeps to the nanosecond, which neither
 * waiting nor other jobs move).  Asked of the kernel only when that output is on. */
static int startup_timed(void)
{
    return &bypass_debug_mask && (bypass_debug_mask & SB_DEBUG_PROCESS) && bypass_debug_write;
}

static uint64_t cpu_ns(void)
{
    struct timespec t;
    if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t) != 0)
        return 0;
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

/* microseconds, one decimal, as the debug line prints them */
#define US(ns) (unsigned)((ns) / 1000), (unsigned)((ns) / 100 % 10)

static int first_process_init(const char *file, char *err, size_t errsize, uint64_t t0);

int sb_init_from_env(char *err, size_t errsize)
{
    const char *file = getenv(SB_ENV_MOUNTS);
    const char *named = getenv(SB_ENV_POLICY);
    if ((!file || !*file) && !named)
        return 0;
    g_pid = getpid();
    pthread_atfork(before_fork, NULL, note_fork_child);

    int timed = startup_timed();
    uint64_t t0 = timed ? cpu_ns() : 0;
    int fd = -1;
    char *text = NULL;
    if (named && *named) {
        int n = decimal(named);
        if (n >= 0 && (text = policy_read(n)) != NULL)
            fd = n;
    }
    if (!text && (fd = policy_find()) >= 0 && (text = policy_read(fd)) != NULL)
        say_tamper(SB_ENV_POLICY, named ? named : "(nothing)");
    if (text) {
        uint64_t t1 = timed ? cpu_ns() : 0;
        int rc = policy_install(fd, text, err, errsize);
        free(text);
        if (timed && rc == 0) {
            uint64_t t2 = cpu_ns();
            bypass_debug_write(SB_DEBUG_PROCESS, "sandbox start-up, a process of the run (CPU "
                               "time, us): sealed policy checked and read %u.%u, list installed "
                               "%u.%u, in all %u.%u", US(t1 - t0), US(t2 - t1), US(t2 - t0));
        }
        return rc;
    }
    if (named) {
        snprintf(err, errsize, "bypass sandbox: the run's sealed policy (%s=%s) is not open in "
                 "this process; refusing to run without it", SB_ENV_POLICY, named);
        return -1;
    }
    return first_process_init(file, err, errsize, t0);
}

/* The run's private directory (g_private), in base when one is set.  Else in the real place of
 * a PRIVATE line (the real /tmp behind `/tmp PRIVATE`), as systemd's PrivateTmp does: the
 * program cannot name that place, so Landlock has nothing to split around it (one grant for the
 * private directory instead of one per entry of every directory on the way to /var/tmp), other
 * runs' directories there are out of reach with it, and the files land on the file system the
 * program meant.  /var/tmp when no such place takes a directory.  NULL with errno on failure. */
static char *make_private_dir(const struct sb_mounts *m, const char *base)
{
    if (base && *base) {
        snprintf(g_private, sizeof g_private, "%s/bypass-private-XXXXXX", base);
        return mkdtemp(g_private);
    }
    for (int i = 0; i < m->n; i++) {
        const struct sb_entry *e = &m->e[i];
        char real[PATH_MAX];
        struct stat st;
        if (e->kind != SB_PRIVATE || e->glob || e->plen == 1 ||
            sb_prefix_real(m, e, real, sizeof real) != 0 || lstat(real, &st) != 0 ||
            !S_ISDIR(st.st_mode))
            continue;
        int len = snprintf(g_private, sizeof g_private, "%s/bypass-private-XXXXXX", real);
        if (len > 0 && (size_t)len < sizeof g_private && mkdtemp(g_private))
            return g_private;
    }
    snprintf(g_private, sizeof g_private, "/var/tmp/bypass-private-XXXXXX");
    return mkdtemp(g_private);
}

/* The run's first process: read the list and the settings, make the private directory, hold
 * the run with Landlock, seal the policy.  Apart, so that its large buffers do not deepen the
 * stack of every later process, which only reads the sealed policy. */
static __attribute__((noinline)) int first_process_init(const char *file, char *err, size_t errsize,
                                                        uint64_t t0)
{
    char *text;
    int timed = startup_timed();
    uint64_t t_list = 0, t_private = 0, t_landlock = 0, t_seal = 0;
    read_settings();
    snprintf(g_mounts_file, sizeof g_mounts_file, "%s", file);
    const char *private_env = getenv(SB_ENV_PRIVATE);
    if (private_env && *private_env)
        say_tamper(SB_ENV_PRIVATE, private_env);   /* only the run makes its private directory */
    const char *base = getenv(SB_ENV_PRIVATE_BASE);
    text = sb_mounts_read(file, err, errsize);
    if (!text)
        return -1;
    struct sb_mounts m;
    if (sb_mounts_parse(&m, text, file, err, errsize) < 0) {
        free(text);
        return -1;
    }
    char differs[1024];
    if (sb_mounts_parrot_differs(&m, differs, sizeof differs))
        sb_msg("%s: where Parrot would let a later, shorter line win, the longer prefix decides "
               "here: %s", file, differs);
    if (timed)
        t_list = cpu_ns();
    int has_private = 0;
    for (int i = 0; i < m.n; i++)
        if (m.e[i].kind == SB_PRIVATE)
            has_private = 1;
    if (has_private) {
        if (!make_private_dir(&m, base)) {
            snprintf(err, errsize, "%s:0: error: cannot make a private directory in %s: %s",
                     file, base && *base ? base : "/var/tmp", strerror(errno));
            g_private[0] = '\0';
            goto fail;
        }
        /* children that change their uid must still reach the directories below */
        chmod(g_private, 0711);
        char canon[PATH_MAX];
        if (realpath(g_private, canon))
            snprintf(g_private, sizeof g_private, "%s", canon);
        setenv(SB_ENV_PRIVATE, g_private, 1);
        keep_stderr();
        if (sb_private_attach_canonical(&m, g_private, 1, err, errsize) < 0)
            goto fail;
        /* kept in silence: the end of the run has nothing to do, no helper waits for it */
        if ((g_cleanup || !g_quiet) && start_watcher() < 0) {
            g_private_owner = getpid();         /* no helper: the exit handler does what it can */
            atexit(sb_atexit_report);
        }
    } else {
        unsetenv(SB_ENV_PRIVATE);
    }
    if (timed)
        t_private = cpu_ns();
    if (g_landlock_wanted)
        kernel_enforce(&m);
    if (timed)
        t_landlock = cpu_ns();
    if (policy_make(text, err, errsize) < 0)
        goto fail;
    if (timed)
        t_seal = cpu_ns();
    free(text);
    sb_install(&m, NULL);
    if (timed) {
        uint64_t t_end = cpu_ns();
        bypass_debug_write(SB_DEBUG_PROCESS, "sandbox start-up, first process (CPU time, us): "
                           "list read %u.%u, private directory %u.%u, Landlock %u.%u (%d rules), "
                           "policy sealed %u.%u, installed %u.%u, in all %u.%u",
                           US(t_list - t0), US(t_private - t_list), US(t_landlock - t_private),
                           g_landlock ? sb_landlock_rules : 0, US(t_seal - t_landlock),
                           US(t_end - t_seal), US(t_end - t0));
    }
    return 0;
fail:
    free(text);
    sb_mounts_free(&m);
    return -1;
}

void sb_get_stats(struct sb_stats *s)
{
    *s = g_stats;
}

/* ---- permission check ------------------------------------------------------ */

static inline int check_entry(const struct sb_entry *e, int op)
{
    if (!e)
        return 0;
    if (e->kind == SB_DENY)
        return EACCES;
    if (e->kind == SB_ENOENT)
        return ENOENT;
    if (e->kind == SB_PRIVATE && !e->target)
        return EACCES;
    int need;
    switch (op) {
    case SB_OP_READ:   need = SB_R; break;
    case SB_OP_WRITE:
    case SB_OP_CREATE:
    case SB_OP_DELETE: need = SB_W; break;
    case SB_OP_EXEC:   need = SB_X; break;
    default:           need = SB_R | SB_W | SB_X; /* any of them */
        return (e->mode & need) ? 0 : EACCES;
    }
    if (e->mode & need)
        return 0;
    if (need == SB_W && g_erofs)
        return EROFS;
    return EACCES;
}

int sb_check(const struct sb_entry *e, int op)
{
    return check_entry(e, op);
}

/* ---- the walk ------------------------------------------------------------- */

struct walk {
    char *v;               /* virtual prefix resolved so far; "" is the root (cap bytes) */
    size_t vl;
    char *r;               /* its real path; "" is the real root (cap bytes) */
    size_t rl;
    size_t cap;
    const struct sb_entry *e;
    uint64_t h;            /* hash of r[0..hl), extended lazily (walk_hash) */
    size_t hl;
};

static inline uint64_t walk_hash(struct walk *w)
{
    if (w->hl != w->rl) {
        w->h = fnv_add(w->h, w->r + w->hl, w->rl - w->hl);
        w->hl = w->rl;
    }
    return w->h;
}

/* Which prefix lengths occur in the list: most components cannot end an
 * entry's prefix, and this answers that without scanning the list. */
static uint64_t g_plen_bits[64] SB_HOT;  /* 4096-bit filter */

static inline unsigned plen_key_of(size_t len, unsigned char last, unsigned char mid)
{
    return (unsigned)(len * 31u + last * 7u + mid) & 4095u;
}

static inline unsigned plen_key(const char *p, size_t len)
{
    return plen_key_of(len, (unsigned char)p[len - 1], (unsigned char)p[len / 2]);
}

static inline int plen_may_end(unsigned k)
{
    return (g_plen_bits[k / 64] >> (k % 64)) & 1;
}

static void plen_bits_prepare(void)
{
    memset(g_plen_bits, 0, sizeof g_plen_bits);
    for (int i = 0; i < g_m.n; i++) {
        unsigned k = plen_key(g_m.e[i].prefix, g_m.e[i].plen);
        g_plen_bits[k / 64] |= 1ULL << (k % 64);
    }
}

static __attribute__((noinline)) const struct sb_entry *exact_entry_scan(const char *v, size_t vl);

/* Latest entry whose prefix is exactly v[0..vl) ("" = "/"; v[vl] is '\0').  Inline: nearly
 * every component is turned away by the filter, on the hot path of every walk. */
static inline const struct sb_entry *exact_entry(const char *v, size_t vl)
{
    if (vl && !g_has_globs) {
        if (!plen_may_end(plen_key(v, vl)))
            return NULL;
    }
    return exact_entry_scan(v, vl);
}

static const struct sb_entry *exact_entry_scan(const char *v, size_t vl)
{
    const struct sb_entry *best = NULL;
    size_t want = vl ? vl : 1;
    for (int i = 0; i < g_m.n; i++) {
        const struct sb_entry *e = &g_m.e[i];
        if (e->glob) {
            if (vl && sb_entry_covers(e, v) == vl)
                best = e;
            continue;
        }
        if (e->plen != want)
            continue;
        if (vl == 0 ? e->prefix[0] == '/' : memcmp(e->prefix, v, vl) == 0)
            best = e;
    }
    return best;
}

/* Is there an entry strictly below v? */
static int has_nested(const char *v, size_t vl)
{
    for (int i = 0; i < g_m.n; i++) {
        const struct sb_entry *e = &g_m.e[i];
        if (e->glob)
            return 1;                   /* may match below: look, do not guess */
        if (e->plen > vl && (vl == 0 || (memcmp(e->prefix, v, vl) == 0 && e->prefix[vl] == '/')))
            return 1;
    }
    return 0;
}

static int entry_hides(const struct sb_entry *e)
{
    return e->kind == SB_DENY || e->kind == SB_ENOENT || !e->target;
}

/* Recompute r, e, h from v (after "..", a reset, or a new entry). */
static int walk_refresh(struct walk *w)
{
    if (w->vl == 0 && g_root_e) {
        w->v[0] = '\0';
        w->e = g_root_e;
        memcpy(w->r, g_root_r, g_root_rl + 1);
        w->rl = g_root_rl;
        w->h = FNV_INIT;
        w->hl = 0;
        return 0;
    }
    w->v[w->vl] = '\0';
    const char *vp = w->vl ? w->v : "/";
    w->e = sb_lookup(&g_m, vp);
    if (entry_hides(w->e)) {
        memcpy(w->r, w->v, w->vl + 1);         /* identity, only for lstat */
        w->rl = w->vl;
    } else {
        if (sb_translate(w->e, vp, w->r, w->cap))
            return ENAMETOOLONG;
        w->rl = strlen(w->r);
        if (w->rl == 1 && w->r[0] == '/')
            w->rl = 0;
        w->r[w->rl] = '\0';
    }
    w->h = FNV_INIT;
    w->hl = 0;
    return 0;
}

/* The walk state of "/" only changes with the mount list: computed once. */
static void root_prepare(void)
{
    /* the walk of "/" writes no virtual path past its first byte: no room for one (every
     * process makes this walk, and its stack pages are faults) */
    struct walk w;
    char wv[1];
    w.v = wv;
    w.r = g_root_r;
    w.cap = sizeof g_root_r;
    g_root_e = NULL;
    plen_bits_prepare();
    g_hides_names = 0;
    g_has_globs = 0;
    for (int i = 0; i < g_m.n; i++) {
        if (g_m.e[i].kind == SB_ENOENT)
            g_hides_names = 1;
        if (g_m.e[i].glob)
            g_has_globs = 1;
    }
    w.vl = 0;
    if (walk_refresh(&w) == 0) {
        g_root_rl = w.rl;
        g_root_h = w.h;
        (void)g_root_h;
        g_root_e = w.e;
    }
}

static int walk_set(struct walk *w, const char *vpath)
{
    size_t l = strlen(vpath);
    if (l + 1 > w->cap)
        return ENAMETOOLONG;
    if (vpath != w->v)
        memmove(w->v, vpath, l + 1);
    while (l > 0 && w->v[l - 1] == '/')
        l--;
    w->vl = l;
    return walk_refresh(w);
}

static int base_compute(const char *v, size_t vl, char *r, struct base *b)
{
    struct walk w;
    char wv[PATH_MAX];
    if (vl + 1 > sizeof wv)
        return ENAMETOOLONG;
    memcpy(wv, v, vl + 1);
    w.v = wv;
    w.r = r;
    w.cap = PATH_MAX;
    int rc = walk_set(&w, wv);
    if (rc)
        return rc;
    b->vl = (unsigned)w.vl;
    b->rl = (unsigned)w.rl;
    b->notdir = 0;
    b->e = w.e;
    b->h = walk_hash(&w);
    b->hl = (unsigned)w.hl;
    return 0;
}

/* Start a walk at a resolved base (cwd or a directory descriptor).
 * *from_fd: the base is a descriptor this agent opened (its real directory
 * is the one w->r names). */
static int walk_from_base(struct walk *w, int dirfd, int *from_fd, int need_dir)
{
    struct base b;
    int rc;
    *from_fd = 0;
    if (dirfd == AT_FDCWD) {
        /* the real cwd is where the agent's chdir took it: the kernel can walk from there */
        rc = cwd_get(w->v, PATH_MAX, w->r, &b);
        *from_fd = rc == 0 && b.e != NULL;
    } else if (fd_table_get(dirfd, w->v, PATH_MAX, w->r, &b)) {
        STAT_INC(fd_hits);
        *from_fd = b.e != NULL;
        rc = 0;
        struct stat st;
        /* a name below a descriptor that may be a file: the kernel's ENOTDIR if it is one */
        if (need_dir && b.notdir && (fstat(dirfd, &st) < 0 || !S_ISDIR(st.st_mode)))
            rc = ENOTDIR;
    } else {
        b.e = NULL;
        rc = sb_fd_path(dirfd, w->v, PATH_MAX);
        struct stat st;
        /* a name below a descriptor that is no directory: the kernel's ENOTDIR ("" with
         * AT_EMPTY_PATH is the file itself) */
        if (rc == 0 && need_dir && (fstat(dirfd, &st) < 0 || !S_ISDIR(st.st_mode)))
            rc = ENOTDIR;
    }
    if (rc)
        return rc;
    if (w->v[0] != '/')
        return ENOTDIR;
    if (b.e) {                          /* known: no lookup, translation or hashing */
        w->vl = b.vl;
        w->rl = b.rl;
        w->e = b.e;
        w->h = b.h;
        w->hl = b.hl;
        return 0;
    }
    return walk_set(w, w->v);
}

static int walk_push(struct walk *w, const char *c, size_t cl)
{
    if (w->vl + 1 + cl + 1 > w->cap || w->rl + 1 + cl + 1 > w->cap)
        return ENAMETOOLONG;
    w->v[w->vl++] = '/';
    memcpy(w->v + w->vl, c, cl);
    w->vl += cl;
    w->v[w->vl] = '\0';
    const struct sb_entry *x = exact_entry(w->v, w->vl);
    if (x)
        return walk_refresh(w);
    if (entry_hides(w->e)) {
        memcpy(w->r, w->v, w->vl + 1);
        w->rl = w->vl;
        w->h = FNV_INIT;
        w->hl = 0;
        return 0;
    }
    w->r[w->rl++] = '/';
    memcpy(w->r + w->rl, c, cl);
    w->rl += cl;
    w->r[w->rl] = '\0';
    return 0;
}

static int walk_pop(struct walk *w)
{
    while (w->vl > 0 && w->v[w->vl - 1] != '/')
        w->vl--;
    if (w->vl > 0)
        w->vl--;
    return walk_refresh(w);
}

static int is_digits(const char *s, size_t n)
{
    if (n == 0)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!isdigit((unsigned char)s[i]))
            return 0;
    return 1;
}

/* Classify a real path under /proc as a per-process magic link.
 * Returns 0 if not magic; else 1 and sets *pid, *kind ('c' cwd, 'r' root,
 * 'f' fd (with *fd), 'o' other: exe, map_files, ...). */
static int proc_magic(const char *r, pid_t *pid, int *kind, int *fd)
{
    if (strncmp(r, "/proc/", 6) != 0)
        return 0;
    const char *p = r + 6;
    const char *q = strchr(p, '/');
    if (!q || !is_digits(p, (size_t)(q - p)))
        return 0;
    *pid = (pid_t)atoi(p);
    p = q + 1;
    if (strncmp(p, "task/", 5) == 0) {         /* /proc/<pid>/task/<tid>/... */
        p += 5;
        q = strchr(p, '/');
        if (!q || !is_digits(p, (size_t)(q - p)))
            return 0;
        p = q + 1;
    }
    if (strcmp(p, "cwd") == 0) { *kind = 'c'; return 1; }
    if (strcmp(p, "root") == 0) { *kind = 'r'; return 1; }
    if (strncmp(p, "fd/", 3) == 0 && is_digits(p + 3, strlen(p + 3))) {
        *kind = 'f';
        *fd = atoi(p + 3);
        return 1;
    }
    if (strcmp(p, "exe") == 0 || strncmp(p, "map_files/", 10) == 0) {
        *kind = 'o';
        return 1;
    }
    return 0;
}

static int access_covers(int fl, int op)
{
    int acc = fl & O_ACCMODE;
    switch (op) {
    case SB_OP_LOOKUP:
    case SB_OP_CHDIR:
        return 1;
    case SB_OP_READ:
        return acc == O_RDONLY || acc == O_RDWR;
    case SB_OP_WRITE:
    case SB_OP_CREATE:
        return acc == O_WRONLY || acc == O_RDWR;
    default:
        return 0;
    }
}

/* Virtual target of a /proc magic link.  Returns:
 *   0  out holds an absolute virtual path to continue with
 *   1  pass the /proc path itself to the kernel (a pipe, socket, deleted
 *      file or a descriptor the process already holds with enough access)
 *  <0  -errno */
static int magic_target(const char *r, int op, int last, int may_pass, char *out, size_t outsize)
{
    pid_t pid;
    int kind, fd = -1;
    if (!proc_magic(r, &pid, &kind, &fd))
        return -EINVAL;
    int self = pid == getpid();
    if (kind == 'r') {
        snprintf(out, outsize, "/");
        return 0;
    }
    if (kind == 'c' && self) {
        int rc = sb_getcwd(out, outsize);
        return rc ? -rc : 0;
    }
    if (kind == 'f' && self && last && may_pass) {
        int fl = fcntl(fd, F_GETFL);
        if (fl >= 0 && access_covers(fl, op))
            return 1;
    }
    char real[PATH_MAX];
    STAT_INC(readlinks);
    ssize_t n = readlink(r, real, sizeof real - 1);
    if (n < 0)
        return -errno;
    real[n] = '\0';
    size_t dl = strlen(" (deleted)");
    int deleted = (size_t)n > dl && strcmp(real + n - dl, " (deleted)") == 0;
    if (real[0] != '/' || deleted) {
        /* not a path: only someone already holding it may use it */
        return (last && (op == SB_OP_LOOKUP || !may_pass)) ? 1 : -EACCES;
    }
    sb_reverse(&g_m, real, out, outsize);
    return 0;
}

#define MAX_LINKS 40

/* rem = target + "/" + after (after may point into rem). */
static __attribute__((noinline)) int splice_link(char *rem, size_t remsize, const char *target,
                                                 const char *after)
{
    char tmp[PATH_MAX];
    size_t tl = strlen(target), al = strlen(after);
    if (tl + 1 + al + 1 > remsize || al + 1 > sizeof tmp)
        return ENAMETOOLONG;
    memcpy(tmp, after, al + 1);
    memmove(rem, target, tl);
    size_t o = tl;
    if (al) {
        rem[o++] = '/';
        memcpy(rem + o, tmp, al);
        o += al;
    }
    rem[o] = '\0';
    return 0;
}

/* Contents of the symlink at w->r, in the virtual namespace.  0: target
 * holds the path to continue with; 1: pass the /proc path through; else
 * errno. */
/* A place the walk could only see by its path from the walk's directory (dirfd, p[0..n)): see
 * lstat_rel.  p NULL: by its real path. */
struct rel_at {
    int dirfd;
    const char *p;
    size_t n;
};

static __attribute__((noinline)) int read_link(struct walk *w, int op, int last,
                                               char *target, size_t size, int *jumped, int *lookup,
                                               const struct rel_at *rel)
{
    if (w->rl > 6 && !entry_hides(w->e) && strncmp(w->r, "/proc/", 6) == 0) {
        int m = magic_target(w->r, op, last, 1, target, size);
        if (m == 1)
            return last ? -1 : ENOTDIR;
        if (m == 0) {
            *jumped = 1;
            return 0;
        }
        if (m != -EINVAL)
            return -m;
    }
    STAT_INC(readlinks);
    ssize_t n = readlink(w->r, target, size - 1);
    if (n < 0 && errno == EACCES && rel->p) {
        char *pre = alloca(rel->n + 1);
        memcpy(pre, rel->p, rel->n);
        pre[rel->n] = '\0';
        n = readlinkat(rel->dirfd, pre, target, size - 1);
    }
    if (n < 0) {
        *lookup = 2;                    /* the file system's answer, not the policy's */
        return errno;
    }
    target[n] = '\0';
    return 0;
}

/* ---- parent memo ------------------------------------------------------------
 * Programs work on many files of one directory in a row (cp, tar, gcc's
 * includes).  The walk of an absolute path's parent is remembered, keyed by
 * the parent's text, and reused while the directory cache generation is the
 * same: it depends on nothing else (no symlink may have been followed, every
 * directory on the way is one the cache vouches for, and everything that
 * could change those facts in this process flushes the cache). */

#define MEMO_MAX 512
#define MEMO_SLOTS 8                    /* cp and tar alternate between two directories */

struct memo {
    unsigned seq;                       /* odd while written */
    int lock;
    uint32_t gen;
    unsigned klen, vl, rl, hl;
    int ident;                          /* every entry on the way maps a path to itself */
    const struct sb_entry *e;
    uint64_t h;
    char key[MEMO_MAX], v[MEMO_MAX], r[MEMO_MAX];
};
static struct memo g_memo[MEMO_SLOTS] SB_LARGE;
/* Nothing remembered yet: the first look is not a read of the slots' page (the zero page, a
 * fault, and a second one when the first answer is written there). */
static int g_memo_filled SB_HOT;

static inline struct memo *memo_slot(const char *path, size_t klen)
{
    unsigned k = (unsigned)klen * 7u + (unsigned char)path[klen - 1] * 31u +
                 (unsigned char)path[klen / 2] * 13u + (unsigned char)path[klen - 2] * 3u;
    return &g_memo[k % MEMO_SLOTS];
}

static int memo_get(const char *path, size_t klen, struct walk *w, int *ident)
{
    if (!__atomic_load_n(&g_memo_filled, __ATOMIC_ACQUIRE))
        return 0;
    struct memo *m = memo_slot(path, klen);
    unsigned s1 = __atomic_load_n(&m->seq, __ATOMIC_ACQUIRE);
    if ((s1 & 1) || m->klen != klen || m->gen != __atomic_load_n(&g_gen, __ATOMIC_ACQUIRE) ||
        memcmp(m->key, path, klen) != 0)
        return 0;
    unsigned vl = m->vl, rl = m->rl;
    if (vl >= MEMO_MAX || rl >= MEMO_MAX)
        return 0;
    memcpy(w->v, m->v, vl + 1);
    memcpy(w->r, m->r, rl + 1);
    w->vl = vl;
    w->rl = rl;
    w->hl = m->hl;
    w->h = m->h;
    w->e = m->e;
    *ident = m->ident;
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    if (__atomic_load_n(&m->seq, __ATOMIC_ACQUIRE) == s1)
        return 1;
    /* torn by a concurrent update: back to the root the caller started from */
    w->vl = 0;
    walk_refresh(w);
    return 0;
}

static void memo_put(const char *path, size_t klen, uint32_t gen, const struct walk *w, int ident)
{
    if (klen < 2 || klen >= MEMO_MAX || w->vl >= MEMO_MAX || w->rl >= MEMO_MAX)
        return;
    struct memo *m = memo_slot(path, klen);
    if (__atomic_test_and_set(&m->lock, __ATOMIC_ACQUIRE))
        return;
    __atomic_add_fetch(&m->seq, 1, __ATOMIC_ACQ_REL);
    m->gen = gen;
    m->klen = (unsigned)klen;
    memcpy(m->key, path, klen);
    memcpy(m->v, w->v, w->vl);
    m->v[w->vl] = '\0';
    memcpy(m->r, w->r, w->rl);
    m->r[w->rl] = '\0';
    m->vl = (unsigned)w->vl;
    m->rl = (unsigned)w->rl;
    m->hl = (unsigned)w->hl;
    m->h = w->h;
    m->e = w->e;
    m->ident = ident;
    __atomic_add_fetch(&m->seq, 1, __ATOMIC_ACQ_REL);
    __atomic_clear(&m->lock, __ATOMIC_RELEASE);
    if (!__atomic_load_n(&g_memo_filled, __ATOMIC_RELAXED))
        __atomic_store_n(&g_memo_filled, 1, __ATOMIC_RELEASE);
}

/* Follow the symlink the walk stands on: rem becomes target + rest. */
static __attribute__((noinline)) int follow_link(struct walk *w, int op, int last, const char *after,
                                                 char *rem, size_t parent_vl, int *magic, int *jumped,
                                                 int *lookup, const struct rel_at *rel)
{
    char target[PATH_MAX];
    int rc = read_link(w, op, last, target, sizeof target, jumped, lookup, rel);
    if (rc == -1) {                     /* a /proc link to pass through as it is */
        *magic = 1;
        return 0;
    }
    if (rc || (rc = splice_link(rem, PATH_MAX, target, after)))
        return rc;
    w->vl = target[0] == '/' ? 0 : parent_vl;
    return walk_refresh(w);
}

/* lstat of the program's own (dirfd, path[0..n)): the kernel walks a relative
 * path from the directory, which may be searchable where an ancestor is not. */
/* The walk's lstat, made by the system call itself: through the C library's, every fork child
 * that execs (its exec check is its first walk) would look the original up again, on pages of
 * the loader and of the library's symbol tables that the fork left it to fault in anew. */
static int walk_lstat_at(int dirfd, const char *path, struct stat *st)
{
#ifdef SYS_newfstatat
    long rc = sb_sys4(SYS_newfstatat, dirfd, (long)path, (long)st, AT_SYMLINK_NOFOLLOW);
    if (rc < 0) {
        errno = (int)-rc;
        return -1;
    }
    return 0;
#else
    return fstatat(dirfd, path, st, AT_SYMLINK_NOFOLLOW);
#endif
}

static __attribute__((noinline)) int lstat_rel(int dirfd, const char *path, size_t n, struct stat *st)
{
    char *pre = alloca(n + 1);
    memcpy(pre, path, n);
    pre[n] = '\0';
    return walk_lstat_at(dirfd, pre, st);
}

/* A name an ENOENT entry hides must answer a change as a truly missing name
 * beside it would: the parent's refusal, else what the kernel says of a
 * missing name.  Anything else would tell the program the name is there. */
static __attribute__((noinline)) int hidden_name_errno(const struct walk *w, int op)
{
    if (w->e->kind != SB_ENOENT || w->e->plen != w->vl ||
        (op != SB_OP_CREATE && op != SB_OP_WRITE && op != SB_OP_DELETE))
        return ENOENT;
    char parent[PATH_MAX];
    size_t pl = w->vl;
    while (pl > 0 && w->v[pl - 1] != '/')
        pl--;
    if (pl > 1)
        pl--;
    if (pl + 1 > sizeof parent)
        return ENOENT;
    memcpy(parent, w->v, pl);
    parent[pl] = '\0';
    int rc = sb_check(sb_lookup(&g_m, parent), op);
    if (rc)
        return rc;
    return op == SB_OP_CREATE ? EACCES : ENOENT;
}

/* The commonest call of a tree walk (find, cp -r, tar, rm -r, du): one plain name, not
 * followed, below the cwd or a directory the agent opened.  The walk below would take the
 * base as it is, append the name, find no entry starting there and, the name being the last
 * component and not followed, look at nothing on disk: this is that answer without the walk.
 * 1 if answered (res complete), 0 to walk. */
static int name_below_base(int op, int dirfd, const char *name, struct sb_result *res)
{
    const char *end = strchrnul(name, '/');
    size_t nl = (size_t)(end - name);
    if (*end || nl > NAME_MAX || (name[0] == '.' && (nl == 1 || (nl == 2 && name[1] == '.'))))
        return 0;
    struct base b;
    if (dirfd == AT_FDCWD) {
        if (cwd_get(res->vpath, PATH_MAX, res->rpath, &b) != 0)
            return 0;
    } else if (!fd_table_get(dirfd, res->vpath, PATH_MAX, res->rpath, &b)) {
        return 0;
    }
    if (!b.e || b.notdir || entry_hides(b.e) || res->vpath[0] != '/' ||
        b.vl + nl + 2 > PATH_MAX || b.rl + nl + 2 > PATH_MAX)
        return 0;
    if (dirfd != AT_FDCWD)
        STAT_INC(fd_hits);
    char *v = res->vpath + b.vl, *r = res->rpath + b.rl;
    *v++ = '/';
    memcpy(v, name, nl + 1);
    if (exact_entry(res->vpath, b.vl + 1 + nl))
        return 0;                       /* an entry starts at the name: the walk decides */
    *r++ = '/';
    memcpy(r, name, nl + 1);
    res->entry = b.e;
    res->rel_ok = 1;                    /* below the base as given: the kernel walks the name */
    int rc = sb_check(b.e, op);
    if (rc)
        res->vpath[0] = res->rpath[0] = '\0';
    res->err = rc;
    return 1;
}


/* Character i of the virtual path name_below_base would build, base + "/" + name, without
 * building it: the slot's text, the slash, then the name. */
static inline unsigned char joined_at(const char *base, size_t bl, const char *name, size_t i)
{
    return (unsigned char)(i < bl ? base[i] : i == bl ? '/' : name[i - bl - 1]);
}

/* A directory's names may be looked up as the program gives them when the directory's entry
 * allows a lookup and hides nothing, and no entry of the list starts below it (so none starts
 * at a name): the same for every plain name, so answered once, when its slot is filled, and
 * each fstatat of a tree walk then only looks at the name.  0 where the walk must decide. */
static unsigned quick_lookup_room(const struct base *b, const char *v)
{
    const struct sb_entry *e = b->e;
    if (!e || entry_hides(e) || v[0] != '/' || check_entry(e, SB_OP_LOOKUP) != 0 || g_has_globs)
        return 0;
    size_t vl = b->vl;
    for (int i = 0; i < g_m.n; i++) {
        const struct sb_entry *o = &g_m.e[i];
        if (o->plen > vl && (vl == 1 || (o->prefix[vl] == '/' && memcmp(o->prefix, v, vl) == 0)))
            return 0;
    }
    size_t used = (vl > b->rl ? vl : b->rl) + 2;
    if (used + 1 >= PATH_MAX)
        return 0;
    return PATH_MAX - used < NAME_MAX ? (unsigned)(PATH_MAX - used) : NAME_MAX;
}

int sb_name_verdict(int op, int dirfd, const char *name)
{
    if (!sb_g_active || dirfd < 0 || dirfd >= FD_MAX || !g_fdpaths || g_has_globs ||
        (&bypass_debug_mask && (bypass_debug_mask & SB_DEBUG_POLICY)) || !bypass_page_readable(name))
        return -1;
    /* the name to its NUL, within the page just found readable (the rare name that runs into
     * the next page is left to sb_resolve, which checks that page too) */
    static size_t page SB_HOT;
    if (__builtin_expect(!page, 0))
        page = (size_t)sysconf(_SC_PAGESIZE);
    size_t room = page - ((uintptr_t)name & (page - 1));
    size_t nl = strnlen(name, room < NAME_MAX + 1 ? room : NAME_MAX + 1);
    if (nl == 0 || nl > NAME_MAX || nl == room || memchr(name, '/', nl) ||
        (name[0] == '.' && (nl == 1 || (nl == 2 && name[1] == '.'))))
        return -1;
    const struct fdslot *s = &g_fds[dirfd];
    unsigned s1 = __atomic_load_n(&s->seq, __ATOMIC_ACQUIRE);
    if (op == SB_OP_LOOKUP && !(s1 & 1) && s->len && nl <= s->quick) {
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (__atomic_load_n(&s->seq, __ATOMIC_ACQUIRE) == s1) {
            STAT_INC(resolves);
            STAT_INC(fd_hits);
            return 0;
        }
    }
    const struct sb_entry *e = s->b.e;
    size_t bl = s->b.vl;
    const char *base = fd_vbuf(dirfd);
    if ((s1 & 1) || s->len == 0 || !e || s->b.notdir || entry_hides(e) || base[0] != '/' ||
        bl + nl + 2 > PATH_MAX || s->b.rl + nl + 2 > PATH_MAX)
        return -1;
    /* exact_entry's filter on the joined path: an entry may start at the name, the walk decides */
    size_t jl = bl + 1 + nl;
    if (plen_may_end(plen_key_of(jl, joined_at(base, bl, name, jl - 1), joined_at(base, bl, name, jl / 2))))
        return -1;
    int rc = check_entry(e, op);
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    if (__atomic_load_n(&s->seq, __ATOMIC_ACQUIRE) != s1)
        return -1;
    STAT_INC(resolves);
    STAT_INC(fd_hits);
    return rc;
}

static __attribute__((noinline, cold)) void debug_decision(int op, const char *path, const struct sb_result *res)
{
    static const char *const ops[] = {"lookup", "read", "write", "create", "delete", "exec", "chdir"};
    const char *what = op >= 0 && op < (int)(sizeof ops / sizeof ops[0]) ? ops[op] : "?";
    int line = res->entry ? res->entry->line : 0;
    if (res->err)
        bypass_debug_write(SB_DEBUG_POLICY, "%s %s: %s (mount list line %d)", what, path,
                           strerrorname_np(res->err) ? strerrorname_np(res->err) : "E?", line);
    else
        bypass_debug_write(SB_DEBUG_POLICY, "%s %s -> %s (mount list line %d)", what, path,
                           res->rpath[0] ? res->rpath : "as given", line);
}

int sb_resolve(int op, int dirfd, const char *path, int flags, struct sb_result *res)
{
    STAT_INC(resolves);
    res->err = 0;
    res->entry = NULL;
    res->magic = 0;
    res->is_link = 0;
    res->rel_ok = 0;
    if (!path) {
        res->vpath[0] = res->rpath[0] = '\0';
        if (flags & SB_KERNEL_ERRS) {
            res->rel_ok = 1;            /* EFAULT, or whatever the kernel checks first */
            return 0;
        }
        res->err = EFAULT;
        return EFAULT;
    }
    res->rel_ok = 1;
    if (sb_string_unreadable(path)) {
        /* only the kernel can tell (EFAULT): the call as given */
        res->vpath[0] = res->rpath[0] = '\0';
        return 0;
    }
    if (!sb_g_active) {
        sb_copy(res->rpath, sizeof res->rpath, path);
        sb_copy(res->vpath, sizeof res->vpath, path);
        return 0;
    }
    res->rel_ok = 0;
    if (path[0] != '/' && path[0] != '\0' && (flags & (SB_NOFOLLOW | SB_STRICT)) == SB_NOFOLLOW &&
        name_below_base(op, dirfd, path, res)) {
        if (&bypass_debug_mask && (bypass_debug_mask & SB_DEBUG_POLICY))
            debug_decision(op, path, res);
        return res->err;
    }

    struct walk w;
    w.v = res->vpath;                   /* the walk builds the answer in place */
    w.r = res->rpath;
    w.cap = SB_PATH_MAX;
    int rc;
    /* relok: the path is relative to a descriptor this agent opened and the
     * walk stayed plain below it (no "..", no symlink, no other entry), so
     * the kernel may resolve (dirfd, path) itself: same place, shorter walk.
     * ident: every entry met maps paths to themselves, so the kernel's own
     * walk of the program's string reaches the place checked here, with its
     * own meaning of ".", "..", trailing slashes and relative paths. */
    int relok = 0;
    /* lookup: the error is the file system's, not the policy's: 1, the kernel refuses the
     * program's arguments wherever they point (a bad base descriptor, "", a name over
     * PATH_MAX); 2, the walk failed at a real component (missing, not a directory, a link
     * loop or unreadable link), at `p` in the text still to walk */
    int lookup = 0, ident = 1, trailing = 0;
    const char *p = path;
    if (path[0] == '/') {
        w.vl = 0;
        rc = walk_refresh(&w);
    } else if (path[0] == '\0' && !(flags & SB_EMPTY_OK)) {
        rc = ENOENT;
        lookup = 1;
    } else {
        rc = walk_from_base(&w, dirfd, &relok, path[0] != '\0');
        lookup = rc != 0;
    }
    if (rc)
        goto out;
    const struct sb_entry *base_e = w.e;
    /* the walk stays below its relative base while w.v keeps the base's text as its start:
     * a place met after a symlink is then also a relative path from the base (below) */
    size_t base_vl = path[0] == '/' ? 0 : w.vl;
    int left_base = path[0] == '/';
    ident = w.e->kind == SB_IDENTITY;

    size_t plen = strlen(path);
    /* the kernel refuses a longer name outright; realpath (SB_STRICT) takes any length and
     * only its answer must fit */
    if (plen + 1 > PATH_MAX && !(flags & SB_STRICT)) {
        rc = ENAMETOOLONG;
        lookup = 1;
        goto out;
    }
    trailing = plen > 0 && path[plen - 1] == '/';
    int dot_tail = plen > 0 && path[plen - 1] == '.' && (plen == 1 || path[plen - 2] == '/');
    int links = 0;
    int land = 0;                       /* a /proc magic link jumped to the final object */
    char land_path[64];                 /* that link: the kernel reaches the object through it */
    char *rem = NULL;                   /* made once a symlink is met */

    /* the parent memo: absolute paths "/dir/.../name" without a trailing slash */
    size_t klen = 0;
    uint32_t gen0 = __atomic_load_n(&g_gen, __ATOMIC_ACQUIRE);
    int memo = path[0] == '/' && !trailing && g_cache_on;
    if (memo) {
        klen = (size_t)(strrchr(path, '/') - path);
        memo = klen > 1;
        if (memo && memo_get(path, klen, &w, &ident)) {
            STAT_INC(memo_hits);
            p = path + klen;
            memo = 0;                   /* nothing new to remember */
        }
    }

    for (;;) {
        while (*p == '/')
            p++;
        if (!*p)
            break;
        const char *c = p;
        while (*p && *p != '/')
            p++;
        size_t cl = (size_t)(p - c);
        const char *after = p;
        while (*after == '/')
            after++;
        int last = *after == '\0';
        if (c[0] == '.' && (cl == 1 || (cl == 2 && c[1] == '.'))) {
            if (cl == 2) {
                if ((rc = walk_pop(&w)))
                    goto out;
                left_base |= w.vl < base_vl;
                ident &= w.e->kind == SB_IDENTITY;
                /* the kernel's ".." is the same step while it stays inside the entry it
                 * started in (at its root at most): not across a redirect's root */
                if (w.e != base_e || w.vl < (w.e->plen == 1 ? 0 : w.e->plen))
                    relok = 0;
            }
            continue;
        }
        if (memo && last) {
            /* w is the parent, walked from the path's own text without symlinks */
            if (!rem && (size_t)(c - path) == klen + 1)
                memo_put(path, klen, gen0, &w, ident);
            memo = 0;
        }
        size_t parent_vl = w.vl;
        if ((rc = walk_push(&w, c, cl)))
            goto out;
        ident &= w.e->kind == SB_IDENTITY;
        if (w.e != base_e)
            relok = 0;

        int follow = (!last || trailing || !(flags & SB_NOFOLLOW)) && !(land && last);
        if (!follow && !(flags & SB_STRICT))
            continue;
        if (entry_hides(w.e) && !has_nested(w.v, w.vl))
            continue;                   /* nothing to see below: stay lexical */
        if (!last && cache_has(walk_hash(&w), w.r, w.rl)) {
            STAT_INC(cache_hits);
            continue;
        }
        struct stat st;
        STAT_INC(lstats);
        int sr = walk_lstat_at(AT_FDCWD, w.rl ? w.r : "/", &st);
        struct rel_at rel = { dirfd, NULL, 0 };
        if (sr < 0 && (errno == EACCES || errno == ENAMETOOLONG) && (ident || relok) && !rem &&
            path[0] != '/')
            rel.p = path, rel.n = (size_t)(p - path);
        else if (sr < 0 && errno == EACCES && ident && rem && !left_base && w.vl > base_vl)
            /* after a symlink: the same place by its path from the base, which the kernel
             * walks from the directory too (a cwd below a directory this process may not
             * search); every entry maps paths to themselves, so it is the place checked */
            rel.p = w.v + base_vl + 1, rel.n = w.vl - base_vl - 1;
        if (rel.p)
            sr = lstat_rel(dirfd, rel.p, rel.n, &st);
        if (sr < 0) {
            int e = errno;
            if (entry_hides(w.e))
                continue;               /* do not reveal what is behind */
            if (e == ENOENT && !last && has_nested(w.v, w.vl))
                continue;               /* leads to a mount point: exists virtually */
            if (last && !(flags & SB_STRICT) && e == ENOENT)
                break;                  /* may be created */
            rc = e;
            lookup = 2;
            goto out;
        }
        if (S_ISDIR(st.st_mode)) {
            if (!entry_hides(w.e))
                cache_add(walk_hash(&w), w.r, w.rl);
            continue;
        }
        if (!S_ISLNK(st.st_mode)) {
            if (!last || (trailing && (flags & SB_STRICT))) {
                rc = ENOTDIR;
                lookup = 2;
                goto out;
            }
            continue;
        }
        if (!follow) {
            res->is_link = 1;
            continue;
        }
        if (last && trailing && op == SB_OP_DELETE && (flags & SB_NOFOLLOW)) {
            /* rmdir("link/"), unlink("link/"), rename("link/", …) act on the name, which a
             * slash says must be a directory: the kernel refuses, never touches the target */
            rc = ENOTDIR;
            lookup = 2;
            goto out;
        }
        if (++links > MAX_LINKS) {
            rc = ELOOP;
            lookup = 2;
            goto out;
        }
        relok = 0;
        if (!rem)
            rem = alloca(PATH_MAX);
        int magic = 0, jumped = 0;
        char proc[64];
        int have_proc = last && w.rl < sizeof proc;
        if (have_proc)
            memcpy(proc, w.r, w.rl + 1);
        if ((rc = follow_link(&w, op, last, after, rem, parent_vl, &magic, &jumped, &lookup, &rel)))
            goto out;
        left_base |= w.vl < base_vl;
        ident &= w.e->kind == SB_IDENTITY;
        if (magic) {
            res->magic = 1;
            break;
        }
        if (jumped && have_proc) {
            land = 1;
            memcpy(land_path, proc, sizeof proc);
        }
        p = rem;
    }

    res->entry = w.e;
    res->rel_ok = ((relok && !res->magic) || ident) && !entry_hides(w.e);
    if (w.vl == 0)
        strcpy(res->vpath, "/");
    if (w.rl == 0)
        strcpy(res->rpath, "/");
    if (res->magic)
        goto out;                       /* the descriptor already grants the access */
    if ((trailing || dot_tail) && w.rl && w.rl + 3 <= sizeof res->rpath) {
        /* the kernel's own answers: ENOTDIR for "file/", EINVAL for rmdir("d/.") */
        res->rpath[w.rl++] = '/';
        if (dot_tail)
            res->rpath[w.rl++] = '.';
        res->rpath[w.rl] = '\0';
    }
    rc = sb_check(w.e, op);
    if (rc == ENOENT)
        rc = hidden_name_errno(&w, op);
    if (land && !rc)
        strcpy(res->rpath, land_path);  /* the object itself, not what a symlink there names */
out:
    if (rc && lookup && (flags & SB_KERNEL_ERRS) && !(flags & SB_STRICT)) {
        /* The kernel fails too, and says so in its own order (flags before names, the
         * first name before the second, a posix_spawn file action in the child), so it
         * gets the call.  Where every entry met maps paths to themselves, it gets the
         * program's own arguments.  EACCES is the exception there: a directory this
         * process may not search, which the kernel's walk of a relative path never
         * enters, so it may go on where the agent could not look; only a Landlock
         * ruleset holds what it reaches then to the list.  Elsewhere it gets the real
         * path walked so far with the text not yet walked, which fails at the same
         * component (its trailing slashes included). */
        size_t restl = lookup == 2 ? strlen(p) : 0;
        if (lookup == 1 || (ident && (rc != EACCES || g_landlock))) {
            res->rel_ok = 1;
            res->rpath[0] = '\0';
            rc = 0;
        } else if (w.rl + restl + 3 <= PATH_MAX) {
            /* (a link's text replaced the program's: its trailing slash is kept apart) */
            int slash = trailing && (restl == 0 || p[restl - 1] != '/');
            if (w.rl == 0 && p[0] != '/')
                res->rpath[w.rl++] = '/';
            memmove(res->rpath + w.rl, p, restl + 1);
            if (slash)
                strcpy(res->rpath + w.rl + restl, "/");
            rc = 0;
        }
        if (!rc) {
            res->entry = NULL;
            res->vpath[0] = '\0';
        }
    }
    if (rc) {
        res->vpath[0] = res->rpath[0] = '\0';
    }
    res->err = rc;
    if (&bypass_debug_mask && (bypass_debug_mask & SB_DEBUG_POLICY))     /* bypass run -d policy */
        debug_decision(op, path, res);
    return rc;
}

/* Different "mounts": entries that are not the same and at least one of
 * them redirects (or both identity entries sit on different filesystems,
 * which the kernel reports itself). */
static int crosses(const struct sb_entry *a, const struct sb_entry *b)
{
    if (a == b || !a || !b)             /* no entry: a path only the kernel can read */
        return 0;
    if (a->kind == SB_IDENTITY && b->kind == SB_IDENTITY)
        return 0;
    return 1;
}

int sb_resolve_rename(int olddirfd, const char *oldpath, int newdirfd, const char *newpath,
                      struct sb_result *ro, struct sb_result *rn)
{
    int rc = sb_resolve(SB_OP_DELETE, olddirfd, oldpath, SB_NOFOLLOW | SB_KERNEL_ERRS, ro);
    if (rc)
        return rc;
    rc = sb_resolve(SB_OP_CREATE, newdirfd, newpath, SB_NOFOLLOW | SB_KERNEL_ERRS, rn);
    if (rc)
        return rc;
    if (sb_g_active && crosses(ro->entry, rn->entry))
        return rn->err = EXDEV;
    sb_cache_flush();
    return 0;
}

int sb_resolve_link(int olddirfd, const char *oldpath, int newdirfd, const char *newpath,
                    int follow, struct sb_result *ro, struct sb_result *rn)
{
    /* Linking gives a second name with the same permissions: the source must
     * be writable, or a read-only file could be written through the link. */
    int rc = sb_resolve(SB_OP_WRITE, olddirfd, oldpath, (follow ? 0 : SB_NOFOLLOW) | SB_KERNEL_ERRS, ro);
    if (rc)
        return rc;
    rc = sb_resolve(SB_OP_CREATE, newdirfd, newpath, SB_NOFOLLOW | SB_KERNEL_ERRS, rn);
    if (rc)
        return rc;
    if (sb_g_active && crosses(ro->entry, rn->entry))
        return rn->err = EXDEV;
    return 0;
}

int sb_reverse_inplace(char *buf, size_t size)
{
    if (!sb_g_active || buf[0] != '/')
        return 0;
    char tmp[PATH_MAX];
    sb_reverse(&g_m, buf, tmp, sizeof tmp);
    size_t l = strlen(tmp);
    if (l + 1 > size)
        return ERANGE;
    memcpy(buf, tmp, l + 1);
    return 0;
}

ssize_t sb_readlink(const struct sb_result *r, char *buf, size_t size)
{
    char out[PATH_MAX];
    if (!r->rpath[0])
        return -EFAULT;                 /* an unreadable path (sb_resolve) */
    if (sb_g_active && strncmp(r->rpath, "/proc/", 6) == 0) {
        pid_t pid;
        int kind, fd;
        if (proc_magic(r->rpath, &pid, &kind, &fd)) {
            int m = magic_target(r->rpath, SB_OP_LOOKUP, 1, 0, out, sizeof out);
            if (m < 0)
                return m;
            if (m == 1) {
                ssize_t n = readlink(r->rpath, out, sizeof out - 1);
                if (n < 0)
                    return -errno;
                out[n] = '\0';
            }
            size_t l = strlen(out);
            if (l > size)
                l = size;
            memcpy(buf, out, l);
            return (ssize_t)l;
        }
    }
    ssize_t n = readlink(r->rpath, buf, size);
    return n < 0 ? -errno : n;
}

/* ---- exec: static executables ---------------------------------------------- */

/* The exec check runs in the fork child before every exec, where each page touched is a page
 * fault of its own (copy-on-write data, stack, and text the child had not run yet).  So the
 * program's header is read by raw system calls (sb_sys4): not through the agent's own open()
 * and close() (16 KB of stack frame each, and a dlsym of the real function in a child whose
 * parent never called it), nor through the C library's wrappers (their pages and errno). */

/* n bytes at off: from the file's first bytes already read (head, hl of them) when they hold
 * them, else from the file. */
static int read_at(int fd, const unsigned char *head, size_t hl, void *buf, size_t n, uint64_t off)
{
    if (off <= hl && n <= hl - off) {
        memcpy(buf, head + off, n);
        return 0;
    }
    long k = sb_sys4(SYS_pread64, fd, (long)buf, (long)n, (long)off);
    return k == (long)n ? 0 : -1;
}

/* The program headers of a usual executable lie within its first kilobyte, which the caller
 * read once: no system call per header. */
static int elf_static_fd(int fd, const unsigned char *head, size_t hl)
{
    unsigned char id[EI_NIDENT];
    if (read_at(fd, head, hl, id, sizeof id, 0) < 0 || memcmp(id, ELFMAG, SELFMAG) != 0)
        return 0;
    uint64_t phoff;
    unsigned phnum, phentsize;
    if (id[EI_CLASS] == ELFCLASS64) {
        Elf64_Ehdr eh;
        if (read_at(fd, head, hl, &eh, sizeof eh, 0) < 0)
            return -1;
        if (eh.e_type != ET_EXEC && eh.e_type != ET_DYN)
            return 0;
        phoff = eh.e_phoff;
        phnum = eh.e_phnum;
        phentsize = eh.e_phentsize;
        if (phentsize < sizeof(Elf64_Phdr))
            return -1;
        for (unsigned i = 0; i < phnum && i < 4096; i++) {
            Elf64_Phdr ph;
            if (read_at(fd, head, hl, &ph, sizeof ph, phoff + (uint64_t)i * phentsize) < 0)
                return -1;
            if (ph.p_type == PT_INTERP)
                return 0;
        }
        return 1;
    } else if (id[EI_CLASS] == ELFCLASS32) {
        Elf32_Ehdr eh;
        if (read_at(fd, head, hl, &eh, sizeof eh, 0) < 0)
            return -1;
        if (eh.e_type != ET_EXEC && eh.e_type != ET_DYN)
            return 0;
        phoff = eh.e_phoff;
        phnum = eh.e_phnum;
        phentsize = eh.e_phentsize;
        if (phentsize < sizeof(Elf32_Phdr))
            return -1;
        for (unsigned i = 0; i < phnum && i < 4096; i++) {
            Elf32_Phdr ph;
            if (read_at(fd, head, hl, &ph, sizeof ph, phoff + (uint64_t)i * phentsize) < 0)
                return -1;
            if (ph.p_type == PT_INTERP)
                return 0;
        }
        return 1;
    }
    return 0;
}

static int is_loader_name(const char *path)
{
    const char *b = strrchr(path, '/');
    b = b ? b + 1 : path;
    return strncmp(b, "ld-linux", 8) == 0 || strncmp(b, "ld.so", 5) == 0 ||
           strncmp(b, "ld64.so", 7) == 0 || strncmp(b, "ld-musl", 7) == 0;
}

static int elf_is_static_depth(const char *path, int depth, char *why, size_t whysize);

/* A "#!" script: its interpreter decides.  Out of line, so that its 16 KB walk result is on
 * the stack only for scripts: an exec runs in a fork child, where every stack page touched is
 * one more page fault. */
static __attribute__((noinline)) int shebang_is_static(char *head, ssize_t n, int depth, char *why,
                                                         size_t whysize)
{
    head[n] = '\0';
    if (n > 255)                        /* the kernel reads a "#!" line's first 255 bytes */
        head[255] = '\0';
    char *s = head + 2;
    while (*s == ' ' || *s == '\t')
        s++;
    char *e = s;
    while (*e && *e != ' ' && *e != '\t' && *e != '\n' && *e != '\r')
        e++;
    *e = '\0';
    if (!*s)
        return 0;
    /* the interpreter must be allowed to run too (a relative one is found from the
     * cwd, as the kernel does); the kernel runs it by its real path */
    struct sb_result r;
    if (sb_g_active) {
        if (sb_resolve(SB_OP_EXEC, AT_FDCWD, s, 0, &r) != 0) {
            if (why)
                snprintf(why, whysize, "%s", s);
            return -2;
        }
        s = r.rpath;
    }
    int st = elf_is_static_depth(s, depth + 1, why, whysize);
    if (st == 1 && why && why[0] == '\0')
        snprintf(why, whysize, "%s", s);
    return st;
}

static int elf_is_static_depth(const char *path, int depth, char *why, size_t whysize)
{
    int fd = (int)sb_sys4(SYS_openat, AT_FDCWD, (long)path, O_RDONLY | O_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    char head[1024];
    ssize_t n = sb_sys4(SYS_pread64, fd, (long)head, sizeof head - 1, 0);
    if (n >= 2 && head[0] == '#' && head[1] == '!' && depth < 4) {
        sb_sys4(SYS_close, fd, 0, 0, 0);
        return shebang_is_static(head, n, depth, why, whysize);
    }
    int st = elf_static_fd(fd, (const unsigned char *)head, n > 0 ? (size_t)n : 0);
    sb_sys4(SYS_close, fd, 0, 0, 0);
    if (st == 1 && is_loader_name(path))
        st = 0;
    return st;
}

int sb_elf_is_static(const char *realpath_)
{
    return elf_is_static_depth(realpath_, 0, NULL, 0);
}

/* What a refused or noted program is told: apart, with its 8 KB for the interpreter's name,
 * so that the usual exec (a dynamic program, allowed) keeps a shallow stack in the fork child.
 * The check is made again here with the name kept; its result is the one used. */
static __attribute__((noinline, cold)) int exec_check_say(const char *realpath_, const char *vpath)
{
    char why[SB_PATH_MAX];
    why[0] = '\0';
    int st = elf_is_static_depth(realpath_, 0, why, sizeof why);
    if (st == -2) {
        sb_msg("refusing to run %s: its interpreter %s is not allowed to run here",
               vpath ? vpath : realpath_, why);
        return EACCES;
    }
    if (st != 1 || g_allow_static)
        return 0;
    if (g_landlock) {
        /* the kernel holds it to the list's rights; only remapping is lost */
        sb_msg("%s is statically linked: the Landlock ruleset holds it to the list, but it sees "
               "real paths (no remapping, no private directory)", vpath ? vpath : realpath_);
        return 0;
    }
    if (why[0])
        sb_msg("refusing to run %s: its interpreter %s is statically linked, so this "
               "LD_PRELOAD sandbox could not see its calls (set %s=1 to run it anyway)",
               vpath ? vpath : realpath_, why, SB_ENV_ALLOW_STATIC);
    else
        sb_msg("refusing to run %s: statically linked, so this LD_PRELOAD sandbox could "
               "not see its calls (set %s=1 to run it anyway)",
               vpath ? vpath : realpath_, SB_ENV_ALLOW_STATIC);
    return EACCES;
}

int sb_exec_check(const char *realpath_, const char *vpath)
{
    int st = elf_is_static_depth(realpath_, 0, NULL, 0);
    if (st == -2 || (st == 1 && !g_allow_static))
        return exec_check_say(realpath_, vpath);
    return 0;
}

/* ld.so [OPTION]... PROGRAM: the loader maps PROGRAM itself, out of exec's sight (and of
 * Landlock's EXECUTE right), so PROGRAM needs x here.  Apart from sb_loader_check, whose every
 * call would otherwise carry this walk's 16 KB result on the fork child's stack. */
static __attribute__((noinline)) int loader_program_check(const char *program, char *const *argv)
{
    static const char *const with_value[] = {
        "--library-path", "--inhibit-rpath", "--audit", "--preload", "--argv0",
        "--glibc-hwcaps-prepend", "--glibc-hwcaps-mask", NULL,
    };
    for (size_t i = 1; argv[i]; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--") == 0)
            a = argv[++i];
        else if (strncmp(a, "--", 2) == 0) {
            for (size_t k = 0; with_value[k]; k++)
                if (strcmp(a, with_value[k]) == 0 && argv[i + 1])
                    i++;
            continue;
        }
        if (!a)
            return 0;
        struct sb_result r;
        int e = sb_resolve(SB_OP_EXEC, AT_FDCWD, a, 0, &r);
        if (!e)
            e = sb_exec_check(r.rpath, a);
        if (e)
            sb_msg("refusing to run %s through the loader %s: %s", a, program, strerror(e));
        return e;
    }
    return 0;
}

int sb_loader_check(const char *program, char *const *argv)
{
    if (!sb_g_active || sb_string_unreadable(program) || sb_unreadable(argv) || !argv[0] ||
        !is_loader_name(program))
        return 0;
    return loader_program_check(program, argv);
}

int sb_find_program(const void *fa, const char *file, struct sb_result *r)
{
    if (!file || !*file)
        return ENOENT;
    /* sb_spawn_resolve: with posix_spawnp's file actions (fa), a relative name or PATH entry is
     * found from the directory their chdir actions leave the child in, where the C library's
     * search runs; without (fa NULL), from this process's cwd */
    if (strchr(file, '/')) {
        int e = sb_spawn_resolve(fa, SB_OP_EXEC, file, 0, r);
        return e ? e : sb_exec_check(r->rpath, file);
    }
    const char *path = getenv("PATH");
    if (!path)
        path = "/bin:/usr/bin";
    size_t fl = strlen(file);
    int denied = 0;
    for (const char *p = path;; ) {
        const char *end = strchr(p, ':');
        size_t dl = end ? (size_t)(end - p) : strlen(p);
        char cand[PATH_MAX];
        if (dl + 1 + fl + 1 <= sizeof cand) {
            if (dl == 0) {
                memcpy(cand, file, fl + 1);          /* empty entry: the current directory */
            } else {
                memcpy(cand, p, dl);
                cand[dl] = '/';
                memcpy(cand + dl + 1, file, fl + 1);
            }
            int e = sb_spawn_resolve(fa, SB_OP_EXEC, cand, 0, r);
            if (e == EACCES) {
                denied = 1;
            } else if (e == 0) {
                struct stat st;
                if (stat(r->rpath, &st) == 0 && S_ISREG(st.st_mode)) {
                    if (access(r->rpath, X_OK) == 0)
                        return sb_exec_check(r->rpath, cand);
                    denied = 1;
                }
            }
        }
        if (!end)
            break;
        p = end + 1;
    }
    return denied ? EACCES : ENOENT;
}

/* ---- listings ---------------------------------------------------------- */


int sb_listings_filtered SB_HOT;

int sb_name_hidden(int fd, const char *name)
{
    if (!sb_hides_names() || (name[0] == '.' && (!name[1] || (name[1] == '.' && !name[2]))))
        return 0;
    char dir[PATH_MAX];
    if (sb_fd_path(fd, dir, sizeof dir))
        return 0;
    size_t dl = strcmp(dir, "/") == 0 ? 0 : strlen(dir);
    size_t nl = strlen(name);
    if (g_has_globs) {
        char full[PATH_MAX];
        if ((size_t)snprintf(full, sizeof full, "%.*s/%s", (int)dl, dir, name) < sizeof full)
            return sb_lookup(&g_m, full)->kind == SB_ENOENT && sb_lookup(&g_m, dir)->kind != SB_ENOENT;
    }
    for (int i = g_m.n - 1; i >= 0; i--) {
        const struct sb_entry *e = &g_m.e[i];
        if (e->plen != dl + 1 + nl || memcmp(e->prefix, dir, dl) != 0 || e->prefix[dl] != '/' ||
            memcmp(e->prefix + dl + 1, name, nl) != 0)
            continue;
        return e->kind == SB_ENOENT;    /* the latest line for this prefix decides */
    }
    return 0;
}

/* ---- environment of children ------------------------------------------------ */

/* Does entry name the variable of "NAME=value"?  By hand: a fork child runs this before its
 * exec, where each C library function would be a page of code to fault in again. */
static int same_variable(const char *entry, const char *fixed)
{
    while (*fixed && *fixed != '=' && *entry == *fixed)
        entry++, fixed++;
    return *fixed == '=' && *entry == '=';
}

/* The run's own "NAME=value" when entry sets one of the variables the run fixes. */
static const char *forced_entry(const char *entry)
{
    const char *fixed[3] = { g_env_policy, g_env_mounts, g_private[0] ? g_env_private : NULL };
    for (int i = 0; i < 3; i++)
        if (fixed[i] && same_variable(entry, fixed[i]))
            return fixed[i];
    return NULL;
}

char *const *sb_env_fix(char *const *envp, char **room, size_t n)
{
    if (!sb_g_active || g_policy_fd < 0)
        return envp;
    /* whatever the program did to the descriptor's flags, the child inherits it (a raw call:
     * by name, a fork child would reach the agent's own fcntl and look the real one up) */
    sb_sys4(SYS_fcntl, g_policy_fd, F_SETFD, 0, 0);
    env_strings();
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        const char *f = forced_entry(envp[i]);
        if (!f) {
            room[k++] = envp[i];
            continue;
        }
        if (strcmp(f, envp[i]) != 0) {
            size_t nl = strcspn(f, "=");
            char name[64];
            snprintf(name, sizeof name, "%.*s", (int)nl, f);
            say_tamper(name, envp[i] + nl + 1);
        }
    }
    room[k++] = g_env_policy;
    room[k++] = g_env_mounts;
    if (g_private[0])
        room[k++] = g_env_private;
    room[k] = NULL;
    return room;
}

void sb_environ_fix(void)
{
    if (!sb_g_active || g_policy_fd < 0)
        return;
    sb_sys4(SYS_fcntl, g_policy_fd, F_SETFD, 0, 0);
    env_strings();
    char *fixed[3] = { g_env_policy, g_env_mounts, g_private[0] ? g_env_private : NULL };
    for (int i = 0; i < 3; i++) {
        if (!fixed[i])
            continue;
        size_t nl = strcspn(fixed[i], "=") + 1;
        char *const *e = environ;
        while (e && *e && strncmp(*e, fixed[i], nl) != 0)
            e++;
        if (e && *e && strcmp(*e, fixed[i]) == 0)
            continue;
        if (e && *e) {
            char name[64];
            snprintf(name, sizeof name, "%.*s", (int)nl - 1, fixed[i]);
            say_tamper(name, *e + nl);
        }
        putenv(fixed[i]);
    }
}
