"""With the identity list `/ rwx` the program cannot tell the agent from the kernel.

Every case of kernel_probe.c (and the Python programs below) runs twice, natively and under the
real agent, each in a fresh copy of the same directory; the printed results (return value and
errno of every call) and the resulting trees must be the same.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
PY = os.path.realpath(sys.executable)


@pytest.fixture(scope="session")
def probe(tmp_path_factory) -> Path:
    exe = tmp_path_factory.mktemp("kprobe") / "kernel_probe"
    subprocess.run(["gcc", "-O1", "-Wall", "-Werror", "-o", str(exe), str(HERE / "kernel_probe.c")],
                   check=True)
    return exe


@pytest.fixture
def identity_list():
    d = Path(tempfile.mkdtemp(prefix="bypass-kprobe-", dir="/var/tmp")).resolve()
    (d / "mounts.txt").write_text("/ rwx\n")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def tree(root: Path) -> list[tuple[str, str, int]]:
    """(relative path, kind, mode) of everything below root; by descriptors, because the
    paths may be longer than PATH_MAX."""
    out = []
    for dirpath, dirnames, filenames, dfd in os.fwalk(root):
        rel = os.path.relpath(dirpath, root)
        for n in dirnames + filenames:
            st = os.stat(n, dir_fd=dfd, follow_symlinks=False)
            kind = "l" if stat.S_ISLNK(st.st_mode) else "d" if stat.S_ISDIR(st.st_mode) else "f"
            out.append((os.path.join(rel, n), kind, st.st_mode & 0o7777))
    return sorted(out)


def both(agent: Path, area: Path, cmd: list[str], **extra: str):
    """Run cmd natively and under the agent, each in its own fresh directory."""
    results = []
    for mode in ("native", "agent"):
        cwd = area / mode
        cwd.mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith("BYPASS_")}
        env["LC_ALL"] = "C"
        if mode == "agent":
            env.update(LD_PRELOAD=str(agent), BYPASS_MOUNTS=str(area / "mounts.txt"), **extra)
        p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
        results.append((p.returncode, p.stdout, tree(cwd)))
        assert p.returncode in (0, 1), p.stderr
    return results


@pytest.mark.parametrize("case", ["dots", "efault", "long", "nftw", "names", "order", "shapes",
                                  "unsearchable", "unsearchable-links"])
def test_probe_case_matches_the_kernel(agent, probe, identity_list, case):
    native, sandboxed = both(agent, identity_list, [str(probe), case])
    assert native[0] == 0, native[1]
    assert sandboxed == native


@pytest.mark.parametrize("case", ["unsearchable", "unsearchable-links"])
def test_below_an_unsearchable_directory_without_landlock(agent, probe, identity_list, case):
    """Without a Landlock ruleset the agent cannot hand a walk it could not make to the kernel:
    it looks at each place by its path from the cwd, as the kernel walks it, links included."""
    native, sandboxed = both(agent, identity_list, [str(probe), case],
                             BYPASS_SANDBOX_KERNEL_ENFORCEMENT="0")
    assert native[0] == 0, native[1]
    assert sandboxed == native


def test_links_below_an_unsearchable_directory_still_meet_the_list(agent, identity_list):
    """Looking at places by their path from the cwd (no Landlock) must not skip the list:
    links, direct or through "..", into a DENY place below the cwd are refused."""
    w = identity_list
    inside = w / "lock/in"
    (inside / "secret").mkdir(parents=True)
    (inside / "secret/file").write_text("needle\n")
    (inside / "d").mkdir()
    os.chmod(w / "lock", 0o700)
    for d in (inside, inside / "d", inside / "secret"):
        os.chmod(d, 0o777)
    os.chmod(inside / "secret/file", 0o644)
    os.symlink("secret", inside / "link")
    os.symlink("d/../secret", inside / "link2")
    (w / "mounts.txt").write_text(f"/ rwx\n{inside}/secret DENY\n")
    code = textwrap.dedent("""
        import os
        os.chdir("lock/in")
        os.setgid(65534)
        os.setuid(65534)
        for name in ("secret/file", "link/file", "link2/file", "d/../link/file"):
            try:
                print(name, open(name).read().strip())
            except OSError as e:
                print(name, e.strerror)
        open("d/made", "w").write("ok")
        print(open("d/made").read())
    """)
    env = dict(os.environ, LD_PRELOAD=str(agent), BYPASS_MOUNTS=str(w / "mounts.txt"),
               BYPASS_SANDBOX_KERNEL_ENFORCEMENT="0")
    p = subprocess.run([PY, "-c", code], cwd=w, env=env, capture_output=True, text=True, timeout=60)
    assert p.stdout.splitlines() == [f"{n} Permission denied" for n in
                                     ("secret/file", "link/file", "link2/file", "d/../link/file")] + ["ok"], \
        p.stdout + p.stderr


def test_subprocess_cwd_leaves_the_parents_cwd_alone(agent, identity_list):
    """A vfork child's chdir (Popen(cwd=D)) must not move the parent; its later relative
    writes stay where the parent is."""
    code = textwrap.dedent("""
        import os, subprocess
        os.mkdir("D")
        for _ in range(3):
            subprocess.run(["/bin/true"], cwd="D", check=True)
            subprocess.run(["/bin/sh", "-c", "pwd > where"], cwd="D", check=True)
        with open("rel", "w") as f:
            f.write(os.getcwd().rsplit("/", 1)[1])
        os.mkdir("sub")
        print(sorted(os.listdir(".")), open("D/where").read().rsplit("/", 1)[1].strip())
    """)
    native, sandboxed = both(agent, identity_list, [PY, "-c", code])
    assert native[0] == 0
    assert sandboxed == native


def test_a_hidden_name_and_a_missing_one_answer_alike(agent, identity_list):
    """In a read-only directory, a name an ENOENT line hides must not answer changes
    differently from a name that is not there (no existence oracle)."""
    w = identity_list
    (w / "ro").mkdir()
    (w / "ro/hidden").mkdir()
    (w / "mounts.txt").write_text(f"/ rwx\n{w}/ro rx\n{w}/ro/hidden ENOENT\n")
    code = textwrap.dedent("""
        import os, sys
        def errno_of(f, *a):
            try:
                f(*a)
                return 0
            except OSError as e:
                return e.errno
        for name in ("hidden", "missing"):
            p = os.path.join(sys.argv[1], name)
            print(name, [errno_of(f, p) for f in (os.mkdir, os.rmdir, os.unlink, os.stat)],
                  errno_of(lambda q: open(q, "w"), p))
    """)
    env = dict(os.environ, LD_PRELOAD=str(agent), BYPASS_MOUNTS=str(w / "mounts.txt"))
    p = subprocess.run([PY, "-c", code, str(w / "ro")], env=env, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    hidden, missing = (line.split(" ", 1)[1] for line in p.stdout.splitlines())
    assert hidden == missing, p.stdout
    assert (w / "ro/hidden").is_dir()


# Not "unsearchable-links": through a redirect the agent reads a link by its real, absolute path,
# which an unprivileged process below an unsearchable directory cannot (README, "Semantics").
@pytest.mark.parametrize("case", ["dots", "efault", "long", "nftw", "names", "order", "shapes",
                                  "unsearchable"])
def test_probe_case_through_a_redirect_matches_the_kernel(agent, probe, identity_list, case):
    """The same calls in a redirected directory (the agent passes real paths there) give what
    the kernel gives in the real place."""
    area = identity_list
    (area / "real").mkdir()
    (area / "mounts.txt").write_text(f"/ rwx\n{area}/virtual {area}/real\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BYPASS_")}
    env["LC_ALL"] = "C"
    (area / "native").mkdir()
    native = subprocess.run([str(probe), case], cwd=area / "native", env=env, capture_output=True,
                            text=True, timeout=60)
    env.update(LD_PRELOAD=str(agent), BYPASS_MOUNTS=str(area / "mounts.txt"))
    sandboxed = subprocess.run(["sh", "-c", f'cd {area}/virtual && exec "$0" "$1"', str(probe), case],
                               env=env, capture_output=True, text=True, timeout=60)
    assert (sandboxed.returncode, sandboxed.stdout) == (native.returncode, native.stdout), \
        sandboxed.stderr
    assert tree(area / "real") == tree(area / "native")


def test_getcwd_of_a_removed_directory_is_enoent(agent, identity_list):
    """Conform seed 100: the cwd removed by its absolute path (or by another process) makes
    getcwd fail ENOENT, as the kernel says; the agent's remembered cwd must not answer."""
    code = textwrap.dedent("""
        import os, subprocess
        os.makedirs("d/sub")
        top = os.getcwd()
        os.chdir("d/sub")
        out = [os.getcwd().rsplit("/", 2)[1:]]
        os.rmdir(top + "/d/sub")
        for _ in range(2):
            try:
                out.append(os.getcwd())
            except OSError as e:
                out.append(e.strerror)
        os.chdir(top)
        os.makedirs("e/sub")
        os.chdir("e/sub")
        subprocess.run(["/bin/rmdir", top + "/e/sub"], check=True)     # another process
        try:
            out.append(os.getcwd())
        except OSError as e:
            out.append(e.strerror)
        print(out)
    """)
    native, sandboxed = both(agent, identity_list, [PY, "-c", code])
    assert native[0] == 0 and "No such file or directory" in native[1], native
    assert sandboxed == native


def test_a_directory_opened_by_its_dot_is_that_directory(agent, identity_list):
    """find, tar and others open "." to come back with fchdir; the agent notes such a
    descriptor as the directory before the "/." (the kernel accepted it, so it is one).  Through
    a symlink, ".." and a removed directory, fchdir then getcwd, names relative to the
    descriptor, and a file's "/." must answer as the kernel does."""
    code = textwrap.dedent("""
        import os
        os.makedirs("d/sub/deeper")
        os.symlink("d/sub", "L")
        open("d/f", "w").close()
        top = os.getcwd()
        out = []
        for path in [".", "L/.", "./L/.", "L/../.", "d/sub/deeper/.", top + "/L/.", "/.", "d/f/.", "gone/."]:
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError as e:
                out.append((path, e.strerror))
                continue
            path = path.replace(top, "TOP")
            os.fchdir(fd)
            here = os.path.relpath(os.getcwd(), top)
            try:
                st = os.stat("deeper", dir_fd=fd, follow_symlinks=False).st_nlink
            except OSError as e:
                st = e.strerror
            out.append((path, here, st, sorted(os.listdir("."))[:3]))
            os.chdir(top)
            os.close(fd)
        os.makedirs("e/sub")
        fd = os.open("e/sub/.", os.O_RDONLY)
        os.rmdir("e/sub")
        os.fchdir(fd)
        try:
            out.append(os.getcwd())
        except OSError as e:
            out.append(e.strerror)
        print(out)
    """)
    native, sandboxed = both(agent, identity_list, [PY, "-c", code])
    assert native[0] == 0 and "'d/sub'" in native[1] and "Not a directory" in native[1], native
    assert sandboxed == native
