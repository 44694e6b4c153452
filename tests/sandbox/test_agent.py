"""The sandbox agent end to end: real programs under a mount list.

Each test runs real tools (bash, coreutils, python, gcc, make, sqlite3, find, grep) with the agent
preloaded and checks what they saw and, with the real file system, what they did.  The work area
lives under /var/tmp (the mount lists make /tmp private, so the test's own files cannot be there).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "agents" / "sandbox" / "sandbox.bypass"
PY = os.path.realpath(sys.executable)


@pytest.fixture
def work():
    """A work area outside /tmp:  ro/ (read-only), out/ (writable), deny/, gone/, store/, priv/."""
    w = Path(tempfile.mkdtemp(prefix="bypass-sbtest-", dir="/var/tmp")).resolve()
    for d in ["ro/sub", "out", "deny/inner", "gone", "store", "priv"]:
        (w / d).mkdir(parents=True)
    (w / "ro/f").write_text("original\n")
    (w / "ro/sub/g").write_text("needle in ro\n")
    (w / "deny/secret").write_text("needle in secret\n")
    (w / "deny/inner/deep").write_text("needle deep\n")
    (w / "gone/hidden").write_text("needle hidden\n")
    (w / "store/x").write_text("stored\n")
    (w / "mounts.txt").write_text(textwrap.dedent(f"""\
        /            rx              # everything read-only by default
        /tmp         PRIVATE
        {w}/deny     DENY
        {w}/gone     ENOENT
        {w}/out      rwx
        {w}/data     {w}/store
        """))
    yield w
    shutil.rmtree(w, ignore_errors=True)


def sandbox_env(agent: Path, work: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BYPASS_")}
    # kept, so that the tests can look at what the run left there
    env.update(LD_PRELOAD=str(agent), BYPASS_MOUNTS=str(work / "mounts.txt"),
               BYPASS_SANDBOX_PRIVATE_BASE=str(work / "priv"), BYPASS_SANDBOX_KEEP_PRIVATE="1",
               LC_ALL="C")
    env.update(extra)
    return env


def run(agent, work, cmd, *, cwd=None, check=False, **extra):
    if isinstance(cmd, str):
        cmd = ["bash", "-c", cmd]
    p = subprocess.run(cmd, cwd=cwd or work, env=sandbox_env(agent, work, **extra),
                       capture_output=True, text=True, timeout=120)
    if check and p.returncode != 0:
        raise AssertionError(f"{cmd} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def private_tmp(work: Path) -> Path:
    runs = list((work / "priv").glob("bypass-private-*"))
    assert len(runs) == 1, runs
    return runs[0] / "tmp"


def strace_paths(out: str) -> list[str]:
    return re.findall(r'"(/[^"]*)"', out)


# ---------------------------------------------------------------- private /tmp

def test_private_tmp_with_bash(agent, work):
    tag = f"bypass-sbtest-{uuid.uuid4().hex[:8]}"
    p = run(agent, work, f"mktemp; echo x > /tmp/{tag}; cat /tmp/{tag}; ls /tmp", check=True)
    lines = p.stdout.split("\n")
    made = lines[0]
    assert made.startswith("/tmp/tmp.")
    assert lines[1] == "x"
    assert tag in lines[2:]
    assert not os.path.exists(f"/tmp/{tag}") and not os.path.exists(made)
    priv = private_tmp(work)
    assert (priv / tag).read_text() == "x\n"
    assert (priv / os.path.basename(made)).exists()
    assert f"private directory kept: {priv.parent}" in p.stderr


def test_private_tmp_with_python_tempfile(agent, work):
    code = textwrap.dedent("""
        import os, tempfile
        f = tempfile.NamedTemporaryFile(delete=False, prefix="sbtest-")
        f.write(b"data"); f.close()
        d = tempfile.mkdtemp(prefix="sbtest-")
        with tempfile.TemporaryFile() as t:
            t.write(b"anon"); t.seek(0); assert t.read() == b"anon"
        with open(os.path.join(d, "inside"), "w") as g:
            g.write("in")
        print(f.name); print(d); print(tempfile.gettempdir())
    """)
    p = run(agent, work, [PY, "-c", code], check=True)
    name, d, tmpdir = p.stdout.split()
    assert tmpdir == "/tmp" and name.startswith("/tmp/sbtest-") and d.startswith("/tmp/sbtest-")
    assert not os.path.exists(name) and not os.path.exists(d)
    priv = private_tmp(work)
    assert (priv / os.path.basename(name)).read_bytes() == b"data"
    assert (priv / os.path.basename(d) / "inside").read_text() == "in"


def test_gcc_temporaries_land_in_the_private_tmp(agent, work):
    (work / "out/hello.c").write_text('#include <stdio.h>\nint main(void){puts("hi");return 0;}\n')
    p = run(agent, work, ["strace", "-f", "-qq", "-e", "trace=openat,unlink,unlinkat",
                          "gcc", "-o", str(work / "out/hello"), str(work / "out/hello.c")])
    assert p.returncode == 0, p.stderr[-2000:]
    paths = strace_paths(p.stderr)
    priv = private_tmp(work)
    temps = [x for x in paths if re.search(r"/cc[A-Za-z0-9]{6}\.", x)]
    assert temps, "gcc made no temporary files?"
    assert all(x.startswith(str(priv) + "/") for x in temps), temps
    assert subprocess.run([str(work / "out/hello")], capture_output=True, text=True).stdout == "hi\n"


def test_sqlite_temp_files_land_in_the_private_tmp(agent, work):
    sql = ("PRAGMA temp_store=FILE; CREATE TEMP TABLE t(x); "
           "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c WHERE i<20000) "
           "INSERT INTO t SELECT randomblob(100) FROM c; SELECT count(*) FROM t ORDER BY x;")
    p = run(agent, work, ["strace", "-f", "-qq", "-e", "trace=openat,unlink",
                          "sqlite3", str(work / "out/db.sqlite"), sql])
    assert p.returncode == 0, p.stderr[-2000:]
    assert "20000" in p.stdout
    priv = private_tmp(work)
    temps = [x for x in strace_paths(p.stderr) if "etilqs_" in x]
    assert temps and all(x.startswith(str(priv) + "/") for x in temps), temps


# ---------------------------------------------------------------- DENY and ENOENT

def test_denied_and_absent_places_with_coreutils(agent, work):
    p = run(agent, work, f"ls {work}/deny; cat {work}/deny/secret; ls {work}/gone; "
                         f"cat {work}/gone/hidden; ls {work}; echo done")
    assert "deny': Permission denied" in p.stderr
    assert "secret: Permission denied" in p.stderr
    assert "gone': No such file or directory" in p.stderr
    assert "hidden: No such file or directory" in p.stderr
    assert p.stdout.rstrip().endswith("done")
    assert "needle" not in p.stdout
    listing = p.stdout.split()
    assert "deny" in listing and "gone" not in listing      # ENOENT: absent from listings too


def test_file_system_status_of_hidden_places(agent, work):
    # df (statfs), stat -f (statfs), python's os.statvfs and os.pathconf: lookups like stat
    p = run(agent, work, f"df {work}/deny/inner; stat -f {work}/gone; df {work}/out && echo df-ok; "
                         f"{PY} -c 'import os; print(os.statvfs(\"{work}/ro\").f_bsize > 0); "
                         f"os.pathconf(\"{work}/deny/inner\", \"PC_NAME_MAX\")'")
    assert "deny/inner: Permission denied" in p.stderr, p.stderr
    assert "gone': No such file or directory" in p.stderr, p.stderr
    assert "df-ok" in p.stdout and "True" in p.stdout
    assert "PermissionError" in p.stderr


def test_find_grep_and_os_walk_carry_on(agent, work):
    strace = ["strace", "-f", "-qq", "-e", "trace=openat,newfstatat,statx,getdents64"]
    p = run(agent, work, strace + ["find", str(work)])
    assert p.returncode == 1                       # find reports the denied directory
    found = set(p.stdout.split())
    assert f"{work}/ro/sub/g" in found and f"{work}/deny" in found
    assert f"{work}/deny/secret" not in found and f"{work}/gone/hidden" not in found
    assert f"{work}/gone" not in found
    assert re.search(r"find: .*deny.*Permission denied", p.stderr)
    touched = strace_paths(p.stderr)
    assert not any("/deny/" in x or "/gone/" in x for x in touched), "looked behind a DENY/ENOENT"

    p = run(agent, work, ["grep", "-r", "needle", str(work)])
    assert "needle in ro" in p.stdout and "secret" not in p.stdout and "hidden" not in p.stdout
    assert "Permission denied" in p.stderr

    code = f"import os\nfor d, ds, fs in os.walk({str(work)!r}):\n    print(d, sorted(fs))"
    p = run(agent, work, [PY, "-c", code], check=True)
    assert f"{work}/ro/sub ['g']" in p.stdout
    assert "secret" not in p.stdout and "deep" not in p.stdout and "hidden" not in p.stdout
    assert f"{work}/gone" not in p.stdout


def test_find_from_the_root_survives(agent, work):
    p = run(agent, work, f"find / -xdev -maxdepth 3 -name hostname 2>/dev/null; echo rc=$?")
    assert "/etc/hostname" in p.stdout


# ---------------------------------------------------------------- read-only places

def test_read_only_places(agent, work):
    f = work / "ro/f"
    before = (f.read_text(), f.stat().st_mtime_ns, sorted(os.listdir(work / "ro")))
    cmds = [f"touch {f}", f"rm {f}", f"echo more >> {f}", f"echo new > {f}", f"mv {f} {work}/out/",
            f"cp {work}/out/../ro/sub/g {work}/ro/copy", f"mkdir {work}/ro/d", f"chmod 777 {f}",
            f"ln -s x {work}/ro/l", f"truncate -s 0 {f}", f"{PY} -c 'open(\"{f}\", \"a\")'"]
    for c in cmds:
        p = run(agent, work, c)
        assert p.returncode != 0, c
        assert "Permission denied" in p.stderr or "PermissionError" in p.stderr, (c, p.stderr)
    assert (f.read_text(), f.stat().st_mtime_ns, sorted(os.listdir(work / "ro"))) == before
    p = run(agent, work, f"echo ok > {work}/out/w && cat {work}/out/w && cp {f} {work}/out/",
            check=True)
    assert p.stdout == "ok\n" and (work / "out/f").read_text() == "original\n"


def test_writing_through_links_follows_the_target(agent, work):
    os.symlink(work / "out/target", work / "ro/to-out")       # read-only place -> writable one
    p = run(agent, work, f"echo via-link > {work}/ro/to-out && cat {work}/out/target; "
                         "echo to-stdout > /dev/stdout; echo to-fd >> /dev/fd/1; echo to-null > /dev/null")
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["via-link", "to-stdout", "to-fd"]


def test_erofs_option(agent, work):
    p = run(agent, work, f"touch {work}/ro/f", BYPASS_SANDBOX_EROFS="1")
    assert "Read-only file system" in p.stderr


# ---------------------------------------------------------------- make: only the outputs it specified

def test_make_writes_only_its_output_directory(agent, work):
    proj = work / "ro/proj"
    proj.mkdir()
    (proj / "main.c").write_text('#include "util.h"\n#include <stdio.h>\n'
                                 'int main(void){printf("%d\\n", twice(21));return 0;}\n')
    (proj / "util.c").write_text('#include "util.h"\nint twice(int x){return 2*x;}\n')
    (proj / "util.h").write_text("int twice(int x);\n")
    (proj / "Makefile").write_text(textwrap.dedent("""\
        O ?= out
        $(O)/app: $(O)/main.o $(O)/util.o
        \t$(CC) -o $@ $^
        $(O)/%.o: %.c util.h
        \t$(CC) -O2 -c -o $@ $<
        stray:
        \techo oops > stray.txt
        """))
    p = run(agent, work, ["make", "-j2", f"O={work}/out"], cwd=proj)
    assert p.returncode == 0, p.stdout + p.stderr
    out = subprocess.run([str(work / "out/app")], capture_output=True, text=True)
    assert out.stdout == "42\n"
    p = run(agent, work, ["make", "stray"], cwd=proj)
    assert p.returncode != 0 and "Permission denied" in p.stderr
    assert not (proj / "stray.txt").exists()
    assert sorted(os.listdir(proj)) == ["Makefile", "main.c", "util.c", "util.h"]


# ---------------------------------------------------------------- escapes

def test_escapes_are_refused(agent, work):
    secret = work / "deny/secret"
    os.symlink(secret, work / "ro/link-to-secret")               # planted in an allowed place
    cases = {
        "dotdot": f"cat {work}/out/../deny/secret",
        "relative dotdot": "cat ../deny/secret",
        "symlink": f"cat {work}/ro/link-to-secret",
        "new symlink": f"ln -s {secret} {work}/out/l && cat {work}/out/l",
        "relative symlink": f"ln -s ../deny {work}/out/d && cat {work}/out/d/secret",
        "proc root": f"cat /proc/self/root{secret}",
        "proc cwd": "cd ../out && cat /proc/self/cwd/../deny/secret",
        "proc pid root": f"cat /proc/$$/root{secret}",
        "dev fd": f"exec 3<{work}/out; cat /dev/fd/3/../deny/secret",
        "hard link of read-only": f"ln {work}/ro/f {work}/out/h && echo pwned >> {work}/out/h",
        "rename into deny": f"echo x > {work}/out/m && mv {work}/out/m {work}/deny/",
        "cd into deny": f"cd {work}/deny && cat secret",
    }
    for name, cmd in cases.items():
        p = run(agent, work, cmd, cwd=work / "out")
        assert p.returncode != 0, name
        assert "needle" not in p.stdout, name
        assert "pwned" not in (work / "ro/f").read_text(), name
        assert re.search(r"Permission denied|Invalid cross-device link|cannot move", p.stderr), \
            (name, p.stderr)
    assert sorted(os.listdir(work / "deny")) == ["inner", "secret"]
    assert (work / "ro/f").read_text() == "original\n"


# ---------------------------------------------------------------- redirects and reverse translation

def test_redirect_and_reverse_translation(agent, work):
    code = ("import os; os.chdir('data'); print(os.getcwd()); print(os.path.realpath('x')); "
            "print(open('x').read().strip()); print(os.readlink('/proc/self/cwd'))")
    p = run(agent, work, [PY, "-c", code], check=True)
    assert p.stdout.split() == [f"{work}/data", f"{work}/data/x", "stored", f"{work}/data"]
    p = run(agent, work, f"cd {work}/data && pwd -P && /bin/pwd && cat x && ls", check=True)
    assert p.stdout.split() == [f"{work}/data"] * 2 + ["stored", "x"]
    # rename across entries: EXDEV, and mv copies instead
    (work / "store/y").write_text("moved\n")
    p = run(agent, work, f"mv {work}/data/y {work}/out/y && cat {work}/out/y")
    assert p.returncode == 0 and p.stdout == "moved\n"
    p = run(agent, work, [PY, "-c", f"import os; os.rename('{work}/out/y', '{work}/data/z')"])
    assert "Invalid cross-device link" in p.stderr


def test_a_remapped_directory_opened_by_its_dot(agent, work):
    """A descriptor of "." (find's way back, with fchdir) in a redirected place and in the
    private /tmp names the place as the program knows it, and what is made relative to it
    lands where the list sends it."""
    code = textwrap.dedent(f"""
        import os
        os.makedirs("/tmp/t/u")
        out = []
        for where, dot in [("{work}/data", "."), ("/tmp/t", "u/.")]:
            os.chdir(where)
            fd = os.open(dot, os.O_RDONLY)
            os.chdir("/")
            os.fchdir(fd)
            out.append(os.getcwd())
            with open("made", "w") as f:
                f.write(where)
            os.close(os.open("by-fd", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))
            os.close(fd)
        print(out)
    """)
    p = run(agent, work, [PY, "-c", code], check=True)
    assert p.stdout.strip() == str([f"{work}/data", "/tmp/t/u"])
    assert (work / "store/made").read_text() == f"{work}/data" and (work / "store/by-fd").exists()
    private = private_tmp(work)
    assert (private / "t/u/made").read_text() == "/tmp/t" and (private / "t/u/by-fd").exists()
    assert not Path("/tmp/t/u/made").exists()


def test_a_tree_walks_quick_answer_follows_its_descriptor_through_dup2(agent, work):
    """fstatat(fd, name) below a directory with no entry under it is answered from what the
    descriptor's slot learnt when it was opened; a dup2 of a directory that has entries below
    it (gone/, an ENOENT place) onto that descriptor must bring its own answer, not keep the
    old one (it did: the hidden name was seen)."""
    code = textwrap.dedent(f"""
        import errno, os
        def look(fd, name):
            try:
                os.stat(name, dir_fd=fd, follow_symlinks=False)
                return "seen"
            except OSError as e:
                return errno.errorcode[e.errno]
        leaf = os.open("{work}/out", os.O_RDONLY | os.O_DIRECTORY)
        top = os.open("{work}", os.O_RDONLY | os.O_DIRECTORY)
        seen = [look(top, "gone"), look(leaf, "nothing-here"), look(top, "store")]
        os.dup2(top, leaf)
        seen += [look(leaf, "gone"), look(leaf, "store")]
        print(seen)
    """)
    p = run(agent, work, [PY, "-c", code], check=True)
    assert p.stdout.strip() == str(["ENOENT", "ENOENT", "seen", "ENOENT", "seen"]), p.stdout + p.stderr


# ---------------------------------------------------------------- exec

@pytest.fixture(scope="module")
def static_prog(tmp_path_factory):
    d = Path(tempfile.mkdtemp(prefix="bypass-sbstatic-", dir="/var/tmp"))
    (d / "s.c").write_text('#include <stdio.h>\nint main(void){puts("static ran");return 0;}\n')
    r = subprocess.run(["gcc", "-static", "-o", str(d / "s"), str(d / "s.c")], capture_output=True)
    if r.returncode:
        shutil.rmtree(d)
        raise AssertionError(f"cannot build a static program: {r.stderr}")
    yield d / "s"
    shutil.rmtree(d, ignore_errors=True)


def test_static_programs_run_held_by_landlock_or_are_refused(agent, work, static_prog):
    p = run(agent, work, f"{static_prog}; echo rc=$?")
    assert p.stdout == "static ran\nrc=0\n"
    assert f"{static_prog} is statically linked: the Landlock ruleset holds it" in p.stderr
    off = dict(BYPASS_SANDBOX_KERNEL_ENFORCEMENT="0")
    p = run(agent, work, f"{static_prog}; echo rc=$?", **off)
    assert "static ran" not in p.stdout
    assert f"refusing to run {static_prog}: statically linked" in p.stderr
    p = run(agent, work, [PY, "-c", f"import subprocess; subprocess.run(['{static_prog}'])"], **off)
    assert p.returncode != 0 and "static ran" not in p.stdout
    p = run(agent, work, str(static_prog), BYPASS_SANDBOX_ALLOW_STATIC="1")
    assert p.stdout == "static ran\n"


def test_scripts_with_a_denied_interpreter_do_not_run(agent, work):
    shutil.copy("/bin/sh", work / "deny/sh")
    (work / "out/script").write_text(f"#!{work}/deny/sh\necho script-ran\n")
    (work / "out/script").chmod(0o755)
    p = run(agent, work, f"{work}/out/script; echo rc=$?")
    assert "script-ran" not in p.stdout and "rc=126" in p.stdout
    assert f"its interpreter {work}/deny/sh is not allowed to run here" in p.stderr


def test_bypass_run_with_a_static_first_program(agent, work, static_prog):
    from bypass.agents.sandbox.mounts import is_static_executable
    assert is_static_executable(static_prog)
    assert not is_static_executable("/bin/ls") and not is_static_executable(PY)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BYPASS_")}
    env["BYPASS_SANDBOX_PRIVATE_BASE"] = str(work / "priv")
    base = [PY, "-m", "bypass.cli", "run", str(SPEC), "--agent", str(agent), "-m", str(work / "mounts.txt")]
    p = subprocess.run(base + ["--no-kernel-enforcement", "--", str(static_prog)], env=env, cwd=ROOT,
                       capture_output=True, text=True)
    assert p.returncode == 2 and "statically linked" in p.stderr and "static ran" not in p.stdout
    p = subprocess.run(base + ["--", str(static_prog)], env=env, cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout == "static ran\n"
    assert "the Landlock ruleset holds it" in p.stderr
    p = subprocess.run(base + ["--set", "BYPASS_SANDBOX_ALLOW_STATIC=1", "--", str(static_prog)],
                       env=env, cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout == "static ran\n"


def test_programs_in_places_without_x_do_not_run(agent, work):
    shutil.copy("/bin/true", work / "out/mytrue")
    (work / "mounts.txt").write_text((work / "mounts.txt").read_text() + f"{work}/out/mytrue rw\n")
    p = run(agent, work, f"{work}/out/mytrue; echo rc=$?")
    assert "Permission denied" in p.stderr and "rc=126" in p.stdout


# ---------------------------------------------------------------- bad lists and the CLI

def test_bad_mount_list_stops_the_program(agent, work):
    (work / "bad.txt").write_text("/ rx\n/tmp PRIVATE\n/home DENNY\n")
    p = run(agent, work, f"echo should-not-run > {work}/out/ran", BYPASS_MOUNTS=str(work / "bad.txt"))
    assert p.returncode == 2
    assert f"{work}/bad.txt:3: error: unknown keyword 'DENNY'" in p.stderr
    assert not (work / "out/ran").exists()
    p = run(agent, work, "true", BYPASS_MOUNTS=str(work / "missing.txt"))
    assert p.returncode == 2 and "missing.txt:0: error: cannot read mount list" in p.stderr


def test_bypass_run_with_mount_list(agent, work):
    env = {k: v for k, v in os.environ.items() if not k.startswith("BYPASS_")}
    env["BYPASS_SANDBOX_PRIVATE_BASE"] = str(work / "priv")
    base = [PY, "-m", "bypass.cli", "run", str(SPEC), "--agent", str(agent)]
    p = subprocess.run(base + ["-m", str(work / "mounts.txt"), "--keep-private", "--", "bash", "-c",
                               f"echo hi > /tmp/x && cat /tmp/x && cat {work}/deny/secret"],
                       env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.stdout == "hi\n" and "Permission denied" in p.stderr
    assert "private directory kept" in p.stderr
    (work / "bad.txt").write_text("/ rx\nrelative DENY\n")
    p = subprocess.run(base + ["-m", str(work / "bad.txt"), "--", "touch", str(work / "out/t")],
                       env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and f"{work}/bad.txt:2: error: relative prefix 'relative'" in p.stderr
    assert not (work / "out/t").exists()


def test_the_private_dir_is_removed_at_the_end_by_default(agent, work):
    """However the run's first process ends: exit, _exit (dash), a signal."""
    for how in ("echo x > /tmp/y", "exec /bin/sh -c 'echo x > /tmp/y'",
                "echo x > /tmp/y; kill -KILL $$"):
        p = run(agent, work, how, BYPASS_SANDBOX_KEEP_PRIVATE="0")
        assert list((work / "priv").iterdir()) == [] and "kept" not in p.stderr, (how, p.stderr)
    # kept on request, and said so, even when the first program leaves through _exit (dash)
    p = subprocess.run(["/bin/sh", "-c", "echo x > /tmp/y"], cwd=work, capture_output=True,
                       text=True, env=sandbox_env(agent, work), timeout=60)
    kept = list((work / "priv").iterdir())
    assert len(kept) == 1 and (kept[0] / "tmp/y").read_text() == "x\n"
    assert p.stderr.count(f"private directory kept: {kept[0]}") == 1, p.stderr
    shutil.rmtree(kept[0])
    env = {k: v for k, v in os.environ.items() if not k.startswith("BYPASS_")}
    env["BYPASS_SANDBOX_PRIVATE_BASE"] = str(work / "priv")
    p = subprocess.run([PY, "-m", "bypass.cli", "run", str(SPEC), "--agent", str(agent), "-m",
                        str(work / "mounts.txt"), "--", "bash", "-c",
                        "echo x > /tmp/y && cat /tmp/y"],
                       env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.stdout == "x\n" and "kept" not in p.stderr
    assert list((work / "priv").iterdir()) == []


def test_children_with_an_empty_environment_stay_inside(agent, work):
    p = run(agent, work, f"env -i /bin/sh -c 'echo x > /tmp/envi; cat {work}/deny/secret'; "
                         "cat /tmp/envi; env -i /bin/sh -c 'exec env' | grep -c BYPASS_SANDBOX_PRIVATE=")
    assert "Permission denied" in p.stderr and "needle" not in p.stdout
    assert p.stdout.split() == ["x", "1"]            # same private /tmp in and out
    assert p.stderr.count("private directory kept") == 1


def test_inactive_without_a_list(agent, work):
    env = sandbox_env(agent, work)
    del env["BYPASS_MOUNTS"]
    p = subprocess.run(["bash", "-c", f"cat {work}/deny/secret"], env=env, capture_output=True,
                       text=True)
    assert p.stdout == "needle in secret\n"


# ---------------------------------------------------------------- library calls from C, threads

PROBE_C = r"""
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <pthread.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;
static const char *W;

static int walker(const char *p, const struct stat *st, int flag, struct FTW *f)
{ (void)p; (void)st; (void)flag; (void)f; return 0; }

static void *hammer(void *arg)
{
    char ok[PATH_MAX], no[PATH_MAX];
    snprintf(ok, sizeof ok, "%s/ro/f", W);
    snprintf(no, sizeof no, "%s/deny/secret", W);
    struct stat st;
    for (int i = 0; i < 20000; i++) {
        if (stat(ok, &st) != 0) { *(int *)arg = 1; break; }
        if (stat(no, &st) == 0 || errno != EACCES) { *(int *)arg = 2; break; }
    }
    return NULL;
}

int main(int argc, char **argv)
{
    (void)argc;
    W = argv[1];
    char buf[PATH_MAX];

    FILE *t = tmpfile();
    printf("tmpfile %s\n", t && fputs("x", t) >= 0 ? "ok" : strerror(errno));

    char tmpl[] = "/tmp/probeXXXXXX";
    int fd = mkstemp(tmpl);
    printf("mkstemp %s %s\n", fd >= 0 ? "ok" : strerror(errno), tmpl);
    char dtmpl[] = "/tmp/probedXXXXXX";
    printf("mkdtemp %s\n", mkdtemp(dtmpl) ? dtmpl : strerror(errno));

    snprintf(buf, sizeof buf, "%s/data/x", W);
    char *rp = realpath(buf, NULL);
    printf("realpath %s\n", rp ? rp : strerror(errno));
    snprintf(buf, sizeof buf, "%s/data", W);
    if (chdir(buf) == 0 && getcwd(buf, sizeof buf))
        printf("getcwd %s\n", buf);
    char *cdn = get_current_dir_name();
    printf("cdn %s\n", cdn ? cdn : "?");

    snprintf(buf, sizeof buf, "%s/deny", W);
    printf("nftw-deny %s\n", nftw(buf, walker, 4, FTW_PHYS) == 0 ? "ok" : strerror(errno));
    struct dirent **list;
    printf("scandir-deny %s\n", scandir(buf, &list, NULL, alphasort) >= 0 ? "ok" : strerror(errno));
    printf("opendir-deny %s\n", opendir(buf) ? "ok" : strerror(errno));

    /* a program in a denied place, by PATH search and by posix_spawnp */
    snprintf(buf, sizeof buf, "PATH=%s/deny:/usr/bin:/bin", W);
    putenv(buf);
    pid_t pid;
    char *args[] = {"secret-tool", NULL};
    int rc = posix_spawnp(&pid, "secret-tool", NULL, NULL, args, environ);
    printf("spawnp-deny %s\n", rc == 0 ? "ran" : strerror(rc));
    char *targs[] = {"true", NULL};
    rc = posix_spawnp(&pid, "true", NULL, NULL, targs, environ);
    int status = -1;
    if (rc == 0)
        waitpid(pid, &status, 0);
    printf("spawnp-true %s %d\n", rc == 0 ? "ran" : strerror(rc), status);

    int bad[4] = {0};
    pthread_t th[4];
    for (int i = 0; i < 4; i++)
        pthread_create(&th[i], NULL, hammer, &bad[i]);
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    printf("threads %d %d %d %d\n", bad[0], bad[1], bad[2], bad[3]);
    fflush(stdout);
    execlp("secret-tool", "secret-tool", (char *)NULL);
    printf("execlp-deny %s\n", strerror(errno));
    return 0;
}
"""


def test_library_calls_and_threads(agent, work):
    src = work / "out/probe.c"
    src.write_text(PROBE_C)
    subprocess.run(["gcc", "-O2", "-pthread", "-o", str(work / "out/probe"), str(src)], check=True)
    (work / "deny/secret-tool").write_text("#!/bin/sh\necho ran-secret\n")
    (work / "deny/secret-tool").chmod(0o755)
    p = run(agent, work, [str(work / "out/probe"), str(work)])
    out = dict(line.split(" ", 1) for line in p.stdout.splitlines())
    assert out["tmpfile"] == "ok"
    st, name = out["mkstemp"].split()
    assert st == "ok" and name.startswith("/tmp/probe") and not name.endswith("XXXXXX")
    assert out["mkdtemp"].startswith("/tmp/probed") and not out["mkdtemp"].endswith("XXXXXX")
    priv = private_tmp(work)
    assert (priv / os.path.basename(name)).exists() and not os.path.exists(name)
    assert (priv / os.path.basename(out["mkdtemp"])).is_dir()
    assert out["realpath"] == f"{work}/data/x"
    assert out["getcwd"] == f"{work}/data" and out["cdn"] == f"{work}/data"
    assert out["nftw-deny"] == out["scandir-deny"] == out["opendir-deny"] == "Permission denied"
    assert out["spawnp-deny"] == "Permission denied"
    assert out["spawnp-true"].startswith("ran 0")
    assert out["threads"] == "0 0 0 0"
    assert out["execlp-deny"] == "Permission denied"
    assert "ran-secret" not in p.stdout


# ---------------------------------------------------------------- Parrot's mount lists

def test_a_parrot_mount_list_is_read_as_parrot_reads_it(agent, work):
    """Parrot's manual style (upper-case modes, lower-case keywords) and a glob prefix, which
    Parrot matches with fnmatch: the DENY holds, for names made later too; where Parrot would
    let a later line win, the start says so, naming the lines."""
    (work / "out/secA").write_text("needle A\n")
    (work / "out/public").write_text("public\n")
    (work / "parrot.txt").write_text(f"/ RX\n/tmp private\n{work}/deny deny\n{work}/out RWX\n"
                                     f"{work}/out/sec* DENY\n{work}/out/pub R\n{work} rx\n")
    p = run(agent, work, f"cat out/secA out/public; echo later > out/secB; cat out/secB; "
                         f"{PY} -c \"import os; os.read(os.open('out/secA', 0), 9)\"",
            BYPASS_MOUNTS=str(work / "parrot.txt"))
    assert "needle" not in p.stdout and "later" not in p.stdout, p.stdout
    assert p.stdout == "public\n", p.stdout + p.stderr
    assert not (work / "out/secB").exists()
    assert p.stderr.count("Permission denied") >= 3, p.stderr
    assert (f"{work}/parrot.txt: where Parrot would let a later, shorter line win, the longer "
            f"prefix decides here: line 3 ({work}/deny) over line 7 ({work}), "
            f"line 4 ({work}/out) over line 7 ({work})") in p.stderr


def test_private_works_for_a_child_that_changes_its_uid(agent, work):
    """The child neither makes nor looks into the private directory at start: it runs."""
    p = run(agent, work, [PY, "-c", "import subprocess; "
                          "print(subprocess.run(['/bin/sh', '-c', 'id -u; echo x > /tmp/f'], "
                          "user=65534, group=65534, capture_output=True, text=True))"])
    assert "returncode=" in p.stdout and "stdout='65534\\n'" in p.stdout, p.stdout + p.stderr
    assert "cannot make private directory" not in p.stdout + p.stderr


def test_the_private_tmp_serves_a_child_that_changes_its_uid_as_tmp_would(agent, work):
    """The private /tmp has /tmp's own bits (1777): a child running as another user writes and
    reads its files there, and the sticky bit keeps it from removing the parent's, as in the
    real /tmp; the private root stays unlistable for that user."""
    os.chmod(work, 0o711)
    os.chmod(work / "priv", 0o711)
    mine = work / "sandbox.so"              # where that user can load it from
    shutil.copy(agent, mine)
    os.chmod(mine, 0o755)
    child = textwrap.dedent("""\
        import os
        def attempt(f):
            try:
                return f()
            except OSError as e:
                return e.errno
        print(attempt(lambda: open('/tmp/mine', 'w').write('x')))
        print(attempt(lambda: open('/tmp/mine').read()))
        print(attempt(lambda: os.unlink('/tmp/parents')))
        print(attempt(lambda: os.listdir(os.environ['BYPASS_SANDBOX_PRIVATE'])))
        print(attempt(lambda: os.mkdir('/tmp/sub')))
        """)
    # the system's python: the test's own may live where user 65534 cannot reach
    script = ("import subprocess; open('/tmp/parents', 'w').write('p'); "
              f"r = subprocess.run(['/usr/bin/python3', '-c', {child!r}], user=65534, group=65534, "
              "capture_output=True, text=True); print(r.stdout + r.stderr, end='')")
    p = run(mine, work, [PY, "-c", script])
    assert p.stdout.split() == ["1", "x", str(errno.EPERM), str(errno.EACCES), "None"], \
        p.stdout + p.stderr
    tmp = private_tmp(work)
    assert stat.S_IMODE(tmp.stat().st_mode) == stat.S_IMODE(os.stat("/tmp").st_mode) == 0o1777
    assert stat.S_IMODE(tmp.parent.stat().st_mode) == 0o711
    assert (tmp / "mine").stat().st_uid == 65534 and (tmp / "parents").exists()


def test_python_multiprocessing_under_a_read_only_root(agent, work):
    """Its semaphores live in /dev/shm, made inside the C library: Landlock sees them, the
    implicit /dev/shm line lets them be."""
    p = run(agent, work, [PY, "-c", "import multiprocessing as m; print(m.Pool(2).map(abs, [-1, -2]))"])
    assert p.returncode == 0 and p.stdout == "[1, 2]\n", p.stderr


# ---------------------------------------------------------------- the cwd, learned where first needed

REMOVED_CWD_C = r"""
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
int main(int argc, char **argv) {
    if (rmdir(argv[1]) != 0) { printf("rmdir %s\n", strerror(errno)); return 1; }
    int fd = open("f", O_WRONLY | O_CREAT, 0644);
    printf("open %s\n", fd < 0 ? strerror(errno) : "ok");
    char buf[4096];
    printf("getcwd %s\n", getcwd(buf, sizeof buf) ? buf : strerror(errno));
    return 0;
}
"""


def test_a_cwd_removed_before_the_first_relative_path(agent, work, tmp_path):
    """The agent asks the kernel for the cwd at the first relative path, not at start (a process
    that names none pays nothing for it).  A cwd removed before then gets the kernel's answers,
    never a path below some other directory: the first relative name is the first thing the
    program does after removing its own cwd by its absolute path."""
    (tmp_path / "p.c").write_text(REMOVED_CWD_C)
    subprocess.run(["gcc", "-o", str(tmp_path / "p"), str(tmp_path / "p.c")], check=True)
    outs = []
    for under_agent in (False, True):
        d = work / "out" / "doomed"
        d.mkdir()
        if under_agent:
            p = run(agent, work, [str(tmp_path / "p"), str(d)], cwd=d)
        else:
            p = subprocess.run([str(tmp_path / "p"), str(d)], cwd=d, capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        outs.append(p.stdout)
        assert not d.exists()
    assert outs[0] == "open No such file or directory\ngetcwd No such file or directory\n"
    assert outs[1] == outs[0]
    assert sorted(os.listdir(work / "out")) == []
