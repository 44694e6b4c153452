/*
 * remote.h — the C side of the remote agent (Condor-style remote I/O; see remote.bypass).
 *
 * Paths under the remote prefix (BYPASS_REMOTE_PREFIX, default /job) belong to the shadow:
 * "/job/data/in.txt" is "/data/in.txt" under the shadow's export root.  A remote file opened
 * by the program is represented in it by a *placeholder*: a real descriptor (an empty memfd)
 * with the number the program sees, so numbers never collide with local files and survive
 * fork and exec like any descriptor.  The shadow keeps the real file under that number.
 */
#ifndef REMOTE_H
#define REMOTE_H

#include <dirent.h>
#include <limits.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/vfs.h>

/* A remote path joins the remote current directory and a relative path, each shorter than
 * PATH_MAX (the kernel's limit is on what the program passes, not on the joined path). */
#define RMT_PATH_MAX (2 * PATH_MAX)

/* ---- where does a (dirfd, path) pair live? ---------------------------------------------- */
/* 1: remote; *dslot is -1 (rpath is absolute in the remote namespace) or the remote directory
 * descriptor rpath is relative to.  0: local.  -1: error (errno set, e.g. ENAMETOOLONG). */
int rmt_where(int dirfd, const char *path, int *dslot, char *rpath, size_t cap);
/* 0 with *dslot RMT_LOCAL_PATH: local, but at rpath (a ".." above the export led there) */
#define RMT_LOCAL_PATH (-2)
/* rmt_where, and *path made rpath when it is local elsewhere */
int rmt_where2(int dirfd, const char **path, int *dslot, char *rpath, size_t cap);
int rmt_is_fd(int fd);
/* path is a readable "" (for AT_EMPTY_PATH), never read when it is not a readable pointer */
int rmt_is_empty(const char *path);
int rmt_is_dir_stream(DIR *d);
int rmt_is_cwd_remote(void);

/* ---- operations on remote objects (errno set on failure, like the calls they stand for) -- */
int rmt_open(int dslot, const char *rpath, int flags, mode_t mode);
/* 1 (errno EINVAL) for open flags this kernel refuses before it looks at the path */
int rmt_open_flags_bad(int flags);
int rmt_close(int fd);
ssize_t rmt_read(int fd, void *buf, size_t n);
ssize_t rmt_write(int fd, const void *buf, size_t n);
ssize_t rmt_pread(int fd, void *buf, size_t n, off_t off);
ssize_t rmt_pwrite(int fd, const void *buf, size_t n, off_t off);
off_t rmt_lseek(int fd, off_t off, int whence);
int rmt_fstat(int fd, struct stat *st);
int rmt_stat(int dslot, const char *rpath, struct stat *st, int follow);
int rmt_statx(int dslot, const char *rpath, int fd, int flags, unsigned mask, void *statxbuf);
/* The file system of a remote path (dslot/rpath) or descriptor (fd >= 0, rpath NULL). */
int rmt_statvfs(int dslot, const char *rpath, int fd, struct statvfs *buf);
int rmt_statfs(int dslot, const char *rpath, int fd, struct statfs *buf);
int rmt_access(int dslot, const char *rpath, int mode);
int rmt_unlink(int dslot, const char *rpath, int isdir);
int rmt_mkdir(int dslot, const char *rpath, mode_t mode);
int rmt_rename(int od, const char *op, int nd, const char *np);
int rmt_second_path_error(int is_link, int olddirfd, const char *oldpath, int old_remote, int dslot,
                          const char *rpath, int newdirfd, const char *newpath, int flags);
int rmt_parent_ok(int dslot, const char *rpath);
#include <spawn.h>
int rmt_spawn_actions(const posix_spawn_file_actions_t *fa, posix_spawn_file_actions_t *out, int *staged,
                      int *nstaged, int max);
void rmt_spawn_done(posix_spawn_file_actions_t *out, const int *staged, int nstaged, int spawned);
ssize_t rmt_getdents64(int fd, void *buf, size_t length, off_t *basep);
void rmt_forget_range(unsigned first, unsigned last);
/* copy: 0 sendfile, 1 copy_file_range, 2 splice (the access modes only) */
int rmt_transfer_fds_ok(int in_fd, int out_fd, int copy);
const char *rmt_squeeze_path(const char *path, char *buf, size_t cap);
int rmt_times_omitted(const struct timespec *times);
int rmt_access2(int dslot, const char *rpath, int mode, int follow);
int rmt_string_ok(const char *s);
int rmt_ftw(const char *dir, void *fn, int flags, int nftw);
long rmt_pathconf(int dslot, const char *rpath, int fd, int name);
/* 1 when glibc answers pathconf(name) without the path (*value: its answer) */
int rmt_pathconf_constant(int name, long *value);
int rmt_rename2(int od, const char *op, int nd, const char *np, unsigned flags);
ssize_t rmt_readlink(int dslot, const char *rpath, char *buf, size_t size);
int rmt_link(int od, const char *op, int nd, const char *np, int follow);
/* rename/link between a remote and a local name: -1 with EXDEV, or with the error the kernel
 * finds first in the local side's directory descriptor (EBADF, ENOTDIR) */
int rmt_cross_device(int olddirfd, const char *oldpath, int old_remote, int newdirfd, const char *newpath,
                     int new_remote);
char *rmt_realpath(int dslot, const char *rpath, char *resolved);
int rmt_symlink(const char *target, int dslot, const char *rpath);
/* symlink's first check, on the target: EFAULT, or ENOENT for "" (1, errno set; else 0) */
int rmt_symlink_target_error(const char *target);
int rmt_chmod(int dslot, const char *rpath, int fd, mode_t mode);
/* get (name) or list (name NULL) / set (flags >= 0) or remove (flags -1) extended attributes
 * of a remote path (dslot/rpath) or descriptor (fd >= 0) */
ssize_t rmt_getxattr(int dslot, const char *rpath, int fd, int follow, const char *name, void *buf, size_t size);
int rmt_setxattr(int dslot, const char *rpath, int fd, int follow, const char *name, const void *value, size_t size,
                 int flags);
/* fd is AT_FDCWD for an f*xattr call (kind) that this kernel applies to a remote current directory */
enum { RMT_XATTR_GET, RMT_XATTR_LIST, RMT_XATTR_REMOVE };
int rmt_xattr_cwd(int fd, int kind);
int rmt_lchmod(int dslot, const char *rpath, mode_t mode);
int rmt_mknod(int dslot, const char *rpath, mode_t mode, dev_t dev);
/* the kernel judges a node's type before its path: 1 (errno EPERM/EINVAL) for a bad one */
int rmt_mknod_mode_bad(mode_t mode);
/* like rmt_where, for the path of an AF_UNIX address (0 for other families, abstract names) */
struct sockaddr;
int rmt_where_sockaddr(const struct sockaddr *addr, unsigned addrlen, int *dslot, char *rpath, size_t cap);
struct timeval;
int rmt_utimes(int dslot, const char *rpath, int fd, const struct timeval times[2], int follow);
FILE *rmt_freopen(int dslot, const char *rpath, const char *mode, FILE *stream);
FILE *rmt_freopen_failed(FILE *stream);
int rmt_is_remote_stream(FILE *stream);
FILE *rmt_freopen_remote_stream(int remote, int dslot, const char *path, const char *mode, FILE *stream);
int rmt_chown(int dslot, const char *rpath, int fd, uid_t uid, gid_t gid, int follow);
int rmt_utimens(int dslot, const char *rpath, int fd, const struct timespec times[2], int follow);
int rmt_ftruncate(int fd, off_t len);
int rmt_truncate(int dslot, const char *rpath, off_t len);
int rmt_fsync(int fd);
int rmt_fcntl(int fd, int cmd, long arg, int *handled);
/* readv, writev, preadv(2), pwritev(2) as one transfer each: off -1 is the file offset, flags
 * are RWF_* */
ssize_t rmt_iov(int fd, const struct iovec *iov, int iovcnt, off_t off, int flags, int writing);
int rmt_flock(int fd, int op);
/* posix = 1: posix_fallocate (mode 0) */
int rmt_fallocate(int fd, int mode, off_t off, off_t len, int posix);
/* copy_file_range, sendfile and splice with at least one remote end */
enum { RMT_COPY_RANGE = 1, RMT_SENDFILE = 2, RMT_SPLICE = 4, RMT_NONBLOCK = 8 };
ssize_t rmt_transfer(int in, off64_t *in_off, int out, off64_t *out_off, size_t len, int kind);
/* after the local dup/dup2/dup3 made newfd a copy of remote oldfd */
int rmt_dup_done(int oldfd, int newfd);
/* newfd (a remote placeholder) was closed behind our back (dup2 onto it): forget it */
void rmt_forget(int fd);
/* fd (0, 1 or 2) became remote: point stdin/stdout/stderr at it */
void rmt_rebind_std(int fd);
/* the program set its umask / changed its credentials */
void rmt_umask_set(mode_t mask);
void rmt_creds_changed(void);
/* hand all read-ahead back (before fork, exec, spawn) */
void rmt_settle_all(void);
/* a spawn returned (rmt_settle_all came before it) */
void rmt_children_started(void);
/* mkstemp/mkdtemp on a remote template (tmpl is the program's, rpath the remote copy of it):
 * the same random letters go into both; returns a descriptor (or 0 for a directory) */
int rmt_mkstemp(char *tmpl, int dslot, char *rpath, int suffixlen, int flags, int dir);
/* copy a remote executable into an exec-able local memfd; *local receives its /proc path */
int rmt_stage_exec(int dslot, const char *rpath, char *local, size_t cap);
/* 1 (errno ENOENT) when fd is close-on-exec and its staged copy is a #! script */
int rmt_exec_script_hidden(int fd, const char *local);
void *rmt_mmap(void *addr, size_t length, int prot, int flags, int fd, off_t offset);
/* msync (unmapping 0) or munmap (1) of a range: shared remote mappings in it written back */
int rmt_sync_range(void *addr, size_t len, int unmapping);

FILE *rmt_fopen(int dslot, const char *rpath, const char *mode);
FILE *rmt_fdopen(int fd, const char *mode);
FILE *rmt_fdopen_user(int fd, const char *mode);
DIR *rmt_opendir(int dslot, const char *rpath);
DIR *rmt_fdopendir(int fd);
struct dirent *rmt_readdir(DIR *d);
int rmt_closedir(DIR *d);
int rmt_dirfd(DIR *d);
void rmt_rewinddir(DIR *d);
int rmt_scandir(int dslot, const char *rpath, struct dirent ***namelist, int (*filter)(const struct dirent *),
                int (*compar)(const struct dirent **, const struct dirent **));

int rmt_chdir(int dslot, const char *rpath);
int rmt_fchdir(int fd);
void rmt_chdir_local(void);
char *rmt_getcwd(char *buf, size_t size);

#endif
