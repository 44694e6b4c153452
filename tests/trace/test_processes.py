"""Threads, fork, vfork, exec with an explicit environment, posix_spawn(p), system, popen: the program
runs correctly under the agent, and every child is traced too."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from agentrun import run

PROGRAM = Path(__file__).parent / "programs" / "procs.c"


def test_threads_and_children_are_traced(trace_agent, tmp_path):
    binary = tmp_path / "procs"
    subprocess.run(["gcc", "-O2", "-pthread", "-o", str(binary), str(PROGRAM)], check=True)
    marker = tmp_path / "marker.txt"
    marker.write_text("marker\n")
    log = tmp_path / "trace.log"
    done = run([str(binary), str(marker)], agent=trace_agent, env={"BYPASS_TRACE": str(log)})
    assert done.returncode == 0, (done.returncode, done.stderr.decode())
    assert done.stdout.count(b"marker\n") == 6 and done.stdout.endswith(b"done\n")
    lines = log.read_text().splitlines()
    parent = int(lines[0].split()[0])
    opens = [l for l in lines if str(marker) in l and re.search(r" open(64)?\(", l)]
    # 8 threads x 50 opens in the parent, each one traced
    assert sum(1 for l in opens if int(l.split()[0]) == parent) == 8 * 50
    child_pids = {int(l.split()[0]) for l in opens} - {parent}
    # fork+execve, vfork+execve, posix_spawn, posix_spawnp, system's cat, popen's cat, execlp
    assert len(child_pids) >= 7, f"children seen in the trace: {child_pids}"
    text = "\n".join(lines)
    for call in ("execve(", "posix_spawn(", "posix_spawnp(", "system(", "popen(", "execvp("):
        assert call in text, f"{call} missing from the trace"
    assert "<execlp>" in text and "<vfork>" not in text


def test_env_dash_i_keeps_agent(trace_agent, tmp_path):
    log = tmp_path / "trace.log"
    marker = tmp_path / "m.txt"
    marker.write_text("x\n")
    done = run(["bash", "-c", f"env -i /bin/cat {marker}; env -u LD_PRELOAD -u BYPASS_TRACE cat {marker}"],
               agent=trace_agent, env={"BYPASS_TRACE": str(log)})
    assert done.stdout == b"x\nx\n"
    cats = {l.split()[0] for l in log.read_text().splitlines() if str(marker) in l and " open" in l}
    assert len(cats) == 2
