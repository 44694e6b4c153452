"""The `bypass escapes` command: run, collect both views, analyse, report."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ..errors import BypassError
from ..knowledge.elfsyms import read_program
from ..knowledge.loader import load_knowledge
from ..settings import agent_settings, check_agent_options
from ..shipped import agent_spec
from .analyse import Analyser, summarise
from .strace_log import parse_strace
from .trace_log import parse_trace

# %file: every call naming a path; %desc: every call on a descriptor; %process: clone/fork/exec,
# so threads are mapped to their process and children to their parent.
STRACE_FILTER = "trace=%file,%desc,%process"
LIBC_INTERNAL = {"nss", "locale", "loader", "timezone", "sysinfo", "stdio_dir", "libc_helper", "agent", "launcher"}


class EscapesError(BypassError):
    pass


def _resolve_program(name: str) -> str | None:
    return name if "/" in name else shutil.which(name)


def _agents(spec: Path) -> tuple[list[Path], set[str] | None]:
    """The LD_PRELOAD stack (spec first, trace under it) and the calls the spec itself wraps."""
    from ..build import build_cached

    trace_spec = agent_spec("trace")
    trace = build_cached(trace_spec)
    if spec.resolve() == trace_spec:
        return [trace], None
    from ..plan import make_plan
    from ..spec.parser import load_spec

    wrapped = {call.name for call in make_plan(load_spec(spec), load_knowledge()).calls}
    return [build_cached(spec), trace], wrapped


def collect(spec: Path, command: list[str], extra_env: dict[str, str], workdir: Path,
            quiet: bool) -> dict:
    strace = shutil.which("strace")
    if strace is None:
        raise EscapesError("strace is not installed (Debian: apt-get install strace)")
    agents, wrapped = _agents(spec)
    strace_log, trace_log = workdir / "strace.log", workdir / "trace.log"
    trace_log.touch()
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD" and not k.startswith("BYPASS_")}
    child_env = {"LD_PRELOAD": " ".join(str(a) for a in agents), "BYPASS_TRACE": str(trace_log), **extra_env}
    argv = [strace, "-f", "-qq", "-s", "0", "-y", "-e", STRACE_FILTER, "-o", str(strace_log)]
    for name, value in child_env.items():
        argv += ["-E", f"{name}={value}"]
    argv += ["--", *command]
    output = subprocess.DEVNULL if quiet else sys.stderr
    try:
        completed = subprocess.run(argv, env=env, stdout=output, stderr=output)
    except OSError as exc:
        raise EscapesError(f"cannot run strace: {exc}") from None
    if not strace_log.exists() or not strace_log.stat().st_size:
        raise EscapesError(f"strace recorded nothing (exit status {completed.returncode}); "
                           f"is ptrace allowed here, and does '{command[0]}' exist?")
    return {"strace": strace_log.read_text(errors="replace"), "trace": trace_log.read_text(errors="surrogateescape"),
            "status": completed.returncode, "agents": agents, "wrapped": wrapped, "trace_log": str(trace_log)}


def analyse(collected: dict, command: list[str], spec: Path) -> dict:
    knowledge = load_knowledge()
    syscalls, processes = parse_strace(collected["strace"])
    trapped = parse_trace(collected["trace"], knowledge)
    agent_files = {collected["trace_log"], *(str(a) for a in collected["agents"])}
    analysis = Analyser(syscalls, processes, trapped, agent_files).run()
    causes = summarise(analysis)
    programs = [{"pid": pid, "program": p.path, "dynamic": p.dynamic}
                for pid, images in sorted(analysis.programs.items()) for p in images]
    report = {
        "command": command, "spec": str(spec), "exit_status": collected["status"],
        "agents": [str(a) for a in collected["agents"]],
        "processes": programs,
        "static_programs": sorted({p["program"] for p in programs if not p["dynamic"]}),
        "trapped_calls": len(trapped), "judged_syscalls": analysis.judged,
        "explained": analysis.explained, "escaped": len(analysis.escapes),
        "causes": causes,
        "ordinary_escapes": sum(c["count"] for name, c in causes.items() if name == "other"),
    }
    if collected["wrapped"] is not None:
        report["seen_only_by_trace"] = {name: count for name, count in analysis.explained_by.most_common()
                                        if name not in collected["wrapped"]}
    return report


def render_text(report: dict) -> str:
    out = [f"bypass escapes: {' '.join(report['command'])}   (exit status {report['exit_status']})",
           f"agents: {' + '.join(Path(a).name for a in report['agents'])}",
           "processes: " + (", ".join(f"{Path(p['program']).name}[{p['pid']}]"
                                      f"{'' if p['dynamic'] else ' STATIC'}" for p in report["processes"]) or "none"),
           f"file system calls: {report['judged_syscalls']} judged, {report['explained']} explained by "
           f"{report['trapped_calls']} trapped calls, {report['escaped']} escaped", ""]
    if report["static_programs"]:
        out += [f"WARNING: statically linked, wholly invisible to any LD_PRELOAD agent: "
                f"{', '.join(report['static_programs'])}", ""]
    if not report["causes"]:
        out.append("Nothing escaped: every file system call was made through a trapped call.")
    else:
        out.append("Escapes by cause:")
    for name, cause in report["causes"].items():
        out.append(f"  {name} — {cause['count']} syscalls: {cause['label']}")
        out.append("      " + ", ".join(f"{call} {count}" for call, count in cause["syscalls"].items()))
        if cause["examples"]:
            more = cause["distinct_paths"] - len(cause["examples"])
            out.append("      e.g. " + ", ".join(cause["examples"]) + (f" (+{more} more)" if more > 0 else ""))
    if report.get("seen_only_by_trace"):
        out += ["", "Explained only by the trace layer (the spec does not wrap these calls):",
                "  " + ", ".join(f"{name} {count}" for name, count in report["seen_only_by_trace"].items())]
    out.append("")
    if report["ordinary_escapes"]:
        out.append(f"{report['ordinary_escapes']} system call(s) nothing explains (cause 'other'): a knowledge gap "
                   f"or a matching bug — please report it.")
    else:
        out.append("No ordinary escape: everything unexplained has a named cause.")
    return "\n".join(out) + "\n"


def main(argv: list[str], command: list[str] | None = None) -> int:
    if command is None:
        argv, command = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(
        prog="bypass escapes", description="Run CMD under the agent of SPEC and report which file system "
        "calls the agent did not see, grouped by cause. Usage: bypass escapes SPEC [options] -- CMD [ARGS...]")
    parser.add_argument("spec", help="the agent's .bypass spec (the trace agent is stacked under it)")
    parser.add_argument("--json", action="store_true", help="machine-readable report on stdout")
    parser.add_argument("--set", action="append", metavar="NAME=VALUE", help="an agent setting the spec declares (environment)")
    parser.add_argument("-m", "--mounts", metavar="FILE", help="set BYPASS_MOUNTS=FILE (sandbox agent)")
    parser.add_argument("-q", "--quiet", action="store_true", help="discard the command's own output")
    parser.add_argument("--keep", metavar="DIR", help="keep strace.log and trace.log in DIR")
    args = parser.parse_args(argv)
    try:
        if not command:
            raise EscapesError("give the command after '--', e.g. bypass escapes SPEC -- ls -l")
        spec = Path(args.spec)
        if not spec.is_file():
            raise EscapesError(f"{spec}: no such spec")
        check_agent_options(str(spec), args.set, args.mounts)
        extra = agent_settings(args.set, args.mounts)
        program = _resolve_program(command[0])
        if program is None:
            raise EscapesError(f"command not found: {command[0]}")
        if not read_program(program).dynamic:
            print(f"bypass escapes: {program} is statically linked: no LD_PRELOAD agent can see anything it does",
                  file=sys.stderr)
        if args.keep:
            workdir = Path(args.keep)
            workdir.mkdir(parents=True, exist_ok=True)
            report = analyse(collect(spec, command, extra, workdir, args.quiet), command, spec)
        else:
            with tempfile.TemporaryDirectory(prefix="bypass-escapes-") as tmp:
                report = analyse(collect(spec, command, extra, Path(tmp), args.quiet), command, spec)
    except BypassError as exc:
        print(f"bypass escapes: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(json.dumps(report, indent=2) + "\n" if args.json else render_text(report))
    return 0
