"""Agent settings given on the command line (`--set NAME=VALUE`, `-m FILE`, `-M PREFIX=TARGET`) →
environment variables, and the check that each one can apply to the spec being run."""

from __future__ import annotations

import fnmatch
import os
import tempfile
from pathlib import Path

from .errors import BypassError

# `bypass run` option (argparse dest) → how the user spelt it and the variable it sets. A spec
# names the variables its agent reads with `options "BYPASS_..." setting;`; an option whose
# variable the spec does not read is refused, since it would silently do nothing (a user who
# passes -m to the trace agent believes they are sandboxed).
RUN_OPTIONS = {
    "trace": ("--trace", "BYPASS_TRACE"),
    "mounts": ("-m", "BYPASS_MOUNTS"),
    "mount": ("-M", "BYPASS_MOUNTS"),
    "keep_private": ("--keep-private", "BYPASS_SANDBOX_KEEP_PRIVATE"),
    "private_cleanup": ("--private-cleanup", "BYPASS_SANDBOX_KEEP_PRIVATE"),
    "no_kernel_enforcement": ("--no-kernel-enforcement", "BYPASS_SANDBOX_KERNEL_ENFORCEMENT"),
}


def _check_output_file(flag: str, name: str) -> None:
    path = Path(name)
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise BypassError(f"{flag} {name}: is a directory; give a file to append to")
    if not folder.is_dir():
        raise BypassError(f"{flag} {name}: no such directory {folder}")
    if path.exists() and not os.access(path, os.W_OK) or not path.exists() and not os.access(folder, os.W_OK | os.X_OK):
        raise BypassError(f"{flag} {name}: not writable (permission denied)")


# Settings of the runtime, which every agent reads (bypass_runtime.h), and of the shadow client,
# which an agent with shadow calls reads (rpc_client.c).
RUNTIME_SETTINGS = {"BYPASS_DEBUG": None, "BYPASS_DEBUG_FILE": "path"}
SHADOW_SETTINGS = {"BYPASS_SHADOW": None, "BYPASS_SHADOW_SECRET": None, "BYPASS_SHADOW_SECRET_FILE": "file",
                   "BYPASS_SHADOW_TIMEOUT": "seconds"}


def _calls_shadow(spec_path: str) -> bool:
    """Whether the agent has shadow calls (a full parse: asked only when an option depends on it)."""
    from .spec.parser import load_spec
    spec = load_spec(spec_path)
    return "bypass_shadow_" in spec.source or (
        spec.agent_default_action is None and any(f.agent_action is None for f in spec.functions))


def _check_set(spec_path: str, assignments: list[str], declared) -> None:
    """--set NAME=VALUE: NAME is a setting the agent reads, VALUE of the declared type."""
    import difflib
    from .declared import check_value
    known = dict(RUNTIME_SETTINGS)
    for item in assignments:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise BypassError(f"--set wants NAME=VALUE, got {item!r}")
        if name in SHADOW_SETTINGS and _calls_shadow(spec_path):
            known.update(SHADOW_SETTINGS)
        matching = [d for d in declared if fnmatch.fnmatchcase(name, d.pattern)]
        if matching or name in known:
            # the spec's own declaration first; among those, the last rule wins, as in options
            check_value(name, matching[-1].type if matching else known[name], value)
            continue
        names = sorted({d.pattern for d in declared} | set(known))
        close = difflib.get_close_matches(name, [n for n in names if "*" not in n], n=1, cutoff=0.7)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise BypassError(f"--set {name}: {spec_path} does not read {name}{hint} (it reads {', '.join(names)}; "
                          f"to give the command an environment variable, put it after '--': -- env {name}=... COMMAND)")


def _check_given(spec_path: str, given: list[tuple[str, str]], assignments: list[str] | None, declared) -> None:
    for flag, variable in given:
        if not any(fnmatch.fnmatchcase(variable, d.pattern) for d in declared):
            patterns = [d.pattern for d in declared]
            reads = f"it reads {', '.join(patterns)}" if patterns else "it declares no settings"
            raise BypassError(
                f"{flag} sets {variable}, which {spec_path} does not read ({reads}); a spec whose agent "
                f"reads it declares so with: options \"{variable}\" setting;")
    if assignments:
        _check_set(spec_path, assignments, declared)


def check_agent_options(spec_path: str, assignments: list[str] | None, mounts: str | None) -> None:
    """`--set` and `-m` of the commands that run a program under a spec's agent (conform, escapes),
    checked as `bypass run` checks them: a setting the agent does not read, or a value not of its
    declared type, is refused before anything runs."""
    from .declared import declared_settings
    given = [("-m", "BYPASS_MOUNTS")] if mounts else []
    if given or assignments:
        _check_given(spec_path, given, assignments, declared_settings(spec_path))


def debug_subsystems(spec_path: str, wanted: str) -> str:
    """`-d a,b`: each name one the agent reports on; returns the list for BYPASS_DEBUG."""
    from .declared import RPC_SUBSYSTEM, RUNTIME_SUBSYSTEMS, SPEC_SUBSYSTEMS, declared_subsystems
    names = [n.strip() for n in wanted.split(",") if n.strip()]
    if not names:
        raise BypassError("-d wants one or more subsystems, comma-separated (or all)")
    offered = dict(RUNTIME_SUBSYSTEMS)
    declared = set(declared_subsystems(spec_path))
    offered.update({n: text for n, text in SPEC_SUBSYSTEMS.items() if n in declared})
    unknown = [n for n in names if n != "all" and n not in offered]
    if unknown and _calls_shadow(spec_path):       # a full parse, only when it decides something
        offered.update(RPC_SUBSYSTEM)
        unknown = [n for n in unknown if n not in offered]
    if unknown:
        listing = "; ".join(f"{n}: {text}" for n, text in offered.items())
        raise BypassError(f"-d {unknown[0]}: no such debug subsystem for {spec_path}; it has all, {listing}")
    return ",".join(names)


def mount_variable(spec_path) -> str:
    """What `-M` sets for this spec: the webfs agent's inline mounts (PREFIX=URL) where the spec reads
    them, else the sandbox's mount list (PREFIX=TARGET)."""
    from .declared import declared_settings
    patterns = [d.pattern for d in declared_settings(spec_path)]
    webfs = any(fnmatch.fnmatchcase("BYPASS_WEBFS_MOUNTS", p) for p in patterns)
    sandbox = any(fnmatch.fnmatchcase("BYPASS_MOUNTS", p) for p in patterns)
    return "BYPASS_WEBFS_MOUNTS" if webfs and not sandbox else "BYPASS_MOUNTS"


def webfs_inline(items: list[str], already: str | None) -> str:
    """`-M PREFIX=URL[,URL...][,key=FILE]` entries → BYPASS_WEBFS_MOUNTS (after any --set one); the
    agent checks the URLs and the key when it starts, with a clear error."""
    entries = []
    for item in items:
        prefix, sep, urls = item.partition("=")
        if not sep or not prefix.startswith("/") or not urls or any(c.isspace() for c in item):
            raise BypassError(f"-M wants PREFIX=URL[,URL...][,key=FILE] (e.g. -M /software=http://host/repo,"
                              f"key=repo.pub), got {item!r}")
        # the agent wants the key's absolute path (each process reads it, wherever it runs)
        words = [f"key={os.path.abspath(w[4:])}" if w.startswith("key=") else w for w in urls.split(",")]
        entries.append(f"{prefix}={','.join(words)}")
    return " ".join(filter(None, [already, *entries]))


def check_run_options(args) -> None:
    """Refuse, before anything is built or run, the options of `bypass run` that cannot apply."""
    from .declared import declared_settings
    for flag, given, what in (("--summary", args.summary, "summary"), ("--summary-json", args.summary_json, "summary"),
                              ("--policy", args.policy, "policy"), ("--process", args.process is not None, "policy")):
        if given and not args.export:
            raise BypassError(f"{flag} needs --export DIR: the {what} is the shadow's, and only --export serves one")
    if args.listen and not args.export:
        raise BypassError("--listen needs --export DIR: it says where the served shadow listens")
    given = [(flag, variable) for dest, (flag, variable) in RUN_OPTIONS.items() if getattr(args, dest, None)]
    declared = declared_settings(args.spec) if given or args.set else []
    if args.mount:
        given = [(f, mount_variable(args.spec) if f == "-M" else v) for f, v in given]
    _check_given(args.spec, given, args.set, declared)
    if args.trace:
        _check_output_file("--trace", args.trace)
    if args.debug_file and not args.debug:
        raise BypassError("-o FILE is where the debug output goes: give the subsystems with -d (e.g. -d all -o FILE)")
    if args.debug:
        args.debug = debug_subsystems(args.spec, args.debug)
    if args.debug_file:
        _check_output_file("-o", args.debug_file)
    if args.keep_private and args.private_cleanup:
        raise BypassError("--keep-private and --private-cleanup contradict each other: give one")


def inline_mounts(items: list[str]) -> str:
    """`-M PREFIX=TARGET` (Parrot's inline mount) → mount-list lines."""
    lines = []
    for item in items:
        prefix, sep, target = item.partition("=")
        if not sep or not prefix or not target:
            raise BypassError(f"-M wants PREFIX=TARGET (e.g. -M /tmp=PRIVATE or -M /data=/scratch/data), got {item!r}")
        if any(c.isspace() or c == "#" for c in item):
            raise BypassError(f"-M {item!r}: a path with blanks or '#' needs a mount-list file (-m FILE)")
        lines.append(f"{prefix} {target}")
    return "\n".join(lines) + "\n"


def agent_settings(assignments: list[str] | None, mounts: str | None = None,
                   inline: list[str] | None = None) -> dict[str, str]:
    """Environment for an agent run; a bad mount list fails here, before any program starts."""
    settings: dict[str, str] = {}
    for item in assignments or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise BypassError(f"--set wants NAME=VALUE, got {item!r}")
        settings[name] = value
    if inline:
        from .agents.sandbox.mounts import load_mounts, parse
        if mounts:
            load_mounts(mounts)
        text = (Path(mounts).read_text() + "\n" if mounts else "") + inline_mounts(inline)
        parse(text, "-M")
        # The agent and every child it execs read the list from a file; it lives as long as
        # this process (cleaned up at exit), which waits for the command.
        folder = tempfile.mkdtemp(prefix="bypass-mounts-")
        _remove_at_exit(folder)
        combined = os.path.join(folder, "mounts.txt")
        Path(combined).write_text(text)
        mounts = combined
    if mounts:
        from .agents.sandbox.mounts import load_mounts
        load_mounts(mounts)
        settings["BYPASS_MOUNTS"] = os.path.abspath(mounts)
    return settings


def _remove_at_exit(folder: str) -> None:
    import atexit
    import shutil
    atexit.register(shutil.rmtree, folder, True)
