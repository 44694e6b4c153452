"""The webfs agent's debug subsystems through `bypass run -d policy,cache,http -o FILE`: which
tree a mount resolved to, what was fetched into the cache and what came from it, each HTTP
exchange; the program's output is the file's, its stderr empty."""

from __future__ import annotations

import re
import subprocess
import sys

from webfs_lib import REPO, SPEC


def test_policy_cache_and_http_lines(served, tmp_path):
    local, _, srv = served
    log = tmp_path / "debug.log"
    cmd = [sys.executable, "-m", "bypass.cli", "run", str(SPEC), "--set",
           f"BYPASS_WEBFS_MOUNTS=/software={srv.url('tree')}", "--set", f"BYPASS_WEBFS_CACHE={tmp_path / 'cache'}",
           "-d", "policy,cache,http", "-o", str(log), "--",
           "sh", "-c", "cat /software/lib/pkg/sub/mod.py; cat /software/lib/pkg/sub/mod.py"]
    p = subprocess.run(cmd, capture_output=True, timeout=300, cwd=REPO)
    own = [line for line in p.stderr.splitlines() if not line.startswith(b"bypass: building webfs.so")]
    assert p.returncode == 0 and own == [], p.stderr
    assert p.stdout == (local / "lib" / "pkg" / "sub" / "mod.py").read_bytes() * 2
    lines = log.read_text().splitlines()
    assert all(re.match(r"^webfs \d+ (policy|cache|http): ", line) for line in lines), lines
    assert any(re.search(r"policy: /software is \S+", line) for line in lines), lines
    assert any(re.search(r"cache: fetched \S*mod\.py \(\d+ bytes", line) for line in lines), lines
    assert any(re.search(r"cache: hit \S*/lib/pkg/sub/mod\.py \(in the cache\)$", line) for line in lines), lines
    assert any(re.search(r"http: GET \S+ -> 200", line) for line in lines), lines
