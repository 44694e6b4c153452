"""One C program doing every covered file operation, compiled four ways: the trace agent must log
every operation under every build, through whichever ABI entry point the compiler chose."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from agentrun import run

PROGRAM = Path(__file__).parent / "programs" / "fileops.c"

OPERATIONS = """access chdir chmod chown close closedir creat dup dup2 dup3 euidaccess faccessat fchdir fchmod fclose
    fcntl fdopen fopen freopen fstat fstatat ftruncate getcwd link linkat lseek lstat mkdir mkdirat mkfifo mkstemp
    open openat opendir pread pwrite read readdir readlink readlinkat realpath remove rename renameat rmdir stat
    statx symlink truncate unlink unlinkat utime utimensat utimes write writev""".split()

BUILDS = {
    "plain": ([], {"open", "read", "stat", "fstat", "lseek", "getcwd"}),
    "fortify": (["-D_FORTIFY_SOURCE=2"], {"__open_2", "__openat_2", "__read_chk", "__pread_chk", "__readlink_chk",
                                          "__readlinkat_chk", "__getcwd_chk", "__realpath_chk"}),
    "lfs64": (["-D_FILE_OFFSET_BITS=64"], {"open64", "openat64", "stat64", "lstat64", "fstat64", "fstatat64",
                                           "lseek64", "pread64", "creat64", "fopen64", "readdir64", "mkstemp64"}),
    "fortify+lfs64": (["-D_FORTIFY_SOURCE=2", "-D_FILE_OFFSET_BITS=64"],
                      {"__open64_2", "__openat64_2", "__read_chk", "__pread64_chk", "stat64", "fstatat64"}),
}


@pytest.mark.parametrize("build", list(BUILDS))
def test_every_operation_is_traced(build, trace_agent, tmp_path):
    flags, expected_entries = BUILDS[build]
    binary = tmp_path / "fileops"
    subprocess.run(["gcc", "-O2", *flags, "-o", str(binary), str(PROGRAM)], check=True)
    workdir = tmp_path / "work"
    workdir.mkdir()
    log = tmp_path / "trace.log"
    done = run([str(binary), str(workdir)], agent=trace_agent, env={"BYPASS_TRACE": str(log)})
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.startswith(b"ok ")
    text = log.read_text()
    names = set(re.findall(r"^\d+ (\w+)\(", text, re.M))
    entries = set(re.findall(r"<(\w+)>$", text, re.M))
    assert not set(OPERATIONS) - names, f"operations missing from the trace: {sorted(set(OPERATIONS) - names)}"
    assert not expected_entries - entries, f"entry points not seen: {sorted(expected_entries - entries)}"


def test_trace_line_shows_arguments_result_and_errno(trace_agent, tmp_path):
    log = tmp_path / "trace.log"
    run(["cat", str(tmp_path / "missing")], agent=trace_agent, env={"BYPASS_TRACE": str(log)})
    line = next(l for l in log.read_text().splitlines() if "missing" in l)
    assert re.fullmatch(r'\d+ open\("[^"]*/missing", 0x0, 00\) = -1 ENOENT <open>', line), line
