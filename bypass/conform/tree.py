"""The scratch trees of `bypass conform`: laid out before a sequence, read back after it.

Both are done by this process with plain system calls, never through the agent: the tree is
the ground truth each side is compared on.
"""
from __future__ import annotations

import hashlib
import os
import stat

from .ops import INITIAL_TREE, NEST, OLD_TIMES

RECENT = "recent"


def nested(top: bytes) -> bytes:
    """The root of a run below `top`: NEST directories deep, each holding only the next, all
    called `w` (so `../w/f` from the root is the root's `f` on every side)."""
    return os.path.join(top, *[b"w"] * NEST)


def lay_out(real_root: bytes, program_root: bytes) -> None:
    """Create the initial tree in `real_root` (the program sees it as `program_root`)."""
    os.makedirs(real_root, mode=0o755)
    for name, kind, mode, content in INITIAL_TREE:
        where = os.path.join(real_root, os.fsencode(name))
        if kind == "dir":
            os.mkdir(where, mode)
            os.chmod(where, mode)
        elif kind == "file":
            fd = os.open(where, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            os.write(fd, content)
            os.fchmod(fd, mode)
            os.close(fd)
        else:
            os.symlink(content.replace(b"$ROOT", program_root), where)


def remove(path: bytes) -> None:
    """rm -rf that also enters directories a step made unreadable (mode 000)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        try:
            os.chmod(path, 0o700)
        except OSError:
            pass
        for entry in os.listdir(path):
            remove(os.path.join(path, entry))
        os.rmdir(path)
    else:
        os.unlink(path)


def _time(t_ns: int) -> str:
    seconds = t_ns // 1_000_000_000
    return f"{seconds}.{t_ns % 1_000_000_000:09d}" if seconds <= max(OLD_TIMES) else RECENT


def snapshot(real_root: bytes, program_root: bytes) -> dict[bytes, str]:
    """Every entry below the root (and the root): what a program could observe of it."""
    found: dict[bytes, str] = {}

    def visit(rel: bytes) -> None:
        path = os.path.join(real_root, rel) if rel else real_root
        st = os.lstat(path)
        kind = stat.S_IFMT(st.st_mode)
        facts = [f"type={stat.filemode(st.st_mode)[0]}", f"mode={stat.S_IMODE(st.st_mode):04o}",
                 f"nlink={st.st_nlink}", f"uid={st.st_uid}", f"gid={st.st_gid}",
                 f"mtime={_time(st.st_mtime_ns)}"]
        if kind == stat.S_IFREG:
            with open(path, "rb") as f:
                content = f.read()
            facts.append(f"size={st.st_size}")
            facts.append("content=" + (content.decode("latin-1") if len(content) <= 64
                                       else hashlib.sha1(content).hexdigest()))
        elif kind == stat.S_IFLNK:
            target = os.readlink(path).replace(program_root, b"$ROOT")
            facts.append(f"target={target.decode('latin-1')}")
        if kind in (stat.S_IFREG, stat.S_IFDIR):
            try:
                names = sorted(os.listxattr(path, follow_symlinks=False))
                facts.extend(f"xattr:{n}={os.getxattr(path, n, follow_symlinks=False)!r}" for n in names)
            except OSError:
                pass
        found[rel or b"."] = " ".join(facts)
        if kind == stat.S_IFDIR:
            try:
                entries = sorted(os.listdir(path))
            except PermissionError:
                found[rel or b"."] += " unreadable"
                return
            for entry in entries:
                visit(os.path.join(rel, entry) if rel else entry)

    visit(b"")
    return found


def differences(native: dict[bytes, str], agent: dict[bytes, str]) -> list[str]:
    out = []
    for name in sorted(set(native) | set(agent)):
        a, b = native.get(name), agent.get(name)
        if a != b:
            shown = name.decode("utf-8", "backslashreplace")
            out.append(f"{shown}: native {a or 'absent'} | agent {b or 'absent'}")
    return out
