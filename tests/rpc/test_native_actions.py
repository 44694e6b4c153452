"""The actions the shadow's C loop performs itself (c/shadow_loop.c, "native actions": the remote
agent's stat, fstat, read and pread) against the Python actions they stand for: byte-identical
replies and the same report counts for the same requests, and the same results for a program
under the agent, whichever loop serves it."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import msgpack
import pytest

from bypass.rpc import neutral
from bypass.rpc.shadow_cli import make_server

from .test_remote_agent import SPEC, agent  # noqa: F401  (the same agent)

O_RDONLY = neutral.open_flags.to_neutral(os.O_RDONLY)
O_DIR = neutral.open_flags.to_neutral(os.O_RDONLY | os.O_DIRECTORY)
O_PATH = neutral.open_flags.to_neutral(os.O_PATH)
LOOPS = ("native", "c", "python")      # C loop with native actions, C loop without, Python loop


def _servers(export: Path) -> dict:
    servers = {}
    for name in LOOPS:
        s = make_server(SPEC, str(export), loop="python" if name == "python" else "c")
        s.native_actions = name == "native"
        servers[name] = s.start()
    return servers


@pytest.fixture
def tree():
    """An export with files, a directory, symlinks inside, escaping and into /job, and a
    directory only root may enter (under a top that others may traverse)."""
    top = Path(tempfile.mkdtemp(prefix="bypass-native-"))
    os.chmod(top, 0o755)
    root = top / "export"
    (root / "d" / "sub").mkdir(parents=True)
    (root / "f").write_bytes(bytes(range(256)) * 400)          # 100 KiB
    (root / "d" / "g").write_text("g\n")
    (root / os.fsdecode(b"\xff\xfename")).write_text("not utf-8\n")
    os.symlink("/etc/passwd", root / "abs")                     # inside the root: missing
    os.symlink("../../../../../etc/hostname", root / "rel")     # ".." stops at the root
    os.symlink("/job/d/g", root / "tojob")                      # an absolute link into /job
    os.symlink("/job/nope", root / "tojob-missing")
    os.symlink("d", root / "dirlink")
    os.symlink("loop", root / "loop")
    os.symlink("nope", root / "dangling")
    (root / "locked").mkdir()
    (root / "locked" / "secret").write_text("secret\n")
    os.chmod(root / "locked", 0o700)
    (root / "pub").write_text("public\n")
    yield top, root
    shutil.rmtree(top)


class Raw:
    """An agent connection speaking the wire protocol directly; replies kept as bytes."""

    def __init__(self, server, key: str):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(10)
        self.sock.connect(server.address.split(":", 1)[1])
        self.reply()
        info = {"key": key, "pid": os.getpid()}
        self.send(["bypass-agent", 1, server.spec_hash, info, b"n" * 32, None])
        assert msgpack.unpackb(self.reply())[0] == "welcome"

    def send(self, obj):
        body = msgpack.packb(obj, use_bin_type=True, unicode_errors="surrogateescape")
        self.sock.sendall(len(body).to_bytes(4, "big") + body)

    def reply(self) -> bytes:
        data = b""
        while len(data) < 4 or len(data) < 4 + int.from_bytes(data[:4], "big"):
            chunk = self.sock.recv(1 << 20)
            assert chunk, "connection closed"
            data += chunk
        assert len(data) == 4 + int.from_bytes(data[:4], "big")
        return data[4:]

    def call(self, *request) -> bytes:
        self.send(list(request))
        return self.reply()


# (call, args...): stat is 12 (dslot, path, follow), fstat 11 (slot), read 4 (slot, count,
# want), pread 5 (slot, count, offset); slots 20.. are opened first (open is 1).
OPENS = [(20, "/f", O_RDONLY), (21, "/d", O_DIR), (22, "/pub", O_PATH), (23, "/f", O_RDONLY),
         (24, "/d/g", O_RDONLY)]
LONG = "/" + "/".join(["d"] * 2100)            # over PATH_MAX: walked by hand
REQUESTS = [
    *[(12, -1, p, follow) for follow in (1, 0) for p in (
        "/f", "f", "", "/", "//d//g", "/d/../f", "/../../f", "/f/", "/f/x", "/f/.", "/d/", "/d/.",
        "/nope", "/nope/x", "/nope/", "/abs", "/rel", "/tojob", "/tojob-missing", "/tojob/",
        "/dirlink", "/dirlink/", "/dirlink/g", "/loop", "/loop/", "/dangling", "/dangling/",
        "/locked", "/locked/secret", os.fsdecode(b"/\xff\xfename"), LONG, LONG + "x", "/f\0/x")],
    (12, -1, "/f", 2), (12, -5, "/f", 1), (12, 21, "g", 1), (12, 21, "../f", 1), (12, 99, "g", 1),
    (12, -1, b"/f", 1), (12, -1, "/f", "1"), (12, -1, "/f"), (12, -1, "/f", 1, 2), (12, -1, None, 1),
    *[(11, slot) for slot in (20, 21, 22, 23, 24, 99, -1, 2 ** 40)],
    (11, "20"), (11, 20.0), (11,), (11, 20, 1),
    (4, 20, 100, 100), (4, 20, 10, 5000), (4, 20, 4096, 65536), (4, 20, 1, 65537),
    (4, 20, 70000, 70000), (4, 23, 0, 0), (4, 21, 10, 10), (4, 22, 10, 10), (4, 99, 10, 10),
    (4, 20, -1, -1), (4, 20, 10, -1), (4, 24, 100, 100), (4, 24, 100, 100),
    (4, 20, 17 << 20, 17 << 20), (4, 20, 1, "x"),
    (5, 23, 100, 0), (5, 23, 100, 102350), (5, 23, 100, 1 << 40), (5, 23, 100, -1),
    (5, 23, 70000, 5), (5, 23, -1, 0), (5, 21, 10, 0), (5, 22, 10, 0), (5, 99, 1, 0),
    (5, 23, 0, 0), (5, 23, 1, 2 ** 63 + 5),
    (36, 23, 25),                                  # dup: slot 23's file now shared
    (4, 23, 100, 65536), (4, 25, 100, 65536), (5, 25, 10, 10),
]


def test_replies_and_counts_are_the_python_actions(tree):
    top, root = tree
    for dirpath, _, names in os.walk(root):         # atimes settled (relatime) before comparing
        for n in names:
            if os.path.isfile(os.path.join(dirpath, n)) and "locked" not in dirpath:
                Path(dirpath, n).read_bytes()
    servers = _servers(root)
    try:
        assert servers["native"]._native() is not None and servers["c"]._native() is None
        keys = {name: f"native-test:{name}:{time.monotonic_ns()}" for name in servers}
        clients = {name: Raw(s, keys[name]) for name, s in servers.items()}
        replies = {name: [] for name in servers}
        # each request to the three in turn: the same tree answers
        for seq, (slot, path, flags) in enumerate(OPENS, 1):
            for name, c in clients.items():
                replies[name].append(c.call(1, seq, -1, path, flags, 0, 0o22, slot, slot))
        for seq, (call, *args) in enumerate(REQUESTS, 100):
            for name, c in clients.items():
                replies[name].append(c.call(call, seq, *args))
        counts = {name: {slot: list(e.obj.io) for slot, e in servers[name].processes[keys[name]].fds.items()}
                  for name in servers}
        for c in clients.values():
            c.sock.close()
    finally:
        for s in servers.values():
            s.close()
    for i, request in enumerate([("open",) + o for o in OPENS] + REQUESTS):
        want = replies["python"][i]
        for name in ("native", "c"):
            assert replies[name][i] == want, (name, request, msgpack.unpackb(replies[name][i]),
                                               msgpack.unpackb(want))
    assert counts["native"] == counts["python"] == counts["c"]
    # the cases meant: answers and the errors a kernel gives
    got = {r: msgpack.unpackb(b) for r, b in zip(REQUESTS, replies["native"][len(OPENS):])}
    enoent, enotdir, ebadf = (neutral.errno_to_neutral(e) for e in (2, 20, 9))
    assert got[(12, -1, "/nope", 1)][1:] == [1, enoent]
    assert got[(12, -1, "/f/", 1)][1:] == [1, enotdir]
    assert got[(12, -1, "/abs", 1)][1:] == [1, enoent]
    assert got[(12, -1, "/tojob", 1)][2][1][7] == 2              # /job/d/g, in the export
    assert got[(11, 99)][1:] == [1, ebadf]
    assert got[(4, 20, 100, 100)][2][1] == bytes(range(100))


def test_a_server_that_wraps_a_native_handler_runs_the_wrapper(tree):
    """A handler replaced in the dispatch table (a wrapper, a test double) is not native."""
    top, root = tree
    s = make_server(SPEC, str(root), loop="c")
    seen = []
    inner = s.dispatch[12]
    s.dispatch[12] = lambda ctx, *args: seen.append(args) or inner(ctx, *args)
    s.start()
    try:
        c = Raw(s, f"native-wrap:{time.monotonic_ns()}")
        c.call(12, 1, -1, "/f", 1)
        c.call(11, 2, 20)
        c.sock.close()
    finally:
        s.close()
    assert seen == [(-1, "/f", 1)]


def test_the_common_calls_never_reach_python(tree):
    """With the Python actions replaced by ones that fail (still declared native), the common
    calls are answered all the same: the C loop performed them; the others reach Python."""
    top, root = tree
    s = make_server(SPEC, str(root), loop="c")
    reached = []
    for call in (4, 5, 11, 12):
        def python_action(ctx, *args, call=call):
            reached.append((call, *args))
            raise OSError(5, "the Python action")
        python_action.native = s.dispatch[call].native
        s.dispatch[call] = python_action
    s.start()
    try:
        c = Raw(s, f"native-only:{time.monotonic_ns()}")
        assert msgpack.unpackb(c.call(1, 1, -1, "/f", O_RDONLY, 0, 0o22, 20, 20))[1] == 0
        common = [(12, -1, "/f", 1), (12, -1, "/d/g", 0), (12, -1, "/nope", 1), (12, -1, "/f/", 1),
                  (11, 20), (11, 99), (4, 20, 10, 100), (5, 20, 10, 0), (5, 20, 10, -1)]
        for seq, (call, *args) in enumerate(common, 2):
            status = msgpack.unpackb(c.call(call, seq, *args))[1]
            assert status in (0, 1), (call, args)           # an answer or an errno, not EIO
        assert reached == []
        for seq, (call, *args) in enumerate([(12, -1, "/tojob", 1), (12, 21, "g", 1), (4, 20, -1, -1),
                                             (4, 20, 1, 70000), (5, 20, "1", 0)], 50):
            c.call(call, seq, *args)
        assert len(reached) == 5
        c.sock.close()
    finally:
        s.close()


PROBE = r'''
import errno, os, sys
B = sys.argv[1]

def show(name, fn):
    try:
        r = fn()
    except OSError as e:
        r = errno.errorcode.get(e.errno, str(e.errno))
    print(f"{name}: {r!r}", flush=True)

def st(s):
    return (oct(s.st_mode), s.st_nlink, s.st_uid, s.st_gid, s.st_size, s.st_mtime_ns)

for p in ("f", "f/", "f/x", "d", "d/", "nope", "nope/x", "abs", "rel", "dirlink/", "dirlink/g",
          "loop", "dangling", "dangling/", "locked/secret", "pub", "tojob", "../job/f"):
    show("stat " + p, lambda: st(os.stat(f"{B}/{p}")))
    show("lstat " + p, lambda: st(os.lstat(f"{B}/{p}")))
fd = os.open(f"{B}/f", os.O_RDONLY)
show("fstat", lambda: st(os.fstat(fd)))
show("read", lambda: os.read(fd, 300)[-3:])
show("read big", lambda: len(os.read(fd, 200000)))
show("read at the end", lambda: os.read(fd, 10))
show("pread", lambda: os.pread(fd, 5, 256))
show("pread past the end", lambda: os.pread(fd, 5, 10 ** 9))
show("pread negative", lambda: os.pread(fd, 5, -1))
d = os.open(f"{B}/d", os.O_RDONLY)
show("read a directory", lambda: os.read(d, 10))
show("fstat a directory", lambda: st(os.fstat(d))[0])
show("stat at", lambda: st(os.stat("g", dir_fd=d)))
os.close(d)
show("fstat closed", lambda: os.fstat(d))
show("read closed", lambda: os.read(d, 1))
os.setegid(65534)
os.seteuid(65534)                     # as nobody: locked/ is root's, mode 0700
show("nobody stat", lambda: os.stat(f"{B}/locked/secret"))
show("nobody stat dir", lambda: st(os.stat(f"{B}/locked"))[0])
show("nobody opens", lambda: os.open(f"{B}/locked/secret", os.O_RDONLY))
show("nobody fstat", lambda: st(os.fstat(fd))[4])
show("nobody read", lambda: os.pread(fd, 3, 0))
show("nobody stat pub", lambda: st(os.stat(f"{B}/pub"))[4])
'''


def test_a_program_sees_the_same_whichever_loop_answers(agent, tree):  # noqa: F811
    """The probe natively on a copy, and under the agent with each loop: the same lines."""
    if os.geteuid() != 0:
        pytest.fail("acting as nobody needs root (the test environment runs as root)")
    top, root = tree
    probe = top / "probe.py"
    probe.write_text(PROBE)
    native = top / "native"
    shutil.copytree(root, native, symlinks=True)
    os.chmod(native, 0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BYPASS_") and k != "LD_PRELOAD"}
    p = subprocess.run([sys.executable, str(probe), str(native)], env=env, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    # The kernel's view of the copy, but for the names that leave it: the links into /job and
    # ../job/f name nothing there, abs and rel name the host's files (the export is a root).
    def inside(lines):
        return [line for line in lines if not any(w in line.split(":")[0] for w in ("job", "abs", "rel"))]
    expected = inside(p.stdout.splitlines())
    assert "nobody stat: 'EACCES'" in expected and "stat f/: 'ENOTDIR'" in expected
    servers = _servers(root)
    outputs = {}
    try:
        for name, server in servers.items():
            e = dict(env, LD_PRELOAD=str(agent), BYPASS_SHADOW=server.address, BYPASS_SHADOW_TIMEOUT="10")
            p = subprocess.run([sys.executable, str(probe), "/job"], env=e, capture_output=True, text=True,
                               timeout=60)
            assert p.returncode == 0, p.stderr
            assert "bypass[" not in p.stderr, p.stderr
            lines = p.stdout.splitlines()
            assert inside(lines) == expected, name
            if name != "native":
                assert lines == outputs["native"], name
            outputs[name] = lines
            got = dict(line.split(": ", 1) for line in lines)
            # (an absolute link into /job, and /job/../job, lead back into the export)
            assert got["stat tojob"] == got["stat dirlink/g"] and got["stat ../job/f"] == got["stat f"], name
            assert got["stat abs"] == got["stat rel"] == "'ENOENT'", name
    finally:
        for s in servers.values():
            s.close()
