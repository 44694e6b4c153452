/*
 * sandbox_agent.h - small helpers for the actions in sandbox.bypass.
 *
 * The actions follow one pattern: ask sb_resolve() about the path, fail
 * with its errno or replace the path argument by the real path, then call
 * the next layer (BYPASS_NEXT() passes the action's current arguments).
 */
#ifndef BYPASS_SANDBOX_AGENT_H
#define BYPASS_SANDBOX_AGENT_H

#include "sandbox.h"

#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>
#include <alloca.h>

/* A check's result (16 KB) on the stack from where the action needs it on: in the entry's own
 * frame it put every call 16 KB deeper, those answered before any check too (an inactive
 * agent, a tree walk's quick verdict), whose real function then ran on stack pages the
 * program itself never touches, a page fault each in every process. */
#define SB_RESULT_NEW() ((struct sb_result *)alloca(sizeof(struct sb_result)))

/* Resolve `var` (a path parameter of the action) for operation `op` and
 * replace it with the real path (unless the path, relative to a directory
 * descriptor the agent opened, already reaches it); on refusal return
 * `failval` with errno. */
#define SB_MAP(op, dirfd, var, flags, failval)                                 \
    struct sb_result *sb_r_##var = SB_RESULT_NEW();                            \
    do {                                                                       \
        int sb_e_ = sb_resolve((op), (dirfd), (var), (flags) | SB_KERNEL_ERRS,  \
                               sb_r_##var);                                    \
        if (sb_e_) {                                                           \
            errno = sb_e_;                                                     \
            return failval;                                                    \
        }                                                                      \
        if (!sb_r_##var->rel_ok)                                               \
            (var) = sb_r_##var->rpath;                                         \
    } while (0)

/* A call that hands the program's (dirfd, var) to the kernel unchanged when allowed: the quick
 * answer for a tree walk's step (sb_name_verdict), with no path built; where there is none,
 * the action goes on to SB_MAP. */
#define SB_VERDICT_FIRST(op, dirfd, var, failval)                              \
    do {                                                                       \
        int sb_v_ = sb_name_verdict((op), (dirfd), (var));                     \
        if (sb_v_ == 0)                                                        \
            return BYPASS_NEXT();                                              \
        if (sb_v_ > 0) {                                                       \
            errno = sb_v_;                                                     \
            return failval;                                                    \
        }                                                                      \
    } while (0)

/* The path to hand the kernel after a check: the program's own wherever it
 * reaches the place checked (see sb_result.rel_ok), else the real one. */
#define SB_KPATH(r, asked) ((r).rel_ok ? (asked) : (r).rpath)

/* Early exit when no mount list is installed: the agent is a pass-through. */
#define SB_PASS_IF_INACTIVE()                                                  \
    do {                                                                       \
        if (!sb_active())                                                      \
            return BYPASS_NEXT();                                              \
    } while (0)

/* Give a child the run's own settings, whatever its environment says. */
#define SB_ENV_FIX(envp)                                                       \
    size_t sb_envn_ = 0;                                                       \
    while ((envp) && (envp)[sb_envn_])                                         \
        sb_envn_++;                                                            \
    char *sb_envroom_[sb_envn_ + 4];                                           \
    (envp) = sb_env_fix((envp), sb_envroom_, sb_envn_)

/* What an open() with these flags will do to the file. */
static inline int sb_open_op(int flags)
{
    if ((flags & O_TMPFILE) == O_TMPFILE || (flags & O_CREAT))
        return SB_OP_CREATE;
    if ((flags & O_ACCMODE) != O_RDONLY || (flags & O_TRUNC))
        return SB_OP_WRITE;
    if (flags & O_PATH)
        return SB_OP_LOOKUP;
    return SB_OP_READ;
}

/* Flags the kernel refuses (EINVAL) before it looks at the descriptor or the path:
 * such a call changes nothing and goes to the kernel as it is, for the kernel's order. */
static inline int sb_open_einval(int flags)
{
    const int tmp = O_TMPFILE & ~O_DIRECTORY;
    if (flags & O_PATH)
        return 0;                       /* the kernel drops the other flags */
    if ((flags & (O_CREAT | O_DIRECTORY)) == (O_CREAT | O_DIRECTORY))
        return 1;
    return (flags & tmp) && ((flags & (tmp | O_DIRECTORY | O_CREAT)) != (tmp | O_DIRECTORY) ||
                             (flags & O_ACCMODE) == O_RDONLY);
}

/* Open (dirfd, path) exactly as openat(2) would, except that the kernel refuses with ELOOP
 * instead of following a symlink anywhere on the way (openat2 RESOLVE_NO_SYMLINKS).  This is
 * how the agent learns, at no extra cost, that the name it checked is the file opened: the
 * descriptor keeps the program's own flags (an added O_NOFOLLOW would show in F_GETFL).
 * -1 with ENOSYS when openat2 is missing (before Linux 5.6) or filtered (a seccomp profile
 * may answer EPERM): the first call tells, and only an ENOSYS or EPERM answer is checked once
 * more on "/" (no extra system call per process otherwise). */
static inline int sb_open_no_links(int dirfd, const char *path, int flags, mode_t mode)
{
    static int have_openat2 SB_HOT;     /* 0 not yet known, 1 yes, -1 no */
    struct sb_open_how {
        unsigned long long flags, mode, resolve;
    } how;
    if (have_openat2 < 0) {
        errno = ENOSYS;
        return -1;
    }
    /* what openat(2) hands on: the flags it knows (O_LARGEFILE forced on 64-bit), a mode
     * only for a file it may create */
    how.flags = (unsigned long long)(flags & 077777703) | 0100000;
    how.mode = (flags & (O_CREAT | (O_TMPFILE & ~O_DIRECTORY))) ? (mode & 07777) : 0;
    how.resolve = 0x04;                 /* RESOLVE_NO_SYMLINKS */
    int fd = (int)syscall(437 /* SYS_openat2 */, dirfd, path, &how, sizeof how);
    if (__builtin_expect(have_openat2 == 0, 0)) {
        /* the first call tells, unless its answer could be a filter's as well as the file's */
        int e = errno;
        int known = fd >= 0 || (e != ENOSYS && e != EPERM);
        if (!known) {
            struct sb_open_how root = {010000000 | 02000000 /* O_PATH|O_CLOEXEC */, 0, 0x04};
            long t = syscall(437 /* SYS_openat2 */, AT_FDCWD, "/", &root, sizeof root);
            if (t >= 0)
                syscall(SYS_close, (int)t);
            known = t >= 0;
        }
        __atomic_store_n(&have_openat2, known ? 1 : -1, __ATOMIC_RELAXED);
        if (!known) {
            errno = ENOSYS;
            return -1;
        }
        errno = e;
    }
    return fd;
}

/* Remember what an open through the agent opened: directories (the base of later names) and
 * files opened to write (fchmod, fchown, futimens usually follow: tar, cp -p, install).  A file
 * opened only to read is left to the kernel's /proc answer, should such a call come. */
#define SB_NOTE_OPENED(fd, r, flags)                                           \
    do {                                                                       \
        int sb_dir_ = ((flags) & O_DIRECTORY) && ((flags) & O_TMPFILE) != O_TMPFILE; \
        if (sb_dir_ || ((flags) & O_ACCMODE) != O_RDONLY || ((flags) & O_CREAT)) \
            sb_fd_note_result((fd), (r), sb_dir_);                             \
        else if (sb_ends_in_dot((r)->rpath))                                   \
            sb_fd_note_result((fd), (r), SB_DIR_BY_DOT);                       \
        else                                                                   \
            sb_fd_forget(fd);                                                  \
    } while (0)

/* A path whose last component is "." ("." itself, "dir/."): opened, it can only be a
 * directory, and find, tar and many others open "." to come back to it with fchdir. */
static inline int sb_ends_in_dot(const char *path)
{
    size_t l = strlen(path);
    return l > 2 && path[l - 1] == '.' && path[l - 2] == '/';
}

/* Same for an fopen() mode string. */
static inline int sb_fopen_op(const char *mode)
{
    if (!mode)
        return SB_OP_READ;
    if (mode[0] == 'w' || mode[0] == 'a')
        return SB_OP_CREATE;
    if (strchr(mode, '+'))
        return SB_OP_WRITE;
    return SB_OP_READ;
}

/* access() modes map to the operation they ask about. */
static inline int sb_access_op(int mode)
{
    if (mode & W_OK)
        return SB_OP_WRITE;
    if (mode & R_OK)
        return SB_OP_READ;
    return SB_OP_LOOKUP;
}

/* The symlink-follow flag of *at() calls. */
static inline int sb_at_flags(int atflags)
{
    return (atflags & AT_SYMLINK_NOFOLLOW) ? SB_NOFOLLOW : 0;
}

/* An *at() call on the descriptor itself: "" (or, since Linux 6.11, NULL) with AT_EMPTY_PATH.
 * A NULL path without it is the kernel's EFAULT (utimensat, where NULL means the descriptor,
 * says so itself). */
static inline int sb_on_fd(const char *path, int atflags)
{
    return (atflags & AT_EMPTY_PATH) && (path == NULL || (!sb_string_unreadable(path) && path[0] == '\0'));
}

/* utimensat with both times UTIME_OMIT: the kernel changes nothing and returns 0 before it
 * looks at the path or the descriptor. */
static inline int sb_times_omitted(const struct timespec *t)
{
    return t && !sb_unreadable(t) && t[0].tv_nsec == UTIME_OMIT && t[1].tv_nsec == UTIME_OMIT;
}

/* Permission check of a call that works on a descriptor's own file. */
static inline int sb_check_fd(int dirfd, int op)
{
    struct sb_result r;
    return sb_resolve(op, dirfd, "", SB_EMPTY_OK | SB_KERNEL_ERRS, &r);   /* EBADF: the kernel's */
}

/* A change made through a descriptor (fchmod, fchown, futimens, fsetxattr): the place
 * it names must be writable; Landlock has no right for these, so only this check holds
 * them.  Pipes and sockets are no place (ENOTDIR from the walk): nothing to check. */
static inline int sb_check_fd_change(int fd)
{
    int e = sb_check_fd(fd, SB_OP_WRITE);
    return e == ENOTDIR ? 0 : e;
}

#define SB_FD_CHANGE(fd, failval)                                              \
    do {                                                                       \
        int sb_e_ = sb_check_fd_change(fd);                                    \
        if (sb_e_) {                                                           \
            errno = sb_e_;                                                     \
            return failval;                                                    \
        }                                                                      \
    } while (0)

/* An AF_UNIX address naming a path (not abstract, not unnamed)? */
static inline int sb_unix_path(const struct sockaddr *addr, socklen_t len)
{
    return addr && len > offsetof(struct sockaddr_un, sun_path) && addr->sa_family == AF_UNIX &&
           ((const struct sockaddr_un *)addr)->sun_path[0] != '\0';
}

/* bind/connect: the socket's path through the policy, the address rewritten into `room`
 * when the path is translated.  0 or errno. */
static inline int sb_unix_map(int op, const struct sockaddr **addr, socklen_t *len,
                              struct sockaddr_un *room)
{
    const struct sockaddr_un *un = (const struct sockaddr_un *)*addr;
    size_t max = *len - offsetof(struct sockaddr_un, sun_path);
    if (max > sizeof un->sun_path)
        max = sizeof un->sun_path;
    char path[sizeof un->sun_path + 1];
    memcpy(path, un->sun_path, max);
    path[max] = '\0';
    struct sb_result r;
    /* the kernel's own error where the walk fails on a path mapped to itself: bind of "loop/"
     * (a symlink to itself) is EADDRINUSE there, the name exists, not the walk's ELOOP */
    int e = sb_resolve(op, AT_FDCWD, path, SB_NOFOLLOW | SB_KERNEL_ERRS, &r);
    if (e || r.rel_ok)
        return e;
    size_t rl = strlen(r.rpath);
    if (rl + 1 > sizeof room->sun_path)
        return ENAMETOOLONG;
    memset(room, 0, sizeof *room);
    room->sun_family = AF_UNIX;
    memcpy(room->sun_path, r.rpath, rl + 1);
    *addr = (const struct sockaddr *)room;
    *len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + rl + 1);
    return 0;
}

/* mkstemp & co. write the generated name into the template: after running
 * the real call on the translated copy, give the program the same name in
 * its own template.  The last component is the same in both. */
static inline void sb_copy_back_name(char *program_template, const char *real_template)
{
    const char *rs = strrchr(real_template, '/');
    char *ps = strrchr(program_template, '/');
    rs = rs ? rs + 1 : real_template;
    ps = ps ? ps + 1 : program_template;
    size_t n = strlen(ps);
    if (strlen(rs) == n)
        memcpy(ps, rs, n);
}

/* Copy a virtual path out the way getcwd/realpath do (buf may be NULL). */
static inline char *sb_hand_out(const char *v, char *buf, size_t size, int sized)
{
    size_t l = strlen(v) + 1;
    if (!buf) {
        size_t n = (sized && size) ? size : l;
        if (n < l) {
            errno = ERANGE;
            return NULL;
        }
        buf = malloc(n);
        if (!buf) {
            errno = ENOMEM;
            return NULL;
        }
    } else if (sized) {
        if (size == 0) {
            errno = EINVAL;
            return NULL;
        }
        if (size < l) {
            errno = ERANGE;
            return NULL;
        }
    }
    memcpy(buf, v, l);
    return buf;
}

/* The agent's start: parse the list, refuse to run on a bad one. */
void sb_agent_init(void);

#endif
