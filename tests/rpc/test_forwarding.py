"""Generated forwarding: a spec without agent actions runs its calls in the shadow."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bypass.build import build, generate

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).resolve().parents[2]

PROG = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>
int main(int argc, char **argv) {
    /* greet() is declared by the spec: only the agent has it */
    int (*greet)(const char *, char *, size_t) = (int (*)(const char *, char *, size_t))dlsym(RTLD_DEFAULT, "greet");
    char buf[64] = {0};
    int fd = open(argv[1], O_RDONLY);
    printf("open %s\n", fd >= 0 ? "ok" : strerror(errno));
    ssize_t n = read(fd, buf, 5);
    printf("read %zd %s\n", n, buf);
    printf("lseek %ld\n", (long)lseek(fd, 0, SEEK_END));
    struct stat st;
    int rc = stat(argv[1], &st);
    printf("stat %d %ld %s %o\n", rc, (long)st.st_size, S_ISREG(st.st_mode) ? "reg" : "?", st.st_mode & 0777);
    rc = stat("/missing", &st);
    printf("stat missing %d %s\n", rc, strerror(errno));
    close(fd);
    n = read(fd, buf, 1);
    printf("read closed %zd %s\n", n, strerror(errno));
    int w = open(argv[2], O_WRONLY | O_CREAT | O_EXCL, 0640);
    printf("write %zd\n", write(w, "written\n", 8));
    close(w);
    w = open(argv[2], O_WRONLY | O_CREAT | O_EXCL, 0640);
    printf("excl %d %s\n", w, strerror(errno));
    if (greet) {
        rc = greet("agent", buf, sizeof buf);
        printf("greet %d %s\n", rc, buf);
    }
    int (*bump)(int *, int) = (int (*)(int *, int))dlsym(RTLD_DEFAULT, "bump");
    long (*total)(const int *, int) = (long (*)(const int *, int))dlsym(RTLD_DEFAULT, "total");
    int (*squares)(int *, int) = (int (*)(int *, int))dlsym(RTLD_DEFAULT, "squares");
    int (*echo_bytes)(const void *, void *, int) = (int (*)(const void *, void *, int))dlsym(RTLD_DEFAULT, "echo_bytes");
    int v = 40, xs[4] = {1, -2, 300000, 4}, sq[5] = {0};
    char rev[4];
    rc = bump(&v, 2);
    printf("bump %d %d\n", rc, v);
    printf("total %ld\n", total(xs, 4));
    rc = squares(sq, 5);
    printf("squares %d %d %d %d %d %d\n", rc, sq[0], sq[1], sq[2], sq[3], sq[4]);
    rc = echo_bytes("abcd", rev, 4);
    printf("echo %d %.4s\n", rc, rev);

    struct statvfs vfs;
    rc = statvfs(argv[1], &vfs);
    printf("statvfs %d %lu %lu\n", rc, (unsigned long)vfs.f_bsize, (unsigned long)vfs.f_namemax);
    int (*now)(struct timespec *) = (int (*)(struct timespec *))dlsym(RTLD_DEFAULT, "now");
    long (*span_ms)(const struct timespec *, int) = (long (*)(const struct timespec *, int))dlsym(RTLD_DEFAULT, "span_ms");
    int (*lock_probe)(struct flock *) = (int (*)(struct flock *))dlsym(RTLD_DEFAULT, "lock_probe");
    struct timespec ts = {0}, two[2] = {{1, 500000000}, {2, 250000000}};
    rc = now(&ts);
    printf("now %d %ld %ld\n", rc, (long)ts.tv_sec, ts.tv_nsec);
    printf("span %ld\n", span_ms(two, 2));
    struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_END, .l_start = 10, .l_len = 5 };
    rc = lock_probe(&fl);
    printf("flock %d %s %d %ld %ld %d\n", rc, fl.l_type == F_UNLCK ? "unlocked" : "?", fl.l_whence == SEEK_END,
           (long)fl.l_start, (long)fl.l_len, (int)fl.l_pid);
    return 0;
}
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    d = tmp_path_factory.mktemp("fwd")
    agent = build(DATA / "forward.bypass", d / "forward.so")
    src = d / "prog.c"
    src.write_text(PROG)
    prog = d / "prog"
    subprocess.run(["gcc", "-o", str(prog), str(src)], check=True)
    return agent, prog


def test_forwarded_calls_through_bypass_run(built, tmp_path):
    agent, prog = built
    export = tmp_path / "export"
    export.mkdir()
    (export / "in.txt").write_text("hello world\n")
    vfs = os.statvfs(export)
    p = subprocess.run([sys.executable, "-m", "bypass.cli", "run", str(DATA / "forward.bypass"), "--agent",
                        str(agent), "--export", str(export), "--", str(prog), "/in.txt", "/out.txt"],
                       capture_output=True, text=True, timeout=120, cwd=REPO)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == [
        "open ok", "read 5 hello", "lseek 12", "stat 0 12 reg 644",
        "stat missing -1 No such file or directory", "read closed -1 Bad file descriptor",
        "write 8", "excl -1 File exists", "greet 0 hello agent", "bump 0 42", "total 300003",
        "squares 5 0 1 4 9 16", "echo 4 dcba",
        f"statvfs 0 {vfs.f_bsize} {vfs.f_namemax}",        # default action, export root confined
        "now 0 1234567890 987654321", "span 3750", "flock 0 unlocked 1 11 5 4242"]
    out = export / "out.txt"
    assert out.read_text() == "written\n" and out.stat().st_mode & 0o777 == 0o640


def test_without_shadow_calls_fail_with_eio(built):
    agent, prog = built
    env = dict(os.environ, LD_PRELOAD=str(agent), BYPASS_SHADOW="unix:/nonexistent/sock")
    p = subprocess.run([str(prog), "/in.txt", "/out.txt"], env=env, capture_output=True, text=True, timeout=30)
    assert "open Input/output error" in p.stdout
    assert p.stderr.count("unreachable") == 1


@pytest.mark.parametrize("spec", sorted((REPO / "agents").glob("*/*.bypass")), ids=lambda p: p.stem)
def test_every_shipped_shadow_is_valid_python(spec):
    namespace: dict = {}
    exec(compile(generate(spec).shadow_py, f"<{spec.stem} shadow>", "exec"), namespace)
    assert set(namespace["DISPATCH"]) == set(namespace["CALLS"])
    assert isinstance(namespace["SPEC_HASH"], str) and namespace["SPEC_HASH"]
