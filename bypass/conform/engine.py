"""Run a sequence natively and under the agent, compare, shrink what differs.

A *side* is where one executor runs: natively, or with the agent preloaded (and, for agents
with a shadow, below the remote prefix).  Every run gets fresh scratch directories laid out
from the same initial tree; each side's directory is called `w` and its parent holds nothing
else, so paths that climb one level (`../w/f`) mean the same on both sides.
"""
from __future__ import annotations

import errno as errno_names
import hashlib
import math
import os
import re
import signal
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from . import tree
from .ops import NEST, OLD_TIMES, Step

EXECUTOR_SOURCE = Path(__file__).resolve().parent / "executor.c"
RUN_TIMEOUT = 20.0
RESULTS_MAX = 64 << 20          # as in executor.c


def _read_results(f) -> bytes:
    """What the executor wrote into its mapping of the file: text up to the first NUL."""
    f.seek(0)
    chunks = []
    while True:
        chunk = f.read(1 << 16)
        end = chunk.find(b"\0")
        if end >= 0 or not chunk:
            chunks.append(chunk[:end] if end >= 0 else chunk)
            return b"".join(chunks)
        chunks.append(chunk)


def build_executor() -> Path:
    """The executor, compiled once per source version into the agent cache."""
    from ..build import cache_dir, find_compiler
    from ..errors import BuildError
    source = EXECUTOR_SOURCE.read_bytes()
    output = cache_dir() / f"conform-executor-{hashlib.sha256(source).hexdigest()[:16]}"
    if output.exists():
        return output
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    done = subprocess.run([find_compiler(), "-O1", "-g", "-std=gnu11", "-Wall", "-Wextra", "-o", str(tmp),
                           str(EXECUTOR_SOURCE)], capture_output=True, text=True)
    if done.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise BuildError(f"cannot build the conform executor:\n{done.stderr.strip()}")
    os.replace(tmp, output)
    return output


@dataclass
class Side:
    name: str
    real_base: bytes        # where this side's scratch directories are, on disk
    program_base: bytes     # the same place as the program under test names it
    env: dict[str, str]


@dataclass
class Result:
    ret: int
    err: int
    data: bytes | None

    def show(self) -> str:
        text = str(self.ret)
        if self.ret < 0 and self.err:
            text += " " + errno_names.errorcode.get(self.err, str(self.err))
        if self.data is not None:
            shown = self.data.decode("utf-8", "backslashreplace")
            text += f"  [{shown[:300]}{'…' if len(shown) > 300 else ''}]"
        return text


@dataclass
class SideRun:
    results: dict[int, Result]
    status: int | str          # exit status, -N for signal N, or "hang"
    stderr: str
    tree: dict[bytes, str]


@dataclass
class Divergence:
    kind: str                  # result | crash | hang | tree
    step: Step | None
    native: str
    agent: str
    detail: list[str] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    seed: str = ""
    expected: str | None = None

    def signature(self) -> tuple:
        if self.kind == "tree":
            keys = set()
            for line in self.detail:
                keys.update(re.findall(r"(\w+)=", line) if "absent" not in line else ["presence"])
            return ("tree", tuple(sorted(keys)))
        return (self.kind, self.step.op if self.step else "", self.native.split("[")[0].strip(),
                self.agent.split("[")[0].strip())

    def title(self) -> str:
        if self.kind == "tree":
            last = self.steps[-1].c() if self.steps else "no step"
            return f"tree: the resulting tree differs (last step {last})"
        return f"{self.kind}: {self.step.c() if self.step else '?'}"


_TIME = re.compile(rb"(atime|mtime)=(\d+)\.(\d+)")


def _normalise(data: bytes, root: bytes) -> bytes:
    """Paths of the run's root read the same on both sides, also when a small buffer cut one,
    and so do the directories of its nest above it, which a step that climbs may print (each
    side's nest has its own name): the nearest first, as each is a prefix of the one below."""
    data = data.replace(root, b"$ROOT")
    above = root
    for level in range(1, NEST + 1):
        above = os.path.dirname(above)
        data = data.replace(above, b"$PARENT" if level == 1 else b"$ROOT" + b"/.." * level)
    for k in range(len(root) - 1, 0, -1):
        if data.endswith(root[:k]):
            data = data[:-k] + b"$ROOT[:%d]" % k
            break
    return _TIME.sub(lambda m: m.group(0) if int(m.group(2)) <= max(OLD_TIMES)
                     else m.group(1) + b"=recent", data)


def _parse(output: bytes, root: bytes) -> dict[int, Result]:
    results = {}
    for line in output.splitlines():
        parts = line.split(b" ")
        if len(parts) != 4:
            continue
        raw = parts[3]
        data = None if raw == b"-" else b"" if raw == b"=" else bytes.fromhex(raw.decode())
        results[int(parts[0])] = Result(int(parts[1]), int(parts[2]),
                                        None if data is None else _normalise(data, root))
    return results


class Oracle:
    """Runs step sequences on both sides and says where they part."""

    def __init__(self, executor: Path, native: Side, agent: Side, timeout: float = RUN_TIMEOUT):
        self.executor = executor
        self.sides = (native, agent)
        self.timeout = timeout
        self.counter = 0
        self.lock = threading.Lock()
        self.pool = ThreadPoolExecutor(2)

    def close(self) -> None:
        self.pool.shutdown()

    def _run_side(self, side: Side, tag: bytes, script: bytes) -> SideRun:
        real = tree.nested(os.path.join(side.real_base, tag))
        program = tree.nested(os.path.join(side.program_base, tag))
        tree.lay_out(real, program)
        try:
            with tempfile.TemporaryFile(prefix="bypass-conform-results-") as results_file:
                results_file.truncate(RESULTS_MAX)      # the executor maps it whole
                fd = results_file.fileno()
                child = subprocess.Popen([str(self.executor), os.fsdecode(program), str(fd)], pass_fds=(fd,),
                                         stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE, env=side.env, start_new_session=True)
                try:
                    _, err = child.communicate(script, timeout=self.timeout)
                    status: int | str = child.returncode
                except subprocess.TimeoutExpired:
                    _kill_group(child.pid)
                    _, err = child.communicate()
                    status = "hang"
                finally:
                    _kill_group(child.pid)      # children a step left behind (a fork blocked on a FIFO)
                results = _parse(_read_results(results_file), program)
            snapshot = tree.snapshot(real, program)
        finally:
            tree.remove(os.path.join(side.real_base, tag))
        return SideRun(results, status, err.decode("utf-8", "replace")[-2000:], snapshot)

    def run(self, steps: list[Step]) -> tuple[SideRun, SideRun]:
        with self.lock:
            self.counter += 1
            tag = b"s%d" % self.counter
        script = b"".join(s.line().encode() + b"\n" for s in steps)
        futures = [self.pool.submit(self._run_side, side, tag, script) for side in self.sides]
        return futures[0].result(), futures[1].result()

    def diverge(self, steps: list[Step]) -> Divergence | None:
        native, agent = self.run(steps)
        if steps and not native.results and native.status not in (0, "hang") and \
                not (isinstance(native.status, int) and native.status < 0):
            from ..errors import BypassError
            raise BypassError(f"conform: the executor gave no result natively ({_status(native)}): "
                              f"{native.stderr.strip() or 'no message'}")
        for step in steps:
            a, b = native.results.get(step.id), agent.results.get(step.id)
            if a == b and a is not None:
                continue
            if a is None and b is None:
                break               # both stopped here (the native side too): nothing to compare
            if b is None:
                kind = "hang" if agent.status == "hang" else "crash"
                return Divergence(kind, step, a.show(), _status(agent), [agent.stderr.strip()], list(steps))
            if a is None:
                return Divergence("crash", step, _status(native), b.show(), [native.stderr.strip()], list(steps))
            if step.op in CHILD_STEPS and 1000 < b.ret < 1100 and a.ret != b.ret:
                # the step's child died by a signal under the agent: a crash, in a child
                return Divergence("crash", step, a.show(), f"child killed by {_signame(b.ret - 1000)}", [],
                                  list(steps))
            return Divergence("result", step, a.show(), b.show(), [], list(steps))
        if native.status != agent.status:
            return Divergence("crash", None, _status(native), _status(agent), [agent.stderr.strip()], list(steps))
        diff = tree.differences(native.tree, agent.tree)
        if diff:
            return Divergence("tree", None, "", "", diff, list(steps))
        return None

    def shrink(self, found: Divergence, budget_s: float = 20.0) -> Divergence:
        """Delta debugging: drop chunks of steps while the same divergence remains."""
        target = found.signature()
        best = found
        steps = list(found.steps)
        deadline = time.monotonic() + budget_s
        n = 2
        while len(steps) >= 2 and time.monotonic() < deadline:
            chunk = math.ceil(len(steps) / n)
            for start in range(0, len(steps), chunk):
                candidate = steps[:start] + steps[start + chunk:]
                if not candidate:
                    continue
                again = self.diverge(candidate)
                if again is not None and again.signature() == target:
                    steps, best = candidate, again
                    n = max(n - 1, 2)
                    break
                if time.monotonic() >= deadline:
                    break
            else:
                if n >= len(steps):
                    break
                n = min(len(steps), n * 2)
        if best.kind != "tree" and best.step is not None:
            # the steps after the one that differs add nothing to the reproduction
            cut = [s for s in best.steps if s.id <= best.step.id]
            if cut != best.steps:
                again = self.diverge(cut)
                if again is not None and again.signature() == target:
                    best = again
        best.seed = found.seed
        return best


# Steps whose result is a child's status: 1000 + N when the child died by signal N.
CHILD_STEPS = {"fork_append", "fork_write_fd", "fork_fork_mkdir", "vfork_chdir_exec", "as_nobody",
               "execve_child", "execv_child", "execvp_child", "execvpe_child", "execveat_child", "fexecve_child"}


def _signame(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _status(run: SideRun) -> str:
    if run.status == "hang":
        return "hung (killed)"
    if isinstance(run.status, int) and run.status < 0:
        return f"killed by {_signame(-run.status)}"
    return f"exit status {run.status}"
