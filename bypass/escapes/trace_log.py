"""Read the trace agent's log: the calls an LD_PRELOAD agent trapped.

Line: `PID name(args) = result [ERRNO] <entry>`; exec calls also write `PID name(args) ... <entry>`
before the call (a successful exec never returns to write the second line). The knowledge tells
which argument positions hold paths and descriptors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..knowledge.loader import Knowledge
from .textargs import parse_int, split_args, unquote

_LINE = re.compile(r"^(\d+) (\w+)\((.*)\) (?:= (.*?)|\.\.\.) <([^<>]*)>$")


@dataclass(frozen=True)
class Trapped:
    pid: int
    name: str             # canonical call
    entry: str            # the symbol the program called
    family: str
    paths: tuple[str, ...]
    fds: tuple[int, ...]
    args: tuple[str, ...]
    length: int = 0       # bytes of the log line, newline included: strace shows the write's size
    started: bool = False # the `...` line an exec writes before it runs


def parse_trace(text: str, knowledge: Knowledge) -> list[Trapped]:
    trapped = []
    for raw in text.splitlines():
        match = _LINE.match(raw)
        if not match:
            continue
        pid, name, args_text, result, entry = match.groups()
        call = knowledge.calls.get(name)
        args = split_args(args_text)
        length = len(raw.encode("utf-8", "surrogateescape")) + 1
        if call is None:
            trapped.append(Trapped(int(pid), name, entry, "?", (), (), tuple(args), length, result is None))
            continue
        params = call.canonical_params
        by_name = dict(zip(params, args))
        paths = tuple(p for p in (unquote(by_name.get(n, "")) for n in call.path_args) if p is not None)
        fd_names = list(call.fd_args) + [dirfd for dirfd, _ in call.at_pairs]
        fds = tuple(fd for fd in (parse_int(by_name.get(n, "")) for n in fd_names) if fd is not None)
        trapped.append(Trapped(int(pid), name, entry, call.family, paths, fds, tuple(args), length, result is None))
    return trapped
