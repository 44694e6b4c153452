"""A small threaded HTTP/1.1 file server for the gass tests (and the gass benchmark).

Serves a directory. GET and HEAD carry ETag and Last-Modified and answer conditional requests
with 304; PUT writes files (creating directories), DELETE removes them. Tests steer it through
attributes: `redirects` (path -> location), `forbidden` and `auth` (path -> "user:password")
answered with 401/403, `put_status` to refuse uploads, `stall` paths that send headers and then
nothing. Every request is recorded in `requests` as (method, path, status) so a test can count
downloads.

    with HttpServer(root) as srv:
        url = srv.url("/data/in.txt")
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import os
import socket
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real servers
    server: "_Server"

    def log_message(self, format, *args):  # noqa: A002 - quiet unless asked
        if os.environ.get("GASS_TEST_SERVER_LOG"):
            super().log_message(format, *args)

    # -- helpers ---------------------------------------------------------------------------

    def _path(self) -> str:
        return unquote(urlsplit(self.path).path)

    def _local(self, path: str) -> Path:
        full = (self.server.root / path.lstrip("/")).resolve()
        if full != self.server.root and self.server.root not in full.parents:
            raise PermissionError(path)
        return full

    def _finish(self, status: int, body: bytes = b"", headers: dict | None = None) -> None:
        self.server.owner._record(self.command, self._path(), status)
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if status != 304:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _gate(self) -> bool:
        """Redirects, 401/403 and stalls; True if the request was answered here."""
        owner = self.server.owner
        path = self._path()
        if path in owner.redirects:
            self._finish(owner.redirect_status, b"", {"Location": owner.redirects[path]})
            return True
        if path in owner.stall:
            self.server.owner._record(self.command, path, 200)
            self.send_response(200)
            self.send_header("Content-Length", "1000000")
            self.end_headers()
            self.wfile.flush()
            owner._stop_event.wait(owner.stall[path])
            self.close_connection = True
            return True
        if path in owner.forbidden:
            self._finish(403, b"forbidden\n")
            return True
        if path in owner.auth:
            expected = "Basic " + base64.b64encode(owner.auth[path].encode()).decode()
            given = self.headers.get("Authorization")
            if given is None:
                self._finish(401, b"who are you?\n", {"WWW-Authenticate": 'Basic realm="gass"'})
                return True
            if given != expected:
                self._finish(403, b"wrong credentials\n")
                return True
        return False

    @staticmethod
    def _etag(st: os.stat_result) -> str:
        digest = hashlib.sha1(f"{st.st_ino}-{st.st_size}-{st.st_mtime_ns}".encode()).hexdigest()
        return f'"{digest[:20]}"'

    # -- methods ---------------------------------------------------------------------------

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        if self._gate():
            return
        try:
            local = self._local(self._path())
            f = open(local, "rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            self._finish(404, b"not found\n")
            return
        except PermissionError:
            self._finish(403, b"forbidden\n")
            return
        with f:
            st = os.fstat(f.fileno())
            etag = self._etag(st)
            last_modified = email.utils.formatdate(st.st_mtime, usegmt=True)
            headers = {"ETag": etag, "Last-Modified": last_modified}
            inm = self.headers.get("If-None-Match")
            ims = self.headers.get("If-Modified-Since")
            not_modified = False
            if inm is not None:
                not_modified = etag in [t.strip() for t in inm.split(",")] or inm.strip() == "*"
            elif ims is not None:
                try:
                    since = email.utils.parsedate_to_datetime(ims).timestamp()
                    not_modified = int(st.st_mtime) <= since
                except (TypeError, ValueError):
                    pass
            if not_modified:
                self._finish(304, b"", headers)
                return
            self.server.owner._record(self.command, self._path(), 200)
            self.send_response(200)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(st.st_size))
            self.end_headers()
            if self.command == "GET":
                self.wfile.flush()
                # sendfile: the server must not be what limits the benchmark.
                self.connection.sendfile(f)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length", "0"))
        return self.rfile.read(length)

    def do_PUT(self) -> None:
        body = self._read_body()
        if self._gate():
            return
        owner = self.server.owner
        if owner.put_status is not None:
            self._finish(owner.put_status, b"refused\n")
            return
        try:
            local = self._local(self._path())
        except PermissionError:
            self._finish(403, b"forbidden\n")
            return
        existed = local.exists()
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name}.put-{threading.get_ident()}")
        tmp.write_bytes(body)
        os.replace(tmp, local)
        self._finish(204 if existed else 201)

    def do_DELETE(self) -> None:
        if self._gate():
            return
        try:
            self._local(self._path()).unlink()
        except (FileNotFoundError, IsADirectoryError):
            self._finish(404, b"not found\n")
            return
        self._finish(204)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, owner: "HttpServer"):
        self.owner = owner
        self.root = owner.root
        super().__init__(("127.0.0.1", 0), _Handler)


class HttpServer:
    """Run the server on 127.0.0.1 (ephemeral port) in a thread; a context manager."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).resolve()
        self.redirects: dict[str, str] = {}
        self.redirect_status = 302
        self.forbidden: set[str] = set()
        self.auth: dict[str, str] = {}
        self.stall: dict[str, float] = {}
        self.put_status: int | None = None
        self.requests: list[tuple[str, str, int]] = []
        self._lock = threading.Lock()
        self._stop_event = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def _record(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self.requests.append((method, path, status))

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> "HttpServer":
        self._server = _Server(self)
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop_event.set()  # releases stalled handlers
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = None

    def __enter__(self) -> "HttpServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- for tests -------------------------------------------------------------------------

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.server_address[1]

    def url(self, path: str = "/", userinfo: str = "") -> str:
        at = f"{userinfo}@" if userinfo else ""
        return f"http://{at}127.0.0.1:{self.port}/{path.lstrip('/')}"

    def count(self, method: str | None = None, path: str | None = None,
              status: int | None = None) -> int:
        with self._lock:
            return sum(1 for m, p, s in self.requests
                       if (method is None or m == method) and (path is None or p == path)
                       and (status is None or s == status))

    def reset_counts(self) -> None:
        with self._lock:
            self.requests.clear()


def free_port() -> int:
    """A port nothing listens on (for "connection refused" tests)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def touch_later(path: str | os.PathLike, content: bytes) -> None:
    """Rewrite a served file so that its ETag and Last-Modified both change."""
    p = Path(path)
    old = p.stat().st_mtime if p.exists() else time.time()
    p.write_bytes(content)
    os.utime(p, (old + 2, old + 2))


if __name__ == "__main__":  # manual use: python3 http_server.py DIR
    import sys

    srv = HttpServer(sys.argv[1] if len(sys.argv) > 1 else ".").start()
    print(srv.url("/"), flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        srv.stop()
