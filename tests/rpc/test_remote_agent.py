"""The remote agent end to end: real programs read and write files through the shadow."""
from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from bypass.build import build
from bypass.rpc.shadow_cli import make_server

SPEC = Path(__file__).resolve().parents[2] / "agents" / "remote" / "remote.bypass"


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    return build(SPEC, tmp_path_factory.mktemp("remote") / "remote.so")


@pytest.fixture
def export(tmp_path):
    root = tmp_path / "export"
    (root / "data" / "sub").mkdir(parents=True)
    (root / "data" / "input.txt").write_text("".join(f"line {i:05d}\n" for i in range(3000)))
    (root / "data" / "sub" / "a.txt").write_text("needle in a\n")
    (root / "data" / "sub" / "b.txt").write_text("nothing\n")
    return root


@pytest.fixture
def shadow(export):
    server = make_server(SPEC, str(export))
    server.listen()
    server.start()
    yield server
    server.close()


def run(agent, shadow, *cmd, timeout=60, env=None, **kw):
    e = dict(os.environ, LD_PRELOAD=str(agent), BYPASS_SHADOW=shadow.address,
             BYPASS_SHADOW_TIMEOUT="10")
    e.update(env or {})
    return subprocess.run(cmd, env=e, capture_output=True, text=True, timeout=timeout, **kw)


def sh(agent, shadow, script, **kw):
    return run(agent, shadow, "sh", "-c", script, **kw)


def test_cat_cp_sort_grep(agent, shadow, export):
    p = sh(agent, shadow, "cat /job/data/input.txt | tail -1; cp /job/data/input.txt /job/copy.txt; "
                          "sort -r -o /job/sorted.txt /job/data/input.txt; grep -r needle /job/data")
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == ["line 02999", "/job/data/sub/a.txt:needle in a"]
    src = (export / "data" / "input.txt").read_text()
    assert (export / "copy.txt").read_text() == src
    assert (export / "sorted.txt").read_text() == "".join(sorted(src.splitlines(True), reverse=True))


def test_ls_stat_and_directories(agent, shadow, export):
    p = sh(agent, shadow, "ls /job/data; ls -l /job/data/sub | wc -l; stat -c '%s %F' /job/data/input.txt; "
                          "find /job/data -name '*.txt' | sort; mkdir /job/new; rmdir /job/new; "
                          "mv /job/data/sub/b.txt /job/data/b2.txt; rm /job/data/b2.txt; ls /job/data/sub")
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == [
        "input.txt", "sub", "3", f"{(export / 'data' / 'input.txt').stat().st_size} regular file",
        "/job/data/input.txt", "/job/data/sub/a.txt", "/job/data/sub/b.txt", "a.txt"]
    assert not (export / "data" / "b2.txt").exists() and not (export / "new").exists()


def test_file_system_status_comes_from_the_shadow(agent, shadow, export):
    # /job does not exist here: every answer below is the export's file system, via the shadow
    code = ("import os; v = os.statvfs('/job/data'); print(v.f_bsize, v.f_blocks, v.f_namemax); "
            "f = os.open('/job/data/input.txt', os.O_RDONLY); print(os.fstatvfs(f).f_blocks)")
    p = sh(agent, shadow, f"python3 -c \"{code}\"; stat -f -c '%S %b %l' /job/data/input.txt; "
                          "df -k /job/data | tail -1 | wc -w")
    assert p.returncode == 0, p.stderr
    v = os.statvfs(export)
    assert p.stdout.splitlines() == [f"{v.f_bsize} {v.f_blocks} {v.f_namemax}", str(v.f_blocks),
                                     f"{v.f_frsize} {v.f_blocks} {v.f_namemax}", "6"]


LOCKER = """
import fcntl, os, struct, sys, time
fd = os.open('/job/lockme', os.O_RDWR | os.O_CREAT, 0o644)
if sys.argv[1] == 'hold':
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    print('A locked', flush=True)
    time.sleep(2)
    sys.exit(0)
try:
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    print('B locked at once')
except OSError as e:
    print('B busy', e.errno == 11)
got = fcntl.fcntl(fd, fcntl.F_GETLK, struct.pack('hhqqi4x', fcntl.F_WRLCK, 0, 0, 0, 0))
print('B sees a write lock', struct.unpack('hhqqi4x', got)[0] == fcntl.F_WRLCK)
t = time.time()
fcntl.lockf(fd, fcntl.LOCK_EX)                 # F_SETLKW: waits for A to exit
print('B locked after waiting', time.time() - t > 0.3)
"""


def test_record_locks_conflict_between_agent_processes(agent, shadow, export, tmp_path):
    (tmp_path / "locker.py").write_text(LOCKER)
    p = sh(agent, shadow, f"python3 {tmp_path}/locker.py hold & sleep 1; python3 {tmp_path}/locker.py try; wait")
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == ["A locked", "B busy True", "B sees a write lock True",
                                     "B locked after waiting True"]


def test_shell_redirection_and_cwd(agent, shadow, export):
    p = sh(agent, shadow, "cd /job/data && pwd && cat sub/a.txt && echo hi > out.txt && "
                          "sort input.txt > sorted.txt && ls sub")
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == ["/job/data", "needle in a", "a.txt", "b.txt"]
    assert (export / "data" / "out.txt").read_text() == "hi\n"
    assert (export / "data" / "sorted.txt").read_text() == (export / "data" / "input.txt").read_text()


def test_python_reads_and_writes(agent, shadow, export):
    code = ("import os\n"
            "data = open('/job/data/input.txt').read()\n"
            "with open('/job/py.txt', 'w') as f: f.write(data.upper())\n"
            "with open('/job/py.txt', 'r+b') as f:\n"
            "    f.seek(5); f.write(b'#'); f.seek(0); print(f.read(10))\n"
            "print(sorted(os.listdir('/job/data')), os.path.getsize('/job/py.txt'))\n")
    p = run(agent, shadow, sys.executable, "-c", code)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == ["b'LINE #0000'", f"['input.txt', 'sub'] {3000 * 11}"]
    assert (export / "py.txt").read_text().startswith("LINE #0000\nLINE 00001")


def test_sqlite3(agent, shadow, export):
    if not shutil.which("sqlite3"):
        pytest.fail("sqlite3 is not installed (Debian package sqlite3)")
    p = sh(agent, shadow, "sqlite3 /job/db.sqlite 'create table t(x); insert into t values (1),(2),(3);' && "
                          "sqlite3 /job/db.sqlite 'select sum(x) from t'")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "6"
    with sqlite3.connect(export / "db.sqlite") as db:
        assert db.execute("select count(*) from t").fetchone() == (3,)


def test_tar_extracts_into_the_remote_tree(agent, shadow, export, tmp_path):
    src = tmp_path / "src"
    (src / "d" / "e").mkdir(parents=True)
    (src / "d" / "one.txt").write_text("one\n")
    (src / "d" / "e" / "two.txt").write_text("two\n")
    os.chmod(src / "d" / "one.txt", 0o640)
    (src / "d" / "link").symlink_to("one.txt")
    with tarfile.open(tmp_path / "a.tar", "w") as t:
        t.add(src / "d", arcname="d")
    p = sh(agent, shadow, f"mkdir /job/out && tar xf {tmp_path}/a.tar -C /job/out")
    assert p.returncode == 0, p.stderr
    out = export / "out" / "d"
    assert (out / "one.txt").read_text() == "one\n" and (out / "e" / "two.txt").read_text() == "two\n"
    assert os.readlink(out / "link") == "one.txt"
    assert (out / "one.txt").stat().st_mode & 0o777 == 0o640
    assert (out / "one.txt").stat().st_mtime == pytest.approx((src / "d" / "one.txt").stat().st_mtime, abs=1)


def test_no_escape_from_the_export_root(agent, shadow, export):
    """The shadow never reaches past its export.  ".." above /job is the program's own "/"
    (where a file beside the export is not: the shadow's machine is not there), and a symlink
    of the export stays in it: an absolute one starts at its top, ".." stops there."""
    (export.parent / "secret").write_text("the shadow's own\n")
    (export / "data" / "evil").symlink_to("/etc/passwd")
    (export / "data" / "sneaky").symlink_to("../../secret")
    p = sh(agent, shadow, f"cat /job/../secret; cat /job/data/evil; cat /job/data/sneaky; "
                          f"cat /job/../{export.name}/../secret; cat /job/data/../../etc/hostname")
    assert p.returncode == 0           # (the last cat: this machine's own /etc/hostname)
    assert p.stdout == Path("/etc/hostname").read_text()
    assert p.stderr.count("No such file or directory") == 4, p.stderr


def test_fork_shares_the_offset_and_exec_keeps_descriptors(agent, shadow, export):
    (export / "f.txt").write_bytes(b"0123456789abcdefghij")
    code = ("import os, sys\n"
            "fd = os.open('/job/f.txt', os.O_RDONLY)\n"
            "print('parent', os.read(fd, 5), flush=True)\n"
            "pid = os.fork()\n"
            "if pid == 0:\n"
            "    print('child', os.read(fd, 5), flush=True)\n"
            "    os._exit(0)\n"
            "os.waitpid(pid, 0)\n"
            "print('parent', os.read(fd, 3), flush=True)\n"
            "os.set_inheritable(fd, True)\n"
            "os.execv(sys.executable, [sys.executable, '-c', "
            "f'import os; print(\"exec\", os.read({fd}, 4), os.fstat({fd}).st_size)'])\n")
    p = run(agent, shadow, sys.executable, "-c", code)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == ["parent b'01234'", "child b'56789'", "parent b'abc'",
                                     "exec b'defg' 20"]


def test_threads(agent, shadow, export):
    code = ("import threading\n"
            "res = {}\n"
            "def work(i):\n"
            "    with open(f'/job/t{i}.txt', 'w') as f: f.write(str(i) * 1000)\n"
            "    res[i] = open(f'/job/t{i}.txt').read() == str(i) * 1000\n"
            "ts = [threading.Thread(target=work, args=(i,)) for i in range(8)]\n"
            "[t.start() for t in ts]; [t.join() for t in ts]\n"
            "print(all(res.values()), len(res))\n")
    p = run(agent, shadow, sys.executable, "-c", code)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "True 8"


def test_in_a_mount_namespace_with_the_export_hidden(agent, shadow, export, tmp_path):
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare(1)")
    # Inside the namespace the export directory is covered by an empty tmpfs: the program can
    # only reach its files through the shadow.
    script = (f"mount -t tmpfs none {export} && test ! -e {export}/data && "
              f"LD_PRELOAD={agent} cat /job/data/sub/a.txt && "
              f"LD_PRELOAD={agent} cp /job/data/input.txt /job/ns-copy.txt && "
              f"LD_PRELOAD={agent} {sys.executable} -c \"open('/job/ns.txt','w').write('ns')\"")
    p = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, BYPASS_SHADOW=shadow.address))
    assert p.returncode == 0, p.stderr
    assert p.stdout == "needle in a\n"
    assert (export / "ns-copy.txt").read_text() == (export / "data" / "input.txt").read_text()
    assert (export / "ns.txt").read_text() == "ns"


def test_killing_the_shadow_mid_run(agent, export, tmp_path):
    # The shadow in its own process, killed while a program writes through it.
    proc = subprocess.Popen([sys.executable, "-m", "bypass.cli", "shadow", str(SPEC), "--export", str(export)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    address = "unix:/nonexistent/x"
    try:
        address = proc.stdout.readline().strip().split("=", 1)[1]
        code = ("import os, time, sys\n"
                "fd = os.open('/job/log.txt', os.O_WRONLY | os.O_CREAT, 0o644)\n"
                "n = 0\n"
                "try:\n"
                "    while True:\n"
                "        os.write(fd, b'line %d\\n' % n); n += 1\n"
                "        print(n, flush=True); time.sleep(0.01)\n"
                "except OSError as e:\n"
                "    print('error', e.errno, flush=True); sys.exit(3)\n")
        env = dict(os.environ, LD_PRELOAD=str(agent), BYPASS_SHADOW=address, BYPASS_SHADOW_TIMEOUT="5")
        prog = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        acknowledged = 0
        while acknowledged < 20:
            acknowledged = int(prog.stdout.readline())
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        t = time.monotonic()
        out, err = prog.communicate(timeout=15)
        assert time.monotonic() - t < 10
        assert prog.returncode == 3 and out.splitlines()[-1] == "error 5", (out, err)
        assert "shadow lost" in err and len(err.strip().splitlines()) == 1, err   # one message
        written = (export / "log.txt").read_text().splitlines()
        acked = int(out.splitlines()[-2]) if len(out.splitlines()) > 1 else acknowledged
        assert len(written) >= acked        # everything acknowledged is on disk
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        # a killed shadow leaves its private socket directory behind
        shutil.rmtree(os.path.dirname(address.split(":", 1)[1]), ignore_errors=True)


def test_big_file_streams_intact(agent, shadow, export):
    big = export / "big.bin"
    big.write_bytes(os.urandom(9 << 20) + b"tail")
    p = sh(agent, shadow, "cat /job/big.bin > /job/big.copy && cmp /job/big.bin /job/big.copy && "
                          "dd if=/job/big.bin bs=1M skip=3 count=2 status=none | md5sum; "
                          "tail -c 4 /job/big.bin")
    assert p.returncode == 0, p.stderr
    import hashlib
    lines = p.stdout.split("\n")
    assert lines[0].split()[0] == hashlib.md5(big.read_bytes()[3 << 20:5 << 20]).hexdigest()
    assert lines[1] == "tail"
    assert (export / "big.copy").read_bytes() == big.read_bytes()


def test_exec_after_read_ahead_continues_where_the_program_stopped(agent, shadow, export):
    (export / "g.txt").write_bytes(bytes(range(256)) * 1024)
    code = ("import os, sys\n"
            "fd = os.open('/job/g.txt', os.O_RDONLY)\n"
            "os.read(fd, 3); os.read(fd, 100)\n"        # the agent has read far more ahead
            "os.set_inheritable(fd, True)\n"
            "os.execv(sys.executable, [sys.executable, '-c', "
            "f'import os; print(list(os.read({fd}, 4)))'])\n")
    p = run(agent, shadow, sys.executable, "-c", code)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[103, 104, 105, 106]"


def test_mmap_of_a_remote_file(agent, shadow, export):
    (export / "m.bin").write_bytes(b"mapped bytes" * 1000)
    code = ("import mmap\n"
            "with open('/job/m.bin', 'rb') as f:\n"
            "    m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)\n"
            "    print(m[:12], len(m), m[-5:])\n")
    p = run(agent, shadow, sys.executable, "-c", code)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "b'mapped bytes' 12000 b'bytes'"


def test_real_programs_in_a_namespace_match_a_native_run(agent, shadow, export, tmp_path):
    """The issue's check: in a mount namespace with the export hidden, programs work only
    through the shadow, and what they leave there is what the same commands leave natively."""
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("sqlite3"):
        pytest.skip("needs root, unshare(1) and sqlite3")
    src = tmp_path / "tarsrc"
    (src / "t" / "u").mkdir(parents=True)
    (src / "t" / "u" / "f.txt").write_text("in the archive\n")
    with tarfile.open(tmp_path / "a.tar", "w") as t:
        t.add(src / "t", arcname="t")
    native = tmp_path / "native"
    shutil.copytree(export, native, symlinks=True)

    def script(p):
        return (f"cat {p}/data/input.txt > {p}/o_cat.txt && cp {p}/data/input.txt {p}/o_cp.txt && "
                f"sort -r -o {p}/o_sort.txt {p}/data/input.txt && "
                f"(cd {p}/data && grep -r needle .) > {p}/o_grep.txt && "
                f"{sys.executable} -c \"d=open('{p}/data/input.txt').read(); "
                f"open('{p}/o_py.txt','w').write(d[::-1])\" && "
                f"sqlite3 {p}/o.db 'create table t(a,b); insert into t values (1,2),(3,4);' && "
                f"sqlite3 {p}/o.db 'select a+b from t' > {p}/o_sql.txt && "
                f"mkdir {p}/o_tar && tar xf {tmp_path}/a.tar -C {p}/o_tar")

    p = subprocess.run(["sh", "-c", script(native)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    import shlex
    hidden = (f"mount -t tmpfs none {export} && test ! -e {export}/data && "
              f"LD_PRELOAD={agent} sh -c {shlex.quote(script('/job'))}")
    p = subprocess.run(["unshare", "-m", "sh", "-c", hidden], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, BYPASS_SHADOW=shadow.address))
    assert p.returncode == 0, p.stderr
    for name in ("o_cat.txt", "o_cp.txt", "o_sort.txt", "o_grep.txt", "o_py.txt", "o_sql.txt",
                 "o_tar/t/u/f.txt"):
        assert (export / name).read_bytes() == (native / name).read_bytes(), name
    with sqlite3.connect(export / "o.db") as db:
        assert db.execute("select sum(a) from t").fetchone() == (4,)


def test_over_tcp_with_a_secret(agent, export):
    server = make_server(SPEC, str(export), secret=b"tcp-secret")
    server.listen("tcp:127.0.0.1:0")
    server.start()
    try:
        env = dict(os.environ, LD_PRELOAD=str(agent), BYPASS_SHADOW=server.address,
                   BYPASS_SHADOW_SECRET="tcp-secret")
        p = subprocess.run(["sh", "-c", "cat /job/data/sub/a.txt && cp /job/data/input.txt /job/tcp.txt"],
                           env=env, capture_output=True, text=True, timeout=60)
        assert p.returncode == 0 and p.stdout == "needle in a\n", p.stderr
        assert (export / "tcp.txt").read_bytes() == (export / "data" / "input.txt").read_bytes()
        env["BYPASS_SHADOW_SECRET"] = "wrong"
        p = subprocess.run(["cat", "/job/data/sub/a.txt"], env=env, capture_output=True, text=True, timeout=60)
        assert p.returncode != 0 and "authentication failed" in p.stderr
    finally:
        server.close()


def test_fork_while_other_threads_use_the_shadow(agent, shadow, export):
    # Locks of the agent and of its connection must never reach a child taken.
    code = ("import os, threading\n"
            "stop = False\n"
            "def reader():\n"
            "    while not stop:\n"
            "        with open('/job/data/input.txt', 'rb') as f: f.read()\n"
            "ts = [threading.Thread(target=reader) for _ in range(3)]\n"
            "[t.start() for t in ts]\n"
            "for i in range(30):\n"
            "    pid = os.fork()\n"
            "    if pid == 0:\n"
            "        os._exit(0 if open('/job/data/sub/a.txt').read() == 'needle in a\\n' else 1)\n"
            "    assert os.waitpid(pid, 0)[1] == 0\n"
            "stop = True\n"
            "[t.join() for t in ts]\n"
            "print('ok')\n")
    p = run(agent, shadow, sys.executable, "-c", code, timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr


SCANDIR_C = r"""
#define _GNU_SOURCE
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
int main(int argc, char **argv) {
    struct dirent **list;
    int n = scandir(argv[1], &list, NULL, alphasort);
    if (n < 0) { perror("scandir"); return 1; }
    for (int i = 0; i < n; i++) { printf("%s\n", list[i]->d_name); free(list[i]); }
    free(list);
    char *c = canonicalize_file_name(argv[2]);
    printf("canonical %s\n", c ? c : "(null)");
    DIR *d = opendir(argv[1]);
    struct dirent ent, *res;
    int count = 0;
    while (readdir_r(d, &ent, &res) == 0 && res) count++;
    closedir(d);
    printf("readdir_r %d\n", count);
    return 0;
}
"""


def test_scandir_readdir_r_canonicalize(agent, shadow, export, tmp_path):
    src = tmp_path / "scan.c"
    src.write_text(SCANDIR_C)
    subprocess.run(["gcc", "-w", "-o", str(tmp_path / "scan"), str(src)], check=True)
    p = run(agent, shadow, str(tmp_path / "scan"), "/job/data/sub", "/job/data/./sub/../sub/a.txt")
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == [".", "..", "a.txt", "b.txt", "canonical /job/data/sub/a.txt",
                                     "readdir_r 4"]


def test_64_agent_processes_at_once(agent, shadow, export):
    (export / "shared.txt").write_text("x" * 100000)
    script = ("for i in $(seq 64); do (cat /job/shared.txt /job/data/sub/a.txt > /job/out$i.txt || "
              "echo fail $i) & done; wait")
    p = sh(agent, shadow, script, timeout=180)
    assert p.returncode == 0 and "fail" not in p.stdout, (p.stdout, p.stderr)
    want = "x" * 100000 + "needle in a\n"
    assert all((export / f"out{i}.txt").read_text() == want for i in range(1, 65))


def test_running_the_jobs_own_executables(agent, shadow, export):
    (export / "bin").mkdir()
    script = export / "bin" / "job.sh"
    script.write_text("#!/bin/sh\necho \"job got $1\"\ncat /job/data/sub/a.txt\n")
    script.chmod(0o755)
    shutil.copy("/bin/echo", export / "bin" / "myecho")
    p = sh(agent, shadow, "/job/bin/job.sh one && /job/bin/myecho two && cd /job/bin && ./job.sh three")
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == ["job got one", "needle in a", "two", "job got three", "needle in a"]


def test_io_summary_at_the_end_of_a_run(agent, export):
    p = subprocess.run([sys.executable, "-m", "bypass.cli", "run", str(SPEC), "--agent", str(agent),
                        "--export", str(export), "--summary", "--", "sh", "-c",
                        "cat /job/data/input.txt > /dev/null; echo hi > /job/s.txt"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    lines = p.stderr.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["opens", "failed"])
    rows = {line.split()[-1]: line.split()[:-1] for line in lines[header + 1:]}
    size = (export / "data" / "input.txt").stat().st_size
    assert rows["/job/data/input.txt"][0] == "1" and rows["/job/data/input.txt"][3] == str(size)
    assert rows["/job/s.txt"][4:6] == ["1", "3"]          # one write of 3 bytes


def test_everyday_tools(agent, shadow, export):
    if not shutil.which("git"):
        pytest.fail("git is not installed")
    script = r"""
set -e
head -1 /job/data/input.txt; wc -l < /job/data/input.txt; du -s /job/data > /dev/null
touch /job/t1; ln -s data/input.txt /job/lnk; readlink /job/lnk; tail -1 /job/lnk
cp -r /job/data /job/data2; diff -r /job/data /job/data2; mv /job/data2 /job/data3; rm -r /job/data3
chmod 600 /job/t1; stat -c %a /job/t1
gzip -k /job/data/input.txt; gunzip -c /job/data/input.txt.gz | md5sum | cut -c1-8
md5sum < /job/data/input.txt | cut -c1-8
tar cf /job/out.tar -C /job data; tar tf /job/out.tar | sort | head -2
cd /job/data && printf 'all: ; @echo made in $(CURDIR)\n' > Makefile && make
git init -q /job/repo; cd /job/repo; echo x > x; git add x
git -c user.email=a@b -c user.name=n commit -qm first; git log --oneline | wc -l
d=$(mktemp -d /job/tmp.XXXXXX); test -d "$d"; f=$(mktemp /job/f.XXXXXX); test -f "$f"; echo temps
"""
    p = run(agent, shadow, "bash", "-c", script, timeout=120)
    assert p.returncode == 0, p.stderr
    digest = subprocess.run(["md5sum"], input=(export / "data" / "input.txt").read_bytes(),
                            capture_output=True).stdout[:8].decode()
    assert p.stdout.splitlines() == [
        "line 00000", "3000", "data/input.txt", "line 02999", "600", digest, digest,
        "data/", "data/input.txt", "made in /job/data", "1", "temps"]
    assert (export / "repo" / ".git" / "HEAD").exists()


def test_make_and_gcc_in_the_remote_tree(agent, shadow, export):
    prog = export / "prog"
    prog.mkdir()
    (prog / "h.h").write_text("#define VAL 42\n")
    (prog / "m.c").write_text('#include <stdio.h>\n#include "h.h"\nint main(void) { printf("%d\\n", VAL); return 0; }\n')
    (prog / "Makefile").write_text("m: m.o\n\tgcc -o m m.o\nm.o: m.c h.h\n\tgcc -c m.c\n")
    p = sh(agent, shadow, "cd /job/prog && make -s && ./m", timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "42"
    assert subprocess.run([str(prog / "m")], capture_output=True, text=True).stdout.strip() == "42"
