"""Real programs under the trace agent give the same output, files and exit status as native runs.

Each test runs the program twice on identical inputs, once natively and once under the agent,
either as a pure pass-through (no BYPASS_TRACE) or logging every call, and compares.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import textwrap
from pathlib import Path

import pytest

from agentrun import require, run

MODES = ["passthrough", "traced"]
FIXED_GIT_ENV = {
    "GIT_AUTHOR_NAME": "Ada", "GIT_AUTHOR_EMAIL": "ada@example.org", "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z",
    "GIT_COMMITTER_NAME": "Ada", "GIT_COMMITTER_EMAIL": "ada@example.org",
    "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z", "HOME": "/nonexistent", "GIT_CONFIG_NOSYSTEM": "1",
}


def make_tree(root: Path) -> Path:
    """A small tree with nested dirs, a symlink, an empty file, odd names and modes."""
    (root / "src" / "deep" / "er").mkdir(parents=True)
    (root / "docs").mkdir()
    (root / "src" / "main.c").write_text("int main(void) { return 0; }\n")
    (root / "src" / "deep" / "data.txt").write_text("alpha\nbeta\ngamma\n" * 50)
    (root / "src" / "deep" / "er" / "notes.txt").write_text("notes\n")
    (root / "docs" / "readme.txt").write_text("read me\n")
    (root / "docs" / "with space.txt").write_text("spaced\n")
    (root / "empty").write_bytes(b"")
    (root / "binary.bin").write_bytes(bytes(range(256)) * 64)
    os.symlink("docs/readme.txt", root / "link-to-readme")
    os.chmod(root / "docs" / "readme.txt", 0o640)
    stamp = 1_700_000_000
    for path in sorted(root.rglob("*"), reverse=True):
        os.utime(path, (stamp, stamp), follow_symlinks=False)
    os.utime(root, (stamp, stamp))
    return root


def tree_digest(root: Path) -> dict[str, str]:
    """Names, types, modes and contents of a tree (not times: a copy has its own)."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        st = path.lstat()
        if path.is_symlink():
            out[rel] = f"link {os.readlink(path)}"
        elif path.is_dir():
            out[rel] = f"dir {oct(st.st_mode & 0o7777)}"
        else:
            out[rel] = f"file {oct(st.st_mode & 0o7777)} {hashlib.sha256(path.read_bytes()).hexdigest()}"
    return out


@pytest.fixture(params=MODES)
def mode(request):
    return request.param


@pytest.fixture
def agent_env(mode, tmp_path):
    log = tmp_path / "trace.log"
    return ({"BYPASS_TRACE": str(log)} if mode == "traced" else {}), log


def twin_dirs(tmp_path: Path) -> tuple[Path, Path]:
    """Two identical working trees, at paths of the same length so outputs can be compared."""
    native, agent = tmp_path / "native", tmp_path / "agent_"
    for base in (native, agent):
        base.mkdir()
        make_tree(base / "tree")
    return native, agent


def compare(command, trace_agent, agent_env, tmp_path, *, shell=False, env=None, same_dir=False):
    env = dict(env or {})
    extra, log = agent_env
    native_dir, agent_dir = twin_dirs(tmp_path)
    if same_dir:
        agent_dir = native_dir
    native = run(command, cwd=native_dir, shell=shell, env=env)
    agent = run(command, cwd=agent_dir, shell=shell, env={**env, **extra}, agent=trace_agent)
    assert agent.returncode == native.returncode, agent.stderr.decode()
    assert agent.stdout.replace(b"agent_", b"native") == native.stdout
    assert agent.stderr.replace(b"agent_", b"native") == native.stderr
    if extra:
        assert log.exists() and log.stat().st_size > 0, "the traced run logged nothing"
    return native_dir, agent_dir, native, agent


def test_ls_l(trace_agent, agent_env, tmp_path):
    require("ls")
    compare(["ls", "-l", "--time-style=+%s", "tree", "tree/src", "/usr/bin"], trace_agent, agent_env, tmp_path)


def test_cp_r(trace_agent, agent_env, tmp_path):
    native_dir, agent_dir, *_ = compare(["cp", "-r", "tree", "copy"], trace_agent, agent_env, tmp_path)
    assert tree_digest(agent_dir / "copy") == tree_digest(native_dir / "copy") == tree_digest(native_dir / "tree")


def test_mv(trace_agent, agent_env, tmp_path):
    native_dir, agent_dir, *_ = compare("mv tree/docs moved && mv tree/empty tree/src/empty2", trace_agent,
                                        agent_env, tmp_path, shell=True)
    assert tree_digest(agent_dir) == tree_digest(native_dir)
    assert (agent_dir / "moved" / "readme.txt").read_text() == "read me\n"


def test_find(trace_agent, agent_env, tmp_path):
    compare(["find", "tree", "-name", "*.txt", "-printf", "%p %s %m\n"], trace_agent, agent_env, tmp_path)


def test_du(trace_agent, agent_env, tmp_path):
    compare(["du", "-a", "--apparent-size", "tree"], trace_agent, agent_env, tmp_path)


def test_stat(trace_agent, agent_env, tmp_path):
    compare(["stat", "-c", "%n %s %a %F %Y", "tree/binary.bin", "tree/link-to-readme", "tree/src"],
            trace_agent, agent_env, tmp_path)


def test_tar_pipe(trace_agent, agent_env, tmp_path):
    native_dir, agent_dir, *_ = compare("mkdir out && tar cf - -C tree . | tar xf - -C out", trace_agent,
                                        agent_env, tmp_path, shell=True)
    assert tree_digest(agent_dir / "out") == tree_digest(native_dir / "out") == tree_digest(native_dir / "tree")


BASH_SCRIPT = textwrap.dedent("""\
    set -e
    count=$(find tree -type f | wc -l)
    echo "files: $count"
    ( cd tree/src && ls ) | sort > listing.txt
    while read -r name; do echo "got $name"; done < listing.txt
    cat tree/src/deep/data.txt | grep -c beta
    { echo one; echo two; } > pair.txt; cat pair.txt | tr a-z A-Z
    test -r tree/docs/readme.txt && echo readable
    [ -d tree/src/deep ] && echo "is dir"
    sub=$( (echo nested; exit 3) || echo "status $?")
    echo "$sub"
    printf '%s\\n' tree/*.bin
    exit 7
    """)


def test_bash_script(trace_agent, agent_env, tmp_path):
    script = tmp_path / "script.sh"
    script.write_text(BASH_SCRIPT)
    _, _, native, _ = compare(["bash", str(script)], trace_agent, agent_env, tmp_path)
    assert native.returncode == 7 and b"files: 7" in native.stdout


PYTHON_PROGRAM = textwrap.dedent("""\
    import json, os, shutil, sqlite3, tempfile, pathlib, hashlib, csv, io, zipfile
    with tempfile.TemporaryDirectory() as scratch:
        shutil.copytree("tree", os.path.join(scratch, "copy"))
        names = sorted(str(p.relative_to(scratch)) for p in pathlib.Path(scratch).rglob("*"))
        print(json.dumps(names))
        db = sqlite3.connect(os.path.join(scratch, "t.db"))
        db.execute("create table t (k text, v integer)")
        db.executemany("insert into t values (?, ?)", [(str(i), i * i) for i in range(100)])
        db.commit()
        print(db.execute("select count(*), sum(v) from t").fetchone())
        db.close()
        with zipfile.ZipFile(os.path.join(scratch, "z.zip"), "w") as z:
            z.write("tree/binary.bin")
        print(zipfile.ZipFile(os.path.join(scratch, "z.zip")).namelist())
        with tempfile.NamedTemporaryFile("w", dir=scratch, delete=False) as f:
            f.write("x" * 1000)
        print(os.path.getsize(f.name))
    print(hashlib.sha256(open("tree/binary.bin", "rb").read()).hexdigest())
    """)


def test_python3_stdlib(trace_agent, agent_env, tmp_path):
    require("python3")
    compare(["python3", "-c", PYTHON_PROGRAM], trace_agent, agent_env, tmp_path)


def test_git(trace_agent, agent_env, tmp_path):
    require("git")
    script = "git init -q -b main repo && cp -r tree/* repo/ && cd repo && git add . && " \
             "git commit -q -m first && echo more >> docs/readme.txt && git commit -qam second && " \
             "git log --format='%H %s' && git status --short && git show --stat HEAD | tail -n 3"
    compare(script, trace_agent, agent_env, tmp_path, shell=True, env=FIXED_GIT_ENV)


MAKEFILE = textwrap.dedent("""\
    CC = gcc
    app: main.o util.o
    \t$(CC) -o $@ main.o util.o
    %.o: %.c util.h
    \t$(CC) -O1 -c $< -o $@
    clean:
    \trm -f app *.o
    """)


def test_make_builds_c_project(trace_agent, agent_env, tmp_path):
    require("make", "gcc")
    extra, log = agent_env
    for name in ("native", "agent_"):
        project = tmp_path / name / "proj"
        project.mkdir(parents=True)
        (project / "Makefile").write_text(MAKEFILE)
        (project / "util.h").write_text("int twice(int x);\n")
        (project / "util.c").write_text('#include "util.h"\nint twice(int x) { return 2 * x; }\n')
        (project / "main.c").write_text('#include <stdio.h>\n#include "util.h"\n'
                                        'int main(void) { printf("%d\\n", twice(21)); return 0; }\n')
    native = run("make -s && ./app", cwd=tmp_path / "native" / "proj", shell=True)
    agent = run("make -s && ./app", cwd=tmp_path / "agent_" / "proj", shell=True, env=extra, agent=trace_agent)
    assert native.returncode == agent.returncode == 0, agent.stderr.decode()
    assert agent.stdout == native.stdout == b"42\n"
    # A second make finds everything up to date: make's stat (old __xstat ABI) really works.
    again = run(["make", "-q", "app"], cwd=tmp_path / "agent_" / "proj", env=extra, agent=trace_agent)
    assert again.returncode == 0
    if extra:
        text = log.read_text()
        assert "<__xstat>" in text, "make 4.3 calls the pre-2.33 __xstat entry point; the agent must see it"
        assert "execve(" in text or "posix_spawn(" in text


def test_sqlite3_cli(trace_agent, agent_env, tmp_path):
    require("sqlite3")
    sql = b"create table t(a, b); insert into t values (1, 'x'), (2, 'y'); select * from t order by a desc;"
    extra, log = agent_env
    native_dir, agent_dir = tmp_path / "n", tmp_path / "a"
    native_dir.mkdir()
    agent_dir.mkdir()
    native = run(["sqlite3", "db.sqlite"], cwd=native_dir, input=sql)
    agent = run(["sqlite3", "db.sqlite"], cwd=agent_dir, input=sql, env=extra, agent=trace_agent)
    assert agent.returncode == native.returncode == 0
    assert agent.stdout == native.stdout == b"2|y\n1|x\n"
    check = run(["sqlite3", str(agent_dir / "db.sqlite"), "select count(*) from t"])
    assert check.stdout == b"2\n"
    if extra:
        assert "db.sqlite" in log.read_text()


def test_file_system_status_is_traced(trace_agent, tmp_path):
    # df asks statvfs, `stat -f` statfs, python's os.pathconf pathconf: all in the knowledge
    log = tmp_path / "trace.log"
    p = run(f"df -k {tmp_path} > /dev/null && stat -f -c %S {tmp_path} && "
            f"python3 -c 'import os; print(os.pathconf(\"{tmp_path}\", \"PC_NAME_MAX\"))'",
            shell=True, env={"BYPASS_TRACE": str(log)}, agent=trace_agent)
    assert p.returncode == 0, p.stderr.decode()
    assert p.stdout.decode().split() == [str(os.statvfs(tmp_path).f_bsize), str(os.pathconf(tmp_path, "PC_NAME_MAX"))]
    text = log.read_text()
    for call in ("statvfs", "statfs", "pathconf"):
        assert f' {call}("{tmp_path}", ' in text, f"{call} not traced:\n{text[-2000:]}"
