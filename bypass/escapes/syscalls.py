"""The shape of each file-related system call on Linux: where its paths and descriptors are, and
which knowledge families hold the libc calls that make it.

A system call is *explained* when the same process trapped a call of one of those families on
the same path or descriptor. An empty family set means the knowledge has no call that makes it
(xattrs, statfs, mmap…): such a call can only be reported as not covered.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Shape:
    paths: tuple[tuple[int | None, int], ...] = ()     # (dirfd index or None, path index)
    fds: tuple[int, ...] = ()                           # descriptor arguments
    families: frozenset[str] = frozenset()
    empty_path_is_fd: bool = False                      # newfstatat(fd, "", AT_EMPTY_PATH) is fstat
    opens: bool = False                                 # returns a new descriptor


def _s(paths=(), fds=(), families=(), **kw) -> Shape:
    return Shape(tuple(paths), tuple(fds), frozenset(families), **kw)


OPENERS = ("open", "stdio", "tempfile", "dir")
STAT = ("stat", "cwd")          # get_current_dir_name stats "." and $PWD

SHAPES: dict[str, Shape] = {
    # a descriptor from a path
    "open": _s([(None, 0)], families=OPENERS, opens=True),
    "creat": _s([(None, 0)], families=OPENERS, opens=True),
    "openat": _s([(0, 1)], families=OPENERS, opens=True),
    "openat2": _s([(0, 1)], families=OPENERS, opens=True),
    # status
    "stat": _s([(None, 0)], families=STAT), "lstat": _s([(None, 0)], families=STAT),
    "newfstatat": _s([(0, 1)], families=STAT, empty_path_is_fd=True),
    "statx": _s([(0, 1)], families=STAT, empty_path_is_fd=True),
    "fstat": _s(fds=[0], families=STAT),
    "access": _s([(None, 0)], families=["access"]),
    "faccessat": _s([(0, 1)], families=["access"]), "faccessat2": _s([(0, 1)], families=["access"]),
    "readlink": _s([(None, 0)], families=["readlink"]), "readlinkat": _s([(0, 1)], families=["readlink"]),
    # processes and the working directory
    "execve": _s([(None, 0)], families=["exec", "spawn"]),
    "execveat": _s([(0, 1)], families=["exec", "spawn"]),
    "chdir": _s([(None, 0)], families=["cwd"]), "fchdir": _s(fds=[0], families=["cwd"]),
    # the name space
    "mkdir": _s([(None, 0)], families=["mkdir", "tempfile"]), "mkdirat": _s([(0, 1)], families=["mkdir", "tempfile"]),
    "mknod": _s([(None, 0)], families=["mkdir"]), "mknodat": _s([(0, 1)], families=["mkdir"]),
    "unlink": _s([(None, 0)], families=["unlink"]), "unlinkat": _s([(0, 1)], families=["unlink"]),
    "rmdir": _s([(None, 0)], families=["unlink"]),
    "rename": _s([(None, 0), (None, 1)], families=["rename"]),
    "renameat": _s([(0, 1), (2, 3)], families=["rename"]), "renameat2": _s([(0, 1), (2, 3)], families=["rename"]),
    "link": _s([(None, 0), (None, 1)], families=["link"]), "linkat": _s([(0, 1), (2, 3)], families=["link"]),
    "symlink": _s([(None, 1)], families=["link"]), "symlinkat": _s([(1, 2)], families=["link"]),
    "chmod": _s([(None, 0)], families=["chmod"]), "fchmodat": _s([(0, 1)], families=["chmod"]),
    "fchmod": _s(fds=[0], families=["chmod"]),
    "chown": _s([(None, 0)], families=["chown"]), "lchown": _s([(None, 0)], families=["chown"]),
    "fchownat": _s([(0, 1)], families=["chown"]), "fchown": _s(fds=[0], families=["chown"]),
    "utime": _s([(None, 0)], families=["utime"]), "utimes": _s([(None, 0)], families=["utime"]),
    "futimesat": _s([(0, 1)], families=["utime"]),
    "utimensat": _s([(0, 1)], families=["utime"], empty_path_is_fd=True),
    "truncate": _s([(None, 0)], families=["truncate"]), "ftruncate": _s(fds=[0], families=["truncate"]),
    # the data path and the descriptor table
    "read": _s(fds=[0], families=["read"]), "pread64": _s(fds=[0], families=["read"]),
    "readv": _s(fds=[0], families=["read"]), "preadv": _s(fds=[0], families=["read"]),
    "preadv2": _s(fds=[0], families=["read"]),
    "write": _s(fds=[0], families=["write"]), "pwrite64": _s(fds=[0], families=["write"]),
    "writev": _s(fds=[0], families=["write"]), "pwritev": _s(fds=[0], families=["write"]),
    "pwritev2": _s(fds=[0], families=["write"]),
    "lseek": _s(fds=[0], families=["seek"]),
    "close": _s(fds=[0], families=["close", "stdio", "dir"]),     # fclose, closedir
    "dup": _s(fds=[0], families=["dup"], opens=True), "dup2": _s(fds=[0], families=["dup"], opens=True),
    "dup3": _s(fds=[0], families=["dup"], opens=True),
    "fcntl": _s(fds=[0], families=["fcntl"], opens=True),
    "getdents64": _s(fds=[0], families=["dir"]), "getdents": _s(fds=[0], families=["dir"]),
    # extended attributes and in-kernel copies (knowledge families xattr and copy)
    "getxattr": _s([(None, 0)], families=["xattr"]), "lgetxattr": _s([(None, 0)], families=["xattr"]),
    "setxattr": _s([(None, 0)], families=["xattr"]), "lsetxattr": _s([(None, 0)], families=["xattr"]),
    "listxattr": _s([(None, 0)], families=["xattr"]), "llistxattr": _s([(None, 0)], families=["xattr"]),
    "removexattr": _s([(None, 0)], families=["xattr"]), "lremovexattr": _s([(None, 0)], families=["xattr"]),
    "fgetxattr": _s(fds=[0], families=["xattr"]), "fsetxattr": _s(fds=[0], families=["xattr"]),
    "flistxattr": _s(fds=[0], families=["xattr"]), "fremovexattr": _s(fds=[0], families=["xattr"]),
    "copy_file_range": _s(fds=[0, 2], families=["copy"]), "sendfile": _s(fds=[1, 0], families=["copy"]),
    "splice": _s(fds=[0, 2], families=["copy"]), "tee": _s(fds=[0, 1], families=["copy"]),
    # calls the knowledge does not cover (the audit lists their libc families as not covered)
    "statfs": _s([(None, 0)]), "fstatfs": _s(fds=[0]),
    "inotify_add_watch": _s([(None, 1)]),
    "name_to_handle_at": _s([(0, 1)]),
    "chroot": _s([(None, 0)]),
    "mmap": _s(fds=[4]),
    "fsync": _s(fds=[0]), "fdatasync": _s(fds=[0]), "sync_file_range": _s(fds=[0]),
    "fallocate": _s(fds=[0]), "fadvise64": _s(fds=[0]), "flock": _s(fds=[0]),
}
