#!/usr/bin/env python3
"""The webfs agent with a warm cache against the same tree on local disk, in one run.

    python3 benchmarks/bench_webfs.py [--reps 7]

The tree is real software: a slice of this machine's Python standard library (json, email, http,
xml, logging, importlib, collections, unittest, asyncio, concurrency: about 500 files) plus a copy
of a small program, published with the real make_growfs and with `bypass publish` (a signed
repository: nested SQLite catalogs, compressed objects), served by http.server on 127.0.0.1.
The job, run through `sh -c`:

* find + cat - `find TREE -type f -exec cat {} +` into md5sum, and `ls -lR` of the tree;
* import     - python3 -S -B with PYTHONPATH=TREE importing every package of the slice (the
               tree's copies shadow the installed ones: -S and the path put them first);
* run        - the tree's program run 10 times from a shell loop.

Each round runs the job four ways (after one warm-up of each, which also fills the cache): on
local disk without any agent; on local disk with the agent loaded and the tree mounted but not
used (the price of preloading any agent into every process: the job starts ~16 processes); from
/software through webfs (GROW-FS); and from /repo through webfs (the Bypass repository).  The table gives medians of wall time over rounds, and the
median of the per-round ratios to local disk (steadier on a shared machine).  The bar
(DESIGN.md section 6) is 1.05x local disk.
Cold cache: bytes fetched against the tree's size and the time of the first run, and the time
curl takes to fetch every file of the tree, 8 at a time, without an agent.
"""

from __future__ import annotations

import argparse
import http.server
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PACKAGES = ["json", "email", "http", "xml", "logging", "importlib", "collections", "unittest", "asyncio",
            "concurrent", "urllib", "html", "encodings"]


def make_tree(work: Path) -> Path:
    """The plain tree (what local-disk runs use), published twice under work/site: as a GROW-FS
    tree (site/tree) and as a signed Bypass repository (site/repo, key work/k.pub)."""
    tree = work / "plain"
    std = Path(sysconfig.get_paths()["stdlib"])
    for name in PACKAGES:
        shutil.copytree(std / name, tree / "lib" / name, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__", "test", "tests"))
    (tree / "bin").mkdir(parents=True)
    shutil.copy2(shutil.which("true"), tree / "bin" / "tool")
    shutil.copytree(tree, work / "site" / "tree", symlinks=True)
    subprocess.run(["make_growfs", "tree"], cwd=work / "site", check=True, capture_output=True)
    from bypass.publish import keygen, publish
    keygen(work / "k")
    publish(tree, work / "site" / "repo", work / "k")
    return tree


def job(tree: str) -> str:
    imports = "; ".join(f"import {p}" for p in PACKAGES if p != "encodings")
    return (f"find {tree} -type f -exec cat {{}} + | md5sum >/dev/null && ls -lR {tree} >/dev/null && "
            f"PYTHONPATH={tree}/lib python3 -S -B -c '{imports}' && "
            f"i=0; while [ $i -lt 10 ]; do {tree}/bin/tool; i=$((i+1)); done")


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def do_GET(self):  # noqa: N802
        self.server.sent += 1
        local = Path(self.translate_path(self.path))
        if local.is_file():
            self.server.bytes += local.stat().st_size
        super().do_GET()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=11)
    args = ap.parse_args(argv)
    if shutil.which("make_growfs") is None:
        print("make_growfs is needed: apt-get install coop-computing-tools", file=sys.stderr)
        return 2
    from bypass.build import build

    with tempfile.TemporaryDirectory(prefix="bench-webfs-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        tree = make_tree(work)
        agent = build(ROOT / "agents" / "webfs" / "webfs.bypass", work / "webfs.so")
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                                lambda *a, **k: Quiet(*a, directory=str(work / "site"), **k))
        httpd.sent = httpd.bytes = 0
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        try:
            base = {k: v for k, v in os.environ.items() if not k.startswith("BYPASS_") and k != "LD_PRELOAD"}
            url = f"http://127.0.0.1:{httpd.server_address[1]}"
            webfs = dict(base, LD_PRELOAD=str(agent), BYPASS_WEBFS_CACHE=str(work / "cache"),
                         BYPASS_WEBFS_MOUNTS=f"/software={url}/tree /repo={url}/repo,key={work}/k.pub")

            def timed(cmd: str, env: dict) -> float:
                t0 = time.perf_counter()
                subprocess.run(["sh", "-c", cmd], env=env, check=True)
                return time.perf_counter() - t0

            size = sum(p.stat().st_size for p in tree.rglob("*") if p.is_file())
            count = sum(1 for p in tree.rglob("*") if p.is_file())
            for name, mount in (("GROW-FS", "/software"), ("repository", "/repo")):
                httpd.sent, httpd.bytes = 0, 0
                cold = timed(job(mount), webfs)
                print(f"cold cache, {name}: {cold:.2f} s, {httpd.sent} requests, {httpd.bytes / 1e6:.1f} MB sent "
                      f"for a {size / 1e6:.1f} MB tree ({count} files)")
            if shutil.which("curl"):
                # what the cold job's downloads cost without an agent: every file of the tree
                # (the job reads them all) fetched by curl, 8 transfers at a time
                listing = work / "curl.cfg"
                listing.write_text("".join(f'url = "{url}/tree/{p.relative_to(tree)}"\noutput = "/dev/null"\n'
                                           for p in sorted(tree.rglob("*")) if p.is_file()))
                httpd.sent = 0
                fetch = timed(f"curl -s -f --no-progress-meter -Z --parallel-max 8 -K {listing}", base)
                print(f"cold, the same {count} files fetched by curl (8 in parallel, no agent): {fetch:.2f} s, "
                      f"{httpd.sent} requests")
            timed(job(str(tree)), base)
            timed(job(str(tree)), webfs)
            variants = {"local disk": (job(str(tree)), base), "agent, local": (job(str(tree)), webfs),
                        "webfs warm": (job("/software"), webfs), "repo warm": (job("/repo"), webfs)}
            runs = {name: [] for name in variants}
            ratios = {name: [] for name in variants if name != "local disk"}
            for rnd in range(args.reps):
                # the order alternates between rounds, so that a drift in the machine's load does
                # not always fall on the same variant
                names = list(variants) if rnd % 2 == 0 else list(variants)[::-1]
                got = {name: timed(*variants[name]) for name in names}
                for name, t in got.items():
                    runs[name].append(t)
                    if name in ratios:
                        ratios[name].append(t / got["local disk"])
            print("job: find+cat of every file, ls -lR, python imports, the tree's program 10 times")
            print(f"{'':14} {'median wall':>12} {'ratio':>8} {'median of round ratios':>24}")
            for name, times in runs.items():
                ratio = statistics.median(times) / statistics.median(runs["local disk"])
                rr = f"{statistics.median(ratios[name]):.3f}x" if name in ratios else "-"
                print(f"{name:14} {statistics.median(times):11.3f}s {ratio:7.3f}x {rr:>24}")
            print(f"{args.reps} rounds; bar: webfs warm and repo warm <= 1.05x local disk")
        finally:
            httpd.shutdown()
            httpd.server_close()
            for p in (work / "cache").rglob("*") if (work / "cache").exists() else []:
                if p.is_dir() and not p.is_symlink():
                    p.chmod(0o755)
    return 0


if __name__ == "__main__":
    sys.exit(main())
