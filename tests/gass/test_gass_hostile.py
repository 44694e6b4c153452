"""The gass support library against a hostile HTTP server (tests/gass/hostile_server.py).

For every scripted response, with the libcurl-free path (BYPASS_GASS_QUICK=1) and with libcurl
(BYPASS_GASS_QUICK=0): the program gets the right bytes or a clean errno, within the timeout, and
the cache holds nothing wrong (no entry with other bytes, nothing left in tmp/)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from gassenv import requires_libcurl
from hostile_server import (HostileServer, endless, header, in_parts, raw, silence)
from http_server import HttpServer, free_port

pytestmark = requires_libcurl

READ_TIMEOUT = 1.5
QUICK = pytest.mark.parametrize("quick", ["1", "0"], ids=["quick", "libcurl"])


@pytest.fixture
def hostile():
    with HostileServer() as srv:
        yield srv


@pytest.fixture
def read(gass_driver, gass_env):
    """read(url, quick, **env) -> (stdout bytes or None, errno name or None, seconds)."""
    def _read(url: str, quick: str, command: str = "read", **extra):
        env = dict(gass_env, BYPASS_GASS_QUICK=quick, BYPASS_GASS_READ_TIMEOUT=str(READ_TIMEOUT),
                   BYPASS_GASS_LOW_SPEED="100", **extra)
        start = time.monotonic()
        p = subprocess.run([str(gass_driver), command, url], capture_output=True, env=env,
                           timeout=60)
        took = time.monotonic() - start
        if p.returncode == 0:
            return p.stdout, None, took
        assert p.returncode == 3, (p.returncode, p.stdout, p.stderr)
        return None, p.stdout.decode().strip().removeprefix("errno="), took
    return _read


def assert_cache_clean(env: dict[str, str], allowed: bytes | None = None) -> None:
    """Nothing in tmp/; any cached body is exactly `allowed`."""
    root = Path(env["BYPASS_GASS_CACHE"])
    leftovers = list((root / "tmp").iterdir()) if (root / "tmp").exists() else []
    assert leftovers == [], leftovers
    bodies = [p for p in (root / "data").glob("*") if p.suffix != ".meta"] \
        if (root / "data").exists() else []
    for body in bodies:
        assert allowed is not None and body.read_bytes() == allowed, body


def check(read, env, url, quick, *, ok: bytes | None = None, errnos=(), quick_errno=None,
          within: float = 10, **extra):
    """The read gives `ok` or one of `errnos`; the quick path gives `quick_errno` if named."""
    data, err, took = read(url, quick, **extra)
    assert took < within, took
    if quick == "1" and quick_errno is not None:
        assert (data, err) == (None, quick_errno)
    elif data is not None:
        assert ok is not None and data == ok, data[:100]
    else:
        assert err in errnos, err
    assert_cache_clean(env, ok)
    return data, err


# -- Content-Length -----------------------------------------------------------------------------

@QUICK
@pytest.mark.parametrize("split", [False, True], ids=["with-headers", "after-headers"])
def test_overlong_body(read, gass_env, hostile, quick, split):
    head, body = header("200 OK", "Content-Length: 5"), b"hello-EXTRA-BYTES"
    hostile.script["/x"] = in_parts(head, body) if split else raw(head + body)
    check(read, gass_env, hostile.url("x"), quick, ok=b"hello", errnos=["EIO"], quick_errno="EIO")


@QUICK
def test_zero_length_followed_by_bytes(read, gass_env, hostile, quick):
    hostile.script["/x"] = raw(header("200 OK", "Content-Length: 0") + b"not part of the file")
    check(read, gass_env, hostile.url("x"), quick, ok=b"", errnos=["EIO"], quick_errno="EIO")


@QUICK
def test_short_body_is_eio(read, gass_env, hostile, quick):
    hostile.script["/x"] = in_parts(header("200 OK", "Content-Length: 100"), b"only ten b")
    check(read, gass_env, hostile.url("x"), quick, errnos=["EIO"])
    hostile.script["/y"] = raw(header("200 OK", "Content-Length: 100"))
    check(read, gass_env, hostile.url("y"), quick, errnos=["EIO"])

    def reset_midway(conn, req):
        import socket
        import struct

        conn.send(header("200 OK", "Content-Length: 100000") + b"r" * 5000)
        conn.wait(0.2)
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.sock.close()  # with a zero linger: a reset, not an end of stream
    hostile.script["/z"] = reset_midway
    check(read, gass_env, hostile.url("z"), quick, errnos=["EIO"])


@QUICK
@pytest.mark.parametrize("value", ["-1", "12abc", "0x10", "1 2", "+12", "", "abc",
                                   "99999999999999999999999", "12, 12x"])
def test_malformed_content_length_is_eio(read, gass_env, hostile, quick, value):
    hostile.script["/x"] = raw(header("200 OK", f"Content-Length: {value}") + b"hello world!")
    # libcurl refuses a length past 2^63 as too large before gass sees the header
    errnos = ["EIO", "EFBIG"] if len(value) > 18 and quick == "0" else ["EIO"]
    check(read, gass_env, hostile.url("x"), quick, errnos=errnos)
    check(read, gass_env, hostile.url("x"), quick, command="stat", errnos=errnos)


@QUICK
def test_not_modified_to_an_unconditional_request_is_eio(read, gass_env, hostile, quick):
    hostile.script["/x"] = raw(header("304 Not Modified", 'ETag: "x"'))
    check(read, gass_env, hostile.url("x"), quick, errnos=["EIO"])


@QUICK
def test_disagreeing_content_lengths_are_eio(read, gass_env, hostile, quick):
    hostile.script["/x"] = raw(header("200 OK", "Content-Length: 5", "Content-Length: 12")
                               + b"hello world!")
    check(read, gass_env, hostile.url("x"), quick, errnos=["EIO"])


@QUICK
def test_exact_bodies_are_served(read, gass_env, hostile, quick):
    """The strictness costs nothing on good answers, including the forms handed to libcurl."""
    hostile.script["/plain"] = raw(header("200 OK", "Content-Length:  12 ", "Content-Length: 12")
                                   + b"hello world!")
    hostile.script["/chunked"] = in_parts(header("200 OK", "Transfer-Encoding: chunked"),
                                          b"5\r\nhello\r\n7\r\n world!\r\n0\r\n\r\n")
    hostile.script["/until-close"] = in_parts(header("200 OK"), b"hello ", b"world!")
    for path in ("plain", "chunked", "until-close"):
        data, err, _ = read(hostile.url(path), quick)
        assert (data, err) == (b"hello world!", None), path
    assert_cache_clean(gass_env, b"hello world!")


@QUICK
def test_truncated_chunked_body_is_eio(read, gass_env, hostile, quick):
    hostile.script["/x"] = in_parts(header("200 OK", "Transfer-Encoding: chunked"),
                                    b"5\r\nhello\r\n100\r\nnot a hundred")
    check(read, gass_env, hostile.url("x"), quick, errnos=["EIO"])


@QUICK
@pytest.mark.parametrize("status", ["HTTP/1.1 2OO OK\r\n", "HTTP/9.1 200 OK\r\n",
                                    "SPDY 200 OK\r\n", "\x00\x01\x02garbage\r\n"])
def test_garbage_status_line(read, gass_env, hostile, quick, status):
    hostile.script["/x"] = raw(status.encode() + b"Content-Length: 5\r\n\r\nhello")
    check(read, gass_env, hostile.url("x"), quick, errnos=["EIO", "EINVAL"])


# -- size and time bounds -----------------------------------------------------------------------

@QUICK
def test_never_ending_body_is_bounded_by_the_size_limit(read, gass_env, hostile, quick):
    hostile.script["/announced"] = endless(header("200 OK", "Content-Length: 100000000000"))
    hostile.script["/unannounced"] = endless(header("200 OK"))
    hostile.script["/chunks"] = endless(header("200 OK", "Transfer-Encoding: chunked"),
                                        b"10000\r\n" + b"y" * 65536 + b"\r\n")
    for path in ("announced", "unannounced", "chunks"):
        check(read, gass_env, hostile.url(path), quick, errnos=["EFBIG"], within=15,
              BYPASS_GASS_CACHE_MAX="5M")


@QUICK
def test_body_longer_than_announced_never_ends(read, gass_env, hostile, quick):
    hostile.script["/x"] = endless(header("200 OK", "Content-Length: 1000000"))
    check(read, gass_env, hostile.url("x"), quick, ok=b"x" * 1000000, errnos=["EIO"],
          quick_errno="EIO")


@QUICK
def test_max_size_setting(read, gass_env, hostile, quick):
    hostile.script["/x"] = raw(header("200 OK", "Content-Length: 2000") + b"z" * 2000)
    check(read, gass_env, hostile.url("x"), quick, errnos=["EFBIG"], BYPASS_GASS_MAX_SIZE="1000")
    check(read, gass_env, hostile.url("x"), quick, ok=b"z" * 2000, BYPASS_GASS_MAX_SIZE="2000")


@QUICK
def test_trickling_body_times_out(read, gass_env, hostile, quick):
    hostile.script["/x"] = endless(header("200 OK", "Content-Length: 100000"), b"t", pause=0.05)
    check(read, gass_env, hostile.url("x"), quick, errnos=["ETIMEDOUT"], within=2 * READ_TIMEOUT + 1)


@QUICK
def test_body_that_stops_halfway_times_out(read, gass_env, hostile, quick):
    def half_then_silence(conn, req):
        conn.send(header("200 OK", "Content-Length: 1000") + b"h" * 500)
        conn.wait(3600)
    hostile.script["/x"] = half_then_silence
    # a read timeout after the last byte (libcurl's progress callback comes once a second)
    check(read, gass_env, hostile.url("x"), quick, errnos=["ETIMEDOUT"],
          within=READ_TIMEOUT + (0.8 if quick == "1" else 1.5))


@QUICK
def test_trickling_headers_time_out(read, gass_env, hostile, quick):
    hostile.script["/x"] = endless(b"HTTP/1.1 200 OK\r\n", b"X-A: b\r\n", pause=0.05)
    check(read, gass_env, hostile.url("x"), quick, errnos=["ETIMEDOUT", "EIO"],
          within=2 * READ_TIMEOUT + 1)


@QUICK
def test_total_time_budget(read, gass_env, hostile, quick):
    """Fast enough for the low-speed rule, but longer than BYPASS_GASS_TIMEOUT."""
    hostile.script["/x"] = endless(header("200 OK", "Content-Length: 100000000"), b"s" * 4096,
                                   pause=0.01)
    check(read, gass_env, hostile.url("x"), quick, errnos=["ETIMEDOUT"], within=3.5,
          BYPASS_GASS_TIMEOUT="2")


@QUICK
@pytest.mark.parametrize("command", ["read", "stat"])
def test_silent_server_costs_the_timeout_once(read, gass_env, quick, command):
    for srv in (HostileServer(silent=True), HostileServer()):
        with srv:
            srv.script["/x"] = silence
            # twice the timeout would be 3 s: the fast path must not hand over to libcurl
            check(read, gass_env, srv.url("x"), quick, command=command, errnos=["ETIMEDOUT"],
                  within=2 * READ_TIMEOUT - 0.2)


@QUICK
@pytest.mark.parametrize("command", ["read", "stat"])
def test_unanswered_connect_costs_the_connect_timeout_once(read, gass_env, quick, command):
    """A full accept queue drops further SYNs: connect() hangs until its timeout."""
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        queued = [socket.socket() for _ in range(3)]
        try:
            for s in queued:
                s.setblocking(False)
                s.connect_ex(("127.0.0.1", port))
            time.sleep(0.1)
            check(read, gass_env, f"http://127.0.0.1:{port}/x", quick, command=command,
                  errnos=["ETIMEDOUT"], within=1.9, BYPASS_GASS_CONNECT_TIMEOUT="1")
        finally:
            for s in queued:
                s.close()


@QUICK
def test_huge_headers_are_refused(read, gass_env, hostile, quick):
    many = [f"X-Filler-{i}: {'f' * 1000}" for i in range(300)]
    hostile.script["/many"] = raw(header("200 OK", *many, "Content-Length: 5") + b"hello")
    hostile.script["/endless"] = endless(b"HTTP/1.1 200 OK\r\n", b"X-More: " + b"m" * 1000 + b"\r\n")
    hostile.script["/one-line"] = raw(header("200 OK", "X-Big: " + "b" * 300_000, "Content-Length: 5")
                                      + b"hello")
    for path in ("many", "endless", "one-line"):
        check(read, gass_env, hostile.url(path), quick, errnos=["EIO"])


# -- redirects ----------------------------------------------------------------------------------

@QUICK
def test_redirects(read, gass_env, hostile, quick, site):
    (site / "there.txt").write_bytes(b"other server\n")

    def redirect(status: str, location: str):
        # The server closes after each answer, and says so: otherwise libcurl may reuse the
        # dead connection and give up with EIO before it sees the loop.
        return raw(header(status, f"Location: {location}", "Content-Length: 0",
                          "Connection: close"))

    with HttpServer(site) as other:
        hostile.script["/loop"] = redirect("302 Found", "/loop")
        hostile.script["/pingpong"] = redirect("301 Moved", "/pong")
        hostile.script["/pong"] = redirect("301 Moved", "/pingpong")
        hostile.script["/file"] = redirect("302 Found", "file:///etc/passwd")
        hostile.script["/ftp"] = redirect("302 Found", f"ftp://127.0.0.1:{other.port}/x")
        hostile.script["/port"] = redirect("302 Found", other.url("there.txt"))
        hostile.script["/dead"] = redirect("302 Found", f"http://127.0.0.1:{free_port()}/x")
        check(read, gass_env, hostile.url("loop"), quick, errnos=["ELOOP"])
        # unannounced closes: libcurl may give up on the dead connections first
        hostile.script["/sly"] = raw(header("302 Found", "Location: /sly", "Content-Length: 0"))
        check(read, gass_env, hostile.url("sly"), quick, errnos=["ELOOP", "EIO"])
        check(read, gass_env, hostile.url("pingpong"), quick, errnos=["ELOOP"])
        check(read, gass_env, hostile.url("file"), quick, errnos=["EINVAL"])
        check(read, gass_env, hostile.url("ftp"), quick, errnos=["EINVAL"])
        check(read, gass_env, hostile.url("dead"), quick, errnos=["EIO"])
        data, err, _ = read(hostile.url("port"), quick)
        assert (data, err) == (b"other server\n", None)
        assert_cache_clean(gass_env, b"other server\n")
        assert read(hostile.url("port"), quick, command="stat")[1] is None


# -- uploads ------------------------------------------------------------------------------------

@QUICK
def test_put_without_an_answer_fails_close_within_the_timeout(gass_driver, gass_env, hostile, quick):
    hostile.script["/up.txt"] = silence
    env = dict(gass_env, BYPASS_GASS_QUICK=quick, BYPASS_GASS_READ_TIMEOUT=str(READ_TIMEOUT))
    start = time.monotonic()
    p = subprocess.run([str(gass_driver), "write", hostile.url("up.txt"), "payload\n"],
                       capture_output=True, env=env, timeout=30)
    took = time.monotonic() - start
    assert p.returncode == 3 and p.stdout == b"errno=ETIMEDOUT\n", (p.stdout, p.stderr)
    assert took < 2 * READ_TIMEOUT, took
    assert hostile.count("PUT", "/up.txt") == 1
    assert [r.body for r in hostile.requests] == [b"payload\n"]


# -- the same through the agent, with a real program ----------------------------------------

@QUICK
@pytest.mark.parametrize("path,message", [
    ("overlong", b"Input/output error"), ("endless", b"File too large"),
    ("silent", b"Connection timed out"),
])
def test_cat_gets_a_clean_error(run, gass_env, hostile, quick, path, message):
    hostile.script["/overlong"] = raw(header("200 OK", "Content-Length: 5") + b"hello-EXTRA-BYTES")
    hostile.script["/endless"] = endless(header("200 OK"))
    hostile.script["/silent"] = silence
    start = time.monotonic()
    p = run("cat", hostile.url(path), BYPASS_GASS_QUICK=quick, BYPASS_GASS_CACHE_MAX="2M",
            BYPASS_GASS_READ_TIMEOUT=str(READ_TIMEOUT))
    assert time.monotonic() - start < 2 * READ_TIMEOUT
    if path == "overlong" and quick == "0":  # libcurl serves the announced five bytes
        assert (p.returncode, p.stdout) == (0, b"hello"), p.stderr
        assert_cache_clean(gass_env, b"hello")
    else:
        assert p.returncode == 1 and p.stdout == b"" and message in p.stderr, p.stderr
        assert_cache_clean(gass_env)


# -- progress and proxies -----------------------------------------------------------------------

def read_with_terminal(gass_driver, env, url, out_path):
    """Run the driver's read with stderr on a pseudo-terminal and stdout in `out_path` (a pipe
    would fill while the terminal is read); (returncode, stdout, terminal)."""
    import pty

    master, slave = pty.openpty()
    try:
        with open(out_path, "wb") as out:
            p = subprocess.Popen([str(gass_driver), "read", url], stdout=out, stderr=slave,
                                 env=env)
        os.close(slave)
        slave = -1
        terminal = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            terminal += chunk
        return p.wait(timeout=30), Path(out_path).read_bytes(), terminal
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)


@QUICK
@pytest.mark.parametrize("setting", [None, "0"], ids=["default", "off"])
def test_progress_line_on_a_terminal(gass_driver, gass_env, hostile, quick, setting, tmp_path):
    body = b"p" * 400_000
    hostile.script["/slow"] = in_parts(header("200 OK", f"Content-Length: {len(body)}"),
                                       *[body[i:i + 20_000] for i in range(0, len(body), 20_000)],
                                       pause=0.09)
    env = dict(gass_env, BYPASS_GASS_QUICK=quick)
    if setting is not None:
        env["BYPASS_GASS_PROGRESS"] = setting
    rc, out, terminal = read_with_terminal(gass_driver, env, hostile.url("slow"), tmp_path / "out")
    assert rc == 0 and out == body
    if setting == "0":
        assert terminal == b""
    else:
        assert b"\rgass: " + hostile.url("slow").encode() in terminal, terminal
        assert b"MiB" in terminal and terminal.endswith(b"\r\n"), terminal


@QUICK
def test_no_progress_line_when_stderr_is_not_a_terminal(gass_driver, gass_env, hostile, quick):
    hostile.script["/slow"] = in_parts(header("200 OK", "Content-Length: 8"), b"slow", b"body",
                                       pause=1.2)
    p = subprocess.run([str(gass_driver), "read", hostile.url("slow")], capture_output=True,
                       env=dict(gass_env, BYPASS_GASS_QUICK=quick), timeout=30)
    assert (p.returncode, p.stdout, p.stderr) == (0, b"slowbody", b"")


@QUICK
@pytest.mark.parametrize("variable", ["BYPASS_GASS_PROXY", "http_proxy"])
def test_proxy_settings(read, gass_env, hostile, quick, variable, site):
    """Both paths send requests through the proxy named by the setting, except for no_proxy."""
    (site / "p.txt").write_bytes(b"direct\n")
    hostile.script["/p.txt"] = raw(header("200 OK", "Content-Length: 11") + b"by proxy!!\n")
    proxy = f"http://127.0.0.1:{hostile.port}"
    with HttpServer(site) as origin:
        url = origin.url("p.txt")
        data, err, _ = read(url, quick, **{variable: proxy})
        assert (data, err) == (b"by proxy!!\n", None)
        assert [r.target for r in hostile.requests] == [url]
        assert origin.count() == 0
        data, err, _ = read(url, quick, **{variable: proxy, "no_proxy": "localhost,127.0.0.1"})
        assert (data, err) == (b"direct\n", None)
        assert origin.count("GET", "/p.txt") == 1 and len(hostile.requests) == 1


def test_exit_from_a_signal_handler_during_a_transfer(gass_driver, gass_env, hostile, site):
    """_exit from a handler that interrupted an exchange: no second exchange inside the first,
    no deadlock; the staged data is kept and the exit says it failed."""
    hostile.script["/silent"] = silence
    with HttpServer(site) as good:
        start = time.monotonic()
        p = subprocess.run([str(gass_driver), "exitinsignal", good.url("w.txt"), "staged data\n",
                            hostile.url("silent")], capture_output=True, timeout=30,
                           env=dict(gass_env, BYPASS_GASS_READ_TIMEOUT="20"))
        assert time.monotonic() - start < 5
        assert p.returncode == 5, (p.returncode, p.stdout, p.stderr)
        assert b"exit in the middle of a transfer" in p.stderr and good.count("PUT") == 0
    unsent = Path(gass_env["BYPASS_GASS_CACHE"]) / "unsent"
    kept = [f for f in unsent.iterdir() if f.suffix != ".url"]
    assert [f.read_bytes() for f in kept] == [b"staged data\n"]
