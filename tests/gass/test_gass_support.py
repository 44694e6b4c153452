"""The gass support library (agents/gass/*.c) driven by tests/gass/gass_driver.c against the
test HTTP server: URL parsing, fetch and cache, stat, errors, write-back, concurrency."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gassenv import REPO, requires_libcurl
from http_server import HttpServer, free_port, touch_later

pytestmark = requires_libcurl


class Driver:
    def __init__(self, exe: Path, env: dict[str, str]):
        self.exe = exe
        self.env = env

    def run(self, *args: str, timeout: float = 30, **env) -> subprocess.CompletedProcess:
        full_env = dict(self.env, **env)
        return subprocess.run([str(self.exe), *args], capture_output=True, env=full_env,
                              timeout=timeout)

    def ok(self, *args: str, **env) -> bytes:
        p = self.run(*args, **env)
        assert p.returncode == 0, (args, p.stdout, p.stderr)
        return p.stdout

    def errno(self, *args: str, **env) -> str:
        p = self.run(*args, **env)
        assert p.returncode == 3, (args, p.returncode, p.stdout, p.stderr)
        return p.stdout.decode().strip().removeprefix("errno=")


@pytest.fixture
def drv(gass_driver, gass_env) -> Driver:
    return Driver(gass_driver, gass_env)


def cache_files(env) -> list[Path]:
    return sorted(p for p in Path(env["BYPASS_GASS_CACHE"]).rglob("*") if p.is_file())


# -- URL recognition and parsing ----------------------------------------------------------------

@pytest.mark.parametrize("text,expected", [
    ("http://h/x", "1"), ("https://h/x", "1"), ("HTTP://h/x", "1"), ("HtTpS://h", "1"),
    ("http:/h/x", "0"), ("http", "0"), ("ftp://h/x", "0"), ("/tmp/http://x", "0"),
    ("./http://x", "0"), ("", "0"), ("httpx://h", "0"),
])
def test_is_url(drv, text, expected):
    assert drv.ok("is_url", text).decode().strip() == expected


@pytest.mark.parametrize("url", [
    "http://", "http:///path", "http://host:/x", "http://host:99999/x", "http://host:12ab/x",
    "http://ho st/x", "http://host/a b", "http://host/%zz", "http://[::1/x", "http://h\x01/x",
    "http://user@/x",
])
def test_malformed_urls_are_einval(drv, url):
    assert drv.errno("read", url) == "EINVAL"
    assert drv.errno("stat", url) == "EINVAL"


def test_overlong_url_is_enametoolong(drv):
    assert drv.errno("read", "http://h/" + "a" * 5000) == "ENAMETOOLONG"


# -- reading and the cache ----------------------------------------------------------------------

def test_read_then_revalidate_without_download(drv, server, site):
    (site / "a.txt").write_bytes(b"alpha\n")
    url = server.url("a.txt")
    assert drv.ok("read", url) == b"alpha\n"
    assert drv.ok("read", url) == b"alpha\n"
    assert drv.ok("read", url + "#fragment") == b"alpha\n"
    assert server.count("GET", "/a.txt", 200) == 1
    assert server.count("GET", "/a.txt", 304) == 2


def test_changed_file_is_fetched_again(drv, server, site):
    (site / "a.txt").write_bytes(b"one\n")
    url = server.url("a.txt")
    assert drv.ok("read", url) == b"one\n"
    touch_later(site / "a.txt", b"two, longer\n")
    assert drv.ok("read", url) == b"two, longer\n"
    assert server.count("GET", "/a.txt", 200) == 2


def test_max_age_trusts_the_cache_without_asking(drv, server, site):
    (site / "a.txt").write_bytes(b"x")
    url = server.url("a.txt")
    drv.ok("read", url)
    server.reset_counts()
    assert drv.ok("read", url, BYPASS_GASS_MAX_AGE="60") == b"x"
    assert server.count() == 0


def test_binary_and_large_file(drv, server, site):
    data = os.urandom(12 * 1024 * 1024)
    (site / "big.bin").write_bytes(data)
    p = drv.run("read", server.url("big.bin"), BYPASS_GASS_DEBUG="1")
    assert p.returncode == 0 and p.stdout == data
    assert b"GET http://127.0.0.1" in p.stderr and b"-> 200" in p.stderr


def test_concurrent_processes_download_once(drv, server, site):
    data = os.urandom(8 * 1024 * 1024)
    (site / "shared.bin").write_bytes(data)
    url = server.url("shared.bin")
    procs = [subprocess.Popen([str(drv.exe), "read", url], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env=drv.env) for _ in range(4)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    assert all(o[0] == data for o in outs)
    assert server.count("GET", "/shared.bin", 200) == 1


def test_eviction_keeps_cache_under_limit(drv, server, site, gass_env):
    for name in "abc":
        (site / f"{name}.bin").write_bytes(os.urandom(1024 * 1024))
    limit = str(int(2.5 * 1024 * 1024))
    for name in "abc":
        drv.ok("read", server.url(f"{name}.bin"), BYPASS_GASS_CACHE_MAX=limit)
        time.sleep(0.05)  # distinct atimes
    data = [p for p in cache_files(gass_env) if p.parent.name == "data" and p.suffix != ".meta"]
    assert sum(p.stat().st_size for p in data) <= int(limit)
    # the least recently used (a) went first; the newest is always kept
    server.reset_counts()
    drv.ok("read", server.url("c.bin"))
    assert server.count("GET", "/c.bin", 304) == 1
    drv.ok("read", server.url("a.bin"))
    assert server.count("GET", "/a.bin", 200) == 1


def test_cache_clear_command(drv, server, site, gass_env):
    (site / "a.txt").write_bytes(b"a")
    drv.ok("read", server.url("a.txt"))
    out = subprocess.run([sys.executable, "-m", "bypass.cli", "gass", "cache", "clear"],
                         capture_output=True, text=True, env=gass_env, check=True).stdout
    assert "removed 1 entries" in out
    assert not [p for p in cache_files(gass_env) if p.parent.name == "data"]
    server.reset_counts()
    drv.ok("read", server.url("a.txt"))
    assert server.count("GET", "/a.txt", 200) == 1


# -- stat and access ----------------------------------------------------------------------------

def test_stat_uses_head_only(drv, server, site):
    (site / "s.txt").write_bytes(b"12345")
    os.utime(site / "s.txt", (1_600_000_000, 1_600_000_000))
    size, mtime, dev, ino = drv.ok("stat", server.url("s.txt")).decode().split()
    assert (size, mtime) == ("5", "1600000000")
    assert server.count("GET") == 0 and server.count("HEAD") == 1


def test_stat_and_fstat_agree(drv, server, site):
    """cp compares stat(name) with fstat(fd) and refuses a file that 'changed identity'."""
    (site / "s.txt").write_bytes(b"12345")
    os.utime(site / "s.txt", (1_600_000_000, 1_600_000_000))
    url = server.url("s.txt")
    assert drv.ok("stat", url) == drv.ok("fstat", url)


def test_access(drv, server, site):
    (site / "a.txt").write_bytes(b"a")
    assert drv.ok("access", server.url("a.txt"), "f") == b"ok\n"
    assert drv.ok("access", server.url("a.txt"), "rw") == b"ok\n"
    assert drv.errno("access", server.url("a.txt"), "x") == "EACCES"
    assert drv.errno("access", server.url("nope"), "r") == "ENOENT"


# -- errors -------------------------------------------------------------------------------------

def test_http_errors_map_to_errno(drv, server, site):
    (site / "secret.txt").write_bytes(b"s")
    (site / "private.txt").write_bytes(b"p")
    server.forbidden.add("/secret.txt")
    server.auth["/private.txt"] = "alice:wonder"
    assert drv.errno("read", server.url("missing.txt")) == "ENOENT"
    assert drv.errno("stat", server.url("missing.txt")) == "ENOENT"
    assert drv.errno("read", server.url("secret.txt")) == "EACCES"
    assert drv.errno("read", server.url("private.txt")) == "EACCES"  # 401
    assert drv.errno("read", server.url("private.txt", "alice:wrong")) == "EACCES"  # 403


def test_credentials_work_and_never_reach_logs_or_paths(drv, server, site, gass_env):
    (site / "private.txt").write_bytes(b"top secret\n")
    server.auth["/private.txt"] = "alice:s3cr3tpw"
    url = server.url("private.txt", "alice:s3cr3tpw")
    p = drv.run("read", url, BYPASS_GASS_DEBUG="1")
    assert p.returncode == 0 and p.stdout == b"top secret\n"
    drv.run("read", server.url("nope", "alice:s3cr3tpw"), BYPASS_GASS_DEBUG="1")
    assert b"s3cr3tpw" not in p.stderr and b"alice" not in p.stderr
    for path in cache_files(gass_env):
        assert "alice" not in str(path) and "s3cr3tpw" not in str(path)
        assert b"s3cr3tpw" not in path.read_bytes()


def test_query_strings_are_elided_in_logs(drv, server, site):
    (site / "q").write_bytes(b"q")
    p = drv.run("read", server.url("q?token=hunter2"), BYPASS_GASS_DEBUG="1")
    assert p.returncode == 0 and b"hunter2" not in p.stderr


def test_dead_server_is_eio_quickly(drv):
    start = time.monotonic()
    assert drv.errno("read", f"http://127.0.0.1:{free_port()}/x") == "EIO"
    assert drv.errno("stat", f"http://127.0.0.1:{free_port()}/x") == "EIO"
    assert time.monotonic() - start < 5


def test_stalled_server_times_out(drv, server):
    server.stall["/slow"] = 30
    start = time.monotonic()
    assert drv.errno("read", server.url("slow"), BYPASS_GASS_READ_TIMEOUT="1") == "ETIMEDOUT"
    assert time.monotonic() - start < 10


def test_redirects(drv, server, site):
    (site / "target.txt").write_bytes(b"landed\n")
    server.redirects["/hop1"] = "/hop2"
    server.redirects["/hop2"] = server.url("target.txt")
    server.redirects["/loop"] = "/loop"
    server.redirects["/elsewhere"] = "file:///etc/passwd"
    assert drv.ok("read", server.url("hop1")) == b"landed\n"
    assert drv.errno("read", server.url("loop")) == "ELOOP"
    assert drv.errno("read", server.url("hop1"), BYPASS_GASS_MAX_REDIRS="1") == "ELOOP"
    assert drv.errno("read", server.url("elsewhere")) == "EINVAL"


def test_missing_libcurl_is_a_clear_error(drv, server, site):
    (site / "a").write_bytes(b"a")
    # plain http is served without libcurl (gass_quick.c); turn that off to need libcurl
    p = drv.run("read", server.url("a"), BYPASS_GASS_LIBCURL="libcurl-does-not-exist.so",
                BYPASS_GASS_QUICK="0")
    assert p.returncode == 3 and b"cannot load" in p.stderr
    assert drv.ok("read", server.url("a"), BYPASS_GASS_LIBCURL="libcurl-does-not-exist.so") == b"a"


@pytest.mark.parametrize("quick", ["0", "1"])
def test_libcurl_and_quick_paths_agree(drv, server, site, quick):
    data = os.urandom(3 * 1024 * 1024 + 17)
    (site / "q.bin").write_bytes(data)
    url = server.url("q.bin")
    assert drv.ok("read", url, BYPASS_GASS_QUICK=quick) == data
    assert drv.ok("read", url, BYPASS_GASS_QUICK=quick) == data
    assert drv.ok("stat", url, BYPASS_GASS_QUICK=quick) == drv.ok("fstat", url, BYPASS_GASS_QUICK=quick)
    assert drv.errno("read", server.url("none"), BYPASS_GASS_QUICK=quick) == "ENOENT"
    assert server.count("GET", "/q.bin", 200) == 1
    assert server.count("GET", "/q.bin", 304) == 2


# -- write-back ---------------------------------------------------------------------------------

def test_write_creates_file_on_server(drv, server, site):
    drv.ok("write", server.url("out/new.txt"), "fresh content\n")
    assert (site / "out/new.txt").read_bytes() == b"fresh content\n"
    assert server.count("PUT") == 1


def test_refused_upload_fails_close(drv, server, site):
    server.put_status = 403
    assert drv.errno("write", server.url("x.txt"), "data") == "EACCES"
    server.put_status = 405
    assert drv.errno("write", server.url("x.txt"), "data") == "EROFS"
    server.put_status = 500
    assert drv.errno("write", server.url("x.txt"), "data") == "EIO"
    assert not (site / "x.txt").exists()


def test_upload_to_dead_server_fails_close(drv, server):
    url = f"http://127.0.0.1:{free_port()}/x"
    # O_TRUNC needs no download, so the open succeeds and the failure shows at close
    assert drv.errno("write", url, "data") == "EIO"


def test_last_close_of_dup_uploads_once(drv, server, site):
    drv.ok("dupwrite", server.url("d.txt"), "via dup\n")
    assert (site / "d.txt").read_bytes() == b"via dup\n"
    assert server.count("PUT") == 1


def test_exit_without_close_uploads(drv, server, site):
    drv.ok("exitwrite", server.url("e.txt"), "at exit\n")
    assert (site / "e.txt").read_bytes() == b"at exit\n"


def test_open_modes(drv, server, site):
    (site / "f.txt").write_bytes(b"base")
    url = server.url("f.txt")
    drv.ok("open", url, "R")                      # O_RDWR, nothing written: no upload
    drv.ok("open", url, "w")                      # O_WRONLY, nothing written: no upload
    assert server.count("PUT") == 0
    drv.ok("open", url, "wa", "+tail")            # O_APPEND keeps the server's content
    assert (site / "f.txt").read_bytes() == b"base+tail"
    drv.ok("open", url, "w", "BA")                # no O_TRUNC: overwrite in place
    assert (site / "f.txt").read_bytes() == b"BAse+tail"
    assert drv.errno("open", url, "wcx") == "EEXIST"
    assert drv.errno("open", server.url("none.txt"), "w") == "ENOENT"
    drv.ok("open", server.url("empty.txt"), "wc")  # O_CREAT alone creates an empty file
    assert (site / "empty.txt").read_bytes() == b""


def test_written_file_is_read_back_fresh(drv, server, site):
    (site / "r.txt").write_bytes(b"old")
    url = server.url("r.txt")
    assert drv.ok("read", url) == b"old"
    drv.ok("write", url, "new")
    assert drv.ok("read", url) == b"new"


def test_fopen_and_freopen(drv, server, site):
    drv.ok("fopen", server.url("s.txt"), "w", "stdio\n")
    assert (site / "s.txt").read_bytes() == b"stdio\n"
    assert drv.ok("fopen", server.url("s.txt"), "r") == b"stdio\n"
    drv.ok("fopen", server.url("s.txt"), "a", "more\n")
    assert (site / "s.txt").read_bytes() == b"stdio\nmore\n"
    drv.ok("freopen", server.url("o.txt"), "w", "through stdout\n")
    assert (site / "o.txt").read_bytes() == b"through stdout\n"
    server.put_status = 403
    assert drv.errno("freopen", server.url("o2.txt"), "w", "x") == "EACCES"


def test_unlink_deletes(drv, server, site):
    (site / "gone.txt").write_bytes(b"x")
    drv.ok("unlink", server.url("gone.txt"))
    assert not (site / "gone.txt").exists()
    assert drv.errno("unlink", server.url("gone.txt")) == "ENOENT"
