"""The shadow's C call loop (bypass/rpc/c/shadow_loop.c) against its reference, the Python loop:
the same bytes on the wire for every value, the same treatment of odd results and hostile
requests, and the fallback to Python when the C loop cannot be built."""
from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import textwrap

import msgpack
import pytest
from hypothesis import given, settings, strategies as st

from bypass.rpc.server import FileRegion, ShadowServer

from .rpcfixtures import DISPATCH, ECHO
from .test_rpc_client import frame, hello_frame, raw_connect, read_frame

UNSENDABLE, HUGE_INT, REGION, BUFFER, TUPLES = range(100, 105)


def _region(ctx, path):
    fd = os.open(path, os.O_RDONLY)
    ctx.process.data.setdefault("open", []).append(fd)
    return [os.fstat(fd).st_size, FileRegion(fd, 0, os.fstat(fd).st_size)]


TABLE = {
    **DISPATCH,
    UNSENDABLE: lambda ctx: object(),
    HUGE_INT: lambda ctx: 2 ** 70,
    REGION: _region,
    BUFFER: lambda ctx, n: [n, bytearray(b"b" * n)],
    TUPLES: lambda ctx: (1, (2, 3), {"k": (4,)}),
}


@pytest.fixture(scope="module", params=["c", "python"])
def server(request):
    s = ShadowServer(TABLE, spec_hash="spec-1", loop=request.param).start()
    yield s
    s.close()


@pytest.fixture(scope="module")
def both():
    servers = {loop: ShadowServer(TABLE, spec_hash="spec-1", loop=loop).start() for loop in ("c", "python")}
    yield servers
    for s in servers.values():
        s.close()


def session(address):
    s = raw_connect(address)
    assert read_frame(s)[0] == "bypass-shadow"
    s.sendall(hello_frame())
    assert read_frame(s)[0] == "welcome"
    return s


def raw_reply(s) -> bytes:
    """One reply frame's body, undecoded."""
    hdr = b""
    while len(hdr) < 4:
        chunk = s.recv(4 - len(hdr))
        assert chunk, "connection closed"
        hdr += chunk
    n = int.from_bytes(hdr, "big")
    body = b""
    while len(body) < n:
        chunk = s.recv(n - len(body))
        assert chunk, "connection closed inside a reply"
        body += chunk
    return body


def test_the_c_loop_is_what_serves_by_default():
    with ShadowServer(DISPATCH) as s:
        assert s._c_loop is not None, "the C loop should build here (gcc and Python headers)"


# Every value msgpack carries, including non-UTF-8 text (paths reach Python with
# surrogateescape and must go back out as the same bytes).
values = st.recursive(
    st.none() | st.booleans() | st.integers(-2 ** 63, 2 ** 64 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=40) | st.binary(max_size=300)
    | st.binary(max_size=20).map(lambda b: b.decode("utf-8", "surrogateescape")),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5) | st.integers(-2 ** 63, 2 ** 64 - 1), inner,
                                                                 max_size=5),
    max_leaves=25)


@settings(max_examples=300, deadline=None)
@given(st.lists(values, max_size=4), st.integers(0, 2 ** 32))
def test_replies_are_byte_identical_to_msgpack(both, args, seq):
    body = msgpack.packb([ECHO, seq, *args], use_bin_type=True, unicode_errors="surrogateescape")
    request = len(body).to_bytes(4, "big") + body
    expected = msgpack.packb([seq, 0, args], use_bin_type=True, unicode_errors="surrogateescape")
    for loop, server in both.items():
        s = session(server.address)
        s.sendall(request)
        assert raw_reply(s) == expected, loop
        s.close()


def test_surrogate_escaped_paths_round_trip(both):
    raw = b"/job/caf\xe9-\xff.txt"                      # latin-1 bytes, not UTF-8
    for server in both.values():
        s = session(server.address)
        body = msgpack.packb([ECHO, 1, raw.decode("utf-8", "surrogateescape")], use_bin_type=True,
                             unicode_errors="surrogateescape")
        s.sendall(len(body).to_bytes(4, "big") + body)
        reply = msgpack.unpackb(raw_reply(s), raw=True)
        assert reply == [1, 0, [raw]]
        s.close()


def test_odd_results(server, caplog):
    caplog.set_level(logging.ERROR, "bypass.shadow")
    s = session(server.address)
    for seq, call in enumerate((UNSENDABLE, HUGE_INT)):
        s.sendall(frame([call, seq]))
        got_seq, status, message = msgpack.unpackb(raw_reply(s), raw=False)
        assert (got_seq, status) == (seq, 2) and message.startswith("shadow: bad result"), message
    s.sendall(frame([TUPLES, 7]))                       # tuples travel as arrays
    assert msgpack.unpackb(raw_reply(s), raw=False) == [7, 0, [1, [2, 3], {"k": [4]}]]
    s.sendall(frame([ECHO, 8, "still served"]))
    assert msgpack.unpackb(raw_reply(s), raw=False) == [8, 0, ["still served"]]
    s.close()
    assert sum("unsendable result" in r.getMessage() for r in caplog.records) >= 2


def test_big_results_skip_the_encoder(server, tmp_path):
    data = os.urandom(300_000)
    (tmp_path / "f").write_bytes(data)
    s = session(server.address)
    s.sendall(frame([REGION, 1, str(tmp_path / "f")]))
    assert msgpack.unpackb(raw_reply(s), raw=False) == [1, 0, [len(data), data]]
    s.sendall(frame([BUFFER, 2, 200_000]))
    assert msgpack.unpackb(raw_reply(s), raw=False) == [2, 0, [200_000, b"b" * 200_000]]
    s.close()


def test_pipelined_requests_are_answered_in_order(server):
    s = session(server.address)
    s.sendall(b"".join(frame([ECHO, i, i * "x"]) for i in range(50)))
    for i in range(50):
        assert msgpack.unpackb(raw_reply(s), raw=False) == [i, 0, [i * "x"]]
    s.close()


@pytest.mark.parametrize("payload, why", [
    (frame([ECHO, 1, msgpack.ExtType(5, b"x")]), "ext"),
    (b"\x00\x00\x00\x03\x93\x00\x01", "array shorter than announced"),
    (b"\x00\x00\x00\x05\x92\x00\x01", "connection closed inside a frame"),
])
def test_requests_the_c_loop_refuses_close_the_connection(payload, why, caplog):
    caplog.set_level(logging.WARNING, "bypass.shadow")
    with ShadowServer(TABLE, loop="c").start() as server:
        s = session(server.address)
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        assert s.recv(100) == b""
        s.close()
        assert any("closing connection" in r.getMessage() for r in caplog.records), why


def test_deep_nesting_is_refused_not_a_crash(caplog):
    caplog.set_level(logging.WARNING, "bypass.shadow")
    with ShadowServer(TABLE, loop="c").start() as server:
        s = session(server.address)
        body = bytes([0x93, 0, 1]) + b"\x91" * 100_000 + b"\xc0"
        s.sendall(len(body).to_bytes(4, "big") + body)
        assert s.recv(100) == b""
        s.close()
        assert any("nested deeper" in r.getMessage() for r in caplog.records)
        s = session(server.address)
        s.sendall(frame([ECHO, 2, "fine"]))
        assert msgpack.unpackb(raw_reply(s), raw=False) == [2, 0, ["fine"]]
        s.close()


FALLBACK = textwrap.dedent("""
    import logging, socket, sys
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
    from bypass.rpc.server import ShadowServer
    from bypass.rpc.client import ShadowClient
    s = ShadowServer({1: lambda ctx, x: x + 1}, loop=sys.argv[1]).start()
    with ShadowClient(s.address) as c:
        print("result", c.call(1, 41), "c loop" if s._c_loop else "python loop")
    s.close()
""")


def test_no_compiler_falls_back_to_the_python_loop(tmp_path):
    env = dict(os.environ, CC="false", PATH="/nonexistent", BYPASS_CACHE_DIR=str(tmp_path))
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    done = subprocess.run([sys.executable, "-c", FALLBACK, "auto"], env=env, capture_output=True,
                          text=True, timeout=60, cwd=repo)
    assert done.returncode == 0, done.stderr
    assert "result 42 python loop" in done.stdout
    assert "using the Python call loop" in done.stdout
    # asked for the C loop explicitly: a clear error, not a silent fallback
    done = subprocess.run([sys.executable, "-c", FALLBACK, "c"], env=env, capture_output=True,
                          text=True, timeout=60, cwd=repo)
    assert done.returncode != 0 and "the C call loop is not available" in done.stderr


def test_loop_setting_is_checked():
    with pytest.raises(ValueError, match="BYPASS_SHADOW_LOOP must be auto, c or python"):
        ShadowServer(DISPATCH, loop="fast")
