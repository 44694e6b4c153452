"""The C compiler's part of a build: the agents' fixed runtime compiled once per toolchain and kept
in the agent cache as a static archive, the agent's own files compiled side by side, one link.

Most of a build used to be the compiler re-reading the whole runtime for every agent and
compiling one large file on one core. Now the runtime (runtime.c, the msgpack codec, SHA-256,
the shadow client and the neutral tables) is keyed by the compiler's identity, the flags and the
sources' text, and linked as an archive: the linker takes only the members an agent uses, so an
agent that never calls its shadow carries no shadow client.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .errors import BuildError

RUNTIME_DIR = Path(__file__).parent / "rpc" / "c"
# The C runtime files every agent links: core runtime, debug output, msgpack codec, SHA-256 for
# the handshake, the shadow RPC client (plus bypass_neutral.c, generated from bypass/rpc/neutral.toml
# and compiled against the build machine's headers).
RUNTIME_SOURCES = ["runtime.c", "debug.c", "msgpack.c", "sha256.c", "rpc_client.c"]
# -fno-var-tracking: debug info keeps functions and lines (enough for a backtrace) but not where
# each optimised variable lives at each instruction, the most expensive part of -g at -O2 (a fifth
# of the trace agent's compile time); the machine code is the same.
COMPILE_FLAGS = ["-fPIC", "-O2", "-g", "-fno-var-tracking", "-std=gnu11", "-Wall", "-Wextra", "-Werror",
                 "-fvisibility=hidden", "-U_FORTIFY_SOURCE"]
LINK_FLAGS = ["-shared"]
LIBS = ["-ldl", "-lpthread"]
ARCHIVE = "libbypass_runtime.a"


def parallel_jobs() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@lru_cache(maxsize=8)
def compiler_identity(compiler: str) -> str:
    """What makes objects from two compilers interchangeable: the same driver and version."""
    try:
        done = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BuildError(f"cannot run the C compiler {compiler}: {exc}") from None
    return f"{os.path.realpath(compiler)}\n{done.stdout}"


@dataclass
class CompileJob:
    source: Path
    obj: Path
    includes: list[Path]
    generated: bool = False          # a part of the generated agent (not a spec's @source file)

    def command(self, compiler: str) -> list[str]:
        return [compiler, *COMPILE_FLAGS, *(f"-I{d}" for d in self.includes), "-c", str(self.source),
                "-o", str(self.obj)]

    @property
    def cost(self) -> int:
        try:
            return self.source.stat().st_size
        except OSError:
            return 0


class CompilePool:
    """Compiles jobs as many at once as there are cores, the largest first so that no long file
    starts last. Jobs may be added while earlier ones run: the runtime compiles while Python is
    still rendering the agent. All are waited for, and their errors kept in the order added."""

    def __init__(self, compiler: str):
        self.compiler = compiler
        self.width = parallel_jobs()
        self.pending: list[CompileJob] = []
        self.running: list[tuple[CompileJob, subprocess.Popen, object]] = []
        self.added: list[CompileJob] = []
        self.failed: dict[int, str] = {}

    def add(self, jobs: list[CompileJob]) -> None:
        self.added += jobs
        self.pending = sorted(self.pending + jobs, key=lambda j: -j.cost)
        self._start()

    def _start(self) -> None:
        while self.pending and len(self.running) < self.width:
            job = self.pending.pop(0)
            errors = tempfile.TemporaryFile(mode="w+")     # a file, not a pipe: nothing can fill up
            try:
                process = subprocess.Popen(job.command(self.compiler), stdout=subprocess.DEVNULL, stderr=errors)
            except OSError as exc:
                errors.close()
                raise BuildError(f"cannot run the C compiler {self.compiler}: {exc.strerror}") from None
            self.running.append((job, process, errors))

    def wait(self) -> dict[int, str]:
        """Wait for every job; the compiler's messages of those that failed, by order added."""
        while self.running:
            finished = [entry for entry in self.running if entry[1].poll() is not None]
            if not finished:
                time.sleep(0.005)
                continue
            for job, process, errors in finished:
                self.running.remove((job, process, errors))
                errors.seek(0)
                text = errors.read().strip()
                errors.close()
                if process.returncode != 0:
                    self.failed[self.added.index(job)] = text or f"{job.source}: {self.compiler} exited {process.returncode}"
            self._start()
        return self.failed

    def close(self) -> None:
        """After an error: no compiler is left running."""
        for _, process, errors in self.running:
            process.kill()
            process.wait()
            errors.close()
        self.running = []
        self.pending = []


class Runtime:
    """The runtime for one compiler: a folder holding the archive and the headers agents include.

    `jobs` are what remains to compile (none when the cache has it); `finish()` after they ran
    makes the archive and publishes the folder, atomically, so concurrent builds never see half
    of one."""

    def __init__(self, compiler: str, cache: Path | None, scratch: Path):
        from .rpc.neutral_c import HEADER_NAME, SOURCE_NAME, render_header, render_source
        self.compiler = compiler
        texts = {name: (RUNTIME_DIR / name).read_bytes() for name in RUNTIME_SOURCES}
        texts[SOURCE_NAME] = render_source().encode()
        header = render_header().encode()
        digest = hashlib.sha256(f"{compiler_identity(compiler)}\n{COMPILE_FLAGS}\n".encode())
        for name in sorted(p.name for p in RUNTIME_DIR.glob("*.h")):
            digest.update(name.encode() + b"\0" + (RUNTIME_DIR / name).read_bytes())
        for name, text in sorted(texts.items()) + [(HEADER_NAME, header)]:
            digest.update(name.encode() + b"\0" + text)
        self.key = digest.hexdigest()[:20]
        self.folder = self._cached(cache) if cache is not None else None
        self.jobs: list[CompileJob] = []
        self._staging: Path | None = None
        if self.folder is not None:
            return
        # Built in a fresh folder: inside the cache when it can be written (published by
        # finish()), otherwise in this build's scratch folder and forgotten with it.
        self._staging = self._staging_folder(cache) or Path(tempfile.mkdtemp(prefix="runtime-", dir=scratch))
        (self._staging / HEADER_NAME).write_bytes(header)
        (self._staging / SOURCE_NAME).write_bytes(texts[SOURCE_NAME])
        for name in texts:
            source = self._staging / name if name == SOURCE_NAME else RUNTIME_DIR / name
            self.jobs.append(CompileJob(source, self._staging / (Path(name).stem + ".o"),
                                        [RUNTIME_DIR, self._staging]))

    def _cached(self, cache: Path) -> Path | None:
        folder = cache / "runtime" / self.key
        return folder if (folder / ARCHIVE).is_file() else None

    def _staging_folder(self, cache: Path | None) -> Path | None:
        if cache is None:
            return None
        try:
            (cache / "runtime").mkdir(parents=True, exist_ok=True)
            for stale in (cache / "runtime").glob(".*-*"):     # left by a build that was killed
                if time.time() - stale.stat().st_mtime > 3600:
                    shutil.rmtree(stale, ignore_errors=True)
            return Path(tempfile.mkdtemp(prefix=f".{self.key}-", dir=cache / "runtime"))
        except OSError:
            return None

    @property
    def include_dir(self) -> Path:
        return self.folder if self.folder is not None else self._staging

    @property
    def archive(self) -> Path:
        return self.include_dir / ARCHIVE

    def finish(self) -> None:
        if self._staging is None:
            return
        archiver = shutil.which("ar")
        objects = [str(job.obj) for job in self.jobs]
        if archiver is None:
            raise BuildError("no 'ar' found: install binutils (Debian: apt-get install binutils)")
        done = subprocess.run([archiver, "rcs", str(self._staging / ARCHIVE), *objects], capture_output=True, text=True)
        if done.returncode != 0:
            raise BuildError(f"ar could not make the runtime archive: {done.stderr.strip()}")
        for job in self.jobs:                         # the archive holds them now
            job.obj.unlink(missing_ok=True)
        staging, self._staging = self._staging, None
        if staging.parent.name != "runtime":          # a scratch folder: used as it is
            self.folder = staging
            return
        final = staging.parent / self.key
        try:
            os.rename(staging, final)
        except OSError:                               # another build published it first
            shutil.rmtree(staging, ignore_errors=True)
        self.folder = final

    def abandon(self) -> None:
        if self._staging is not None and self._staging.parent.name == "runtime":
            shutil.rmtree(self._staging, ignore_errors=True)
        self._staging = None


def link(compiler: str, sources: list[CompileJob], runtime: Runtime, output: Path, what: str) -> Path:
    tmp_output = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    # The archive after the generated parts, and again after the spec's own files for what
    # only they use: the runtime's members come in the order a single compile had them.
    generated = [str(j.obj) for j in sources if j.generated]
    own = [str(j.obj) for j in sources if not j.generated]
    command = [compiler, *LINK_FLAGS, "-o", str(tmp_output), *generated, str(runtime.archive), *own,
               str(runtime.archive), *LIBS]
    try:
        done = subprocess.run(command, capture_output=True, text=True)
    except OSError as exc:
        raise BuildError(f"cannot run the C compiler {compiler}: {exc.strerror}") from None
    if done.returncode != 0:
        tmp_output.unlink(missing_ok=True)
        raise BuildError(f"the linker rejected {what}:\n{done.stderr.strip()}")
    os.replace(tmp_output, output)      # atomic: a concurrent `bypass run` never sees half a file
    return output
