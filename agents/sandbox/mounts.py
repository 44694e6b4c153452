"""Mount lists for the sandbox agent (Parrot style), checked before a program starts.

The grammar has one implementation, the parser in ``agents/sandbox/mounts.c``: the agent parses
the list when it starts (it must not trust its environment), and ``bypass run -m`` calls
:func:`load` first, which runs that same C (built as a small library, :func:`library`, and
called through cffi) so that a bad list is reported before anything runs, in the agent's words.

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
program uses (``/dev/null``, ``/dev/tty``, ``/dev/shm`` …; mounts.c names them).
"""

from __future__ import annotations

import os
import shutil
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ...errors import BuildError, BypassError

__all__ = [
    "MountListError",
    "Entry",
    "parse",
    "load",
    "load_mounts",
    "library",
    "is_static_executable",
    "check_program",
]

IDENTITY, REDIRECT, DENY, ENOENT, PRIVATE = "identity", "redirect", "DENY", "ENOENT", "PRIVATE"
_KINDS = (IDENTITY, REDIRECT, DENY, ENOENT, PRIVATE)        # enum sb_kind's order

# What Python needs of sandbox.h to call the parser (tests/sandbox/sandbox_lib.py builds on it).
CDEF = """
struct sb_entry { char *prefix; size_t plen; char *target; size_t tlen; int kind; int mode; int line; int glob; };
struct sb_mounts { struct sb_entry *e; int n; char *file; };
int sb_mounts_parse(struct sb_mounts *m, const char *text, const char *file, char *err, size_t errsize);
int sb_mounts_load(struct sb_mounts *m, const char *file, char *err, size_t errsize);
void sb_mounts_free(struct sb_mounts *m);
"""
LIBRARY = "sandbox-mounts"
LIBRARY_SOURCES = [Path(__file__).with_name("mounts.c"), Path(__file__).with_name("sandbox.h")]
# A message quotes at most two fields of one line, and the parser refuses lines of 2 * PATH_MAX
# and more: this leaves room for both and the words around them, besides the file's name.
_MESSAGE_ROOM = 3 * 4096


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


def library(folder: Path | None = None) -> Path:
    """The parser of mounts.c as a shared library: prebuilt with the package, or compiled into
    the agent cache once per version of its sources (bypass.build.helper_library)."""
    from ...build import helper_library
    return helper_library(LIBRARY, LIBRARY_SOURCES, folder)


@lru_cache(maxsize=1)
def _parser():
    import cffi

    try:
        path = library()
    except BuildError as exc:
        raise BuildError(f"cannot check the mount list: its parser (agents/sandbox/mounts.c) could not be "
                         f"built: {exc}") from None
    ffi = cffi.FFI()
    ffi.cdef(CDEF)
    return ffi, ffi.dlopen(str(path))


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="surrogateescape")


def _run(file: str, call) -> list[Entry]:
    """Entries of the list that call(lib, mounts, file, err) parses, or its MountListError."""
    ffi, lib = _parser()
    m = ffi.new("struct sb_mounts *")
    name = os.fsencode(file)
    err = ffi.new("char[]", len(name) + _MESSAGE_ROOM)
    if call(lib, m, name, err) != 0:
        # "file:line: error: message", where file is the name given: take line and message apart
        line, _, message = ffi.string(err)[len(name) + 1:].partition(b": error: ")
        raise MountListError(file, int(line), _text(message))
    try:
        entries = []
        for e in m.e[0:m.n]:
            target = None if e.target == ffi.NULL else _text(ffi.string(e.target))
            mode = "".join(c for c, bit in (("r", 4), ("w", 2), ("x", 1)) if e.mode & bit)
            entries.append(Entry(_text(ffi.string(e.prefix)), _KINDS[e.kind], target, mode, e.line, bool(e.glob)))
        return entries
    finally:
        lib.sb_mounts_free(m)


def parse(text: str, file: str = "<mounts>") -> list[Entry]:
    """Parse mount-list text; raise :class:`MountListError` on the first bad line."""
    if "\0" in text:
        # the C parser reads a C string, which would end here in silence; its file reader refuses
        # such a list, in these words
        raise MountListError(file, 0, "cannot read mount list: binary data (NUL byte)")
    data = text.encode("utf-8", errors="surrogateescape")
    return _run(file, lambda lib, m, name, err: lib.sb_mounts_parse(m, data, name, err, len(err)))


def load(path: str | os.PathLike[str]) -> list[Entry]:
    """Read and parse a mount-list file, as the agent does; unreadable files raise
    :class:`MountListError` too."""
    return _run(os.fspath(path), lambda lib, m, name, err: lib.sb_mounts_load(m, name, err, len(err)))


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
