"""Generate an agent from a spec and compile it into a shared object with the system C compiler."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from . import __version__
from .codegen.render import TEMPLATES, render_agent, render_agent_parts, render_shadow
from .errors import BuildError, SpecError
from .knowledge.loader import KNOWLEDGE_DIR, load_knowledge
from .plan import AgentPlan, make_plan
from .spec.parser import load_spec
from .toolchain import COMPILE_FLAGS, LINK_FLAGS, RUNTIME_DIRS, RUNTIME_SOURCES, CompileJob, CompilePool, \
    Runtime, link, parallel_jobs, runtime_file, runtime_headers

# Agents of the shipped specs, compiled when the package is built (setup.py), named like the
# cache's entries: used while their fingerprint matches, so a changed spec or runtime rebuilds.
PREBUILT_DIR = Path(__file__).parent / "prebuilt"
NEUTRAL_FILES = [Path(__file__).parent / "rpc" / "neutral.toml", Path(__file__).parent / "rpc" / "neutral_c.py",
                 Path(__file__).parent / "codegen" / "rpc_marshal.py"]


@dataclass
class Generated:
    plan: AgentPlan
    agent_c: str
    shadow_py: str


def plan_spec(spec_path: str | Path) -> AgentPlan:
    spec = load_spec(spec_path)
    knowledge = load_knowledge()
    from .spec.checks import check_names
    check_names(spec, knowledge)
    return make_plan(spec, knowledge)


def warn_family(plan: AgentPlan, quiet_family: bool) -> None:
    """The family warnings are for the spec's author, who asks for them with `bypass -agent` or
    `bypass build`; `bypass run` of a spec stays quiet. Called after rendering: a spec that fails
    shows its error alone."""
    if not quiet_family:
        from .spec.checks import family_warnings
        for warning in family_warnings(plan.spec, load_knowledge()):
            print(warning, file=sys.stderr)


def generate(spec_path: str | Path, agent_name: str | None = None, quiet_family: bool = True) -> Generated:
    """The agent's C (one file) and the shadow's Python."""
    plan = plan_spec(spec_path)
    name = agent_name or f"{plan.spec.name}_agent.c"
    generated = Generated(plan, render_agent(plan, name), render_shadow(plan))
    warn_family(plan, quiet_family)
    return generated


def find_compiler() -> str:
    chosen = os.environ.get("CC", "").strip()
    if chosen:
        # The user named a compiler: building with another one behind their back would hide
        # a typo or a missing toolchain until something odd happens much later.
        found = shutil.which(chosen)
        if not found:
            raise BuildError(f"CC={chosen}: no such compiler (not found on PATH); unset CC to use cc")
        return found
    for candidate in ("cc", "gcc", "clang"):
        found = shutil.which(candidate)
        if found:
            return found
    raise BuildError("no C compiler found: install gcc (Debian: apt-get install gcc libc6-dev) or set CC")


STANDALONE_DIR = "bypass_runtime"


def standalone_files(generated: Generated, agent_c: Path) -> dict[Path, str]:
    """The agent's C for a hand build, and the runtime files it includes, written beside it.

    The agent includes the runtime's .c files at its end (one translation unit), so the
    original Bypass command `cc -shared -fPIC SPEC_agent.c -o SPEC.so -ldl` is the whole
    build. The runtime lives in its own folder so that its generic file names (runtime.c,
    msgpack.c) never overwrite a user's files next to the spec."""
    from .rpc.neutral_c import render_header, render_source
    folder = agent_c.parent / STANDALONE_DIR
    files = {folder / path.name: path.read_text() for path in runtime_headers()}
    files.update({folder / name: runtime_file(name).read_text() for name in RUNTIME_SOURCES})
    files[folder / "bypass_neutral.h"] = render_header()
    files[folder / "bypass_neutral.c"] = render_source()
    text = generated.agent_c
    for header in ("bypass_runtime.h", "rpc_client.h", "bypass_neutral.h"):
        text = text.replace(f'#include "{header}"', f'#include "{STANDALONE_DIR}/{header}"', 1)
    tail = ["", "/* The Bypass runtime, compiled into this same file so that the agent builds with one",
            "   command: cc -shared -fPIC THIS_FILE.c -o " + generated.plan.name + ".so -ldl */"]
    for name in RUNTIME_SOURCES + ["bypass_neutral.c"]:
        if name == "rpc_client.c":
            # rpc_client.c also serves programs without the runtime: it tests weak runtime
            # symbols, which this translation unit defines, so the compiler calls the test useless.
            tail += ["#pragma GCC diagnostic push", '#pragma GCC diagnostic ignored "-Waddress"',
                     f'#include "{STANDALONE_DIR}/{name}"', "#pragma GCC diagnostic pop"]
        else:
            tail.append(f'#include "{STANDALONE_DIR}/{name}"')
    files[agent_c] = text + "\n".join(tail) + "\n"
    return files


def hand_build_command(generated: Generated, agent_c: Path) -> str:
    """The command that compiles what standalone_files wrote, run from the current folder."""
    import shlex

    def short(path: Path) -> str:
        relative = os.path.relpath(path)
        return str(path.resolve()) if relative.startswith("..") else relative

    words = ["cc", "-shared", "-fPIC"]
    spec_dir = Path(generated.plan.spec.path).resolve().parent
    sources = [short(p) for p in _spec_sources(generated.plan)]
    if sources:                  # support code includes the runtime's headers by their own names
        words.append("-I" + short(agent_c.parent / STANDALONE_DIR))
    if spec_dir != agent_c.parent.resolve():   # the spec's @include "x.h" sit beside the spec
        words.append("-I" + short(spec_dir))
    words += [str(agent_c), *sources, "-o", f"{generated.plan.name}.so", "-ldl"]
    return " ".join(shlex.quote(w) for w in words)


def _spec_sources(plan: AgentPlan) -> list[Path]:
    base = Path(plan.spec.path).resolve().parent
    sources = []
    for name in plan.spec.sources:
        path = (base / name).resolve()
        if not path.is_file():
            raise SpecError(plan.spec.path, 1, 1, f"@source \"{name}\": no such file ({path})", plan.spec.source)
        sources.append(path)
    return sources


# The headers of the runtime's shadow-client archive (toolchain.RPC_SOURCES).
_CLIENT_HEADERS = ("rpc_client.h", "msgpack.h", "sha256.h", "bypass_neutral.h")


def links_shadow_client(plan: AgentPlan) -> bool:
    """Whether the agent needs the runtime's shadow-client archive: it calls its shadow, or C of
    its own (the spec's blocks, the files beside the spec) includes one of that archive's headers."""
    if any(call.shadow_client for call in plan.calls):
        return True
    base = Path(plan.spec.path).resolve().parent
    texts = [plan.spec.source] + [p.read_text(errors="replace") for p in sorted(base.glob("*.[ch]"))]
    return any(header in text for text in texts for header in _CLIENT_HEADERS)


def _support_files(spec_path: Path) -> list[tuple[str, Path]]:
    """Files whose change makes a cached agent stale, found without parsing the spec (parsing a
    large spec takes seconds; `bypass run` with a warm cache must not pay that): the C next to the
    spec, and everything of Bypass that goes into an agent. Each is named relative to the spec or
    the package, not by where it is: an agent built into the package at install time must match
    the same spec and Bypass found elsewhere (a checkout's agents/trace/trace.bypass)."""
    base = spec_path.resolve().parent
    package = Path(__file__).resolve().parent
    files = [(f"spec/{p.name}", p) for p in sorted(base.glob("*.[ch]"))]
    ours = sorted(KNOWLEDGE_DIR.rglob("*.toml")) + sorted(TEMPLATES.glob("*.j2")) + sorted(p for d in RUNTIME_DIRS for p in d.glob("*.[ch]"))
    ours += list(NEUTRAL_FILES) + sorted(package.rglob("*.py"))
    files += [(f"bypass/{p.resolve().relative_to(package)}", p) for p in ours]
    return files


def _toolchain_digest():
    return hashlib.sha256(f"bypass {__version__} {COMPILE_FLAGS} {LINK_FLAGS} {os.environ.get('CC', '')}\n".encode())


def fingerprint(spec_path: str | Path) -> str:
    spec_path = Path(spec_path)
    digest = _toolchain_digest()
    try:
        digest.update(spec_path.read_bytes())
    except OSError as exc:
        raise SpecError(str(spec_path), 1, 1, f"cannot read spec: {exc.strerror}") from None
    for label, path in _support_files(spec_path):
        digest.update(label.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:20]


def prebuild_shipped(package: Path) -> list[Path]:
    """Compile the shipped agents into package/prebuilt (setup.py, at package build time), so the
    first `bypass run` of a shipped agent starts at once. `package` is the bypass package being
    built, which must be the one importing this function (its files make the fingerprint)."""
    built = []
    folder = package / "prebuilt"
    folder.mkdir(exist_ok=True)
    for stale in folder.glob("*.so"):        # pip builds in the tree: an earlier build's agents linger
        stale.unlink()
    with tempfile.TemporaryDirectory(prefix="bypass-runtime-") as runtime:   # shared by these builds only
        for spec in sorted((package / "agents").glob("*/*.bypass")):
            output = folder / f"{spec.stem}-{fingerprint(spec)}.so"
            print(f"bypass: building {output.name} …", file=sys.stderr, flush=True)
            built.append(build(spec, output, runtime_cache=Path(runtime)))
    from .agents.sandbox.mounts import library      # `bypass run -m` checks a list with it
    built.append(library(folder))
    return built


def helper_name(name: str, sources: list[Path]) -> str:
    """The file name of a helper library (helper_library): keyed, like an agent's, by the
    toolchain and its sources' text, so a changed source is built anew."""
    digest = _toolchain_digest()
    for path in sources:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return f"{name}-{digest.hexdigest()[:20]}.so"


def helper_library(name: str, sources: list[Path], folder: Path | None = None) -> Path:
    """A small shared library of Bypass's own C that its Python loads with cffi (the sandbox's
    mount-list parser), compiled with the agents' flags from the .c files of `sources` (the
    headers count for the key). Taken from the prebuilt folder or the cache when there, else
    compiled into the cache once per version of the sources; `folder`: compile into it instead."""
    filename = helper_name(name, sources)
    if folder is None:
        for place in (PREBUILT_DIR, cache_dir()):
            if (place / filename).exists():
                return place / filename
        folder = cache_dir()
    compiler = find_compiler()
    folder.mkdir(parents=True, exist_ok=True)
    c_files = [str(p) for p in sources if p.suffix == ".c"]
    # Written under another name and renamed: a second `bypass run` building the same library at
    # once never loads half a file.  A name, not a file made first: the linker would keep that
    # file's mode (0600), not the umask's.
    partial = str(folder / f".{filename}.{os.getpid()}.{threading.get_ident()}.tmp")
    # -fvisibility=default: an agent hides its functions from the program it is loaded into;
    # this library exists to be called
    done = subprocess.run([compiler, *COMPILE_FLAGS, "-fvisibility=default", *LINK_FLAGS, "-o", partial, *c_files],
                          capture_output=True, text=True)
    if done.returncode != 0:
        Path(partial).unlink(missing_ok=True)
        raise BuildError(f"the C compiler rejected {' '.join(c_files)}:\n{done.stderr.strip()}")
    os.replace(partial, folder / filename)
    return folder / filename


def part_names(plan: AgentPlan) -> list[str]:
    """One C file per core for a large agent (the trace agent's hundred calls), one for a small."""
    count = parallel_jobs() if len(plan.calls) >= 40 else 1
    return [f"{plan.name}_agent.c"] + [f"{plan.name}_agent_{n}.c" for n in range(2, count + 1)]


def _write_parts(plan: AgentPlan, parts: list[tuple[str, str]], workdir: Path,
                 includes: list[Path]) -> list[CompileJob]:
    jobs = []
    for name, text in parts:
        (workdir / name).write_text(text)
        jobs.append(CompileJob(workdir / name, workdir / (Path(name).stem + ".o"), includes, generated=True))
    for number, source in enumerate(_spec_sources(plan)):     # two @source files may share a name
        jobs.append(CompileJob(source, workdir / f"src{number}-{source.stem}.o", includes))
    return jobs


def compile_agent(plan: AgentPlan, output: Path, workdir: Path, runtime_cache: Path | None,
                  quiet_family: bool) -> Path:
    """Render the agent's parts and compile them, its @source files and (when not cached) the
    runtime side by side, then link them into `output`. The runtime starts compiling first, while
    the parts are rendered. `runtime_cache`: where the compiled runtime is kept between builds
    (None: compiled in workdir, for this build only)."""
    compiler = find_compiler()
    runtime = Runtime(compiler, runtime_cache, workdir, rpc=links_shadow_client(plan))
    pool = CompilePool(compiler)
    what = f"the agent for {plan.spec.path} (errors in the spec's C code point at the spec's lines)"
    try:
        pool.add(runtime.jobs)
        parts = render_agent_parts(plan, part_names(plan))
        warn_family(plan, quiet_family)
        spec_dir = Path(plan.spec.path).resolve().parent
        jobs = _write_parts(plan, parts, workdir, [*RUNTIME_DIRS, runtime.include_dir, workdir, spec_dir])
        pool.add(jobs)
        failed = pool.wait()
        if not set(failed) & set(range(len(runtime.jobs))):
            runtime.finish()            # kept even when the agent's own code did not compile
        if failed:
            raise BuildError(f"the C compiler rejected {what}:\n" + "\n".join(failed[i] for i in sorted(failed)))
    finally:
        pool.close()
        runtime.abandon()
    return link(compiler, jobs, runtime, output, what)


def build(spec_path: str | Path, output: str | Path, keep_c: str | Path | None = None,
          quiet_family: bool = True, runtime_cache: Path | None | bool = True) -> Path:
    """Generate and compile the agent. The compiled runtime is kept in the agent cache
    (cache_dir()) unless runtime_cache names another folder, or is None (not kept)."""
    output = Path(output).resolve()
    plan = plan_spec(spec_path)
    find_compiler()                 # a missing compiler is reported before any folder is made
    output.parent.mkdir(parents=True, exist_ok=True)
    if runtime_cache is True:
        runtime_cache = cache_dir()
    if keep_c:
        workdir = Path(keep_c)
        workdir.mkdir(parents=True, exist_ok=True)
        return compile_agent(plan, output, workdir, runtime_cache, quiet_family)
    with tempfile.TemporaryDirectory(prefix="bypass-build-") as tmp:
        return compile_agent(plan, output, Path(tmp), runtime_cache, quiet_family)


def cache_dir() -> Path:
    root = os.environ.get("BYPASS_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "bypass", "agents")
    return Path(root)


def build_cached(spec_path: str | Path) -> Path:
    """The agent for this spec, rebuilt only when the spec, its sources or Bypass changed."""
    key = fingerprint(spec_path)
    name = f"{Path(spec_path).stem}-{key}.so"
    for place in (PREBUILT_DIR, cache_dir()):
        if (place / name).exists():
            return place / name
    # A newcomer must not stare at a silent terminal while the compiler runs.
    print(f"bypass: building {Path(spec_path).stem}.so (first run) … ", end="", file=sys.stderr, flush=True)
    started = time.monotonic()
    try:
        output = build(spec_path, cache_dir() / name)
    except BaseException:
        print(file=sys.stderr)
        raise
    print(f"{time.monotonic() - started:.1f} s", file=sys.stderr)
    return output
