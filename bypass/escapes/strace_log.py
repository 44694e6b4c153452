"""Read the log of `strace -f -y`: the system calls the kernel really received.

Lines look like `1234 openat(AT_FDCWD</cwd>, "/etc/passwd", O_RDONLY|O_CLOEXEC) = 3</etc/passwd>`.
With -f a call interrupted by another process's output is split into `... <unfinished ...>` and
`<... openat resumed>...`; those halves are joined here. -y annotates every descriptor with its
path, which is what lets the report name the file behind a bare `read(3, …)`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .textargs import parse_int, split_args, unquote

AT_FDCWD = -100
_LINE = re.compile(r"^(\d+)\s+(.*)$")
_CALL = re.compile(r"^(\w+)\((.*)\)\s+=\s+(.*)$")
_RESUMED = re.compile(r"^<\.\.\. (\w+) resumed>(.*)$")
_RESULT = re.compile(r"^(-?\d+|0x[0-9a-fA-F]+|\?)(?:<(.*)>)?(?:\s+(E[A-Z0-9]+))?")
_FD = re.compile(r"^(-?\d+|AT_FDCWD)(?:<(.*)>)?$")


@dataclass
class Syscall:
    tid: int
    name: str
    args: list[str]
    ret: int | None
    ret_path: str | None       # -y annotation of a returned descriptor
    errno: str | None
    number: int                # order in the log
    tgid: int = 0              # filled in by Processes

    def fd(self, index: int) -> tuple[int | None, str | None]:
        """Descriptor argument `index` and the path strace printed for it."""
        if index >= len(self.args):
            return None, None
        match = _FD.match(self.args[index])
        if not match:
            return None, None
        value = AT_FDCWD if match.group(1) == "AT_FDCWD" else int(match.group(1))
        return value, match.group(2)

    def string(self, index: int) -> str | None:
        return unquote(self.args[index]) if index < len(self.args) else None

    @property
    def failed(self) -> bool:
        return self.errno is not None


@dataclass
class Processes:
    """Who is whose thread and whose child, from the clone/fork/vfork results in the log."""
    tgid: dict[int, int] = field(default_factory=dict)     # tid → thread-group id (what getpid says)
    parent: dict[int, int] = field(default_factory=dict)   # tgid → parent tgid
    root: int | None = None

    def group(self, tid: int) -> int:
        return self.tgid.get(tid, tid)


_CLONES = {"clone", "clone3", "fork", "vfork"}


def parse_strace(text: str) -> tuple[list[Syscall], Processes]:
    calls: list[Syscall] = []
    processes = Processes()
    pending: dict[int, str] = {}
    for raw in text.splitlines():
        match = _LINE.match(raw)
        if not match:
            continue
        tid, rest = int(match.group(1)), match.group(2)
        if processes.root is None:
            processes.root = tid
        if rest.startswith(("+++", "---")):
            continue
        if rest.endswith("<unfinished ...>"):
            pending[tid] = rest[: -len("<unfinished ...>")].rstrip()
            continue
        resumed = _RESUMED.match(rest)
        if resumed:
            head = pending.pop(tid, resumed.group(1) + "(")
            rest = head + resumed.group(2)
        call = _CALL.match(rest)
        if not call:
            continue
        name, args_text, result = call.groups()
        res = _RESULT.match(result)
        ret = parse_int(res.group(1)) if res else None
        syscall = Syscall(tid=tid, name=name, args=split_args(args_text), ret=ret,
                          ret_path=res.group(2) if res else None, errno=res.group(3) if res else None,
                          number=len(calls))
        if name in _CLONES and ret is not None and ret > 0:
            group = processes.group(tid)
            if "CLONE_THREAD" in args_text:
                processes.tgid[ret] = group
            else:
                processes.parent[ret] = group
        calls.append(syscall)
    for syscall in calls:
        syscall.tgid = processes.group(syscall.tid)
    return calls, processes
