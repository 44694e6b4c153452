"""Shared pieces for the RPC tests: a test dispatch table, the C client built for cffi, and a
driver program (a real executable using the C client) for fork/exec tests."""
from __future__ import annotations

import errno
import subprocess
import time
from pathlib import Path

from bypass.rpc import neutral_c

from .cbuild import RPC_C, build

ECHO, FAIL, SETFD, GETFD, CLOSEFD, SLEEP, BOOM, BIG, WHOAMI, DUPFD = range(10)


def _fail(ctx, name):
    raise OSError(getattr(errno, name), name)


def _boom(ctx):
    raise RuntimeError("boom")


def _sleep(ctx, seconds):
    time.sleep(seconds)
    return "slept"


DISPATCH = {
    ECHO: lambda ctx, *args: list(args),
    FAIL: _fail,
    SETFD: lambda ctx, fd, value: ctx.process.install(fd, value) and None,
    GETFD: lambda ctx, fd: ctx.process.get(fd),
    CLOSEFD: lambda ctx, fd: ctx.process.close(fd),
    SLEEP: _sleep,
    BOOM: _boom,
    BIG: lambda ctx, n: b"x" * n,
    WHOAMI: lambda ctx: ctx.process.key,
    DUPFD: lambda ctx, old, new: ctx.process.dup(old, new) and None,
}

RPC_SOURCES = ["msgpack.c", "sha256.c", "rpc_client.c"]

CLIENT_CDEF = """
typedef struct bp_mp_writer bp_mp_writer;
typedef struct { const uint8_t *buf; size_t len; size_t pos; int error; } bp_mp_reader;
int bypass_rpc_ping(void);
void bypass_rpc_configure(const char *address, const char *secret, double timeout_seconds);
void bypass_rpc_set_spec_hash(const char *hash);
void bypass_rpc_set_failure_errno(int e);
int bypass_rpc_fd(void);
void bypass_rpc_reset(void);
int raw_call(int64_t call_no, const uint8_t *args, size_t len, uint32_t nargs,
             uint8_t *out, size_t cap, size_t *outlen);
void bp_hmac_sha256(const void *key, size_t keylen,
                    const void *p1, size_t n1, const void *p2, size_t n2,
                    const void *p3, size_t n3, const void *p4, size_t n4, uint8_t *out);
"""

# Calls with pre-encoded msgpack arguments; the reply's value comes back as msgpack bytes.
RAW_CALL_C = r"""
#include <errno.h>
#include <string.h>
#include "rpc_client.h"
int raw_call(int64_t call_no, const uint8_t *args, size_t len, uint32_t nargs,
             uint8_t *out, size_t cap, size_t *outlen)
{
    bp_mp_writer *w;
    bp_mp_reader *r;
    if (bypass_rpc_begin(call_no, nargs, &w) < 0)
        return -errno;
    bp_mp_write_raw(w, args, len);
    int rc = bypass_rpc_finish(&r);
    if (rc == 0) {
        size_t start = r->pos;
        if (bp_mp_skip(r) == 0 && r->pos - start <= cap) {
            memcpy(out, r->buf + start, r->pos - start);
            *outlen = r->pos - start;
        } else {
            rc = -1;
            errno = EIO;
        }
    }
    if (rc < 0)
        rc = -errno;
    bypass_rpc_end();
    return rc;
}
"""

DRIVER_C = r"""
/* A program using the C client: runs the commands in argv, one line of output each. */
#include <errno.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include "rpc_client.h"
extern char **environ;

static int call(int64_t no, int nargs, int64_t fd, const char *s, char *out, size_t cap)
{
    bp_mp_writer *w;
    bp_mp_reader *r;
    if (bypass_rpc_begin(no, (uint32_t)nargs, &w) < 0)
        return -1;
    if (nargs >= 1) bp_mp_write_int(w, fd);
    if (nargs >= 2) bp_mp_write_cstr(w, s);
    int rc = bypass_rpc_finish(&r);
    if (rc == 0) {
        out[0] = 0;
        if (bp_mp_peek(r) == BP_MP_STR) bp_mp_read_cstr(r, out, cap);
        else if (bp_mp_peek(r) == BP_MP_NIL) strcpy(out, "nil");
        else strcpy(out, "?");
    }
    bypass_rpc_end();
    return rc;
}

int main(int argc, char **argv)
{
    char out[512];
    setvbuf(stdout, NULL, _IONBF, 0);
    for (int i = 1; i < argc; i++) {
        char *a = argv[i];
        const char *role = getenv("ROLE") ? getenv("ROLE") : "main";
        int rc = 0;
        /* "P:cmd" / "C:cmd": only in the parent / the child after "fork&" */
        if ((a[0] == 'P' || a[0] == 'C') && a[1] == ':') {
            if (strcmp(role, a[0] == 'P' ? "parent" : "child") != 0)
                continue;
            a += 2;
        }
        if (!strncmp(a, "set:", 4)) {
            int fd = atoi(a + 4);
            rc = call(2, 2, fd, strchr(a + 4, ':') + 1, out, sizeof out);
        } else if (!strncmp(a, "get:", 4)) {
            rc = call(3, 1, atoi(a + 4), 0, out, sizeof out);
        } else if (!strncmp(a, "close:", 6)) {
            rc = call(4, 1, atoi(a + 6), 0, out, sizeof out);
        } else if (!strcmp(a, "key")) {
            rc = call(8, 0, 0, 0, out, sizeof out);
        } else if (!strcmp(a, "ping")) {
            rc = bypass_rpc_ping();
            strcpy(out, "pong");
        } else if (!strcmp(a, "fork")) {
            pid_t pid = fork();
            if (pid == 0) { setenv("ROLE", "child", 1); continue; }
            int st;
            waitpid(pid, &st, 0);
            setenv("ROLE", "parent", 1);
            continue;
        } else if (!strcmp(a, "fork&")) {          /* parent goes on without waiting */
            pid_t pid = fork();
            setenv("ROLE", pid == 0 ? "child" : "parent", 1);
            continue;
        } else if (!strcmp(a, "wait")) {
            int st;
            while (wait(&st) > 0) {}
            continue;
        } else if (!strncmp(a, "msleep:", 7)) {
            usleep(atoi(a + 7) * 1000);
            continue;
        } else if (!strcmp(a, "exec")) {
            argv[i] = argv[0];
            execv("/proc/self/exe", argv + i);
            return 99;
        } else if (!strcmp(a, "spawn")) {
            pid_t pid;
            argv[i] = argv[0];
            setenv("ROLE", "spawned", 1);
            if (posix_spawn(&pid, "/proc/self/exe", NULL, NULL, argv + i, environ)) return 98;
            int st;
            waitpid(pid, &st, 0);
            return 0;
        } else if (!strcmp(a, "stop")) {
            break;
        }
        if (rc < 0)
            printf("%s %s -> errno %s\n", role, a, strerror(errno));
        else
            printf("%s %s -> %s\n", role, a, out);
    }
    return 0;
}
"""


def neutral_sources(outdir: Path) -> list[str]:
    h, c = neutral_c.write_sources(outdir)
    return [str(c)]


def build_client(outdir: Path):
    srcs = RPC_SOURCES + neutral_sources(outdir)
    return build(outdir, srcs, CLIENT_CDEF, RAW_CALL_C, "rpcclient", include=(outdir,))


def build_driver(outdir: Path) -> Path:
    outdir.mkdir(parents=True, exist_ok=True)
    nsrc = neutral_sources(outdir)
    src = outdir / "driver.c"
    src.write_text(DRIVER_C)
    exe = outdir / "driver"
    cmd = ["gcc", "-std=gnu11", "-O2", "-Wall", "-Wextra", "-Werror", "-D_GNU_SOURCE", "-pthread",
           f"-I{RPC_C}", f"-I{outdir}", "-o", str(exe), str(src),
           *[str(RPC_C / s) for s in RPC_SOURCES], *nsrc]
    subprocess.run(cmd, check=True)
    return exe
