"""The shadow and its agents under abuse: a stopped shadow, greedy clients."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .test_remote_agent import SPEC, agent, export  # noqa: F401  (the same agent and export)


def start_shadow_process(export: Path, sock: Path, *options: str) -> subprocess.Popen:
    """`bypass shadow` as a process of its own (so that it can be stopped)."""
    p = subprocess.Popen([sys.executable, "-m", "bypass.cli", "shadow", str(SPEC), "--export", str(export),
                          "--listen", f"unix:{sock}", *options], stderr=subprocess.PIPE, text=True,
                         env=dict(os.environ, PYTHONFAULTHANDLER="1"))
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
        stop_shadow_process(shadow)


def stop_shadow_process(shadow: subprocess.Popen) -> None:
    """SIGTERM must end `bypass shadow` promptly; if it does not, show where it hangs."""
    shadow.terminate()
    try:
        shadow.wait(10)
    except subprocess.TimeoutExpired:
        shadow.send_signal(signal.SIGABRT)          # faulthandler prints every thread's stack
        _, err = shadow.communicate(timeout=10)
        raise AssertionError(f"the shadow did not end on SIGTERM:\n{err}") from None


def test_sigterm_ends_the_shadow_at_any_moment(export, tmp_path):
    """However the signal lands (during start-up, idle, twice in a row), `bypass shadow`
    ends at once, cleanly, with its exit status 0 and no traceback."""
    for i, delay in enumerate((0.0, 0.05, 0.3, 0.6, 1.1, 1.7)):
        sock = tmp_path / f"s{i}" / "shadow.sock"
        sock.parent.mkdir(mode=0o700)
        shadow = start_shadow_process(export, sock)
        time.sleep(delay)
        if i % 2:
            shadow.send_signal(signal.SIGINT)       # Ctrl-C, then an impatient SIGTERM
        try:
            stop_shadow_process(shadow)
        finally:
            if shadow.poll() is None:
                shadow.kill()
                shadow.wait()
        err = shadow.stderr.read()
        assert shadow.returncode == 0 and "Traceback" not in err, (shadow.returncode, err)


GREEDY = r'''
import errno, os
fds = []
try:
    while True:
        fds.append(os.open("/job/data/input.txt", os.O_RDONLY))
except OSError as e:
    print(len(fds), errno.errorcode[e.errno], flush=True)
input()
'''

FORKER = r'''
import os

import pytest
os.stat("/job/data")                  # connected: every fork now asks for a ticket
for i in range(300):
    pid = os.fork()
    if pid == 0:
        os._exit(0)                   # a child that never talks to the shadow
    os.waitpid(pid, 0)
print("forked", flush=True)
input()
'''


def test_one_greedy_client_cannot_starve_the_others(agent, export):
    from .test_remote_agent import make_server
    server = make_server(SPEC, str(export), max_fds_per_process=40, max_tickets_per_process=16)
    server.listen()
    server.start()
    env = dict(os.environ, LD_PRELOAD=str(agent), BYPASS_SHADOW=server.address, BYPASS_SHADOW_TIMEOUT="10")
    hogs = []
    try:
        for code in (GREEDY, FORKER):
            hogs.append(subprocess.Popen([sys.executable, "-c", code], env=env, stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, text=True))
        assert hogs[0].stdout.readline() == "40 EMFILE\n"
        assert hogs[1].stdout.readline() == "forked\n"
        with server.lock:
            assert len(server.tickets) <= 16
            held = max(len(p.fds) for p in server.processes.values())
        assert held == 40
        # meanwhile, another agent is served as usual
        p = subprocess.run(["sh", "-c", "wc -l < /job/data/input.txt"], env=env, capture_output=True,
                           text=True, timeout=60)
        assert p.returncode == 0 and p.stdout.strip() == "3000", p.stderr
    finally:
        for h in hogs:
            h.kill()
            h.wait()
        server.close()


def test_descriptors_kept_for_vanished_processes_are_bounded(agent, export):
    """A remote host's processes cannot be seen to exit: their states wait out the grace
    period, but not beyond the budget of descriptors."""
    from .test_remote_agent import make_server
    server = make_server(SPEC, str(export), detached_fd_budget=10)
    server.listen()
    server.start()
    server._process_gone = lambda p: False          # as for a process on another host
    env = dict(os.environ, LD_PRELOAD=str(agent), BYPASS_SHADOW=server.address, BYPASS_SHADOW_TIMEOUT="10")
    try:
        code = "import os\nfor i in range(6): os.open('/job/data/input.txt', os.O_RDONLY)\n"
        for _ in range(4):
            assert subprocess.run([sys.executable, "-c", code], env=env, timeout=60).returncode == 0
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with server.lock:
                held = sum(len(p.fds) for p in server.processes.values())
            if held <= 10:
                break
            time.sleep(0.2)
        assert held <= 10
    finally:
        server.close()


@pytest.mark.parametrize("loop", ["c", "python"])
def test_half_sent_frames_neither_pile_up_nor_stay(loop):
    """Clients that send most of a big frame and stop: the bytes of frames arriving are
    bounded, each frame has a deadline, and a well-behaved client is served meanwhile."""
    import msgpack
    from bypass.rpc.server import ShadowServer
    from .test_rpc_client import frame
    from .test_shadow_loop import TABLE, raw_reply, session
    with ShadowServer(TABLE, loop=loop, max_pending_bytes=1 << 20, frame_timeout=1.0).start() as server:
        stalled = []
        for _ in range(2):
            s = session(server.address)
            try:
                s.sendall((4 << 20).to_bytes(4, "big") + b"\x00" * (200 << 10))   # 200 KiB of 4 MiB
            except (BrokenPipeError, ConnectionResetError):
                pass                            # already turned away: no room for it
            stalled.append(s)
        good = session(server.address)
        good.sendall(frame([-1, 7, "still here"]))
        assert msgpack.unpackb(raw_reply(good)) == [7, 0, ["still here"]]
        t = time.monotonic()
        for s in stalled:
            s.settimeout(10)
            try:
                assert s.recv(1) == b""        # closed by the shadow
            except ConnectionResetError:
                pass                           # (closed with our bytes unread)
        assert time.monotonic() - t < 5
