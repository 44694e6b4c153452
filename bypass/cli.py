"""The `bypass` command.

    bypass -agent SPEC                  write SPEC_agent.c           (the original Bypass interface)
    bypass -shadow SPEC                 write SPEC_shadow.py
    bypass -agent -shadow SPEC -o DIR   both, into a folder
    bypass build SPEC -o AGENT.so       generate and compile
    bypass run SPEC [options] -- CMD    build if stale, run CMD under the agent, exit with its status
    bypass run SPEC --export DIR -- CMD   ... with the spec's shadow served meanwhile, inside DIR
    bypass shadow SPEC [--export DIR] [--listen ADDR]   serve the spec's shadow (split execution)
    bypass knowledge list               what the knowledge base covers
    bypass knowledge audit [--libc P]   the knowledge against a libc's symbol table
    bypass escapes SPEC -- CMD          which file system calls the agent does not see
    bypass conform SPEC [agent options] the agent against the kernel: generated file calls, compared
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

from . import __version__
from .errors import BypassError

SUBCOMMANDS = ("build", "run", "knowledge", "shadow", "escapes", "gass", "conform")

ENVIRONMENT_HELP = """
environment read by agents:
  BYPASS_TRACE=FILE        trace agent: append one line per trapped call to FILE
  BYPASS_MOUNTS=FILE       sandbox agent: the mount list
  BYPASS_SHADOW=ADDR       agents with shadow calls: unix:/path or tcp:host:port
  BYPASS_SHADOW_SECRET=S   shared secret for a TCP shadow (or BYPASS_SHADOW_SECRET_FILE=FILE)
  BYPASS_SHADOW_TIMEOUT=N  seconds a shadow call may take (default 60); then it fails with EIO
  BYPASS_REMOTE_PREFIX=P   remote agent: paths under P go to the shadow (default /job)
  BYPASS_CACHE_DIR=DIR     where `bypass run` keeps built agents (default ~/.cache/bypass/agents)
read by the shadow:
  BYPASS_SHADOW_LOOP=L     auto (default), c or python: the per-connection call loop (the C one
                           is built on first use and is several µs faster per call)
  CC                       the C compiler (default cc)
"""


def _classic(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="bypass", description="Compile a Bypass spec into an LD_PRELOAD agent and a Python shadow.",
        epilog=__doc__ + ENVIRONMENT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-agent", action="store_true", help="write the agent's C source (SPEC_agent.c)")
    parser.add_argument("-shadow", action="store_true", help="write the shadow's Python source (SPEC_shadow.py)")
    parser.add_argument("-o", "--output", help="folder (or, with one of -agent/-shadow, file) to write")
    parser.add_argument("--version", action="version", version=f"bypass {__version__}")
    parser.add_argument("spec", help="the .bypass specification")
    args = parser.parse_args(argv)
    if not (args.agent or args.shadow):
        parser.error("say what to write: -agent, -shadow, or both (or use `bypass build`)")
    from .build import generate

    stem = Path(args.spec).stem
    outputs: dict[str, Path] = {}
    folder = Path(".")
    if args.output and (args.agent and args.shadow or args.output.endswith("/") or Path(args.output).is_dir()):
        folder = Path(args.output)
    elif args.output:
        outputs["agent" if args.agent else "shadow"] = Path(args.output)
    outputs.setdefault("agent", folder / f"{stem}_agent.c")
    outputs.setdefault("shadow", folder / f"{stem}_shadow.py")
    generated = generate(args.spec, outputs["agent"].name)     # fails before anything is written
    folder.mkdir(parents=True, exist_ok=True)
    if args.agent:
        outputs["agent"].write_text(generated.agent_c)
        print(outputs["agent"])
    if args.shadow:
        outputs["shadow"].write_text(generated.shadow_py)
        print(outputs["shadow"])
    return 0


def _cmd_build(args: argparse.Namespace) -> int:
    from .build import build

    output = args.output or f"{Path(args.spec).stem}.so"
    print(build(args.spec, output, keep_c=args.keep_c))
    return 0


def _split_command(argv: list[str]) -> tuple[list[str], list[str]]:
    if "--" in argv:
        at = argv.index("--")
        return argv[:at], argv[at + 1:]
    return argv, []


def exit_status(returncode: int) -> int:
    """A shell's view of a child's status: 128+N when killed by signal N."""
    return 128 - returncode if returncode < 0 else returncode


def run_under_agent(agent: Path, command: list[str], extra_env: dict[str, str]) -> int:
    env = dict(os.environ)
    env.update(extra_env)
    preload = env.get("LD_PRELOAD", "")
    env["LD_PRELOAD"] = f"{agent} {preload}".strip()
    try:
        child = subprocess.Popen(command, env=env)
    except FileNotFoundError:
        raise BypassError(f"bypass run: command not found: {command[0]}") from None
    except PermissionError:
        raise BypassError(f"bypass run: cannot execute {command[0]}: permission denied") from None
    # The child gets terminal signals itself; wait for it rather than dying first.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return exit_status(child.wait())
    finally:
        signal.signal(signal.SIGINT, previous)


def _cmd_run(args: argparse.Namespace, command: list[str]) -> int:
    from .build import build_cached

    if not command:
        raise BypassError("bypass run: give the command after '--', e.g. bypass run trace.bypass -- ls -l")
    from .settings import agent_settings

    extra = agent_settings(args.set, args.mounts)
    if args.trace:
        extra["BYPASS_TRACE"] = os.path.abspath(args.trace)
    if args.keep_private:
        extra["BYPASS_SANDBOX_KEEP_PRIVATE"] = "1"
    if args.no_kernel_enforcement:
        extra["BYPASS_SANDBOX_KERNEL_ENFORCEMENT"] = "0"
    if args.mounts:
        from .mounts import check_program          # the agent checks every later exec itself
        command = check_program(command, {**os.environ, **extra})
    agent = Path(args.agent) if args.agent else build_cached(args.spec)
    if args.export or args.listen:
        from .rpc.shadow_cli import run_with_shadow   # the spec's shadow, served by this process
        return run_with_shadow(args.spec, args.export, args.listen,
                               lambda env: run_under_agent(agent, command, {**extra, **env}),
                               summary=args.summary)
    return run_under_agent(agent, command, extra)


def _cmd_knowledge(args: argparse.Namespace) -> int:
    from .knowledge.loader import load_knowledge

    knowledge = load_knowledge()
    if args.action == "list":
        for family, calls in sorted(knowledge.families().items()):
            print(f"{family}:")
            for call in calls:
                symbols = " ".join(e.symbol + ("(private)" if e.private else "") for e in call.entries)
                print(f"  {call.name:24} {symbols}")
        return 0
    if args.action == "audit":
        from .knowledge.audit import main as audit_main
        return audit_main(args.rest)
    raise BypassError(f"bypass knowledge: unknown action {args.action!r}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if not argv or argv[0] not in SUBCOMMANDS:
            return _classic(argv)
        own, command = _split_command(argv)
        if own[0] == "escapes":                  # its own parser: bypass/escapes/cli.py
            from .escapes import main as escapes_main
            return escapes_main(own[1:], command)
        if own[0] == "conform":                  # its own parser: bypass/conform/cli.py
            from .conform.cli import main as conform_main
            return conform_main(argv[1:])
        parser = argparse.ArgumentParser(prog="bypass", epilog=ENVIRONMENT_HELP,
                                         formatter_class=argparse.RawDescriptionHelpFormatter)
        sub = parser.add_subparsers(dest="subcommand", required=True)
        p_build = sub.add_parser("build", help="generate and compile an agent")
        p_build.add_argument("spec")
        p_build.add_argument("-o", "--output", help="the agent .so to write (default SPEC.so)")
        p_build.add_argument("--keep-c", metavar="DIR", help="keep the generated C in DIR")
        p_run = sub.add_parser("run", help="run a command under an agent (built if stale)",
                               description="bypass run SPEC [options] -- COMMAND [ARGS...]")
        p_run.add_argument("spec")
        p_run.add_argument("--agent", help="use this prebuilt agent .so instead of building")
        p_run.add_argument("--trace", metavar="FILE", help="set BYPASS_TRACE=FILE (trace agent)")
        p_run.add_argument("-m", "--mounts", metavar="FILE", help="set BYPASS_MOUNTS=FILE (sandbox agent)")
        p_run.add_argument("--private-cleanup", action="store_true",
                           help="sandbox agent: remove the run's PRIVATE directory at the end (the default)")
        p_run.add_argument("--keep-private", action="store_true",
                           help="sandbox agent: keep the run's PRIVATE directory and say where it is")
        p_run.add_argument("--no-kernel-enforcement", action="store_true",
                           help="sandbox agent: do not also install the mount list as a Landlock ruleset")
        p_run.add_argument("--set", action="append", metavar="NAME=VALUE", help="set an environment variable")
        p_run.add_argument("--export", metavar="DIR",
                           help="serve the spec's shadow from this process, its file calls inside DIR")
        p_run.add_argument("--listen", metavar="ADDR", help="with --export: where the shadow listens")
        p_run.add_argument("--summary", action="store_true",
                           help="with --export: print the per-file I/O summary at the end")
        p_shadow = sub.add_parser("shadow", help="serve a spec's shadow (split execution)",
                                  description="bypass shadow SPEC [--export DIR] [--listen ADDR]")
        from .rpc.shadow_cli import add_arguments as shadow_arguments
        shadow_arguments(p_shadow)
        p_know = sub.add_parser("knowledge", help="inspect the knowledge base")
        p_know.add_argument("action", choices=["list", "audit"])
        p_know.add_argument("rest", nargs=argparse.REMAINDER)
        from .gass_cache import add_subcommand as add_gass_subcommand
        add_gass_subcommand(sub)
        args = parser.parse_args(own)
        if args.subcommand == "gass":
            return args.func(args)
        if args.subcommand == "build":
            return _cmd_build(args)
        if args.subcommand == "run":
            return _cmd_run(args, command)
        if args.subcommand == "knowledge":
            return _cmd_knowledge(args)
        if args.subcommand == "shadow":
            from .rpc.shadow_cli import cmd_shadow
            return cmd_shadow(args)
        parser.error(f"{args.subcommand} is not available yet")
    except BypassError as exc:
        from .errors import SpecError
        from .mounts import MountListError
        located = isinstance(exc, (SpecError, MountListError))      # already file:line: error: …
        print(str(exc) if located else f"bypass: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
