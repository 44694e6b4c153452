"""The gass agent's debug subsystems (`bypass run -d cache,http -o FILE`): what its cache decided
for each URL and each HTTP exchange, in the debug file, while the program's output is the file's."""

from __future__ import annotations

import re

from gassenv import requires_libcurl

pytestmark = requires_libcurl


def test_cache_and_http_lines_for_a_fetch_then_a_revalidation(run, server, site, tmp_path):
    (site / "f.txt").write_text("gass debug\n" * 10)
    log = tmp_path / "debug.log"
    url = server.url("f.txt")
    for _ in range(2):
        done = run("cat", url, BYPASS_DEBUG="cache,http", BYPASS_DEBUG_FILE=str(log))
        assert done.returncode == 0 and done.stdout == b"gass debug\n" * 10 and done.stderr == b"", done.stderr
    lines = log.read_text().splitlines()
    assert all(re.match(r"^gass \d+ (cache|http): ", line) for line in lines), lines
    assert any(re.search(r"gass \d+ cache: cache: \S*f\.txt miss, fetched$", line) for line in lines), lines
    assert any(re.search(r"gass \d+ cache: cache: \S*f\.txt revalidated \(304\)$", line) for line in lines), lines
    assert any(re.search(r"gass \d+ http: GET \S*f\.txt -> 200", line) for line in lines), lines


def test_only_the_subsystems_asked_for(run, server, site, tmp_path):
    (site / "g.txt").write_text("x\n")
    log = tmp_path / "debug.log"
    done = run("cat", server.url("g.txt"), BYPASS_DEBUG="http", BYPASS_DEBUG_FILE=str(log))
    assert done.returncode == 0 and done.stdout == b"x\n"
    lines = log.read_text().splitlines()
    assert lines and all(" http: " in line for line in lines), lines


def test_without_subsystems_the_file_is_not_even_opened(run, server, site, tmp_path):
    (site / "h.txt").write_text("y\n")
    log = tmp_path / "debug.log"
    done = run("cat", server.url("h.txt"), BYPASS_DEBUG_FILE=str(log))
    assert done.returncode == 0 and done.stdout == b"y\n" and done.stderr == b""
    assert not log.exists()
