"""Instant start (issue 14): the package build compiles the shipped agents into bypass/prebuilt,
and `bypass run` of a shipped spec uses them instead of compiling on its first run."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

from agentrun import AGENTS, ROOT, run
import bypass.build
from bypass.agents.sandbox import mounts
from bypass.build import fingerprint, helper_name
from bypass.cli import _parser
from bypass.manpage import render

SHIPPED = sorted(AGENTS.glob("*/*.bypass"))


def test_wheel_carries_the_shipped_agents_and_run_uses_them(tmp_path, monkeypatch):
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w", str(tmp_path)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    [wheel] = tmp_path.glob("bypass-*.whl")
    assert not wheel.name.endswith("-none-any.whl"), "a wheel with machine code must carry a platform tag"
    with zipfile.ZipFile(wheel) as archive:
        prebuilt = {Path(n).name for n in archive.namelist() if n.startswith("bypass/prebuilt/")}
        # the names are the fingerprints of the same specs in this checkout: the wheel's agents
        # are the ones this Bypass would build; beside them the mount-list parser `bypass run -m` calls
        parser = helper_name(mounts.LIBRARY, mounts.LIBRARY_SOURCES)
        assert prebuilt == {f"{spec.stem}-{fingerprint(spec)}.so" for spec in SHIPPED} | {parser}
        archive.extractall(tmp_path / "unpacked", [n for n in archive.namelist() if n.startswith("bypass/prebuilt/")])
        [man] = [n for n in archive.namelist() if n.endswith("/data/share/man/man1/bypass.1")]
        assert archive.read(man).decode() == render()
        # an agent's Python helpers travel in its folder, importable as bypass.agents.NAME.MODULE
        assert {"bypass/agents/sandbox/mounts.py", "bypass/agents/gass/gass_cache.py"} <= set(archive.namelist())
    folder = tmp_path / "unpacked" / "bypass" / "prebuilt"
    trace = folder / f"trace-{fingerprint(AGENTS / 'trace' / 'trace.bypass')}.so"
    ran = run(["cat", "/etc/hostname"], agent=trace, env={"BYPASS_TRACE": str(tmp_path / "t.log")})
    assert ran.returncode == 0, ran.stderr
    assert re.search(r'^\d+ open\("/etc/hostname", ', (tmp_path / "t.log").read_text(), re.M)
    # with an empty cache, the prebuilt agent is taken as it is
    monkeypatch.setattr(bypass.build, "PREBUILT_DIR", folder)
    monkeypatch.setenv("BYPASS_CACHE_DIR", str(tmp_path / "cache"))
    assert bypass.build.build_cached(AGENTS / "trace" / "trace.bypass") == trace
    assert mounts.library() == folder / parser
    assert not (tmp_path / "cache").exists()


def test_man_page_has_every_command_and_option():
    page = render()
    top = _parser()
    for name, sub in top._subparsers._group_actions[0].choices.items():
        assert f"\n.SS {name}\n" in page, name
        for action in sub._actions:
            for flag in [] if action.dest == "help" else action.option_strings:
                assert "\\fB" + flag.replace("-", "\\-") + "\\fR" in page, (name, flag)
    assert "BYPASS_TRACE=FILE" in page
