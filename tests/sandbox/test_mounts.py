"""The mount-list parser: the C library and agents/sandbox/mounts.py must agree, and errors are clear."""

from __future__ import annotations

import os

import pytest

from bypass.agents.sandbox import mounts

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


def test_c_and_python_agree_on_a_good_list(sb):
    m, err = sb.parse(GOOD)
    assert err is None
    c_entries = sb.entries(m)
    py_entries = [(e.prefix, e.kind, e.target, e.mode, e.line) for e in mounts.parse(GOOD)]
    assert c_entries == py_entries
    # spot checks
    assert ("/srv/a/c", "redirect", "/x/y", "r", 8) in py_entries
    assert ("/work/out", "identity", "/work/out", "rwx", 7) in py_entries
    assert ("/opt", "identity", "/opt", "", 9) in py_entries
    assert py_entries[0] == ("/", "identity", "/", "rwx", 0)
    sb.lib.sb_mounts_free(m)


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
    assert needle in py_msg
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
    entries = mounts.parse(GOOD)
    assert mounts.lookup(entries, path).prefix == prefix
    m, _ = sb.parse(GOOD)
    e = sb.lib.sb_lookup(m, path.encode())
    assert sb.ffi.string(e.prefix).decode() == prefix
    sb.lib.sb_mounts_free(m)


def test_later_line_wins_for_equal_prefix(sb):
    text = "/tmp DENY\n/tmp rx\n/a rx\n/a ENOENT\n"
    entries = mounts.parse(text)
    assert mounts.lookup(entries, "/tmp/x").kind == "identity"
    assert mounts.lookup(entries, "/a").kind == "ENOENT"
    m, _ = sb.parse(text)
    assert sb.lib.sb_lookup(m, b"/tmp/x").kind == 0
    assert sb.lib.sb_lookup(m, b"/a").kind == 3
    sb.lib.sb_mounts_free(m)


def test_translate_mirror(sb):
    entries = mounts.parse(GOOD)
    m, _ = sb.parse(GOOD)
    buf = sb.ffi.new("char[]", 4096)
    for v in ["/data", "/data/x/y", "/srv/a/c/z", "/usr/bin", "/home/u"]:
        e_py = mounts.lookup(entries, v)
        e_c = sb.lib.sb_lookup(m, v.encode())
        assert sb.lib.sb_translate(e_c, v.encode(), buf, 4096) == 0
        if e_py.kind in ("DENY", "ENOENT"):
            assert mounts.translate(e_py, v) is None
            continue
        assert sb.ffi.string(buf).decode() == mounts.translate(e_py, v)
    sb.lib.sb_mounts_free(m)


@pytest.mark.parametrize("inp,out", [
    ("/", "/"), ("//", "/"), ("/a/./b//c/", "/a/b/c"), ("/a/../../b", "/b"),
    ("/a/b/..", "/a"), ("/..", "/"), ("/a/.../b", "/a/.../b"),
])
def test_normalise(sb, inp, out):
    buf = sb.ffi.new("char[]", 4096)
    assert sb.lib.sb_normalise(inp.encode(), buf, 4096) == 0
    assert sb.ffi.string(buf).decode() == out
    assert mounts.normalise(inp) == out


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
    component; C and Python agree."""
    m, err = sb.parse(PARROT)
    assert err is None, err
    c_entries = sb.entries(m)
    py = mounts.parse(PARROT)
    assert c_entries == [(e.prefix, e.kind, e.target, e.mode, e.line) for e in py]
    assert [(e.prefix, e.kind, e.mode, e.glob) for e in py if e.line] == [
        ("/", "identity", "rx", False), ("/home", "DENY", "", False),
        ("/data/sec*", "DENY", "", True), ("/data/*/log", "ENOENT", "", True),
        ("/opt", "identity", "rx", False), ("/srv/a", "identity", "rwx", False),
        ("/srv", "identity", "r", False)]
    for path, line in [("/data/secret", 3), ("/data/secret/x/y", 3), ("/data/sec", 3),
                       ("/data/public", 1), ("/data/a/log", 4), ("/data/a/log/today", 4),
                       ("/data/a/b/log", 1), ("/data", 1), ("/home/me", 2), ("/srv/a/b", 6),
                       ("/srv/b", 7)]:
        c = sb.lib.sb_lookup(m, path.encode())
        assert (c.line, mounts.lookup(py, path).line) == (line, line), path
    sb.lib.sb_mounts_free(m)


def test_where_parrot_would_decide_otherwise_is_named(sb):
    """Parrot lets the later of two covering lines win; here the longer prefix decides.  The
    lines where that differs are named (line 6 /srv/a rwx, then line 7 /srv r)."""
    pairs = mounts.parrot_differs(mounts.parse(PARROT))
    assert [(i.line, o.line) for i, o in pairs] == [(6, 7)]
    m, _ = sb.parse(PARROT)
    buf = sb.ffi.new("char[]", 1024)
    assert sb.lib.sb_mounts_parrot_differs(m, buf, 1024) == 1
    assert sb.ffi.string(buf).decode() == "line 6 (/srv/a) over line 7 (/srv)"
    sb.lib.sb_mounts_free(m)
    assert mounts.parrot_differs(mounts.parse("/ rx\n/home DENY\n/work rwx\n")) == []
