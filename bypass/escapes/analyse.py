"""Match the kernel's view (strace) against the agent's view (trace log), per process.

Each judged system call is either explained (the same process trapped a call of a family that
makes it, on the same path or descriptor) or gets a cause from causes.py. The walk keeps, per
process, a descriptor table saying who opened each descriptor, so a `read(3)` behind a trapped
fopen is told apart from one behind nss's hidden open of /etc/passwd.
"""

from __future__ import annotations

import os
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from ..knowledge.elfsyms import Program, read_program
from ..errors import BypassError
from .causes import CAUSES, cause_of_path
from .strace_log import AT_FDCWD, Processes, Syscall
from .syscalls import SHAPES, Shape
from .trace_log import Trapped

HELPER_FAMILIES = {"cwd", "dir", "exec", "spawn", "tempfile", "access"}   # calls that walk, search or stat inside libc (euidaccess stats first)
STREAM_OPENERS = {"fopen", "freopen", "fdopen", "opendir", "fdopendir", "tmpfile"}
STREAM_USERS = {"readdir", "readdir_r", "closedir", "scandir", "scandirat", "fclose"}
# Trapped calls whose operand is a stream, not a path or descriptor, and the syscalls they make.
NO_OPERAND = {"getdents64": {"readdir", "readdir_r"}, "lseek": {"readdir", "readdir_r"},
              "close": {"fclose", "closedir"}, "openat": {"tmpfile"}, "open": {"tmpfile"}}
NOT_A_FILE = re.compile(r"^(socket|pipe|anon_inode|net|mnt|user|pid|uts|ipc|cgroup|time):")


@dataclass
class Origin:
    """Who opened a descriptor: a trapped call (family), or an escape (cause), or nobody we saw."""
    path: str | None
    trapped_family: str | None = None
    trapped_name: str | None = None
    cause: str | None = None


@dataclass
class Escape:
    cause: str
    syscall: str
    path: str | None
    pid: int


@dataclass
class Analysis:
    judged: int = 0
    explained: int = 0
    escapes: list[Escape] = field(default_factory=list)
    programs: dict[int, list[Program]] = field(default_factory=dict)
    explained_by: Counter = field(default_factory=Counter)    # trapped call name → syscalls it explained


class _ProcessView:
    """What one process (thread group) trapped, indexed for matching."""

    def __init__(self, calls: list[Trapped]):
        self.calls = calls
        self.by_path: dict[str, set[str]] = defaultdict(set)       # path → families
        self.by_fd: dict[int, set[str]] = defaultdict(set)
        self.names = {c.name for c in calls}
        self.family_names: dict[str, str] = {}
        for call in calls:
            for path in call.paths:
                self.by_path[path].add(call.family)
                self.family_names.setdefault(f"{call.family}:{path}", call.name)
            for fd in call.fds:
                self.by_fd[fd].add(call.family)
                self.family_names.setdefault(f"{call.family}:{fd}", call.name)

    def explains_path(self, families: frozenset[str], raw: str, absolute: str | None) -> str | None:
        for candidate in (raw, absolute):
            if candidate and families & self.by_path.get(candidate, set()):
                family = next(iter(families & self.by_path[candidate]))
                return self.family_names[f"{family}:{candidate}"]
        return None

    def explains_fd(self, families: frozenset[str], fd: int) -> str | None:
        found = families & self.by_fd.get(fd, set())
        return self.family_names[f"{next(iter(found))}:{fd}"] if found else None


def _absolute(path: str | None, base: str | None) -> str | None:
    if path is None:
        return None
    if path.startswith("/"):
        return os.path.normpath(path)
    return os.path.normpath(os.path.join(base, path)) if base else None


def _related(path: str, other: str) -> bool:
    """One is the other, or an ancestor of it: realpath and nftw touch every component."""
    return path == other or other.startswith(path.rstrip("/") + "/") or path.startswith(other.rstrip("/") + "/")


def _returns_fd(syscall: Syscall, shape: Shape) -> bool:
    if not shape.opens or syscall.ret is None or syscall.ret < 0:
        return False
    # fcntl returns a descriptor only for F_DUPFD*; F_GETFL and friends return flags
    return syscall.name != "fcntl" or (len(syscall.args) > 1 and syscall.args[1].startswith("F_DUPFD"))


def _template_match(path: str, template: str) -> bool:
    """mkstemp("/tmp/fooXXXXXX") opens /tmp/foo3kq9Zp: the X's become random letters."""
    stripped = template.rstrip("X")
    if stripped == template:
        return False
    return os.path.basename(path).startswith(os.path.basename(stripped)) and \
        os.path.dirname(path) == os.path.dirname(template)


def _pair_log_writes(syscalls: list[Syscall], trapped: list[Trapped], log_files: set[str]) -> dict[int, Trapped]:
    """Which strace `write` put which trace line in the log (syscall number → trapped call).

    The k-th write of a process to the log wrote its k-th line; the byte count the write returned
    must equal the line's length, which re-synchronises the pairing when threads interleave."""
    lines: dict[int, list[Trapped]] = defaultdict(list)
    for call in trapped:
        lines[call.pid].append(call)
    cursor: dict[int, int] = defaultdict(int)
    paired = {}
    for syscall in syscalls:
        if syscall.name != "write" or syscall.failed:
            continue
        _, path = syscall.fd(0)
        if path is None or os.path.realpath(path) not in log_files:
            continue
        queue, start = lines.get(syscall.tgid, []), cursor[syscall.tgid]
        pick = next((i for i in range(start, min(start + 16, len(queue))) if queue[i].length == syscall.ret), None)
        if pick is None:
            pick = start if start < len(queue) else None
        if pick is None:
            continue
        if pick == start:
            cursor[syscall.tgid] = start + 1
            while cursor[syscall.tgid] < len(queue) and id(queue[cursor[syscall.tgid]]) in paired.get("_used", set()):
                cursor[syscall.tgid] += 1
        paired.setdefault("_used", set()).add(id(queue[pick]))
        paired[syscall.number] = queue[pick]
    paired.pop("_used", None)
    return paired


def _windows(syscalls: list[Syscall], paired: dict[int, Trapped]) -> dict[int, tuple[Trapped | None, Trapped | None]]:
    """For each system call, the trapped calls logged just before and just after it by its thread.

    The trace agent writes its line after the call returns, so the syscalls a trapped call made
    sit right before that call's log write (exec writes a line before it runs, hence `before`)."""
    before: dict[int, Trapped] = {}
    previous: dict[int, Trapped | None] = {}
    for syscall in syscalls:
        previous[syscall.number] = before.get(syscall.tid)
        if syscall.number in paired:
            before[syscall.tid] = paired[syscall.number]
    after: dict[int, Trapped] = {}
    windows = {}
    for syscall in reversed(syscalls):
        if syscall.number in paired:
            after[syscall.tid] = paired[syscall.number]
        windows[syscall.number] = (previous[syscall.number], after.get(syscall.tid))
    return windows


class Analyser:
    def __init__(self, syscalls: list[Syscall], processes: Processes, trapped: list[Trapped],
                 agent_files: set[str]):
        self.syscalls = syscalls
        self.processes = processes
        self.agent_files = {os.path.realpath(p) for p in agent_files}
        per_pid: dict[int, list[Trapped]] = defaultdict(list)
        for call in trapped:
            per_pid[call.pid].append(call)
        self.views = {pid: _ProcessView(calls) for pid, calls in per_pid.items()}
        self.empty = _ProcessView([])
        self.fds: dict[int, dict[int, Origin]] = defaultdict(dict)
        self.cwd: dict[int, str] = {}
        self.image: dict[int, Program | None] = {}
        self.result = Analysis()
        paired = _pair_log_writes(syscalls, trapped, self.agent_files)
        self.windows = _windows(syscalls, paired)
        self.windowed = {call.pid for call in paired.values()}   # processes whose log writes were paired

    # --- per-process state ---------------------------------------------------------------

    def _view(self, pid: int) -> _ProcessView:
        return self.views.get(pid, self.empty)

    def _fork_state(self, child: int) -> None:
        parent = self.processes.parent.get(child)
        if parent is not None and child not in self.fds:
            self.fds[child] = dict(self.fds.get(parent, {}))
            self.image[child] = self.image.get(parent)
            if parent in self.cwd:
                self.cwd[child] = self.cwd[parent]

    def _exec(self, syscall: Syscall, path: str | None) -> None:
        if syscall.failed or path is None:
            return
        try:
            program = read_program(path)
        except BypassError:
            program = None
        self.image[syscall.tgid] = program
        if program is not None:
            self.result.programs.setdefault(syscall.tgid, []).append(program)

    # --- the walk --------------------------------------------------------------------------

    def run(self) -> Analysis:
        first_exec_seen = False
        for syscall in self.syscalls:
            self._fork_state(syscall.tgid)
            shape = SHAPES.get(syscall.name)
            if shape is None:
                continue
            is_launch = syscall.name == "execve" and not first_exec_seen
            if syscall.name == "execve":
                first_exec_seen = True
            self._judge(syscall, shape, is_launch)
        return self.result

    def _judge(self, syscall: Syscall, shape: Shape, is_launch: bool) -> None:
        pid = syscall.tgid
        view = self._view(pid)
        path_info = self._path_operand(syscall, shape)
        fd_info = None if path_info else self._fd_operand(syscall, shape)
        if path_info is None and fd_info is None:
            return                                     # anonymous mmap, a socket, a pipe: not a file
        static = self.image.get(pid) is not None and not self.image[pid].dynamic
        if syscall.name in ("execve", "execveat"):
            static = False                             # the exec itself happens in the old image
        self.result.judged += 1
        opens = _returns_fd(syscall, shape)
        explained_by = None if static else self._explain(syscall, shape, view, path_info, fd_info)
        if explained_by:
            self.result.explained += 1
            self.result.explained_by[explained_by] += 1
        else:
            cause = "static" if static else ("launcher" if is_launch else
                                               self._cause(syscall, shape, view, path_info, fd_info))
            shown = path_info[1] or path_info[0] if path_info else fd_info[1].path
            self.result.escapes.append(Escape(cause, syscall.name, shown, pid))
            if opens:
                self.fds[pid][syscall.ret] = Origin(syscall.ret_path, cause=cause)
        if explained_by and opens:
            family = next((c.family for c in view.calls if c.name == explained_by), None)
            inherited = self.fds[pid].get(fd_info[0]) if fd_info else None
            self.fds[pid][syscall.ret] = inherited or Origin(syscall.ret_path, family, explained_by)
        if syscall.name == "close" and fd_info and not syscall.failed:
            self.fds[pid].pop(fd_info[0], None)
        if syscall.name in ("execve", "execveat") and path_info:
            # The first exec runs before any cwd is known: it runs in ours (bypass started it here).
            self._exec(syscall, path_info[1] or os.path.abspath(path_info[0]))

    def _path_operand(self, syscall: Syscall, shape: Shape) -> tuple[str, str | None] | None:
        """(raw path, absolute path) of the first path operand; None for fd-style calls."""
        for dirfd_index, path_index in shape.paths:
            raw = syscall.string(path_index)
            if raw is None:
                continue
            if raw == "" and shape.empty_path_is_fd:
                return None
            base = None
            if dirfd_index is not None:
                dirfd, base = syscall.fd(dirfd_index)
                if dirfd == AT_FDCWD and base:
                    self.cwd[syscall.tgid] = base
            else:
                base = self.cwd.get(syscall.tgid)
            return raw, _absolute(raw, base)
        return None

    def _fd_operand(self, syscall: Syscall, shape: Shape) -> tuple[int, Origin] | None:
        indexes = shape.fds or ((shape.paths[0][0],) if shape.empty_path_is_fd and shape.paths else ())
        for index in indexes:
            fd, annotated = syscall.fd(index)
            if fd is None or fd < 0:
                continue
            if annotated and NOT_A_FILE.match(annotated):
                return None
            origin = self.fds[syscall.tgid].get(fd)
            if origin is None:
                origin = Origin(annotated)
            elif annotated:
                origin.path = annotated
            return fd, origin
        return None

    def _window_calls(self, syscall: Syscall) -> list[Trapped]:
        before, after = self.windows.get(syscall.number, (None, None))
        calls = [after] if after else []
        if syscall.name.startswith("exec") and before is not None and before.started:
            calls.append(before)
        return calls

    def _explain(self, syscall, shape, view, path_info, fd_info) -> str | None:
        if syscall.tgid in self.windowed:
            return self._explain_in_window(syscall, shape, path_info, fd_info)
        return self._explain_anywhere(syscall, shape, view, path_info, fd_info)

    def _explain_in_window(self, syscall, shape, path_info, fd_info) -> str | None:
        """Explained by the trapped call this very thread was inside when it made the syscall."""
        for call in self._window_calls(syscall):
            if call.family not in shape.families:
                continue
            if call.name in NO_OPERAND.get(syscall.name, ()) and self._stream_fd(fd_info):
                return call.name              # readdir(DIR*), fclose(FILE*), tmpfile(): no operand to compare
            if path_info:
                raw, absolute = path_info
                base = self.cwd.get(syscall.tgid)
                if raw in call.paths or any(_absolute(p, base) == absolute for p in call.paths):
                    return call.name
                if call.family == "tempfile" and any(_template_match(absolute or raw, p) for p in call.paths):
                    return call.name
            elif fd_info and fd_info[0] in call.fds:
                return call.name
        if path_info and syscall.name in ("execve", "execveat"):
            return self._explained_by_parent(syscall.tgid, *path_info)
        return None

    @staticmethod
    def _stream_fd(fd_info: tuple[int, Origin] | None) -> bool:
        """The descriptor belongs to a stream the agent saw open (or is stdin/stdout/stderr)."""
        if fd_info is None:
            return True                      # tmpfile's openat: no descriptor operand yet
        fd, origin = fd_info
        return origin.trapped_name in STREAM_OPENERS or (fd <= 2 and origin.cause is None)

    def _explain_anywhere(self, syscall, shape, view, path_info, fd_info) -> str | None:
        """No log writes to pair (an old log, a lost line): any call of the process will do."""
        if path_info:
            raw, absolute = path_info
            found = view.explains_path(shape.families, raw, absolute)
            if found:
                return found
            if syscall.name in ("execve", "execveat"):
                return self._explained_by_parent(syscall.tgid, raw, absolute)
            return None
        fd, origin = fd_info
        found = view.explains_fd(shape.families, fd)
        if found:
            return found
        # A DIR* or FILE* stream whose own calls were trapped: readdir → getdents64, fclose → close.
        if origin.trapped_name in STREAM_OPENERS and syscall.name in ("getdents64", "close", "lseek"):
            users = view.names & STREAM_USERS
            wanted = {"getdents64": {"readdir", "readdir_r", "scandir", "scandirat"},
                      "close": {"closedir", "fclose"}, "lseek": set()}[syscall.name]
            if users & wanted:
                return next(iter(users & wanted))
        return None

    def _explained_by_parent(self, pid: int, raw: str, absolute: str | None) -> str | None:
        """posix_spawn/system/popen run the child's exec inside libc; the parent trapped the call."""
        parent = self.processes.parent.get(pid)
        if parent is None:
            return None
        view = self._view(parent)
        found = view.explains_path(frozenset({"spawn", "exec"}), raw, absolute)
        if found:
            return found
        if absolute == "/bin/sh" and view.names & {"system", "popen"}:
            return next(iter(view.names & {"system", "popen"}))
        return None

    def _cause(self, syscall, shape, view, path_info, fd_info) -> str:
        if path_info:
            raw, absolute = path_info
            path = absolute or raw
        else:
            fd, origin = fd_info
            if origin.cause:
                return origin.cause
            path = origin.path
        if path and os.path.realpath(path) in self.agent_files:
            return "agent"
        by_path = cause_of_path(path)
        if by_path:
            return by_path
        if not shape.families:
            return "not_covered"
        if path_info and self._helper(syscall, view, path):
            return "libc_helper"
        if fd_info:
            fd, origin = fd_info
            if origin.trapped_family in ("stdio", "dir", "tempfile") or (origin.trapped_family is None and fd <= 2):
                return "stdio_dir" if shape.families else "not_covered"
        if path_info and syscall.name in ("newfstatat", "stat") and path == "/":
            return "nss"      # nss checks whether / changed (a chroot) before trusting its cache
        if not shape.families:
            return "not_covered"
        image = self.image.get(syscall.tgid)
        if image is not None and "syscall" in image.imports:
            return "syscall"
        return "other"

    def _helper(self, syscall: Syscall, view: _ProcessView, path: str) -> bool:
        if syscall.tgid in self.windowed:
            if any(call.family in HELPER_FAMILIES for call in self._window_calls(syscall)):
                return True
            if not syscall.name.startswith("exec"):
                return False
        views = [view]
        if syscall.name in ("execve", "execveat") and syscall.tgid in self.processes.parent:
            views.append(self._view(self.processes.parent[syscall.tgid]))
        base = self.cwd.get(syscall.tgid)
        for candidate_view in views:
            for call in candidate_view.calls:
                if call.family not in HELPER_FAMILIES:
                    continue
                if call.family in ("exec", "spawn"):
                    names = [p for p in call.paths] + [a.strip('"') for a in call.args[:2] if a.startswith('"')]
                    if syscall.name.startswith("exec") and any(os.path.basename(n) == os.path.basename(path)
                                                               for n in names if n):
                        return True
                    continue
                if call.family == "tempfile" and (not call.paths or
                                                  any(_template_match(path, t) for t in call.paths)):
                    if not call.paths and not path.startswith("/tmp"):
                        continue
                    return True
                for other in call.paths:
                    other_abs = _absolute(other, base)
                    if other_abs and _related(path, other_abs):
                        return True
        return False


def summarise(analysis: Analysis) -> dict:
    grouped: dict[str, dict] = {}
    for escape in analysis.escapes:
        group = grouped.setdefault(escape.cause, {"label": CAUSES[escape.cause], "count": 0,
                                                  "syscalls": Counter(), "paths": Counter()})
        group["count"] += 1
        group["syscalls"][escape.syscall] += 1
        if escape.path:
            group["paths"][escape.path] += 1
    order = list(CAUSES)
    return {cause: {"label": g["label"], "count": g["count"], "syscalls": dict(g["syscalls"].most_common()),
                    "examples": [p for p, _ in g["paths"].most_common(6)], "distinct_paths": len(g["paths"])}
            for cause, g in sorted(grouped.items(), key=lambda item: order.index(item[0]))}
