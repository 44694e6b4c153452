#!/usr/bin/env python3
"""How long a newcomer waits before a shipped agent runs: `bypass run SPEC -- true`, per agent.

    python3 benchmarks/bench_build.py [--agents trace,sandbox] [--prebuilt DIR]

cold:     an empty agent cache, nothing prebuilt: the agent is generated and compiled.
warm:     the same again: the cached agent is found by its fingerprint.
prebuilt: an empty cache with the agents the package build compiled (setup.py): what the first
          run after `pip install .` costs. Measured when --prebuilt names a folder of them
          (an installed package's bypass/prebuilt), otherwise skipped.
Each figure is one wall-clock run of the whole command (Python start-up included) on this machine,
which may be shared: read the cold column as "order of", the others to a tenth of a second.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def timed_run(spec: Path, cache: Path, prebuilt: Path | None) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BYPASS_")}
    env["BYPASS_CACHE_DIR"] = str(cache)
    env["PYTHONPATH"] = str(REPO)
    code = "import sys, bypass.build as b, bypass.cli as c; "
    if prebuilt:
        code += f"b.PREBUILT_DIR = __import__('pathlib').Path({str(prebuilt)!r}); "
    else:
        code += "b.PREBUILT_DIR = __import__('pathlib').Path('/nonexistent'); "
    code += "sys.exit(c.main(sys.argv[1:]))"
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code, "run", str(spec), "--", "true"], env=env,
                          capture_output=True, text=True)
    elapsed = time.monotonic() - started
    if done.returncode != 0:
        sys.exit(f"bypass run {spec} failed:\n{done.stderr}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--agents", default="trace,sandbox,gass,remote")
    parser.add_argument("--prebuilt", type=Path, help="a folder of prebuilt agents (an installed bypass/prebuilt)")
    args = parser.parse_args()
    print(f"{'agent':10} {'cold s':>8} {'warm s':>8} {'prebuilt s':>11}")
    for name in args.agents.split(","):
        spec = REPO / "agents" / name / f"{name}.bypass"
        with tempfile.TemporaryDirectory(prefix="bypass-bench-") as tmp:
            cold = timed_run(spec, Path(tmp) / "cache", None)
            warm = timed_run(spec, Path(tmp) / "cache", None)
            pre = f"{timed_run(spec, Path(tmp) / 'empty', args.prebuilt):11.2f}" if args.prebuilt else f"{'-':>11}"
        print(f"{name:10} {cold:8.2f} {warm:8.2f} {pre}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
