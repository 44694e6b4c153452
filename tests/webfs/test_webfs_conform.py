"""`bypass conform` (the differential oracle) with a tree mounted elsewhere: outside its mounts the
agent is the kernel; the only divergences are the reasoned ones in agents/webfs/webfs.expected."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from webfs_lib import REPO, SPEC


def test_outside_the_mounts_the_agent_is_the_kernel(webfs_so, tmp_path):
    result = _conform(webfs_so, tmp_path, "BYPASS_WEBFS_MOUNTS=/webfs-elsewhere=http://127.0.0.1:9/tree", 1, 1500)
    assert all(i["kind"] in ("crash", "result") and "PROT_NONE_PAGE" in i["title"] for i in result["items"])


def test_with_a_signed_repository_mounted_the_agent_is_still_the_kernel_outside(webfs_so, tmp_path):
    """The same with a Bypass repository mounted (its key read at start, its server up, its tree
    in the cache): conform's tree is outside the mount."""
    from repo_lib import cli
    from webfs_lib import Server, run, sample_tree

    local = sample_tree(tmp_path / "local")
    cli("keygen", tmp_path / "k")
    cli("publish", local, tmp_path / "site" / "repo", "--key", tmp_path / "k")
    with Server(tmp_path / "site") as srv:
        mounts = f"BYPASS_WEBFS_MOUNTS=/webfs-elsewhere={srv.url('repo')},key={tmp_path}/k.pub"
        warm = run(webfs_so, ["cat", "/webfs-elsewhere/lib/pkg/sub/mod.py"],
                   {"BYPASS_WEBFS_MOUNTS": mounts.split("=", 1)[1], "BYPASS_WEBFS_CACHE": str(tmp_path / "cache")})
        assert warm.stdout == b"VALUE = sum(range(10))\n", warm.stderr
        _conform(webfs_so, tmp_path, mounts, 2, 800)
    (local / "frozen").chmod(0o755)
    for d in (tmp_path / "cache").rglob("*"):
        if d.is_dir() and not d.is_symlink():
            d.chmod(0o755)


def _conform(webfs_so, tmp_path, mounts: str, seed: int, ops: int) -> dict:
    """bypass conform with `mounts` set: 0 unexpected divergences, nothing left in its workdir."""
    (tmp_path / "w").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BYPASS_") or k == "BYPASS_CACHE_DIR"}
    done = subprocess.run(
        [sys.executable, "-m", "bypass.cli", "conform", str(SPEC), "--agent", str(webfs_so),
         "--set", mounts, "--set", f"BYPASS_WEBFS_CACHE={tmp_path / 'cache'}",
         "--seed", str(seed), "--ops", str(ops), "--json", "--workdir", str(tmp_path / "w")],
        capture_output=True, text=True, timeout=900, env=env, cwd=REPO)
    assert done.returncode in (0, 1), done.stderr
    result = json.loads(done.stdout)
    unexpected = [i["title"] for i in result["items"] if not i["expected"]]
    assert done.returncode == 0 and unexpected == [], unexpected
    assert result["steps"] == ops
    assert list((tmp_path / "w").iterdir()) == []
    return result
