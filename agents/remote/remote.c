/*
 * remote.c — remote I/O for the remote agent: placeholders, read-ahead, stdio and directory
 * streams over shadow calls.  See remote.h for the model and remote.bypass for which calls
 * come here.
 *
 * Everything here runs inside agent actions (or, for stdio cookies and the fork hook, inside
 * bypass_guard_enter/leave), so libc calls made here reach libc, not this agent again.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/sysmacros.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "bypass_runtime.h"
#include "rpc_client.h"
#include "bypass_neutral.h"
#include "remote.h"
#include "policy.h"

/* ---- the shadow calls of remote.bypass (generated as bypass_shadow_<name>) ---- */
int bypass_shadow_bypass_rx_open(int dslot, const char *path, int flags, mode_t mode, int cmask, int slot, long id);
int bypass_shadow_bypass_rx_exec_open(int dslot, const char *path, int slot);
int bypass_shadow_bypass_rx_close(int slot);
ssize_t bypass_shadow_bypass_rx_pread(int slot, void *buf, size_t count, off_t offset);
ssize_t bypass_shadow_bypass_rx_write(int slot, const void *buf, size_t count);
ssize_t bypass_shadow_bypass_rx_pwrite(int slot, const void *buf, size_t count, off_t offset);
ssize_t bypass_shadow_bypass_rx_append(int slot, const void *buf, size_t count, off_t offset);
ssize_t bypass_shadow_bypass_rx_badwrite(int slot, size_t count, off_t offset, int flags);
ssize_t bypass_shadow_bypass_rx_mapwrite(int slot, const void *buf, size_t count, off_t offset);
off_t bypass_shadow_bypass_rx_lseek(int slot, off_t offset, int whence);
int bypass_shadow_bypass_rx_fstat(int slot, struct stat *st);
int bypass_shadow_bypass_rx_stat(int dslot, const char *path, int follow, struct stat *st);
int bypass_shadow_bypass_rx_statvfs(int dslot, const char *path, int slot, struct statvfs *buf);
int bypass_shadow_bypass_rx_birth(int dslot, const char *path, int slot, int follow, long *ns);
int bypass_shadow_bypass_rx_statxmask(int dslot, const char *path, int slot, int follow, int mask, long *got);
int bypass_shadow_bypass_rx_fstype(int dslot, const char *path, int slot, long *type);
int bypass_shadow_bypass_rx_pathconf(int dslot, const char *path, int slot, int name, long *value);
int bypass_shadow_bypass_rx_access(int dslot, const char *path, int mode, int follow);
int bypass_shadow_bypass_rx_unlink(int dslot, const char *path, int isdir);
int bypass_shadow_bypass_rx_mkdir(int dslot, const char *path, mode_t mode, int cmask);
int bypass_shadow_bypass_rx_rename(int odslot, const char *oldpath, int ndslot, const char *newpath, int flags);
ssize_t bypass_shadow_bypass_rx_readlink(int dslot, const char *path, char *buf, size_t size);
int bypass_shadow_bypass_rx_symlink(const char *target, int dslot, const char *path);
int bypass_shadow_bypass_rx_link(int odslot, const char *oldpath, int ndslot, const char *newpath, int follow);
int bypass_shadow_bypass_rx_chmod(int dslot, const char *path, int slot, mode_t mode);
int bypass_shadow_bypass_rx_chown(int dslot, const char *path, int slot, int uid, int gid, int follow);
int bypass_shadow_bypass_rx_utimens(int dslot, const char *path, int slot, long asec, long ansec,
                             long msec, long mnsec, int follow);
int bypass_shadow_bypass_rx_ftruncate(int slot, off_t length);
int bypass_shadow_bypass_rx_truncate(int dslot, const char *path, off_t length);
int bypass_shadow_bypass_rx_fsync(int slot);
int bypass_shadow_bypass_rx_setfl(int slot, int flags);
int bypass_shadow_bypass_rx_lock(int slot, int set, struct flock *fl);
int bypass_shadow_bypass_rx_dup(int oldslot, int newslot);
int bypass_shadow_bypass_rx_flock(int slot, int op);
int bypass_shadow_bypass_rx_mknod(int dslot, const char *path, mode_t mode, int cmask, int major, int minor);
int bypass_shadow_bypass_rx_creds(void);
ssize_t bypass_shadow_bypass_rx_realpath(int dslot, const char *path, char *buf, size_t size);
ssize_t bypass_shadow_bypass_rx_getxattr(int dslot, const char *path, int slot, int follow, const char *name,
                                         void *buf, size_t size);
int bypass_shadow_bypass_rx_setxattr(int dslot, const char *path, int slot, int follow, const char *name,
                                     const void *value, size_t size, int flags);
ssize_t bypass_shadow_bypass_rx_getdents(int slot, void *buf, size_t size);
int bypass_shadow_bypass_rx_rewinddir(int slot);
ssize_t bypass_shadow_bypass_rx_fdpath(int slot, char *buf, size_t size);
ssize_t bypass_shadow_bypass_rx_chdir(int dslot, const char *path, char *buf, size_t size);
ssize_t bypass_shadow_bypass_rx_getcwd(char *buf, size_t size);
int bypass_shadow_bypass_rx_keep(const int *slots, const long *ids, int count);
int bypass_shadow_bypass_rx_staged(int slot);
int bypass_shadow_bypass_rx_fallocate(int slot, int mode, off_t offset, off_t length, int posix);
ssize_t bypass_shadow_bypass_rx_copy(int islot, off_t ioff, int oslot, off_t ooff, size_t count, int sendfile);

int remote_call_read(void);     /* in remote.bypass: the generated call number */

/* bypass_rx_read(slot, count, want) with the data received straight into dst. */
static ssize_t rx_read_into(int fd, void *dst, size_t count, size_t want)
{
    bp_mp_writer *w;
    size_t got = 0;
    if (bypass_rpc_begin(remote_call_read(), 3, &w) < 0)
        return -1;
    bp_mp_write_int(w, fd);
    bp_mp_write_uint(w, count);
    bp_mp_write_uint(w, want);
    ssize_t n = bypass_rpc_finish_into(dst, want, &got);
    bypass_rpc_end();
    return n < 0 ? -1 : (ssize_t)got;
}

#define CHUNK 4096                         /* descriptors per table chunk */
#define MAX_FDS (256 * CHUNK)              /* Linux's default nr_open: 1 << 20 */
#define RA_FIRST (64 * 1024)              /* read-ahead starts here and doubles... */
#define RA_MAX_DEFAULT (1024 * 1024)      /* ...up to this (BYPASS_REMOTE_READAHEAD), while reads
                                            stay sequential: big enough to amortize a round
                                            trip, small enough to stay in the CPU caches */
static size_t ra_max = RA_MAX_DEFAULT;
#define PLACEHOLDER_NAME "bypass-remote"
/* While the current directory is remote, the process really sits in an empty local directory
 * of this run (see cwd_marker): it marks the state across exec (the shadow keeps the path). */

/* One open file description as this process sees it (dup'ed descriptors share it). */
#if defined(__x86_64__) && !defined(__ILP32__)
#define RMT_O_LARGEFILE 0100000
#elif defined(__aarch64__)
#define RMT_O_LARGEFILE 0400000
#else
#define RMT_O_LARGEFILE 0
#endif

struct rfile {
    int refs;
    int flags;              /* the open flags, for F_GETFL */
    int is_dir;
    char *ra;               /* read-ahead: bytes the shadow sent beyond what was asked */
    size_t ra_cap, ra_len, ra_pos;
    size_t ra_next;         /* size of the next refill */
    unsigned ra_gen;        /* write_gen when the read-ahead was filled */
    off_t pos;              /* the program's offset, while only this process can move it
                               (-1: ask the shadow); see offset_known */
    unsigned share_gen;     /* share_gen when opened here (0: inherited through exec) */
    struct pol *pol;        /* the shadow's decision for it, and the program's counts (policy.c) */
};

/* Descriptor number -> open file, in chunks allocated when a number that high is first used
 * (a program may dup2 onto its highest allowed descriptor). */
static struct rfile **chunks[MAX_FDS / CHUNK];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static char prefix[PATH_MAX] = "/job";
static size_t prefix_len = 4;
static char cwd[RMT_PATH_MAX];             /* remote current directory ("" = local) */
/* A vfork child runs in its parent's memory: it must not change the table, the standard
 * streams or cwd[] (its calls go to the shadow as its own, see bypass_rpc_shares_memory).
 * It is told apart by its pid. */
static pid_t self_pid;
static pid_t vfork_pid;                    /* the vfork child that set vfork_cwd */
static char vfork_cwd[RMT_PATH_MAX];       /* its current directory */
static unsigned long long ph_count;       /* placeholders this process made (their ids) */
static mode_t cur_umask;                   /* the program's (umask is wrapped) */
/* Bumped by every remote write of this process: read-ahead filled before it may be stale
 * (another descriptor of the same file, a mapping written back) and is given back. */
static unsigned write_gen;

/* Bumped before every fork, exec and spawn (and by a vfork child, in its parent's memory,
 * before it execs): an open file opened before then may share its offset with another
 * process, which can move it behind our back; one opened since cannot. */
static unsigned share_gen = 1;

static void wrote(void)
{
    __atomic_add_fetch(&write_gen, 1, __ATOMIC_RELAXED);
}

/* What the program did, for the I/O report (not what the agent does for it: mappings). */
static __thread int for_mapping;
static void count(int fd, struct rfile *r, int what, ssize_t n)
{
    if (r && !for_mapping)
        pol_count(fd, r->pol, what, n);
}

unsigned rmt_write_gen(void) { return __atomic_load_n(&write_gen, __ATOMIC_RELAXED); }
void rmt_wrote(void) { wrote(); }

static void sync_maps(int fd);

/* the standard streams while their descriptor is remote (see rmt_rebind_std) */
static FILE *orig_std[3], *our_std[3];
static FILE **std_slot(int fd);
static void rebind_std(int fd, const char *mode);
static void unbind_std(int fd);

/* The slot of fd, its chunk allocated (NULL: out of memory or range; errno set). */
static struct rfile **slot_of(int fd)
{
    if (fd < 0 || fd >= MAX_FDS) {
        errno = EBADF;
        return NULL;
    }
    if (!chunks[fd / CHUNK] && !(chunks[fd / CHUNK] = calloc(CHUNK, sizeof(struct rfile *)))) {
        errno = ENOMEM;
        return NULL;
    }
    return &chunks[fd / CHUNK][fd % CHUNK];
}

static struct rfile *get(int fd)
{
    if (fd < 0 || fd >= MAX_FDS || !chunks[fd / CHUNK])
        return NULL;
    return chunks[fd / CHUNK][fd % CHUNK];
}

int rmt_is_fd(int fd)
{
    return get(fd) != NULL;
}

static int in_vfork_child(void);
int rmt_in_vfork(void) { return in_vfork_child(); }

static int in_vfork_child(void)
{
    return getpid() != self_pid;
}

/* For the RPC client: a call from here would use (and break) the parent's connection. */
int bypass_rpc_shares_memory(void)
{
    return in_vfork_child();
}

static const char *cur_cwd(void)
{
    return vfork_pid && vfork_pid == getpid() ? vfork_cwd : cwd;
}

int rmt_is_cwd_remote(void)
{
    return cur_cwd()[0] != 0;
}

/* ---- memory the program hands us -------------------------------------------------------------
 * The kernel answers EFAULT for a bad pointer; reading it here would crash the program.  Pages
 * are checked by the runtime (memory.c) and remembered per thread. */

static uintptr_t page_size;

static int page_ok(uintptr_t a)
{
    return bypass_page_readable((const void *)a);
}

/* How much of [a, a + n) can be read, from a to the first page that cannot.  The kernel reads
 * one byte of each page, up to 128 pages a call (process_vm_readv stops at the first it cannot
 * read: a PROT_NONE page inside a buffer is found, where mincore only tells it is mapped);
 * mincore where that is refused (seccomp, YAMA). */
static size_t readable_prefix(uintptr_t a, size_t n)
{
    uintptr_t lo = a & ~(page_size - 1), hi = (a + n + page_size - 1) & ~(page_size - 1);
    unsigned char sink[128];
    struct iovec there[128];
    int saved = errno;
    for (uintptr_t at = lo; at < hi;) {
        size_t k = 0;
        for (; k < 128 && at + k * page_size < hi; k++)
            there[k] = (struct iovec){ (void *)(at + k * page_size), 1 };
        struct iovec here = { sink, k };
        ssize_t got = process_vm_readv(getpid(), &here, 1, there, k, 0);
        if (got < 0 && (errno == EPERM || errno == ENOSYS))
            got = mincore((void *)at, k * page_size, sink) < 0 ? 0 : (ssize_t)k;
        else if (got < 0)
            got = 0;
        at += (size_t)got * page_size;
        if ((size_t)got < k) {
            errno = saved;
            return at > a ? at - a : 0;
        }
    }
    errno = saved;
    return n;
}

/* Can [p, p + n) be read (or written: a read-only page is not told apart)?  The last range
 * found good is remembered (a program reads into one buffer). */
static __thread uintptr_t ok_lo, ok_hi;

static int range_ok(uintptr_t a, size_t n)
{
    if (n == 0)
        return 1;
    if (a + n < a || a < page_size)
        return 0;
    if (a >= ok_lo && a + n <= ok_hi)
        return 1;
    if (n <= page_size && (a & (page_size - 1)) + n <= page_size)
        return page_ok(a);
    if (readable_prefix(a, n) < n)
        return 0;
    ok_lo = a & ~(page_size - 1);
    ok_hi = (a + n + page_size - 1) & ~(page_size - 1);
    return 1;
}

static int string_ok(const char *s);

int rmt_string_ok(const char *s)
{
    return string_ok(s);
}

static int string_ok(const char *s)
{
    return bypass_string_readable(s);
}

int rmt_is_empty(const char *path)
{
    return path && page_ok((uintptr_t)path) && !path[0];
}

/* EFAULT for memory the kernel would refuse: 0 when fine. */
static int fault(const void *p, size_t n)
{
    if (range_ok((uintptr_t)p, n))
        return 0;
    errno = EFAULT;
    return -1;
}

/* ---- paths --------------------------------------------------------------------------------- */

static int join(char *out, size_t cap, const char *base, const char *rel)
{
    int n = snprintf(out, cap, "%s%s%s", base, base[0] && base[strlen(base) - 1] == '/' ? "" : "/", rel);
    if (n < 0 || (size_t)n >= cap) {
        errno = ENAMETOOLONG;
        return -1;
    }
    return 0;
}

/* "/proc/self/fd/N[/rest]" (also /dev/fd/N, /proc/thread-self/fd/N, /proc/<our pid>/fd/N) of a
 * remote descriptor N names the remote file, never the placeholder: -1 if not one of those. */
static int fd_link(const char *path, const char **rest)
{
    const char *p;
    char *end;
    if (strncmp(path, "/dev/fd/", 8) == 0) {
        p = path + 8;
    } else if (strncmp(path, "/proc/", 6) == 0) {
        p = path + 6;
        if (strncmp(p, "self/fd/", 8) == 0) {
            p += 8;
        } else if (strncmp(p, "thread-self/fd/", 15) == 0) {
            p += 15;
        } else {
            long pid = strtol(p, &end, 10);
            if (end == p || pid != (long)getpid() || strncmp(end, "/fd/", 4) != 0)
                return -1;
            p = end + 4;
        }
    } else {
        return -1;
    }
    if (*p < '0' || *p > '9')
        return -1;
    long fd = strtol(p, &end, 10);
    if ((*end && *end != '/') || fd >= MAX_FDS || !rmt_is_fd((int)fd))
        return -1;
    *rest = end;
    return (int)fd;
}

static int where_named(int dirfd, const char *path, int *dslot, char *rpath, size_t cap)
{
    if (!path)
        return 0;
    if (!string_ok(path)) {
        errno = EFAULT;
        return -1;
    }
    if (strnlen(path, PATH_MAX) >= PATH_MAX) {
        errno = ENAMETOOLONG;    /* the kernel's limit is on the string the program passes */
        return -1;
    }
    if (path[0] == '/' && (path[1] == 'p' || path[1] == 'd')) {
        const char *rest;
        int fd = fd_link(path, &rest);
        if (fd >= 0) {
            /* "" is the file itself (see _full in the shadow); "N/" must be a directory */
            while (rest[0] == '/' && rest[1] == '/')
                rest++;
            if (snprintf(rpath, cap, "%s", !*rest ? "" : rest[1] ? rest + 1 : ".") >= (int)cap) {
                errno = ENAMETOOLONG;
                return -1;
            }
            *dslot = fd;
            return 1;
        }
    }
    if (path[0] == '/') {
        if (strncmp(path, prefix, prefix_len) != 0 || (path[prefix_len] != 0 && path[prefix_len] != '/'))
            return 0;
        const char *rest = path + prefix_len;
        if (snprintf(rpath, cap, "%s", *rest ? rest : "/") >= (int)cap) {
            errno = ENAMETOOLONG;
            return -1;
        }
        *dslot = -1;
        return 1;
    }
    if (!path[0]) {
        if (dirfd == AT_FDCWD ? !cur_cwd()[0] : !rmt_is_fd(dirfd))
            return 0;
        errno = ENOENT;          /* "" is no name, even in a remote directory */
        return -1;
    }
    if (dirfd == AT_FDCWD) {
        const char *here = cur_cwd();
        if (!here[0])
            return 0;
        *dslot = -1;
        return join(rpath, cap, here, path) < 0 ? -1 : 1;
    }
    if (!rmt_is_fd(dirfd))
        return 0;
    if (snprintf(rpath, cap, "%s", path) >= (int)cap) {
        errno = ENAMETOOLONG;
        return -1;
    }
    *dslot = dirfd;
    return 1;
}

/* Whether a remote path has a ".." component: only such a path can climb out of the export. */
static int has_dotdot(const char *p)
{
    for (const char *c = p; (c = strstr(c, "..")) != NULL; c += 2)
        if ((c == p || c[-1] == '/') && (c[2] == 0 || c[2] == '/'))
            return 1;
    return 0;
}

ssize_t bypass_shadow_bypass_rx_escape(int dslot, const char *path, char *buf, size_t size);

/* The export is a directory of the program's root, /job: ".." of its top is "/" here, as for
 * a file system mounted there.  A remote path with ".." is looked up by the shadow (symlinks
 * and all, as the kernel would) as far as its "..": when one climbs above the export, the
 * rest of the path goes on from this machine's "/" (and may come back under /job). */
int rmt_where(int dirfd, const char *path, int *dslot, char *rpath, size_t cap)
{
    int w = where_named(dirfd, path, dslot, rpath, cap);
    for (int hops = 0; w == 1 && has_dotdot(rpath); hops++) {
        char here[RMT_PATH_MAX];
        int e = errno;
        ssize_t n = bypass_shadow_bypass_rx_escape(*dslot, rpath, here, sizeof here - 1);
        errno = e;
        if (n <= 0 || hops >= 40)
            break;               /* it stays in the export (the call itself finds any error) */
        here[n] = 0;
        w = where_named(AT_FDCWD, here, dslot, rpath, cap);
        if (w == 0) {
            if ((size_t)n >= cap) {
                errno = ENAMETOOLONG;
                return -1;
            }
            memcpy(rpath, here, (size_t)n + 1);
            *dslot = RMT_LOCAL_PATH;
        }
    }
    return w;
}

int rmt_where2(int dirfd, const char **path, int *dslot, char *rpath, size_t cap)
{
    int w = rmt_where(dirfd, *path, dslot, rpath, cap);
    if (w == 0 && *dslot == RMT_LOCAL_PATH)
        *path = rpath;
    return w;
}

/* ---- the table ------------------------------------------------------------------------------ */

static struct rfile *new_rfile(int flags)
{
    struct rfile *r = calloc(1, sizeof *r);
    if (r) {
        r->refs = 1;
        r->flags = flags;
        r->ra_next = RA_FIRST;
        r->pos = -1;
    }
    return r;
}

/* Whether r->pos is the open file's offset: it was opened by this process and no fork, exec
 * or spawn happened since (then no other process has it: lseek(fd, 0, SEEK_CUR), what
 * stdio and Python ask of every file they open, needs no round trip).  Under the lock. */
static int offset_known(struct rfile *r)
{
    if (r->share_gen != __atomic_load_n(&share_gen, __ATOMIC_RELAXED))
        r->pos = -1;             /* shared now, perhaps: the shadow's offset is the truth */
    return r->pos >= 0;
}

/* The offset is now `at` (what a read, write or lseek of this process made it), or unknown
 * (-1) after a call that moved it where only the shadow knows. */
static void offset_is(struct rfile *r, off_t at)
{
    if (r->share_gen == __atomic_load_n(&share_gen, __ATOMIC_RELAXED) && !r->is_dir && !(r->flags & O_PATH))
        r->pos = at;
    else
        r->pos = -1;
}

static void offset_moved(struct rfile *r, ssize_t by)
{
    offset_is(r, by >= 0 && offset_known(r) ? r->pos + by : -1);
}

static void unref(struct rfile *r)
{
    if (r && --r->refs == 0) {
        pol_free(r->pol);
        free(r->ra);
        free(r);
    }
}

/* Hand unread read-ahead back: move the shared offset to where the program really is. */
static int give_back(int fd, struct rfile *r)
{
    if (r->pol && pol_settle(fd, r->pol) < 0)
        return -1;
    if (r->ra_pos < r->ra_len) {
        off_t back = (off_t)(r->ra_len - r->ra_pos);
        r->ra_len = r->ra_pos = 0;
        if (bypass_shadow_bypass_rx_lseek(fd, -back, SEEK_CUR) < 0)
            return -1;
    }
    r->ra_len = r->ra_pos = 0;
    return 0;
}

static void settle_locked(void)
{
    for (int c = 0; c < MAX_FDS / CHUNK; c++)
        for (int i = 0; chunks[c] && i < CHUNK; i++)
            if (chunks[c][i] && chunks[c][i]->ra_pos < chunks[c][i]->ra_len)
                give_back(c * CHUNK + i, chunks[c][i]);
}

/* Read-ahead goes back before anything that reads or changes the bytes behind it. */
static void settle_fd(int fd)
{
    pthread_mutex_lock(&lock);
    struct rfile *r = get(fd);
    if (r)
        give_back(fd, r);
    pthread_mutex_unlock(&lock);
}

/* fd's offset was moved by a call of the shadow that does not say where to */
static void forget_offset(int fd)
{
    pthread_mutex_lock(&lock);
    struct rfile *r = get(fd);
    if (r)
        r->pos = -1;
    pthread_mutex_unlock(&lock);
}

void rmt_umask_set(mode_t mask)
{
    __atomic_store_n(&cur_umask, mask & 0777, __ATOMIC_RELAXED);
}

/* Only a process already talking to the shadow tells it; another one is seen as it is when
 * it connects. */
void rmt_creds_changed(void)
{
    if (bypass_rpc_fd() >= 0 && !in_vfork_child() && bypass_shadow_bypass_rx_creds() < 0)
        bypass_log("remote: the shadow could not take on this process's new credentials (%s)",
                   strerror(errno));
}

/* After a spawn returned: a file opened meanwhile by another thread may be the child's too. */
void rmt_children_started(void)
{
    __atomic_add_fetch(&share_gen, 1, __ATOMIC_RELAXED);
}

void rmt_settle_all(void)
{
    __atomic_add_fetch(&share_gen, 1, __ATOMIC_RELAXED);   /* (a vfork child: in its parent) */
    if (in_vfork_child()) {
        pol_settle_for_vfork_child();   /* the parent's held writes: before the exec'd image reads */
        /* The image about to run shares the parent's offsets: the parent's read-ahead goes back
         * (through this child's connection, whose table holds the same open files; the parent
         * is suspended, and its other threads wait for the lock). */
        pthread_mutex_lock(&lock);
        settle_locked();
        pthread_mutex_unlock(&lock);
        return;
    }
    sync_maps(-1);
    pthread_mutex_lock(&lock);
    settle_locked();
    pthread_mutex_unlock(&lock);
    pol_shared(-1);
}

/* Around fork (called by the RPC client): children share offsets, so settle them now, and
 * hold the table's lock through the fork so that the child never inherits it taken. */
void bypass_rpc_before_fork(void)
{
    __atomic_add_fetch(&share_gen, 1, __ATOMIC_RELAXED);
    pthread_mutex_lock(&lock);
    settle_locked();
}

void bypass_rpc_after_fork(int in_child)
{
    if (in_child) {
        pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
        lock = fresh;
        self_pid = getpid();
    } else {
        pthread_mutex_unlock(&lock);
    }
    pol_shared(in_child);
}

int rmt_mkstemp(char *tmpl, int dslot, char *rpath, int suffixlen, int flags, int dir)
{
    static const char letters[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    size_t tl = strlen(tmpl), rl = strlen(rpath);
    if (suffixlen < 0 || tl < 6 + (size_t)suffixlen || rl < 6 + (size_t)suffixlen ||
        memcmp(tmpl + tl - suffixlen - 6, "XXXXXX", 6) != 0) {
        errno = EINVAL;
        return -1;
    }
    char *t = tmpl + tl - suffixlen - 6, *r = rpath + rl - suffixlen - 6;
    for (int attempt = 0; attempt < 100; attempt++) {
        unsigned char rnd[6];
        if (getentropy(rnd, sizeof rnd) != 0)
            return -1;
        for (int i = 0; i < 6; i++)
            t[i] = r[i] = letters[rnd[i] % (sizeof letters - 1)];
        int rc = dir ? rmt_mkdir(dslot, rpath, 0700)
                     : rmt_open(dslot, rpath, O_RDWR | O_CREAT | O_EXCL | (flags & ~O_ACCMODE), 0600);
        if (rc >= 0 || errno != EEXIST)
            return rc;
    }
    errno = EEXIST;
    return -1;
}

int rmt_stage_exec(int dslot, const char *rpath, char *local, size_t cap)
{
    /* not close-on-exec: a script's interpreter opens it by this path after the exec */
    int dst = memfd_create("bypass-exec", 0);
    if (dst < 0)
        return -1;
    /* Read by the memfd's number, outside the table (this may be a vfork child, whose table
     * is its parent's). */
    if (bypass_shadow_bypass_rx_exec_open(dslot, rpath, dst) < 0) {
        int e = errno;
        close(dst);
        errno = e;
        return -1;
    }
    char buf[65536];
    off_t off = 0;
    int rc = 0;
    for (;;) {
        ssize_t k = bypass_shadow_bypass_rx_pread(dst, buf, sizeof buf, off);
        if (k <= 0) {
            rc = (int)k;
            break;
        }
        off += k;
        for (ssize_t done = 0; rc == 0 && done < k;) {
            ssize_t w = write(dst, buf + done, (size_t)(k - done));
            if (w < 0)
                rc = -1;
            else
                done += w;
        }
        if (rc < 0)
            break;
    }
    int e = errno;
    bypass_shadow_bypass_rx_close(dst);
    if (rc < 0) {
        close(dst);
        errno = e;
        return -1;
    }
    snprintf(local, cap, "/proc/self/fd/%d", dst);
    return 0;
}

/* Shared mappings of remote files: anonymous shared memory filled with the file's bytes,
 * written back (the bytes that differ from what was read, so that others' writes in between
 * survive) on msync, munmap, close of the descriptor, exec and exit.  Each holds its own
 * descriptor of the file (a dup), as a kernel mapping holds the file. */
#define RMAP_MAX 64
struct rmap {
    char *addr;
    size_t len;
    off_t off;
    int fd;                  /* the mapping's own descriptor */
    char *orig;              /* the bytes as last read or written back */
};
static struct rmap rmaps[RMAP_MAX];
static pthread_mutex_t rmap_lock = PTHREAD_MUTEX_INITIALIZER;

static int fill_from(int fd, char *p, size_t length, off_t offset)
{
    size_t done = 0;
    while (done < length) {
        for_mapping = 1;
        ssize_t k = rmt_pread(fd, p + done, length - done, offset + (off_t)done);
        for_mapping = 0;
        if (k < 0)
            return -1;
        if (k == 0)
            break;               /* past the end of the file: zeros, as a real mapping */
        done += (size_t)k;
    }
    return 0;
}

/* Write back the changed bytes of m within [lo, hi) (addresses), never past the file's end
 * (a mapping does not grow its file).  Under rmap_lock. */
static int write_back(struct rmap *m, char *lo, char *hi)
{
    struct stat st;
    if (rmt_fstat(m->fd, &st) < 0)
        return -1;
    char *end = m->addr + (st.st_size > m->off ? (size_t)(st.st_size - m->off) : 0);
    if (end > m->addr + m->len)
        end = m->addr + m->len;
    if (hi > end)
        hi = end;
    int rc = 0;
    for (char *p = lo < m->addr ? m->addr : lo; p < hi;) {
        size_t i = (size_t)(p - m->addr);
        if (p[0] == m->orig[i]) {
            p++;
            continue;
        }
        size_t run = 1;
        while (p + run < hi && p[run] != m->orig[i + run])
            run++;
        for (size_t done = 0; done < run;) {
            /* at the offset, also in an O_APPEND file (where pwrite would append) */
            settle_fd(m->fd);
            size_t want = run - done < BYPASS_RPC_MAX_PAYLOAD ? run - done : BYPASS_RPC_MAX_PAYLOAD;
            ssize_t k = bypass_shadow_bypass_rx_mapwrite(m->fd, p + done, want, m->off + (off_t)(i + done));
            wrote();
            if (k <= 0) {
                rc = -1;
                break;
            }
            done += (size_t)k;
        }
        memcpy(m->orig + i, p, run);
        p += run;
    }
    return rc;
}

static int rmaps_used;

/* Drop m; its descriptor is returned for the caller to close once rmap_lock is released. */
static int forget_map(struct rmap *m)
{
    int fd = m->fd;
    free(m->orig);
    memset(m, 0, sizeof *m);
    __atomic_sub_fetch(&rmaps_used, 1, __ATOMIC_RELAXED);
    return fd;
}

/* fexecve/execveat(fd, "", AT_EMPTY_PATH) of a script whose descriptor is close-on-exec: the
 * interpreter could not open /dev/fd/N after the exec, so the kernel refuses with ENOENT. */
int rmt_exec_script_hidden(int fd, const char *local)
{
    int flags = fcntl(fd, F_GETFD);
    char head[2];
    if (flags < 0 || !(flags & FD_CLOEXEC) || strncmp(local, "/proc/self/fd/", 14) != 0)
        return 0;
    int copy = atoi(local + 14);
    if (pread(copy, head, 2, 0) != 2 || head[0] != '#' || head[1] != '!')
        return 0;
    close(copy);
    errno = ENOENT;
    return 1;
}

void *rmt_mmap(void *addr, size_t length, int prot, int flags, int fd, off_t offset)
{
    int shared = (flags & MAP_SHARED) && !(flags & MAP_PRIVATE);
    struct rfile *r = get(fd);
    int acc = r ? (r->flags & O_ACCMODE) : O_RDONLY;
    if (!(offset & (off_t)(page_size - 1)) && r && (r->flags & O_PATH)) {
        errno = EBADF;           /* after the offset, an O_PATH descriptor is not open for I/O */
        return MAP_FAILED;
    }
    if (length == 0 || (offset & (off_t)(page_size - 1))) {
        errno = EINVAL;          /* the kernel checks the arguments before the file */
        return MAP_FAILED;
    }
    if (acc == O_WRONLY || (shared && (prot & PROT_WRITE) && acc != O_RDWR)) {
        errno = EACCES;          /* as the kernel: readable, and writable for shared writes */
        return MAP_FAILED;
    }
    if (r && r->is_dir) {
        errno = ENODEV;          /* a directory has no pages to map */
        return MAP_FAILED;
    }
    int anon = (flags & ~(MAP_SHARED | MAP_PRIVATE)) | MAP_ANONYMOUS | (shared ? MAP_SHARED : MAP_PRIVATE);
    void *p = mmap(addr, length, prot | PROT_WRITE, anon, -1, 0);
    if (p == MAP_FAILED)
        return p;
    if (fill_from(fd, p, length, offset) < 0) {
        int e = errno;
        munmap(p, length);
        errno = e;
        return MAP_FAILED;
    }
    if (shared) {
        pthread_mutex_lock(&rmap_lock);
        struct rmap *m = NULL;
        for (int i = 0; i < RMAP_MAX && !m; i++)
            if (!rmaps[i].addr)
                m = &rmaps[i];
        int own = m ? fcntl(fd, F_DUPFD_CLOEXEC, 0) : -1;
        char *orig = own >= 0 ? malloc(length) : NULL;
        if (!orig || rmt_dup_done(fd, own) < 0) {
            int e = m ? (orig ? errno : ENOMEM) : ENFILE;
            if (own >= 0)
                close(own);
            free(orig);
            pthread_mutex_unlock(&rmap_lock);
            munmap(p, length);
            errno = e;
            return MAP_FAILED;
        }
        memcpy(orig, p, length);
        *m = (struct rmap){ p, length, offset, own, orig };
        __atomic_add_fetch(&rmaps_used, 1, __ATOMIC_RELAXED);
        pthread_mutex_unlock(&rmap_lock);
    }
    if (!(prot & PROT_WRITE))
        mprotect(p, length, prot);
    return p;
}

/* msync/munmap of [addr, addr + len): write back the shared remote mappings it touches;
 * unmapping drops those it covers whole. */
int rmt_sync_range(void *addr, size_t len, int unmapping)
{
    int rc = 0, done[RMAP_MAX], ndone = 0;
    char *lo = addr, *hi = (char *)addr + len;
    if (!__atomic_load_n(&rmaps_used, __ATOMIC_RELAXED))
        return 0;
    pthread_mutex_lock(&rmap_lock);
    for (int i = 0; i < RMAP_MAX; i++) {
        struct rmap *m = &rmaps[i];
        if (!m->addr || hi <= m->addr || lo >= m->addr + m->len)
            continue;
        if (write_back(m, lo, hi) < 0)
            rc = -1;
        if (unmapping && lo <= m->addr && hi >= m->addr + m->len)
            done[ndone++] = forget_map(m);
    }
    pthread_mutex_unlock(&rmap_lock);
    while (ndone > 0)
        rmt_close(done[--ndone]);
    return rc;
}

/* close of fd, exec, exit: every mapping of that file (fd < 0: every one) is written back. */
static void sync_maps(int fd)
{
    if (in_vfork_child() || !__atomic_load_n(&rmaps_used, __ATOMIC_RELAXED))
        return;
    pthread_mutex_lock(&rmap_lock);
    for (int i = 0; i < RMAP_MAX; i++) {
        struct rmap *m = &rmaps[i];
        if (m->addr && (fd < 0 || get(fd) == get(m->fd)))
            write_back(m, m->addr, m->addr + m->len);
    }
    pthread_mutex_unlock(&rmap_lock);
}

__attribute__((destructor)) static void maps_at_exit(void)
{
    bypass_guard_enter();
    sync_maps(-1);
    bypass_guard_leave();
}

/* The placeholder is an O_PATH descriptor of an empty memfd: any kernel call the agent does
 * not forward (ioctl, fsetxattr, splice, a raw syscall...) fails with EBADF instead of acting
 * on the memfd.  Its name carries the open flags (for F_GETFL after an exec) and an id the
 * shadow files with the open file: a copy the kernel made where the agent could not see it
 * (dup2 in a vfork child or in posix_spawn file actions) is recognized after the exec. */
static int placeholder(int flags, long long id)
{
    int cloexec = (flags & O_CLOEXEC) != 0;
    char name[64];
    snprintf(name, sizeof name, PLACEHOLDER_NAME ":%x:%llx", (unsigned)(flags & ~O_CLOEXEC), id);
    int m = memfd_create(name, cloexec ? MFD_CLOEXEC : 0);
    if (m < 0)
        return -1;
    char self[40];
    snprintf(self, sizeof self, "/proc/self/fd/%d", m);
    int p = open(self, O_PATH | O_CLOEXEC);
    if (p < 0)
        return m;                       /* no /proc: a plain (empty) memfd */
    int rc = dup3(p, m, cloexec ? O_CLOEXEC : 0);
    int e = errno;
    close(p);
    if (rc < 0) {
        close(m);
        errno = e;
        return -1;
    }
    return m;
}

/* Flag combinations the kernel refuses before it reads the path (O_CREAT|O_DIRECTORY since
 * Linux 6.4): asked of this kernel with a path that can name nothing, so the answer is its own. */
int rmt_open_flags_bad(int flags)
{
    if (!((flags & O_CREAT) && (flags & O_DIRECTORY)))
        return 0;
    if (syscall(SYS_openat, -1, "", flags, 0) < 0 && errno == EINVAL)
        return 1;
    return 0;
}

int rmt_open(int dslot, const char *rpath, int flags, mode_t mode)
{
    if (in_vfork_child()) {
        errno = ENOTSUP;         /* the table is the parent's: a vfork child may chdir, dup, exec */
        return -1;
    }
    struct pol_choice choice;
    int elsewhere = pol_choose(&dslot, &rpath, flags, mode, &choice);
    if (elsewhere != -2)
        return elsewhere;        /* a local: or URL remap, opened here */
    long long id = ((long long)getpid() << 32) | (long long)__atomic_add_fetch(&ph_count, 1, __ATOMIC_RELAXED);
    /* (taken before the placeholder exists: a child spawned meanwhile bumps it) */
    unsigned gen = __atomic_load_n(&share_gen, __ATOMIC_RELAXED);
    int ph = placeholder(flags, id);
    if (ph < 0)
        return -1;
    pthread_mutex_lock(&lock);
    struct rfile **slot = slot_of(ph);
    struct rfile *r = slot ? new_rfile(flags) : NULL;
    int rc = r ? bypass_shadow_bypass_rx_open(dslot, rpath, flags, mode, (int)cur_umask, ph, id) : -1;
    if (rc < 0) {
        int e = r ? errno : slot ? ENOMEM : EMFILE;
        pthread_mutex_unlock(&lock);
        free(r);
        close(ph);
        errno = e;
        return -1;
    }
    if (flags & O_TRUNC)
        wrote();
    r->is_dir = rc == 1;         /* the shadow says whether it opened a directory */
    r->share_gen = gen;
    offset_is(r, 0);
    r->pol = pol_new(&choice, flags, ph);
    *slot = r;
    pthread_mutex_unlock(&lock);
    return ph;
}

int rmt_close(int fd)
{
    if (in_vfork_child())
        return close(fd);        /* the child's descriptor only: the parent's file stays open */
    sync_maps(fd);
    pthread_mutex_lock(&lock);
    struct rfile *r = get(fd);
    if (!r) {
        pthread_mutex_unlock(&lock);
        errno = EBADF;
        return -1;
    }
    if (r->refs == 1)
        give_back(fd, r);        /* the offset may be shared with other processes */
    *slot_of(fd) = NULL;
    int rc = r->pol ? pol_close(fd, r->pol, r->refs == 1) : bypass_shadow_bypass_rx_close(fd);
    int e = errno;
    unref(r);
    pthread_mutex_unlock(&lock);
    close(fd);                   /* the placeholder */
    if (fd >= 0 && fd <= 2 && our_std[fd]) {
        /* no flush here: this may be fclose() of that very stream calling us back */
        if (*std_slot(fd) == our_std[fd])
            *std_slot(fd) = orig_std[fd];
        our_std[fd] = NULL;
    }
    errno = e;
    return rc;
}

void rmt_forget(int fd)
{
    if (in_vfork_child())
        return;
    pthread_mutex_lock(&lock);
    struct rfile *r = get(fd);
    if (r) {
        *slot_of(fd) = NULL;
        if (r->pol)
            pol_close(fd, r->pol, r->refs == 1);
        else
            bypass_shadow_bypass_rx_close(fd);
        unref(r);
    }
    pthread_mutex_unlock(&lock);
    unbind_std(fd);
}

/* The kernel's first checks of sendfile (copy = 0) and copy_file_range (copy = 1): a closed
 * or O_PATH descriptor is EBADF; copy_file_range then refuses directories (EISDIR), and
 * both want in_fd readable, out_fd writable (copy_file_range: and not O_APPEND). */
int rmt_transfer_fds_ok(int in_fd, int out_fd, int copy)
{
    int fds[2] = { in_fd, out_fd }, fl[2];
    for (int i = 0; i < 2; i++) {
        struct rfile *r = get(fds[i]);
        fl[i] = r ? r->flags : fcntl(fds[i], F_GETFL);
        if (fl[i] < 0 || (fl[i] & O_PATH)) {
            errno = EBADF;
            return 0;
        }
    }
    for (int i = 0; copy == 1 && i < 2; i++) {
        struct rfile *r = get(fds[i]);
        struct stat st;
        if (r ? r->is_dir : (fstat(fds[i], &st) == 0 && S_ISDIR(st.st_mode))) {
            errno = EISDIR;
            return 0;
        }
    }
    if ((fl[0] & O_ACCMODE) == O_WRONLY || (fl[1] & O_ACCMODE) == O_RDONLY || (copy == 1 && (fl[1] & O_APPEND))) {
        errno = EBADF;
        return 0;
    }
    if (copy == 0 && (fl[1] & O_APPEND)) {
        errno = EINVAL;          /* sendfile never writes to an O_APPEND file */
        return 0;
    }
    return 1;
}

/* realpath/canonicalize_file_name resolve in user space, where PATH_MAX does not bound what
 * the program passes: drop the "./" steps that change nothing, so the rest may fit. */
const char *rmt_squeeze_path(const char *path, char *buf, size_t cap)
{
    if (!path || !string_ok(path) || strnlen(path, PATH_MAX) < PATH_MAX)
        return path;
    size_t n = 0;
    const char *p = path;
    if (*p == '/')
        buf[n++] = *p++;
    while (*p) {
        if (p[0] == '/' && (n == 0 || buf[n - 1] == '/')) {
            p++;
            continue;
        }
        if (p[0] == '.' && p[1] == '/' && (n == 0 || buf[n - 1] == '/')) {
            p += 2;
            continue;
        }
        if (n + 1 >= cap)
            return path;
        buf[n++] = *p++;
    }
    buf[n] = 0;
    return n ? buf : path;
}

/* close_range/closefrom closed placeholders in [first, last]: their remote files go too. */
void rmt_forget_range(unsigned first, unsigned last)
{
    if (last >= MAX_FDS)
        last = MAX_FDS - 1;
    for (unsigned fd = first; fd <= last; fd++) {
        if (!chunks[fd / CHUNK]) {
            fd |= CHUNK - 1;        /* a chunk never used holds no remote descriptor */
            continue;
        }
        if (rmt_is_fd((int)fd))
            rmt_forget((int)fd);
    }
}

int rmt_dup_done(int oldfd, int newfd)
{
    if (in_vfork_child())
        return 0;                /* the exec'd image finds the copy by its placeholder id */
    pthread_mutex_lock(&lock);
    struct rfile *r = get(oldfd);
    struct rfile **slot = r ? slot_of(newfd) : NULL;
    if (!slot) {
        if (!r)
            errno = EBADF;
        pthread_mutex_unlock(&lock);
        return -1;
    }
    if (*slot && *slot != r)
        unref(*slot);
    int rc = bypass_shadow_bypass_rx_dup(oldfd, newfd);
    if (rc == 0) {
        r->refs++;
        *slot = r;
    } else {
        *slot = NULL;
    }
    pthread_mutex_unlock(&lock);
    return rc;
}

/* ---- data ------------------------------------------------------------------------------------- */

/* The part of a transfer of n bytes that one shadow call carries (a short count, as the kernel
 * may give, beyond it). */
static inline size_t carried(size_t n)
{
    return n > BYPASS_RPC_MAX_PAYLOAD ? BYPASS_RPC_MAX_PAYLOAD : n;
}

/* One fetch from the shadow for a read of n bytes into dst: straight in when big, else through
 * the read-ahead buffer.  *asked: how many it asked for (fewer back: the end of the file).
 * Returns the bytes put into dst, or -1.  Under the lock. */
static ssize_t fetch(int fd, struct rfile *r, char *dst, size_t n, size_t *asked)
{
    if (n >= ra_max) {
        *asked = carried(n);
        return rx_read_into(fd, dst, *asked, *asked);
    }
    *asked = n;
    size_t want = r->ra_next > n ? r->ra_next : n;
    if (r->ra_cap < want) {
        char *p = realloc(r->ra, want);
        if (!p) {
            errno = ENOMEM;
            return -1;
        }
        r->ra = p;
        r->ra_cap = want;
    }
    /* the shadow sends `want` bytes, or only `n` when the offset is shared */
    r->ra_gen = __atomic_load_n(&write_gen, __ATOMIC_RELAXED);
    ssize_t k = rx_read_into(fd, r->ra, n, want);
    if (k < 0)
        return -1;
    r->ra_len = (size_t)k;
    r->ra_pos = (size_t)k < n ? (size_t)k : n;
    memcpy(dst, r->ra, r->ra_pos);
    if (r->ra_next < ra_max && (size_t)k == want)
        r->ra_next *= 2;         /* still streaming: ask for more next time */
    return (ssize_t)r->ra_pos;
}

/* As the kernel reads a regular file: all that was asked for, short only at its end (so
 * what is left in the read-ahead is topped up from the shadow). */
/* The kernel looks at the open file's access mode before the buffer: EBADF first. */
static int mode_bad(int fd, int writing)
{
    struct rfile *r = get(fd);
    if (r && ((r->flags & O_PATH) || (r->flags & O_ACCMODE) == (writing ? O_RDONLY : O_WRONLY))) {
        errno = EBADF;
        return 1;
    }
    return 0;
}

/* A range the kernel refuses before it copies anything (access_ok): one that wraps or ends
 * in the kernel's half. */
static int kernel_refuses(const void *buf, size_t n)
{
    uintptr_t a = (uintptr_t)buf, last = a + n - 1;
    return !n || last < a || (last >= 4096 && bypass_bad_pointer((const void *)last));
}

/* A read into memory that faults further on reads what fits before the first page that
 * cannot be written, as the kernel does; from the first byte: EFAULT.  off -1: read. */
static ssize_t unwritable_read(int fd, void *buf, size_t n, off_t off)
{
    size_t k = kernel_refuses(buf, n) ? 0
             : readable_prefix((uintptr_t)buf, carried(n));
    if (!k) {
        errno = EFAULT;
        return -1;
    }
    return off < 0 ? rmt_read(fd, buf, k) : rmt_pread(fd, buf, k, off);
}

ssize_t rmt_read(int fd, void *buf, size_t n)
{
    if (mode_bad(fd, 0))
        return -1;
    if (fault(buf, carried(n)) < 0)
        return unwritable_read(fd, buf, n, -1);
    pthread_mutex_lock(&lock);
    struct rfile *r = get(fd);
    ssize_t got = -1;
    if (!r) {
        errno = EBADF;
    } else if ((r->flags & O_ACCMODE) == O_WRONLY || (r->flags & O_PATH)) {
        errno = EBADF;       /* the kernel's answer even for 0 bytes */
    } else if (r->is_dir) {
        errno = EISDIR;
    } else if (pol_buffered(r->pol, r->flags, 0)) {
        got = pol_read(fd, r->pol, buf, n);
        r->pos = -1;             /* (the policy keeps the offset of a buffered file) */
    } else if (r->ra_pos < r->ra_len && r->ra_gen != __atomic_load_n(&write_gen, __ATOMIC_RELAXED) &&
               give_back(fd, r) < 0) {
        /* (stale read-ahead could not go back: errno is set, nothing is read) */
    } else {
        size_t done = 0;
        while (done < n) {
            if (r->ra_pos < r->ra_len) {
                size_t k = r->ra_len - r->ra_pos < n - done ? r->ra_len - r->ra_pos : n - done;
                memcpy((char *)buf + done, r->ra + r->ra_pos, k);
                r->ra_pos += k;
                done += k;
                continue;
            }
            size_t asked;
            ssize_t k = fetch(fd, r, (char *)buf + done, n - done, &asked);
            if (k < 0) {
                if (done)
                    break;       /* what was read is the answer; the error comes next time */
                count(fd, r, 0, -1);
                offset_is(r, -1);
                pthread_mutex_unlock(&lock);
                return -1;
            }
            done += (size_t)k;
            if ((size_t)k < asked)
                break;           /* the end of the file */
        }
        got = (ssize_t)done;
        offset_moved(r, got);
    }
    count(fd, r, 0, got);
    pthread_mutex_unlock(&lock);
    return got;
}

static ssize_t append_write(int fd, const void *buf, size_t n, off_t off);

/* A write whose buffer faults from its first byte: the kernel fails it EFAULT, but only once
 * its file system began the write (ext4 extends a file written past its end to the offset),
 * so the shadow's kernel is made to fault the same way on the export's file.  One that faults
 * further on writes what could be read, up to the first page that cannot, as the kernel does.
 * An address the kernel refuses at once (its own half, a range wrapping over it) and a file
 * the policy buffers stay EFAULT here.  off -1: at the file's offset; flags: RWF_APPEND. */
static ssize_t unreadable_write(int fd, const void *buf, size_t n, off_t off, int flags)
{
    errno = EFAULT;
    if (kernel_refuses(buf, n))
        return -1;
    size_t k = readable_prefix((uintptr_t)buf, carried(n));
    if (k) {
        if (flags)
            return append_write(fd, buf, k, off);
        return off < 0 ? rmt_write(fd, buf, k) : rmt_pwrite(fd, buf, k, off);
    }
    pthread_mutex_lock(&lock);
    struct rfile *r = get(fd);
    int here = !r || pol_buffered(r->pol, r->flags, 1);
    pthread_mutex_unlock(&lock);
    if (here)
        return -1;
    settle_fd(fd);
    ssize_t done = bypass_shadow_bypass_rx_badwrite(fd, carried(n),
                                                    off, flags);
    wrote();
    return done;
}

ssize_t rmt_write(int fd, const void *buf, size_t n)
{
    if (mode_bad(fd, 1))
        return -1;
    if (fault(buf, carried(n)) < 0)
        return unreadable_write(fd, buf, n, -1, 0);
    pthread_mutex_lock(&lock);
    struct rfile *r = get(fd);
    ssize_t done = -1;
    if (!r) {
        errno = EBADF;
    } else if (pol_buffered(r->pol, r->flags, 1) && !(r->flags & O_PATH) && (r->flags & O_ACCMODE) != O_RDONLY) {
        done = pol_write(fd, r->pol, buf, n);
        r->pos = -1;
    } else if (give_back(fd, r) == 0) {
        r->ra_next = RA_FIRST;
        /* synchronous: a write is reported done only once the shadow performed it */
        done = bypass_shadow_bypass_rx_write(fd, n ? buf : "", carried(n));
        wrote();
        offset_moved(r, (r->flags & O_APPEND) ? -1 : done);     /* appended: at an end only the shadow knows */
    }
    count(fd, r, 1, done);
    pthread_mutex_unlock(&lock);
    return done;
}

/* pread/pwrite's checks in the kernel's order: the offset before the descriptor, then its
 * access mode, then the buffer (as much of it as one call carries): 2 for the buffer. */
static int positional_bad(int fd, const void *buf, size_t n, off_t off, int writing)
{
    if (off < 0) {
        errno = EINVAL;
        return 1;
    }
    if (mode_bad(fd, writing))
        return 1;
    return fault(buf, carried(n)) < 0 ? 2 : 0;
}

ssize_t rmt_pread(int fd, void *buf, size_t n, off_t off)
{
    int bad = positional_bad(fd, buf, n, off, 0);
    if (bad)
        return bad == 2 ? unwritable_read(fd, buf, n, off) : -1;
    ssize_t got = bypass_shadow_bypass_rx_pread(fd, buf, carried(n), off);
    struct rfile *r = get(fd);
    count(fd, r, 0, got);
    return got;
}

ssize_t rmt_pwrite(int fd, const void *buf, size_t n, off_t off)
{
    int bad = positional_bad(fd, buf, n, off, 1);
    if (bad)
        return bad == 2 ? unreadable_write(fd, buf, n, off, 0) : -1;
    settle_fd(fd);
    ssize_t done = bypass_shadow_bypass_rx_pwrite(fd, n ? buf : "", carried(n), off);
    wrote();                     /* after: read-ahead filled meanwhile is stale too */
    struct rfile *r = get(fd);
    count(fd, r, 1, done);
    return done;
}

off_t rmt_lseek(int fd, off_t off, int whence)
{
    pthread_mutex_lock(&lock);
    struct rfile *r = get(fd);
    off_t rc = -1;
    if (!r) {
        errno = EBADF;
    } else if (pol_buffered(r->pol, r->flags, 0) && !r->is_dir) {
        rc = pol_lseek(fd, r->pol, off, whence);
        r->pos = -1;
    } else if (offset_known(r) && ((whence == SEEK_CUR && off == 0) || (whence == SEEK_SET && off == r->pos))) {
        rc = r->pos;             /* a regular file's offset staying where it is: always granted */
    } else {
        if (whence == SEEK_CUR)
            off -= (off_t)(r->ra_len - r->ra_pos);   /* the shadow is ahead by the unread part */
        r->ra_len = r->ra_pos = 0;
        r->ra_next = RA_FIRST;
        rc = bypass_shadow_bypass_rx_lseek(fd, off, whence);
        if (rc >= 0)
            offset_is(r, rc);
    }
    count(fd, r, 2, 0);
    pthread_mutex_unlock(&lock);
    return rc;
}

int rmt_fstat(int fd, struct stat *st)
{
    if (fault(st, sizeof *st) < 0)
        return -1;
    return bypass_shadow_bypass_rx_fstat(fd, st);
}

int rmt_stat(int dslot, const char *rpath, struct stat *st, int follow)
{
    if (fault(st, sizeof *st) < 0)
        return -1;
    return bypass_shadow_bypass_rx_stat(dslot, rpath, follow, st);
}

int rmt_statvfs(int dslot, const char *rpath, int fd, struct statvfs *buf)
{
    if (fault(buf, sizeof *buf) < 0)
        return -1;
    return bypass_shadow_bypass_rx_statvfs(dslot, rpath, fd, buf);
}

/* statfs from the shadow's statvfs (the same numbers under Linux names) and its f_type. */
int rmt_statfs(int dslot, const char *rpath, int fd, struct statfs *buf)
{
    struct statvfs v;
    long type = 0;
    if (fault(buf, sizeof *buf) < 0 || rmt_statvfs(dslot, rpath, fd, &v) < 0 ||
        bypass_shadow_bypass_rx_fstype(dslot, rpath ? rpath : "", fd, &type) < 0)
        return -1;
    memset(buf, 0, sizeof *buf);
    buf->f_type = (__typeof__(buf->f_type))type;
    buf->f_bsize = (__typeof__(buf->f_bsize))v.f_bsize;
    buf->f_frsize = (__typeof__(buf->f_frsize))v.f_frsize;
    buf->f_blocks = v.f_blocks;
    buf->f_bfree = v.f_bfree;
    buf->f_bavail = v.f_bavail;
    buf->f_files = v.f_files;
    buf->f_ffree = v.f_ffree;
    buf->f_namelen = (__typeof__(buf->f_namelen))v.f_namemax;
    buf->f_flags = (__typeof__(buf->f_flags))v.f_flag;
#ifndef ST_VALID
#define ST_VALID 0x0020          /* (linux/statfs.h: f_flags is filled in) */
#endif
    buf->f_flags |= ST_VALID;
    memcpy(&buf->f_fsid, &v.f_fsid, sizeof buf->f_fsid < sizeof v.f_fsid ? sizeof buf->f_fsid : sizeof v.f_fsid);
    return 0;
}

#ifdef STATX_BASIC_STATS
static void to_statx_ts(struct statx_timestamp *t, struct timespec ts)
{
    t->tv_sec = ts.tv_sec;
    t->tv_nsec = (uint32_t)ts.tv_nsec;
}
#endif

int rmt_statx(int dslot, const char *rpath, int fd, int flags, unsigned mask, void *statxbuf)
{
#ifdef STATX_BASIC_STATS
    struct stat st;
    if (fault(statxbuf, sizeof(struct statx)) < 0)
        return -1;
    int follow = !(flags & AT_SYMLINK_NOFOLLOW);
    int rc = fd >= 0 ? rmt_fstat(fd, &st) : rmt_stat(dslot, rpath, &st, follow);
    if (rc < 0)
        return -1;
    long birth = -1;
    if ((mask & STATX_BTIME) && bypass_shadow_bypass_rx_birth(dslot, rpath ? rpath : "", fd, follow, &birth) < 0)
        return -1;
    struct statx *sx = statxbuf;
    memset(sx, 0, sizeof *sx);
    sx->stx_mask = STATX_BASIC_STATS;
    sx->stx_blksize = (uint32_t)st.st_blksize;
    sx->stx_nlink = (uint32_t)st.st_nlink;
    sx->stx_uid = st.st_uid;
    sx->stx_gid = st.st_gid;
    sx->stx_mode = (uint16_t)st.st_mode;
    sx->stx_ino = st.st_ino;
    sx->stx_size = (uint64_t)st.st_size;
    sx->stx_blocks = (uint64_t)st.st_blocks;
    to_statx_ts(&sx->stx_atime, st.st_atim);
    to_statx_ts(&sx->stx_mtime, st.st_mtim);
    to_statx_ts(&sx->stx_ctime, st.st_ctim);
    sx->stx_rdev_major = major(st.st_rdev);
    sx->stx_rdev_minor = minor(st.st_rdev);
    sx->stx_dev_major = major(st.st_dev);
    sx->stx_dev_minor = minor(st.st_dev);
    unsigned times = STATX_ATIME | STATX_MTIME | STATX_CTIME;
    long got;
    if ((mask & times) != times &&
        bypass_shadow_bypass_rx_statxmask(dslot, rpath ? rpath : "", fd, follow, (int)mask, &got) == 0) {
        /* a time the shadow's kernel leaves out (not asked for) reads 0, as it would here */
        sx->stx_mask = (sx->stx_mask & ~times) | ((unsigned)got & times);
        if (!(got & STATX_ATIME)) memset(&sx->stx_atime, 0, sizeof sx->stx_atime);
        if (!(got & STATX_MTIME)) memset(&sx->stx_mtime, 0, sizeof sx->stx_mtime);
        if (!(got & STATX_CTIME)) memset(&sx->stx_ctime, 0, sizeof sx->stx_ctime);
    }
    if (birth >= 0) {
        sx->stx_mask |= STATX_BTIME;
        sx->stx_btime.tv_sec = birth / 1000000000;
        sx->stx_btime.tv_nsec = (uint32_t)(birth % 1000000000);
    }
    return 0;
#else
    (void)dslot; (void)rpath; (void)fd; (void)flags; (void)mask; (void)statxbuf;
    errno = ENOSYS;
    return -1;
#endif
}

int rmt_access2(int dslot, const char *rpath, int mode, int follow)
{
    if (mode & ~(R_OK | W_OK | X_OK)) {
        errno = EINVAL;          /* the kernel takes only F_OK..X_OK */
        return -1;
    }
    return bypass_shadow_bypass_rx_access(dslot, rpath, mode, follow);
}

int rmt_access(int dslot, const char *rpath, int mode)
{
    return rmt_access2(dslot, rpath, mode, 1);
}



int rmt_unlink(int dslot, const char *rpath, int isdir)
{
    return bypass_shadow_bypass_rx_unlink(dslot, rpath, isdir);
}

int rmt_mkdir(int dslot, const char *rpath, mode_t mode)
{
    return bypass_shadow_bypass_rx_mkdir(dslot, rpath, mode, (int)cur_umask);
}

int rmt_rename(int od, const char *op, int nd, const char *np)
{
    return bypass_shadow_bypass_rx_rename(od, op, nd, np, 0);
}

/* One name relative to the current directory ("a", "a/"): the kernel walks no directory to
 * reach the place that holds it, so that place may even be removed. */
static int one_name_in_cwd(int dirfd, const char *path)
{
    if (dirfd != AT_FDCWD || !path[0] || path[0] == '/')
        return 0;
    const char *s = strchr(path, '/');
    while (s && *s == '/')
        s++;
    return !s || !*s;
}

/* link/rename whose new path could not be taken (EFAULT, ENAMETOOLONG, ""): the kernel looks
 * the old path up first (link: all of it; rename: its parent), and that error wins.  A local
 * old path goes to the kernel itself, which refuses the new path as well: nothing is done. */
int rmt_second_path_error(int is_link, int olddirfd, const char *oldpath, int old_remote, int dslot,
                          const char *rpath, int newdirfd, const char *newpath, int flags)
{
    int e = errno;
    if (e == EFAULT || e == ENAMETOOLONG || e == EBADF || e == ENOTDIR ||
        (e == ENOENT && newpath && string_ok(newpath) && !*newpath)) {
        if (!old_remote)
            return is_link ? linkat(olddirfd, oldpath, newdirfd, newpath, flags)
                           : renameat2(olddirfd, oldpath, newdirfd, newpath, (unsigned)flags);
        /* rename looks up only the parents before it takes the second name: the cwd of a
         * lone name is not looked at (conform remote seed 100: removed, EBADF from the second) */
        if (!is_link && one_name_in_cwd(olddirfd, oldpath)) {
            errno = e;
            return -1;
        }
        struct stat st;
        if (is_link ? rmt_stat(dslot, rpath, &st, (flags & AT_SYMLINK_FOLLOW) != 0) < 0 : !rmt_parent_ok(dslot, rpath))
            return -1;
    }
    errno = e;
    return -1;
}

/* utimensat with both times UTIME_OMIT (readable times): the kernel returns 0 at once. */
int rmt_times_omitted(const struct timespec *times)
{
    return times && fault(times, 2 * sizeof *times) == 0 && times[0].tv_nsec == UTIME_OMIT &&
           times[1].tv_nsec == UTIME_OMIT;
}

/* Whether the directory that would hold rpath exists (a bind there would make the node). */
int rmt_parent_ok(int dslot, const char *rpath)
{
    char parent[RMT_PATH_MAX];
    size_t n = strlen(rpath);
    while (n > 1 && rpath[n - 1] == '/')
        n--;
    while (n > 0 && rpath[n - 1] != '/')
        n--;
    if (n >= sizeof parent)
        return 1;
    memcpy(parent, rpath, n);
    parent[n] = 0;
    struct stat st;
    int saved = errno;
    if (rmt_stat(dslot, n ? parent : ".", &st, 1) < 0)
        return 0;
    errno = saved;
    if (!S_ISDIR(st.st_mode)) {
        errno = ENOTDIR;
        return 0;
    }
    return 1;
}

/* The names glibc answers with a constant, never looking at the path (PIPE_BUF, PATH_MAX...):
 * found by asking this glibc about a name that cannot exist.  1 with *value set for those. */
int rmt_pathconf_constant(int name, long *value)
{
    int saved = errno;
    errno = 0;
    long v = pathconf("/\x01bypass-no-such-file", name);
    int constant = v != -1 || errno == 0;
    errno = saved;
    if (constant)
        *value = v;
    return constant;
}

long rmt_pathconf(int dslot, const char *rpath, int fd, int name)
{
    long value = -1;
    int saved = errno;
    if (bypass_shadow_bypass_rx_pathconf(dslot, rpath ? rpath : "", fd, name, &value) < 0)
        return -1;
    errno = saved;          /* -1 without an error: no limit */
    return value;
}

int rmt_rename2(int od, const char *op, int nd, const char *np, unsigned flags)
{
    return bypass_shadow_bypass_rx_rename(od, op, nd, np, (int)flags);
}

ssize_t rmt_readlink(int dslot, const char *rpath, char *buf, size_t size)
{
    if (fault(buf, size) < 0)
        return -1;
    if (dslot >= 0 && !rpath[0]) {
        /* the magic link /proc/self/fd/N of a remote descriptor: the program's name for it */
        char base[PATH_MAX], out[PATH_MAX + 16];
        ssize_t n = bypass_shadow_bypass_rx_fdpath(dslot, base, sizeof base - 1);
        if (n < 0)
            return -1;
        base[n] = 0;
        int len = snprintf(out, sizeof out, "%s%s", prefix, strcmp(base, "/") == 0 ? "" : base);
        size_t k = (size_t)len < size ? (size_t)len : size;
        memcpy(buf, out, k);
        return (ssize_t)k;
    }
    return bypass_shadow_bypass_rx_readlink(dslot, rpath, buf, size);
}

int rmt_link(int od, const char *op, int nd, const char *np, int follow)
{
    return bypass_shadow_bypass_rx_link(od, op, nd, np, follow);
}

int rmt_cross_device(int olddirfd, const char *oldpath, int old_remote, int newdirfd, const char *newpath,
                     int new_remote)
{
    int dirfds[2] = { old_remote ? AT_FDCWD : olddirfd, new_remote ? AT_FDCWD : newdirfd };
    const char *paths[2] = { oldpath, newpath };
    for (int i = 0; i < 2; i++)
        if (!paths[i][0]) {
            errno = ENOENT;      /* the kernel takes both names before either directory */
            return -1;
        }
    for (int i = 0; i < 2; i++) {
        struct stat st;
        if (dirfds[i] == AT_FDCWD || paths[i][0] == '/')
            continue;
        if (fstat(dirfds[i], &st) < 0)
            return -1;
        if (!S_ISDIR(st.st_mode)) {
            errno = ENOTDIR;
            return -1;
        }
    }
    errno = EXDEV;
    return -1;
}

/* realpath of a remote path: resolved by the shadow inside the export (symlinks followed, as
 * the kernel would), then named under the prefix. */
char *rmt_realpath(int dslot, const char *rpath, char *resolved)
{
    char full[PATH_MAX], out[PATH_MAX];
    ssize_t n = bypass_shadow_bypass_rx_realpath(dslot, rpath, full, sizeof full - 1);
    if (n < 0)
        return NULL;
    full[n] = 0;
    int len = snprintf(out, sizeof out, "%s%s", prefix, strcmp(full, "/") == 0 ? "" : full);
    if (len < 0 || (size_t)len >= sizeof out) {
        errno = ENAMETOOLONG;
        return NULL;
    }
    if (!resolved)
        return strdup(out);
    if (fault(resolved, (size_t)len + 1) < 0)
        return NULL;
    memcpy(resolved, out, (size_t)len + 1);
    return resolved;
}

int rmt_symlink_target_error(const char *target)
{
    if (!target || !string_ok(target))
        errno = EFAULT;
    else if (!target[0])
        errno = ENOENT;
    else
        return 0;
    return 1;
}

int rmt_symlink(const char *target, int dslot, const char *rpath)
{
    return bypass_shadow_bypass_rx_symlink(target, dslot, rpath);
}

int rmt_chmod(int dslot, const char *rpath, int fd, mode_t mode)
{
    return bypass_shadow_bypass_rx_chmod(dslot, rpath, fd, mode);
}

ssize_t rmt_getxattr(int dslot, const char *rpath, int fd, int follow, const char *name, void *buf, size_t size)
{
    if ((name && !string_ok(name)) || fault(buf, size) < 0) {
        errno = EFAULT;
        return -1;
    }
    return bypass_shadow_bypass_rx_getxattr(dslot, rpath ? rpath : "", fd, follow, name ? name : "", buf, size);
}

int rmt_setxattr(int dslot, const char *rpath, int fd, int follow, const char *name, const void *value, size_t size,
                 int flags)
{
    if (!string_ok(name) || fault(value, size) < 0) {
        errno = EFAULT;
        return -1;
    }
    return bypass_shadow_bypass_rx_setxattr(dslot, rpath ? rpath : "", fd, follow, name, size ? value : "", size,
                                            flags);
}

/* f*xattr(AT_FDCWD, ...) name the current directory on kernels that take it (Linux 6.18 does for
 * fgetxattr/fsetxattr, not for flistxattr/fremovexattr; older ones never): with a remote current
 * directory, the remote one.  Asked of this kernel once per kind (get stands for set too). */
int rmt_xattr_cwd(int fd, int kind)
{
    static int takes_cwd[3] = { -1, -1, -1 };
    if (fd != AT_FDCWD || !rmt_is_cwd_remote() || kind < 0 || kind > 2)
        return 0;
    if (takes_cwd[kind] < 0) {
        /* (questions with no effect: a name that is not there, a size of 0) */
        int saved = errno;
        long rc = kind == RMT_XATTR_GET ? syscall(SYS_fgetxattr, AT_FDCWD, "user.bypass-probe", NULL, 0)
                : kind == RMT_XATTR_LIST ? syscall(SYS_flistxattr, AT_FDCWD, NULL, 0)
                : syscall(SYS_fremovexattr, AT_FDCWD, "user.bypass-probe");
        takes_cwd[kind] = !(rc < 0 && errno == EBADF);
        errno = saved;
    }
    return takes_cwd[kind];
}

int rmt_lchmod(int dslot, const char *rpath, mode_t mode)
{
    struct stat st;
    /* as Linux does: the mode of a symlink itself cannot be changed */
    if (rmt_stat(dslot, rpath, &st, 0) == 0 && S_ISLNK(st.st_mode)) {
        errno = EOPNOTSUPP;
        return -1;
    }
    return rmt_chmod(dslot, rpath, -1, mode);
}

int rmt_mknod_mode_bad(mode_t mode)
{
    switch (mode & S_IFMT) {
    case 0: case S_IFREG: case S_IFCHR: case S_IFBLK: case S_IFIFO: case S_IFSOCK:
        return 0;
    case S_IFDIR:
        errno = EPERM;
        return 1;
    default:
        errno = EINVAL;
        return 1;
    }
}

int rmt_mknod(int dslot, const char *rpath, mode_t mode, dev_t dev)
{
    if (rmt_mknod_mode_bad(mode))
        return -1;
    return bypass_shadow_bypass_rx_mknod(dslot, rpath, mode, (int)cur_umask, (int)major(dev), (int)minor(dev));
}

int rmt_where_sockaddr(const struct sockaddr *addr, unsigned addrlen, int *dslot, char *rpath, size_t cap)
{
    size_t at = offsetof(struct sockaddr_un, sun_path);
    if (!addr || addrlen <= at || addr->sa_family != AF_UNIX)
        return 0;
    const struct sockaddr_un *un = (const struct sockaddr_un *)addr;
    size_t n = addrlen - at < sizeof un->sun_path ? addrlen - at : sizeof un->sun_path;
    if (un->sun_path[0] == 0)
        return 0;                /* an abstract name: no file */
    char path[sizeof un->sun_path + 1];
    memcpy(path, un->sun_path, n);
    path[n] = 0;
    return rmt_where(AT_FDCWD, path, dslot, rpath, cap);
}

int rmt_utimes(int dslot, const char *rpath, int fd, const struct timeval tv[2], int follow)
{
    if (!tv)
        return rmt_utimens(dslot, rpath, fd, NULL, follow);
    struct timespec ts[2];
    for (int i = 0; i < 2; i++) {
        if (tv[i].tv_usec < 0 || tv[i].tv_usec >= 1000000) {
            errno = EINVAL;
            return -1;
        }
        ts[i].tv_sec = tv[i].tv_sec;
        ts[i].tv_nsec = tv[i].tv_usec * 1000;
    }
    return rmt_utimens(dslot, rpath, fd, ts, follow);
}

int rmt_chown(int dslot, const char *rpath, int fd, uid_t uid, gid_t gid, int follow)
{
    return bypass_shadow_bypass_rx_chown(dslot, rpath, fd, (int)uid, (int)gid, follow);
}

/* UTIME_NOW / UTIME_OMIT travel as -1 / -2 nanoseconds. */
static long wire_nsec(long ns)
{
    return ns == UTIME_NOW ? -1 : ns == UTIME_OMIT ? -2 : ns;
}

int rmt_utimens(int dslot, const char *rpath, int fd, const struct timespec times[2], int follow)
{
    if (!times)
        return bypass_shadow_bypass_rx_utimens(dslot, rpath, fd, 0, -1, 0, -1, follow);
    return bypass_shadow_bypass_rx_utimens(dslot, rpath, fd, (long)times[0].tv_sec, wire_nsec(times[0].tv_nsec),
                                    (long)times[1].tv_sec, wire_nsec(times[1].tv_nsec), follow);
}

int rmt_ftruncate(int fd, off_t len)
{
    settle_fd(fd);
    int rc = bypass_shadow_bypass_rx_ftruncate(fd, len);
    wrote();
    return rc;
}

int rmt_truncate(int dslot, const char *rpath, off_t len)
{
    int rc = bypass_shadow_bypass_rx_truncate(dslot, rpath, len);
    wrote();
    return rc;
}

int rmt_fsync(int fd)
{
    struct rfile *r = get(fd);
    if (r && r->pol && pol_sync(r->pol) < 0)
        return -1;               /* a write the buffer reported done could not be written back */
    return bypass_shadow_bypass_rx_fsync(fd);
}

int rmt_fallocate(int fd, int mode, off_t off, off_t len, int posix)
{
    settle_fd(fd);
    int rc = bypass_shadow_bypass_rx_fallocate(fd, mode, off, len, posix);
    wrote();
    return rc;
}

static ssize_t rmt_rw(int fd, void *buf, size_t n, off_t off, int writing)
{
    if (writing)
        return off < 0 ? rmt_write(fd, buf, n) : rmt_pwrite(fd, buf, n, off);
    return off < 0 ? rmt_read(fd, buf, n) : rmt_pread(fd, buf, n, off);
}

#ifndef RWF_HIPRI
#define RWF_HIPRI 0x1
#define RWF_DSYNC 0x2
#define RWF_SYNC 0x4
#define RWF_NOWAIT 0x8
#endif
#ifndef RWF_APPEND
#define RWF_APPEND 0x10
#endif

/* A write with RWF_APPEND: the shadow writes at the end in one step (read-ahead handed back
 * first, as for any write). */
static ssize_t append_write(int fd, const void *buf, size_t n, off_t off)
{
    settle_fd(fd);
    ssize_t done = bypass_shadow_bypass_rx_append(fd, n ? buf : "", n, off);
    wrote();
    if (off < 0)
        forget_offset(fd);       /* moved to the file's end */
    return done;
}

static ssize_t iov_rw(int fd, void *buf, size_t n, off_t off, int writing, int flags)
{
    if (writing && (flags & RWF_APPEND))
        return append_write(fd, buf, n, off);
    return rmt_rw(fd, buf, n, off, writing);
}

/* One call for the whole vector, gathered or scattered here: a vectored write stays one write
 * (O_APPEND, concurrent readers), as the kernel makes it. */
ssize_t rmt_iov(int fd, const struct iovec *iov, int iovcnt, off_t off, int flags, int writing)
{
    if (mode_bad(fd, writing))
        return -1;                 /* the kernel looks at the open file before the flags */
    if (flags & ~(RWF_HIPRI | RWF_DSYNC | RWF_SYNC | RWF_NOWAIT | RWF_APPEND)) {
        errno = EOPNOTSUPP;        /* anything newer: not done remotely */
        return -1;
    }
    if (iovcnt < 0 || iovcnt > IOV_MAX) {
        errno = EINVAL;
        return -1;
    }
    if (fault(iov, (size_t)iovcnt * sizeof *iov) < 0)
        return -1;
    size_t total = 0;
    int used = 0, one = 0;
    for (int i = 0; i < iovcnt; i++) {
        if (iov[i].iov_len > (size_t)SSIZE_MAX - total) {
            errno = EINVAL;
            return -1;
        }
        total += iov[i].iov_len;
    }
    for (int i = 0; i < iovcnt; i++)
        if ((uintptr_t)iov[i].iov_base >= 4096 && bypass_bad_pointer(iov[i].iov_base)) {
            errno = EFAULT;        /* the kernel's access_ok: no kernel address, even for 0 bytes */
            return -1;
        }
    /* a buffer it cannot reach ends the transfer there (EFAULT if it is the first) */
    total = 0;
    for (int i = 0; i < iovcnt; i++) {
        if (iov[i].iov_len && !range_ok((uintptr_t)iov[i].iov_base, iov[i].iov_len)) {
            if (!total && writing)
                return unreadable_write(fd, iov[i].iov_base, iov[i].iov_len, off, flags & RWF_APPEND);
            if (!total) {
                errno = EFAULT;
                return -1;
            }
            iovcnt = i;
            break;
        }
        total += iov[i].iov_len;
        if (iov[i].iov_len) {
            used++;
            one = i;
        }
    }
    if (total > BYPASS_RPC_MAX_PAYLOAD)
        total = BYPASS_RPC_MAX_PAYLOAD;    /* a short transfer, as the kernel may make */
    ssize_t n;
    if (used <= 1) {
        n = iov_rw(fd, used ? iov[one].iov_base : (void *)"", total, off, writing, flags);
    } else {
        char *tmp = malloc(total);
        if (!tmp) {
            errno = ENOMEM;
            return -1;
        }
        size_t at = 0;
        for (int i = 0; writing && at < total; i++) {
            size_t k = iov[i].iov_len < total - at ? iov[i].iov_len : total - at;
            memcpy(tmp + at, iov[i].iov_base, k);
            at += k;
        }
        n = iov_rw(fd, tmp, total, off, writing, flags);
        at = 0;
        for (int i = 0; !writing && n > 0 && at < (size_t)n; i++) {
            size_t k = iov[i].iov_len < (size_t)n - at ? iov[i].iov_len : (size_t)n - at;
            memcpy(iov[i].iov_base, tmp + at, k);
            at += k;
        }
        int e = errno;
        free(tmp);
        errno = e;
    }
    if (n >= 0 && writing && (flags & (RWF_DSYNC | RWF_SYNC)) && rmt_fsync(fd) < 0)
        return -1;
    return n;
}

static ssize_t any_read(int fd, void *buf, size_t n, off64_t *off)
{
    if (rmt_is_fd(fd))
        return off ? rmt_pread(fd, buf, n, *off) : rmt_read(fd, buf, n);
    return off ? pread(fd, buf, n, *off) : read(fd, buf, n);
}

static ssize_t any_write(int fd, const void *buf, size_t n, off64_t *off, size_t done)
{
    if (rmt_is_fd(fd))
        return off ? rmt_pwrite(fd, buf, n, *off + (off_t)done) : rmt_write(fd, buf, n);
    return off ? pwrite(fd, buf, n, *off + (off_t)done) : write(fd, buf, n);
}

#define XFER_CHUNK (1024 * 1024)

/* A copy with a remote end.  Two remote files: the shadow's kernel copies.  Otherwise one
 * chunk goes through here, and what could not be written is given back to the source (its
 * offset moved back), so a short count is exact.  splice needs a pipe at one end: no more is
 * read from the remote file than the pipe can take. */
ssize_t rmt_transfer(int in, off64_t *in_off, int out, off64_t *out_off, size_t len, int kind)
{
    int rin = rmt_is_fd(in), rout = rmt_is_fd(out);
    size_t chunk = len < XFER_CHUNK ? len : XFER_CHUNK;
    if (kind & RMT_SPLICE) {
        /* fs/splice.c's order: nothing to move (0), the access modes (EBADF), a pipe at one
         * end (EINVAL), no offset on it (ESPIPE), no O_APPEND file to write to and no
         * directory to read from (EINVAL) */
        if (len == 0)
            return 0;
        if (!rmt_transfer_fds_ok(in, out, 2))
            return -1;
        struct stat st;
        int pipe_end = rin ? out : in;
        if (rin && rout) {
            errno = EINVAL;
            return -1;
        }
        if (fstat(pipe_end, &st) < 0)
            return -1;
        if (!S_ISFIFO(st.st_mode)) {
            errno = EINVAL;
            return -1;
        }
        if (rin ? out_off != NULL : in_off != NULL) {
            errno = ESPIPE;
            return -1;
        }
        struct rfile *r = get(rin ? in : out);
        if (r && (rin ? r->is_dir : (r->flags & O_APPEND) != 0)) {
            errno = EINVAL;
            return -1;
        }
        if (fcntl(pipe_end, F_GETFL) & O_NONBLOCK)
            kind |= RMT_NONBLOCK;
        int queued = 0, size = fcntl(pipe_end, F_GETPIPE_SZ);
        if (size < 0 || ioctl(pipe_end, FIONREAD, &queued) < 0)
            return -1;
        size_t avail = rin ? (size > queued ? (size_t)(size - queued) : 0) : (size_t)queued;
        if (avail == 0 && (kind & RMT_NONBLOCK)) {
            errno = EAGAIN;
            return -1;
        }
        if (rin && chunk > (avail ? avail : (size_t)size))
            chunk = avail ? avail : (size_t)size;
        if (!rin && (kind & RMT_NONBLOCK) && chunk > avail)
            chunk = avail;
    }
    if ((in_off && *in_off < 0) || (out_off && *out_off < 0)) {
        errno = EINVAL;
        return -1;
    }
    if (len == 0)
        return 0;
    if (rin && rout) {
        settle_fd(in);
        settle_fd(out);
        size_t k = len < BYPASS_RPC_MAX_PAYLOAD ? len : BYPASS_RPC_MAX_PAYLOAD;
        ssize_t n = bypass_shadow_bypass_rx_copy(in, in_off ? *in_off : -1, out, out_off ? *out_off : -1, k,
                                                 (kind & RMT_SENDFILE) != 0);
        wrote();
        if (!in_off)
            forget_offset(in);       /* moved by the shadow's copy */
        if (!out_off)
            forget_offset(out);
        if (n > 0 && in_off)
            *in_off += n;
        if (n > 0 && out_off)
            *out_off += n;
        return n;
    }
    char *buf = malloc(chunk);
    if (!buf) {
        errno = ENOMEM;
        return -1;
    }
    ssize_t got = any_read(in, buf, chunk, in_off);
    size_t done = 0;
    int e = errno;
    while (got > 0 && done < (size_t)got) {
        ssize_t w = any_write(out, buf + done, (size_t)got - done, out_off, done);
        if (w < 0) {
            e = errno;
            break;
        }
        done += (size_t)w;
    }
    free(buf);
    if (got > 0 && done < (size_t)got && !in_off) {
        off_t back = -(off_t)((size_t)got - done);
        if (rin)
            rmt_lseek(in, back, SEEK_CUR);
        else if (!(kind & RMT_SPLICE))
            lseek(in, back, SEEK_CUR);
    }
    if (in_off)
        *in_off += (off64_t)done;
    if (out_off)
        *out_off += (off64_t)done;
    errno = e;
    if (got <= 0)
        return got;
    return done ? (ssize_t)done : -1;
}

/* Waiting for a lock happens here, in short growing pauses, not in a shadow thread. */
static void lock_pause(useconds_t *pause)
{
    usleep(*pause);
    if (*pause < 100000)
        *pause *= 2;
}

static int is_getlk(int cmd)
{
#ifdef F_OFD_GETLK
    if (cmd == F_OFD_GETLK)
        return 1;
#endif
    return cmd == F_GETLK;
}

static int is_setlkw(int cmd)
{
#ifdef F_OFD_SETLKW
    if (cmd == F_OFD_SETLKW)
        return 1;
#endif
    return cmd == F_SETLKW;
}

/* Record locks live on the shadow's descriptor (open-file-description locks there: agents
 * conflict with each other).  F_SETLKW polls with a growing pause instead of blocking in the
 * shadow, where the wait would hold a server thread and run into the call timeout. */
static int record_lock(int fd, int cmd, struct flock *fl)
{
    if (!fl) {
        errno = EFAULT;
        return -1;
    }
    if (cmd == F_GETLK ? fl->l_type != F_RDLCK && fl->l_type != F_WRLCK
                       : fl->l_type != F_RDLCK && fl->l_type != F_WRLCK && fl->l_type != F_UNLCK) {
        errno = EINVAL;      /* F_GETLK asks about a lock: F_UNLCK is not one (F_OFD_GETLK takes it) */
        return -1;
    }
    struct flock wire = *fl;
    pthread_mutex_lock(&lock);
    struct rfile *r = get(fd);
    if (r && wire.l_whence == SEEK_CUR && pol_buffered(r->pol, r->flags, 0))
        give_back(fd, r);                                 /* the offset is the buffer's */
    if (r && wire.l_whence == SEEK_CUR)
        wire.l_start -= (off_t)(r->ra_len - r->ra_pos);   /* the shadow's offset is ahead */
    pthread_mutex_unlock(&lock);
    for (useconds_t pause = 1000;; lock_pause(&pause)) {
        struct flock reply = wire;
        if (bypass_shadow_bypass_rx_lock(fd, !is_getlk(cmd), &reply) == 0) {
            if (is_getlk(cmd))
                *fl = reply;
            return 0;
        }
        if (!is_setlkw(cmd) || (errno != EAGAIN && errno != EACCES))
            return -1;
    }
}

int rmt_flock(int fd, int op)
{
    for (useconds_t pause = 1000;; lock_pause(&pause)) {
        if (bypass_shadow_bypass_rx_flock(fd, op & ~LOCK_NB) == 0)
            return 0;
        if ((op & LOCK_NB) || errno != EWOULDBLOCK)
            return -1;
    }
}

/* fcntl on a remote descriptor: *handled = 0 leaves the call to the placeholder (F_GETFD...). */
int rmt_fcntl(int fd, int cmd, long arg, int *handled)
{
    struct rfile *r = get(fd);
    *handled = 1;
    switch (cmd) {
#ifdef F_GET_SEALS
    case F_GET_SEALS:
    case F_ADD_SEALS:
        /* seals are for memfds, which a remote file is not (an O_PATH one is not even open);
         * adding them wants a writable descriptor first */
        errno = !r || (r->flags & O_PATH) ? EBADF
              : cmd == F_ADD_SEALS && (r->flags & O_ACCMODE) == O_RDONLY ? EPERM : EINVAL;
        return -1;
#endif
    case F_GETLEASE:
        /* no lease is ever granted on a remote file (see F_SETLEASE): there is none to report */
        if (!r || (r->flags & O_PATH)) {
            errno = EBADF;
            return -1;
        }
        return F_UNLCK;
    case F_SETLEASE:
        /* a lease cannot be kept across machines: EAGAIN, the kernel's answer when another
         * process has the file open; giving none up (F_UNLCK) is done */
        if (!r || (r->flags & O_PATH)) {
            errno = EBADF;
            return -1;
        }
        if (arg == F_UNLCK)
            return 0;
        errno = (arg == F_RDLCK || arg == F_WRLCK) ? EAGAIN : EINVAL;
        return -1;
    case F_GETFL:
        /* the kernel forgets the open-time flags (O_CLOEXEC is the descriptor's, F_GETFD) and
         * always reports O_LARGEFILE on 64 bits */
        return r ? (r->flags & ~(O_CREAT | O_EXCL | O_NOCTTY | O_TRUNC | O_CLOEXEC)) |
                   ((r->flags & O_PATH) ? 0 : RMT_O_LARGEFILE) : -1;
    case F_SETFL: {
        if (!r || (r->flags & O_PATH)) {
            errno = EBADF;          /* the kernel's answer for an O_PATH descriptor */
            return -1;
        }
        int keep = O_ACCMODE | O_CREAT | O_EXCL | O_TRUNC | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC;
        int flags = (r->flags & keep) | ((int)arg & ~keep);
        if (bypass_shadow_bypass_rx_setfl(fd, flags) < 0)
            return -1;
        r->flags = flags;
        return 0;
    }
    case F_GETLK:
    case F_SETLK:
    case F_SETLKW:
#ifdef F_OFD_SETLK
    case F_OFD_GETLK:
    case F_OFD_SETLK:
    case F_OFD_SETLKW:
#endif
        if (!r || (r->flags & O_PATH)) {
            errno = EBADF;          /* before the kernel reads the lock it is given */
            return -1;
        }
        return record_lock(fd, cmd, (struct flock *)arg);
    default:
        *handled = 0;
        return 0;
    }
}

/* ---- stdio: a FILE over a remote descriptor (fopencookie) ---------------------------------- */

static ssize_t cookie_read(void *c, char *buf, size_t n)
{
    bypass_guard_enter();
    ssize_t k = rmt_read((int)(intptr_t)c, buf, n);
    bypass_guard_leave();
    return k;
}

static ssize_t cookie_write(void *c, const char *buf, size_t n)
{
    bypass_guard_enter();
    size_t done = 0;
    while (done < n) {
        ssize_t k = rmt_write((int)(intptr_t)c, buf + done, n - done);
        if (k <= 0)
            break;
        done += (size_t)k;
    }
    bypass_guard_leave();
    return done ? (ssize_t)done : (n ? -1 : 0);
}

static int cookie_seek(void *c, off64_t *pos, int whence)
{
    bypass_guard_enter();
    off_t r = rmt_lseek((int)(intptr_t)c, (off_t)*pos, whence);
    bypass_guard_leave();
    if (r < 0)
        return -1;
    *pos = r;
    return 0;
}

/* Buffers given to streams (stream_buffer), freed when their descriptor's stream closes. */
static struct { int fd; char *buf; } *sbufs;
static size_t nsbufs, capsbufs;
static pthread_mutex_t sbuf_lock = PTHREAD_MUTEX_INITIALIZER;

static int cookie_close(void *c)
{
    bypass_guard_enter();
    int fd = (int)(intptr_t)c;
    int rc = rmt_close(fd);
    /* glibc flushed the stream before this and never touches a user buffer afterwards */
    pthread_mutex_lock(&sbuf_lock);
    for (size_t i = 0; i < nsbufs; i++)
        if (sbufs[i].fd == fd) {
            free(sbufs[i].buf);
            sbufs[i] = sbufs[--nsbufs];
            break;
        }
    pthread_mutex_unlock(&sbuf_lock);
    bypass_guard_leave();
    return rc;
}

/* glibc sizes a file stream's buffer by st_blksize, a cookie stream's by BUFSIZ; the size
 * decides whether a large fread goes straight to read() (which "a" streams then allow) or
 * through the buffer (EBADF): give the cookie stream the remote file's block size. */
static void stream_buffer(FILE *f, int fd)
{
    struct stat st;
    if (rmt_fstat(fd, &st) < 0 || st.st_blksize <= 0 || st.st_blksize == BUFSIZ || st.st_blksize > (1 << 20))
        return;
    char *buf = malloc((size_t)st.st_blksize);
    if (!buf)
        return;
    pthread_mutex_lock(&sbuf_lock);
    if (nsbufs == capsbufs) {
        size_t cap = capsbufs ? capsbufs * 2 : 16;
        void *n = realloc(sbufs, cap * sizeof *sbufs);
        if (!n) {
            pthread_mutex_unlock(&sbuf_lock);
            free(buf);
            return;
        }
        sbufs = n;
        capsbufs = cap;
    }
    sbufs[nsbufs].fd = fd;
    sbufs[nsbufs].buf = buf;
    nsbufs++;
    pthread_mutex_unlock(&sbuf_lock);
    setvbuf(f, buf, _IOFBF, (size_t)st.st_blksize);
}

static int mode_flags(const char *mode)
{
    int flags;
    switch (mode[0]) {
    case 'r': flags = O_RDONLY; break;
    case 'w': flags = O_WRONLY | O_CREAT | O_TRUNC; break;
    case 'a': flags = O_WRONLY | O_CREAT | O_APPEND; break;
    default: errno = EINVAL; return -1;
    }
    for (const char *m = mode + 1; *m && *m != ','; m++) {
        if (*m == '+') flags = (flags & ~O_ACCMODE) | O_RDWR;
        else if (*m == 'x') flags |= O_EXCL;
        else if (*m == 'e') flags |= O_CLOEXEC;
    }
    return flags;
}

FILE *rmt_fdopen(int fd, const char *mode)
{
    cookie_io_functions_t io = { cookie_read, cookie_write, cookie_seek, cookie_close };
    FILE *f = fopencookie((void *)(intptr_t)fd, mode, io);
    if (!f)
        return NULL;
    /* glibc leaves a cookie stream's descriptor at -1; programs call fileno() on it (sort
     * fstat()s its input), so give it the placeholder.  I/O still goes through the cookie. */
    f->_fileno = fd;
    if (mode[0] == 'a' && !strchr(mode, '+'))
        fseeko(f, 0, SEEK_END);     /* glibc: "a+" reads from the start */
    return f;
}

/* fdopen(3) of a remote descriptor, with glibc's checks in glibc's order: the mode first
 * (EINVAL), then F_GETFL (EBADF), the access mode against it (EINVAL), and "a" sets O_APPEND
 * on the open file itself, as glibc does, so that other descriptors of it see the change. */
FILE *rmt_fdopen_user(int fd, const char *mode)
{
    int reads = 0, writes = 0, append = 0, cloexec = 0;
    switch (mode[0]) {
    case 'r': reads = 1; break;
    case 'w': writes = 1; break;
    case 'a': writes = 1; append = 1; break;
    default: errno = EINVAL; return NULL;
    }
    for (int i = 1; i < 5 && mode[i]; i++) {
        if (mode[i] == '+') reads = writes = 1;
        else if (mode[i] == 'e') cloexec = 1;
    }
    int handled;
    int fl = rmt_fcntl(fd, F_GETFL, 0, &handled);
    if (fl < 0) {
        errno = EBADF;
        return NULL;
    }
    if (((fl & O_ACCMODE) == O_RDONLY && writes) || ((fl & O_ACCMODE) == O_WRONLY && reads)) {
        errno = EINVAL;
        return NULL;
    }
    if (append && !(fl & O_APPEND) && rmt_fcntl(fd, F_SETFL, fl | O_APPEND, &handled) < 0)
        return NULL;
    if (cloexec) {
        int fdfl = fcntl(fd, F_GETFD);
        if (fdfl >= 0 && !(fdfl & FD_CLOEXEC))
            fcntl(fd, F_SETFD, fdfl | FD_CLOEXEC);
    }
    FILE *f = rmt_fdopen(fd, mode);
    if (f)
        stream_buffer(f, fd);
    return f;
}

/* fopen of a name the policy remapped to local: or a URL: a plain stdio stream of that file. */
static FILE *local_stream(int fd, const char *mode)
{
    FILE *f = fdopen(fd, mode);
    if (!f) {
        int e = errno;
        close(fd);
        errno = e;
    }
    return f;
}

FILE *rmt_fopen(int dslot, const char *rpath, const char *mode)
{
    int flags = mode ? mode_flags(mode) : -1;
    if (flags < 0)
        return NULL;
    int fd = rmt_open(dslot, rpath, flags, 0666);
    if (fd < 0)
        return NULL;
    if (!rmt_is_fd(fd))
        return local_stream(fd, mode);      /* remapped to local: or a URL (policy.c) */
    FILE *f = rmt_fdopen(fd, mode);
    if (!f) {
        int e = errno;
        rmt_close(fd);
        errno = e;
    } else {
        stream_buffer(f, fd);
    }
    return f;
}

/* A failed freopen leaves the stream closed, as glibc's does (which closes the old file
 * before it opens the new one): glibc's own freopen of "" does exactly that. */
static FILE *freopen_failed(FILE *stream, int e)
{
    if (stream)
        freopen("", "r", stream);
    errno = e;
    return NULL;
}

/* freopen gave up on the path: the stream is closed all the same, as glibc closes it first */
FILE *rmt_freopen_failed(FILE *stream)
{
    return freopen_failed(stream, errno);
}

/* freopen of a stream over a remote file (one of the agent's cookie streams): glibc's freopen
 * would take the FILE for one of its own file streams, which it is not, and crashed.  A standard
 * stream becomes the new file: a remote one as rmt_freopen makes it, a local one (path, already
 * resolved by the caller) as a new glibc stream on the same descriptor, which the slot
 * stdin/stdout/stderr then names, as after rmt_rebind_std.  Another stream cannot be given a new
 * file in place: ENOTSUP, the stream left as it was (closing its file under it would let a later
 * fclose close another file that took the number). */
int rmt_is_remote_stream(FILE *stream)
{
    return stream && rmt_is_fd(stream->_fileno);
}

/* Would freopen's open of the path succeed?  Its error if not, found without creating or
 * truncating (a local FIFO is asked without waiting for a peer). */
static int freopen_probe(int remote, int dslot, const char *path, int flags)
{
    int probe = flags & ~(O_CREAT | O_EXCL | O_TRUNC);
    size_t len = strlen(path);
    if ((flags & O_CREAT) && len && path[len - 1] == '/')
        probe = flags & ~O_TRUNC;      /* a create with a trailing slash fails (EISDIR) */
    int fd = remote ? rmt_open(dslot, path, probe, 0) : open(path, probe | O_NONBLOCK, 0);
    if (fd >= 0) {
        if (remote)
            rmt_close(fd);
        else
            close(fd);
        return 0;
    }
    if (errno != ENOENT || !(flags & O_CREAT))
        return -1;
    if (remote)
        return rmt_parent_ok(dslot, path) ? 0 : -1;
    /* a new local file: its directory must be there */
    char dir[PATH_MAX];
    const char *slash = strrchr(path, '/');
    if (!slash)
        return 0;
    snprintf(dir, sizeof dir, "%.*s", (int)(slash - path + 1), path);
    struct stat st;
    if (stat(dir, &st) < 0)
        return -1;
    return 0;
}

FILE *rmt_freopen_remote_stream(int remote, int dslot, const char *path, const char *mode, FILE *stream)
{
    int std = stream == stdin ? 0 : stream == stdout ? 1 : stream == stderr ? 2 : -1;
    int flags = mode_flags(mode);
    if (flags < 0)
        return NULL;
    if (std < 0) {
        /* the path's own error first, as for a stream that is not remote (rmt_freopen) */
        if (freopen_probe(remote, dslot, path, flags) == 0)
            errno = ENOTSUP;
        return NULL;
    }
    if (remote)
        return rmt_freopen(dslot, path, mode, stream);
    fflush(stream);
    FILE *opened = fopen(path, mode);
    if (!opened)
        return NULL;
    char plain[3] = { mode[0], strchr(mode, '+') ? '+' : 0, 0 };
    FILE *local = NULL;
    if (dup2(fileno(opened), std) >= 0) {
        rmt_forget(std);
        local = fdopen(std, plain);
    }
    int e = errno;
    fclose(opened);
    errno = e;
    if (local)
        *std_slot(std) = local;
    return local;
}

FILE *rmt_freopen(int dslot, const char *rpath, const char *mode, FILE *stream)
{
    int std = stream == stdin ? 0 : stream == stdout ? 1 : stream == stderr ? 2 : -1;
    int flags = mode ? mode_flags(mode) : -1;
    if (flags < 0)
        return std < 0 ? freopen_failed(stream, errno) : NULL;
    if (std < 0) {
        /* Another stream cannot become remote (its FILE is glibc's, with glibc's own I/O):
         * ENOTSUP, but the path's own error first. */
        return freopen_failed(stream, freopen_probe(1, dslot, rpath, flags) < 0 ? errno : ENOTSUP);
    }
    fflush(stream);
    int fd = rmt_open(dslot, rpath, flags, 0666);
    if (fd < 0)
        return NULL;
    if (!rmt_is_fd(fd)) {
        close(fd);               /* remapped to local: or a URL: not made a standard stream here */
        return freopen_failed(stream, ENOTSUP);
    }
    if (dup2(fd, std) < 0 || rmt_dup_done(fd, std) < 0) {
        int e = errno;
        rmt_close(fd);
        errno = e;
        return NULL;
    }
    rmt_close(fd);
    char plain[3] = { mode[0], strchr(mode, '+') ? '+' : 0, 0 };
    rebind_std(std, plain);          /* in freopen's mode: "w+" reads, "r+" writes */
    return *std_slot(std);
}

/* The standard streams write through glibc's internal write, which no preload sees: when
 * descriptor 0, 1 or 2 becomes remote (sort -o dup2s its output onto 1; a shell redirects
 * into /job before exec), the stream is replaced by one over the remote file. */
static FILE **std_slot(int fd)
{
    return fd == 0 ? &stdin : fd == 1 ? &stdout : fd == 2 ? &stderr : NULL;
}

static void rebind_std(int fd, const char *mode)
{
    FILE **slot = std_slot(fd);
    if (!slot || !rmt_is_fd(fd) || in_vfork_child())
        return;
    if (fd > 0)
        fflush(*slot);
    FILE *f = rmt_fdopen(fd, mode);
    if (!f)
        return;
    if (fd == 2)
        setvbuf(f, NULL, _IONBF, 0);
    if (!our_std[fd] || *slot != our_std[fd])
        orig_std[fd] = *slot;
    our_std[fd] = f;
    *slot = f;
}

void rmt_rebind_std(int fd)
{
    rebind_std(fd, fd == 0 ? "r" : "w");
}

/* fd (0, 1 or 2) is no longer remote (bash restoring its stdout after `echo > file`): give
 * the program its own stream back.  Our stream is flushed and left alone (closing it would
 * close the descriptor, which now belongs to someone else). */
static void unbind_std(int fd)
{
    FILE **slot = std_slot(fd);
    if (!slot || !our_std[fd])
        return;
    if (*slot == our_std[fd]) {
        fflush(our_std[fd]);
        *slot = orig_std[fd];
    }
    our_std[fd] = NULL;
}

/* ---- directory streams ------------------------------------------------------------------------ */

#define RDIR_MAGIC 0x52444952u     /* "RDIR" */
#define RDIR_MAX 256

struct rdir {
    uint32_t magic;
    int fd;
    size_t len, pos;
    int eof;
    struct dirent ent;
    unsigned char buf[32768];
};

static struct rdir *rdirs[RDIR_MAX];
static int rdir_count;

int rmt_is_dir_stream(DIR *d)
{
    if (!d || __atomic_load_n(&rdir_count, __ATOMIC_ACQUIRE) == 0)
        return 0;
    for (int i = 0; i < RDIR_MAX; i++)
        if (rdirs[i] == (struct rdir *)d)
            return 1;
    return 0;
}

DIR *rmt_fdopendir(int fd)
{
    struct stat st;
    if (rmt_fstat(fd, &st) < 0)
        return NULL;
    if (!S_ISDIR(st.st_mode)) {
        errno = ENOTDIR;
        return NULL;
    }
    struct rdir *d = calloc(1, sizeof *d);
    if (!d) {
        errno = ENOMEM;
        return NULL;
    }
    d->magic = RDIR_MAGIC;
    d->fd = fd;
    pthread_mutex_lock(&lock);
    int i;
    for (i = 0; i < RDIR_MAX && rdirs[i]; i++)
        ;
    if (i == RDIR_MAX) {
        pthread_mutex_unlock(&lock);
        free(d);
        errno = EMFILE;
        return NULL;
    }
    rdirs[i] = d;
    __atomic_add_fetch(&rdir_count, 1, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&lock);
    return (DIR *)d;
}

DIR *rmt_opendir(int dslot, const char *rpath)
{
    /* glibc's opendir opens with O_NONBLOCK too, and F_GETFL of dirfd() shows it */
    int fd = rmt_open(dslot, rpath, O_RDONLY | O_NONBLOCK | O_DIRECTORY | O_CLOEXEC, 0);
    if (fd < 0)
        return NULL;
    if (!rmt_is_fd(fd)) {
        DIR *local = fdopendir(fd);         /* remapped to a local: directory */
        if (!local) {
            int e = errno;
            close(fd);
            errno = e;
        }
        return local;
    }
    DIR *d = rmt_fdopendir(fd);
    if (!d) {
        int e = errno;
        rmt_close(fd);
        errno = e;
    }
    return d;
}

/* Records from rx_getdents: ino (u64 BE), neutral d_type (u8), name length (u16 BE), name. */
struct dirent *rmt_readdir(DIR *dir)
{
    struct rdir *d = (struct rdir *)dir;
    if (d->pos >= d->len) {
        if (d->eof)
            return NULL;
        int before = errno;
        ssize_t n = bypass_shadow_bypass_rx_getdents(d->fd, d->buf, sizeof d->buf);
        if (n <= 0) {
            d->eof = 1;
            if (n < 0 && errno == ENOENT)
                errno = before;     /* a removed directory: glibc's readdir ends, no error */
            return NULL;        /* errno tells an error from the end */
        }
        d->len = (size_t)n;
        d->pos = 0;
    }
    const unsigned char *p = d->buf + d->pos;
    if (d->len - d->pos < 11) {
        d->eof = 1;
        errno = EIO;
        return NULL;
    }
    uint64_t ino = 0;
    for (int i = 0; i < 8; i++)
        ino = ino << 8 | p[i];
    int type = p[8];
    size_t nlen = (size_t)p[9] << 8 | p[10];
    if (d->len - d->pos < 11 + nlen || nlen >= sizeof d->ent.d_name) {
        d->eof = 1;
        errno = EIO;
        return NULL;
    }
    d->ent.d_ino = ino;
    d->ent.d_off = 0;
    d->ent.d_reclen = sizeof d->ent;
    d->ent.d_type = (unsigned char)bypass_dirent_types_to_local(type, NULL);
    memcpy(d->ent.d_name, p + 11, nlen);
    d->ent.d_name[nlen] = 0;
    d->pos += 11 + nlen;
    return &d->ent;
}

int rmt_closedir(DIR *dir)
{
    struct rdir *d = (struct rdir *)dir;
    pthread_mutex_lock(&lock);
    for (int i = 0; i < RDIR_MAX; i++)
        if (rdirs[i] == d) {
            rdirs[i] = NULL;
            __atomic_sub_fetch(&rdir_count, 1, __ATOMIC_RELEASE);
        }
    pthread_mutex_unlock(&lock);
    int rc = rmt_close(d->fd);
    free(d);
    return rc;
}

int rmt_dirfd(DIR *dir)
{
    return ((struct rdir *)dir)->fd;
}

void rmt_rewinddir(DIR *dir)
{
    struct rdir *d = (struct rdir *)dir;
    d->len = d->pos = 0;
    d->eof = 0;
    bypass_shadow_bypass_rx_rewinddir(d->fd);
}

/* scandir over a remote directory: entries copied into malloc'ed dirents, as glibc does. */
int rmt_scandir(int dslot, const char *rpath, struct dirent ***namelist, int (*filter)(const struct dirent *),
                int (*compar)(const struct dirent **, const struct dirent **))
{
    DIR *d = rmt_opendir(dslot, rpath);
    if (!d)
        return -1;
    struct dirent **list = NULL, *e;
    size_t n = 0, cap = 0;
    int saved = errno;
    errno = 0;
    while ((e = rmt_readdir(d)) != NULL) {
        if (filter && !filter(e))
            continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 16;
            struct dirent **grown = realloc(list, cap * sizeof *list);
            if (!grown)
                goto fail;
            list = grown;
        }
        if (!(list[n] = malloc(sizeof *e)))
            goto fail;
        memcpy(list[n++], e, sizeof *e);
    }
    if (errno)
        goto fail;
    rmt_closedir(d);
    if (compar && n > 1)
        qsort(list, n, sizeof *list, (int (*)(const void *, const void *))compar);
    *namelist = list;
    errno = saved;
    return (int)n;
fail:
    {
        int err = errno ? errno : ENOMEM;
        while (n > 0)
            free(list[--n]);
        free(list);
        rmt_closedir(d);
        errno = err;
        return -1;
    }
}

/* ---- current directory ------------------------------------------------------------------------ */

/* The marker of this run: next to a Unix shadow's socket (a private directory, removed with
 * it by the shadow), else /tmp/.bypass-cwd-<hash of the shadow address>.  Read-only and
 * empty: nothing of one run is ever visible to another. */
static char marker[PATH_MAX];

static const char *cwd_marker(void)
{
    if (marker[0])
        return marker;
    const char *addr = bypass_getenv("BYPASS_SHADOW");
    if (addr && strncmp(addr, "unix:", 5) == 0 && strlen(addr) + 4 < sizeof marker) {
        snprintf(marker, sizeof marker, "%s.cwd", addr + 5);
    } else {
        unsigned long long h = 1469598103934665603ULL;       /* FNV-1a */
        for (const char *c = addr ? addr : ""; *c; c++)
            h = (h ^ (unsigned char)*c) * 1099511628211ULL;
        snprintf(marker, sizeof marker, "/tmp/.bypass-cwd-%016llx", h);
    }
    return marker;
}

/* Sit in the marker, refusing one that someone else could have prepared. */
static int enter_marker(void)
{
    const char *m = cwd_marker();
    struct stat st;
    if (mkdir(m, 0555) < 0 && errno != EEXIST)
        return -1;
    if (lstat(m, &st) < 0)
        return -1;
    if (!S_ISDIR(st.st_mode) || (st.st_mode & 022) || (st.st_uid != geteuid() && st.st_uid != 0)) {
        errno = EACCES;
        return -1;
    }
    return chdir(m);
}

int rmt_chdir(int dslot, const char *rpath)
{
    char next[RMT_PATH_MAX];
    ssize_t n = bypass_shadow_bypass_rx_chdir(dslot, rpath, next, sizeof next - 1);
    if (n < 0 || enter_marker() < 0)
        return -1;
    next[n] = 0;
    if (in_vfork_child()) {
        snprintf(vfork_cwd, sizeof vfork_cwd, "%s", next);
        vfork_pid = getpid();
    } else {
        snprintf(cwd, sizeof cwd, "%s", next);
    }
    return 0;
}

int rmt_fchdir(int fd)
{
    return rmt_chdir(fd, "");
}

void rmt_chdir_local(void)
{
    if (in_vfork_child()) {
        vfork_cwd[0] = 0;
        vfork_pid = getpid();
    } else {
        cwd[0] = 0;
    }
}

/* As glibc: getcwd(NULL, 0) allocates what it needs, getcwd(NULL, n) n bytes, a buffer with
 * size 0 is EINVAL, one too small ERANGE. */
char *rmt_getcwd(char *buf, size_t size)
{
    char full[RMT_PATH_MAX + 16];
    const char *here = cur_cwd();
    int n = snprintf(full, sizeof full, "%s%s", prefix, strcmp(here, "/") == 0 ? "" : here);
    if (n < 0 || (size_t)n >= sizeof full) {
        errno = ENAMETOOLONG;
        return NULL;
    }
    if (buf && size == 0) {
        errno = EINVAL;
        return NULL;
    }
    if (size && (size_t)n >= size) {
        errno = ERANGE;
        return NULL;
    }
    if (!buf) {
        buf = malloc(size ? size : (size_t)n + 1);
        if (!buf) {
            errno = ENOMEM;
            return NULL;
        }
    } else if (fault(buf, (size_t)n + 1) < 0) {
        return NULL;
    }
    memcpy(buf, full, (size_t)n + 1);
    return buf;
}

/* ---- start-up: settings, and placeholders inherited through exec ------------------------------ */

__attribute__((constructor)) static void remote_init(void)
{
    bypass_guard_enter();
    self_pid = getpid();
    page_size = (uintptr_t)sysconf(_SC_PAGESIZE);
    cur_umask = umask(0);        /* (single-threaded here: nobody creates a file meanwhile) */
    umask(cur_umask);
    const char *p = bypass_getenv("BYPASS_REMOTE_PREFIX");
    if (p && p[0] == '/') {
        snprintf(prefix, sizeof prefix, "%s", p);
        prefix_len = strlen(prefix);
        while (prefix_len > 1 && prefix[prefix_len - 1] == '/')
            prefix[--prefix_len] = 0;
    }
    const char *ra = bypass_getenv("BYPASS_REMOTE_READAHEAD");
    if (ra && atol(ra) >= RA_FIRST)
        ra_max = (size_t)atol(ra);
    /* After exec, our placeholders are still open (unless close-on-exec) but this image has
     * no table: find them by name and tell the shadow which ones survived. */
    DIR *d = opendir("/proc/self/fd");
    int kept[256], nkept = 0;
    long ids[256];
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            char link[64], target[128];
            int fd = atoi(e->d_name);
            if (e->d_name[0] == '.' || fd == dirfd(d) || fd >= MAX_FDS)
                continue;
            snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
            ssize_t n = readlink(link, target, sizeof target - 1);
            if (n <= 0)
                continue;
            target[n] = 0;
            const char *tag = strstr(target, "memfd:" PLACEHOLDER_NAME);
            if (tag && nkept < 256) {
                char *at = (char *)tag + strlen("memfd:" PLACEHOLDER_NAME);
                int flags = *at == ':' ? (int)strtol(at + 1, &at, 16) : O_RDWR;
                ids[nkept] = *at == ':' ? (long)strtoll(at + 1, NULL, 16) : 0;
                struct rfile **slot = slot_of(fd);
                if (slot) {
                    kept[nkept++] = fd;
                    *slot = new_rfile(flags);
                    if (*slot)
                        (*slot)->pol = pol_new(NULL, flags, fd);     /* counted, not buffered */
                }
            }
        }
        closedir(d);
    }
    for (int i = 0; i < nkept; i++)
        if (kept[i] <= 2)
            rmt_rebind_std(kept[i]);
    char here[PATH_MAX];
    if (getcwd(here, sizeof here) && strcmp(here, cwd_marker()) == 0) {
        ssize_t n = bypass_shadow_bypass_rx_getcwd(cwd, sizeof cwd - 1);
        cwd[n > 0 ? n : 0] = 0;
    }
    if (nkept > 0) {
        /* Ask the shadow to keep exactly these (those lost to close-on-exec are dropped). */
        if (bypass_shadow_bypass_rx_keep(kept, ids, nkept) < 0)
            bypass_log("remote: the shadow does not know this process's remote files (%s)",
                       strerror(errno));
        for (int i = 0; i < nkept; i++) {
            struct stat st;
            struct rfile *r = get(kept[i]);
            if (r && bypass_shadow_bypass_rx_fstat(kept[i], &st) == 0)
                r->is_dir = S_ISDIR(st.st_mode);
        }
    }
    bypass_guard_leave();
}

/* ---- ftw/nftw over a remote tree ---------------------------------------------------------------
 * glibc's walkers reach opendir and stat through internal names no preload sees, so a remote
 * tree is walked here, in glibc's order and with its rules (trailing slashes stripped, a
 * dangling symlink FTW_SLN or, for ftw, FTW_NS, an error other than EACCES/ENOENT ends the
 * walk with -1, without FTW_PHYS a directory already seen is skipped).  The callback runs as
 * the program's own code: its file calls go through the agent again. */

struct rwalk {
    char *path;                 /* PATH_MAX * 2, the current name */
    void *fn;
    int flags, nftw;
    dev_t dev;
    struct { dev_t dev; ino_t ino; } *seen;
    size_t nseen, capseen;
};

static int walk_stat(const char *path, struct stat *st, int follow)
{
    char rp[RMT_PATH_MAX];
    int ds = -1;
    int w = rmt_where2(AT_FDCWD, &path, &ds, rp, sizeof rp);
    if (w < 0)
        return -1;
    if (!w)
        return follow ? stat(path, st) : lstat(path, st);
    return rmt_stat(ds, rp, st, follow);
}

static int walk_call(struct rwalk *w, const struct stat *st, int flag, int level, int base)
{
    /* ftw reports what nftw calls FTW_SL/FTW_DP/FTW_SLN as FTW_F/FTW_D/FTW_NS */
    static const int ftw_flag[] = { FTW_F, FTW_D, FTW_DNR, FTW_NS, FTW_F, FTW_D, FTW_NS };
    int rc;
    bypass_guard_leave();
    if (w->nftw) {
        struct FTW f = { .base = base, .level = level };
        rc = ((int (*)(const char *, const struct stat *, int, struct FTW *))w->fn)(w->path, st, flag, &f);
    } else {
        rc = ((int (*)(const char *, const struct stat *, int))w->fn)(w->path, st, ftw_flag[flag]);
    }
    bypass_guard_enter();
    return rc;
}

static int walk_seen(struct rwalk *w, const struct stat *st)
{
    for (size_t i = 0; i < w->nseen; i++)
        if (w->seen[i].dev == st->st_dev && w->seen[i].ino == st->st_ino)
            return 1;
    if (w->nseen == w->capseen) {
        size_t cap = w->capseen ? w->capseen * 2 : 32;
        void *n = realloc(w->seen, cap * sizeof *w->seen);
        if (!n)
            return -1;
        w->seen = n;
        w->capseen = cap;
    }
    w->seen[w->nseen].dev = st->st_dev;
    w->seen[w->nseen].ino = st->st_ino;
    w->nseen++;
    return 0;
}

static int walk_dir(struct rwalk *w, const struct stat *st, int level, int base);

static int walk_entry(struct rwalk *w, size_t len, int level)
{
    struct stat st;
    int flag, result = 0;
    int phys = w->flags & FTW_PHYS;
    if (walk_stat(w->path, &st, !phys) < 0) {
        if (errno != EACCES && errno != ENOENT)
            return -1;
        if (phys)
            flag = FTW_NS;
        else
            flag = walk_stat(w->path, &st, 0) == 0 && S_ISLNK(st.st_mode) ? FTW_SLN : FTW_NS;
    } else {
        flag = S_ISDIR(st.st_mode) ? FTW_D : S_ISLNK(st.st_mode) ? FTW_SL : FTW_F;
    }
    if (flag == FTW_NS || !(w->flags & FTW_MOUNT) || st.st_dev == w->dev) {
        if (flag == FTW_D) {
            if (phys)
                result = walk_dir(w, &st, level, (int)(len - strlen(strrchr(w->path, '/') + 1)));
            else {
                int seen = walk_seen(w, &st);
                if (seen < 0)
                    return -1;
                if (!seen)
                    result = walk_dir(w, &st, level, (int)(len - strlen(strrchr(w->path, '/') + 1)));
            }
        } else {
            result = walk_call(w, &st, flag, level, (int)(len - strlen(strrchr(w->path, '/') + 1)));
        }
    }
    return result;
}

static int walk_dir(struct rwalk *w, const struct stat *st, int level, int base)
{
    char rp[RMT_PATH_MAX];
    int ds = -1;
    const char *path = w->path;
    int where = rmt_where2(AT_FDCWD, &path, &ds, rp, sizeof rp);
    DIR *d = where < 0 ? NULL : where ? rmt_opendir(ds, rp) : opendir(path);
    if (!d)
        return errno == EACCES ? walk_call(w, st, FTW_DNR, level, base) : -1;
    int result = 0;
    if (!(w->flags & FTW_DEPTH) && (result = walk_call(w, st, FTW_D, level, base)) != 0) {
        where ? rmt_closedir(d) : closedir(d);
        return result;
    }
    size_t len = strlen(w->path);
    struct dirent *e;
    while ((e = where ? rmt_readdir(d) : readdir(d)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        size_t n = strlen(e->d_name);
        if (len + 1 + n >= PATH_MAX * 2) {
            errno = ENAMETOOLONG;
            result = -1;
            break;
        }
        w->path[len] = '/';
        memcpy(w->path + len + 1, e->d_name, n + 1);
        result = walk_entry(w, len + 1 + n, level + 1);
        w->path[len] = 0;
        if (result != 0)
            break;
    }
    int e2 = errno;
    where ? rmt_closedir(d) : closedir(d);
    errno = e2;
    if (result == 0 && (w->flags & FTW_DEPTH))
        result = walk_call(w, st, FTW_DP, level, base);
    return result;
}

int rmt_ftw(const char *dir, void *fn, int flags, int nftw)
{
    if (!*dir) {
        errno = ENOENT;
        return -1;
    }
    struct rwalk w = { .fn = fn, .flags = flags, .nftw = nftw };
    size_t n = strlen(dir);
    w.path = malloc(PATH_MAX * 2);
    if (!w.path)
        return -1;
    if (n >= PATH_MAX * 2) {
        free(w.path);
        errno = ENAMETOOLONG;
        return -1;
    }
    memcpy(w.path, dir, n + 1);
    while (n > 1 && w.path[n - 1] == '/')
        w.path[--n] = 0;
    int base = (int)n;
    while (base > 0 && w.path[base - 1] != '/')
        base--;
    struct stat st;
    int result = 0;
    int phys = flags & FTW_PHYS;
    if (walk_stat(w.path, &st, !phys) < 0) {
        if (!phys && errno == ENOENT && walk_stat(dir, &st, 0) == 0 && S_ISLNK(st.st_mode))
            result = walk_call(&w, &st, FTW_SLN, 0, base);
        else
            result = -1;
    } else if (S_ISDIR(st.st_mode)) {
        w.dev = st.st_dev;
        if (!phys)
            result = walk_seen(&w, &st) < 0 ? -1 : 0;
        if (result == 0)
            result = walk_dir(&w, &st, 0, base);
    } else {
        result = walk_call(&w, &st, S_ISLNK(st.st_mode) ? FTW_SL : FTW_F, 0, base);
    }
    int e = errno;
    free(w.path);
    free(w.seen);
    errno = e;
    return result;
}

/* ---- posix_spawn file actions -------------------------------------------------------------------
 * The child performs the file actions itself, in glibc, where no preload sees them.  An open
 * of a remote path is therefore done here, by the shadow, before the child exists (its error
 * is posix_spawn's answer) and becomes a dup2 of that descriptor; a chdir into the remote
 * tree is refused (ENOTSUP) once the shadow has said the directory is there: the child could
 * not carry a remote current directory out of glibc's hands.  glibc 2.36's layout: */
struct rmt_spawn_action {
    enum { SA_CLOSE, SA_DUP2, SA_OPEN, SA_CHDIR, SA_FCHDIR, SA_CLOSEFROM, SA_TCSETPGRP } tag;
    union {
        struct { int fd; } close_action;
        struct { int fd; int newfd; } dup2_action;
        struct { int fd; char *path; int oflag; mode_t mode; } open_action;
        struct { char *path; } chdir_action;
        struct { int fd; } fchdir_action;
        struct { int from; } closefrom_action;
        struct { int fd; } setpgrp_action;
    } action;
};

/* Where a path of a file action lives: relative ones after a chdir action are relative to it. */
static int spawn_where(const char *dir, const char *path, int *ds, char *rp, size_t cap)
{
    char joined[PATH_MAX * 2];
    if (dir && path[0] != '/') {
        if (snprintf(joined, sizeof joined, "%s/%s", dir, path) >= (int)sizeof joined) {
            errno = ENAMETOOLONG;
            return -1;
        }
        path = joined;
    }
    return rmt_where(AT_FDCWD, path, ds, rp, cap);
}

static pthread_mutex_t spawn_lock = PTHREAD_MUTEX_INITIALIZER;
static int spawn_kept[64], spawn_nkept;
static void spawn_release(void);

int rmt_spawn_actions(const posix_spawn_file_actions_t *fa, posix_spawn_file_actions_t *out, int *staged,
                      int *nstaged, int max)
{
    *nstaged = 0;
    if (__atomic_load_n(&spawn_nkept, __ATOMIC_RELAXED))
        spawn_release();
    if (!fa || fa->__used <= 0)
        return 0;
    const struct rmt_spawn_action *a = (const struct rmt_spawn_action *)fa->__actions;
    char rp[RMT_PATH_MAX];
    int ds, need = 0;
    const char *dir = NULL;
    for (int i = 0; i < fa->__used && !need; i++) {
        if (a[i].tag == SA_OPEN)
            need = spawn_where(dir, a[i].action.open_action.path, &ds, rp, sizeof rp) != 0;
        else if (a[i].tag == SA_CHDIR) {
            need = spawn_where(dir, a[i].action.chdir_action.path, &ds, rp, sizeof rp) != 0;
            dir = a[i].action.chdir_action.path;
        } else if (a[i].tag == SA_FCHDIR)
            need = rmt_is_fd(a[i].action.fchdir_action.fd);
    }
    if (!need)
        return 0;
    posix_spawn_file_actions_init(out);
    int err = 0;
    dir = NULL;
    for (int i = 0; i < fa->__used && !err; i++) {
        switch (a[i].tag) {
        case SA_CLOSE:
            err = posix_spawn_file_actions_addclose(out, a[i].action.close_action.fd);
            break;
        case SA_DUP2:
            err = posix_spawn_file_actions_adddup2(out, a[i].action.dup2_action.fd, a[i].action.dup2_action.newfd);
            break;
        case SA_OPEN: {
            const char *path = a[i].action.open_action.path;
            int w = spawn_where(dir, path, &ds, rp, sizeof rp);
            if (w < 0) {
                err = errno;
            } else if (!w) {
                err = posix_spawn_file_actions_addopen(out, a[i].action.open_action.fd, path,
                                                       a[i].action.open_action.oflag, a[i].action.open_action.mode);
            } else if (*nstaged >= max) {
                err = EMFILE;
            } else {
                int fd = rmt_open(ds, rp, a[i].action.open_action.oflag | O_CLOEXEC, a[i].action.open_action.mode);
                if (fd >= 0 && !rmt_is_fd(fd)) {
                    close(fd);          /* remapped to local: or a URL: not handed over here */
                    fd = -1;
                    errno = ENOTSUP;
                }
                if (fd >= 0) {
                    /* out of the way of the numbers the actions name (a descriptor the program
                     * closed before spawning must stay closed for them) */
                    int hi = fcntl(fd, F_DUPFD_CLOEXEC, 1024);
                    if (hi >= 0 && rmt_dup_done(fd, hi) == 0) {
                        rmt_close(fd);
                        fd = hi;
                    } else if (hi >= 0) {
                        close(hi);
                    }
                }
                if (fd < 0) {
                    err = errno;
                } else {
                    /* ours only to hand over: the child's copy is the file's user */
                    bypass_shadow_bypass_rx_staged(fd);
                    staged[(*nstaged)++] = fd;
                    err = posix_spawn_file_actions_adddup2(out, fd, a[i].action.open_action.fd);
                }
            }
            break;
        }
        case SA_CHDIR: {
            const char *path = a[i].action.chdir_action.path;
            int w = spawn_where(dir, path, &ds, rp, sizeof rp);
            struct stat st;
            if (w < 0)
                err = errno;
            else if (!w)
                err = posix_spawn_file_actions_addchdir_np(out, path);
            else if (rmt_stat(ds, rp, &st, 1) < 0)
                err = errno;
            else
                err = S_ISDIR(st.st_mode) ? ENOTSUP : ENOTDIR;
            dir = path;
            break;
        }
        case SA_FCHDIR:
            err = rmt_is_fd(a[i].action.fchdir_action.fd)
                      ? ENOTSUP
                      : posix_spawn_file_actions_addfchdir_np(out, a[i].action.fchdir_action.fd);
            break;
        case SA_CLOSEFROM:
            err = posix_spawn_file_actions_addclosefrom_np(out, a[i].action.closefrom_action.from);
            break;
        case SA_TCSETPGRP:
            err = posix_spawn_file_actions_addtcsetpgrp_np(out, a[i].action.setpgrp_action.fd);
            break;
        default:
            err = ENOTSUP;         /* a newer glibc's action this agent does not know */
        }
    }
    if (err) {
        rmt_spawn_done(out, staged, *nstaged, 0);
        *nstaged = 0;
        return err;
    }
    return -1;
}

/* A spawned child copies this process's table when it first reaches the shadow, later than
 * posix_spawn returns: the staged descriptors stay open here until the next spawn (they are
 * close-on-exec, so an exec drops them too). */
void rmt_spawn_done(posix_spawn_file_actions_t *out, const int *staged, int nstaged, int spawned)
{
    int e = errno;
    posix_spawn_file_actions_destroy(out);
    pthread_mutex_lock(&spawn_lock);
    for (int i = 0; i < nstaged; i++) {
        if (spawned && spawn_nkept < (int)(sizeof spawn_kept / sizeof *spawn_kept))
            spawn_kept[spawn_nkept++] = staged[i];
        else
            rmt_close(staged[i]);
    }
    pthread_mutex_unlock(&spawn_lock);
    errno = e;
}

static void spawn_release(void)
{
    pthread_mutex_lock(&spawn_lock);
    for (int i = 0; i < spawn_nkept; i++)
        rmt_close(spawn_kept[i]);
    spawn_nkept = 0;
    pthread_mutex_unlock(&spawn_lock);
}

/* ---- getdents64/getdirentries on a remote directory: Linux dirent64 records -------------------- */
ssize_t rmt_getdents64(int fd, void *buf, size_t length, off_t *basep)
{
    struct rfile *r = get(fd);
    if (!r || (r->flags & O_PATH)) {
        errno = EBADF;
        return -1;
    }
    if (!r->is_dir) {
        errno = ENOTDIR;
        return -1;
    }
    if (fault(buf, length) < 0)
        return -1;
    /* a dirent64 takes at most 16 bytes more than a packed record: ask for what surely fits */
    unsigned char packed[32768];
    size_t ask = length / 5 * 2 < sizeof packed ? length / 5 * 2 : sizeof packed;
    if (ask < 11 + 256)
        ask = length >= 24 + 256 ? 11 + 256 : 0;
    if (!ask) {
        errno = EINVAL;          /* the kernel: the buffer holds not even one record */
        return -1;
    }
    ssize_t n = bypass_shadow_bypass_rx_getdents(fd, packed, ask);
    if (n < 0)
        return -1;
    size_t at = 0, out = 0;
    while (at + 11 <= (size_t)n) {
        const unsigned char *p = packed + at;
        uint64_t ino = 0;
        for (int i = 0; i < 8; i++)
            ino = ino << 8 | p[i];
        size_t nlen = (size_t)p[9] << 8 | p[10];
        if (at + 11 + nlen > (size_t)n)
            break;
        size_t reclen = (offsetof(struct dirent64, d_name) + nlen + 1 + 7) & ~(size_t)7;
        if (out + reclen > length)
            break;               /* (cannot happen: see ask) */
        struct dirent64 *d = (struct dirent64 *)((char *)buf + out);
        d->d_ino = ino;
        d->d_off = (off_t)(out + reclen);
        d->d_reclen = (unsigned short)reclen;
        d->d_type = (unsigned char)bypass_dirent_types_to_local(p[8], NULL);
        memcpy(d->d_name, p + 11, nlen);
        memset(d->d_name + nlen, 0, reclen - offsetof(struct dirent64, d_name) - nlen);
        out += reclen;
        at += 11 + nlen;
    }
    if (basep)
        *basep = 0;
    return (ssize_t)out;
}
