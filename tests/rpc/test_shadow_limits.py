"""The shadow and its agents under abuse: a stopped shadow, greedy clients."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .test_remote_agent import SPEC, agent, export  # noqa: F401  (the same agent and export)


def start_shadow_process(export: Path, sock: Path, *options: str) -> subprocess.Popen:
    """`bypass shadow` as a process of its own (so that it can be stopped)."""
    p = subprocess.Popen([sys.executable, "-m", "bypass.cli", "shadow", str(SPEC), "--export", str(export),
                          "--listen", f"unix:{sock}", *options], stderr=subprocess.PIPE, text=True)
    for _ in range(200):
        if sock.exists():
            return p
        if p.poll() is not None:
            raise AssertionError(f"the shadow did not start: {p.stderr.read()}")
        time.sleep(0.05)
    p.kill()
    raise AssertionError("the shadow did not listen")


WRITER = r'''
import os, sys, time
fd = os.open("/job/big", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
print("opened", flush=True)
sys.stdin.readline()                   # the shadow is stopped now
t = time.monotonic()
try:
    os.write(fd, b"x" * (8 << 20))
    print("written")
except OSError as e:
    print("failed", e.errno)
print(round(time.monotonic() - t, 1), flush=True)
'''


def test_a_stopped_shadow_costs_one_timeout_per_call(agent, export, tmp_path):
    sock = tmp_path / "s" / "shadow.sock"
    sock.parent.mkdir(mode=0o700)
    shadow = start_shadow_process(export, sock)
    try:
        env = dict(os.environ, LD_PRELOAD=str(agent), BYPASS_SHADOW=f"unix:{sock}", BYPASS_SHADOW_TIMEOUT="2")
        p = subprocess.Popen([sys.executable, "-c", WRITER], env=env, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert p.stdout.readline() == "opened\n"
        os.kill(shadow.pid, signal.SIGSTOP)
        p.stdin.write("go\n")
        p.stdin.flush()
        out, err = p.communicate(timeout=30)
        lines = out.splitlines()
        assert lines[0] == "failed 5", (out, err)           # EIO: never reported written
        assert float(lines[1]) <= 2.5, f"the write took {lines[1]} s with a 2 s timeout"
        assert "shadow" in err
    finally:
        os.kill(shadow.pid, signal.SIGCONT)
        shadow.terminate()
        shadow.wait(10)
