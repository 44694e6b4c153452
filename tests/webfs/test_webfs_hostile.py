"""A hostile or broken server: a clean errno within the timeouts, one line naming the file and the
server, and nothing wrong left in the cache; a dead mirror is skipped for the next one."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from webfs_lib import Server, dead_port, run


def _cache_files(cache: Path) -> list[Path]:
    return sorted(p for p in cache.rglob("*")) if cache.exists() else []


def _placeholder(cache: Path, rel: str) -> os.stat_result:
    [tree] = [p for p in (cache / "trees").iterdir() if p.is_dir() and not p.name.endswith(".lock")]
    return os.stat(tree / "root" / rel)


def test_catalog_not_matching_its_checksum_is_refused(webfs_so, env, served, tmp_path):
    _, tree, _ = served
    (tree / ".growfschecksum").write_text("0" * 40 + "  -\n")
    p = run(webfs_so, ["ls", "/software"], env)
    assert p.returncode == 2
    assert b"Input/output error" in p.stderr
    assert b"does not match .growfschecksum" in p.stderr
    trees = tmp_path / "cache" / "trees"
    assert not trees.exists() or [q.name for q in trees.iterdir()] == []


def test_malformed_catalogs_are_refused(webfs_so, env, served, tmp_path):
    import hashlib

    _, tree, _ = served
    good = (tree / ".growfsdir").read_bytes()
    bad = [
        b"D root\t16877 4096 1 0\nF ../escape\t33188 1 1 " + b"a" * 40 + b"\nE\n",
        b"D root\t16877 4096 1 0\nF x\t33188 1 1 nothex\nE\n",
        b"D root\t16877 4096 1 0\nF x\t33188 1 1 " + b"a" * 40 + b"\n",           # no closing E
        b"D root\t16877 4096 1 0\nQ x\t33188 1 1 0\nE\n",
        b"D root\t16877 4096 1 0\nF a/b\t33188 1 1 " + b"a" * 40 + b"\nE\n",
        good[: len(good) // 2],                                                     # cut short
        b"",
    ]
    for i, catalog in enumerate(bad):
        (tree / ".growfsdir").write_bytes(catalog)
        (tree / ".growfschecksum").write_text(hashlib.sha1(catalog).hexdigest() + "  -\n")
        e = dict(env, BYPASS_WEBFS_CACHE=str(tmp_path / f"cache{i}"))
        p = run(webfs_so, ["ls", "/software"], e, timeout=30)
        assert p.returncode == 2 and b"Input/output error" in p.stderr, (catalog, p.stderr)
        assert not (tmp_path / f"cache{i}" / "trees" / hashlib.sha1(catalog).hexdigest()).exists()
        assert b"is malformed: refused" in p.stderr
        assert not list((tmp_path / f"cache{i}").rglob("escape"))
        assert not list((tmp_path / f"cache{i}").rglob("*.tmp-*"))          # nothing half-built
        for q in (tmp_path / f"cache{i}").rglob("*"):  # the refused half-built tree: removable
            if q.is_dir():
                q.chmod(0o755)


def test_file_not_matching_the_catalog_is_eio_and_not_cached(webfs_so, env, served, tmp_path):
    local, tree, srv = served
    target = tree / "share" / "data.bin"
    good = target.read_bytes()
    target.write_bytes(bytes([good[0] ^ 1]) + good[1:])            # same size, one bit off
    p = run(webfs_so, ["cat", "/software/share/data.bin"], env)
    assert p.returncode == 1 and p.stdout == b""
    assert b"Input/output error" in p.stderr
    assert b"/software/share/data.bin" in p.stderr and f"127.0.0.1:{srv.port}".encode() in p.stderr
    assert _placeholder(tmp_path / "cache", "share/data.bin").st_blocks == 0
    assert not [q for q in _cache_files(tmp_path / "cache") if q.name.startswith("fetch.") and "lock" not in q.name]
    target.write_bytes(good[:-1])                                    # shorter
    p = run(webfs_so, ["cat", "/software/share/data.bin"], env)
    assert p.returncode == 1 and b"Input/output error" in p.stderr
    target.write_bytes(good)                                         # repaired: now it works
    p = run(webfs_so, ["cat", "/software/share/data.bin"], env)
    assert p.returncode == 0 and p.stdout == (local / "share" / "data.bin").read_bytes()


def test_truncated_bodies_fail_cleanly(webfs_so, env, served, tmp_path):
    _, _, srv = served
    assert run(webfs_so, ["ls", "/software"], env).returncode == 0   # the catalog, whole
    srv.set_mode("truncate")
    p = run(webfs_so, ["cat", "/software/share/data.bin"], env, timeout=30)
    assert p.returncode == 1 and p.stdout == b""
    assert p.elapsed < 20
    assert _placeholder(tmp_path / "cache", "share/data.bin").st_blocks == 0
    srv.set_mode("plain")
    assert run(webfs_so, ["cat", "/software/share/data.bin"], env).returncode == 0


def test_a_silent_server_times_out(webfs_so, env, served, tmp_path):
    _, _, srv = served
    srv.set_mode("silent")
    p = run(webfs_so, ["ls", "/software"], env, timeout=60)
    assert p.returncode == 2
    assert b"timed out" in p.stderr, p.stderr
    assert p.elapsed < 15
    trees = tmp_path / "cache" / "trees"
    assert not trees.exists() or list(trees.iterdir()) == []


def test_a_dead_mirror_is_skipped_and_said(webfs_so, env, served):
    local, _, srv = served
    e = dict(env, BYPASS_WEBFS_MOUNTS=f"/software=http://127.0.0.1:{dead_port()}/tree,{srv.url('tree')}")
    p = run(webfs_so, ["cat", "/software/share/latest"], e)
    assert p.returncode == 0, p.stderr
    assert p.stdout == (local / "share" / "latest").read_bytes()
    assert b"trying " + srv.url("tree").encode() in p.stderr


def test_a_corrupt_mirror_is_skipped_for_a_good_one(webfs_so, env, served, tmp_path):
    local, tree, srv = served
    site2 = tmp_path / "site2"
    shutil.copytree(tree, site2 / "tree", symlinks=True)
    bad = tree / "share" / "data.bin"
    bad.write_bytes(b"x" * bad.stat().st_size)
    with Server(site2) as good:
        e = dict(env, BYPASS_WEBFS_MOUNTS=f"/software={srv.url('tree')},{good.url('tree')}")
        p = run(webfs_so, ["cat", "/software/share/data.bin"], e)
        assert p.returncode == 0, p.stderr
        assert p.stdout == (local / "share" / "data.bin").read_bytes()
        assert b"refused" in p.stderr
        assert good.requests[-1] == "/tree/share/data.bin"
    (site2 / "tree" / "frozen").chmod(0o755)


def test_a_stopped_server_with_a_warm_cache_is_not_an_error(webfs_so, env, served, tmp_path):
    local, tree, srv = served
    assert run(webfs_so, "find /software -type f -exec cat {} + | md5sum", env, shell=True).returncode == 0
    srv.httpd.shutdown()
    srv.httpd.server_close()
    want = run(webfs_so, "cd " + str(local) + " && find . -type f -exec cat {} + | md5sum", {}, shell=True).stdout
    for ttl in ("300", "0"):   # within the TTL: no request at all; past it: the cached catalog
        p = run(webfs_so, "cd /software && find . -type f -exec cat {} + | md5sum", dict(env, BYPASS_WEBFS_TTL=ttl),
                shell=True)
        assert p.returncode == 0 and p.stdout == want, p.stderr
    assert b"using the cached catalog" in p.stderr


def test_a_listed_file_missing_on_the_server_is_eio(webfs_so, env, served, tmp_path):
    _, tree, _ = served
    (tree / "share" / "data.bin").unlink()
    p = run(webfs_so, ["cat", "/software/share/data.bin"], env)
    assert p.returncode == 1 and b"Input/output error" in p.stderr
    assert b"listed in the catalog but no mirror serves it" in p.stderr
    assert _placeholder(tmp_path / "cache", "share/data.bin").st_blocks == 0


def test_a_body_longer_than_the_catalog_says_is_refused_as_it_comes(webfs_so, env, served, tmp_path):
    _, tree, _ = served
    (tree / "share" / "data.bin").write_bytes(os.urandom(3_000_000))     # the catalog says 200000
    p = run(webfs_so, ["cat", "/software/share/data.bin"], env)
    assert p.returncode == 1 and p.stdout == b"" and b"Input/output error" in p.stderr
    assert b"/software/share/data.bin: http://127.0.0.1" in p.stderr
    assert b"sent more than the catalog's 200000 bytes: refused" in p.stderr
    assert _placeholder(tmp_path / "cache", "share/data.bin").st_blocks == 0
