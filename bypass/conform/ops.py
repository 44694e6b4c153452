"""The steps `bypass conform` generates: what they are, how they travel to the executor, how a
person reads them.

A step is one libc call with concrete arguments.  Arguments are small value objects that know
their script token (bypass/conform/executor.c reads it) and their C spelling (for reports).
Generation is seeded and deterministic: the same seed gives the same sequence everywhere.
"""
from __future__ import annotations

import os
import random
import stat
from dataclasses import dataclass

# ---- argument values -------------------------------------------------------------------


def c_string(data: bytes) -> str:
    out = []
    for b in data:
        ch = chr(b)
        if ch in '"\\':
            out.append("\\" + ch)
        elif 32 <= b < 127:
            out.append(ch)
        else:
            out.append(f"\\x{b:02x}\"\"")
    return '"' + "".join(out) + '"'


@dataclass(frozen=True)
class Path:
    """A path or string argument. kind: plain bytes, "root" (absolute, inside the run's root),
    "long" (absolute, padded to `length` bytes), "bad" ((char *)-1), "guard" (a pointer to an
    inaccessible page), "null"."""
    data: bytes = b""
    kind: str = "plain"
    length: int = 0

    def token(self) -> str:
        if self.kind in ("bad", "guard", "null"):
            return self.kind
        if self.kind == "root":
            return "r:" + self.data.hex()
        if self.kind == "long":
            return f"R:{self.length}:{self.data.hex()}"
        return "s:" + self.data.hex()

    def c(self) -> str:
        if self.kind == "bad":
            return "(const char *)-1"
        if self.kind == "guard":
            return "(const char *)PROT_NONE_PAGE"
        if self.kind == "null":
            return "NULL"
        if self.kind == "root":
            return f"ROOT \"/\" {c_string(self.data)}"
        if self.kind == "long":
            return f"ROOT \"/./././…\" {c_string(self.data)} /* {self.length} bytes */"
        if len(self.data) > 80:
            return f"{c_string(self.data[:40])} \"…\" /* {len(self.data)} bytes */"
        return c_string(self.data)


@dataclass(frozen=True)
class Fd:
    """The descriptor an earlier step (by id) returned."""
    step: int
    SIGIL = "#"
    C_NAME = "fd"

    def token(self) -> str:
        return f"{self.SIGIL}{self.step}"

    def c(self) -> str:
        return f"{self.C_NAME}{self.step}"


@dataclass(frozen=True)
class DirStream(Fd):
    """The directory stream an earlier step (by id) opened."""
    SIGIL = "%"
    C_NAME = "dir"


@dataclass(frozen=True)
class Num:
    """An integer, spelt in C by `names` (flag bits or constants) when given."""
    value: int
    names: str = ""

    def token(self) -> str:
        return str(self.value)

    def c(self) -> str:
        return self.names or str(self.value)


def flags(value: int, table: dict[str, int]) -> Num:
    parts = []
    rest = value
    for name, bit in table.items():
        if bit and rest & bit == bit:
            parts.append(name)
            rest &= ~bit
    if rest or not parts:
        parts.append(str(rest) if not parts or rest else "0")
    return Num(value, "|".join(parts))


def octal(value: int) -> Num:
    return Num(value, f"0{value:o}")


def const(value: int, name: str) -> Num:
    return Num(value, name)


# ---- steps -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    id: int
    op: str
    args: tuple = ()

    def line(self) -> str:
        return " ".join([str(self.id), self.op, *(a.token() for a in self.args)])

    def c(self) -> str:
        """The call as a person reads it (the executor's composite steps keep their names)."""
        return f"{self.op}({', '.join(a.c() for a in self.args)})"

    @staticmethod
    def parse(line: str) -> "Step":
        """A script line back into a step (`--replay`); flags come back as plain numbers."""
        fields = line.split()
        if len(fields) < 2 or not fields[0].isdigit():
            raise ValueError(f"not a step: {line!r}")
        return Step(int(fields[0]), fields[1], tuple(_parse_token(t) for t in fields[2:]))


def _parse_token(token: str):
    if token in ("bad", "guard", "null"):
        return Path(kind=token)
    if token[:2] == "s:":
        return Path(bytes.fromhex(token[2:]))
    if token[:2] == "r:":
        return Path(bytes.fromhex(token[2:]), "root")
    if token[:2] == "R:":
        length, _, data = token[2:].partition(":")
        return Path(bytes.fromhex(data), "long", int(length))
    if token[0] == "#":
        return Fd(int(token[1:]))
    if token[0] == "%":
        return DirStream(int(token[1:]))
    return Num(int(token, 0))


# Steps that return a descriptor (the executor remembers it under the step's id).
FD_STEPS = {"open", "openat", "creat", "dup", "dup2", "dup3", "mkstemp", "mkostemp", "mkstemps", "mkostemps"}

O_FLAGS = {name: getattr(os, name) for name in (
    "O_WRONLY", "O_RDWR", "O_CREAT", "O_EXCL", "O_TRUNC", "O_APPEND", "O_NONBLOCK", "O_DIRECTORY",
    "O_NOFOLLOW", "O_CLOEXEC", "O_PATH", "O_SYNC", "O_NOCTTY", "O_NOATIME")}
O_FLAGS = {"O_TMPFILE": os.O_TMPFILE, **O_FLAGS}   # O_TMPFILE includes O_DIRECTORY: name it first
AT_FDCWD = -100
AT_FLAGS = {"AT_SYMLINK_NOFOLLOW": 0x100, "AT_REMOVEDIR": 0x200, "AT_SYMLINK_FOLLOW": 0x400,
            "AT_EMPTY_PATH": 0x1000, "AT_EACCESS": 0x200}
RENAME_FLAGS = {"RENAME_NOREPLACE": 1, "RENAME_EXCHANGE": 2, "RENAME_WHITEOUT": 4}
ACCESS_MODES = {"R_OK": 4, "W_OK": 2, "X_OK": 1}
SEEK = {0: "SEEK_SET", 1: "SEEK_CUR", 2: "SEEK_END", 3: "SEEK_DATA", 4: "SEEK_HOLE"}
RWF = {"RWF_HIPRI": 1, "RWF_DSYNC": 2, "RWF_SYNC": 4, "RWF_NOWAIT": 8, "RWF_APPEND": 16}
FALLOC = {"FALLOC_FL_KEEP_SIZE": 1, "FALLOC_FL_PUNCH_HOLE": 2, "FALLOC_FL_ZERO_RANGE": 16}
LOCK_CMDS = {5: "F_GETLK", 6: "F_SETLK", 36: "F_OFD_GETLK", 37: "F_OFD_SETLK"}
LOCK_TYPES = {0: "F_RDLCK", 1: "F_WRLCK", 2: "F_UNLCK"}
INT_CMDS = {1: "F_GETFD", 2: "F_SETFD", 3: "F_GETFL", 4: "F_SETFL", 0: "F_DUPFD", 1030: "F_DUPFD_CLOEXEC",
            1025: "F_GETLEASE", 1024: "F_SETLEASE", 1033: "F_GET_SEALS"}
STATX_MASKS = {"STATX_BASIC_STATS": 0x7ff, "STATX_BTIME": 0x800}
FTW_FLAGS = {"FTW_PHYS": 1, "FTW_MOUNT": 2, "FTW_DEPTH": 8}

# Safety: relative paths never name "/" and climb at most CLIMB levels above the current
# directory, so a sequence with at most MAX_CWD_MOVES changes of directory stays inside the
# NEST levels of directories `bypass conform` makes above each root: nothing outside them is
# ever touched, whatever the agent under test does.
MOVES_CWD = {"chdir", "fchdir", "vfork_chdir_exec"}
MAX_CWD_MOVES = 5
CLIMB = 3
NEST = (MAX_CWD_MOVES + 1) * CLIMB + 4

SHELL_COMMANDS = [b"cat f", b"echo hi > n1", b"ls -a d", b"mkdir -p d/q && ls d", b"cat missing 2>&1",
                  b"cd d && pwd -P | sed 's|.*/||'", b"wc -c < d/f", b"printf x >> e; cat e"]
STDIO_MODES = [b"r", b"r+", b"w", b"w+", b"a", b"a+", b"rx", b"we", b"re", b"q"]
# A stream's first mode: mostly one that opens (fopen_freopen and freopen_std are about the reopen)
STREAM_MODES = [b"r", b"r+", b"w", b"w+", b"a", b"a+", b"w+", b"r+", b"we", b"re", b"ax", b"q"]
PATHCONF = {3: "_PC_NAME_MAX", 4: "_PC_PATH_MAX", 0: "_PC_LINK_MAX", 5: "_PC_PIPE_BUF"}

# Set times are old (before 2001), so the engine can tell them from times the file system
# stamped during the run: only the former are compared.
OLD_TIMES = (86400, 300000000, 999999999)
UTIME_NOW, UTIME_OMIT = -1, -2

# The scratch tree each sequence starts from, inside the run's root (mode, content or target).
INITIAL_TREE = (
    ("d", "dir", 0o755, None),
    ("d/sub", "dir", 0o755, None),
    ("d/f", "file", 0o644, b"hello world\n"),
    ("f", "file", 0o644, b"0123456789abcdef" * 300),
    ("e", "file", 0o600, b""),
    ("ro", "file", 0o444, b"read only\n"),
    ("x", "file", 0o755, b"#!/bin/sh\nexit 0\n"),
    ("lnk", "symlink", None, b"f"),
    ("dlnk", "symlink", None, b"d"),
    ("abs", "symlink", None, b"$ROOT/d/f"),
    ("dangling", "symlink", None, b"nowhere"),
    ("loop", "symlink", None, b"loop"),
    ("up", "symlink", None, b".."),
    (b"\xff\xfename", "file", 0o644, b"not utf-8\n"),
)

EXISTING = [b"d", b"d/sub", b"d/f", b"f", b"e", b"ro", b"x", b"lnk", b"dlnk", b"abs", b"dangling", b"loop",
            b"up", b"\xff\xfename"]
FRESH = [b"n1", b"n2", b"d/n3", b"d/sub/n4", b"n5", b"\xc3\x28bad"]


class Generator:
    """Random steps from one seed; `as_root` adds the steps that need root."""

    def __init__(self, seed, as_root: bool = False):
        self.rng = random.Random(seed)
        self.as_root = as_root
        self.next_id = 1
        self.fd_steps: list[int] = []
        self.dir_steps: list[int] = []
        self.names = list(EXISTING)
        self.cwd_moves = 0
        self.catalogue = [e for e in self.CATALOGUE if as_root or e[0] != "as_nobody"]

    # -- argument makers --
    def name(self, fresh_bias: float = 0.3) -> bytes:
        if self.rng.random() < fresh_bias:
            n = self.rng.choice(FRESH)
            self.names.append(n)
            return n
        return self.rng.choice(self.names)

    def path(self, fresh_bias: float = 0.3, pointer: bool = True) -> Path:
        """`pointer=False` for steps whose path is read in user space (a sockaddr, a spawn file
        action, realpath, opendir): an invalid pointer faults there natively, before any call."""
        r = self.rng.random()
        if not pointer and 0.92 <= r < 0.96:
            r = 0.0
        name = self.name(fresh_bias)
        if r < 0.55:
            return Path(name)
        if r < 0.62:
            return Path(self.rng.choice([b"", b".", b"..", b"./", b"../w", b"..//w/", b"d/.", b"d/..",
                                         b"d/sub/.", b"d/sub/..", b"d//sub", b"dlnk/", b"dlnk/.", b"up/w/f"]))
        if r < 0.72:
            return Path(name + self.rng.choice([b"/", b"/.", b"/..", b"//", b"/./"]))
        if r < 0.80:
            return Path(self.rng.choice([b"./", b"d/../", b"../w/", b"dlnk/", b"d/sub/../../", b".//"]) + name)
        if r < 0.88:
            return Path(name, "root")
        if r < 0.92:
            # near PATH_MAX: the kernel accepts 4095 bytes and refuses 4096 (ENAMETOOLONG)
            if self.rng.random() < 0.5:
                return Path(name, "long", self.rng.choice([4000, 4094, 4095, 4096, 4200]))
            length = self.rng.choice([1000, 4000, 4090, 4200])
            pad = b"./" * ((length - len(name)) // 2)
            return Path(pad + name)
        if r < 0.96:
            return Path(kind=self.rng.choice(["bad", "guard", "null"]))
        return Path(name + b"/" + self.name(0.5))

    def fd(self) -> Fd | Num:
        r = self.rng.random()
        if self.fd_steps and r < 0.85:
            recent = self.fd_steps[-4:]
            return Fd(self.rng.choice(recent))
        return self.rng.choice([Num(-1), Num(9999), Num(3), const(AT_FDCWD, "AT_FDCWD")])

    def dirfd(self) -> Fd | Num:
        if self.rng.random() < 0.6:
            return const(AT_FDCWD, "AT_FDCWD")
        return self.fd()

    def oflags(self) -> Num:
        rng = self.rng
        acc = rng.choice([os.O_RDONLY, os.O_WRONLY, os.O_RDWR, os.O_RDWR])
        extra = 0
        for bit, p in ((os.O_CREAT, 0.5), (os.O_EXCL, 0.15), (os.O_TRUNC, 0.15), (os.O_APPEND, 0.15),
                       (os.O_DIRECTORY, 0.08), (os.O_NOFOLLOW, 0.1), (os.O_CLOEXEC, 0.2), (os.O_NONBLOCK, 0.1)):
            if rng.random() < p:
                extra |= bit
        r = rng.random()
        if r < 0.06:
            return flags(os.O_PATH | (extra & (os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC)), O_FLAGS)
        if r < 0.10:
            return flags(os.O_TMPFILE | rng.choice([os.O_RDWR, os.O_WRONLY]) | (extra & os.O_EXCL), O_FLAGS)
        return flags(acc | extra, O_FLAGS)

    def mode(self) -> Num:
        return octal(self.rng.choice([0o644, 0o600, 0o755, 0o700, 0o444, 0o000, 0o777, 0o4755, 0o1777,
                                      0o2755, stat.S_IFREG | 0o644]))

    def data(self) -> Path:
        r = self.rng.random()
        if r < 0.05:
            return Path(kind=self.rng.choice(["bad", "guard"]))
        if r < 0.15:
            return Path(bytes(self.rng.randrange(256) for _ in range(self.rng.choice([4096, 9000]))))
        return self.stream_data()

    def size(self) -> Num:
        return Num(self.rng.choice([0, 1, 5, 16, 100, 4096, 5000, 10000]))

    def offset(self) -> Num:
        return Num(self.rng.choice([0, 0, 3, 100, 4096, 4800, 8192, 100000, -1]))

    def when(self) -> Num:
        r = self.rng.random()
        if r < 0.2:
            return const(UTIME_NOW, "UTIME_NOW")
        if r < 0.35:
            return const(UTIME_OMIT, "UTIME_OMIT")
        return Num(self.rng.choice(OLD_TIMES))

    def at_flags(self, *allowed: str) -> Num:
        value = 0
        for name in allowed:
            if self.rng.random() < 0.35:
                value |= AT_FLAGS[name]
        return flags(value, {n: AT_FLAGS[n] for n in allowed})

    def owner(self) -> tuple[Num, Num]:
        uid, gid = os.getuid(), os.getgid()
        return (Num(self.rng.choice([-1, uid, 65534, 1])), Num(self.rng.choice([-1, gid, 65534, 1])))

    def exe(self) -> Path:
        return Path(self.rng.choice([b"x", b"./x", b"d", b"f", b"ro", b"missing", b"lnk", b"d/f", b""]))

    def template(self, suffix: int = 0) -> Path:
        base = self.rng.choice([b"tmpXXXXXX", b"d/tmpXXXXXX", b"missing/tmpXXXXXX", b"tmpXXX", b"ro/tmpXXXXXX"])
        return Path(base + (b".c" if suffix else b""))

    def reopen_path(self, first: Path) -> Path:
        """freopen's new path for a stream over `first`: the same file, NULL (the same file in a
        new mode), a local path outside the work directory, or another name of the tree."""
        r = self.rng.random()
        if r < 0.3:
            return first
        if r < 0.45:
            return Path(kind="null")
        if r < 0.55:
            return Path(b"/dev/null")
        return self.path(0.4, pointer=False)

    def stream_data(self) -> Path:
        # fwrite copies in user space: an invalid pointer would fault before any call
        return Path(self.rng.choice([b"hello", b"x", b"0123456789", b"\x00\xff\x00", b"abc\n" * 3]))

    def xname(self) -> Path:
        return Path(self.rng.choice([b"user.a", b"user.b", b"user.a", b"trusted.x", b"bogus"]))

    # -- steps --
    def step(self) -> Step:
        rng = self.rng
        while True:
            op, make = rng.choices(self.catalogue, weights=[w for _, w, _ in self.catalogue])[0][::2]
            if op not in MOVES_CWD:
                break
            if self.cwd_moves < MAX_CWD_MOVES:
                self.cwd_moves += 1
                break
        args = make(self)
        if op == "opendir" or op == "fdopendir":
            args = (*args, DirStream(self.next_id))
        s = Step(self.next_id, op, tuple(args))
        self.next_id += 1
        if op in FD_STEPS:
            self.fd_steps.append(s.id)
        if op in ("opendir", "fdopendir"):
            self.dir_steps.append(s.id)
        return s

    def sequence(self, length: int) -> list[Step]:
        return [self.step() for _ in range(length)]

    def dirstream(self) -> DirStream:
        return DirStream(self.rng.choice(self.dir_steps[-3:])) if self.dir_steps else DirStream(0)

    CATALOGUE: list = []


def _op(name: str, weight: float):
    def register(make):
        Generator.CATALOGUE.append((name, weight, make))
        return make
    return register


G = Generator
_op("open", 8)(lambda g: (g.path(), g.oflags(), g.mode()))
_op("openat", 5)(lambda g: (g.dirfd(), g.path(), g.oflags(), g.mode()))
_op("creat", 1)(lambda g: (g.path(), g.mode()))
_op("close", 2)(lambda g: (g.fd(),))
_op("read", 4)(lambda g: (g.fd(), g.size()))
_op("pread", 2)(lambda g: (g.fd(), g.size(), g.offset()))
_op("write", 4)(lambda g: (g.fd(), d := g.data(), Num(len(d.data) if d.kind == "plain" else 5)))
_op("pwrite", 2)(lambda g: (g.fd(), d := g.data(), Num(len(d.data) if d.kind == "plain" else 5), g.offset()))
_op("readv", 1)(lambda g: (g.fd(), g.size(), Num(g.rng.choice([0, 3, 100]))))
_op("writev", 1)(lambda g: (g.fd(), g.data(), g.data()))
_op("preadv", 1)(lambda g: (g.fd(), g.size(), Num(7), g.offset()))
_op("pwritev", 1)(lambda g: (g.fd(), g.data(), g.data(), g.offset()))
_op("preadv2", 1)(lambda g: (g.fd(), g.size(), Num(7), g.offset(), flags(g.rng.choice([0, 0, 8]), RWF)))
_op("pwritev2", 1)(lambda g: (g.fd(), g.data(), g.data(), g.offset(),
                              flags(g.rng.choice([0, 2, 16]), RWF)))
_op("lseek", 3)(lambda g: (g.fd(), g.offset(), const(w := g.rng.choice(list(SEEK)), SEEK[w])))
_op("truncate", 2)(lambda g: (g.path(0.1), g.offset()))
_op("ftruncate", 2)(lambda g: (g.fd(), g.offset()))
_op("fallocate", 1)(lambda g: (g.fd(), flags(g.rng.choice([0, 1, 3, 16]), FALLOC), g.offset(), g.size()))
_op("posix_fallocate", 1)(lambda g: (g.fd(), g.offset(), g.size()))
_op("fsync", 1)(lambda g: (g.fd(),))
_op("fdatasync", 0.5)(lambda g: (g.fd(),))
_op("dup", 1)(lambda g: (g.fd(),))
_op("dup2", 1)(lambda g: (g.fd(), Num(g.rng.choice([5, 9, 3, 100, -1]))))
_op("dup3", 0.5)(lambda g: (g.fd(), Num(g.rng.choice([6, 9, 3])), flags(g.rng.choice([0, os.O_CLOEXEC, 1]),
                                                                          {"O_CLOEXEC": os.O_CLOEXEC})))
_op("fcntl_int", 2)(lambda g: (g.fd(), const(c := g.rng.choice([1, 2, 3, 3, 4, 4, 0, 1030, 1025, 1033]),
                                             INT_CMDS[c]),
                               flags(g.rng.choice([0, 1, os.O_APPEND, os.O_NONBLOCK, os.O_APPEND | os.O_RDWR]),
                                     O_FLAGS) if c in (2, 4) else Num(g.rng.choice([0, 10, 50]))))
_op("fcntl_lock", 1.5)(lambda g: (g.fd(), const(c := g.rng.choice(list(LOCK_CMDS)), LOCK_CMDS[c]),
                                  const(t := g.rng.choice(list(LOCK_TYPES)), LOCK_TYPES[t]),
                                  Num(g.rng.choice([0, 10])), Num(g.rng.choice([0, 5, 100]))))
_op("flock", 0.5)(lambda g: (g.fd(), Num(g.rng.choice([1, 2, 8, 6]))))
_op("mkdir", 4)(lambda g: (g.path(0.5), g.mode()))
_op("mkdirat", 1)(lambda g: (g.dirfd(), g.path(0.5), g.mode()))
_op("rmdir", 3)(lambda g: (g.path(0.2),))
_op("unlink", 3)(lambda g: (g.path(0.2),))
_op("unlinkat", 2)(lambda g: (g.dirfd(), g.path(0.2), g.at_flags("AT_REMOVEDIR")))
_op("remove", 1)(lambda g: (g.path(0.2),))
_op("rename", 3)(lambda g: (g.path(0.1), g.path(0.5)))
_op("renameat", 1)(lambda g: (g.dirfd(), g.path(0.1), g.dirfd(), g.path(0.5)))
_op("renameat2", 2)(lambda g: (g.dirfd(), g.path(0.1), g.dirfd(), g.path(0.5),
                               flags(g.rng.choice([0, 1, 2, 4, 3]), RENAME_FLAGS)))
_op("link", 2)(lambda g: (g.path(0.1), g.path(0.6)))
_op("linkat", 1)(lambda g: (g.dirfd(), g.path(0.1), g.dirfd(), g.path(0.6),
                            g.at_flags("AT_SYMLINK_FOLLOW", "AT_EMPTY_PATH")))
_op("symlink", 2)(lambda g: (Path(g.rng.choice([b"f", b"d", b"../w/f", b"nowhere", b"", b"d/"])), g.path(0.6)))
_op("symlinkat", 1)(lambda g: (Path(g.rng.choice([b"f", b"d", b"sub"])), g.dirfd(), g.path(0.6)))
_op("readlink", 3)(lambda g: (g.path(0.1), Num(g.rng.choice([100, 1, 0, 4096]))))
_op("readlinkat", 1)(lambda g: (g.dirfd(), g.path(0.1), Num(100)))
_op("mkfifo", 1)(lambda g: (g.path(0.5), g.mode()))
_op("mkfifoat", 0.5)(lambda g: (g.dirfd(), g.path(0.5), g.mode()))
_op("mknod", 1)(lambda g: (g.path(0.5), octal(g.rng.choice([stat.S_IFIFO | 0o644, stat.S_IFREG | 0o600, 0o644]))))
_op("mknodat", 0.5)(lambda g: (g.dirfd(), g.path(0.5), octal(stat.S_IFIFO | 0o600)))
_op("bind_unix", 1)(lambda g: (g.path(0.6, pointer=False),))
_op("connect_unix", 0.5)(lambda g: (g.path(0.1, pointer=False),))
_op("chmod", 2)(lambda g: (g.path(0.1), g.mode()))
_op("fchmod", 1)(lambda g: (g.fd(), g.mode()))
_op("fchmodat", 1)(lambda g: (g.dirfd(), g.path(0.1), g.mode(), g.at_flags("AT_SYMLINK_NOFOLLOW")))
_op("chown", 1)(lambda g: (g.path(0.1), *g.owner()))
_op("lchown", 1)(lambda g: (g.path(0.1), *g.owner()))
_op("fchown", 1)(lambda g: (g.fd(), *g.owner()))
_op("fchownat", 1)(lambda g: (g.dirfd(), g.path(0.1), *g.owner(),
                              g.at_flags("AT_SYMLINK_NOFOLLOW", "AT_EMPTY_PATH")))
_op("utimensat", 2)(lambda g: (g.dirfd(), g.path(0.1), g.when(), g.when(), g.at_flags("AT_SYMLINK_NOFOLLOW")))
_op("futimens", 1)(lambda g: (g.fd(), g.when(), g.when()))
_op("utime", 0.5)(lambda g: (g.path(0.1), Num(g.rng.choice([-1, 86400])), Num(300000000)))
_op("utimes", 0.5)(lambda g: (g.path(0.1), Num(g.rng.choice([-1, 86400])), Num(300000000)))
_op("lutimes", 0.5)(lambda g: (g.path(0.1), Num(g.rng.choice([-1, 86400])), Num(300000000)))
_op("setxattr", 1)(lambda g: (g.path(0.1), g.xname(), Path(b"v1"), Num(g.rng.choice([0, 1, 2]))))
_op("lsetxattr", 0.5)(lambda g: (g.path(0.1), g.xname(), Path(b"v2"), Num(0)))
_op("fsetxattr", 0.5)(lambda g: (g.fd(), g.xname(), Path(b"v3"), Num(0)))
_op("getxattr", 1)(lambda g: (g.path(0.1), g.xname(), Num(g.rng.choice([0, 100, 1]))))
_op("lgetxattr", 0.5)(lambda g: (g.path(0.1), g.xname(), Num(100)))
_op("fgetxattr", 0.5)(lambda g: (g.fd(), g.xname(), Num(100)))
_op("listxattr", 1)(lambda g: (g.path(0.1), Num(g.rng.choice([0, 100]))))
_op("llistxattr", 0.5)(lambda g: (g.path(0.1), Num(100)))
_op("flistxattr", 0.5)(lambda g: (g.fd(), Num(100)))
_op("removexattr", 0.5)(lambda g: (g.path(0.1), g.xname()))
_op("fremovexattr", 0.3)(lambda g: (g.fd(), g.xname()))
_op("stat", 5)(lambda g: (g.path(0.1),))
_op("lstat", 3)(lambda g: (g.path(0.1),))
_op("fstat", 3)(lambda g: (g.fd(),))
_op("fstatat", 2)(lambda g: (g.dirfd(), g.path(0.1), g.at_flags("AT_SYMLINK_NOFOLLOW", "AT_EMPTY_PATH")))
_op("statx", 2)(lambda g: (g.dirfd(), g.path(0.1), g.at_flags("AT_SYMLINK_NOFOLLOW", "AT_EMPTY_PATH"),
                           flags(g.rng.choice([0x7ff, 0xfff, 0x1]), STATX_MASKS)))
_op("access", 3)(lambda g: (g.path(0.1), flags(g.rng.choice([0, 4, 2, 1, 6]), ACCESS_MODES)))
_op("faccessat", 2)(lambda g: (g.dirfd(), g.path(0.1), flags(g.rng.choice([0, 4, 2, 1]), ACCESS_MODES),
                               g.at_flags("AT_EACCESS", "AT_SYMLINK_NOFOLLOW")))
_op("euidaccess", 0.5)(lambda g: (g.path(0.1), flags(g.rng.choice([4, 2]), ACCESS_MODES)))
_op("opendir", 2)(lambda g: (g.path(0.1, pointer=False),))
_op("fdopendir", 0.5)(lambda g: (g.fd(),))
_op("readdir_all", 2)(lambda g: (g.dirstream(),))
_op("rewinddir", 0.5)(lambda g: (g.dirstream(),))
_op("closedir", 1)(lambda g: (g.dirstream(),))
_op("scandir", 1.5)(lambda g: (g.path(0.1, pointer=False),))
_op("nftw", 1.5)(lambda g: (Path(g.rng.choice([b".", b"./d", b"d", b"dlnk", b"d/", b"", b"missing"])),
                            flags(g.rng.choice([0, 1, 8, 9]), FTW_FLAGS)))
_op("getcwd", 2)(lambda g: (Num(g.rng.choice([4096, 0, 1, 10])),))
_op("chdir", 2)(lambda g: (g.path(0.1),))
_op("fchdir", 1)(lambda g: (g.fd(),))
_op("realpath", 2)(lambda g: (g.path(0.1, pointer=False),))
_op("copy_file_range", 1)(lambda g: (g.fd(), g.fd(), g.size()))
_op("sendfile", 1)(lambda g: (g.fd(), g.fd(), g.size()))
_op("splice_in", 0.7)(lambda g: (g.fd(), g.size()))
_op("splice_out", 0.7)(lambda g: (g.fd(), g.data()))
_op("mmap_read", 1)(lambda g: (g.fd(), Num(g.rng.choice([4096, 100, 0]))))
_op("mmap_write", 1)(lambda g: (g.fd(), Num(4096), g.data()))
_op("umask", 1)(lambda g: (octal(g.rng.choice([0o22, 0o77, 0o2, 0o0])),))
_op("fork_append", 1)(lambda g: (g.path(0.3), Path(b"from child\n")))
_op("fork_write_fd", 1)(lambda g: (g.fd(), Path(b"child wrote\n")))
_op("fork_fork_mkdir", 0.7)(lambda g: (g.path(0.8),))
_op("vfork_chdir_exec", 1)(lambda g: (g.path(0.1),))
_op("spawn_cat", 1)(lambda g: (g.path(0.1, pointer=False), flags(g.rng.choice([0, 0, os.O_WRONLY | os.O_TRUNC]), O_FLAGS)))
_op("spawn_pwd", 0.7)(lambda g: (g.path(0.1, pointer=False),))
_op("as_nobody", 1)(lambda g: (g.path(0.2), flags(g.rng.choice([0, os.O_WRONLY, os.O_WRONLY | os.O_CREAT]),
                                                  O_FLAGS)))
_op("canonicalize_file_name", 1)(lambda g: (g.path(0.1, pointer=False),))
_op("get_current_dir_name", 0.5)(lambda g: ())
_op("getwd", 0.5)(lambda g: ())
_op("close_range", 0.5)(lambda g: (Num(g.rng.choice([3, 4, 6])), Num(g.rng.choice([3, 5, 20, 2])),
                                   flags(g.rng.choice([0, 4]), {"CLOSE_RANGE_CLOEXEC": 4})))
_op("closefrom", 0.3)(lambda g: (Num(g.rng.choice([3, 5, 10])),))
_op("execve_child", 1)(lambda g: (g.exe(),))
_op("execvp_child", 0.5)(lambda g: (g.exe(),))
_op("execv_child", 0.3)(lambda g: (g.exe(),))
_op("execvpe_child", 0.3)(lambda g: (g.exe(),))
_op("execveat_child", 0.5)(lambda g: (g.dirfd(), g.exe(), g.at_flags("AT_SYMLINK_NOFOLLOW", "AT_EMPTY_PATH")))
_op("fexecve_child", 0.5)(lambda g: (g.fd(),))
_op("system", 0.7)(lambda g: (Path(g.rng.choice(SHELL_COMMANDS)),))
_op("popen_read", 0.7)(lambda g: (Path(g.rng.choice(SHELL_COMMANDS)),))
_op("fopen_read", 1.5)(lambda g: (g.path(0.1, pointer=False), Path(g.rng.choice(STDIO_MODES))))
_op("fopen_write", 1)(lambda g: (g.path(0.5, pointer=False), Path(g.rng.choice(STDIO_MODES)), g.data()))
_op("freopen_read", 0.5)(lambda g: (g.path(0.1, pointer=False), Path(g.rng.choice(STDIO_MODES))))
_op("fopen_freopen", 1.5)(lambda g: (p := g.path(0.3, pointer=False), Path(g.rng.choice(STREAM_MODES)),
                                  g.reopen_path(p), Path(g.rng.choice(STDIO_MODES)), g.stream_data()))
_op("freopen_std", 1)(lambda g: (const(n := g.rng.choice([0, 1, 2]), ("stdin", "stdout", "stderr")[n]),
                                 p := g.path(0.3, pointer=False), Path(g.rng.choice(STREAM_MODES)),
                                 g.reopen_path(p), Path(g.rng.choice(STDIO_MODES)), g.stream_data()))
_op("fdopen_read", 0.5)(lambda g: (g.fd(), Path(g.rng.choice([b"r", b"r+", b"w", b"a"]))))
_op("tmpfile_rw", 0.3)(lambda g: (g.data(),))
_op("mkstemp", 0.7)(lambda g: (g.template(), Num(0), Num(0)))
_op("mkostemp", 0.4)(lambda g: (g.template(), Num(0), flags(g.rng.choice([0, os.O_APPEND, os.O_CLOEXEC]), O_FLAGS)))
_op("mkstemps", 0.4)(lambda g: (g.template(2), Num(2), Num(0)))
_op("mkostemps", 0.3)(lambda g: (g.template(2), Num(2), flags(os.O_CLOEXEC, O_FLAGS)))
_op("mkdtemp", 0.5)(lambda g: (g.template(), Num(0), Num(0)))
_op("statfs", 0.7)(lambda g: (g.path(0.1),))
_op("fstatfs", 0.5)(lambda g: (g.fd(),))
_op("statvfs", 0.7)(lambda g: (g.path(0.1),))
_op("fstatvfs", 0.5)(lambda g: (g.fd(),))
_op("pathconf", 0.5)(lambda g: (g.path(0.1), const(c := g.rng.choice(list(PATHCONF)), PATHCONF[c])))
_op("fpathconf", 0.5)(lambda g: (g.fd(), const(c := g.rng.choice(list(PATHCONF)), PATHCONF[c])))
_op("ftw", 0.7)(lambda g: (Path(g.rng.choice([b".", b"./d", b"d", b"dlnk", b"", b"missing"])),))
_op("futimes", 0.5)(lambda g: (g.fd(), Num(g.rng.choice([-1, 86400])), Num(300000000)))
_op("futimesat", 0.5)(lambda g: (g.dirfd(), g.path(0.1), Num(g.rng.choice([-1, 86400])), Num(300000000)))
_op("lchmod", 0.7)(lambda g: (g.path(0.1), g.mode()))
_op("lremovexattr", 0.3)(lambda g: (g.path(0.1), g.xname()))
_op("getdents64", 0.7)(lambda g: (g.fd(),))
_op("getdirentries", 0.4)(lambda g: (g.fd(),))
_op("readdir_r_all", 0.5)(lambda g: (g.dirstream(),))
_op("scandirat", 0.7)(lambda g: (g.dirfd(), g.path(0.1, pointer=False)))
_op("tee_pipe", 0.2)(lambda g: (g.data(),))
_op("vmsplice_pipe", 0.2)(lambda g: (g.data(),))
_op("spawnp_cat", 0.4)(lambda g: (g.path(0.1, pointer=False), flags(0, O_FLAGS)))
del G


# The knowledge base's calls a composite step makes (a plain step makes the call it is named after).
EXERCISES = {
    "fcntl_int": ["fcntl"], "fcntl_lock": ["fcntl"], "readdir_all": ["readdir"], "readdir_r_all": ["readdir_r"],
    "rewinddir": ["rewinddir"], "splice_in": ["splice"], "splice_out": ["splice"], "tee_pipe": ["tee"],
    "vmsplice_pipe": ["vmsplice"], "tmpfile_rw": ["tmpfile", "fclose"], "popen_read": ["popen"],
    "fopen_read": ["fopen", "fclose"], "fopen_write": ["fopen", "fclose"], "freopen_read": ["freopen", "fclose"],
    "fopen_freopen": ["fopen", "freopen", "fclose"], "freopen_std": ["freopen"],
    "fdopen_read": ["fdopen"], "spawn_cat": ["posix_spawn"], "spawn_pwd": ["posix_spawn"],
    "spawnp_cat": ["posix_spawnp"], "execve_child": ["execve"], "execv_child": ["execv"],
    "execvp_child": ["execvp"], "execvpe_child": ["execvpe"], "execveat_child": ["execveat"],
    "fexecve_child": ["fexecve"], "vfork_chdir_exec": ["chdir", "execve"], "fork_append": ["open", "write"],
    "fork_write_fd": ["write"], "fork_fork_mkdir": ["mkdir"], "as_nobody": ["open"],
    "bind_unix": [], "connect_unix": [], "mmap_read": [], "mmap_write": [],
}


def exercised_calls() -> set[str]:
    return {call for op, _, _ in Generator.CATALOGUE for call in EXERCISES.get(op, [op])}


__all__ = ["Step", "Path", "Fd", "DirStream", "Num", "Generator", "INITIAL_TREE", "FD_STEPS", "OLD_TIMES"]
