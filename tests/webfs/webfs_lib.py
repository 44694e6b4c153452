"""Helpers for the webfs tests: a GROW-FS tree made by the real make_growfs, served over HTTP on
127.0.0.1 by python's http.server (in a thread of the test process, stopped by the test), with a
request log and a few hostile behaviours."""

from __future__ import annotations

import http.server
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SPEC = REPO / "agents" / "webfs" / "webfs.bypass"


def require(*programs: str) -> None:
    missing = [p for p in programs if shutil.which(p) is None]
    if missing:
        pytest.fail(f"the webfs tests need {', '.join(missing)} "
                    "(apt-get install coop-computing-tools; listed in .ci/apt-packages.txt)")


def make_growfs(tree: Path) -> None:
    require("make_growfs")
    # make_growfs takes any argument with a '-' in it for an option: give it a plain name
    p = subprocess.run(["make_growfs", tree.name], cwd=tree.parent, capture_output=True)
    assert p.returncode == 0 and (tree / ".growfsdir").is_file() and (tree / ".growfschecksum").is_file(), p


def sample_tree(root: Path) -> Path:
    """Real content: a python package, a shell script, a dynamically linked program, symlinks,
    odd names, an empty file, a read-only directory; whole-second times."""
    root.mkdir(parents=True)
    (root / "bin").mkdir()
    (root / "lib" / "pkg" / "sub").mkdir(parents=True)
    (root / "share" / "doc").mkdir(parents=True)
    shutil.copy2("/usr/bin/true", root / "bin" / "mytrue")
    (root / "bin" / "hello.sh").write_text('#!/bin/sh\necho "hello from $0 with $*"\n')
    (root / "bin" / "hello.sh").chmod(0o755)
    (root / "lib" / "pkg" / "__init__.py").write_text("from .sub.mod import VALUE\nNAME = 'pkg'\n")
    (root / "lib" / "pkg" / "sub" / "__init__.py").write_text("")
    (root / "lib" / "pkg" / "sub" / "mod.py").write_text("VALUE = sum(range(10))\n")
    big = bytes((i * 7) & 0xFF for i in range(200_000))
    (root / "share" / "data.bin").write_bytes(big)
    (root / "share" / "doc" / "README with spaces.txt").write_text("needle in the tree\n" * 50)
    (root / "share" / "doc" / "empty").write_bytes(b"")
    (root / "share" / "latest").symlink_to("doc/README with spaces.txt")
    (root / "bin" / "hi").symlink_to("hello.sh")
    (root / "frozen").mkdir()
    (root / "frozen" / "inside.txt").write_text("in a read-only directory\n")
    t = 1_600_000_000
    for i, p in enumerate(sorted(root.rglob("*"), key=lambda p: -len(p.parts))):
        os.utime(p, (t + i, t + i), follow_symlinks=False)
    (root / "frozen").chmod(0o555)
    os.utime(root, (t, t))
    return root


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass

    def do_GET(self):  # noqa: N802
        srv = self.server
        with srv.lock:
            srv.requests.append(self.path)
        mode = srv.mode
        for start, seconds in getattr(srv, "delay", {}).items():   # a slow mirror
            if self.path.startswith(start):
                time.sleep(seconds)
        if mode == "silent":
            srv.stop.wait(30)
            return
        if mode == "truncate" and not self.path.endswith((".growfsdir", ".growfschecksum")):
            local = Path(self.translate_path(self.path))
            if local.is_file():
                data = local.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
        super().do_GET()


class Server:
    """http.server on 127.0.0.1 serving `directory`; `mode` may be set to "silent" or "truncate"."""

    def __init__(self, directory: Path):
        handler = lambda *a, **k: _Handler(*a, directory=str(directory), **k)  # noqa: E731
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.httpd.requests = []
        self.httpd.lock = threading.Lock()
        self.httpd.mode = "plain"
        self.httpd.stop = threading.Event()
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}"

    @property
    def requests(self) -> list[str]:
        with self.httpd.lock:
            return list(self.httpd.requests)

    def set_mode(self, mode: str) -> None:
        self.httpd.mode = mode

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)


def dead_port() -> int:
    """A port on 127.0.0.1 nobody listens on (bound, then closed)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# A descriptor kept (O_PATH) on share/data.bin's placeholder while the file is fetched, reopened
# through /proc/self/fd afterwards: the kernel names the replaced inode "... (deleted)".
# Prints the MD5 of the file as read, then through the kept descriptor.
REOPEN_HELD = """import hashlib, os
os.chdir("/software/share")
held = os.open("data.bin", os.O_PATH)
with open("data.bin", "rb") as f:
    first = f.read()
with open(f"/proc/self/fd/{held}", "rb") as f:
    again = f.read()
print(hashlib.md5(first).hexdigest(), hashlib.md5(again).hexdigest())
"""


def run(agent: Path, cmd, env: dict, cwd=None, timeout: float = 60, shell: bool = False):
    full = {k: v for k, v in os.environ.items() if not k.startswith("BYPASS_") and k != "LD_PRELOAD"}
    full.update(env)
    full["LD_PRELOAD"] = str(agent)
    t0 = time.monotonic()
    p = subprocess.run(cmd, env=full, cwd=cwd, capture_output=True, timeout=timeout, shell=shell)
    p.elapsed = time.monotonic() - t0
    return p
