"""`bypass conform SPEC [agent options] [--seed N] [--ops N] [--time S] [--json]`

Runs generated sequences of file calls natively and under the agent, compares return values,
errno, bytes and the resulting trees, shrinks each divergence to a minimal sequence and prints
it with a C reproduction.  Exit status: 0 no unexpected divergence, 1 some, 2 bad input.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from ..errors import BypassError
from . import report, tree
from .engine import Oracle, Side, build_executor
from .expected import expected_file, load_rules, match
from .ops import Generator, Step

KNOWN_OPS = {name for name, _, _ in Generator.CATALOGUE}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", help="the agent's .bypass specification")
    parser.add_argument("--agent", help="a prebuilt agent .so (default: build the spec, cached)")
    parser.add_argument("-m", "--mounts", metavar="FILE", help="mount list, as `bypass run -m` (sandbox)")
    parser.add_argument("--set", action="append", metavar="NAME=VALUE", help="an agent setting (environment)")
    parser.add_argument("--export", metavar="DIR",
                        help="serve the spec's shadow inside DIR; the agent side works below --prefix")
    parser.add_argument("--policy", metavar="FILE",
                        help="with --export: the shadow's remote-I/O policy, as `bypass run --policy` (a "
                             "policy that buffers or stages every file must change nothing the program sees)")
    parser.add_argument("--prefix", default=None,
                        help="with --export: the path the agent maps to DIR (default $BYPASS_REMOTE_PREFIX "
                             "or /job)")
    parser.add_argument("--workdir", metavar="DIR",
                        help="where both sides' scratch trees go (default: a new directory in $TMPDIR); "
                             "with a mount list, a place the list leaves as it is")
    parser.add_argument("--seed", type=int, default=1, help="first seed (default 1)")
    parser.add_argument("--ops", type=int, default=1500, help="steps per seed (default 1500)")
    parser.add_argument("--length", type=int, default=25, help="steps per sequence (default 25)")
    parser.add_argument("--time", type=float, metavar="S", help="run seeds from --seed on until S seconds pass")
    parser.add_argument("--expected", metavar="FILE",
                        help="expected divergences (default: SPEC with the suffix .expected, if present)")
    parser.add_argument("--max-reports", type=int, default=20, help="distinct divergences to shrink and show")
    parser.add_argument("--replay", metavar="FILE",
                        help="run the sequences of FILE (a --json report, or a script: one `ID OP ARG…` "
                             "step a line, sequences separated by blank lines) instead of generating")
    parser.add_argument("--json", action="store_true", help="print counts and divergences as JSON")


def _check(args) -> None:
    if not Path(args.spec).is_file():
        raise BypassError(f"conform: no such spec: {args.spec}")
    if args.ops < 1 or args.length < 1:
        raise BypassError("conform: --ops and --length must be at least 1")
    if args.time is not None and args.time <= 0:
        raise BypassError("conform: --time must be positive")
    if args.export and not os.path.isdir(args.export):
        raise BypassError(f"conform: --export {args.export}: not a directory")
    if args.workdir and not os.path.isdir(args.workdir):
        raise BypassError(f"conform: --workdir {args.workdir}: not a directory")
    if args.policy and not args.export:
        raise BypassError("conform: --policy needs --export DIR (the policy is the shadow's)")
    if args.export and args.workdir:
        raise BypassError("conform: --workdir and --export exclude each other (with --export both sides "
                          "work inside the export)")
    from ..settings import check_agent_options
    check_agent_options(args.spec, args.set, args.mounts)


def _sides(args, stack: ExitStack, agent: Path) -> tuple[Side, Side]:
    from ..settings import agent_settings
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("BYPASS_") and k != "LD_PRELOAD"}
    base_env.update({k: v for k, v in os.environ.items() if k in ("BYPASS_CACHE_DIR",)})
    agent_env = dict(base_env)
    agent_env.update(agent_settings(args.set, args.mounts))
    agent_env.setdefault("BYPASS_SHADOW_TIMEOUT", "10")
    agent_env.setdefault("BYPASS_SANDBOX_CLEANUP", "1")    # every executor is a run: leave no private dirs
    agent_env["LD_PRELOAD"] = str(agent)
    # Both sides' roots have names of one length, so lengths the program sees (readlink of an
    # absolute link, getcwd into a small buffer, paths near PATH_MAX) agree.
    tag = f".bypass-conform-{os.getpid()}-"
    if args.export:
        from ..rpc.shadow_cli import make_server
        export = os.path.realpath(args.export)
        policy = None
        if args.policy:
            from ..rpc.policy import load
            policy = load(args.policy, 0, export, args.prefix or agent_env.get("BYPASS_REMOTE_PREFIX") or "/job")
        server = make_server(args.spec, export, policy=policy)
        agent_env["BYPASS_SHADOW"] = server.listen(None)
        server.start()
        stack.callback(server.close)
        prefix = args.prefix or agent_env.get("BYPASS_REMOTE_PREFIX") or "/job"
        work, program_work = export, prefix.rstrip("/")
    else:
        work = os.path.realpath(args.workdir) if args.workdir else tempfile.mkdtemp(prefix="bypass-conform-")
        if not args.workdir:
            stack.callback(tree.remove, os.fsencode(work))
        program_work = work
    longer = max(len(work), len(program_work))
    native_real = os.path.join(work, tag + "n" * (1 + longer - len(work)))
    agent_tag = tag + "a" * (1 + longer - len(program_work))
    real = os.path.join(work, agent_tag)
    agent_side = Side("agent", os.fsencode(real), os.fsencode(os.path.join(program_work, agent_tag)), agent_env)
    for base in (real, native_real):
        os.mkdir(base, 0o755)
        stack.callback(tree.remove, os.fsencode(base))
    native_side = Side("native", os.fsencode(native_real), os.fsencode(native_real), base_env)
    return native_side, agent_side


def _recurs(oracle: Oracle, steps, div) -> bool:
    again = oracle.diverge(steps)
    return again is not None and again.signature() == div.signature()


def _replayed(path: str) -> list[list[Step]]:
    """The sequences of a --json report (each item's script) or of a plain script file."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise BypassError(f"conform: --replay {path}: {exc}") from None
    try:
        scripts = [item["script"] for item in json.loads(text)["items"]]
    except (ValueError, KeyError, TypeError):
        scripts = [block.splitlines() for block in text.split("\n\n")]
    sequences = []
    for number, lines in enumerate(scripts, 1):
        try:
            steps = [Step.parse(line) for line in lines if line.strip() and not line.startswith("#")]
        except ValueError as exc:
            raise BypassError(f"conform: --replay {path}: sequence {number}: {exc}") from None
        unknown = sorted({s.op for s in steps} - KNOWN_OPS)
        if unknown:
            raise BypassError(f"conform: --replay {path}: sequence {number}: unknown step {unknown[0]!r}")
        if steps:
            sequences.append(steps)
    if not sequences:
        raise BypassError(f"conform: --replay {path}: no steps in it")
    return sequences


def run(args) -> int:
    _check(args)
    replay = _replayed(args.replay) if args.replay else None
    spec = Path(args.spec)
    rules = load_rules(Path(args.expected) if args.expected else expected_file(spec))
    from ..build import build_cached
    agent = Path(args.agent).resolve() if args.agent else build_cached(spec)
    executor = build_executor()
    as_root = os.geteuid() == 0
    found: dict[tuple, object] = {}
    occurrences: dict[tuple, int] = {}
    sequences = steps_run = 0
    flaky: list[str] = []
    started = time.monotonic()
    with ExitStack() as stack:
        native, agent_side = _sides(args, stack, agent)
        oracle = Oracle(executor, native, agent_side)
        stack.callback(oracle.close)
        seed = args.seed
        while True:
            done_in_seed = 0
            index = 0
            while (index < len(replay)) if replay is not None else (done_in_seed < args.ops):
                if replay is not None:
                    steps = replay[index]
                    length = len(steps)
                else:
                    length = min(args.length, args.ops - done_in_seed)
                    steps = Generator(f"{seed}:{index}", as_root=as_root).sequence(length)
                div = oracle.diverge(steps)
                sequences += 1
                steps_run += length
                done_in_seed += length
                if div is not None and not _recurs(oracle, steps, div):
                    flaky.append(div.title())   # timing-dependent: counted, not reported as found
                    div = None
                if div is not None:
                    div.seed = f"replayed sequence {index + 1}" if replay else f"seed {seed}, sequence {index}"
                    rule = match(rules, div.title(), div.agent)
                    # an expected divergence is shown once per rule, unshrunk: the report's room
                    # and the time to shrink are kept for what nobody explained
                    sig = ("expected", rule.line) if rule else div.signature()
                    occurrences[sig] = occurrences.get(sig, 0) + 1
                    if sig not in found and (rule or sum(not d.expected for d in found.values()) < args.max_reports):
                        small = div if rule else oracle.shrink(div)
                        rule = rule or match(rules, small.title(), small.agent)
                        small.expected = f"{rule.reason} (rule at line {rule.line})" if rule else None
                        found[sig] = small
                        if not args.json:
                            print(report.text(small), flush=True)
                            print(flush=True)
                index += 1
                if args.time is not None and time.monotonic() - started > args.time:
                    break
            if replay is not None or args.time is None or time.monotonic() - started > args.time:
                break
            seed += 1
    divergences = list(found.values())
    unexpected = [d for d in divergences if not d.expected]
    summary = {
        "spec": str(spec), "seeds": [args.seed, seed], "sequences": sequences, "steps": steps_run,
        "seconds": round(time.monotonic() - started, 1), "divergences": len(divergences),
        "unexpected": len(unexpected), "expected": len(divergences) - len(unexpected),
        "occurrences": sum(occurrences.values()), "not_reproducible": len(flaky),
        "not_reproducible_titles": flaky[:20],
    }
    if args.json:
        summary["items"] = [{**report.as_json(d), "occurrences": occurrences[sig]} for sig, d in found.items()]
        json.dump(summary, sys.stdout, indent=1)
        print()
    else:
        where = f"replayed from {args.replay}" if replay else \
            f"seeds {args.seed}{'' if seed == args.seed else f'..{seed}'}"
        print(f"bypass conform: {spec.name}: {steps_run} steps in {sequences} sequences ({where}), "
              f"{summary['seconds']} s: "
              f"{len(unexpected)} unexpected, {summary['expected']} expected divergence(s)"
              + ("" if len(unexpected) < args.max_reports else f" (stopped shrinking after {args.max_reports})")
              + (f"; {len(flaky)} sequence(s) diverged once but not when run again" if flaky else ""))
    return 1 if unexpected else 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bypass conform", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))
