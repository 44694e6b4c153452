"""The C RPC client against the Python shadow server: real sockets, real compiled C."""
from __future__ import annotations

import errno
import hashlib
import hmac
import logging
import os
import socket
import subprocess
import time

import msgpack
import pytest
from hypothesis import given, settings, strategies as st

from bypass.rpc.client import ShadowClient, ShadowRefused
from bypass.rpc.server import ShadowServer

from .rpcfixtures import (BIG, BOOM, CLOSEFD, DISPATCH, ECHO, FAIL, GETFD, SETFD, SLEEP,
                          build_client, build_driver)


@pytest.fixture(scope="module")
def cl(tmp_path_factory):
    return build_client(tmp_path_factory.mktemp("rpcclient"))


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    return build_driver(tmp_path_factory.mktemp("driver"))


@pytest.fixture(params=["c", "python"])
def server(request):
    """Every test that talks to a shadow runs against both call loops (bypass.rpc.c_loop)."""
    s = ShadowServer(DISPATCH, spec_hash="spec-1", loop=request.param).start()
    yield s
    s.close()


def use(cl, address, secret=None, timeout=5.0, spec="spec-1"):
    ffi, lib = cl
    lib.bypass_rpc_reset()
    lib.bypass_rpc_configure(address.encode(), secret.encode() if secret else ffi.NULL, timeout)
    lib.bypass_rpc_set_spec_hash(spec.encode())


def c_call(cl, call_no, *args):
    """Call through the C client; returns the decoded result or raises OSError(errno)."""
    ffi, lib = cl
    packed = b"".join(msgpack.packb(a, use_bin_type=True) for a in args)
    out = ffi.new("uint8_t[]", 8 << 20)
    n = ffi.new("size_t *")
    rc = lib.raw_call(call_no, packed, len(packed), len(args), out, len(out), n)
    if rc < 0:
        raise OSError(-rc, os.strerror(-rc))
    return msgpack.unpackb(bytes(ffi.buffer(out, n[0])), raw=False)


# ---- crypto --------------------------------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.binary(max_size=300), st.binary(max_size=70))
def test_hmac_matches_python(cl, key, a, b):
    ffi, lib = cl
    out = ffi.new("uint8_t[32]")
    lib.bp_hmac_sha256(key, len(key), a, len(a), ffi.NULL, 0, b, len(b), ffi.NULL, 0, out)
    assert bytes(out) == hmac.new(key, a + b, hashlib.sha256).digest()


# ---- calls -------------------------------------------------------------------------------------

def test_calls_results_and_errors(cl, server):
    use(cl, server.address)
    ffi, lib = cl
    assert lib.bypass_rpc_ping() == 0
    assert c_call(cl, ECHO, 1, "two", b"\x00three", [4, None], {"5": -6}) == \
        [1, "two", b"\x00three", [4, None], {"5": -6}]
    with pytest.raises(OSError) as e:
        c_call(cl, FAIL, "ENOENT")
    assert e.value.errno == errno.ENOENT
    with pytest.raises(OSError) as e:
        c_call(cl, FAIL, "EWOULDBLOCK")
    assert e.value.errno == errno.EAGAIN
    with pytest.raises(OSError) as e:
        c_call(cl, 12345)                       # no such call
    assert e.value.errno == errno.ENOSYS
    assert lib.bypass_rpc_fd() >= 1000          # kept out of the program's way
    import fcntl
    assert fcntl.fcntl(lib.bypass_rpc_fd(), fcntl.F_GETFD) & fcntl.FD_CLOEXEC


def test_shadow_exception_is_eio_and_connection_survives(cl, server, capfd):
    use(cl, server.address)
    with pytest.raises(OSError) as e:
        c_call(cl, BOOM)
    assert e.value.errno == errno.EIO
    assert "boom" in capfd.readouterr().err
    assert c_call(cl, ECHO, "still here") == ["still here"]


def test_large_reply_and_request(cl, server):
    use(cl, server.address)
    data = c_call(cl, BIG, 5 << 20)             # grows the client's buffer beyond 64 KiB
    assert data == b"x" * (5 << 20)
    blob = os.urandom(3 << 20)
    assert c_call(cl, ECHO, blob) == [blob]
    assert c_call(cl, ECHO, "small again") == ["small again"]


def test_descriptor_table_per_process(cl, server):
    use(cl, server.address)
    assert c_call(cl, SETFD, 7, "seven") is None
    assert c_call(cl, GETFD, 7) == "seven"
    c_call(cl, CLOSEFD, 7)
    with pytest.raises(OSError) as e:
        c_call(cl, GETFD, 7)
    assert e.value.errno == errno.EBADF


def test_spec_mismatch_is_refused(cl, server, capfd):
    use(cl, server.address, spec="another-spec")
    with pytest.raises(OSError) as e:
        c_call(cl, ECHO)
    assert e.value.errno == errno.EIO
    err = capfd.readouterr().err
    assert "different specs" in err and err.count("\n") == 1


# ---- failure: never hang, EIO, one message --------------------------------------------------------

def test_unreachable_shadow_fails_fast_with_one_message(cl, tmp_path, capfd):
    use(cl, f"unix:{tmp_path}/nobody.sock")
    t = time.monotonic()
    for _ in range(50):
        with pytest.raises(OSError) as e:
            c_call(cl, ECHO, 1)
        assert e.value.errno == errno.EIO
    assert time.monotonic() - t < 1.0
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "unreachable" in err and "nobody.sock" in err


def test_configured_failure_errno(cl, tmp_path):
    ffi, lib = cl
    use(cl, f"unix:{tmp_path}/nobody.sock")
    lib.bypass_rpc_set_failure_errno(errno.ENOTCONN)
    try:
        with pytest.raises(OSError) as e:
            c_call(cl, ECHO)
        assert e.value.errno == errno.ENOTCONN
    finally:
        lib.bypass_rpc_set_failure_errno(errno.EIO)


def test_shadow_gone_mid_run(cl, capfd):
    s = ShadowServer(DISPATCH, spec_hash="spec-1").start()
    use(cl, s.address)
    assert c_call(cl, ECHO, 1) == [1]
    s.close()
    t = time.monotonic()
    with pytest.raises(OSError) as e:
        c_call(cl, ECHO, 2)
    assert e.value.errno == errno.EIO and time.monotonic() - t < 2
    assert "lost" in capfd.readouterr().err


def test_hung_shadow_times_out(cl, server, capfd):
    use(cl, server.address, timeout=0.5)
    t = time.monotonic()
    with pytest.raises(OSError) as e:
        c_call(cl, SLEEP, 3)
    assert e.value.errno == errno.EIO
    assert 0.4 < time.monotonic() - t < 2.5
    assert "not answering" in capfd.readouterr().err


def test_silent_listener_times_out_in_handshake(cl, tmp_path, capfd):
    # Something listens but never speaks: the handshake must time out, not hang.
    path = str(tmp_path / "mute.sock")
    mute = socket.socket(socket.AF_UNIX)
    mute.bind(path)
    mute.listen(1)
    try:
        use(cl, f"unix:{path}", timeout=0.3)
        t = time.monotonic()
        with pytest.raises(OSError):
            c_call(cl, ECHO)
        assert time.monotonic() - t < 2
        assert "handshake" in capfd.readouterr().err
    finally:
        mute.close()


def test_program_closing_our_descriptor_reconnects(cl, server):
    ffi, lib = cl
    use(cl, server.address)
    assert c_call(cl, ECHO, 1) == [1]
    os.close(lib.bypass_rpc_fd())              # what closefrom(3) would do
    assert c_call(cl, ECHO, 2) == [2]


# ---- TCP and authentication -------------------------------------------------------------------------

@pytest.fixture
def tcp_server():
    s = ShadowServer(DISPATCH, spec_hash="spec-1", secret="s3cret")
    s.listen("tcp:127.0.0.1:0")
    s.start()
    yield s
    s.close()


def test_tcp_needs_a_secret():
    s = ShadowServer(DISPATCH)
    with pytest.raises(ValueError):
        s.listen("tcp:127.0.0.1:0")
    s.close()


def test_tcp_with_secret(cl, tcp_server):
    use(cl, tcp_server.address, secret="s3cret")
    assert c_call(cl, ECHO, "over tcp") == ["over tcp"]


def test_tcp_wrong_or_missing_secret_is_refused(cl, tcp_server, capfd, caplog):
    caplog.set_level(logging.WARNING, "bypass.shadow")
    use(cl, tcp_server.address, secret="wrong")
    with pytest.raises(OSError):
        c_call(cl, ECHO)
    assert "authentication failed" in capfd.readouterr().err
    use(cl, tcp_server.address)                 # no secret at all
    with pytest.raises(OSError):
        c_call(cl, ECHO)
    assert "requires a secret" in capfd.readouterr().err
    with pytest.raises(ShadowRefused):
        ShadowClient(tcp_server.address, secret="nope", spec_hash="spec-1")
    assert any("authentication failed" in r.getMessage() for r in caplog.records)


def test_client_with_secret_refuses_unauthenticated_shadow(cl, server, capfd):
    # A shadow that cannot prove it knows the secret is not trusted with our calls.
    use(cl, server.address, secret="s3cret")
    with pytest.raises(OSError):
        c_call(cl, ECHO)
    assert "did not prove" in capfd.readouterr().err


def test_secret_never_on_the_wire(tcp_server):
    # Record what the client sends; the secret must not appear.
    sent = []
    real_sendall = socket.socket.sendall

    def spy(self, data, *a):
        sent.append(bytes(data))
        return real_sendall(self, data, *a)

    socket.socket.sendall = spy
    try:
        with ShadowClient(tcp_server.address, secret="s3cret", spec_hash="spec-1") as c:
            assert c.call(ECHO, 1) == [1]
    finally:
        socket.socket.sendall = real_sendall
    assert sent and not any(b"s3cret" in s for s in sent)


# ---- hostile input ----------------------------------------------------------------------------------

def raw_connect(address):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    s.connect(address.split(":", 1)[1])
    return s


def read_frame(s):
    hdr = b""
    while len(hdr) < 4:
        chunk = s.recv(4 - len(hdr))
        if not chunk:
            return None
        hdr += chunk
    n = int.from_bytes(hdr, "big")
    body = b""
    while len(body) < n:
        chunk = s.recv(n - len(body))
        if not chunk:
            return None
        body += chunk
    return msgpack.unpackb(body, raw=False)


def hello_frame(spec="spec-1", **info):
    info = {"key": f"test:{os.getpid()}:{time.monotonic_ns()}", "pid": os.getpid(), **info}
    body = msgpack.packb(["bypass-agent", 1, spec, info, b"n" * 32, None], use_bin_type=True)
    return len(body).to_bytes(4, "big") + body


def frame(obj):
    body = msgpack.packb(obj, use_bin_type=True)
    return len(body).to_bytes(4, "big") + body


HOSTILE = [
    b"\xff\xff\xff\xff",                              # 4 GiB frame announced
    (100).to_bytes(4, "big") + b"\x92",               # truncated, then EOF
    (3).to_bytes(4, "big") + b"\xc1\xc1\xc1",         # never-used byte
    frame("not an array"),
    frame([1]),                                       # too short
    frame(["call", 1]),                               # call number not an int
    frame([0, "seq"]),
    (5).to_bytes(4, "big") + b"\xdd\xff\xff\xff\xff",  # array claiming 4G elements
    frame([0, 1, {"a": [1] * 10}]) + b"\x00\x00",      # trailing half-header, then EOF
]


@pytest.mark.parametrize("payload", HOSTILE)
def test_hostile_frames_after_handshake(server, payload, caplog, cl):
    caplog.set_level(logging.WARNING, "bypass.shadow")
    bystander = ShadowClient(server.address, spec_hash="spec-1")
    s = raw_connect(server.address)
    assert read_frame(s)[0] == "bypass-shadow"
    s.sendall(hello_frame())
    assert read_frame(s)[0] == "welcome"
    s.sendall(payload)
    s.shutdown(socket.SHUT_WR)
    # whatever we get back, the connection ends and the server keeps serving others
    while True:
        try:
            if not s.recv(65536):
                break
        except (ConnectionResetError, socket.timeout):
            break
    s.close()
    assert bystander.call(ECHO, "ok") == ["ok"]
    bystander.close()
    use(cl, server.address)
    assert c_call(cl, ECHO, "c ok") == ["c ok"]


@pytest.mark.parametrize("payload", [
    b"GET / HTTP/1.0\r\n\r\n",
    frame(["bypass-agent"]),
    frame(["bypass-agent", 1, "spec-1", {"pid": 1}, b"short", None]),  # bad nonce
    frame(["bypass-agent", 1, "spec-1", "info", b"n" * 32, None]),
    (5000).to_bytes(4, "big") + b"\x90" * 5000,      # over the handshake size limit
])
def test_hostile_hellos(server, payload, caplog):
    caplog.set_level(logging.WARNING, "bypass.shadow")
    s = raw_connect(server.address)
    read_frame(s)
    s.sendall(payload)
    assert read_frame(s) is None          # closed on us
    s.close()
    with ShadowClient(server.address, spec_hash="spec-1") as c:
        assert c.call(ECHO, 1) == [1]
    assert any("closing connection" in r.getMessage() for r in caplog.records)


@pytest.fixture(scope="module", params=["c", "python"])
def shared_server(request):
    s = ShadowServer(DISPATCH, spec_hash="spec-1", loop=request.param).start()
    yield s
    s.close()


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_crash_the_shadow(shared_server, data):
    server = shared_server
    s = raw_connect(server.address)
    read_frame(s)
    s.sendall(hello_frame())
    read_frame(s)
    try:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        s.settimeout(2)
        while s.recv(65536):
            pass
    except OSError:
        pass
    s.close()
    with ShadowClient(server.address, spec_hash="spec-1") as c:
        assert c.call(ECHO, 1) == [1]


def test_handshake_timeout_frees_the_slot(monkeypatch):
    from bypass.rpc import server as srv
    monkeypatch.setattr(srv, "HANDSHAKE_TIMEOUT", 0.2)
    with ShadowServer(DISPATCH).start() as s:
        lazy = raw_connect(s.address)
        read_frame(lazy)
        time.sleep(0.5)
        assert read_frame(lazy) is None      # dropped
        lazy.close()


def test_private_socket_directory():
    with ShadowServer(DISPATCH).start() as s:
        path = s.address.split(":", 1)[1]
        modes = os.stat(os.path.dirname(path)).st_mode & 0o777, os.stat(path).st_mode & 0o777
        # A root shadow acts as each caller (bypass.rpc.creds): processes of the run that became
        # other users must reach it, through a directory nobody else can list or write.
        assert modes == ((0o711, 0o666) if s.as_caller else (0o700, 0o600))
        assert s.as_caller == (os.geteuid() == 0)
    assert not os.path.exists(path)


# ---- processes: fork, exec, spawn --------------------------------------------------------------------

def run_driver(driver, address, *cmds, timeout=20):
    env = dict(os.environ, BYPASS_SHADOW=address, BYPASS_SHADOW_TIMEOUT="5")
    env.pop("ROLE", None)
    p = subprocess.run([str(driver), *cmds], env=env, capture_output=True, text=True,
                       timeout=timeout)
    return p.stdout.splitlines(), p.stderr


@pytest.fixture
def any_spec_server():
    s = ShadowServer(DISPATCH).start()
    yield s
    s.close()


def test_fork_child_inherits_descriptors(driver, any_spec_server):
    out, err = run_driver(driver, any_spec_server.address,
                          "set:3:three", "fork", "get:3", "set:4:childs", "close:3", "get:4")
    assert out == [
        "main set:3:three -> nil",
        "child get:3 -> three",        # inherited through the fork ticket
        "child set:4:childs -> nil",
        "child close:3 -> nil",
        "child get:4 -> childs",
        "parent get:3 -> three",       # the child's close did not touch the parent's table
        "parent set:4:childs -> nil",
        "parent close:3 -> nil",
        "parent get:4 -> childs",
    ], err


def test_fork_snapshot_is_taken_at_fork_time(driver, any_spec_server):
    # The child connects only after the parent changed its table: it must still see the
    # table as it was at fork.
    out, err = run_driver(driver, any_spec_server.address, "set:5:before", "fork&",
                          "P:set:5:after", "C:msleep:300", "C:get:5", "P:wait", "P:get:5")
    assert "child get:5 -> before" in out, (out, err)
    assert "parent get:5 -> after" in out, (out, err)


def test_exec_keeps_descriptors(driver, any_spec_server):
    out, err = run_driver(driver, any_spec_server.address, "set:6:kept", "key", "exec",
                          "get:6", "key")
    assert out[0] == "main set:6:kept -> nil"
    assert out[2] == "main get:6 -> kept", err
    assert out[1].split("-> ")[1] == out[3].split("-> ")[1]     # same process key


def test_spawned_child_inherits_without_ticket(driver, any_spec_server):
    out, err = run_driver(driver, any_spec_server.address, "set:8:spawn", "spawn", "get:8")
    assert out == ["main set:8:spawn -> nil", "spawned get:8 -> spawn"], err


def test_unrelated_processes_do_not_share(driver, any_spec_server):
    run_driver(driver, any_spec_server.address, "set:9:mine")
    out, _ = run_driver(driver, any_spec_server.address, "get:9")
    assert out == ["main get:9 -> errno Bad file descriptor"]


def test_state_of_exited_processes_is_released(driver):
    closed = []
    from bypass.rpc.server import Shared

    def setfd(ctx, fd, value):
        ctx.process.install(fd, Shared(value, closed.append))

    with ShadowServer({**DISPATCH, SETFD: setfd}).start() as s:
        run_driver(driver, s.address, "set:3:gone")
        deadline = time.monotonic() + 5
        while not closed and time.monotonic() < deadline:
            time.sleep(0.1)
        assert closed == ["gone"]
        assert not s.processes


def test_driver_with_dead_shadow_exits_quickly(driver, tmp_path):
    t = time.monotonic()
    out, err = run_driver(driver, f"unix:{tmp_path}/none.sock", "ping", "get:1", "fork", "ping")
    assert time.monotonic() - t < 3
    assert all("errno Input/output error" in line for line in out), out
    assert err.count("unreachable") == 1, err      # one message, even across the fork
