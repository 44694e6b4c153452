"""The mount-list parser: one, in C (agents/sandbox/mounts.c), which the agent runs and
agents/sandbox/mounts.py calls through cffi; its errors are clear; lookups and translations are
the agent's too."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import bypass.build
from bypass.agents.sandbox import mounts
from sandbox_lib import SANDBOX

GOOD = """\
# comment line
/           rx            # everything read-only unless a later line says otherwise
/tmp        PRIVATE       # a fresh private directory for this run
/home       DENY
/etc/shadow ENOENT
/data       /scratch/job42/data
/work/out/  rwx           # trailing slash is normalised away
/srv//a/./b/../c   /x/y   r
/opt        -
/tmp        PRIVATE  rw
\t/usr   \t  r  \r
"""


IMPLICIT = [("/", "identity", "/", "rwx", 0)] + [
    (d, "identity", d, "rw", 0)
    for d in ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty", "/dev/shm")]


def test_a_good_list():
    py_entries = [(e.prefix, e.kind, e.target, e.mode, e.line) for e in mounts.parse(GOOD)]
    assert py_entries == IMPLICIT + [
        ("/", "identity", "/", "rx", 2),
        ("/tmp", "PRIVATE", None, "rwx", 3),
        ("/home", "DENY", None, "", 4),
        ("/etc/shadow", "ENOENT", None, "", 5),
        ("/data", "redirect", "/scratch/job42/data", "rwx", 6),
        ("/work/out", "identity", "/work/out", "rwx", 7),
        ("/srv/a/c", "redirect", "/x/y", "r", 8),
        ("/opt", "identity", "/opt", "", 9),
        ("/tmp", "PRIVATE", None, "rw", 10),
        ("/usr", "identity", "/usr", "r", 11),
    ]
    # spot checks
    assert ("/srv/a/c", "redirect", "/x/y", "r", 8) in py_entries
    assert ("/work/out", "identity", "/work/out", "rwx", 7) in py_entries
    assert ("/opt", "identity", "/opt", "", 9) in py_entries
    assert py_entries[0] == ("/", "identity", "/", "rwx", 0)


BAD = [
    ("/home DENNY\n", 1, "unknown keyword 'DENNY'"),
    ("# ok\n\nhome DENY\n", 3, "relative prefix 'home'"),
    ("/a rx\n/b scratch/tmp\n", 2, "relative redirect 'scratch/tmp'"),
    ("/a /b rwz\n", 1, "bad mode 'rwz'"),
    ("/a DENY r\n", 1, "DENY takes no mode"),
    ("/a\n", 1, "missing redirect or mode"),
    ("/a /b r x\n", 1, "too many fields"),
    ("/a rx r\n", 1, "unexpected 'r' after mode 'rx'"),
    ("/a privat\n", 1, "unknown keyword 'privat'"),
    ("/a* /b\n", 1, "glob prefix '/a*' can only DENY, hide (ENOENT) or set a mode"),
]


@pytest.mark.parametrize("text,line,needle", BAD)
def test_errors_name_file_and_line(sb, text, line, needle):
    with pytest.raises(mounts.MountListError) as exc:
        mounts.parse(text, "list.txt")
    py_msg = str(exc.value)
    assert py_msg.startswith(f"list.txt:{line}: error: ")
    assert (exc.value.file, exc.value.line) == ("list.txt", line)
    assert needle in py_msg
    # word for word what the agent says when it starts with that list
    m, c_msg = sb.parse(text, "list.txt")
    assert m is None
    assert c_msg == py_msg


def test_unreadable_and_missing_files(sb, tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(mounts.MountListError) as exc:
        mounts.load(missing)
    assert str(exc.value) == f"{missing}:0: error: cannot read mount list: No such file or directory"
    m = sb.ffi.new("struct sb_mounts *")
    err = sb.ffi.new("char[]", 1024)
    assert sb.lib.sb_mounts_load(m, str(missing).encode(), err, 1024) == -1
    assert sb.ffi.string(err).decode() == str(exc.value)
    # a directory is not a readable list either
    with pytest.raises(mounts.MountListError, match="cannot read mount list"):
        mounts.load(tmp_path)
    assert sb.lib.sb_mounts_load(m, str(tmp_path).encode(), err, 1024) == -1
    assert "cannot read mount list" in sb.ffi.string(err).decode()
    if os.geteuid() != 0:  # root reads anything
        f = tmp_path / "secret.txt"
        f.write_text("/ rx\n")
        f.chmod(0)
        with pytest.raises(mounts.MountListError, match="Permission denied"):
            mounts.load(f)


def test_load_good_file(sb, tmp_path):
    f = tmp_path / "m.txt"
    f.write_text(GOOD)
    assert [e.prefix for e in mounts.load(f)][-1] == "/usr"
    m = sb.ffi.new("struct sb_mounts *")
    err = sb.ffi.new("char[]", 1024)
    assert sb.lib.sb_mounts_load(m, str(f).encode(), err, 1024) == 0
    assert sb.ffi.string(m.file).decode() == str(f)
    sb.lib.sb_mounts_free(m)


@pytest.mark.parametrize("path,prefix", [
    ("/", "/"),
    ("/tmp", "/tmp"),
    ("/tmp/a/b", "/tmp"),
    ("/tmpfoo", "/"),            # component boundary
    ("/work/out/x", "/work/out"),
    ("/work/outer", "/"),
    ("/etc/shadow", "/etc/shadow"),
    ("/etc/shadowx", "/"),
    ("/dev/null", "/dev/null"),
    ("/dev/nullx", "/"),
])
def test_lookup_longest_prefix(sb, path, prefix):
    m, _ = sb.parse(GOOD)
    e = sb.lib.sb_lookup(m, path.encode())
    assert sb.ffi.string(e.prefix).decode() == prefix
    sb.lib.sb_mounts_free(m)


def test_later_line_wins_for_equal_prefix(sb):
    text = "/tmp DENY\n/tmp rx\n/a rx\n/a ENOENT\n"
    m, _ = sb.parse(text)
    assert sb.lib.sb_lookup(m, b"/tmp/x").kind == 0
    assert sb.lib.sb_lookup(m, b"/a").kind == 3
    sb.lib.sb_mounts_free(m)


def test_translate(sb):
    """A path below a redirect lands below its target; an identity entry keeps the path."""
    m, _ = sb.parse(GOOD)
    buf = sb.ffi.new("char[]", 4096)
    for v, real in [("/data", "/scratch/job42/data"), ("/data/x/y", "/scratch/job42/data/x/y"),
                    ("/srv/a/c/z", "/x/y/z"), ("/usr/bin", "/usr/bin")]:
        e = sb.lib.sb_lookup(m, v.encode())
        assert sb.lib.sb_translate(e, v.encode(), buf, 4096) == 0
        assert sb.ffi.string(buf).decode() == real, v
    assert sb.lib.sb_lookup(m, b"/home/u").kind == 2          # DENY: nothing to translate to
    sb.lib.sb_mounts_free(m)


@pytest.mark.parametrize("inp,out", [
    ("/", "/"), ("//", "/"), ("/a/./b//c/", "/a/b/c"), ("/a/../../b", "/b"),
    ("/a/b/..", "/a"), ("/..", "/"), ("/a/.../b", "/a/.../b"),
])
def test_normalise(sb, inp, out):
    buf = sb.ffi.new("char[]", 4096)
    assert sb.lib.sb_normalise(inp.encode(), buf, 4096) == 0
    assert sb.ffi.string(buf).decode() == out
    assert mounts.parse(f"{inp} rx\n")[-1].prefix == out


PARROT = """\
/            RX
/home        deny
/data/sec*   DENY
/data/*/log  Enoent
/opt         Rx
/srv/a       rwx
/srv         R
"""


def test_parrot_syntax_is_read_as_parrot_reads_it(sb):
    """Case-insensitive modes and keywords; glob prefixes matched with fnmatch, component by
    component."""
    m, err = sb.parse(PARROT)
    assert err is None, err
    py = mounts.parse(PARROT)
    assert [(e.prefix, e.kind, e.target, e.mode, e.line) for e in py if not e.line] == IMPLICIT
    assert [(e.prefix, e.kind, e.target, e.mode, e.line, e.glob) for e in py if e.line] == [
        ("/", "identity", "/", "rx", 1, False), ("/home", "DENY", None, "", 2, False),
        ("/data/sec*", "DENY", None, "", 3, True), ("/data/*/log", "ENOENT", None, "", 4, True),
        ("/opt", "identity", "/opt", "rx", 5, False), ("/srv/a", "identity", "/srv/a", "rwx", 6, False),
        ("/srv", "identity", "/srv", "r", 7, False)]
    for path, line in [("/data/secret", 3), ("/data/secret/x/y", 3), ("/data/sec", 3),
                       ("/data/public", 1), ("/data/a/log", 4), ("/data/a/log/today", 4),
                       ("/data/a/b/log", 1), ("/data", 1), ("/home/me", 2), ("/srv/a/b", 6),
                       ("/srv/b", 7)]:
        assert sb.lib.sb_lookup(m, path.encode()).line == line, path
    sb.lib.sb_mounts_free(m)


def test_where_parrot_would_decide_otherwise_is_named(sb):
    """Parrot lets the later of two covering lines win; here the longer prefix decides.  The
    lines where that differs are named (line 6 /srv/a rwx, then line 7 /srv r)."""
    m, _ = sb.parse(PARROT)
    buf = sb.ffi.new("char[]", 1024)
    assert sb.lib.sb_mounts_parrot_differs(m, buf, 1024) == 1
    assert sb.ffi.string(buf).decode() == "line 6 (/srv/a) over line 7 (/srv)"
    sb.lib.sb_mounts_free(m)
    m, _ = sb.parse("/ rx\n/home DENY\n/work rwx\n")
    assert sb.lib.sb_mounts_parrot_differs(m, buf, 1024) == 0
    sb.lib.sb_mounts_free(m)


def test_the_parser_is_the_agents_c():
    """What only the C parser does shows through mounts.parse: its limit on a line's length, and
    its redirect targets made canonical (as the agent must, to translate kernel answers back)."""
    with pytest.raises(mounts.MountListError) as exc:
        mounts.parse("/a /" + "x" * 9000 + "\n", "list.txt")
    assert str(exc.value) == "list.txt:1: error: line too long"
    [*_, entry] = mounts.parse(f"/v {SANDBOX}/../sandbox/.\n")
    assert entry.target == str(SANDBOX.resolve())


def test_the_library_is_built_once_per_version_of_its_sources(tmp_path, monkeypatch):
    monkeypatch.setattr(bypass.build, "PREBUILT_DIR", tmp_path / "prebuilt")
    monkeypatch.setenv("BYPASS_CACHE_DIR", str(tmp_path / "cache"))
    sources = [tmp_path / "mounts.c", tmp_path / "sandbox.h"]
    for source, original in zip(sources, mounts.LIBRARY_SOURCES):
        source.write_text(original.read_text())
    first = bypass.build.helper_library("t", sources)
    assert first == tmp_path / "cache" / bypass.build.helper_name("t", sources)
    made = first.stat().st_mtime_ns
    assert bypass.build.helper_library("t", sources) == first and first.stat().st_mtime_ns == made
    sources[0].write_text(sources[0].read_text() + "/* another version */\n")
    second = bypass.build.helper_library("t", sources)
    assert second != first and second.exists()
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted([first.name, second.name])
    # the package's prebuilt copy is taken as it is: no compiler is looked for
    (tmp_path / "prebuilt").mkdir()
    second.rename(tmp_path / "prebuilt" / second.name)
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    assert bypass.build.helper_library("t", sources) == tmp_path / "prebuilt" / second.name
    assert not second.exists()


def test_a_parser_that_cannot_be_built_is_one_clear_line(tmp_path):
    (tmp_path / "list.txt").write_text("/home DENY\n")
    env = {**os.environ, "CC": "nosuchcc", "BYPASS_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-m", "bypass.cli", "run", str(SANDBOX / "sandbox.bypass"),
                           "-m", "list.txt", "--", "touch", "ran"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and not (tmp_path / "ran").exists()
    assert done.stderr == ("bypass: cannot check the mount list: its parser (agents/sandbox/mounts.c) could not "
                           "be built: CC=nosuchcc: no such compiler (not found on PATH); unset CC to use cc\n")
