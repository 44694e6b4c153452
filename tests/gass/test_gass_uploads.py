"""Write-back on every exit path, with the real agent and real programs: the shells people use
(dash leaves through _exit; `sort in > URL` is the shell opening the URL and exec()ing sort),
pipelines, and Python programs that fork. The server must receive each file byte-identical, once.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gassenv import requires_libcurl
from hostile_server import HostileServer, silence

pytestmark = requires_libcurl

DASH = shutil.which("dash")
BASH = shutil.which("bash")


@pytest.fixture
def unsorted(tmp_path) -> Path:
    path = tmp_path / "in.txt"
    path.write_bytes(b"".join(f"{(i * 7919) % 1000:04d} line {i}\n".encode() for i in range(3000)))
    return path


def cache_state(env) -> dict[str, list[str]]:
    root = Path(env["BYPASS_GASS_CACHE"])
    return {d: sorted(p.name for p in (root / d).iterdir()) if (root / d).exists() else []
            for d in ("tmp", "writes", "unsent")}


def assert_nothing_pending(env) -> None:
    state = cache_state(env)
    assert state["tmp"] == [] and state["writes"] == [], state


def test_shells_are_what_the_tests_say():
    assert DASH and BASH, "dash and bash are needed"
    assert os.path.realpath("/bin/sh") == os.path.realpath(DASH), "/bin/sh is expected to be dash"


def test_dash_redirect_of_a_builtin(run, server, site, gass_env):
    """dash runs `echo` itself and leaves through _exit, without closing anything."""
    p = run("/bin/sh", "-c", f"echo new > {server.url('put.txt')}")
    assert p.returncode == 0, p.stderr
    assert (site / "put.txt").read_bytes() == b"new\n"
    assert server.count("PUT", "/put.txt") == 1
    assert_nothing_pending(gass_env)


def test_dash_redirect_then_exec(run, server, site, unsorted, gass_env):
    """The shell opens the URL and exec()s sort, which inherits the descriptor as stdout."""
    want = subprocess.run(["sort", str(unsorted)], capture_output=True, check=True).stdout
    p = run("/bin/sh", "-c", f"sort {unsorted.name} > {server.url('sorted.txt')}")
    assert p.returncode == 0, p.stderr
    assert (site / "sorted.txt").read_bytes() == want
    assert server.count("PUT", "/sorted.txt") == 1
    assert_nothing_pending(gass_env)


def test_bash_pipeline_into_tee(run, server, site, unsorted, gass_env):
    want = subprocess.run(["sort", "-r", str(unsorted)], capture_output=True, check=True).stdout
    p = run(BASH, "-c", f"sort -r {unsorted.name} | tee {server.url('tee.txt')} > /dev/null")
    assert p.returncode == 0, p.stderr
    assert (site / "tee.txt").read_bytes() == want
    assert server.count("PUT", "/tee.txt") == 1
    assert_nothing_pending(gass_env)


def test_bash_redirect_of_a_group(run, server, site, gass_env):
    """bash forks a child per command; the descriptor is the shell's, the writes the children's."""
    p = run(BASH, "-c", f"{{ echo one; printf 'two\\n'; /bin/echo three; }} > {server.url('g.txt')}")
    assert p.returncode == 0, p.stderr
    assert (site / "g.txt").read_bytes() == b"one\ntwo\nthree\n"
    assert server.count("PUT", "/g.txt") == 1
    assert_nothing_pending(gass_env)


FORK_CHILD_OPENS = """
import os, sys
url = sys.argv[1]
pid = os.fork()
if pid == 0:
    f = open(url, "wb")
    f.write(b"written by the child\\n" * 1000)
    f.flush()
    os._exit(0)          # no close, no atexit: only the _exit hook can upload
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""

FORK_SHARED = """
import os, sys
url = sys.argv[1]
fd = os.open(url, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
os.write(fd, b"parent before\\n")
pid = os.fork()
if pid == 0:
    os.write(fd, b"child\\n")
    os._exit(0)          # the parent still holds it: the child must not upload
os.waitpid(pid, 0)
os.write(fd, b"parent after\\n")
os.close(fd)
"""

FORK_PARENT_CLOSES_FIRST = """
import os, sys, time
url = sys.argv[1]
fd = os.open(url, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(w)
    os.read(r, 1)        # wait until the parent has closed its descriptor
    os.write(fd, b"the child had the last word\\n")
    os._exit(0)
os.close(fd)             # not the last holder: no upload yet
os.write(w, b"x")
os.waitpid(pid, 0)
"""


@pytest.mark.parametrize("program,want", [
    (FORK_CHILD_OPENS, b"written by the child\n" * 1000),
    (FORK_SHARED, b"parent before\nchild\nparent after\n"),
    (FORK_PARENT_CLOSES_FIRST, b"the child had the last word\n"),
], ids=["child-opens", "shared", "parent-closes-first"])
def test_python_fork(run, server, site, gass_env, program, want):
    p = run(sys.executable, "-c", program, server.url("f.txt"))
    assert p.returncode == 0, p.stderr
    assert (site / "f.txt").read_bytes() == want
    assert server.count("PUT", "/f.txt") == 1
    assert_nothing_pending(gass_env)


def test_exec_inherited_descriptor_from_python(run, server, site, gass_env):
    """A descriptor passed to a child as its stdout: the parent closes first, the child uploads."""
    code = ("import os, subprocess, sys\n"
            "f = open(sys.argv[1], 'wb')\n"
            "p = subprocess.Popen(['/bin/echo', 'from echo'], stdout=f)\n"
            "f.close()\n"
            "sys.exit(p.wait())\n")
    p = run(sys.executable, "-c", code, server.url("e.txt"))
    assert p.returncode == 0, p.stderr
    assert (site / "e.txt").read_bytes() == b"from echo\n"
    assert server.count("PUT", "/e.txt") == 1
    assert_nothing_pending(gass_env)


EXEC_WITH_CLOEXEC = """
import os, sys
f = open(sys.argv[1], "w")       # O_CLOEXEC: the exec closes it, no close() is seen
f.write("written before exec\\n")
f.flush()
os.execv("/bin/true", ["true"])
"""

EXEC_WITH_CLOEXEC_SHARED = """
import os, sys
f = open(sys.argv[1], "w")
r, w = os.pipe()
pid = os.fork()
if pid == 0:                     # the child keeps the file: it is the one to send it
    os.close(w)
    os.read(r, 1)
    f.write("the child's part\\n")
    f.close()
    os._exit(0)
f.write("before exec\\n")
f.flush()
os.close(r)
os.set_inheritable(w, True)
os.execv("/bin/sh", ["sh", "-c", f"printf x >&{w}; wait"])
"""


@pytest.mark.parametrize("program,want", [
    (EXEC_WITH_CLOEXEC, b"written before exec\n"),
    (EXEC_WITH_CLOEXEC_SHARED, b"before exec\nthe child's part\n"),
], ids=["alone", "child-still-holds"])
def test_close_on_exec_descriptor_at_exec(run, server, site, gass_env, program, want):
    p = run(sys.executable, "-c", program, server.url("x.txt"))
    assert p.returncode == 0, p.stderr
    deadline = time.monotonic() + 10  # the forked child may finish after the shell
    while server.count("PUT", "/x.txt") == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (site / "x.txt").read_bytes() == want
    assert server.count("PUT", "/x.txt") == 1
    time.sleep(0.2)
    assert_nothing_pending(gass_env)


def test_failed_upload_at_exit_keeps_the_data(run, server, site, gass_env):
    server.put_status = 500
    p = run("/bin/sh", "-c", f"echo precious > {server.url('lost.txt')}")
    assert p.returncode == 1
    lines = [line for line in p.stderr.decode().splitlines() if line]
    assert len(lines) == 1 and "upload of" in lines[0] and "kept in" in lines[0], p.stderr
    kept = Path(lines[0].rsplit("kept in ", 1)[1])
    assert kept.read_bytes() == b"precious\n"
    assert Path(f"{kept}.url").read_text() == server.url("lost.txt") + "\n"
    assert cache_state(gass_env)["unsent"] == sorted([kept.name, kept.name + ".url"])
    assert_nothing_pending(gass_env)
    assert not (site / "lost.txt").exists()


def test_put_without_answer_at_exit_is_bounded(run, gass_env):
    with HostileServer() as hostile:
        hostile.script["/up.txt"] = silence
        start = time.monotonic()
        p = run("/bin/sh", "-c", f"echo data > {hostile.url('up.txt')}",
                BYPASS_GASS_READ_TIMEOUT="1.5")
        took = time.monotonic() - start
        lines = p.stderr.decode().splitlines()
        assert p.returncode == 1 and len(lines) == 1 and "kept in" in lines[0], p.stderr
        assert "no data for" in lines[0] or "Timeout" in lines[0], lines
        assert took < 3, took
        assert [r.body for r in hostile.requests] == [b"data\n"]


def test_cache_command_lists_unsent_and_drops_dead_records(run, server, gass_env):
    server.put_status = 403
    p = run("/bin/sh", "-c", f"echo kept > {server.url('k.txt')}")
    assert p.returncode == 1 and b"kept in" in p.stderr
    root = Path(gass_env["BYPASS_GASS_CACHE"])
    dead = root / "writes" / "801.12345"
    dead.write_text(f"url {server.url('x')}\nstaging {root}/tmp/stage.1.gone\n")
    cli = [sys.executable, "-m", "bypass.cli", "gass", "cache"]
    listing = subprocess.run(cli + ["list"], capture_output=True, text=True, env=gass_env,
                             check=True).stdout
    assert f"-> {server.url('k.txt')}" in listing and "unsent" in listing
    subprocess.run(cli + ["clear"], capture_output=True, env=gass_env, check=True)
    assert not dead.exists()
    assert len(cache_state(gass_env)["unsent"]) == 2  # the data and its .url: never cleared


@pytest.mark.parametrize("call", ["_exit", "_Exit"])
def test_c_program_leaving_through(run, server, site, gass_env, tmp_path, call):
    source = tmp_path / "leave.c"
    source.write_text("#include <fcntl.h>\n#include <stdlib.h>\n#include <unistd.h>\n"
                      "int main(int argc, char **argv)\n{\n"
                      "    int fd = open(argv[1], O_WRONLY | O_CREAT | O_TRUNC, 0644);\n"
                      f"    if (fd < 0 || write(fd, \"left by {call}\\n\", {len(call) + 9}) < 0)\n"
                      "        return 2;\n"
                      f"    {call}(0);\n}}\n")
    exe = tmp_path / "leave"
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(source)], check=True)
    p = run(str(exe), server.url("c.txt"))
    assert p.returncode == 0, p.stderr
    assert (site / "c.txt").read_bytes() == f"left by {call}\n".encode()
    assert server.count("PUT", "/c.txt") == 1
    assert_nothing_pending(gass_env)
