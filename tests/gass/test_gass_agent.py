"""The gass agent end to end: real programs given URLs, against the test HTTP server.

Each program's result is compared with the same program run on the same file on disk."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from gassenv import REPO, requires_libcurl
from http_server import free_port, touch_later

pytestmark = requires_libcurl


def native(*cmd: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, timeout=60, cwd=cwd)


@pytest.fixture
def text_file(site) -> Path:
    lines = [f"{(i * 7919) % 1000:04d} line {i} {'error' if i % 13 == 0 else 'ok'}\n"
             for i in range(5000)]
    path = site / "data" / "in.txt"
    path.parent.mkdir()
    path.write_text("".join(lines))
    return path


@pytest.mark.parametrize("argv", [
    ["cat", "{}"], ["wc", "{}"], ["wc", "-l", "{}"], ["grep", "-c", "error", "{}"],
    ["head", "-n", "7", "{}"], ["tail", "-c", "100", "{}"], ["sort", "{}"], ["md5sum", "{}"],
])
def test_readers_match_local(run, server, text_file, argv):
    url = server.url("data/in.txt")
    got = run(*[a.format(url) for a in argv])
    want = native(*[a.format(text_file) for a in argv])
    assert got.returncode == want.returncode == 0, got.stderr
    assert got.stdout.replace(url.encode(), b"F") == want.stdout.replace(str(text_file).encode(), b"F")


def test_cp_from_url(run, server, text_file, tmp_path):
    p = run("cp", server.url("data/in.txt"), str(tmp_path / "copy.txt"))
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "copy.txt").read_bytes() == text_file.read_bytes()


def test_cp_to_url_creates_it_on_the_server(run, server, site, tmp_path):
    src = tmp_path / "local.bin"
    src.write_bytes(os.urandom(300_000))
    p = run("cp", str(src), server.url("uploads/new.bin"))
    assert p.returncode == 0, p.stderr
    assert (site / "uploads/new.bin").read_bytes() == src.read_bytes()
    assert server.count("PUT", "/uploads/new.bin") == 1


def test_refused_upload_makes_cp_fail(run, server, site, tmp_path):
    server.put_status = 403
    (tmp_path / "f").write_text("x")
    p = run("cp", str(tmp_path / "f"), server.url("ro/f"))
    assert p.returncode != 0
    assert b"Permission denied" in p.stderr
    assert not (site / "ro/f").exists()


def test_sort_output_to_url_from_same_url(run, server, site, text_file):
    url = server.url("data/in.txt")
    want = native("sort", str(text_file)).stdout
    p = run("sort", "-o", url, url)
    assert p.returncode == 0, p.stderr
    assert text_file.read_bytes() == want
    p = run("sort", "-r", "-o", server.url("out/sorted.txt"), url)
    assert p.returncode == 0, p.stderr
    assert (site / "out/sorted.txt").read_bytes() == native("sort", "-r", str(text_file)).stdout


def test_shell_redirect_style_write_with_tee(run, server, site):
    p = run("tee", server.url("t.txt"), input=b"through tee\n")
    assert p.returncode == 0, p.stderr
    assert (site / "t.txt").read_bytes() == b"through tee\n"


def test_tar_extracts_archive_by_url(run, server, site, tmp_path):
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.txt").write_text("A\n")
    (tree / "sub" / "b.bin").write_bytes(os.urandom(50_000))
    with tarfile.open(site / "src.tar.gz", "w:gz") as tar:
        tar.add(tree, arcname="tree")
    out = tmp_path / "out"
    out.mkdir()
    p = run("tar", "xzf", server.url("src.tar.gz"), "-C", str(out))
    assert p.returncode == 0, p.stderr
    assert (out / "tree/a.txt").read_text() == "A\n"
    assert (out / "tree/sub/b.bin").read_bytes() == (tree / "sub/b.bin").read_bytes()


def test_python_open_read(run, server, site):
    data = os.urandom(3 * 1024 * 1024)
    (site / "big.bin").write_bytes(data)
    code = f"import sys; sys.stdout.buffer.write(open({server.url('big.bin')!r}, 'rb').read())"
    p = run(sys.executable, "-c", code)
    assert p.returncode == 0, p.stderr
    assert p.stdout == data


def test_python_write_and_missing(run, server, site):
    url = server.url("py/out.txt")
    code = (f"open({url!r}, 'w').write('from python\\n')\n"
            f"try:\n    open({server.url('nope')!r})\nexcept FileNotFoundError:\n    print('ENOENT')\n")
    p = run(sys.executable, "-c", code)
    assert p.returncode == 0, p.stderr
    assert p.stdout == b"ENOENT\n"
    assert (site / "py/out.txt").read_bytes() == b"from python\n"



def test_sqlite3_reads_database_by_url(run, server, site):
    db = sqlite3.connect(site / "db.sqlite")
    db.execute("create table t(x integer, name text)")
    db.executemany("insert into t values (?, ?)", [(i, f"n{i}") for i in range(1000)])
    db.commit()
    db.close()
    query = "select count(*), sum(x), max(name) from t"
    p = run("sqlite3", server.url("db.sqlite"), query)
    assert p.returncode == 0, p.stderr
    assert p.stdout == native("sqlite3", str(site / "db.sqlite"), query).stdout
    assert server.count("PUT") == 0  # read-only use does not write back


def test_stat_ls_and_test(run, server, site):
    (site / "s.txt").write_bytes(b"12345")
    os.utime(site / "s.txt", (1_600_000_000, 1_600_000_000))
    p = run("stat", "-c", "%s %Y %F", server.url("s.txt"))
    assert p.stdout == b"5 1600000000 regular file\n", p.stderr
    p = run("ls", "-l", server.url("s.txt"))
    assert p.returncode == 0 and p.stderr == b"", p.stderr
    assert run("test", "-r", server.url("s.txt")).returncode == 0
    assert run("test", "-e", server.url("missing")).returncode == 1
    assert server.count("GET") == 0  # all of it by HEAD


def test_two_programs_at_once_download_once(run, server, site, gass_so, gass_env):
    data = os.urandom(16 * 1024 * 1024)
    (site / "shared.bin").write_bytes(data)
    env = dict(gass_env, LD_PRELOAD=str(gass_so))
    procs = [subprocess.Popen(["md5sum", server.url("shared.bin")], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env=env) for _ in range(2)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert outs[0][0] == outs[1][0]
    assert server.count("GET", "/shared.bin", 200) == 1


def test_changed_file_refetched_unchanged_not(run, server, site):
    (site / "v.txt").write_bytes(b"version 1\n")
    url = server.url("v.txt")
    assert run("cat", url).stdout == b"version 1\n"
    assert run("cat", url).stdout == b"version 1\n"
    assert server.count("GET", "/v.txt", 200) == 1
    assert server.count("GET", "/v.txt", 304) == 1
    touch_later(site / "v.txt", b"version 2, longer\n")
    assert run("cat", url).stdout == b"version 2, longer\n"
    assert server.count("GET", "/v.txt", 200) == 2


def test_mv_url_to_local_copies_then_deletes(run, server, site, tmp_path):
    (site / "m.txt").write_bytes(b"moving\n")
    p = run("mv", server.url("m.txt"), str(tmp_path / "m.txt"))
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "m.txt").read_bytes() == b"moving\n"
    assert not (site / "m.txt").exists()


@pytest.mark.parametrize("status,message", [
    (404, b"No such file or directory"), (403, b"Permission denied"), (401, b"Permission denied"),
])
def test_server_errors_reach_the_program(run, server, site, status, message):
    (site / "f").write_bytes(b"x")
    if status == 403:
        server.forbidden.add("/f")
    elif status == 401:
        server.auth["/f"] = "u:p"
    path = "f" if status != 404 else "missing"
    p = run("cat", server.url(path))
    assert p.returncode == 1 and message in p.stderr


def test_dead_server_fails_fast(run):
    start = time.monotonic()
    p = run("cat", f"http://127.0.0.1:{free_port()}/x", timeout=20)
    assert p.returncode == 1 and b"Input/output error" in p.stderr
    assert time.monotonic() - start < 10


def test_stalled_server_times_out(run, server):
    server.stall["/slow"] = 30
    start = time.monotonic()
    p = run("cat", server.url("slow"), timeout=20, BYPASS_GASS_READ_TIMEOUT="1")
    assert p.returncode == 1 and b"timed out" in p.stderr
    assert time.monotonic() - start < 10


def test_programs_without_urls_never_load_libcurl(run, tmp_path):
    p = run("cat", "/proc/self/maps")
    assert p.returncode == 0 and b"gass.so" in p.stdout
    assert b"libcurl" not in p.stdout


def test_bypass_run(gass_env, server, text_file, tmp_path):
    p = subprocess.run([sys.executable, "-m", "bypass.cli", "run", str(REPO / "agents/gass/gass.bypass"),
                        "--", "grep", "-c", "error", server.url("data/in.txt")],
                       capture_output=True, env=gass_env, timeout=120, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout == native("grep", "-c", "error", str(text_file)).stdout
