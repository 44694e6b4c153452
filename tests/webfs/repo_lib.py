"""Helpers for the tests of Bypass repositories (bypass publish + the webfs agent): a real tree
with a C program and its own $ORIGIN library, a python package, a script and symlinks."""

from __future__ import annotations

import http.server
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import zlib
from pathlib import Path

from webfs_lib import REPO, require, sample_tree


def software_tree(root: Path, src: Path) -> Path:
    """sample_tree plus bin/greet, which needs lib/libgreet.so through $ORIGIN/../lib."""
    require("gcc")
    sample_tree(root)
    src.mkdir()
    (src / "greet.c").write_text("int greet_value(void) { return 42; }\n")
    (src / "main.c").write_text('#include <stdio.h>\n#include <greet.h>\n'
                                'int main(void) { printf("greet %d\\n", greet_value()); return 0; }\n')
    (root / "include").mkdir()
    (root / "include" / "greet.h").write_text("int greet_value(void);\n")
    os.chmod(root / "frozen", 0o755)
    t = os.stat(root / "lib").st_mtime_ns, os.stat(root / "bin").st_mtime_ns, os.stat(root).st_mtime_ns
    shutil.copy2(src / "main.c", root / "share" / "main.c")
    os.utime(root / "share", (1_600_000_000, 1_600_000_000))
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", root / "lib" / "libgreet.so", src / "greet.c"], check=True)
    subprocess.run(["gcc", "-I", root / "include", "-o", root / "bin" / "greet", src / "main.c", "-L", root / "lib",
                    "-lgreet", "-Wl,-rpath,$ORIGIN/../lib"], check=True)
    (root / "bin" / "pkg-init").symlink_to("../lib/pkg/__init__.py")   # from one subtree into another
    for p, ns in zip((root / "lib", root / "bin", root), t):
        os.utime(p, ns=(ns, ns))
    os.chmod(root / "frozen", 0o555)
    return root


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "bypass.cli", *map(str, args)], capture_output=True, text=True,
                       cwd=REPO, timeout=120)
    if check:
        assert p.returncode == 0, p.stderr
    return p


def object_path(repo: Path, digest: str) -> Path:
    return repo / "data" / digest[:2] / digest[2:]


def manifest(repo: Path) -> dict[str, str]:
    return dict(line.split(" ", 1) for line in (repo / "bypass.manifest").read_text().splitlines()[1:])


def catalog(repo: Path, digest: str, scratch: Path) -> sqlite3.Connection:
    """A catalog object, decompressed into a scratch file and opened."""
    scratch.write_bytes(zlib.decompress(object_path(repo, digest).read_bytes()))
    return sqlite3.connect(scratch)


def nested(repo: Path, scratch: Path) -> dict[str, str]:
    """path -> catalog hash of the root catalog's nested catalogs."""
    db = catalog(repo, manifest(repo)["root"], scratch)
    rows = dict(db.execute("SELECT path, nested FROM entries WHERE nested IS NOT NULL"))
    db.close()
    return rows


def file_hash(repo: Path, path: str, scratch: Path) -> str:
    for digest in [manifest(repo)["root"], *nested(repo, scratch).values()]:
        db = catalog(repo, digest, scratch)
        row = db.execute("SELECT hash FROM entries WHERE path = ?", (path,)).fetchone()
        db.close()
        if row:
            return row[0]
    raise KeyError(path)


def listing(cmd: str, where: str, env_run, local: Path) -> tuple[str, str]:
    """(output under the agent at /software, output on the local tree), paths made alike."""
    import shlex
    native = subprocess.run(cmd.replace("TREE", shlex.quote(str(local))), shell=True, capture_output=True,
                            text=True).stdout.replace(str(local), "/software")
    p = env_run(cmd.replace("TREE", where))
    assert p.returncode == 0, p.stderr
    return p.stdout.decode(), native


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass

    def do_GET(self):  # noqa: N802
        """A forward proxy: the request line holds the whole URL; relay the origin's answer."""
        self.server.seen.append(self.path)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(self.path, timeout=10) as r:
                status, body = r.status, r.read()
        except urllib.error.HTTPError as exc:
            status, body = exc.code, b""
        except OSError:
            status, body = 502, b""
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Proxy:
    """A small caching-less HTTP forward proxy on 127.0.0.1 with a log of the URLs it was asked for."""

    def __init__(self):
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ProxyHandler)
        self.httpd.daemon_threads = True
        self.httpd.seen = []
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def seen(self) -> list[str]:
        return list(self.httpd.seen)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)
