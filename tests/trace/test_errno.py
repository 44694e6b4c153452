"""errno is what the real call left, on every path: success keeps the program's value, failure
reports the call's error, with and without tracing."""

from __future__ import annotations

import subprocess

import pytest

from agentrun import run

PROGRAM = r"""
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>
int main(int argc, char **argv)
{
    struct stat st;
    errno = EAGAIN;
    if (stat(argv[1], &st) != 0 || errno != EAGAIN) { printf("stat clobbered errno: %d\n", errno); return 1; }
    errno = EAGAIN;
    int fd = open(argv[1], O_RDONLY);
    if (fd < 0 || errno != EAGAIN) { printf("open clobbered errno: %d\n", errno); return 1; }
    close(fd);
    if (open("/nonexistent/x", O_RDONLY) != -1 || errno != ENOENT) { printf("open failure errno %d\n", errno); return 1; }
    if (mkdir("/proc/nope", 0700) != -1 || errno != ENOENT) { printf("mkdir failure errno %d\n", errno); return 1; }
    if (close(-5) != -1 || errno != EBADF) { printf("close failure errno %d\n", errno); return 1; }
    puts("errno ok");
    return 0;
}
"""


@pytest.mark.parametrize("traced", [False, True])
def test_errno_preserved(trace_agent, tmp_path, traced):
    source = tmp_path / "errno.c"
    source.write_text(PROGRAM)
    binary = tmp_path / "errno"
    subprocess.run(["gcc", "-O2", "-o", str(binary), str(source)], check=True)
    env = {"BYPASS_TRACE": str(tmp_path / "t.log")} if traced else {}
    done = run([str(binary), str(source)], agent=trace_agent, env=env)
    assert done.stdout == b"errno ok\n", done.stdout
