"""A scripted raw HTTP server on 127.0.0.1 for the gass hostile-server tests.

Each path is answered by a script: a function given the connection and the request (method,
path, headers, and for PUT the body as far as Content-Length says) that writes whatever bytes it
likes, slowly or never. Unknown paths get a 404. Every request is recorded in `requests`.

    with HostileServer() as srv:
        srv.script["/x"] = raw(b"HTTP/1.1 200 OK\\r\\nContent-Length: 5\\r\\n\\r\\nhello-EXTRA")
        url = srv.url("/x")

`silent=True` makes a server that takes connections and never reads or answers them.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass, field
from typing import Callable


@dataclass
class Request:
    method: str
    target: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    @property
    def path(self) -> str:
        target = self.target
        if "://" in target:  # absolute form: a request made to a proxy
            target = "/" + target.split("://", 1)[1].partition("/")[2]
        return target.split("?", 1)[0]


Script = Callable[["Conn", Request], None]


class Conn:
    """The connection a script writes to; `stopping` is set when the server stops."""

    def __init__(self, sock: socket.socket, stopping: threading.Event):
        self.sock = sock
        self.stopping = stopping

    def send(self, data: bytes) -> bool:
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    def wait(self, seconds: float) -> bool:
        """Sleep unless the server stops; False when it does."""
        return not self.stopping.wait(seconds)


def raw(data: bytes) -> Script:
    """Send `data` in one write, then close."""
    def script(conn: Conn, req: Request) -> None:
        conn.send(data)
    return script


def in_parts(*parts: bytes, pause: float = 0.2) -> Script:
    """Send each part as its own write, with a pause between them, then close."""
    def script(conn: Conn, req: Request) -> None:
        for i, part in enumerate(parts):
            if i and not conn.wait(pause):
                return
            if not conn.send(part):
                return
    return script


def header(status: str = "200 OK", *lines: str) -> bytes:
    return ("HTTP/1.1 " + status + "\r\n" + "".join(line + "\r\n" for line in lines)
            + "\r\n").encode()


def endless(head: bytes, chunk: bytes = b"x" * 65536, pause: float = 0.0) -> Script:
    """Send `head`, then `chunk` again and again until the client goes or the server stops."""
    def script(conn: Conn, req: Request) -> None:
        if not conn.send(head):
            return
        while conn.send(chunk):
            if pause and not conn.wait(pause):
                return
    return script


def silence(conn: Conn, req: Request) -> None:
    """Read the request, then say nothing until the server stops."""
    conn.wait(3600)


class HostileServer:
    def __init__(self, silent: bool = False):
        self.silent = silent
        self.script: dict[str, Script] = {}
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._sock: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> "HostileServer":
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        if not self.silent:
            self._sock.settimeout(0.05)
            self._spawn(self._accept_loop)
        return self

    def stop(self) -> None:
        self._stopping.set()
        for t in self._threads:
            t.join(timeout=5)
        with self._lock:
            for c in self._conns:
                c.close()
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> "HostileServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._sock is not None
        return self._sock.getsockname()[1]

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}"

    def count(self, method: str | None = None, path: str | None = None) -> int:
        with self._lock:
            return sum(1 for r in self.requests
                       if (method is None or r.method == method) and (path is None or r.path == path))

    # -- serving ---------------------------------------------------------------------------

    def _spawn(self, target, *args) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(t)
        t.start()

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                sock, _ = self._sock.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            with self._lock:
                self._conns.append(sock)
            self._spawn(self._serve, sock)

    def _serve(self, sock: socket.socket) -> None:
        sock.settimeout(0.2)
        try:
            req = self._read_request(sock)
            if req is None:
                return
            with self._lock:
                self.requests.append(req)
            script = self.script.get(req.path)
            sock.settimeout(None)
            conn = Conn(sock, self._stopping)
            if script is None:
                conn.send(header("404 Not Found", "Content-Length: 10") + b"not found\n")
            else:
                script(conn, req)
        finally:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _recv(self, sock: socket.socket) -> bytes | None:
        while not self._stopping.is_set():
            try:
                return sock.recv(65536)
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return None
        return None

    def _read_request(self, sock: socket.socket) -> Request | None:
        data = b""
        while b"\r\n\r\n" not in data:
            more = self._recv(sock)
            if not more:
                return None
            data += more
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target, _version = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0") or 0)
        while len(rest) < length:
            more = self._recv(sock)
            if not more:
                break
            rest += more
        return Request(method, target, headers, rest[:length])
