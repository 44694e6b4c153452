"""Support for generated shadows: reply encoding and the default shadow actions.

A generated shadow module (bypass -shadow SPEC) defines one function per declared call that
receives the call's input arguments already in local form, runs the spec's shadow_action (or
the default below: the same call performed on the shadow's machine), and returns

* for a call without out parameters: the return value (None counts as 0);
* for a call with out parameters: a tuple (return value, out1, out2, ...), or for the common
  one-buffer case just the bytes (read returns data: the return value is its length) or an
  os.stat_result (stat: the return value is 0).

`wrap` turns that into the wire form (docs/protocol.md).  Shadow-side descriptors live in
ctx.process (bypass.rpc.server.ProcessState): a default `open` installs the real descriptor
there and later calls only accept descriptors the calling process owns.
"""
from __future__ import annotations

import errno
import os
from typing import Callable

from . import neutral
from .server import Shared

_ENCODERS: dict[str, Callable] = {
    "stat": lambda v: None if v is None else (
        neutral.stat_to_neutral(v) if isinstance(v, os.stat_result) else list(v)),
    "int_ptr": lambda v: int(v or 0),
    "string": lambda v: v if isinstance(v, (str, bytes)) or v is None else str(v),
}


def _encode(form: str, v):
    enc = _ENCODERS.get(form)
    if enc is not None:
        return enc(v)
    kind, _, struct = form.partition(":")
    if kind == "struct":          # a dict, or an object with the members (os.statvfs_result)
        return None if v is None else neutral.STRUCTS[struct].to_neutral(v)
    if kind == "struct_array":
        return None if v is None else [neutral.STRUCTS[struct].to_neutral(x) for x in v]
    # bytes, bytearray and memoryview all travel as bin; a memoryview of a reused buffer is
    # sent without a copy (the server sends each reply before it reads the next request).
    return v


def _ret(v):
    if v is None or v is True or v is False:
        return int(bool(v)) if v is not None else 0
    return v


def wrap(fn: Callable, outs: tuple[str, ...]) -> Callable:
    """A dispatch-table handler for a generated shadow function.  When the spec's module
    declares the action native (NATIVE_ACTIONS: {call name: (kind, type of the descriptor
    objects)}), the handler says so (`handler.native`): the C call loop may then perform
    it itself (bypass/rpc/c/shadow_loop.c, "native actions": what each kind does)."""
    handler = _handler(fn, outs)
    native = fn.__globals__.get("NATIVE_ACTIONS", {}).get(fn.__name__.removeprefix("shadow_"))
    if native is not None:
        handler.native = native
    return handler


def _handler(fn: Callable, outs: tuple[str, ...]) -> Callable:
    if not outs:
        def handler(ctx, *args):
            return _ret(fn(ctx, *args))
        return handler

    if outs == ("stat",):
        # stat and fstat: the calls a program makes most; an os.stat_result goes straight
        # to its wire form
        to_neutral = neutral.stat_to_neutral

        def handler_stat(ctx, *args):
            r = fn(ctx, *args)
            if type(r) is os.stat_result:
                return [0, to_neutral(r)]
            return _with_outs(r, outs)
        return handler_stat

    if outs == ("opaque",):
        # read, pread and the like: bytes go out as they are (their length is the result)
        def handler_bytes(ctx, *args):
            r = fn(ctx, *args)
            if type(r) is bytes:
                return [len(r), r]
            return _with_outs(r, outs)
        return handler_bytes

    def handler_with_outs(ctx, *args):
        return _with_outs(fn(ctx, *args), outs)
    return handler_with_outs


def _with_outs(r, outs: tuple[str, ...]) -> list:
    """A shadow function's result, with out parameters, in its wire form."""
    # (result, outs...); a struct sequence (os.stat_result, os.statvfs_result) is one out
    if isinstance(r, tuple) and not hasattr(r, "n_fields"):
        if len(r) != 1 + len(outs):
            raise TypeError(f"shadow action returned {len(r)} values, expected {1 + len(outs)}")
        return [_ret(r[0]), *(_encode(f, v) for f, v in zip(outs, r[1:]))]
    if len(outs) == 1:
        if isinstance(r, (bytes, bytearray, memoryview, str)):
            return [len(r), _encode(outs[0], r)]
        if isinstance(r, os.stat_result) or (outs[0].startswith("struct:") and r is not None):
            return [0, _encode(outs[0], r)]
    raise TypeError("a call with out parameters must return a tuple (result, outs...)")


# ---- the file system a default action sees -------------------------------------------------------

class Direct:
    """No export root: the shadow's own file system (what a spec without --export gets)."""

    def open(self, path, flags, mode=0o666):
        return os.open(path, flags | os.O_CLOEXEC, mode)

    def stat(self, path, follow=True):
        return os.stat(path, follow_symlinks=follow)

    def access(self, path, mode, follow=True):
        if not os.access(path, mode, follow_symlinks=follow):
            raise OSError(errno.EACCES, os.strerror(errno.EACCES))

    statvfs = staticmethod(os.statvfs)
    unlink = staticmethod(os.unlink)
    rmdir = staticmethod(os.rmdir)
    readlink = staticmethod(lambda p: os.readlink(os.fsencode(p)))
    symlink = staticmethod(os.symlink)
    rename = staticmethod(os.rename)
    link = staticmethod(os.link)
    chmod = staticmethod(os.chmod)
    truncate = staticmethod(os.truncate)

    def mkdir(self, path, mode):
        os.mkdir(path, mode)

    def mknod(self, path, mode, device=0):
        os.mknod(path, mode, device)

    def chown(self, path, uid, gid, follow=True):
        os.chown(path, uid, gid, follow_symlinks=follow)

    def utime(self, path, ns, follow=True):
        os.utime(path, ns=ns, follow_symlinks=follow)

    def listdir(self, path):
        from .export import dir_entries
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            return dir_entries(fd)
        finally:
            os.close(fd)


_DIRECT = Direct()


def fs(ctx):
    """The export root of the shadow serving ctx (or the whole file system)."""
    return getattr(ctx.server, "export", None) or _DIRECT


def _fd(ctx, fd: int) -> int:
    """The shadow's real descriptor behind an agent's descriptor number."""
    return ctx.process.get(fd)


def install(ctx, fd: int, number: int | None = None, **meta) -> int:
    """Keep a real descriptor in the caller's table (under `number`, default its own)."""
    number = fd if number is None else number
    ctx.process.install(number, Shared(fd, os.close), **meta)
    return number


# ---- default shadow actions: the call itself, performed here ---------------------------------------

def d_open(ctx, path, flags, mode=0o666):
    return install(ctx, fs(ctx).open(path, flags, mode))


def d_creat(ctx, path, mode):
    return d_open(ctx, path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, mode)


def d_close(ctx, fd):
    ctx.process.close(fd)
    return 0


def d_read(ctx, fd, count):
    return os.read(_fd(ctx, fd), count)


def d_write(ctx, fd, data, count=None):
    return os.write(_fd(ctx, fd), data if count is None else data[:count])


def d_pread(ctx, fd, count, offset):
    return os.pread(_fd(ctx, fd), count, offset)


def d_pwrite(ctx, fd, data, count, offset):
    return os.pwrite(_fd(ctx, fd), data[:count], offset)


def d_lseek(ctx, fd, offset, whence):
    return os.lseek(_fd(ctx, fd), offset, whence)


def d_fstat(ctx, fd):
    return os.fstat(_fd(ctx, fd))


def d_stat(ctx, path):
    return fs(ctx).stat(path, True)


def d_lstat(ctx, path):
    return fs(ctx).stat(path, False)


def d_statvfs(ctx, path):
    return fs(ctx).statvfs(path)


def d_fstatvfs(ctx, fd):
    return os.statvfs(_fd(ctx, fd))


def d_access(ctx, path, mode):
    fs(ctx).access(path, mode)
    return 0


def d_unlink(ctx, path):
    fs(ctx).unlink(path)


def d_rmdir(ctx, path):
    fs(ctx).rmdir(path)


def d_mkdir(ctx, path, mode):
    fs(ctx).mkdir(path, mode)


def d_rename(ctx, old, new):
    fs(ctx).rename(old, new)


def d_chmod(ctx, path, mode):
    fs(ctx).chmod(path, mode)


def d_truncate(ctx, path, length):
    fs(ctx).truncate(path, length)


def d_ftruncate(ctx, fd, length):
    os.ftruncate(_fd(ctx, fd), length)


def d_fsync(ctx, fd):
    os.fsync(_fd(ctx, fd))


def d_fdatasync(ctx, fd):
    os.fdatasync(_fd(ctx, fd))


def d_readlink(ctx, path, size):
    return fs(ctx).readlink(path)[:size]


def d_symlink(ctx, target, path):
    fs(ctx).symlink(target, path)


def d_link(ctx, old, new):
    fs(ctx).link(old, new)


DEFAULTS: dict[str, Callable] = {
    name[2:]: fn for name, fn in list(globals().items()) if name.startswith("d_") and callable(fn)}


def default(name: str) -> Callable:
    """The default shadow action of a call, or one failing with ENOSYS."""
    fn = DEFAULTS.get(name)
    if fn is not None:
        return fn

    def not_here(ctx, *args):
        raise OSError(errno.ENOSYS, f"the shadow has no default action for {name}")
    return not_here
