"""Configuration: a repositories file, inline mounts, several repositories at once, `bypass run`,
and bad settings refused with a clear message before the program runs."""

from __future__ import annotations

import subprocess
import sys

from webfs_lib import REPO, SPEC, Server, dead_port, make_growfs, run


def test_repositories_file_with_two_trees_and_mirrors(webfs_so, env, served, tmp_path):
    local, _, srv = served
    other = tmp_path / "other" / "tree"
    other.mkdir(parents=True)
    (other / "note.txt").write_text("second repository\n")
    make_growfs(other)
    with Server(tmp_path / "other") as srv2:
        repos = tmp_path / "repos.txt"
        repos.write_text(f"# prefix  mirrors, in order\n"
                         f"/cvmfs/sw.example.org  http://127.0.0.1:{dead_port()}/tree {srv.url('tree')}\n"
                         f"\n/opt/other {srv2.url('tree')}   # a second repository\n")
        e = {k: v for k, v in env.items() if k != "BYPASS_WEBFS_MOUNTS"}
        e["BYPASS_WEBFS_REPOS"] = str(repos)
        p = run(webfs_so, "cat /opt/other/note.txt && cat /cvmfs/sw.example.org/share/latest | md5sum "
                          "&& ls /cvmfs/sw.example.org/lib/pkg", e, shell=True)
        assert p.returncode == 0, p.stderr
        want = subprocess.run(["md5sum"], input=(local / "share" / "latest").read_bytes(), capture_output=True).stdout
        assert p.stdout == b"second repository\n" + want + b"__init__.py\nsub\n"


def test_inline_mounts_through_bypass_run(env, served, tmp_path):
    local, _, srv = served
    cmd = [sys.executable, "-m", "bypass.cli", "run", str(SPEC), "--set",
           f"BYPASS_WEBFS_MOUNTS=/software={srv.url('tree')}", "--set", f"BYPASS_WEBFS_CACHE={tmp_path / 'cache'}",
           "--", "cat", "/software/lib/pkg/sub/mod.py"]
    p = subprocess.run(cmd, capture_output=True, timeout=300, cwd=REPO)
    assert p.returncode == 0, p.stderr
    assert p.stdout == (local / "lib" / "pkg" / "sub" / "mod.py").read_bytes()


def test_bad_settings_stop_the_run_with_a_message(webfs_so, tmp_path):
    repos = tmp_path / "repos.txt"
    cases = [
        ({"BYPASS_WEBFS_MOUNTS": "/x=ftp://host/t"}, b"not an http:// or https:// URL"),
        ({"BYPASS_WEBFS_MOUNTS": "relative=http://h/t"}, b"must be an absolute path"),
        ({"BYPASS_WEBFS_MOUNTS": "/=http://h/t"}, b"must be an absolute path other than /"),
        ({"BYPASS_WEBFS_MOUNTS": "/a/../b=http://h/t"}, b"must be a plain path"),
        ({"BYPASS_WEBFS_MOUNTS": "/x"}, b"is not PREFIX=URL"),
        ({"BYPASS_WEBFS_MOUNTS": "/x="}, b"has no URL"),
        ({"BYPASS_WEBFS_MOUNTS": "/x=http://h/a /x=http://h/b"}, b"mounted twice"),
        ({"BYPASS_WEBFS_MOUNTS": "/x=http://h/a", "BYPASS_WEBFS_TTL": "soon"}, b"is not a number"),
        ({"BYPASS_WEBFS_MOUNTS": "/x=http://h/a", "BYPASS_WEBFS_CACHE": "rel/cache"}, b"must be an absolute path"),
        ({"BYPASS_WEBFS_REPOS": str(tmp_path / "missing.txt")}, b"No such file"),
        ({"BYPASS_WEBFS_REPOS": str(repos)}, f"{repos}:2: error: /b has no URL".encode()),
    ]
    repos.write_text("/a http://h/a\n/b\n")
    for settings, message in cases:
        p = run(webfs_so, ["/bin/echo", "ran"], settings)
        assert p.returncode == 2 and p.stdout == b"", (settings, p)
        assert message in p.stderr and p.stderr.startswith(b"bypass[webfs]: error: "), (settings, p.stderr)
    # without settings the agent is a pass-through
    assert run(webfs_so, ["/bin/echo", "ran"], {}).stdout == b"ran\n"


def test_debug_shows_catalog_downloads_and_a_summary(webfs_so, env, served):
    e = dict(env, BYPASS_WEBFS_DEBUG="1")
    # (python, not cat: coreutils close stderr before exit, where the summary is written)
    read2 = "for _ in range(2): open('/software/share/data.bin', 'rb').read()"
    p = run(webfs_so, ["python3", "-c", read2], e)
    assert p.returncode == 0, p.stderr
    err = p.stderr.decode()
    assert "catalog " in err and "fetched http://127.0.0.1" in err and "/tree/share/data.bin (200000 bytes" in err
    assert "summary: 1 opens from the cache, 1 files fetched (200000 bytes" in err and "hit rate 50%" in err
    quiet = run(webfs_so, ["python3", "-c", read2], env)
    assert quiet.stderr == b""
