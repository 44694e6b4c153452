#!/usr/bin/env python3
"""Pass-through agent against native: stat and open+read+close loops, and process start-up.

    python3 benchmarks/bench_passthrough.py [--rounds 7]

In one run, interleaved, the same loop program runs natively, under a minimal hand-written
preload (the floor any LD_PRELOAD tool pays), and under Bypass's trace agent with tracing off
(every call of the knowledge base trapped, each action calling the next layer). The figure per
configuration is the median of --rounds runs (and the best run, which shared-machine noise
disturbs least). Because wall-clock time on a shared 2-core machine is noisy, the loops are also
counted in instructions with valgrind's callgrind (deterministic): the extra user-space
instructions the agent adds per call. Bars (DESIGN §6): loops ≤ 1.03 × native, start-up ≤ 1 ms
extra per process.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bypass.build import build  # noqa: E402

PROGRAMS = Path(__file__).parent / "programs"


def compile_c(source: Path, output: Path, shared: bool = False) -> Path:
    flags = ["-shared", "-fPIC"] if shared else []
    subprocess.run(["gcc", "-O2", *flags, "-o", str(output), str(source), "-ldl"], check=True)
    return output


def measure(loops: Path, preload: str | None, args: list[str]) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD",) and not k.startswith("BYPASS_")}
    if preload:
        env["LD_PRELOAD"] = preload
    done = subprocess.run([str(loops), *args], env=env, capture_output=True, text=True, check=True)
    return float(done.stdout)


def instructions(loops: Path, preload: str | None, args: list[str]) -> int | None:
    """User-space instructions for one run, counted by callgrind (None if valgrind is missing)."""
    if shutil.which("valgrind") is None:
        return None
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD" and not k.startswith("BYPASS_")}
    if preload:
        env["LD_PRELOAD"] = preload
    done = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", str(loops), *args],
                          env=env, capture_output=True, text=True)
    found = re.search(r"Collected : (\d+)", done.stderr)
    return int(found.group(1)) if found else None


def extra_instructions_per_call(loops: Path, preload: str, args: list[str]) -> float | None:
    """(agent - native) instructions per iteration, from runs of n and 2n iterations."""
    kind, n, path = args
    counts = {}
    for config in (None, preload):
        small = instructions(loops, config, [kind, n, path])
        large = instructions(loops, config, [kind, str(2 * int(n)), path])
        if small is None or large is None:
            return None
        counts[config] = (large - small) / int(n)
    return counts[preload] - counts[None]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bypass-bench-") as tmp:
        tmp = Path(tmp)
        loops = compile_c(PROGRAMS / "loops.c", tmp / "loops")
        floor = compile_c(PROGRAMS / "handwritten_preload.c", tmp / "floor.so", shared=True)
        agent = build(REPO / "agents" / "trace" / "trace.bypass", tmp / "trace.so")
        target = tmp / "file.txt"
        target.write_text("x" * 100)
        true = "/bin/true"
        cases = [
            ("stat loop", ["stat", "400000", str(target)], "ns/call"),
            ("open+read+close loop", ["openread", "200000", str(target)], "ns/iter"),
            ("start-up (/bin/true)", ["spawn", "300", true], "ns/proc"),
        ]
        configs = [("native", None), ("hand-written preload", str(floor)), ("bypass pass-through", str(agent))]
        results: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.rounds):
            for case, case_args, _unit in cases:
                for config, preload in configs:
                    results.setdefault((case, config), []).append(measure(loops, preload, case_args))
        print(f"{'case':24} {'config':22} {'median':>12} {'vs native':>10} {'best':>12} {'vs native':>10}")
        for case, _args, unit in cases:
            native = statistics.median(results[(case, "native")])
            native_best = min(results[(case, "native")])
            for config, _ in configs:
                value = statistics.median(results[(case, config)])
                best = min(results[(case, config)])
                extra = ""
                if case.startswith("start-up") and config != "native":
                    extra = f"  (+{(value - native) / 1e6:.3f} ms/process median)"
                print(f"{case:24} {config:22} {value:>9.1f} ns {value / native:>9.3f}x {best:>9.1f} ns "
                      f"{best / native_best:>9.3f}x{extra}")
        print()
        print("extra user-space instructions per call (callgrind, deterministic):")
        for case, case_args, _unit in cases[:2]:
            small_args = [case_args[0], "20000", case_args[2]]
            for config, preload in configs[1:]:
                extra = extra_instructions_per_call(loops, preload, small_args)
                shown = "valgrind not installed" if extra is None else f"{extra:+.0f} instructions"
                print(f"  {case:24} {config:22} {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
