"""An export root: the part of the shadow's file system agents may touch, with no way out.

Every path from an agent is resolved by the kernel *inside* the root with openat2(2) and
RESOLVE_IN_ROOT: ".." stops at the root and symlinks (absolute or relative) are interpreted
as if the root were "/", atomically, with no window for a symlink swapped in mid-resolution.
Without openat2 (Linux < 5.6, or a seccomp filter) the same rules are applied by hand, one
component at a time with O_NOFOLLOW, so a race can make an open fail but not escape.
Operations on a name (unlink, mkdir, rename...) open the parent directory that way and act
relative to it, so the last component cannot escape either.
"""
from __future__ import annotations

import ctypes
import errno
import os
import stat
import struct

_SYS_OPENAT2 = {"x86_64": 437, "aarch64": 437}.get(os.uname().machine, 437)
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
# openat2 gets a syscall of its own, typed once (every path of an agent passes here)
_syscall_openat2 = ctypes.CDLL(None, use_errno=True).syscall
_syscall_openat2.restype = ctypes.c_long
_syscall_openat2.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t]


_pack_how = struct.Struct("QQQ").pack


def _ctypes_openat2(dirfd: int, path: bytes, flags: int, mode: int, resolve: int) -> int:
    how = _pack_how(flags, mode, resolve)
    fd = _syscall_openat2(_SYS_OPENAT2, dirfd, path, how, len(how))
    if fd < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), path.decode(errors="surrogateescape"))
    return fd


def _openat2(dirfd: int, path: bytes, flags: int, mode: int, resolve: int) -> int:
    """openat2(2); the first call picks the shadow's C module's (a fraction of ctypes' cost per
    call, and every path of an agent passes here) when it is built, ctypes otherwise."""
    global _openat2
    fast = None
    try:
        from .c_loop import c_loop
        fast = getattr(c_loop(), "openat2", None)
    except Exception:             # (BYPASS_SHADOW_LOOP=c without a compiler...): ctypes, then
        pass
    _openat2 = fast or _ctypes_openat2
    return _openat2(dirfd, path, flags, mode, resolve)


def _renameat2(od: int, on: bytes, nd: int, nn: bytes, flags: int) -> None:
    # RENAME_* flags are the same numbers on every Linux architecture
    if _libc.renameat2(od, on, nd, nn, ctypes.c_uint(flags)) < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), os.fsdecode(nn))


_MAX_SYMLINKS = 40
_O_TMPFILE = getattr(os, "O_TMPFILE", 0)
_PATH_MAX = 4096


def _create_dir_error(rootfd: int, path: bytes, alias: bytes | None) -> None:
    """Raise the kernel's error for O_CREAT on a name with a trailing slash: the lookup's own
    error first (ENOENT, ENOTDIR: "x/." needs x to be a directory), then EISDIR."""
    base, dot = path, False
    while base.endswith(b"/") or base.endswith(b"/."):
        dot |= base.endswith(b"/.")
        base = base[:-1] if base.endswith(b"/") else base[:-2]
    flags = os.O_PATH | (os.O_DIRECTORY if dot else 0)
    try:
        fd = _walk_in_root(rootfd, base or b".", flags, 0, alias)
    except FileNotFoundError:
        if dot:
            raise
        head = base.rpartition(b"/")[0]
        os.close(_walk_in_root(rootfd, head or b".", os.O_PATH | os.O_DIRECTORY, 0, alias))
    else:
        try:
            isdir = stat.S_ISDIR(os.fstat(fd).st_mode)
        finally:
            os.close(fd)
        if not isdir:
            raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
    raise OSError(errno.EISDIR, os.strerror(errno.EISDIR))


def _walk_in_root(rootfd: int, path: bytes, flags: int, mode: int, alias: bytes | None = None) -> int:
    """RESOLVE_IN_ROOT done by hand, for kernels without openat2 (or seccomp filters that
    refuse it): one component at a time, never following a symlink implicitly (O_NOFOLLOW
    everywhere), symlink targets spliced in and interpreted inside the root, ".." stopping at
    the root.  A symlink swapped in mid-walk makes an open fail (ELOOP/ENOTDIR), never escape."""
    parts = [c for c in path.split(b"/") if c not in (b"", b".")]
    if path.endswith(b"/") or path.endswith(b"/."):
        # a trailing slash: the last component must be a directory, followed if a symlink
        if flags & os.O_CREAT:
            _create_dir_error(rootfd, path, alias)
        flags = (flags | os.O_DIRECTORY) & ~os.O_NOFOLLOW
    stack = [os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=rootfd)]
    links = 0
    try:
        while True:
            if not parts:
                # the path named a directory already reached ("/", "a/..")
                return os.open(".", flags | os.O_CLOEXEC, mode, dir_fd=stack[-1])
            name = parts.pop(0)
            if name == b"..":
                if len(stack) > 1:
                    os.close(stack.pop())
                continue
            last = not parts
            try:
                st = os.stat(name, dir_fd=stack[-1], follow_symlinks=False)
            except FileNotFoundError:
                st = None
            # O_CREAT|O_EXCL does not follow a last symlink either (the kernel: EEXIST)
            exclusive = flags & (os.O_CREAT | os.O_EXCL) == os.O_CREAT | os.O_EXCL
            if st is not None and stat.S_ISLNK(st.st_mode) and not (last and flags & os.O_NOFOLLOW or
                                                                   last and exclusive):
                links += 1
                if links > _MAX_SYMLINKS:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP))
                target = os.readlink(name, dir_fd=stack[-1])
                if alias and (target == alias or target.startswith(alias + b"/")):
                    target = target[len(alias):] or b"/"
                if target.startswith(b"/"):
                    while len(stack) > 1:
                        os.close(stack.pop())
                parts = [c for c in target.split(b"/") if c not in (b"", b".")] + parts
                continue
            if last:
                return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=stack[-1])
            stack.append(os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                                 dir_fd=stack[-1]))
    finally:
        for fd in stack:
            os.close(fd)


_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2


class InDirectory(str):
    """A path of the export that is also `rel` relative to `dirfd`, an open directory of the
    export: looked up from that directory, as the kernel looks up a name relative to a
    directory descriptor, whatever became of the directory's own name (removed, renamed),
    and with no permission needed on the directories above it.  A path that climbs out of
    it (a "..", an absolute symlink) is looked up by its whole name from the root instead."""

    def __new__(cls, path: str, dirfd: int, rel: str):
        self = super().__new__(cls, path)
        self.dirfd, self.rel = dirfd, rel
        return self


def _last_is_name(path: bytes) -> bool:
    """Whether a path's last component is a name (not ".", ".." or the root): rename's rule."""
    return path.rstrip(b"/").rpartition(b"/")[2] not in (b"", b".", b"..")


class ExportRoot:
    def __init__(self, root: str, alias: str | None = None):
        """alias: where agents see the root (the remote agent's /job): an absolute symlink
        into it, written by a program there, leads back into the root."""
        self.root = os.path.realpath(root)
        self.alias = os.fsencode(alias.rstrip("/")) if alias and alias.rstrip("/") else None
        self.rootfd = os.open(self.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self.kernel_resolve = True
        try:
            os.close(self.open("/", os.O_PATH))
        except OSError as e:
            if e.errno not in (errno.ENOSYS, errno.EPERM):
                raise
            self.kernel_resolve = False       # no openat2 here: resolve by hand

    def close(self) -> None:
        os.close(self.rootfd)

    @staticmethod
    def _b(path) -> bytes:
        return os.fsencode(path) if not isinstance(path, bytes) else path

    def open(self, path, flags: int, mode: int = 0o666) -> int:
        """open(2) inside the root; a real descriptor of the shadow."""
        p = (path if type(path) is bytes else os.fsencode(path)).lstrip(b"/") or b"."
        if not flags & os.O_CREAT and not (_O_TMPFILE and flags & _O_TMPFILE == _O_TMPFILE):
            mode = 0              # openat2 insists on a zero mode without O_CREAT
        mode &= 0o7777            # open(2) ignores file-type bits, openat2 refuses them
        at = getattr(path, "dirfd", None)
        if at is not None and self.kernel_resolve:
            try:
                return _openat2(at, os.fsencode(path.rel), flags | os.O_CLOEXEC, mode,
                                RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.EAGAIN):    # (EAGAIN: a rename raced a "..")
                    raise
            here = self._now_at(at)
            if here is not None:
                p = (here + b"/" + os.fsencode(path.rel)).lstrip(b"/")
        if not self.kernel_resolve or len(p) >= _PATH_MAX:
            # (a remote cwd plus a relative path may be longer than the kernel takes at once)
            return _walk_in_root(self.rootfd, p, flags, mode, self.alias)
        try:
            return _openat2(self.rootfd, p, flags | os.O_CLOEXEC, mode,
                            RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
        except OSError as e:
            # The kernel reads an absolute symlink to <alias>/x as <root><alias>/x; only a
            # failed lookup can have met one, and pays for the walk by hand.
            if self.alias is None or e.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                raise
            if e.errno != errno.ELOOP and not flags & os.O_CREAT and self._fails_without_links(p, e.errno):
                raise
            return _walk_in_root(self.rootfd, p, flags, mode, self.alias)

    def _fails_without_links(self, p: bytes, err: int) -> bool:
        """Whether looking p up fails with err before meeting any symlink: then no symlink
        into the alias was involved, and the walk by hand (~10 system calls) would only
        find the same error.  (A lookup that creates nothing: O_CREAT is not asked here.)"""
        try:
            os.close(_openat2(self.rootfd, p, os.O_PATH | os.O_CLOEXEC, 0,
                              RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS))
        except OSError as e:
            return e.errno == err
        return False

    def _now_at(self, dirfd: int) -> bytes | None:
        """Where a directory of the export is now (it may have moved since it was opened), as
        a path from the root; None when it has no name any more."""
        where = os.fsencode(os.readlink(f"/proc/self/fd/{dirfd}"))
        root = os.fsencode(self.root.rstrip("/"))
        if where != root and not where.startswith(root + b"/"):
            return None
        rel = where[len(root):] or b"/"
        try:
            if os.stat(rel.lstrip(b"/") or b".", dir_fd=self.rootfd)[1:3] != os.fstat(dirfd)[1:3]:
                return None       # (removed: the kernel's name ends in " (deleted)")
        except OSError:
            return None
        return rel

    def parent(self, path) -> tuple[int, bytes]:
        """(descriptor of the parent directory, last component).  The caller closes it."""
        p = self._b(path).rstrip(b"/")
        head, _, name = p.rpartition(b"/")
        at = getattr(path, "dirfd", None)
        if name in (b"", b".", b".."):
            where = p or b"/"
            if at is not None:
                where = InDirectory(os.fsdecode(where), at, path.rel.rstrip("/") or ".")
            return self.open(where, os.O_PATH | os.O_DIRECTORY), b"."
        head = head or b"/"
        if at is not None:        # (rel ends with the same name as the whole path)
            head = InDirectory(os.fsdecode(head), at, path.rel.rstrip("/").rpartition("/")[0] or ".")
        return self.open(head, os.O_PATH | os.O_DIRECTORY), name

    @staticmethod
    def _slash_error(dfd: int, name: bytes, kind: str) -> int:
        """The kernel's error for a name with a trailing slash (it must be a directory), or 0.
        kind: "unlink", "rmdir", "create" (symlink, link, mknod: the name must not exist)."""
        try:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            return errno.ENOENT if kind in ("unlink", "create") else 0
        if kind == "create":
            return errno.EEXIST
        if stat.S_ISDIR(st.st_mode):
            return errno.EISDIR if kind == "unlink" else 0
        return errno.ENOTDIR

    def _at(self, path, fn, slash: str | None = None):
        dfd, name = self.parent(path)
        try:
            if slash and name != b"." and self._b(path).endswith(b"/"):
                e = self._slash_error(dfd, name, slash)
                if e:
                    raise OSError(e, os.strerror(e), os.fsdecode(path))
            return fn(dfd, name)
        finally:
            os.close(dfd)

    def host_path(self, fd: int) -> str:
        """Where a descriptor opened through this root is, on the shadow's machine."""
        return os.readlink(f"/proc/self/fd/{fd}")

    # -- operations on names -------------------------------------------------------------------

    def stat(self, path, follow: bool = True) -> os.stat_result:
        fd = self.open(path, os.O_PATH | (0 if follow else os.O_NOFOLLOW))
        try:
            return os.stat(fd)
        finally:
            os.close(fd)

    def statvfs(self, path) -> os.statvfs_result:
        fd = self.open(path, os.O_PATH)       # fstatfs works on O_PATH descriptors
        try:
            return os.statvfs(fd)
        finally:
            os.close(fd)

    def access(self, path, mode: int, follow: bool = True) -> None:
        fd = self.open(path, os.O_PATH | (0 if follow else os.O_NOFOLLOW))
        try:
            if not follow and stat.S_ISLNK(os.fstat(fd).st_mode):
                return            # a symlink's own permissions are 0777
            if not os.access(f"/proc/self/fd/{fd}", mode):
                raise OSError(errno.EACCES, os.strerror(errno.EACCES))
        finally:
            os.close(fd)

    def unlink(self, path) -> None:
        self._at(path, lambda d, n: os.unlink(n, dir_fd=d), "unlink")

    def rmdir(self, path) -> None:
        last = self._b(path).rstrip(b"/").rpartition(b"/")[2]

        def rm(d, n):
            if last == b"..":
                # the kernel's answer for a last component "..", once the lookup went through
                raise OSError(errno.ENOTEMPTY, os.strerror(errno.ENOTEMPTY), os.fsdecode(path))
            os.rmdir(n, dir_fd=d)
        self._at(path, rm, "rmdir")

    def mkdir(self, path, mode: int) -> None:
        self._at(path, lambda d, n: os.mkdir(n, mode, dir_fd=d))

    def mknod(self, path, mode: int, device: int = 0) -> None:
        self._at(path, lambda d, n: os.mknod(n, mode, device, dir_fd=d), "create")

    def readlink(self, path) -> bytes:
        if self._b(path).endswith(b"/"):
            # a trailing slash follows the link: what it names is never a symlink itself
            os.close(self.open(path, os.O_PATH))
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL), os.fsdecode(path))
        return self._at(path, lambda d, n: os.readlink(n, dir_fd=d))

    def symlink(self, target, path) -> None:
        self._at(path, lambda d, n: os.symlink(self._b(target), n, dir_fd=d), "create")

    def rename(self, old, new, flags: int = 0) -> None:
        """renameat2 with the kernel's checks in its order (fs/namei.c do_renameat2): both
        parents, "."/".."/"/" as a last component (EBUSY), the old name (ENOENT), NOREPLACE,
        EXCHANGE's target, trailing slashes; the rest (ancestors, types) by the call itself."""
        od, on = self.parent(old)
        try:
            nd, nn = self.parent(new)
            try:
                ob, nb = self._b(old), self._b(new)
                if not _last_is_name(ob):
                    raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), os.fsdecode(old))
                if not _last_is_name(nb):
                    # (with RENAME_NOREPLACE the kernel has already chosen EEXIST)
                    e = errno.EEXIST if flags & _RENAME_NOREPLACE else errno.EBUSY
                    raise OSError(e, os.strerror(e), os.fsdecode(new))
                src = os.stat(on, dir_fd=od, follow_symlinks=False)
                try:
                    dst = os.stat(nn, dir_fd=nd, follow_symlinks=False)
                except FileNotFoundError:
                    dst = None
                if flags & _RENAME_NOREPLACE and dst is not None:
                    raise OSError(errno.EEXIST, os.strerror(errno.EEXIST), os.fsdecode(new))
                if flags & _RENAME_EXCHANGE:
                    if dst is None:
                        raise OSError(errno.ENOENT, os.strerror(errno.ENOENT), os.fsdecode(new))
                    if not stat.S_ISDIR(dst.st_mode) and nb.endswith(b"/"):
                        raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), os.fsdecode(new))
                if not stat.S_ISDIR(src.st_mode) and (
                        ob.endswith(b"/") or (not flags & _RENAME_EXCHANGE and nb.endswith(b"/"))):
                    raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), os.fsdecode(old))
                if flags:
                    _renameat2(od, on, nd, nn, flags)
                else:
                    os.rename(on, nn, src_dir_fd=od, dst_dir_fd=nd)
            finally:
                os.close(nd)
        finally:
            os.close(od)

    def link(self, old, new, follow: bool = False) -> None:
        if follow:
            # AT_SYMLINK_FOLLOW: the old name resolved in full inside the root (ENOENT for a
            # dangling link, ELOOP), then linked through its descriptor: the kernel then makes
            # room for the new name (EEXIST...) and refuses a directory (EPERM)
            fd = self.open(old, os.O_PATH)
            try:
                self._at(new, lambda d, n: os.link(f"/proc/self/fd/{fd}", n, dst_dir_fd=d,
                                                   follow_symlinks=True), "create")
            finally:
                os.close(fd)
            return
        od, on = self.parent(old)
        try:
            if not self._b(old).endswith(b"/"):
                os.stat(on, dir_fd=od, follow_symlinks=False)   # the old name's error comes first
            if self._b(old).endswith(b"/"):
                # the kernel looks "x/" up in full (ELOOP, ENOENT, ENOTDIR for a file), then
                # makes room for the new name (EEXIST...), and only then refuses a directory
                os.close(self.open(old, os.O_PATH | os.O_DIRECTORY))

                def refuse(d, n):
                    try:
                        os.stat(n, dir_fd=d, follow_symlinks=False)
                    except FileNotFoundError:
                        return
                    raise OSError(errno.EEXIST, os.strerror(errno.EEXIST), os.fsdecode(new))
                self._at(new, refuse, "create")
                raise OSError(errno.EPERM, os.strerror(errno.EPERM), os.fsdecode(old))
            self._at(new, lambda d, n: os.link(on, n, src_dir_fd=od, dst_dir_fd=d,
                                               follow_symlinks=False), "create")
        finally:
            os.close(od)

    def chmod(self, path, mode: int) -> None:
        fd = self.open(path, os.O_PATH)
        try:
            os.chmod(f"/proc/self/fd/{fd}", mode)
        finally:
            os.close(fd)

    def chown(self, path, uid: int, gid: int, follow: bool = True) -> None:
        if follow or self._b(path).endswith(b"/"):      # a trailing slash follows, as lookups do
            fd = self.open(path, os.O_PATH)
            try:
                os.chown(f"/proc/self/fd/{fd}", uid, gid)
            finally:
                os.close(fd)
        else:
            self._at(path, lambda d, n: os.chown(n, uid, gid, dir_fd=d, follow_symlinks=False))

    def utime(self, path, ns: tuple[int, int], follow: bool = True) -> None:
        """Times in nanoseconds; follow=False sets those of a symlink itself."""
        if follow or self._b(path).endswith(b"/"):
            fd = self.open(path, os.O_PATH)
            try:
                os.utime(f"/proc/self/fd/{fd}", ns=ns)
            finally:
                os.close(fd)
        else:
            self._at(path, lambda d, n: os.utime(n, ns=ns, dir_fd=d, follow_symlinks=False))

    def truncate(self, path, length: int) -> None:
        """truncate(2)'s order: a negative length, the lookup, a directory (EISDIR), not a
        regular file (EINVAL: a FIFO is never opened, which would wait for a peer), then
        the write permission as the open checks it."""
        if length < 0:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        pfd = self.open(path, os.O_PATH)
        try:
            mode = os.fstat(pfd).st_mode
            if not stat.S_ISREG(mode):
                e = errno.EISDIR if stat.S_ISDIR(mode) else errno.EINVAL
                raise OSError(e, os.strerror(e), os.fsdecode(path))
            fd = os.open(f"/proc/self/fd/{pfd}", os.O_WRONLY | os.O_CLOEXEC)
        finally:
            os.close(pfd)
        try:
            os.ftruncate(fd, length)
        finally:
            os.close(fd)

    def listdir(self, path) -> list:
        fd = self.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            return _entries(fd)
        finally:
            os.close(fd)


_DT_OF = {stat.S_IFDIR: "DT_DIR", stat.S_IFREG: "DT_REG", stat.S_IFLNK: "DT_LNK", stat.S_IFIFO: "DT_FIFO",
          stat.S_IFSOCK: "DT_SOCK", stat.S_IFCHR: "DT_CHR", stat.S_IFBLK: "DT_BLK"}


def _entries(fd: int) -> list:
    """[[name bytes, neutral d_type, ino], ...] of a directory descriptor (its offset untouched
    for the caller: scandir works on a duplicate)."""
    from .neutral import SETS
    dt = SETS["dirent_types"]
    out = []
    dup = os.dup(fd)
    try:
        with os.scandir(dup) as it:
            for e in it:
                try:
                    # the type getdents gave, when the file system gives one (no lstat)
                    if e.is_symlink():
                        kind = "DT_LNK"
                    elif e.is_dir(follow_symlinks=False):
                        kind = "DT_DIR"
                    elif e.is_file(follow_symlinks=False):
                        kind = "DT_REG"
                    else:
                        mode = e.stat(follow_symlinks=False).st_mode
                        kind = _DT_OF.get(stat.S_IFMT(mode), "DT_UNKNOWN")
                except OSError:
                    kind = "DT_UNKNOWN"
                out.append([os.fsencode(e.name), dt.neutral(kind), e.inode()])
    finally:
        try:
            os.close(dup)
        except OSError:
            pass
    return out


def dir_entries(fd: int) -> list:
    return _entries(fd)
