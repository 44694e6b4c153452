"""Neutral encodings: Python (neutral.py) and generated C (neutral_c.py) agree, from one file."""
from __future__ import annotations

import errno
import os
import stat
import subprocess

import pytest
from hypothesis import given, settings, strategies as st

from bypass.rpc import neutral, neutral_c

from .cbuild import build


@pytest.fixture(scope="module")
def nc(tmp_path_factory):
    d = tmp_path_factory.mktemp("neutral")
    h, c = neutral_c.write_sources(d)
    cdef = "\n".join(
        f"int64_t bypass_{s}_to_neutral(int64_t, int64_t *);\n"
        f"int64_t bypass_{s}_to_local(int64_t, int64_t *);" for s in neutral.SETS)
    cdef += """
    typedef struct { int64_t v[16]; } fields16;
    int64_t bypass_mode_to_neutral(unsigned int mode);
    unsigned int bypass_mode_to_local(int64_t);
    int64_t bypass_devnum_to_neutral(uint64_t dev);
    uint64_t bypass_devnum_to_local(int64_t);
    int stat_neutral(const char *path, int64_t *out);
    int roundtrip_stat(const char *path);
    """
    helper = r"""
    #include <string.h>
    #include "bypass_neutral.h"
    int stat_neutral(const char *path, int64_t *out)
    {
        struct stat st;
        if (lstat(path, &st)) return -1;
        bypass_stat_to_neutral(&st, out);
        return 0;
    }
    /* neutral -> local must give back the same struct stat fields */
    int roundtrip_stat(const char *path)
    {
        struct stat st, back;
        int64_t n[BYPASS_STAT_NFIELDS];
        if (lstat(path, &st)) return -1;
        bypass_stat_to_neutral(&st, n);
        bypass_stat_to_local(n, &back);
        return st.st_dev == back.st_dev && st.st_ino == back.st_ino && st.st_mode == back.st_mode
            && st.st_nlink == back.st_nlink && st.st_uid == back.st_uid && st.st_gid == back.st_gid
            && st.st_rdev == back.st_rdev && st.st_size == back.st_size
            && st.st_blksize == back.st_blksize && st.st_blocks == back.st_blocks
            && st.st_atim.tv_sec == back.st_atim.tv_sec && st.st_atim.tv_nsec == back.st_atim.tv_nsec
            && st.st_mtim.tv_sec == back.st_mtim.tv_sec && st.st_mtim.tv_nsec == back.st_mtim.tv_nsec
            && st.st_ctim.tv_sec == back.st_ctim.tv_sec && st.st_ctim.tv_nsec == back.st_ctim.tv_nsec;
    }
    """
    return build(d, [str(c)], cdef, f'#include "{h}"\n' + helper, "neutral")


def test_data_file_is_consistent():
    for s in neutral.SETS.values():
        vals = list(s.neutral_values.values())
        assert len(vals) == len(set(vals)), f"{s.name}: two names share a neutral value"
        if s.kind == "bits":
            assert all(v > 0 and v & (v - 1) == 0 for v in vals)
            if s.field:
                assert not any(v & s.field["neutral_mask"] for v in vals)
    assert neutral.STAT_FIELDS[:3] == ("dev", "ino", "mode")


@pytest.mark.parametrize("name", [n for n, s in neutral.SETS.items() if s.python_modules])
def test_c_and_python_agree_on_every_name(nc, name):
    ffi, lib = nc
    s = neutral.SETS[name]
    to_n = getattr(lib, f"bypass_{name}_to_neutral")
    to_l = getattr(lib, f"bypass_{name}_to_local")
    checked = 0
    for n in list(s.neutral_values) + list(s.aliases):
        local = s.local_value(n)
        if local is None or (s.skip_zero and local == 0):
            continue
        assert to_n(local, ffi.NULL) == s.to_neutral(local), n
        nv = s.to_neutral(local)
        assert to_l(nv, ffi.NULL) == s.to_local(nv), n
        assert s.to_local(nv) == local or s.kind == "bits", n
        checked += 1
    assert checked > 0


@settings(max_examples=300, deadline=None)
@given(st.sets(st.sampled_from(
    [n for n in neutral.open_flags.neutral_values if neutral.open_flags.local_value(n)])),
    st.sampled_from(["O_RDONLY", "O_WRONLY", "O_RDWR"]))
def test_open_flag_combinations(nc, names, acc):
    ffi, lib = nc
    local = getattr(os, acc)
    for n in names:
        local |= getattr(os, n)
    unknown = ffi.new("int64_t *")
    nv = lib.bypass_open_flags_to_neutral(local, unknown)
    assert unknown[0] == 0
    assert nv == neutral.open_flags.to_neutral(local, strict=True)
    assert lib.bypass_open_flags_to_local(nv, unknown) == local
    assert unknown[0] == 0
    assert neutral.open_flags.to_local(nv, strict=True) == local


def test_known_neutral_values():
    o = neutral.open_flags
    assert o.to_neutral(os.O_WRONLY | os.O_CREAT) == 1 | (1 << 2)
    assert o.names(o.to_neutral(os.O_RDWR | os.O_APPEND)) == ["O_RDWR", "O_APPEND"]
    assert neutral.errno_to_neutral(errno.ENOENT) == 2
    assert neutral.errno_to_neutral(errno.EWOULDBLOCK) == neutral.errno_to_neutral(errno.EAGAIN)
    assert neutral.mode_to_neutral(stat.S_IFDIR | 0o755) == 0o40755


def test_unknown_values(nc):
    ffi, lib = nc
    unknown = ffi.new("int64_t *")
    # an errno this platform does not have comes back as EIO, flagged
    assert lib.bypass_errno_to_local(1019, unknown) == errno.EIO and unknown[0] == 1
    assert neutral.errno_to_local(1019) == errno.EIO
    assert lib.bypass_errno_to_neutral(9999, unknown) == 5 and unknown[0] == 1
    # an unknown fcntl command has no translation at all
    assert lib.bypass_fcntl_cmds_to_local(123456, unknown) == -1 and unknown[0] == 1
    with pytest.raises(neutral.NeutralError):
        neutral.fcntl_cmds.to_local(123456)
    # a local bit with no neutral name is reported, not smuggled through
    nv = lib.bypass_open_flags_to_neutral(os.O_CREAT | 0x40000000, unknown)
    assert unknown[0] == 0x40000000 and nv == neutral.open_flags.neutral("O_CREAT")
    with pytest.raises(neutral.NeutralError):
        neutral.open_flags.to_neutral(os.O_CREAT | 0x40000000, strict=True)


def test_sets_without_python_values_round_trip_in_c(nc):
    ffi, lib = nc
    unknown = ffi.new("int64_t *")
    for name in ("at_flags", "faccessat_flags", "dirent_types"):
        s = neutral.SETS[name]
        to_n = getattr(lib, f"bypass_{name}_to_neutral")
        to_l = getattr(lib, f"bypass_{name}_to_local")
        for nv in s.neutral_values.values():
            local = to_l(nv, unknown)
            if unknown[0] == 0 and local:
                assert to_n(local, unknown) == nv and unknown[0] in (0,)


@pytest.mark.parametrize("path", ["/", "/dev/null", "/etc/passwd", "/proc/self", "/bin/sh",
                                  "/run"])
def test_stat_c_equals_python(nc, path, tmp_path):
    ffi, lib = nc
    if not os.path.lexists(path):
        pytest.skip(f"{path} not here")
    out = ffi.new("int64_t[16]")
    assert lib.stat_neutral(path.encode(), out) == 0
    assert list(out) == neutral.stat_to_neutral(os.lstat(path))
    assert lib.roundtrip_stat(path.encode()) == 1
    back = neutral.stat_from_neutral(list(out))
    assert back.mode == os.lstat(path).st_mode and back.rdev == os.lstat(path).st_rdev


def test_stat_fifo_socket_symlink(nc, tmp_path):
    import socket
    ffi, lib = nc
    os.mkfifo(tmp_path / "fifo")
    os.symlink("nowhere", tmp_path / "link")
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(tmp_path / "sock"))
    out = ffi.new("int64_t[16]")
    kinds = {"fifo": 0o010000, "link": 0o120000, "sock": 0o140000}
    for name, ntype in kinds.items():
        p = str(tmp_path / name).encode()
        assert lib.stat_neutral(p, out) == 0
        assert out[2] & ~0o7777 == ntype
        assert list(out) == neutral.stat_to_neutral(os.lstat(p))
    s.close()




def test_negative_mtime(tmp_path, nc):
    ffi, lib = nc
    p = tmp_path / "old"
    p.write_text("x")
    os.utime(p, ns=(-1_500_000_000, -1_500_000_000))   # 1.5 s before the epoch
    out = ffi.new("int64_t[16]")
    assert lib.stat_neutral(str(p).encode(), out) == 0
    py = neutral.stat_to_neutral(os.lstat(p))
    assert list(out) == py
    assert py[neutral.STAT_FIELDS.index("mtime_sec")] == -2
    assert py[neutral.STAT_FIELDS.index("mtime_nsec")] == 500_000_000


# ---- structs other than struct stat ----------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(neutral.STRUCTS))
def test_struct_layouts_match_this_machines_headers(name, tmp_path):
    """Every member neutral.toml lists exists in every C type it names, with its header."""
    layout = neutral.STRUCTS[name]
    uses = "".join(f"    {{ {t} x; memset(&x, 0, sizeof x);"
                   + "".join(f" (void)x.{m};" for m, _, _ in layout.fields) + " }\n" for t in layout.types)
    src = tmp_path / "layout.c"
    src.write_text(f"#define _GNU_SOURCE\n#define _LARGEFILE64_SOURCE\n#include <string.h>\n"
                   f"#include <{layout.header}>\nvoid probe(void)\n{{\n{uses}}}\n")
    done = subprocess.run(["gcc", "-fsyntax-only", "-Wall", "-Werror", str(src)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_struct_values_in_neutral_form():
    import fcntl
    flock = neutral.STRUCTS["flock"]
    wire = flock.to_neutral({"l_type": fcntl.F_WRLCK, "l_whence": os.SEEK_END, "l_start": -3})
    assert wire == {"l_type": neutral.SETS["lock_types"].neutral("F_WRLCK"),
                    "l_whence": neutral.SETS["seek_whence"].neutral("SEEK_END"),
                    "l_start": -3, "l_len": 0, "l_pid": 0}
    assert flock.to_local(dict(wire, l_extra=99)) == {
        "l_type": fcntl.F_WRLCK, "l_whence": os.SEEK_END, "l_start": -3, "l_len": 0, "l_pid": 0}
    vfs = neutral.STRUCTS["statvfs"].to_neutral(os.statvfs("/"))     # attributes, not a dict
    assert vfs["f_bsize"] == os.statvfs("/").f_bsize and set(vfs) == {m for m, _, _ in neutral.STRUCTS["statvfs"].fields}
    with pytest.raises(neutral.NeutralError, match="expected a map"):
        flock.to_local([1, 2])
    with pytest.raises(neutral.NeutralError, match="l_len is not an integer"):
        flock.to_local({"l_len": "x"})
    assert neutral.struct_layout("const struct flock64") is flock
    assert neutral.struct_layout("struct statfs") is None
