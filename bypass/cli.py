"""The `bypass` command.

    bypass -agent SPEC                  write SPEC_agent.c           (the original Bypass interface)
    bypass -shadow SPEC                 write SPEC_shadow.py
    bypass -agent -shadow SPEC -o DIR   both, into a folder
    bypass build SPEC -o AGENT.so       generate and compile
    bypass run SPEC [options] -- CMD    build if stale, run CMD under the agent, exit with its status
    bypass run SPEC --export DIR -- CMD   ... with the spec's shadow served meanwhile, inside DIR
    bypass run sandbox.bypass -m LIST -M /home=DENY -- CMD   a mount list, plus entries inline
    bypass shadow SPEC [--export DIR] [--listen ADDR]   serve the spec's shadow (split execution)
    bypass knowledge list               what the knowledge base covers
    bypass knowledge audit [--libc P]   the knowledge against a libc's symbol table
    bypass escapes SPEC -- CMD          which file system calls the agent does not see
    bypass conform SPEC [agent options] the agent against the kernel: generated file calls, compared
    bypass gass cache {dir,list,clear}  the gass agent's per-user URL cache
    bypass publish DIR OUT [--key K]    DIR as a signed repository for the webfs agent
    bypass keygen K                     an Ed25519 key pair for bypass publish (K, K.pub)
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


ENVIRONMENT_HELP = """
environment read by agents:
  BYPASS_TRACE=FILE        trace agent: append one line per trapped call to FILE
  BYPASS_MOUNTS=FILE       sandbox agent: the mount list
  BYPASS_SHADOW=ADDR       agents with shadow calls: unix:/path or tcp:host:port
  BYPASS_SHADOW_SECRET=S   shared secret for a TCP shadow (or BYPASS_SHADOW_SECRET_FILE=FILE)
  BYPASS_SHADOW_TIMEOUT=N  seconds a shadow call may take (default 60); then it fails with EIO
  BYPASS_REMOTE_PREFIX=P   remote agent: paths under P go to the shadow (default /job)
  BYPASS_DEBUG=LIST        every agent: debug output of these subsystems (bypass run -d)
  BYPASS_DEBUG_FILE=FILE   every agent: append it to FILE instead of stderr (bypass run -o)
  BYPASS_CACHE_DIR=DIR     where `bypass run` keeps built agents and the compiled runtime
                           (default ~/.cache/bypass/agents)
read by the shadow:
  BYPASS_SHADOW_LOOP=L     auto (default), c or python: the per-connection call loop (the C one
                           is built on first use and is several µs faster per call)
  CC                       the C compiler (default cc)
"""


def _write_atomically(path: Path, text: str) -> None:
    """Write the whole file or nothing: a failure (full disk, a name the encoding cannot carry)
    must not leave a truncated C file that a later `cc` would happily half-compile."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if path.parent.exists() and not path.parent.is_dir():
        raise BypassError(f"cannot write {path}: {path.parent} is not a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # surrogateescape: a spec whose name is not UTF-8 appears in `#line` with its own bytes
        tmp.write_bytes(text.encode("utf-8", "surrogateescape"))
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise BypassError(f"cannot write {path}: {exc.strerror}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _say(text: str, stream=None) -> None:
    """Print a line that may hold a file name that is not UTF-8, as the bytes the user typed."""
    stream = stream or sys.stdout
    stream.flush()
    stream.buffer.write(text.encode(stream.encoding or "utf-8", "surrogateescape") + b"\n")
    stream.flush()


def _classic_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bypass -agent", usage="bypass [-agent] [-shadow] [-o OUTPUT] SPEC",
        description="Write the C source of a spec's agent and/or its Python shadow (the original Bypass "
                    "interface).", formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-agent", action="store_true", help="write the agent's C source (SPEC_agent.c) and the "
                        "runtime files it includes beside it, and print the command that compiles it")
    parser.add_argument("-shadow", action="store_true", help="write the shadow's Python source (SPEC_shadow.py)")
    parser.add_argument("-o", "--output", help="folder (or, with one of -agent/-shadow, file) to write")
    parser.add_argument("--quiet-family", action="store_true",
                        help="no warning about sibling calls of a declared call that the spec leaves out")
    parser.add_argument("spec", help="the .bypass specification")
    return parser


def _classic(argv: list[str]) -> int:
    parser = _classic_parser()
    args = parser.parse_args(argv)
    if not (args.agent or args.shadow):
        parser.error("say what to write: -agent, -shadow, or both (or use `bypass build`)")
    from .build import generate, standalone_files, hand_build_command

    stem = Path(args.spec).stem
    outputs: dict[str, Path] = {}
    folder = Path(".")
    if args.output and (args.agent and args.shadow or args.output.endswith("/") or Path(args.output).is_dir()):
        folder = Path(args.output)
    elif args.output:
        outputs["agent" if args.agent else "shadow"] = Path(args.output)
    outputs.setdefault("agent", folder / f"{stem}_agent.c")
    outputs.setdefault("shadow", folder / f"{stem}_shadow.py")
    generated = generate(args.spec, outputs["agent"].name,    # fails before anything is written
                         quiet_family=args.quiet_family)
    if args.agent:
        for path, text in standalone_files(generated, outputs["agent"]).items():   # the agent's own C last
            _write_atomically(path, text)
        _say(str(outputs["agent"]))
        _say("compile it with:  " + hand_build_command(generated, outputs["agent"]), sys.stderr)
    if args.shadow:
        _write_atomically(outputs["shadow"], generated.shadow_py)
        _say(str(outputs["shadow"]))
    return 0


def _cmd_build(args: argparse.Namespace) -> int:
    from .build import build

    output = args.output or f"{Path(args.spec).stem}.so"
    _say(str(build(args.spec, output, keep_c=args.keep_c, quiet_family=args.quiet_family)))
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
    from .settings import agent_settings, check_run_options, mount_variable, webfs_inline

    check_run_options(args)                      # before anything is built, written or run
    from .rpc.shadow_cli import load_policy
    policy = load_policy(args, args.export)
    webfs_mounts = args.mount and mount_variable(args.spec) == "BYPASS_WEBFS_MOUNTS"
    extra = agent_settings(args.set, args.mounts, None if webfs_mounts else args.mount)
    if webfs_mounts:
        extra["BYPASS_WEBFS_MOUNTS"] = webfs_inline(args.mount, extra.get("BYPASS_WEBFS_MOUNTS"))
    if args.trace:
        extra["BYPASS_TRACE"] = os.path.abspath(args.trace)
    if args.keep_private:
        extra["BYPASS_SANDBOX_KEEP_PRIVATE"] = "1"
    if args.no_kernel_enforcement:
        extra["BYPASS_SANDBOX_KERNEL_ENFORCEMENT"] = "0"
    if args.debug:
        extra["BYPASS_DEBUG"] = args.debug
    if args.debug_file:
        extra["BYPASS_DEBUG_FILE"] = os.path.abspath(args.debug_file)
    if "BYPASS_MOUNTS" in extra:
        from .agents.sandbox.mounts import check_program          # the agent checks every later exec itself
        command = check_program(command, {**os.environ, **extra})
    agent = Path(args.agent) if args.agent else build_cached(args.spec)
    if args.export or args.listen:
        from .rpc.shadow_cli import run_with_shadow   # the spec's shadow, served by this process
        return run_with_shadow(args.spec, args.export, args.listen,
                               lambda env: run_under_agent(agent, command, {**extra, **env}),
                               summary=args.summary, policy=policy,
                               summary_json=args.summary_json)
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


COMMAND_HELP = {
    "build": "generate and compile an agent",
    "run": "run a command under an agent (built if stale)",
    "shadow": "serve a spec's shadow (split execution)",
    "knowledge": "inspect the knowledge base (list, audit)",
    "escapes": "which file system calls an agent does not see",
    "conform": "the agent against the kernel: generated file calls, compared",
    "gass": "the gass agent's tools (cache dir, list, clear)",
    "publish": "a tree as a signed repository for the webfs agent",
    "keygen": "an Ed25519 key pair for bypass publish",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bypass",
        description="Compile a Bypass spec into an LD_PRELOAD agent and a Python shadow.",
        epilog=__doc__ + ENVIRONMENT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"bypass {__version__}")
    sub = parser.add_subparsers(dest="subcommand", metavar="COMMAND", title="commands")
    # set after add_subparsers, which derives each command's "bypass run" prefix from the usage
    parser.usage = "bypass COMMAND [options] ...   or   bypass -agent|-shadow SPEC"
    p_build = sub.add_parser("build", help=COMMAND_HELP["build"], description="bypass build SPEC [-o AGENT.so]")
    p_build.add_argument("spec")
    p_build.add_argument("-o", "--output", help="the agent .so to write (default SPEC.so)")
    p_build.add_argument("--keep-c", metavar="DIR", help="keep the generated C in DIR")
    p_build.add_argument("--quiet-family", action="store_true",
                         help="no warning about sibling calls of a declared call that the spec leaves out")
    p_run = sub.add_parser("run", help=COMMAND_HELP["run"], usage="bypass run SPEC [options] -- COMMAND [ARGS...]",
                           description="Run COMMAND under the agent of SPEC and exit with its status. Options "
                           "that set an agent setting are refused unless the spec declares that setting "
                           "(options \"BYPASS_...\" setting;).")
    parser.run_parser = p_run                                        # type: ignore[attr-defined]
    p_run.add_argument("spec")
    p_run.add_argument("--agent", help="use this prebuilt agent .so instead of building")
    p_run.add_argument("--trace", metavar="FILE", help="set BYPASS_TRACE=FILE (trace agent)")
    p_run.add_argument("-m", "--mounts", metavar="FILE", help="set BYPASS_MOUNTS=FILE (sandbox agent)")
    p_run.add_argument("-M", "--mount", action="append", metavar="PREFIX=TARGET",
                       help="sandbox agent: one mount-list entry inline (repeatable, after those of -m); TARGET "
                            "is an absolute path, DENY, ENOENT or PRIVATE (modes need a list file: -m); webfs "
                            "agent: PREFIX=URL[,URL...][,key=FILE]")
    p_run.add_argument("--private-cleanup", action="store_true",
                       help="sandbox agent: remove the run's PRIVATE directory at the end (the default)")
    p_run.add_argument("--keep-private", action="store_true",
                       help="sandbox agent: keep the run's PRIVATE directory and say where it is")
    p_run.add_argument("--no-kernel-enforcement", action="store_true",
                       help="sandbox agent: do not also install the mount list as a Landlock ruleset")
    p_run.add_argument("--set", action="append", metavar="NAME=VALUE",
                       help="set one of the agent's settings (those the spec declares: options \"BYPASS_...\" setting;)")
    p_run.add_argument("-d", "--debug", metavar="SUBSYSTEM[,...]",
                       help="debug output of the agent: all, calls (syscall), process, resolve, rpc, and those the "
                            "spec declares (policy, cache, http); unknown names are listed")
    p_run.add_argument("-o", "--debug-file", metavar="FILE",
                       help="append the debug output to FILE (default: stderr); the program's descriptors are untouched")
    p_run.add_argument("--export", metavar="DIR",
                       help="serve the spec's shadow from this process, its file calls inside DIR")
    p_run.add_argument("--listen", metavar="ADDR", help="with --export: where the shadow listens")
    from .rpc.shadow_cli import add_policy_arguments
    add_policy_arguments(p_run)              # with --export: the served shadow's policy and report
    p_shadow = sub.add_parser("shadow", help=COMMAND_HELP["shadow"],
                              description="bypass shadow SPEC [--export DIR] [--listen ADDR]")
    from .rpc.shadow_cli import add_arguments as shadow_arguments
    shadow_arguments(p_shadow)
    p_know = sub.add_parser("knowledge", help=COMMAND_HELP["knowledge"])
    p_know.add_argument("action", choices=["list", "audit"])
    p_know.add_argument("rest", nargs=argparse.REMAINDER)
    # escapes and conform parse their own options (bypass/escapes/cli.py, bypass/conform/cli.py);
    # they are listed here so that --help and "did you mean" know them.
    sub.add_parser("escapes", help=COMMAND_HELP["escapes"], add_help=False)
    sub.add_parser("conform", help=COMMAND_HELP["conform"], add_help=False)
    sub.add_parser("publish", help=COMMAND_HELP["publish"], add_help=False)
    sub.add_parser("keygen", help=COMMAND_HELP["keygen"], add_help=False)
    from .agents.gass.gass_cache import add_subcommand as add_gass_subcommand
    add_gass_subcommand(sub)
    return parser


def _commands_text() -> str:
    width = max(map(len, COMMAND_HELP))
    lines = ["usage: bypass COMMAND [options] ...   or   bypass -agent|-shadow SPEC", "", "commands:"]
    lines += [f"  {name:{width}}  {text}" for name, text in COMMAND_HELP.items()]
    lines += [f"  {'-agent':{width}}  write SPEC_agent.c (the original Bypass interface; -shadow: SPEC_shadow.py)",
              "", "`bypass COMMAND --help` for a command's options, `bypass --help` for all of it."]
    return "\n".join(lines)


def _usage_error(message: str) -> int:
    print(f"bypass: {message}", file=sys.stderr)
    return 2


def _unknown_command(word: str) -> int:
    import difflib
    choices = list(COMMAND_HELP)
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if close:
        return _usage_error(f"unknown command '{word}'; did you mean '{close[0]}'? (`bypass` alone lists the commands)")
    if word.endswith(".bypass") or os.path.isfile(word):
        return _usage_error(f"say what to do with {word}: bypass -agent {word} (write its C), bypass build {word}, "
                            f"or bypass run {word} -- COMMAND")
    return _usage_error(f"unknown command '{word}'; the commands are {', '.join(choices)} "
                        "(or -agent/-shadow SPEC)")


def _parse_run(parser: argparse.ArgumentParser, own: list[str], had_separator: bool) -> argparse.Namespace:
    run_parser = parser.run_parser                                   # type: ignore[attr-defined]
    args, extra = run_parser.parse_known_args(own[1:])
    if extra:
        if not had_separator and not extra[0].startswith("-"):
            run_parser.error(f"put the command after '--': bypass run {args.spec} [options] -- "
                             f"{' '.join(extra)}")
        run_parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.subcommand = "run"
    return args


def _dispatch(argv: list[str]) -> int:
    if not argv:
        print(_commands_text())
        return 2
    first = argv[0]
    if first in ("-h", "--help", "--version"):
        _parser().parse_args(argv[:1])
        return 0
    if first not in COMMAND_HELP:
        # the classic form: `bypass -agent SPEC`, `bypass SPEC -shadow`, `bypass -o out/ -agent SPEC`
        if first.startswith("-") or "-agent" in argv or "-shadow" in argv:
            return _classic(argv)
        return _unknown_command(first)
    own, command = _split_command(argv)
    if first == "escapes":                  # its own parser: bypass/escapes/cli.py
        from .escapes import main as escapes_main
        return escapes_main(own[1:], command)
    if first == "conform":                  # its own parser: bypass/conform/cli.py
        from .conform.cli import main as conform_main
        return conform_main(argv[1:])
    if first in ("publish", "keygen"):     # its own parser: bypass/publish.py
        from . import publish
        return (publish.main if first == "publish" else publish.keygen_main)(argv[1:])
    parser = _parser()
    if first == "run":
        args = _parse_run(parser, own, "--" in argv)
    else:
        args = parser.parse_args(own)
    if args.subcommand == "gass":
        return args.func(args)
    if args.subcommand == "build":
        return _cmd_build(args)
    if args.subcommand == "run":
        return _cmd_run(args, command)
    if args.subcommand == "knowledge":
        return _cmd_knowledge(args)
    from .rpc.shadow_cli import cmd_shadow
    return cmd_shadow(args)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        status = _dispatch(argv)
        sys.stdout.flush()              # a closed pipe shows here, inside the handler below
        return status
    except BypassError as exc:
        from .errors import SpecError
        from .agents.sandbox.mounts import MountListError
        located = isinstance(exc, (SpecError, MountListError))      # already file:line: error: …
        _say(str(exc) if located else f"bypass: {exc}", sys.stderr)
        return 2
    except BrokenPipeError:
        # `bypass knowledge list | head`: the reader is gone, which is not an error of ours.
        # Point stdout at /dev/null so the interpreter's final flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
