"""`bypass run --set NAME=VALUE` is checked against the settings the spec declares
(`options "BYPASS_..." setting ["type"];`): an unknown name gets "did you mean", a value of the
wrong type is refused, before anything is built or run; what is declared reaches the agent."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from agentrun import AGENTS

TRACE = AGENTS / "trace" / "trace.bypass"
SANDBOX = AGENTS / "sandbox" / "sandbox.bypass"
GASS = AGENTS / "gass" / "gass.bypass"


def bypass(*args, cwd) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BYPASS_") and k != "LD_PRELOAD"}
    if os.environ.get("BYPASS_CACHE_DIR"):
        env["BYPASS_CACHE_DIR"] = os.environ["BYPASS_CACHE_DIR"]
    return subprocess.run([sys.executable, "-m", "bypass.cli", *args], cwd=cwd, capture_output=True,
                          text=True, env=env, timeout=300)


def refused(done: subprocess.CompletedProcess, folder: Path) -> str:
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert not (folder / "ran").exists(), "the command ran"
    return done.stderr.strip().splitlines()[-1]


def test_misspelt_setting_gets_did_you_mean(tmp_path):
    message = refused(bypass("run", str(TRACE), "--set", f"BYPASS_TRAC={tmp_path / 't.log'}", "--",
                             "touch", "ran", cwd=tmp_path), tmp_path)
    assert message.startswith(f"bypass: --set BYPASS_TRAC: {TRACE} does not read BYPASS_TRAC; "
                              "did you mean BYPASS_TRACE? (it reads BYPASS_DEBUG, BYPASS_DEBUG_FILE, BYPASS_TRACE;")


def test_a_setting_of_another_agent_is_refused(tmp_path):
    message = refused(bypass("run", str(TRACE), "--set", "BYPASS_SANDBOX_EROFS=1", "--", "touch", "ran",
                             cwd=tmp_path), tmp_path)
    assert "does not read BYPASS_SANDBOX_EROFS" in message and "did you mean" not in message


def test_shadow_settings_only_for_an_agent_with_shadow_calls(tmp_path):
    remote = AGENTS / "remote" / "remote.bypass"
    message = refused(bypass("run", str(remote), "--set", "BYPASS_SHADOW_TIMEOUT=later", "--", "touch", "ran",
                             cwd=tmp_path), tmp_path)
    assert "BYPASS_SHADOW_TIMEOUT wants seconds" in message
    message = refused(bypass("run", str(TRACE), "--set", "BYPASS_SHADOW_TIMEOUT=5", "--", "touch", "ran",
                             cwd=tmp_path), tmp_path)
    assert "does not read BYPASS_SHADOW_TIMEOUT" in message


def test_plain_environment_variables_are_pointed_after_the_separator(tmp_path):
    message = refused(bypass("run", str(TRACE), "--set", "LANG=C", "--", "touch", "ran", cwd=tmp_path), tmp_path)
    assert "-- env LANG=... COMMAND" in message


def test_values_are_checked_against_the_declared_type(tmp_path):
    cases = [
        (GASS, "BYPASS_GASS_TIMEOUT=soon", "BYPASS_GASS_TIMEOUT wants seconds, a number >= 0"),
        (GASS, "BYPASS_GASS_CACHE_MAX=lots", "BYPASS_GASS_CACHE_MAX wants bytes, a number with an optional K"),
        (GASS, "BYPASS_GASS_QUICK=yes", "BYPASS_GASS_QUICK is one of 0, 1"),
        (SANDBOX, "BYPASS_SANDBOX_EROFS=maybe", "BYPASS_SANDBOX_EROFS wants 0 or 1 (or yes/no, true/false)"),
        (SANDBOX, "BYPASS_MOUNTS=/nonexistent/list", "BYPASS_MOUNTS wants an existing file"),
    ]
    for spec, assignment, expected in cases:
        message = refused(bypass("run", str(spec), "--set", assignment, "--", "touch", "ran", cwd=tmp_path), tmp_path)
        assert expected in message, (assignment, message)


def test_declared_settings_of_the_right_type_reach_the_agent(tmp_path):
    log = tmp_path / "t.log"
    done = bypass("run", str(TRACE), "--set", f"BYPASS_TRACE={log}", "--", "cat", "/etc/hostname", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert re.search(r'^\d+ open\w*\(.*"/etc/hostname"', log.read_text(), re.M)
    mounts = tmp_path / "m.txt"
    mounts.write_text("/ rwx\n/home DENY\n")
    done = bypass("run", str(SANDBOX), "-m", str(mounts), "--set", "BYPASS_SANDBOX_EROFS=yes", "--",
                  "ls", "/home", cwd=tmp_path)
    assert done.returncode != 0 and "Permission denied" in done.stderr
    done = bypass("run", str(GASS), "--set", "BYPASS_GASS_TIMEOUT=2.5", "--set", "BYPASS_GASS_CACHE_MAX=512M",
                  "--", "true", cwd=tmp_path)
    assert done.returncode == 0, done.stderr


def test_a_spec_gives_only_known_types(tmp_path):
    spec = tmp_path / "mine.bypass"
    spec.write_text('int close(int fd);\noptions "BYPASS_MINE" setting "sekonds";\n')
    done = bypass("-agent", str(spec), cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert re.search(r'mine\.bypass:2:31: error: unknown setting type "sekonds"; the types are number, seconds',
                     done.stderr), done.stderr


# -- conform and escapes run a program under the agent too: the same checks, before anything runs --

def test_conform_checks_set_like_run(tmp_path):
    done = bypass("conform", str(TRACE), "--set", "BYPASS_TRAC=x", "--ops", "5", cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr and done.stdout == ""
    assert f"--set BYPASS_TRAC: {TRACE} does not read BYPASS_TRAC; did you mean BYPASS_TRACE?" in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_conform_checks_the_declared_type(tmp_path):
    done = bypass("conform", str(GASS), "--set", "BYPASS_GASS_TIMEOUT=soon", "--ops", "5", cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "BYPASS_GASS_TIMEOUT wants seconds, a number >= 0" in done.stderr


def test_conform_refuses_a_mount_list_the_agent_does_not_read(tmp_path):
    (tmp_path / "deny.txt").write_text("/home DENY\n")
    done = bypass("conform", str(TRACE), "-m", "deny.txt", "--ops", "5", cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"-m sets BYPASS_MOUNTS, which {TRACE} does not read (it reads BYPASS_TRACE)" in done.stderr


def test_escapes_checks_set_like_run(tmp_path):
    message = refused(bypass("escapes", str(SANDBOX), "--set", "BYPASS_SANDBOX_EROFZ=1", "--", "touch", "ran",
                             cwd=tmp_path), tmp_path)
    assert f"--set BYPASS_SANDBOX_EROFZ: {SANDBOX} does not read BYPASS_SANDBOX_EROFZ; did you mean" in message
    message = refused(bypass("escapes", str(GASS), "--set", "BYPASS_GASS_TIMEOUT=soon", "--", "touch", "ran",
                             cwd=tmp_path), tmp_path)
    assert "BYPASS_GASS_TIMEOUT wants seconds, a number >= 0" in message
