#!/usr/bin/env python3
"""Per-call cost of the remote shadow's hot handlers: what a python3 start-up under /job asks
most (stat, fstat, open, read, close).

    python3 benchmarks/bench_shadow_calls.py [--calls 20000] [--rounds 5] [--profile CALL]

First the handlers without the socket, called straight through the dispatch table of the
shadow generated from agents/remote/remote.bypass (the Python actions), next to the same
operation done by Python's os module on the local path (the floor a Python handler cannot go
under).  Then whole round trips over a Unix socket to the shadow's C call loop, from a client
written in Python (its own cost is in every row alike), with the actions the C loop performs
itself (native) and with the Python actions, interleaved: the difference is what the native
actions save per call.  Best of --rounds, in microseconds per call.
"""
from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import socket
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import msgpack                                       # noqa: E402

from bypass.rpc import neutral                       # noqa: E402
from bypass.rpc.server import CallContext, ProcessState  # noqa: E402
from bypass.rpc.shadow_cli import make_server       # noqa: E402

O_RDONLY = neutral.SETS["open_flags"].to_neutral(os.O_RDONLY)


def best(fn, calls: int, rounds: int) -> float:
    t = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn(calls)
        t = min(t, time.perf_counter() - t0)
    return t / calls * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--profile", help="profile one call (stat, fstat, open+close, read) instead")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-shadow-") as tmp:
        export = Path(tmp)
        pkg = export / "pylib" / "benchpkg" / "__pycache__"
        pkg.mkdir(parents=True)
        f = pkg / "mod1.cpython-311.pyc"
        f.write_bytes(b"x" * 3000)
        server = make_server(REPO / "agents" / "remote" / "remote.bypass", str(export))
        try:
            d = server.dispatch
            ctx = CallContext(server, ProcessState("bench", max_fds=1 << 20), "bench", "linux", {})
            name = "/pylib/benchpkg/__pycache__/mod1.cpython-311.pyc"
            missing = "/pylib/benchpkg/__pycache__/nope.cpython-311.pyc"
            stat_, fstat, open_, read, tally = d[12], d[11], d[1], d[4], d[52]
            open_(ctx, -1, name, O_RDONLY, 0, 0o22, 50, 1)
            local = str(export) + name

            def run_stat(n):
                for _ in range(n):
                    stat_(ctx, -1, name, 1)

            def run_stat_missing(n):
                for _ in range(n):
                    try:
                        stat_(ctx, -1, missing, 1)
                    except FileNotFoundError:
                        pass

            def run_fstat(n):
                for _ in range(n):
                    fstat(ctx, 50)

            def run_open_close(n):
                for _ in range(n):
                    open_(ctx, -1, name, O_RDONLY, 0, 0o22, 7, 1)
                    tally(ctx, 7, 1, 1, 100, 0, 0, 0)    # the agent's close

            def run_read(n):
                fd = ctx.process.get(50).fd
                for _ in range(n):
                    os.lseek(fd, 0, 0)
                    read(ctx, 50, 4096, 4096)

            def floor_stat(n):
                for _ in range(n):
                    os.stat(local)

            def floor_open_close(n):
                for _ in range(n):
                    os.close(os.open(local, os.O_RDONLY))

            runs = {"stat": (run_stat, floor_stat), "stat ENOENT": (run_stat_missing, None),
                    "fstat": (run_fstat, None), "open+close": (run_open_close, floor_open_close),
                    "read 4 KiB": (run_read, None)}
            if args.profile:
                fn = runs[args.profile][0]
                prof = cProfile.Profile()
                prof.runcall(fn, args.calls)
                pstats.Stats(prof).sort_stats("tottime").print_stats(25)
                return 0
            print("handlers alone (Python actions)")
            for what, (fn, floor) in runs.items():
                us = best(fn, args.calls, args.rounds)
                extra = f"   (os module alone {best(floor, args.calls, args.rounds):6.2f} us)" if floor else ""
                print(f"  {what:12s} {us:7.2f} us per call{extra}")
            if server._c_loop is not None:
                wire(server, name, missing, args.calls // 4, args.rounds)
        finally:
            server.close()
    return 0


def _frame(obj) -> bytes:
    body = msgpack.packb(obj, use_bin_type=True)
    return len(body).to_bytes(4, "big") + body


class Client:
    """A raw agent connection: requests sent pre-encoded, replies read whole, not decoded."""

    def __init__(self, server):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(server.address.split(":", 1)[1])
        self._reply()
        info = {"key": f"bench:{os.getpid()}:{time.monotonic_ns()}", "pid": os.getpid()}
        self.sock.sendall(_frame(["bypass-agent", 1, server.spec_hash, info, b"n" * 32, None]))
        assert msgpack.unpackb(self._reply())[0] == "welcome"

    def _reply(self) -> bytes:
        recv, head = self.sock.recv, b""
        while len(head) < 4:
            head += recv(4 - len(head))
        n = int.from_bytes(head, "big")
        body = recv(n)
        while len(body) < n:
            body += recv(n - len(body))
        return body

    def call(self, request: bytes) -> bytes:
        self.sock.sendall(request)
        return self._reply()

    def close(self):
        self.sock.close()


def wire(server, name: str, missing: str, calls: int, rounds: int) -> None:
    """Round trips through the C loop, native actions against Python ones, interleaved."""
    server.start()
    clients = {}
    for native in (True, False):
        server.native_actions = native          # taken when a connection starts
        c = clients[native] = Client(server)
        assert msgpack.unpackb(c.call(_frame([1, 1, -1, name, O_RDONLY, 0, 0o22, 50, 1])))[1] == 0
    server.native_actions = True
    rows = {"stat": _frame([12, 2, -1, name, 1]), "stat ENOENT": _frame([12, 2, -1, missing, 1]),
            "fstat": _frame([11, 2, 50]), "pread 4 KiB": _frame([5, 2, 50, 4096, 0])}
    print("round trips over the socket (C loop)         native   Python actions")
    for what, request in rows.items():
        t = {True: float("inf"), False: float("inf")}
        assert clients[True].call(request) == clients[False].call(request)
        for _ in range(rounds):
            for native, c in clients.items():
                t0 = time.perf_counter()
                for _ in range(calls):
                    c.call(request)
                t[native] = min(t[native], (time.perf_counter() - t0) / calls * 1e6)
        print(f"  {what:12s}                            {t[True]:7.2f} us  {t[False]:7.2f} us")
    for c in clients.values():
        c.close()


if __name__ == "__main__":
    sys.exit(main())
