/*
 * sandbox.h - support library of the Bypass sandbox agent.
 *
 * The agent's actions (sandbox.bypass) ask this library one question per
 * path-taking call: "for this operation on this path, what does the mount
 * list say?"  The answer is either a real path to hand to the kernel or an
 * errno value.  The library keeps the state that answer needs: the parsed
 * mount list, the virtual current directory, a table of descriptors opened
 * through the agent, and a cache of directories known not to be symlinks.
 *
 * Vocabulary
 *   virtual path  the path as the program sees it ("/tmp/a")
 *   real path     the path the kernel gets ("/tmp/bypass-private-x1y2/tmp/a")
 *   entry         one line of the mount list: prefix -> redirect, mode
 *
 * Nothing here is a security boundary: a static program or a raw syscall
 * never reaches this code.  See README.md.
 */
#ifndef BYPASS_SANDBOX_H
#define BYPASS_SANDBOX_H

#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

/* A raw system call: the result, or -errno.  For the agent's own work where the C library's
 * wrapper, or the agent's wrapper of the same name (which a call by name inside the agent
 * reaches first), would cost more than the call: the exec check in a fork child, the Landlock
 * ruleset's walk.  Hand-written for x86-64 (no errno, no page of the C library touched);
 * other architectures take libc's syscall(). */
/* Small state every process touches: in .data, on the page the loader writes anyway (see
 * BYPASS_HOT in the runtime's header). */
#define SB_HOT __attribute__((section(".data.bypass_hot"), aligned(8)))
/* A large buffer: after .bss (see BYPASS_LARGE in the runtime's header). */
#if defined(__x86_64__)
#define SB_LARGE __attribute__((section(".lbss.bypass")))
#else
#define SB_LARGE
#endif

static inline long sb_sys4(long nr, long a, long b, long c, long d)
{
#if defined(__x86_64__)
    register long r10 __asm__("r10") = d;
    long ret;
    __asm__ volatile("syscall" : "=a"(ret) : "a"(nr), "D"(a), "S"(b), "d"(c), "r"(r10)
                     : "rcx", "r11", "memory");
    return ret;
#else
    long ret = syscall(nr, a, b, c, d);
    return ret < 0 ? -errno : ret;
#endif
}

/* A record of getdents64, for the listings the agent makes by raw system calls. */
struct sb_dirent64 {
    unsigned long long d_ino;
    long long d_off;
    unsigned short d_reclen;
    unsigned char d_type;
    char d_name[];
};

#ifdef __cplusplus
extern "C" {
#endif

/* Environment variables (documented in README.md). */
#define SB_ENV_MOUNTS        "BYPASS_MOUNTS"             /* mount list file */
#define SB_ENV_PRIVATE       "BYPASS_SANDBOX_PRIVATE"    /* private dir of this run (set by the first process) */
#define SB_ENV_PRIVATE_BASE  "BYPASS_SANDBOX_PRIVATE_BASE" /* where private dirs are made (make_private_dir) */
#define SB_ENV_CLEANUP       "BYPASS_SANDBOX_CLEANUP"    /* 0: keep the private dir (as KEEP_PRIVATE=1) */
#define SB_ENV_KEEP_PRIVATE  "BYPASS_SANDBOX_KEEP_PRIVATE" /* 1: keep the private dir and say where */
#define SB_ENV_ALLOW_STATIC  "BYPASS_SANDBOX_ALLOW_STATIC" /* 1: let static executables run */
#define SB_ENV_ROFS          "BYPASS_SANDBOX_EROFS"      /* 1: writes in read-only places give EROFS, not EACCES */
#define SB_ENV_CACHE         "BYPASS_SANDBOX_CACHE"      /* 0: no directory cache (see README) */
#define SB_ENV_QUIET         "BYPASS_SANDBOX_QUIET"      /* 1: do not print the private dir at exit */
#define SB_ENV_POLICY        "BYPASS_SANDBOX_POLICY"     /* descriptor of the run's sealed policy */
#define SB_ENV_KERNEL        "BYPASS_SANDBOX_KERNEL_ENFORCEMENT" /* 0: no Landlock ruleset */

/* Kinds of mount-list entry. */
enum sb_kind {
    SB_IDENTITY = 0,  /* "prefix mode": the path is itself, with that mode */
    SB_REDIRECT,      /* "prefix /other/path [mode]" */
    SB_DENY,          /* "prefix DENY": EACCES */
    SB_ENOENT,        /* "prefix ENOENT": the path does not exist */
    SB_PRIVATE        /* "prefix PRIVATE [mode]": fresh directory per run */
};

/* Mode bits of an entry. */
#define SB_R 4
#define SB_W 2
#define SB_X 1

struct sb_entry {
    char *prefix;       /* normalised absolute virtual prefix, "/" or no trailing slash */
    size_t plen;
    char *target;       /* real path for IDENTITY/REDIRECT/PRIVATE, NULL otherwise */
    size_t tlen;
    int kind;
    int mode;           /* SB_R|SB_W|SB_X */
    int line;           /* line in the mount list (0: implicit) */
    int glob;           /* prefix has *, ? or [ : matched component by component with
                           fnmatch, as Parrot does (DENY, ENOENT and modes only) */
};

struct sb_mounts {
    struct sb_entry *e;
    int n;
    char *file;         /* the list's name, for messages (malloc'd; every process of a run
                           parses the list, and a buffer of PATH_MAX here cost it pages) */
};

/* ---- mount list (mounts.c) ------------------------------------------------ */

/* Parse a mount list.  On error returns -1 and writes "file:line: error: msg"
 * into err.  PRIVATE entries get no target yet (see sb_private_attach). */
int sb_mounts_parse(struct sb_mounts *m, const char *text, const char *file,
                    char *err, size_t errsize);
int sb_mounts_load(struct sb_mounts *m, const char *file, char *err, size_t errsize);
/* The text of a mount list file (malloc'd), or NULL with err filled. */
char *sb_mounts_read(const char *file, char *err, size_t errsize);
void sb_mounts_free(struct sb_mounts *m);

/* The entry that governs an absolute, normalised virtual path (longest
 * matching prefix; for equal prefixes the later line).  Never NULL once
 * a list is installed: an implicit "/ rwx" entry backs every list. */
const struct sb_entry *sb_lookup(const struct sb_mounts *m, const char *vpath);

/* Length of the part of vpath an entry's prefix covers (glob entries match
 * as many components as they have), or 0 if it does not cover it. */
size_t sb_entry_covers(const struct sb_entry *e, const char *vpath);

/* Where Parrot, which lets the later of two covering lines win, would decide
 * differently from the longest prefix: "line 3 (/home) over line 5 (/), ..."
 * in out ("" when nowhere).  Returns the number of such pairs. */
int sb_mounts_parrot_differs(const struct sb_mounts *m, char *out, size_t outsize);

/* Real path for a virtual path under entry e.  Returns 0 or ENAMETOOLONG. */
int sb_translate(const struct sb_entry *e, const char *vpath, char *out, size_t outsize);

/* The real place of e's own prefix: where the entry around it (the longest shorter prefix with
 * a target) puts it, else the prefix itself.  A DENY, ENOENT or PRIVATE line names a place the
 * program cannot reach there: the place Landlock keeps it from.  0 or ENAMETOOLONG. */
int sb_prefix_real(const struct sb_mounts *m, const struct sb_entry *e, char *out, size_t outsize);

/* Virtual path under which a real path is visible.  Returns 1 if found,
 * 0 if the real path is not visible through any entry (out = real path). */
int sb_reverse(const struct sb_mounts *m, const char *real, char *out, size_t outsize);

/* Give PRIVATE entries their directories under dir (made if missing). */
int sb_private_attach(struct sb_mounts *m, const char *dir, char *err, size_t errsize);
/* Same, for a directory already known to be canonical (no realpath); make: create missing
 * subdirectories (the run's first process), else only name them (a child, which may run as
 * a user who cannot even look into them). */
int sb_private_attach_canonical(struct sb_mounts *m, const char *dir, int make, char *err,
                                size_t errsize);

/* Lexically normalise an absolute path: collapse "//", ".", ".." and the
 * trailing slash.  Returns 0 or ENAMETOOLONG/EINVAL. */
int sb_normalise(const char *in, char *out, size_t outsize);
/* Copy src into out, cut to outsize - 1 bytes as snprintf("%s") would, without the C library's
 * formatting code: a process that formats nothing itself need not fault its pages in. */
void sb_copy(char *out, size_t outsize, const char *src);

/* ---- kernel enforcement (landlock.c) ---------------------------------------- */

/* Landlock ABI version of the kernel, or -errno. */
int sb_landlock_abi(void);
/* Restrict this process and all it starts to the list (real paths, after
 * sb_private_attach); private_dir (or NULL): this run's, whose sibling
 * private directories of other runs get no access; self_path (or NULL): the
 * agent's file, which stays readable so that children can load it.  0, or an
 * errno.  `inexact` receives the directories the ruleset could not express
 * exactly (comma separated; "" when none). */
int sb_landlock_install(const struct sb_mounts *m, const char *private_dir, const char *self_path,
                        char *inexact, size_t inexact_size);
/* Rules the last sb_landlock_install added (the start-up's account, `-d process`). */
extern int sb_landlock_rules;

/* ---- global state and operations (resolve.c) ------------------------------ */

/* The runtime's memory checks (bypass/runtime/memory.c). */
int bypass_page_readable(const void *p);
int bypass_string_readable(const char *s);

/* Memory the kernel would answer EFAULT for: reading it in the agent would crash the program
 * instead.  Addresses no user-space object can live at are told without a system call; a
 * mapped but unreadable page (PROT_NONE) by the runtime, once per page and thread. */
static inline int sb_unreadable(const void *p)
{
    unsigned long a = (unsigned long)p;
#if defined(__x86_64__)
    if (a < 4096 || a >= (1UL << 47))
        return 1;
#elif defined(__LP64__)
    if (a < 4096 || a >= (1UL << 52))
        return 1;
#else
    if (a < 4096)
        return 1;
#endif
    return !bypass_page_readable(p);
}

/* The same for a whole string, to its NUL (a path may end in a page that cannot be read). */
static inline int sb_string_unreadable(const char *s)
{
    return !bypass_string_readable(s);     /* the bad-pointer test included */
}

/* Operations, i.e. what the call will do to the final path. */
enum sb_op {
    SB_OP_LOOKUP = 0, /* stat, access(F_OK), readlink, getxattr: any mode */
    SB_OP_READ,       /* open for reading, opendir, listxattr: r */
    SB_OP_WRITE,      /* open for writing, truncate, chmod, chown, utime, setxattr: w */
    SB_OP_CREATE,     /* O_CREAT, mkdir, mknod, symlink, link/rename destination: w */
    SB_OP_DELETE,     /* unlink, rmdir, rename source: w */
    SB_OP_EXEC,       /* execve, posix_spawn: x */
    SB_OP_CHDIR       /* chdir: any mode */
};

/* Flags for sb_resolve. */
#define SB_NOFOLLOW   1   /* do not follow a symlink in the last component */
#define SB_STRICT     2   /* every component must exist (realpath) */
#define SB_EMPTY_OK   4   /* "" means the dirfd itself (AT_EMPTY_PATH) */
#define SB_KERNEL_ERRS 8  /* the caller hands the path to the kernel: where the walk fails
                             (bad dirfd, missing or non-directory component, link loop, name
                             over PATH_MAX) on entries that map paths to themselves, answer 0
                             with rel_ok and no vpath/rpath, so the kernel gives its own errno */

/* A relative path below a deep directory may reach further than PATH_MAX
 * from the root and still be valid for the kernel, which walks it from the
 * directory: the walk keeps room for a directory of PATH_MAX plus such a path. */
#define SB_PATH_MAX (2 * PATH_MAX)

struct sb_result {
    int err;                       /* 0 or the errno the call must fail with */
    const struct sb_entry *entry;  /* entry of the final path */
    int magic;                     /* real path is a /proc magic link or a non-path fd object */
    int is_link;                   /* last component known to be a symlink (SB_NOFOLLOW) */
    int rel_ok;                    /* (dirfd, path) exactly as the program gave them reach the
                                      place checked: hand them to the kernel unchanged, so that
                                      ".", "..", trailing slashes and relative paths keep the
                                      kernel's own meaning (and an unreadable pointer its EFAULT) */
    char vpath[SB_PATH_MAX];       /* virtual absolute path, symlinks resolved */
    char rpath[SB_PATH_MAX];       /* real path for the kernel */
};

/* Install the mount list named by $BYPASS_MOUNTS (called once, from the
 * agent's constructor).  Returns 0 (also when the variable is unset: the
 * sandbox is then inactive), or -1 with err filled. */
int sb_init_from_env(char *err, size_t errsize);

/* Install an already parsed list (tests, and sb_init_from_env).  The list
 * is owned by the library afterwards.  cwd: the initial virtual cwd (NULL:
 * derived from the real cwd). */
void sb_install(struct sb_mounts *m, const char *cwd);
void sb_uninstall(void);
/* Read by every wrapper first: a variable of the agent (hidden), not a call into resolve.c. */
extern int sb_g_active;
static inline int sb_active(void) { return sb_g_active; }
const struct sb_mounts *sb_current(void);

/* The core question.  Returns 0 (r->rpath is the path to use) or an errno
 * (also stored in r->err). dirfd may be AT_FDCWD. */
int sb_resolve(int op, int dirfd, const char *path, int flags, struct sb_result *r);

/* The quick answer for the step of a tree walk, one plain name below a directory the agent
 * opened, for a call that hands the program's (dirfd, name) to the kernel as they are and needs
 * nothing else from sb_resolve: 0 (allowed, as given), an errno, or -1 when there is no quick
 * answer (then sb_resolve, which finds the same answer, decides).  No path is copied. */
int sb_name_verdict(int op, int dirfd, const char *name);

/* Permission check of an entry for an op: 0 or errno. */
int sb_check(const struct sb_entry *e, int op);

/* Two-path calls.  rename/link: both sides resolved and checked, EXDEV when
 * they fall in different redirected entries.  Hard links need write access
 * to the source too (a read-only file cannot be linked into a writable
 * place).  Returns 0 or errno. */
int sb_resolve_rename(int olddirfd, const char *oldpath, int newdirfd, const char *newpath,
                      struct sb_result *ro, struct sb_result *rn);
int sb_resolve_link(int olddirfd, const char *oldpath, int newdirfd, const char *newpath,
                    int follow, struct sb_result *ro, struct sb_result *rn);

/* Virtual cwd. */
int sb_getcwd(char *buf, size_t size);     /* 0 or ERANGE */
void sb_set_cwd(const char *vpath);        /* after a successful real chdir */
void sb_cwd_from_kernel(void);             /* after a chdir the agent could not walk */
int sb_fchdir_done(int fd);                /* after a successful real fchdir */

/* Descriptor table: remember the virtual path of descriptors opened through
 * the agent, kept up to date by the close/dup/fcntl actions.  */
void sb_fd_note(int fd, const char *vpath);
/* The same after an open checked by sb_resolve, from its answer; dir: opened as a
 * directory.  A file's descriptor is remembered too, so that fchmod, fchown, futimens...
 * find its place without asking the kernel (forgotten when that is not exact). */
/* dir: 0 a file, 1 a directory, SB_DIR_BY_DOT a directory known only because its path ends in
 * "/." (noted when the walk answered, else forgotten) */
#define SB_DIR_BY_DOT 2
void sb_fd_note_result(int fd, const struct sb_result *r, int dir);
void sb_fd_forget(int fd);
void sb_fd_forget_range(unsigned int lo, unsigned int hi);
void sb_fd_dup(int oldfd, int newfd);
/* Virtual path of an open descriptor: 0 or errno. */
int sb_fd_path(int fd, char *out, size_t outsize);

/* Reverse translation of a result buffer produced by the kernel (getcwd,
 * readlink of /proc magic links): rewrites buf in place. */
int sb_reverse_inplace(char *buf, size_t size);

/* readlink support: virtual contents of the link at a resolved path.
 * Returns length or -errno. */
ssize_t sb_readlink(const struct sb_result *r, char *buf, size_t size);

/* Listings: is `name` in the directory open on `fd` hidden by an ENOENT
 * entry?  sb_hides_names() says whether the list has such entries at all (asked on every
 * readdir: one variable, set when a list is installed). */
extern int sb_listings_filtered;
static inline int sb_hides_names(void)
{
    return __atomic_load_n(&sb_listings_filtered, __ATOMIC_ACQUIRE);
}
int sb_name_hidden(int fd, const char *name);

/* Directory cache invalidation (after rename/rmdir/... in this process). */
void sb_cache_flush(void);

/* Exec: refuse static executables unless allowed.  Returns 0 or errno
 * (printing a message when refusing). */
int sb_exec_check(const char *realpath_, const char *vpath);
/* 1 static ELF, 0 dynamic or not ELF, -1 unreadable. Follows "#!" once. */
int sb_elf_is_static(const char *realpath_);

/* The loader run as a program (ld.so [OPTION]... PROGRAM): PROGRAM must be
 * allowed to run too.  0 or errno (with a message). */
int sb_loader_check(const char *program, char *const *argv);

/* execvp/posix_spawnp: find `file` the way execvp would (PATH search when it
 * has no slash), checking each candidate against the mount list; r->rpath is
 * the real program to run.  fa: posix_spawnp's file actions (or NULL), whose
 * chdir actions move where a relative name or PATH entry is found, as in the
 * child.  0 or errno. */
int sb_find_program(const void *fa, const char *file, struct sb_result *r);

/* An environment for a child: envp with the run's own BYPASS_MOUNTS,
 * BYPASS_SANDBOX_POLICY and BYPASS_SANDBOX_PRIVATE in place of whatever the
 * program put there (one message when it changed them), built in room
 * (n = entries of envp; room has n + 4 slots).  Keeps the sealed policy's
 * descriptor open across the exec. */
char *const *sb_env_fix(char *const *envp, char **room, size_t n);
/* The same for `environ` itself (system, popen: their spawn is out of sight). */
void sb_environ_fix(void);

/* posix_spawn file-actions lists (spawn_actions.c): the directory an addchdir_np or
 * addfchdir_np moves the child to, for the relative paths checked after it.  All return 0 or
 * an errno (ENOMEM: no room to remember the list; EACCES: an fchdir to a descriptor the list
 * itself dup'ed over or closed, whose place cannot be known). */
int sb_spawn_resolve(const void *fa, int op, const char *path, int flags, struct sb_result *r);
int sb_spawn_chdir(const void *fa, const struct sb_result *r);
int sb_spawn_fchdir(const void *fa, int fd);
int sb_spawn_opened(const void *fa, int fd, const struct sb_result *r);
int sb_spawn_fd_changed(const void *fa, int fd);
void sb_spawn_forget(const void *fa);

/* Private directory. */
const char *sb_private_dir(void);
void sb_atexit_report(void);

/* Counters for tests and benchmarks. */
struct sb_stats {
    unsigned long resolves, lstats, cache_hits, readlinks, fd_hits, fd_misses, memo_hits;
};
void sb_get_stats(struct sb_stats *s);
void sb_set_cache(int on);

#ifdef __cplusplus
}
#endif
#endif
