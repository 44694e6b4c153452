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


def declared_settings(spec_path: str | os.PathLike[str]) -> list[str]:
    """The setting patterns a spec declares, read with the lexer alone: `bypass run` with a warm
    cache must not pay for a full parse (seconds for a large spec)."""
    from .spec.lexer import Lexer
    from .spec.parser import read_spec_text
    tokens = Lexer(read_spec_text(spec_path), str(spec_path)).tokens()
    found: list[str] = []
    for at, token in enumerate(tokens):
        if token.kind != "ident" or token.text != "options":
            continue
        end = at + 1
        while end < len(tokens) and tokens[end].kind == "string":
            end += 1
        if end < len(tokens) and tokens[end].kind == "ident" and tokens[end].text == "setting":
            found += [t.text for t in tokens[at + 1:end]]
    return found


def _check_trace_file(name: str) -> None:
    path = Path(name)
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise BypassError(f"--trace {name}: is a directory; give a file to append the trace to")
    if not folder.is_dir():
        raise BypassError(f"--trace {name}: no such directory {folder}")
    if path.exists() and not os.access(path, os.W_OK) or not path.exists() and not os.access(folder, os.W_OK | os.X_OK):
        raise BypassError(f"--trace {name}: not writable (permission denied)")


def mount_variable(spec_path) -> str:
    """What `-M` sets for this spec: the webfs agent's inline mounts (PREFIX=URL) where the spec reads
    them, else the sandbox's mount list (PREFIX=TARGET)."""
    declared = declared_settings(spec_path)
    webfs = any(fnmatch.fnmatchcase("BYPASS_WEBFS_MOUNTS", p) for p in declared)
    sandbox = any(fnmatch.fnmatchcase("BYPASS_MOUNTS", p) for p in declared)
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
    for flag, given, what in (("--summary", args.summary, "summary"), ("--summary-json", args.summary_json, "summary"),
                              ("--policy", args.policy, "policy"), ("--process", args.process is not None, "policy")):
        if given and not args.export:
            raise BypassError(f"{flag} needs --export DIR: the {what} is the shadow's, and only --export serves one")
    if args.listen and not args.export:
        raise BypassError("--listen needs --export DIR: it says where the served shadow listens")
    given = [(flag, variable) for dest, (flag, variable) in RUN_OPTIONS.items() if getattr(args, dest, None)]
    if given:
        declared = declared_settings(args.spec)
        if args.mount:
            given = [(f, mount_variable(args.spec) if f == "-M" else v) for f, v in given]
        for flag, variable in given:
            if not any(fnmatch.fnmatchcase(variable, pattern) for pattern in declared):
                reads = f"it reads {', '.join(declared)}" if declared else "it declares no settings"
                raise BypassError(
                    f"{flag} sets {variable}, which {args.spec} does not read ({reads}); a spec whose agent "
                    f"reads it declares so with: options \"{variable}\" setting;")
    if args.trace:
        _check_trace_file(args.trace)
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
        from .mounts import load_mounts, parse
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
        from .mounts import load_mounts
        load_mounts(mounts)
        settings["BYPASS_MOUNTS"] = os.path.abspath(mounts)
    return settings


def _remove_at_exit(folder: str) -> None:
    import atexit
    import shutil
    atexit.register(shutil.rmtree, folder, True)
