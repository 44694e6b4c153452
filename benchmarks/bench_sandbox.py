#!/usr/bin/env python3
"""The sandbox agent against native, fakechroot and proot, in one run.

    python3 benchmarks/bench_sandbox.py [--reps 5] [--only native,sandbox] [--quick]

Workloads (all in a work directory under /var/tmp, writable in the sandbox's mount list):

* stat loop  - a C program calling stat() on an absolute path N times (ns per call), and
               open()+close() likewise;
* untar      - extract a source tree (about 2,000 headers, 23 MB, from /usr/include);
* find       - find over that tree, stat'ing every file (8 passes);
* cp -r      - copy the tree;
* build      - make -j2 of a generated 48-file C project.

and, for the sandbox alone, the start-up of a process of the run: what its first process
spends reading the list, making the private directory, installing the Landlock ruleset and
sealing the policy, and what every later process spends reading the sealed policy (CPU time of
each step, which the agent reports under `BYPASS_DEBUG=process`), plus what Landlock's checks
cost a `/bin/true` child at run time (kernel enforcement on against off, interleaved).

Each workload runs `--reps` rounds (every tool once per round, after one warm-up run each); the
table shows medians of wall time and of CPU time (user+sys of all processes) and their ratio to
native; a second table gives, per workload, the median over rounds of the CPU-time ratio within
each round, which cancels slow changes in the machine's load (the steadiest figure on a busy
machine).
The sandbox runs with a realistic mount list: `/ rx`, a PRIVATE /tmp, a DENY'd /home and the work
directory writable.  fakechroot runs as `fakechroot chroot /` (so that it translates every path)
and proot as `proot -r /`.
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LOOP_C = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1e9 + t.tv_nsec; }
int main(int argc, char **argv) {
    int n = atoi(argv[1]);
    const char *path = argv[2];
    struct stat st;
    for (int i = 0; i < 1000; i++) stat(path, &st);          /* warm up */
    double t0 = now();
    for (int i = 0; i < n; i++) if (stat(path, &st) != 0) return 1;
    double t1 = now();
    for (int i = 0; i < n / 4; i++) { int fd = open(path, O_RDONLY); if (fd < 0) return 1; close(fd); }
    double t2 = now();
    printf("%.1f %.1f\n", (t1 - t0) / n, (t2 - t1) / (n / 4));
    return 0;
}
"""

TOOLS = ("native", "sandbox", "fakechroot", "proot")


def sh(cmd: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", cmd], check=True, capture_output=True, text=True, **kw)


class Bench:
    def __init__(self, work: Path, reps: int, quick: bool, agent: str | None = None):
        self.w = work
        self.reps = reps
        self.quick = quick
        self.agent: Path | None = Path(agent).resolve() if agent else None
        self.paired: dict[str, dict[str, float]] = {}

    # ------------------------------------------------------------ setup
    def setup(self, tools: list[str]) -> None:
        w = self.w
        (w / "out").mkdir()
        dirs = "include/linux include/x86_64-linux-gnu include/asm-generic"
        if not self.quick:
            dirs += " include/c++"
        sh(f"cd /usr && tar -cf {w}/src.tar {dirs} $(cd /usr && ls include/*.h)")
        (w / "tree").mkdir()
        sh(f"tar -xf {w}/src.tar -C {w}/tree")
        subprocess.run(["gcc", "-O2", "-o", str(w / "loop"), "-x", "c", "-"], input=LOOP_C, text=True,
                       check=True)
        proj = w / "proj"
        proj.mkdir()
        files = 16 if self.quick else 48
        for i in range(files):
            body = "\n".join(f"int f{i}_{j}(int x) {{ int s = 0; for (int k = 0; k < x; k++) s += k * {j}; "
                             f"return s ^ {i}; }}" for j in range(40))
            (proj / f"m{i}.c").write_text(f'#include <stdio.h>\n#include <string.h>\n#include "p.h"\n{body}\n')
        (proj / "p.h").write_text("int f0_0(int);\n")
        (proj / "main.c").write_text('#include "p.h"\nint main(void){return f0_0(3) & 0;}\n')
        (proj / "Makefile").write_text(textwrap.dedent("""\
            O ?= build
            SRC := $(wildcard *.c)
            OBJ := $(SRC:%.c=$(O)/%.o)
            $(O)/app: $(OBJ)
            \t$(CC) -o $@ $^
            $(O)/%.o: %.c p.h | $(O)
            \t$(CC) -O1 -c -o $@ $<
            $(O):
            \tmkdir -p $@
            """))
        (w / "mounts.txt").write_text(textwrap.dedent(f"""\
            /          rx
            /tmp       PRIVATE
            /home      DENY
            {w}        rwx
            """))
        if "sandbox" in tools and self.agent is None:
            from bypass.build import build
            self.agent = Path(build(ROOT / "agents" / "sandbox" / "sandbox.bypass", w / "sandbox.so"))
        for tool in tools:
            if tool in ("fakechroot", "proot") and not shutil.which(tool):
                raise SystemExit(f"{tool} is not installed (Debian: apt-get install {tool})")

    # ------------------------------------------------------------ running
    def command(self, tool: str, script: str) -> tuple[list[str], dict[str, str]]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BYPASS_", "LD_PRELOAD"))}
        env["LC_ALL"] = "C"
        argv = ["bash", "-c", script]
        if tool == "sandbox":
            # as a user runs it: the private directory where the agent puts it by default (in
            # the real /tmp, which the list hides) and removed at the end by the run's helper
            env.update(LD_PRELOAD=str(self.agent), BYPASS_MOUNTS=str(self.w / "mounts.txt"))
        elif tool == "fakechroot":
            argv = ["fakechroot", "chroot", "/"] + argv
        elif tool == "proot":
            argv = ["proot", "-r", "/"] + argv
        return argv, env

    def run(self, tool: str, script: str) -> tuple[float, str]:
        """Wall time of the command; self.last_cpu gets its CPU time (user+sys, all processes)."""
        argv, env = self.command(tool, script)
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        p = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=self.w)
        t = time.perf_counter() - t0
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.last_cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        if p.returncode != 0:
            raise RuntimeError(f"{tool}: {script!r} failed ({p.returncode}): {p.stderr[-800:]}")
        return t, p.stdout

    def workloads(self):
        w = self.w
        n = 50_000 if self.quick else 200_000

        def stat_loop(tool):
            _, out = self.run(tool, f"{w}/loop {n} /usr/include/stdio.h")
            s, o = out.split()
            return float(s), float(o)

        def reset(*paths):
            for p in paths:
                shutil.rmtree(w / p, ignore_errors=True)

        real = [
            ("untar", lambda: reset("out/untar") or (w / "out/untar").mkdir(),
             f"tar -xf {w}/src.tar -C {w}/out/untar"),
            ("find", lambda: None,
             f"for i in 1 2 3 4 5 6 7 8; do find {w}/tree -type f -size +1k; done | wc -l"),
            ("cp -r", lambda: reset("out/copy"), f"cp -r {w}/tree {w}/out/copy"),
            ("build", lambda: reset("out/build"), f"make -s -j2 -C {w}/proj O={w}/out/build"),
        ]
        return stat_loop, real

    def measure(self, tools: list[str]) -> dict:
        stat_loop, real = self.workloads()
        results: dict[str, dict[str, float]] = {}
        for tool in tools:
            stats = [stat_loop(tool) for _ in range(self.reps)]
            results.setdefault("stat (ns/call)", {})[tool] = statistics.median(s for s, _ in stats)
            results.setdefault("open+close (ns/call)", {})[tool] = statistics.median(o for _, o in stats)
            print(f"  {tool:10} stat loop done", file=sys.stderr)
        for name, prepare, script in real:
            times: dict[str, list[float]] = {t: [] for t in tools}
            cpus: dict[str, list[float]] = {t: [] for t in tools}
            for tool in tools:                      # one warm-up run each (page cache)
                prepare()
                self.run(tool, script)
            for _ in range(self.reps):              # rounds: every tool once per round
                for tool in tools:
                    prepare()
                    t, _ = self.run(tool, script)
                    times[tool].append(t)
                    cpus[tool].append(self.last_cpu)
            for tool in tools:
                results.setdefault(f"{name} (s)", {})[tool] = statistics.median(times[tool])
                results.setdefault(f"{name} (cpu s)", {})[tool] = statistics.median(cpus[tool])
                if "native" in tools:
                    # ratio within each round, then the median: slow changes in the machine's
                    # load (other jobs) cancel out
                    paired = [c / n for c, n in zip(cpus[tool], cpus["native"]) if n > 0]
                    self.paired.setdefault(name, {})[tool] = statistics.median(paired)
                print(f"  {tool:10} {name} {statistics.median(times[tool]):.3f}s "
                      f"cpu {statistics.median(cpus[tool]):.3f}s", file=sys.stderr)
        return results


    # ------------------------------------------------------------ start-up
    def startup_run(self, script: str, extra: dict[str, str] | None = None) -> list[str]:
        """The agent's start-up lines (BYPASS_DEBUG=process) of one sandboxed run of script."""
        log = self.w / "startup.log"
        log.unlink(missing_ok=True)
        argv, env = self.command("sandbox", script)
        env.update(BYPASS_DEBUG="process", BYPASS_DEBUG_FILE=str(log), **(extra or {}))
        subprocess.run(argv, env=env, capture_output=True, text=True, cwd=self.w, check=True)
        text = log.read_text() if log.exists() else ""
        return [line for line in text.splitlines() if "sandbox start-up" in line]

    def startup(self, rounds: int) -> str:
        """Start-up of a process of the run, step by step (see the module's docstring)."""
        def steps(line: str) -> dict[str, float]:
            # "... (CPU time, us): list read 175.2, private directory 297.3, Landlock 867.4
            # (55 rules), policy sealed 48.5, installed 5.7, in all 1394.4"
            out = {}
            for part in line.split("us):", 1)[1].split(","):
                words = part.split("(")[0].split()
                if words:
                    out[" ".join(words[:-1])] = float(words[-1])
                if "rules)" in part:
                    out["rules"] = float(part.split("(")[1].split()[0])
            return out

        first: list[dict[str, float]] = []
        later: list[dict[str, float]] = []
        for _ in range(rounds):
            first += [steps(x) for x in self.startup_run("/bin/true") if "first process" in x]
            later += [steps(x) for x in self.startup_run("for i in 1 2 3 4 5 6 7 8 9 10; do /bin/true; done")
                      if "a process of the run" in x]
        # Landlock's own checks at run time (every open and exec walks the ruleset): CPU time of
        # children with kernel enforcement on against off, the two interleaved
        n = 100 if self.quick else 300
        loop = f"i=0; while [ $i -lt {n} ]; do /bin/true; i=$((i+1)); done"
        per_child = []
        for _ in range(rounds):
            cpu = {}
            for ll in ("1", "0"):
                argv, env = self.command("sandbox", loop)
                env["BYPASS_SANDBOX_KERNEL_ENFORCEMENT"] = ll
                r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
                subprocess.run(argv, env=env, capture_output=True, cwd=self.w, check=True)
                r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpu[ll] = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
            per_child.append((cpu["1"] - cpu["0"]) / n * 1e6)

        def cell(rows: list[dict[str, float]], key: str) -> str:
            v = [r[key] for r in rows if key in r]
            if not v:
                return "-"
            return f"{statistics.median(v):7.1f}  [{min(v):.1f}-{max(v):.1f}]"

        lines = [f"start-up of a process of the run, CPU time in us: median [min-max] "
                 f"({len(first)} first processes, {len(later)} later ones)", "-" * 72]
        for key in ("list read", "private directory", "Landlock", "policy sealed", "installed",
                    "in all"):
            lines.append(f"  first process: {key:33}{cell(first, key)}")
        if first and "rules" in first[0]:
            lines.append(f"  first process: {'Landlock rules added':33}{first[0]['rules']:7.0f}")
        for key in ("sealed policy checked and read", "list installed", "in all"):
            lines.append(f"  later process: {key:33}{cell(later, key)}")
        lines.append(f"  Landlock's checks at run time, per /bin/true child: "
                     f"{statistics.median(per_child):.0f} us [{min(per_child):.0f} to {max(per_child):.0f}]")
        seal = [r.get("Landlock", 0) + r.get("policy sealed", 0) for r in first]
        read = [r.get("sealed policy checked and read", 0) for r in later]
        if seal and read:
            lines.append(f"  bar 300 us per process: first process seals and installs Landlock in "
                         f"{statistics.median(seal):.0f} us, a later process reads the policy in "
                         f"{statistics.median(read):.0f} us")
        return "\n".join(lines)


def table(results: dict, tools: list[str]) -> str:
    head = f"{'workload':22}" + "".join(f"{t:>20}" for t in tools)
    lines = [head, "-" * len(head)]
    for name, row in results.items():
        base = row.get("native")
        cells = []
        for t in tools:
            v = row.get(t)
            if v is None:
                cells.append(f"{'-':>20}")
            elif base and t != "native":
                cells.append(f"{v:>11.3f} ({v / base:5.2f}x)")
            else:
                cells.append(f"{v:>20.3f}")
        lines.append(f"{name:22}" + "".join(cells))
    for unit, label in (("(s)", "wall"), ("(cpu s)", "cpu")):
        real = [n for n in results if n.endswith(unit)]
        if "native" not in tools or not real:
            continue
        lines.append("")
        for t in tools:
            if t == "native":
                continue
            ratios = [results[n][t] / results[n]["native"] for n in real]
            gm = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
            lines.append(f"{t:10} real work ({label}): geometric mean {gm:.2f}x native, "
                         f"worst {max(ratios):.2f}x")
    return "\n".join(lines)


def paired_table(paired: dict, tools: list[str]) -> str:
    others = [t for t in tools if t != "native"]
    head = f"{'CPU time / native, median of per-round ratios':48}" + "".join(f"{t:>12}" for t in others)
    lines = [head, "-" * len(head)]
    for name, row in paired.items():
        lines.append(f"{name:48}" + "".join(f"{row[t]:>11.2f}x" for t in others))
    if paired:
        gm = {t: math.exp(sum(math.log(row[t]) for row in paired.values()) / len(paired)) for t in others}
        lines.append(f"{'geometric mean':48}" + "".join(f"{gm[t]:>11.2f}x" for t in others))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--only", help="comma-separated tools (default: all of %s)" % ", ".join(TOOLS))
    ap.add_argument("--quick", action="store_true", help="smaller inputs (a smoke run)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--agent", help="use this prebuilt sandbox agent instead of building one")
    ap.add_argument("--startup-rounds", type=int, default=10,
                    help="rounds of the start-up measurement (0: leave it out)")
    ap.add_argument("--startup-only", action="store_true",
                    help="measure only the sandbox's start-up (no workloads, no other tools)")
    args = ap.parse_args(argv)
    tools = args.only.split(",") if args.only else list(TOOLS)
    work = Path(tempfile.mkdtemp(prefix="bypass-bench-sandbox-", dir="/var/tmp")).resolve()
    try:
        bench = Bench(work, args.reps, args.quick, args.agent)
        if args.startup_only:
            tools = ["sandbox"]
        bench.setup(tools)
        if not args.startup_only:
            results = bench.measure(tools)
            print(table(results, tools))
            if "native" in tools and len(tools) > 1:
                print()
                print(paired_table(bench.paired, tools))
        if "sandbox" in tools and args.startup_rounds > 0:
            print()
            print(bench.startup(args.startup_rounds))
    finally:
        if args.keep:
            print(f"work directory kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
