#!/usr/bin/env python3
"""gass agent benchmark: first read of a large URL against curl, cached re-read against disk.

    python3 benchmarks/bench_gass.py [--size-mib 200] [--runs 3]

Both sides of each comparison run in this same invocation, against the same local HTTP server
(tests/gass/http_server.py, which sends with sendfile), interleaved, best of --runs:

  first read   `cat URL > /dev/null` under the agent with an empty cache (download to the cache,
               then read the cached copy)  vs  `curl -o FILE URL` (download to a file)
               bar: gass throughput >= 80 % of curl's
  cached read  `cat URL > /dev/null` under the agent with the copy cached (one conditional GET,
               answered 304)  vs  `cat FILE > /dev/null` of the same bytes on local disk
               bar: <= 1.10 x the local read
               also shown: the same with BYPASS_GASS_MAX_AGE (no request at all)
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "gass"))

from http_server import HttpServer  # noqa: E402


def timed(cmd: list[str], env: dict[str, str], stdout=subprocess.DEVNULL) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, env=env, stdout=stdout, stderr=subprocess.PIPE, check=True)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--agent", help="prebuilt gass .so (default: build agents/gass/gass.bypass)")
    args = parser.parse_args()
    if shutil.which("curl") is None:
        print("curl is needed for the comparison", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="bench-gass-") as tmp:
        tmp = Path(tmp)
        if args.agent:
            agent = Path(args.agent).resolve()
        else:
            from bypass.build import build

            agent = build(REPO / "agents/gass/gass.bypass", tmp / "gass.so")
        site = tmp / "site"
        site.mkdir()
        size = args.size_mib * 1024 * 1024
        with open(site / "big.bin", "wb") as f:
            block = os.urandom(1024 * 1024)
            for _ in range(args.size_mib):
                f.write(block)
        local_copy = tmp / "local.bin"
        shutil.copyfile(site / "big.bin", local_copy)
        cache = tmp / "cache"
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("BYPASS_GASS_")}
        gass_env = dict(base_env, LD_PRELOAD=str(agent), BYPASS_GASS_CACHE=str(cache))

        with HttpServer(site) as server:
            url = server.url("big.bin")
            first_gass, first_curl, cached_gass, cached_fresh, local = [], [], [], [], []
            for _ in range(args.runs):
                shutil.rmtree(cache, ignore_errors=True)
                (tmp / "curl.out").unlink(missing_ok=True)
                # flush dirty pages first: the previous run's writeback must not slow this one
                os.sync()
                first_curl.append(timed(["curl", "-sS", "-o", str(tmp / "curl.out"), url], base_env))
                os.sync()
                first_gass.append(timed(["cat", url], gass_env))
                (tmp / "curl.out").unlink(missing_ok=True)
            assert server.count("GET", "/big.bin", 200) == 2 * args.runs
            # warm page cache for both sides, then interleave
            timed(["cat", str(local_copy)], base_env)
            timed(["cat", url], gass_env)
            for _ in range(args.runs * 3):
                local.append(timed(["cat", str(local_copy)], base_env))
                cached_gass.append(timed(["cat", url], gass_env))
                cached_fresh.append(timed(["cat", url], dict(gass_env, BYPASS_GASS_MAX_AGE="3600")))
            assert server.count("GET", "/big.bin", 200) == 2 * args.runs, "cached reads downloaded"

    mib = size / 1048576
    best = min
    rows = [
        ("first read: curl -o FILE", best(first_curl), None),
        ("first read: gass cat URL", best(first_gass), best(first_curl) / best(first_gass)),
        ("local read: cat FILE", best(local), None),
        ("cached read: gass (304 check)", best(cached_gass), best(cached_gass) / best(local)),
        ("cached read: gass (MAX_AGE)", best(cached_fresh), best(cached_fresh) / best(local)),
    ]
    print(f"\ngass benchmark, {args.size_mib} MiB file, best of {args.runs} (cached: {args.runs * 3})")
    print(f"{'case':34} {'seconds':>9} {'MiB/s':>9} {'ratio':>8}")
    for name, secs, ratio in rows:
        ratio_text = "" if ratio is None else f"{ratio:7.2f}x"
        print(f"{name:34} {secs:9.3f} {mib / secs:9.0f} {ratio_text:>8}")
    first_ratio = best(first_curl) / best(first_gass)
    cached_ratio = best(cached_gass) / best(local)
    print(f"\nfirst read, gass throughput / curl's: {first_ratio:.0%} (bar >= 80%) "
          f"{'PASS' if first_ratio >= 0.8 else 'FAIL'}")
    print(f"cached re-read / local disk read:      {cached_ratio:.2f}x (bar <= 1.10x) "
          f"{'PASS' if cached_ratio <= 1.10 else 'FAIL'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
