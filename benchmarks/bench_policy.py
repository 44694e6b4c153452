#!/usr/bin/env python3
"""The seeds' lesson (issue 16): a job reads a 20 MB file randomly in small records through a
shadow with added latency.  With the default policy (remote calls, sequential read-ahead) every
record costs a seek and a round trip; with `buffer_size` raised to the file's size the file
comes over once, in blocks, and the seeks stay in the agent.

    python3 benchmarks/bench_policy.py [--records 4000] [--record 512] [--delay-ms 0.5] [--rounds 3]

Runs, side by side, each as a ratio to the same job on local disk (the job times its own loop):

  local         the file on local disk, no agent
  default       /job through the shadow, no policy
  condor 512K   buffer_size = 524288, buffer_block_size = 32768 (Condor's defaults)
  file-sized    buffer_size = 20971520, buffer_block_size = 262144
  staged        fetch_files = *.dat

The shadow is served by this process; every call it answers waits --delay-ms first (a WAN-ish
shadow).  The I/O report of each run gives the seeks and the bytes read by the program and over
the wire.  Best of --rounds.
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

from bypass.build import build_cached                # noqa: E402
from bypass.rpc.policy import parse                  # noqa: E402
from bypass.rpc.shadow_cli import make_server        # noqa: E402

SPEC = REPO / "agents" / "remote" / "remote.bypass"
SIZE = 20 * 1024 * 1024

JOB = r"""
import os, random, sys, time
path, records, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rnd = random.Random(1)
fd = os.open(path, os.O_RDONLY)
end = os.fstat(fd).st_size - size
t = time.perf_counter()
total = 0
for _ in range(records):
    os.lseek(fd, rnd.randrange(end), os.SEEK_SET)
    total += len(os.read(fd, size))
print(time.perf_counter() - t, total)
os.close(fd)
"""

POLICIES = {
    "default": None,
    "condor 512K": "buffer_size = 524288\nbuffer_block_size = 32768\n",
    "file-sized": f"buffer_size = {SIZE}\nbuffer_block_size = 262144\n",
    "staged": "fetch_files = *.dat\n",
}


def delayed(handler, seconds):
    def slow(ctx, *args):
        time.sleep(seconds)
        return handler(ctx, *args)
    return slow


def run_remote(agent, export, job, policy_text, args):
    policy = parse(policy_text, "<bench>", 0, str(export)) if policy_text else None
    server = make_server(SPEC, str(export), policy=policy)
    server.dispatch = {n: delayed(h, args.delay_ms / 1000) for n, h in server.dispatch.items()}
    env = dict(os.environ, LD_PRELOAD=str(agent), BYPASS_SHADOW=server.listen(None))
    server.start()
    try:
        p = subprocess.run([sys.executable, str(job), "/job/in.dat", str(args.records), str(args.record)],
                           env=env, capture_output=True, text=True, timeout=3600)
    finally:
        server.close()
    if p.returncode != 0:
        raise SystemExit(f"job failed: {p.stderr}")
    report = server.module.report()
    totals = report.totals()
    return float(p.stdout.split()[0]), totals


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=4000)
    ap.add_argument("--record", type=int, default=512, help="bytes per record")
    ap.add_argument("--delay-ms", type=float, default=0.5, help="added to every call the shadow answers")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    agent = build_cached(SPEC)
    work = Path(tempfile.mkdtemp(prefix="bench-policy-", dir="/var/tmp"))
    try:
        export = work / "export"
        export.mkdir()
        (export / "in.dat").write_bytes(os.urandom(SIZE))
        job = work / "job.py"
        job.write_text(JOB)
        best: dict[str, float] = {}
        reports: dict[str, dict] = {}
        for _ in range(args.rounds):
            p = subprocess.run([sys.executable, str(job), str(export / "in.dat"), str(args.records),
                                str(args.record)], capture_output=True, text=True, check=True)
            best["local"] = min(best.get("local", 1e9), float(p.stdout.split()[0]))
            for name, text in POLICIES.items():
                seconds, totals = run_remote(agent, export, job, text, args)
                if seconds < best.get(name, 1e9):
                    best[name], reports[name] = seconds, totals
        print(f"{args.records} random reads of {args.record} bytes from a 20 MiB file, shadow delay "
              f"{args.delay_ms} ms per call, best of {args.rounds}")
        print(f"{'run':14} {'seconds':>9} {'x local':>9} {'seeks':>7} {'MB read':>9} {'MB over wire':>13} "
              f"{'wire calls':>10}")
        print(f"{'local':14} {best['local']:9.4f} {1.0:9.1f}")
        for name in POLICIES:
            t = reports[name]
            print(f"{name:14} {best[name]:9.4f} {best[name] / best['local']:9.1f} {t['seeks']:7} "
                  f"{t['bytes_read'] / 1e6:9.1f} {t['wire']['bytes_read'] / 1e6:13.1f} {t['wire']['reads']:10}")
        print(f"file-sized buffer vs default: {best['default'] / best['file-sized']:.1f} x faster")
    finally:
        shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
