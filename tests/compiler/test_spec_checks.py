"""Specs that look right but catch nothing (issue 14): a call whose siblings programs use instead,
a misspelt call, a mistake in a size expression; and the original Bypass hand build of
`bypass -agent` output."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from agentrun import AGENTS, run
from test_cli_and_composition import write_talk_example


def bypass(*args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bypass.cli", *args], cwd=cwd, capture_output=True, text=True)


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


UNLINK_ONLY = "int unlink( in string const char *path )\nagent_action {{ return unlink(path); }};\n"


def test_call_whose_siblings_are_left_out_is_warned_about(tmp_path):
    (tmp_path / "rmwatch.bypass").write_text(UNLINK_ONLY)
    done = bypass("-agent", "rmwatch.bypass", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines()[0] == (
        "rmwatch.bypass:1:5: warning: programs also do what 'unlink' does through unlinkat, remove, which this "
        "spec does not catch (declare them too, or silence this with options \"unlink\" quiet_family; "
        "or --quiet-family)")


def test_open_names_its_stdio_sibling(tmp_path):
    (tmp_path / "o.bypass").write_text("int open( in string const char *path, int flags, [ int mode ] );\n")
    done = bypass("-agent", "o.bypass", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "'open' does through openat, creat, fopen, freopen," in done.stderr


def test_family_warning_is_silenced_by_flag_or_options_rule(tmp_path):
    (tmp_path / "a.bypass").write_text(UNLINK_ONLY)
    done = bypass("-agent", "--quiet-family", "a.bypass", cwd=tmp_path)
    assert done.returncode == 0 and "warning" not in done.stderr, done.stderr
    (tmp_path / "b.bypass").write_text(UNLINK_ONLY + 'options "unlink" quiet_family;\n')
    done = bypass("-agent", "b.bypass", cwd=tmp_path)
    assert done.returncode == 0 and "warning" not in done.stderr, done.stderr
    # declaring the siblings is the other way
    (tmp_path / "c.bypass").write_text(UNLINK_ONLY + "int unlinkat(int dirfd, in string const char *path, int flags);\n"
                                       "int remove(in string const char *path);\n")
    done = bypass("-agent", "c.bypass", cwd=tmp_path)
    assert done.returncode == 0 and "warning" not in done.stderr, done.stderr


def test_misspelt_call_is_an_error(tmp_path):
    (tmp_path / "typo.bypass").write_text("int close(int fd);\n\nint opne( in string const char *path, int flags );\n")
    done = bypass("-agent", "-shadow", "typo.bypass", cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert lines[0] == ("typo.bypass:3:5: error: 'opne' is neither a call Bypass knows nor a function of the "
                        "C library; did you mean 'open' or 'popen' or 'fopen'?")
    assert lines[-1].strip() == "^"
    assert listing(tmp_path) == ["typo.bypass"]


def test_libc_function_outside_the_knowledge_is_accepted(tmp_path):
    (tmp_path / "pid.bypass").write_text("pid_t getppid( void )\nagent_action {{ return getppid(); }};\n")
    done = bypass("-agent", "pid.bypass", cwd=tmp_path)
    assert done.returncode == 0, done.stderr


def test_error_in_size_expression_points_at_the_spec_line(tmp_path):
    (tmp_path / "typo5.bypass").write_text(
        "int close(int fd);\n\nssize_t read( int fd, out opaque \"lenght\" void *data, size_t length );\n")
    done = bypass("build", "typo5.bypass", cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert re.search(r"^typo5\.bypass:3:\d+: error: .lenght. undeclared", done.stderr, re.M), done.stderr
    assert "_agent.c:" not in done.stderr
    assert listing(tmp_path) == ["typo5.bypass"]


def test_setting_and_quiet_family_rules_parse(tmp_path):
    (tmp_path / "s.bypass").write_text('options "BYPASS_FOO" "BYPASS_BAR_*" setting;\n'
                                       'options "close" quiet_family;\nint close(int fd);\n')
    done = bypass("-agent", "s.bypass", cwd=tmp_path)
    assert done.returncode == 0 and done.stderr.splitlines()[0].startswith("compile it with:"), done.stderr


# -- the original interface: bypass -agent, then cc by hand ----------------------------------------

def hand_command(stderr: str) -> str:
    said = [line for line in stderr.splitlines() if line.startswith("compile it with:  ")]
    assert len(said) == 1, stderr
    return said[0][len("compile it with:  "):]


def test_talk_example_compiles_by_hand_with_the_printed_command(tmp_path):
    spec = write_talk_example(tmp_path)
    done = bypass("-agent", spec.name, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "gass_agent.c\n"
    command = hand_command(done.stderr)
    assert command == "cc -shared -fPIC gass_agent.c -o gass.so -ldl"
    built = subprocess.run(command.split() + ["-Wall", "-Wextra", "-Werror"], cwd=tmp_path,
                           capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "hello.txt").write_text("hello from gass\n")
    ran = run(["cat", "gass:hello.txt"], agent=tmp_path / "gass.so", env={"GASS_ROOT": str(tmp_path / "root")})
    assert ran.returncode == 0 and ran.stdout == b"hello from gass\n", ran.stderr


def test_agent_with_support_code_compiles_by_hand(tmp_path):
    """The trace agent links trace_log.c (@source): the printed command names it."""
    done = bypass("-agent", str(AGENTS / "trace" / "trace.bypass"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    command = hand_command(done.stderr)
    assert str(AGENTS / "trace" / "trace_log.c") in command
    built = subprocess.run(command + " -Wall -Wextra -Werror", shell=True, cwd=tmp_path, capture_output=True,
                           text=True)
    assert built.returncode == 0, built.stderr
    ran = run(["cat", "/etc/hostname"], agent=tmp_path / "trace.so", env={"BYPASS_TRACE": str(tmp_path / "t.log")})
    assert ran.returncode == 0, ran.stderr
    assert re.search(r'^\d+ open\("/etc/hostname", ', (tmp_path / "t.log").read_text(), re.M)
