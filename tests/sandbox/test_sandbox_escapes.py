"""Escape attempts: each tries to read a DENY file and to write a read-only one.

The policy is sealed for the whole run: a child cannot loosen it through its environment or by
rewriting the mount list file.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from test_agent import PY, SPEC, private_tmp, run, sandbox_env, work  # noqa: F401  (work is a fixture)

SEALED = "the run's sealed policy is kept"


def attempts(w) -> str:
    """Shell commands that print the secret or change the read-only file if they get through."""
    return f"cat {w}/deny/secret; echo changed > {w}/ro/f"


def assert_held(w, p):
    assert "needle" not in p.stdout, p.stdout
    assert (w / "ro/f").read_text() == "original\n"
    assert "Permission denied" in p.stderr, p.stderr


@pytest.mark.parametrize("prefix", [
    "BYPASS_MOUNTS=/dev/null",
    "BYPASS_MOUNTS=",
    "BYPASS_SANDBOX_POLICY=0",
    "BYPASS_SANDBOX_POLICY=",
    "env -u BYPASS_SANDBOX_POLICY BYPASS_MOUNTS=/dev/null",
    "env -i PATH=/usr/bin:/bin BYPASS_MOUNTS=/dev/null",
    "BYPASS_SANDBOX_ALLOW_STATIC=1 BYPASS_SANDBOX_CACHE=0 BYPASS_MOUNTS=/dev/null",
])
def test_a_changed_environment_does_not_loosen_the_policy(agent, work, prefix):
    p = run(agent, work, f"{prefix} sh -c '{attempts(work)}'")
    assert_held(work, p)
    if "=/dev/null" in prefix or "POLICY=0" in prefix:
        assert SEALED in p.stderr


def test_a_changed_environment_through_system_and_popen(agent, work):
    code = textwrap.dedent(f"""
        import os
        os.environ["BYPASS_MOUNTS"] = "/dev/null"
        del os.environ["BYPASS_SANDBOX_POLICY"]
        os.system("{attempts(work)}")
        print(os.popen("cat {work}/deny/secret").read())
    """)
    p = run(agent, work, [PY, "-c", code])
    assert_held(work, p)
    assert p.stderr.count(SEALED) == 1, p.stderr


def test_the_private_directory_cannot_be_pointed_elsewhere(agent, work):
    (work / "deny/tmp").mkdir()
    (work / "deny/tmp/x").write_text("needle in deny/tmp\n")
    p = run(agent, work, f"BYPASS_SANDBOX_PRIVATE={work}/deny cat /tmp/x; "
                         f"BYPASS_SANDBOX_PRIVATE={work}/ro sh -c 'echo changed > /tmp/f'; "
                         f"cat /tmp/f")
    assert "needle" not in p.stdout
    assert p.stdout == "changed\n"
    assert not (work / "ro/tmp").exists()
    assert SEALED in p.stderr


def test_rewriting_the_mount_list_file_changes_nothing(agent, work):
    """The list lives in a writable place; the run keeps what it read at the start."""
    (work / "out/mounts.txt").write_text((work / "mounts.txt").read_text())
    p = run(agent, work, f"echo '/ rwx' > {work}/out/mounts.txt; sh -c '{attempts(work)}'",
            BYPASS_MOUNTS=str(work / "out/mounts.txt"))
    assert (work / "out/mounts.txt").read_text() == "/ rwx\n"
    assert_held(work, p)


def test_a_child_that_lost_the_policy_refuses_to_run(agent, work):
    """A child told it belongs to a run whose policy it cannot find does not start unsandboxed
    (here the descriptor is closed by a raw system call, which the agent cannot guard)."""
    script = work / "out/lose.py"
    script.write_text(textwrap.dedent(f"""
        import ctypes, os, subprocess
        fd = int(os.environ["BYPASS_SANDBOX_POLICY"])
        libc = ctypes.CDLL(None, use_errno=True)
        def lose():
            libc.syscall(3, fd)             # SYS_close on x86_64
        p = subprocess.run(["/bin/cat", "{work}/deny/secret"], preexec_fn=lose)
        print("status", p.returncode)
    """))
    p = run(agent, work, [PY, str(script)])
    assert "needle" not in p.stdout, p.stdout
    assert "status 2" in p.stdout
    assert "is not open in this process; refusing to run without it" in p.stderr


# ---------------------------------------------------------------- held by the kernel (Landlock)

LOADER = "/lib64/ld-linux-x86-64.so.2"


@pytest.fixture(scope="session")
def escape():
    """The escape program, dynamic and static, and a library to dlopen (outside /tmp, which
    the mount lists make private)."""
    d = Path(tempfile.mkdtemp(prefix="bypass-escape-", dir="/var/tmp"))
    src = str(Path(__file__).with_name("escape.c"))
    subprocess.run(["gcc", "-O1", "-o", str(d / "dyn"), src], check=True)
    subprocess.run(["gcc", "-O1", "-static", "-o", str(d / "static"), src], check=True)
    (d / "lib.c").write_text("int bypass_escape_lib(void) { return 42; }\n")
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(d / "lib.so"), str(d / "lib.c")], check=True)
    yield d
    shutil.rmtree(d)


def held(w, p, what="read"):
    assert "needle" not in p.stdout and "escaped" not in (w / "ro/f").read_text(), p.stdout
    assert (w / "ro/f").read_text() == "original\n"
    if what == "read":
        assert p.returncode == 0, p.stderr
        assert "read Permission denied" in p.stdout and "write Permission denied" in p.stdout


def raw_args(w):
    return [str(w / "deny/secret"), str(w / "ro/f")]


def test_landlock_is_here():
    """This machine's kernel has Landlock (the tests below rely on it)."""
    from bypass.agents.sandbox.mounts import landlock_abi

    assert landlock_abi() >= 4


def test_raw_system_calls_are_held(agent, work, escape):
    p = run(agent, work, [str(escape / "dyn"), "raw", *raw_args(work)])
    held(work, p)


def test_io_uring_is_held(agent, work, escape):
    p = run(agent, work, [str(escape / "dyn"), "uring", *raw_args(work)])
    held(work, p)


def test_open_by_handle_at_is_held(agent, work, escape):
    """Handles taken outside the run: the ruleset checks every open, by handle too."""
    handles = [subprocess.run([str(escape / "dyn"), "name", path], capture_output=True, text=True,
                              check=True).stdout.strip() for path in raw_args(work)]
    p = run(agent, work, [str(escape / "dyn"), "handle", str(work), *handles])
    assert "needle" not in p.stdout and (work / "ro/f").read_text() == "original\n", p.stdout
    held(work, p)
    p = subprocess.run([str(escape / "dyn"), "handle", str(work), *handles], capture_output=True,
                       text=True)
    assert "read ok needle in secret" in p.stdout     # the control: outside the run it opens
    (work / "ro/f").write_text("original\n")


def test_without_kernel_enforcement_raw_system_calls_get_through(agent, work, escape):
    """The control: the opt-out is what lets them through, so the tests above can fail."""
    p = run(agent, work, [str(escape / "dyn"), "raw", *raw_args(work)],
            BYPASS_SANDBOX_KERNEL_ENFORCEMENT="0")
    assert "read ok needle in secret" in p.stdout
    assert "write ok" in p.stdout
    (work / "ro/f").write_text("original\n")
    p = run(agent, work, [str(escape / "dyn"), "uring", *raw_args(work)],
            BYPASS_SANDBOX_KERNEL_ENFORCEMENT="0")
    assert "read ok needle in secret" in p.stdout and "write ok" in p.stdout
    (work / "ro/f").write_text("original\n")


def test_a_static_program_runs_and_is_held(agent, work, escape):
    p = run(agent, work, f"{escape}/static raw {' '.join(raw_args(work))}")
    held(work, p)
    assert "statically linked: the Landlock ruleset holds it" in p.stderr


def test_the_loader_trick_is_held(agent, work, escape):
    p = run(agent, work, [LOADER, str(escape / "dyn"), "raw", *raw_args(work)])
    held(work, p)
    p = run(agent, work, f"{LOADER} /bin/cat {work}/deny/secret; "
                         f"{LOADER} /bin/cp /etc/hostname {work}/ro/f")
    held(work, p, what="")
    assert p.stderr.count("Permission denied") == 2, p.stderr


def test_dlopen_of_a_denied_library_is_held(agent, work, escape):
    shutil.copy(escape / "lib.so", work / "deny/lib.so")
    shutil.copy(escape / "lib.so", work / "ro/lib.so")
    p = run(agent, work, [str(escape / "dyn"), "dlopen", str(work / "deny/lib.so")])
    assert p.stdout.startswith("dlopen ") and "Permission denied" in p.stdout, p.stdout
    p = run(agent, work, [str(escape / "dyn"), "dlopen", str(work / "ro/lib.so")])
    assert p.stdout == "dlopen ok\n"                 # the control: readable places still load


@pytest.mark.parametrize("prefix", [
    "BYPASS_MOUNTS=/dev/null BYPASS_SANDBOX_POLICY=",
    "BYPASS_SANDBOX_KERNEL_ENFORCEMENT=0 BYPASS_MOUNTS=/dev/null",
    "env -u LD_PRELOAD",
])
def test_a_child_with_changed_settings_is_held(agent, work, escape, prefix):
    p = run(agent, work, f"{prefix} {escape}/dyn raw {' '.join(raw_args(work))}")
    held(work, p)


def test_bypass_run_starts_a_static_first_program_held(agent, work, escape):
    env = {k: v for k, v in os.environ.items() if not k.startswith("BYPASS_")}
    env["BYPASS_SANDBOX_PRIVATE_BASE"] = str(work / "priv")
    p = subprocess.run([PY, "-m", "bypass.cli", "run", str(SPEC), "--agent", str(agent), "-m",
                        str(work / "mounts.txt"), "--", str(escape / "static"), "raw",
                        *raw_args(work)], env=env, capture_output=True, text=True, timeout=60)
    held(work, p)


# ---------------------------------------------------------------- through the preload layer

def test_posix_spawn_file_actions_go_through_the_policy(agent, work):
    code = textwrap.dedent(f"""
        import os
        def spawn(path, flags):
            try:
                pid = os.posix_spawn("/bin/cat", ["cat"], os.environ,
                                     file_actions=[(os.POSIX_SPAWN_OPEN, 0, path, flags, 0o644)])
                os.waitpid(pid, 0)
                return "spawned"
            except OSError as e:
                return e.strerror
        print(spawn("{work}/deny/secret", os.O_RDONLY))
        print(spawn("{work}/ro/f", os.O_WRONLY | os.O_TRUNC))
        pid = os.posix_spawn("/bin/sh", ["sh", "-c", "echo in-private"], os.environ,
                             file_actions=[(os.POSIX_SPAWN_OPEN, 1, "/tmp/spawned",
                                            os.O_WRONLY | os.O_CREAT, 0o644)])
        os.waitpid(pid, 0)
        print(open("/tmp/spawned").read().strip())
    """)
    p = run(agent, work, [PY, "-c", code])
    assert p.stdout.split("\n")[:3] == ["Permission denied", "Permission denied", "in-private"], \
        p.stdout + p.stderr
    assert (work / "ro/f").read_text() == "original\n"
    assert not os.path.exists("/tmp/spawned")


def test_descriptor_metadata_changes_in_read_only_places_are_refused(agent, work):
    """Landlock has no right for chmod, chown, utimes or xattrs: the preload layer holds them."""
    code = textwrap.dedent(f"""
        import os
        fd = os.open("{work}/ro/f", os.O_RDONLY)
        out = []
        for name, call in [("fchmod", lambda: os.chmod(fd, 0o600)),
                           ("fchown", lambda: os.chown(fd, 0, 0)),
                           ("futimens", lambda: os.utime(fd, (1, 1))),
                           ("fsetxattr", lambda: os.setxattr(fd, "user.x", b"1")),
                           ("fremovexattr", lambda: os.removexattr(fd, "user.x"))]:
            try:
                call()
                out.append(name + " ok")
            except OSError as e:
                out.append(name + " " + e.strerror)
        w = os.open("{work}/out/new", os.O_WRONLY | os.O_CREAT, 0o644)
        os.chmod(w, 0o600)
        os.utime(w, (1, 1))
        r, _ = os.pipe()
        os.chmod(r, 0o600)                # a pipe is no place: as natively
        print("; ".join(out))
    """)
    before = os.stat(work / "ro/f")
    p = run(agent, work, [PY, "-c", code])
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "; ".join(
        f"{n} Permission denied" for n in ("fchmod", "fchown", "futimens", "fsetxattr", "fremovexattr"))
    after = os.stat(work / "ro/f")
    assert (after.st_mode, after.st_mtime_ns) == (before.st_mode, before.st_mtime_ns)
    assert os.stat(work / "out/new").st_mode & 0o777 == 0o600


def test_a_program_run_through_the_loader_needs_x(agent, work):
    """The loader maps the program itself: neither exec nor Landlock's EXECUTE sees it."""
    (work / "nox").mkdir()
    shutil.copy("/bin/cat", work / "nox/cat")
    (work / "mounts.txt").write_text((work / "mounts.txt").read_text() + f"{work}/nox r\n")
    p = run(agent, work, f"{LOADER} {work}/nox/cat /etc/hostname; echo rc=$?; "
                         f"{LOADER} --argv0 x -- {work}/nox/cat /etc/hostname; echo rc=$?; "
                         f"{work}/nox/cat /etc/hostname; echo rc=$?; "
                         f"{LOADER} /bin/cat {work}/out/../ro/f")
    assert p.stdout.split("\n") == ["rc=126", "rc=126", "rc=126", "original", ""], p.stdout + p.stderr
    assert f"refusing to run {work}/nox/cat through the loader" in p.stderr


def test_a_relative_interpreter_is_checked(agent, work):
    """#!../deny/sh is found from the cwd, as the kernel finds it."""
    shutil.copy("/bin/sh", work / "deny/sh")
    (work / "out/script").write_text("#!../deny/sh\necho script-ran\n")
    (work / "out/script").chmod(0o755)
    p = run(agent, work, "./script; echo rc=$?", cwd=work / "out")
    assert "script-ran" not in p.stdout and "rc=126" in p.stdout, p.stdout + p.stderr
    assert "its interpreter ../deny/sh is not allowed to run here" in p.stderr


def test_unix_sockets_go_through_the_policy(agent, work):
    """bind in a read-only place fails; a socket in the private /tmp works, from bind to
    connect; a socket in a DENY place cannot be reached."""
    code = textwrap.dedent(f"""
        import os, socket
        def attempt(what, path):
            s = socket.socket(socket.AF_UNIX)
            try:
                getattr(s, what)(path)
                return "ok"
            except OSError as e:
                return e.strerror
        print(attempt("bind", "{work}/ro/sock"))
        srv = socket.socket(socket.AF_UNIX)
        srv.bind("/tmp/sock")
        srv.listen()
        print(attempt("connect", "/tmp/sock"))
        print(attempt("connect", "{work}/deny/sock"))
    """)
    p = run(agent, work, [PY, "-c", code])
    assert p.stdout.split("\n")[:3] == ["Permission denied", "ok", "Permission denied"], \
        p.stdout + p.stderr
    assert not (work / "ro/sock").exists() and not os.path.exists("/tmp/sock")
    assert (private_tmp(work) / "sock").exists()


def test_another_runs_private_directory_is_out_of_reach(agent, work, escape):
    """Two concurrent runs: the second cannot read the first's private /tmp at its real path,
    not even with raw system calls."""
    first = subprocess.Popen(["bash", "-c", "echo needle > /tmp/mine; read x"],
                             env=sandbox_env(agent, work), stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(100):
            found = list((work / "priv").glob("bypass-private-*/tmp/mine"))
            if found:
                break
            time.sleep(0.05)
        assert found, "the first run did not start"
        p = run(agent, work, [str(escape / "dyn"), "raw", str(found[0]), str(found[0])])
        assert "needle" not in p.stdout and "read Permission denied" in p.stdout, p.stdout
    finally:
        first.communicate("\n", timeout=30)


@pytest.mark.parametrize("how", ["chdir", "fchdir", "dup", "fchdir-parent"])
@pytest.mark.parametrize("kernel", ["1", "0"])
def test_spawn_file_actions_after_a_chdir_are_checked_where_the_child_is(agent, work, escape,
                                                                          how, kernel):
    """A list that moves its child (addchdir_np, addfchdir_np of a descriptor it opened,
    dup'ed or inherited) and then opens a relative name: the name is checked in the directory
    the child will be in, not in the parent's writable cwd.  Without Landlock too."""
    p = run(agent, work, [str(escape / "dyn"), "spawn", how, str(work / "ro"), "f"],
            cwd=work / "out", BYPASS_SANDBOX_KERNEL_ENFORCEMENT=kernel)
    assert p.stdout == "spawn-write Permission denied\n", p.stdout + p.stderr
    assert (work / "ro/f").read_text() == "original\n"
    assert not (work / "out/f").exists()
    # the same list into a writable place works, and writes where the child stood
    p = run(agent, work, [str(escape / "dyn"), "spawn", how, str(work / "out"), "made"],
            cwd=work / "ro", BYPASS_SANDBOX_KERNEL_ENFORCEMENT=kernel)
    expected = "Permission denied" if how == "dup" else "ok"     # a dup'ed place is unknown
    assert p.stdout == f"spawn-write {expected}\n", p.stdout + p.stderr
    assert (work / "out/made").exists() == (how != "dup")


@pytest.mark.parametrize("kernel", ["1", "0"])
def test_spawnp_searches_relative_path_entries_where_the_child_is(agent, work, escape, kernel):
    """posix_spawnp after a chdir action: the C library searches PATH in the child, so a
    relative PATH entry, the empty one and a relative name with a slash are found from the
    directory the child moved to, natively and in the sandbox alike; a candidate there in a
    denied place is refused, and the parent's own directory is never searched instead."""
    for d, word in (("a", "parent"), ("b", "child")):
        for sub in ("bin", "deny"):
            (work / f"out/{d}/{sub}").mkdir(parents=True)
            tool = work / f"out/{d}/{sub}/tool"
            tool.write_text(f"#!/bin/sh\necho {word} {sub}/tool\n")
            tool.chmod(0o755)
        shutil.copy(work / f"out/{d}/bin/tool", work / f"out/{d}/tool")
    (work / "deny/tool").write_text("#!/bin/sh\necho denied tool\n")
    (work / "deny/tool").chmod(0o755)
    dyn = str(escape / "dyn")
    cases = [("bin", "tool", "child bin/tool\nspawnp ok\n"),
             ("", "tool", "child bin/tool\nspawnp ok\n"),          # the empty entry: the cwd
             ("/nowhere", "bin/tool", "child bin/tool\nspawnp ok\n")]  # a slash: no search
    for path, name, want in cases:
        env = {"PATH": path}
        native = subprocess.run([dyn, "spawnp", str(work / "out/b"), name], cwd=work / "out/a",
                                env={**os.environ, **env}, capture_output=True, text=True)
        assert native.stdout == want, (path, name, native.stdout, native.stderr)
        p = run(agent, work, [dyn, "spawnp", str(work / "out/b"), name], cwd=work / "out/a",
                BYPASS_SANDBOX_KERNEL_ENFORCEMENT=kernel, **env)
        assert p.stdout == want, (path, name, p.stdout, p.stderr)
    # from the work area the child finds deny/tool, in a denied place: refused, and the
    # parent's own out/a/deny/tool is not run in its stead
    p = run(agent, work, [dyn, "spawnp", str(work), "tool"], cwd=work / "out/a",
            BYPASS_SANDBOX_KERNEL_ENFORCEMENT=kernel, PATH="deny")
    assert p.stdout == "spawnp Permission denied\n", p.stdout + p.stderr


def test_spawn_lists_beyond_the_agents_room(agent, work, escape):
    """20 lists alive at once: descriptor actions are never refused; a chdir action with the
    room full is (ENOMEM), and so is an fchdir in a list the agent could not follow (EACCES),
    so no relative path is checked in the wrong place; freed lists give the room back."""
    p = run(agent, work, [str(escape / "dyn"), "spawn-many", str(work / "out")])
    assert p.stdout == ("dup2-failed 0; chdir-full Cannot allocate memory; "
                        "fchdir-full Permission denied; chdir-after ok\n"), p.stdout + p.stderr


@pytest.mark.parametrize("kernel", ["1", "0"])
def test_names_below_a_directory_opened_without_o_directory(agent, work, kernel):
    """The agent notes every descriptor it opens, a file's too; a directory opened without
    O_DIRECTORY must still have the names below it checked (not handed to the kernel as if
    below a file), and a name below a real file still gets the kernel's ENOTDIR."""
    code = textwrap.dedent(f"""
        import os
        fd = os.open("{work}", os.O_RDONLY)
        for name, flags in (("deny/secret", os.O_RDONLY), ("ro/f", os.O_WRONLY | os.O_TRUNC),
                            ("out/new", os.O_WRONLY | os.O_CREAT)):
            try:
                got = os.read(os.open(name, flags, 0o644, dir_fd=fd), 100) if flags == os.O_RDONLY \\
                    else os.write(os.open(name, flags, 0o644, dir_fd=fd), b"escaped")
                print(name, "ok", got)
            except OSError as e:
                print(name, e.strerror)
        f = os.open("{work}/ro/f", os.O_RDONLY)
        try:
            os.stat("x", dir_fd=f)
        except OSError as e:
            print("below a file", e.strerror)
    """)
    p = run(agent, work, [PY, "-c", code], BYPASS_SANDBOX_KERNEL_ENFORCEMENT=kernel)
    assert p.stdout.splitlines() == ["deny/secret Permission denied", "ro/f Permission denied",
                                     "out/new ok 7", "below a file Not a directory"], \
        p.stdout + p.stderr
    assert (work / "ro/f").read_text() == "original\n"


# ---------------------------------------------------------------- the default private directory

def default_env(agent, work, **extra) -> dict[str, str]:
    """The run's settings as a user gives them: the private directory where the agent puts it
    by default, and removed at the end."""
    env = sandbox_env(agent, work, **extra)
    del env["BYPASS_SANDBOX_PRIVATE_BASE"], env["BYPASS_SANDBOX_KEEP_PRIVATE"]
    return env


def gone_soon(path: Path) -> bool:
    """The run's helper removes the private directory once the first process has exited."""
    for _ in range(200):
        if not path.exists():
            return True
        time.sleep(0.025)
    return False


@pytest.fixture
def real_tmp_file():
    """A file in the real /tmp, which `/tmp PRIVATE` hides, and one to write there."""
    d = Path(tempfile.mkdtemp(prefix="bypass-realtmp-", dir="/tmp"))
    (d / "secret").write_text("needle in the real tmp\n")
    (d / "w").write_text("original\n")
    yield d
    shutil.rmtree(d)


@pytest.mark.parametrize("kernel", ["1", "0"])
def test_the_private_tmp_lives_in_the_real_tmp_out_of_reach(agent, work, escape, real_tmp_file,
                                                             kernel):
    """By default `/tmp PRIVATE` makes its directory in the real /tmp, like systemd's PrivateTmp;
    the real /tmp around it is out of reach of every process of the run, raw system calls
    included (the control: without kernel enforcement they get through), and the directory
    is removed when the run ends."""
    secret, other = real_tmp_file / "secret", real_tmp_file / "w"
    p = subprocess.run(["bash", "-c", f'echo "$BYPASS_SANDBOX_PRIVATE"; echo mine > /tmp/f; ls -A /tmp; '
                                      f'{escape}/dyn raw {secret} {other}'],
                       cwd=work, env=default_env(agent, work, BYPASS_SANDBOX_KERNEL_ENFORCEMENT=kernel),
                       capture_output=True, text=True, timeout=60)
    lines = p.stdout.split("\n")
    private = Path(lines[0])
    assert private.parent == Path("/tmp") and private.name.startswith("bypass-private-"), p.stdout
    assert lines[1] == "f", p.stdout                   # the program sees its own /tmp only
    if kernel == "1":
        assert lines[2:4] == ["read Permission denied", "write Permission denied"], p.stdout + p.stderr
        assert other.read_text() == "original\n"
        # a static program, which sees real paths, is refused the real /tmp too
        p = subprocess.run(["bash", "-c", f"{escape}/static raw {secret} {other}"], cwd=work,
                           env=default_env(agent, work), capture_output=True, text=True, timeout=60)
        assert p.stdout == "read Permission denied\nwrite Permission denied\n", p.stdout + p.stderr
        assert other.read_text() == "original\n"
    else:
        assert lines[2] == "read ok needle in the real tmp", p.stdout
    assert gone_soon(private), f"{private} was left behind"


def test_another_runs_default_private_directory_is_out_of_reach(agent, work, escape):
    first = subprocess.Popen(["bash", "-c", 'echo "needle of $BYPASS_SANDBOX_PRIVATE" > /tmp/mine; '
                                            'echo "$BYPASS_SANDBOX_PRIVATE"; read x'],
                             env=default_env(agent, work), stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=work)
    try:
        private = Path(first.stdout.readline().strip())
        mine = private / "tmp/mine"
        assert mine.read_text().startswith("needle"), mine
        p = subprocess.run([str(escape / "dyn"), "raw", str(mine), str(mine)], cwd=work,
                           env=default_env(agent, work), capture_output=True, text=True, timeout=60)
        assert p.stdout == "read Permission denied\nwrite Permission denied\n", p.stdout + p.stderr
    finally:
        first.communicate("\n", timeout=30)
    assert gone_soon(private)


def test_the_agent_loads_in_children_from_a_place_the_list_hides(agent, work, real_tmp_file):
    """Children's loaders open the agent by its path: in the hidden real /tmp, they still can."""
    hidden = real_tmp_file / "sandbox.so"
    shutil.copy(agent, hidden)
    env = default_env(agent, work, LD_PRELOAD=str(hidden))
    p = subprocess.run(["bash", "-c", f"sh -c 'ls -A /tmp; cat {real_tmp_file}/secret'; echo rc=$?"],
                       cwd=work, env=env, capture_output=True, text=True, timeout=60)
    assert "cannot be preloaded" not in p.stderr, p.stderr
    assert p.stdout == "rc=1\n", p.stdout        # the child sees the private /tmp: empty
    assert "No such file or directory" in p.stderr


def test_without_a_place_for_it_the_private_directory_goes_to_var_tmp(agent, work):
    """A PRIVATE line whose real place is missing: the private directory is made in /var/tmp."""
    (work / "mounts-scratch.txt").write_text(f"/ rx\n/bypass-no-such-scratch PRIVATE\n{work}/out rwx\n")
    p = subprocess.run(["bash", "-c", 'echo "$BYPASS_SANDBOX_PRIVATE"; echo x > /bypass-no-such-scratch/f; '
                                      'cat /bypass-no-such-scratch/f'],
                       cwd=work, env=default_env(agent, work, BYPASS_MOUNTS=str(work / "mounts-scratch.txt")),
                       capture_output=True, text=True, timeout=60)
    private, content = p.stdout.split("\n")[:2]
    assert Path(private).parent == Path("/var/tmp") and content == "x", p.stdout + p.stderr
    assert gone_soon(Path(private))
    assert not os.path.exists("/bypass-no-such-scratch")
