"""The caller's identity in the shadow: umask and, for a shadow running as root, the filesystem
uid, gid and groups of the agent process a connection serves (as an NFS server acts).

Linux keeps credentials per thread, and the shadow has one thread per connection: each thread
takes on its caller's identity once (and again when the agent says it changed), so a call costs
nothing more.  glibc's setgroups() would change every thread of the shadow, so the system call
is made directly; setfsuid/setfsgid are per thread already.  A filesystem uid other than 0 also
drops the filesystem capabilities (CAP_DAC_OVERRIDE, CAP_FOWNER, CAP_FSETID...), so permission
checks, ownership of new files and set-id clearing are those of a native run.
"""
from __future__ import annotations

import ctypes
import os
import platform
import sys

_LINUX = sys.platform == "linux"
_libc = ctypes.CDLL(None, use_errno=True) if _LINUX else None
_CLONE_FS = 0x200
_SYS_SETGROUPS = {"x86_64": 116, "aarch64": 159}.get(platform.machine())


def private_fs() -> bool:
    """Give the calling thread a umask (and cwd) of its own; False where that is impossible."""
    return bool(_LINUX and _libc.unshare(_CLONE_FS) == 0)


def of_process(pid: int) -> tuple[int, int, list[int]] | None:
    """(fsuid, fsgid, groups) of a local process, from /proc; None if it cannot be read."""
    try:
        with open(f"/proc/{pid}/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        uid = int(fields["Uid"].split()[3])
        gid = int(fields["Gid"].split()[3])
        groups = [int(g) for g in fields.get("Groups", "").split()]
    except (OSError, KeyError, ValueError, IndexError):
        return None
    return uid, gid, groups


def uids(pid: int) -> list[int]:
    """Real, effective, saved and filesystem uid of a local process ([] if unreadable)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Uid:"):
                    return [int(u) for u in line.split()[1:5]]
    except (OSError, ValueError):
        pass
    return []


def act_as(uid: int, gid: int, groups: list[int]) -> None:
    """Make the calling thread's filesystem identity (uid, gid, groups).  Needs root."""
    if not _LINUX or _SYS_SETGROUPS is None:
        raise OSError(95, "acting as the caller needs Linux")
    arr = (ctypes.c_uint * max(1, len(groups)))(*groups)
    if _libc.syscall(_SYS_SETGROUPS, len(groups), arr) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    _libc.setfsgid(gid)
    _libc.setfsuid(uid)
    # setfsuid/setfsgid report nothing: check that they took
    if _libc.setfsuid(-1) != uid or _libc.setfsgid(-1) != gid:
        raise OSError(1, f"could not act as uid {uid} gid {gid}")


def set_umask(mask: int) -> None:
    """The calling thread's umask (after private_fs())."""
    os.umask(mask & 0o777)
