#!/usr/bin/env python3
"""How long a newcomer waits before an agent runs: `bypass run SPEC -- true`, per shipped agent
and for a one-call spec of the user's own.

    python3 benchmarks/bench_build.py [--agents one,trace,sandbox] [--prebuilt DIR]

cold:      an empty agent cache, nothing prebuilt: the agent and the shared C runtime are
           generated and compiled.
new spec:  the runtime already compiled (any earlier build with this compiler left it in the
           cache), the agent not: what the second spec a user writes costs.
warm:      the same again: the cached agent is found by its fingerprint.
prebuilt:  an empty cache with the agents the package build compiled (setup.py): what the first
           run after `pip install .` costs. Measured when --prebuilt names a folder of them
           (an installed package's bypass/prebuilt), otherwise skipped.
cpu:       the cold run's processor time (Python and every compiler it ran, user + system): on a
           shared machine the wall-clock figures depend on the neighbours, this one much less.
Each figure is one wall-clock run of the whole command (Python start-up included).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ONE_CALL = """/* a user's first spec: one call, with its own action */
int unlink( in string const char *path )
agent_action {{
    return unlink(path);
}};
"""


def timed_run(spec: Path, cache: Path, prebuilt: Path | None) -> tuple[float, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BYPASS_")}
    env["BYPASS_CACHE_DIR"] = str(cache)
    env["PYTHONPATH"] = str(REPO)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    code = "import sys, bypass.build as b, bypass.cli as c; "
    if prebuilt:
        code += f"b.PREBUILT_DIR = __import__('pathlib').Path({str(prebuilt)!r}); "
    else:
        code += "b.PREBUILT_DIR = __import__('pathlib').Path('/nonexistent'); "
    code += "sys.exit(c.main(sys.argv[1:]))"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code, "run", str(spec), "--", "true"], env=env,
                          capture_output=True, text=True)
    elapsed = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        sys.exit(f"bypass run {spec} failed:\n{done.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--agents", default="one,trace,sandbox,gass,remote,webfs",
                        help="shipped agents by name; 'one' is a one-call spec of the user's own")
    parser.add_argument("--prebuilt", type=Path, help="a folder of prebuilt agents (an installed bypass/prebuilt)")
    args = parser.parse_args()
    print(f"{'agent':10} {'cold s':>8} {'cpu s':>7} {'new spec s':>11} {'warm s':>8} {'prebuilt s':>11}")
    for name in args.agents.split(","):
        with tempfile.TemporaryDirectory(prefix="bypass-bench-") as tmp:
            spec = REPO / "agents" / name / f"{name}.bypass"
            if name == "one":
                spec = Path(tmp) / "one.bypass"
                spec.write_text(ONE_CALL)
            cold, cpu = timed_run(spec, Path(tmp) / "cache", None)
            # the runtime stays, the agent goes: a second spec's first build
            for agent in (Path(tmp) / "cache").glob("*.so"):
                agent.unlink()
            new, _ = timed_run(spec, Path(tmp) / "cache", None)
            warm, _ = timed_run(spec, Path(tmp) / "cache", None)
            pre = f"{timed_run(spec, Path(tmp) / 'empty', args.prebuilt)[0]:11.2f}" if args.prebuilt else f"{'-':>11}"
        print(f"{name:10} {cold:8.2f} {cpu:7.2f} {new:11.2f} {warm:8.2f} {pre}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
