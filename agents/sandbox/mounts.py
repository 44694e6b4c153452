"""Mount lists for the sandbox agent (Parrot style), checked before a program starts.

This is the Python mirror of the parser in ``agents/sandbox/mounts.c``: the agent parses the
list again when it starts (it must not trust its environment), but ``bypass run -m`` calls
:func:`load` first so that a bad list is reported before anything runs.  Keep the two in
step; ``tests/sandbox/test_mounts.py`` feeds the same inputs to both.

Grammar, one entry per line::

    prefix  redirect  [mode]
    prefix  mode

* ``prefix``: an absolute path; it covers itself and everything below it, on path-component
  boundaries (``/tmp`` covers ``/tmp/a``, not ``/tmpfoo``).
* ``redirect``: an absolute path, ``DENY`` (EACCES), ``ENOENT`` (absent) or ``PRIVATE`` (a fresh
  directory for this run).
* ``mode``: letters from ``rwx`` (``-`` alone: no access); default ``rwx``.
* ``#`` starts a comment where a field could start.

For a path, the entry with the longest matching prefix governs; for equal prefixes the later
line wins.  Implicit entries come first (line 0): ``/ rwx`` and ``rw`` for a few devices every
program uses (:data:`IMPLICIT_DEVICES`).
"""

from __future__ import annotations

import os
import posixpath
import shutil
import struct
from dataclasses import dataclass

from ...errors import BypassError

__all__ = [
    "MountListError",
    "Entry",
    "IMPLICIT_DEVICES",
    "parse",
    "load",
    "load_mounts",
    "lookup",
    "covers",
    "parrot_differs",
    "translate",
    "is_static_executable",
    "check_program",
]

IDENTITY, REDIRECT, DENY, ENOENT, PRIVATE = "identity", "redirect", "DENY", "ENOENT", "PRIVATE"
KEYWORDS = (DENY, ENOENT, PRIVATE)
IMPLICIT_DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty",
                    "/dev/shm")
_BLANKS = " \t\r\v\f"


class MountListError(BypassError):
    """A mount list that cannot be used.  ``str(err)`` is ``file:line: error: message``."""

    def __init__(self, file: str, line: int, message: str):
        self.file, self.line, self.message = file, line, message
        super().__init__(f"{file}:{line}: error: {message}")


@dataclass(frozen=True)
class Entry:
    prefix: str
    kind: str              # identity | redirect | DENY | ENOENT | PRIVATE
    target: str | None     # real path (identity: the prefix; PRIVATE: None until attached)
    mode: str              # subset of "rwx" in that order, "" for none
    line: int              # 0 for implicit entries
    glob: bool = False     # prefix with *, ? or [: matched with fnmatch, as Parrot does


def normalise(path: str) -> str:
    """Lexical normalisation of an absolute path, as sb_normalise() does it."""
    out: list[str] = []
    for comp in path.split("/"):
        if comp in ("", "."):
            continue
        if comp == "..":
            if out:
                out.pop()
            continue
        out.append(comp)
    return "/" + "/".join(out)


def _is_mode(tok: str) -> bool:
    """Modes and keywords are read as Parrot reads them, in either case ("RX", "deny")."""
    return tok == "-" or (tok != "" and all(c in "rwxRWX" for c in tok))


def _mode(tok: str) -> str:
    return "".join(c for c in "rwx" if c in tok.lower())


def _is_glob(prefix: str) -> bool:
    return any(c in prefix for c in "*?[")


def _fields(line: str) -> list[str]:
    out: list[str] = []
    i, n = 0, len(line)
    while True:
        while i < n and line[i] in _BLANKS:
            i += 1
        if i >= n or line[i] == "#":
            return out
        j = i
        while j < n and line[j] not in _BLANKS:
            j += 1
        out.append(line[i:j])
        i = j


def parse(text: str, file: str = "<mounts>") -> list[Entry]:
    """Parse mount-list text; raise :class:`MountListError` on the first bad line."""
    entries = [Entry("/", IDENTITY, "/", "rwx", 0)]
    entries += [Entry(d, IDENTITY, d, "rw", 0) for d in IMPLICIT_DEVICES]
    if "\0" in text:
        raise MountListError(file, 0, "cannot read mount list: binary data (NUL byte)")
    for lineno, line in enumerate(text.split("\n"), start=1):
        f = _fields(line)
        if not f:
            continue
        if len(f) > 3:
            raise MountListError(
                file, lineno, "too many fields (expected: prefix redirect [mode], or prefix mode)")
        if not f[0].startswith("/"):
            raise MountListError(
                file, lineno, f"relative prefix '{f[0]}' (prefixes must be absolute paths)")
        if len(f) == 1:
            raise MountListError(file, lineno, f"missing redirect or mode after prefix '{f[0]}'")
        prefix = normalise(f[0])
        what = f[1]
        mode = "rwx"
        target: str | None = None
        if what.startswith("/"):
            kind, target = REDIRECT, normalise(what)
        elif what.upper() in KEYWORDS:
            kind = what.upper()
            if kind in (DENY, ENOENT):
                mode = ""
        elif _is_mode(what):
            kind, target, mode = IDENTITY, prefix, _mode(what)
            if len(f) == 3:
                raise MountListError(file, lineno, f"unexpected '{f[2]}' after mode '{what}'")
        elif "/" in what or what.startswith((".", "~")):
            raise MountListError(
                file, lineno, f"relative redirect '{what}' (redirects must be absolute paths)")
        else:
            raise MountListError(
                file, lineno,
                f"unknown keyword '{what}' (expected an absolute path, DENY, ENOENT, PRIVATE "
                "or a mode from rwx)")
        if len(f) == 3:
            if kind in (DENY, ENOENT):
                raise MountListError(file, lineno, f"{kind} takes no mode (got '{f[2]}')")
            if not _is_mode(f[2]):
                raise MountListError(file, lineno, f"bad mode '{f[2]}' (use letters from rwx, or '-')")
            mode = _mode(f[2])
        glob = _is_glob(prefix)
        if glob and kind not in (IDENTITY, DENY, ENOENT):
            raise MountListError(
                file, lineno, f"glob prefix '{prefix}' can only DENY, hide (ENOENT) or set a mode")
        entries.append(Entry(prefix, kind, target, mode, lineno, glob))
    return entries


def load(path: str | os.PathLike[str]) -> list[Entry]:
    """Read and parse a mount-list file; unreadable files raise :class:`MountListError` too."""
    file = os.fspath(path)
    try:
        with open(file, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise MountListError(file, 0, f"cannot read mount list: {exc.strerror}") from None
    try:
        text = data.decode("utf-8", errors="surrogateescape")
    except Exception:  # pragma: no cover - surrogateescape does not fail
        raise MountListError(file, 0, "cannot read mount list: undecodable") from None
    return parse(text, file)


def covers(entry: Entry, path: str) -> int:
    """Length of the part of ``path`` the entry covers (0: none); a glob prefix matches as many
    components as it has, with fnmatch as Parrot does.  Mirrors sb_entry_covers()."""
    prefix = entry.prefix
    if not entry.glob:
        if prefix == "/":
            return 1
        return len(prefix) if path == prefix or path.startswith(prefix + "/") else 0
    k = prefix.count("/")
    parts = path.split("/")
    if len(parts) - 1 < k:
        return 0
    head = "/".join(parts[:k + 1])
    return len(head) if _fnmatch_pathname(head, prefix) else 0


def _fnmatch_pathname(name: str, pattern: str) -> bool:
    """fnmatch with FNM_PATHNAME: wildcards never match '/'."""
    import fnmatch
    import re

    names, pats = name.split("/"), pattern.split("/")
    return len(names) == len(pats) and all(
        re.fullmatch(fnmatch.translate(p), n, re.DOTALL) is not None for n, p in zip(names, pats))


def lookup(entries: list[Entry], vpath: str) -> Entry:
    """The entry governing an absolute normalised virtual path (longest prefix, later line)."""
    best, best_len = entries[0], 0
    for e in entries:
        length = covers(e, vpath)
        if length and length >= best_len:
            best, best_len = e, length
    return best


def parrot_differs(entries: list[Entry]) -> list[tuple[Entry, Entry]]:
    """(inner, outer) pairs where Parrot, which lets the later of two covering lines win, would
    decide differently from the longest prefix.  Mirrors sb_mounts_parrot_differs()."""
    def effect(e: Entry):
        return (e.kind, e.mode, e.target if e.kind == REDIRECT else None,
                e.line if e.kind == PRIVATE else None)

    out = []
    for i, inner in enumerate(entries):
        for outer in entries[i + 1:]:
            if (inner.line and not inner.glob and not outer.glob
                    and len(outer.prefix) < len(inner.prefix) and covers(outer, inner.prefix)
                    and effect(inner) != effect(outer)):
                out.append((inner, outer))
    return out


def translate(entry: Entry, vpath: str) -> str | None:
    """The real path of ``vpath`` under ``entry`` (None for DENY/ENOENT/unattached PRIVATE)."""
    if entry.target is None:
        return None
    if entry.kind == IDENTITY:
        return vpath
    rest = vpath[len(entry.prefix):] if entry.prefix != "/" else (vpath if vpath != "/" else "")
    return posixpath.join(entry.target, rest.lstrip("/")) if rest else entry.target


load_mounts = load


def is_static_executable(path: str | os.PathLike[str], _depth: int = 0) -> bool:
    """True for an ELF executable without a program interpreter (PT_INTERP), or a script whose
    ``#!`` interpreter is one: an LD_PRELOAD agent cannot see such a program's calls.  The
    dynamic loader itself (run directly) does not count.  Mirrors sb_elf_is_static()."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(64)
            if head[:2] == b"#!" and _depth < 4:
                line = (head + fh.read(192)).split(b"\n", 1)[0][2:].strip()
                interp = line.split()[0].decode(errors="replace") if line else ""
                return interp.startswith("/") and is_static_executable(interp, _depth + 1)
            if head[:4] != b"\x7fELF" or len(head) < 64:
                return False
            is64, little = head[4] == 2, head[5] == 1
            end = "<" if little else ">"
            if is64:
                e_type, = struct.unpack_from(end + "H", head, 16)
                phoff, = struct.unpack_from(end + "Q", head, 32)
                phentsize, phnum = struct.unpack_from(end + "HH", head, 54)
            else:
                e_type, = struct.unpack_from(end + "H", head, 16)
                phoff, = struct.unpack_from(end + "I", head, 28)
                phentsize, phnum = struct.unpack_from(end + "HH", head, 42)
            if e_type not in (2, 3):            # ET_EXEC, ET_DYN
                return False
            for i in range(min(phnum, 4096)):
                fh.seek(phoff + i * phentsize)
                p_type, = struct.unpack(end + "I", fh.read(4))
                if p_type == 3:                 # PT_INTERP
                    return False
    except (OSError, struct.error):
        return False
    name = os.path.basename(os.fspath(path))
    return not name.startswith(("ld-linux", "ld.so", "ld64.so", "ld-musl"))


def landlock_abi() -> int:
    """The kernel's Landlock ABI version (0: none)."""
    import ctypes

    numbers = {"x86_64": 444, "aarch64": 444}
    number = numbers.get(os.uname().machine)
    if number is None:
        return 0
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    version = libc.syscall(ctypes.c_long(number), None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    return max(int(version), 0)


def check_program(command: list[str], env: dict[str, str]) -> list[str]:
    """The command `bypass run` starts.  A statically linked first program would never load the
    agent: with Landlock it is started through a shell that does (the agent installs the ruleset
    before the exec, and the kernel holds the static program to the list); without, it is
    refused (the agent checks every later exec itself)."""
    if not command or env.get("BYPASS_SANDBOX_ALLOW_STATIC", "") not in ("", "0"):
        return command
    found = command[0] if "/" in command[0] else shutil.which(command[0], path=env.get("PATH"))
    if not found or not is_static_executable(found):
        return command
    if env.get("BYPASS_SANDBOX_KERNEL_ENFORCEMENT", "") != "0" and landlock_abi() > 0:
        return ["/bin/sh", "-c", 'exec "$@"', "sh", *command]
    raise BypassError(f"refusing to run {found}: statically linked, so the sandbox could not see "
                      "its calls (set BYPASS_SANDBOX_ALLOW_STATIC=1 to run it anyway)")
