#!/usr/bin/env python3
"""Agent <-> shadow RPC benchmarks, each side by side with its C-to-C floor, in one run.

    python3 benchmarks/bench_rpc.py [--calls 20000] [--size-mib 256] [--rounds 5] [--procs 64]

  sync call   one synchronous call through the agent's C client to the Python shadow (ping)
              vs a C-to-C round trip of the same sizes over a Unix socket
              bar: <= 1.5 x
  streaming   reading a --size-mib file in 128 KiB blocks (like cat) under the remote agent
              (read-ahead through the shadow, blocks sent with sendfile) vs a C program
              streaming the same bytes over a Unix socket, and the same reader on the local file
              bar: >= 70 % of the plain socket stream
  many        --procs agent processes calling one shadow at once (C client, ping + 4 KiB reads):
              errors (must be 0) and aggregate calls/s against 1 and 8 processes
              bar: no errors, throughput does not collapse
  startup     200 starts of /bin/true with the remote agent loaded (no remote files) vs without
              bar: <= 1 ms extra per process
  make        a configure-free C project (8 files, a Makefile) rebuilt with `make -j2`, sources and
              objects under /job, vs the same project built natively on local disk
              goal: <= 1.5 x
  python      `python3 -c "import ..."` of 40 modules (with their __pycache__) from /job
              (PYTHONPATH), vs the same start-up importing them from local disk
              goal: <= 1.5 x

Measurements are interleaved and the best of --rounds is reported (a shared machine is noisy).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bypass.build import build                     # noqa: E402
from bypass.rpc import neutral_c                   # noqa: E402
from bypass.rpc.server import ShadowServer          # noqa: E402
from bypass.rpc.shadow_cli import make_server      # noqa: E402

RPC_C = REPO / "bypass" / "rpc" / "c"

C2C = r"""
/* C-to-C floor: a forked echo server on a Unix socket; request and reply sized like a ping. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
static void full(int fd, char *p, size_t n, int rd) {
    while (n) { ssize_t k = rd ? read(fd, p, n) : write(fd, p, n); if (k <= 0) _exit(1); p += k; n -= (size_t)k; }
}
int main(int argc, char **argv) {
    int n = atoi(argv[1]);
    const char *path = argv[2];
    int ls = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un a = { .sun_family = AF_UNIX };
    strcpy(a.sun_path, path);
    unlink(path);
    bind(ls, (struct sockaddr *)&a, sizeof a);
    listen(ls, 1);
    char buf[64] = {0};
    if (fork() == 0) {
        int c = accept(ls, NULL, NULL);
        for (;;) { ssize_t k = read(c, buf, 10); if (k <= 0) _exit(0); full(c, buf, 10, 0); }
    }
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    connect(s, (struct sockaddr *)&a, sizeof a);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < n; i++) { full(s, buf, 8, 0); full(s, buf, 10, 1); }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("%.3f\n", ((t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec)) / n / 1000.0);
    close(s);
    wait(NULL);
    unlink(path);
    return 0;
}
"""

STREAM = r"""
/* Plain socket stream: a child sends the file's bytes over a Unix socket, we read them. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
int main(int argc, char **argv) {
    int sv[2];
    socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
    static char buf[1 << 17];
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    if (fork() == 0) {
        close(sv[0]);
        int fd = open(argv[1], O_RDONLY);
        ssize_t k;
        while ((k = read(fd, buf, sizeof buf)) > 0)
            for (ssize_t o = 0; o < k;) { ssize_t w = write(sv[1], buf + o, (size_t)(k - o)); if (w <= 0) _exit(1); o += w; }
        _exit(0);
    }
    close(sv[1]);
    long long total = 0;
    ssize_t k;
    while ((k = read(sv[0], buf, sizeof buf)) > 0)
        total += k;
    wait(NULL);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("%.6f %lld\n", (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9, total);
    return 0;
}
"""

READER = r"""
/* Reads a file to the end in 128 KiB blocks (what cat does); prints seconds and bytes. */
#include <fcntl.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>
int main(int argc, char **argv) {
    static char buf[1 << 17];
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int fd = open(argv[1], O_RDONLY);
    if (fd < 0) { perror(argv[1]); return 1; }
    long long total = 0;
    ssize_t k;
    while ((k = read(fd, buf, sizeof buf)) > 0)
        total += k;
    close(fd);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("%.6f %lld\n", (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9, total);
    return k < 0;
}
"""

PING = r"""
/* Agent-side client: N synchronous calls (ping, or 4 KiB reads with --read). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "rpc_client.h"
int main(int argc, char **argv) {
    int n = atoi(argv[1]);
    int do_read = argc > 2 && strcmp(argv[2], "--read") == 0;
    static char data[4096];
    if (bypass_rpc_ping()) { perror("ping"); return 1; }
    int errors = 0;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < n; i++) {
        if (!do_read) {
            if (bypass_rpc_ping()) errors++;
            continue;
        }
        bp_mp_writer *w;
        bp_mp_reader *r;
        if (bypass_rpc_begin(1, 1, &w) < 0) { errors++; continue; }
        bp_mp_write_uint(w, sizeof data);
        const void *p;
        uint32_t len;
        if (bypass_rpc_finish(&r) < 0 || bp_mp_read_bin(r, &p, &len) < 0 || len != sizeof data) errors++;
        else memcpy(data, p, len);
        bypass_rpc_end();
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("%.3f %d\n", ((t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec)) / n / 1000.0, errors);
    return errors != 0;
}
"""


def compile_tools(work: Path) -> dict[str, Path]:
    nsrc = [p for p in neutral_c.write_sources(work) if p.suffix == ".c"]
    tools = {}
    for name, text, extra in (("c2c", C2C, []), ("stream", STREAM, []), ("reader", READER, []),
                              ("ping", PING, [*(str(RPC_C / s) for s in ("msgpack.c", "sha256.c", "rpc_client.c")),
                                              *map(str, nsrc)])):
        src = work / f"{name}.c"
        src.write_text(text)
        exe = work / name
        subprocess.run(["gcc", "-O2", "-D_GNU_SOURCE", "-pthread", f"-I{RPC_C}", f"-I{work}", "-o", str(exe),
                        str(src), *extra], check=True)
        tools[name] = exe
    return tools


def out(cmd, env=None) -> str:
    return subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout


def bench_sync(tools, calls: int, rounds: int, work: Path) -> tuple[float, float]:
    data = os.urandom(4096)
    server = ShadowServer({1: lambda ctx, n: data[:n]}).start()
    env = dict(os.environ, BYPASS_SHADOW=server.address)
    c2c, rpc = [], []
    try:
        for _ in range(rounds):
            c2c.append(float(out([tools["c2c"], str(calls), str(work / "c2c.sock")])))
            rpc.append(float(out([tools["ping"], str(calls)], env).split()[0]))
    finally:
        server.close()
    return min(c2c), min(rpc), statistics.median(c2c), statistics.median(rpc)


def bench_stream(tools, size_mib: int, rounds: int, work: Path) -> dict[str, float]:
    export = work / "export"
    export.mkdir(exist_ok=True)
    big = export / "big"
    with open(big, "wb") as f:
        chunk = os.urandom(1 << 20)
        for _ in range(size_mib):
            f.write(chunk)
    spec = REPO / "agents" / "remote" / "remote.bypass"
    agent = build(spec, work / "remote.so")
    server = make_server(spec, str(export))
    server.listen()
    server.start()
    env = dict(os.environ, LD_PRELOAD=str(agent), BYPASS_SHADOW=server.address)
    size = size_mib << 20
    best = {"remote": 0.0, "socket": 0.0, "local": 0.0}
    try:
        for _ in range(rounds):
            # the same reader (128 KiB reads, timed from open to close) in all three
            secs, total = out([tools["reader"], "/job/big"], env).split()
            assert int(total) == size
            best["remote"] = max(best["remote"], size / float(secs))
            secs, total = out([tools["stream"], str(big)]).split()
            assert int(total) == size
            best["socket"] = max(best["socket"], size / float(secs))
            secs, total = out([tools["reader"], str(big)]).split()
            best["local"] = max(best["local"], size / float(secs))
    finally:
        server.close()
        big.unlink()
    return best


def bench_many(tools, procs: int, calls: int) -> dict[int, tuple[float, int]]:
    data = os.urandom(4096)
    server = ShadowServer({1: lambda ctx, n: data[:n]}).start()
    env = dict(os.environ, BYPASS_SHADOW=server.address, BYPASS_SHADOW_TIMEOUT="60")
    results = {}
    try:
        for n in (1, 8, procs):
            t = time.perf_counter()
            ps = [subprocess.Popen([tools["ping"], str(calls), "--read"], env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True) for _ in range(n)]
            errors = 0
            for p in ps:
                o, e = p.communicate(timeout=600)
                errors += int(o.split()[1]) if o.split() else calls
                errors += 0 if p.returncode == 0 else 1
            results[n] = (n * calls / (time.perf_counter() - t), errors)
    finally:
        server.close()
    return results


def bench_startup(agent: Path, rounds: int, n: int = 200) -> tuple[float, float]:
    loop = f"i=0; while [ $i -lt {n} ]; do /bin/true; i=$((i+1)); done"
    best = [float("inf"), float("inf")]
    for _ in range(rounds):
        for k, env in enumerate((dict(os.environ), dict(os.environ, BYPASS_CHILD_PRELOAD=str(agent)))):
            cmd = ["sh", "-c", loop.replace("/bin/true", "env LD_PRELOAD=$BYPASS_CHILD_PRELOAD /bin/true")
                   if k else loop.replace("/bin/true", "env /bin/true")]
            t = time.perf_counter()
            subprocess.run(cmd, env=env, check=True)
            best[k] = min(best[k], (time.perf_counter() - t) / n)
    return best[0], best[1]


def _project(root: Path) -> None:
    """A small C project: 8 files of some arithmetic each, one header, a Makefile."""
    root.mkdir(parents=True)
    (root / "lib.h").write_text("".join(f"long f{i}(long x);\n" for i in range(8)))
    for i in range(8):
        body = "".join(f"    x = (x * {k + 3} + {i}) % 1000003;\n    if (x & {1 << (k % 8)}) x ^= {k};\n"
                       for k in range(60))
        (root / f"m{i}.c").write_text(f'#include <stdio.h>\n#include <string.h>\n#include "lib.h"\n'
                                      f"long f{i}(long x)\n{{\n{body}    return x;\n}}\n")
    calls = " + ".join(f"f{i}(argc)" for i in range(8))
    (root / "main.c").write_text(f'#include <stdio.h>\n#include "lib.h"\nint main(int argc, char **argv)\n'
                                 f'{{\n    (void)argv;\n    printf("%ld\\n", {calls});\n    return 0;\n}}\n')
    objs = " ".join(f"m{i}.o" for i in range(8)) + " main.o"
    (root / "Makefile").write_text(f"CFLAGS = -O1\nprog: {objs}\n\t$(CC) -o $@ $^\n%.o: %.c lib.h\n"
                                   f"\t$(CC) $(CFLAGS) -c -o $@ $<\nclean:\n\trm -f prog *.o\n")


def _pylib(root: Path, modules: int = 40) -> str:
    """A package of `modules` modules, each with a class and some functions; returns the import."""
    pkg = root / "benchpkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    for i in range(modules):
        funcs = "".join(f"def g{k}(x):\n    return [x * {k} + j for j in range({k + 1})]\n\n" for k in range(20))
        (pkg / f"mod{i}.py").write_text(f'"""module {i}"""\nimport os\n\nclass C{i}:\n    n = {i}\n\n{funcs}')
    return "import " + ", ".join(f"benchpkg.mod{i}" for i in range(modules))


def bench_jobs(rounds: int, work: Path) -> dict[str, tuple[float, float]]:
    """A make -j2 build and a python3 start-up, each under /job and on local disk: best seconds."""
    export = work / "jobs-export"
    local = work / "jobs-local"
    for root in (export, local):
        _project(root / "proj")
        imports = _pylib(root / "pylib")
    spec = REPO / "agents" / "remote" / "remote.bypass"
    agent = work / "remote.so"
    if not agent.exists():
        build(spec, agent)
    server = make_server(spec, str(export))
    server.listen()
    server.start()
    # python3 as a user runs it: compiled modules kept in __pycache__ (written in the warm-up)
    local_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")}
    remote_env = dict(local_env, LD_PRELOAD=str(agent), BYPASS_SHADOW=server.address)
    jobs = {
        "make": lambda base, env: [
            subprocess.run(["make", "-s", "-C", f"{base}/proj", "clean"], env=env, check=True),
            subprocess.run(["make", "-s", "-j2", "-C", f"{base}/proj"], env=env, check=True)],
        "python": lambda base, env: [
            subprocess.run([sys.executable, "-c", imports], env=dict(env, PYTHONPATH=f"{base}/pylib"), check=True)
            for _ in range(10)],
    }
    best = {name: [float("inf"), float("inf")] for name in jobs}
    try:
        for name, job in jobs.items():
            job("/job", remote_env)                    # warm: caches, the shadow, __pycache__
            job(str(local), local_env)
            for _ in range(rounds):
                for k, (base, env) in enumerate(((str(local), local_env), ("/job", remote_env))):
                    t = time.perf_counter()
                    job(base, env)
                    best[name][k] = min(best[name][k], time.perf_counter() - t)
        out = subprocess.run([f"{export}/proj/prog"], capture_output=True, text=True, check=True).stdout
        assert out == subprocess.run([f"{local}/proj/prog"], capture_output=True, text=True).stdout
        for root in (export, local):                   # both imported their own compiled modules
            assert len(list((root / "pylib" / "benchpkg" / "__pycache__").iterdir())) == 41
    finally:
        server.close()
    return {name: (b[0], b[1]) for name, b in best.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=20000)
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--procs", type=int, default=64)
    ap.add_argument("--only", choices=["sync", "stream", "many", "startup", "jobs"], help="run one benchmark")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-rpc-") as tmp:
        work = Path(tmp)
        tools = compile_tools(work)
        if args.only in (None, "sync"):
            c2c, rpc, c2c_med, rpc_med = bench_sync(tools, args.calls, args.rounds, work)
            print(f"sync call      C-to-C {c2c:6.2f} us   agent->shadow {rpc:6.2f} us   ratio {rpc / c2c:4.2f}x"
                  f"   (medians {c2c_med:.2f} / {rpc_med:.2f})   bar <= 1.5x")
        if args.only in (None, "stream"):
            s = bench_stream(tools, args.size_mib, max(2, args.rounds // 2), work)
            print(f"streaming      remote read {s['remote'] / 2**20:6.0f} MiB/s   socket stream "
                  f"{s['socket'] / 2**20:7.0f} MiB/s   ratio {s['remote'] / s['socket']:4.0%}"
                  f"   (local read {s['local'] / 2**20:.0f} MiB/s)   bar >= 70%")
        if args.only in (None, "startup"):
            agent = work / "remote.so"
            if not agent.exists():
                build(REPO / "agents" / "remote" / "remote.bypass", agent)
            native, loaded = bench_startup(agent, max(2, args.rounds // 2))
            print(f"startup        native {native * 1e3:.2f} ms   with the remote agent {loaded * 1e3:.2f} ms"
                  f"   extra {(loaded - native) * 1e3:.2f} ms per process   bar <= 1 ms")
        if args.only in (None, "jobs"):
            for name, (local, remote) in bench_jobs(max(2, args.rounds // 2), work).items():
                what = "make -j2  " if name == "make" else "python3   "
                print(f"{what}     local disk {local:6.3f} s   under /job {remote:6.3f} s   ratio {remote / local:4.2f}x"
                      f"   goal <= 1.5x")
        if args.only in (None, "many"):
            m = bench_many(tools, args.procs, max(200, args.calls // 20))
            line = "   ".join(f"{n:3d} procs {rate:8.0f} calls/s errors {err}" for n, (rate, err) in m.items())
            print(f"many clients   {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
