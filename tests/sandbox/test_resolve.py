"""Path resolution of the sandbox library, driven through cffi on a real directory tree."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap

import pytest

from sandbox_lib import AT_FDCWD, EMPTY_OK, NOFOLLOW, STRICT


@pytest.fixture
def tree(tmp_path):
    """A small world:  ro/ (read-only), rw/, deny/, gone/, store/ (behind data/), priv/."""
    t = tmp_path.resolve()
    for d in ["ro/sub", "rw/sub", "deny/inner", "gone", "store/dir", "priv", "deny/pub"]:
        (t / d).mkdir(parents=True)
    (t / "ro/file").write_text("ro")
    (t / "rw/file").write_text("rw")
    (t / "deny/secret").write_text("s")
    (t / "deny/pub/ok").write_text("ok")
    (t / "store/x").write_text("x")
    (t / "gone/hidden").write_text("h")
    return t


def mount_text(t):
    return textwrap.dedent(f"""\
        /               rx
        {t}/ro          rx
        {t}/rw          rwx
        {t}/deny        DENY
        {t}/deny/pub    r
        {t}/gone        ENOENT
        {t}/data        {t}/store
        {t}/tmp         PRIVATE
        """)


@pytest.fixture
def world(sb, tree):
    sb.install(mount_text(tree), cwd=str(tree / "rw"), private=str(tree / "priv"))
    return sb, tree


def test_plain_absolute_paths(world):
    sb, t = world
    assert sb.real("read", f"{t}/ro/file") == f"{t}/ro/file"
    assert sb.real("write", f"{t}/ro/file") == errno.EACCES
    assert sb.real("create", f"{t}/ro/new") == errno.EACCES
    assert sb.real("write", f"{t}/rw/file") == f"{t}/rw/file"
    assert sb.real("create", f"{t}/rw/new") == f"{t}/rw/new"
    assert sb.real("read", f"{t}/deny/secret") == errno.EACCES
    assert sb.real("lookup", f"{t}/deny") == errno.EACCES
    assert sb.real("lookup", f"{t}/deny/nothing/there") == errno.EACCES   # no existence leak
    assert sb.real("lookup", f"{t}/gone/hidden") == errno.ENOENT
    assert sb.real("create", f"{t}/gone/new") == errno.ENOENT
    assert sb.real("exec", "/bin/ls") == "/bin/ls" or sb.real("exec", "/bin/ls") == "/usr/bin/ls"
    assert sb.real("read", "/etc/hostname") == "/etc/hostname"
    assert sb.real("write", "/etc/hostname") == errno.EACCES
    assert sb.real("write", "/dev/null") == "/dev/null"          # implicit device entry


def test_component_boundaries_and_nesting(world):
    sb, t = world
    (t / "rwx").mkdir()
    assert sb.real("create", f"{t}/rwx/f") == errno.EACCES       # /rwx is not under /rw
    assert sb.real("read", f"{t}/deny/pub/ok") == f"{t}/deny/pub/ok"
    assert sb.real("write", f"{t}/deny/pub/ok") == errno.EACCES
    assert sb.real("read", f"{t}/deny/pubx") == errno.EACCES


def test_dotdot_is_lexical_on_the_resolved_path(world):
    sb, t = world
    assert sb.real("read", f"{t}/rw/../deny/secret") == errno.EACCES
    assert sb.real("read", f"{t}/rw/sub/../../ro/file") == f"{t}/ro/file"
    assert sb.real("read", f"{t}/deny/../ro/file") == f"{t}/ro/file"
    assert sb.real("read", "/../../..") == "/"
    assert sb.real("create", f"{t}/rw/./sub//new") == f"{t}/rw/sub/new"


def test_relative_paths_use_the_virtual_cwd(world):
    sb, t = world
    assert sb.getcwd() == f"{t}/rw"
    assert sb.real("create", "new") == f"{t}/rw/new"
    assert sb.real("read", "../deny/secret") == errno.EACCES
    assert sb.real("write", "../ro/file") == errno.EACCES
    sb.lib.sb_set_cwd(f"{t}/data".encode())
    assert sb.real("read", "x") == f"{t}/store/x"
    assert sb.real("read", "..") == f"{t}"
    assert sb.real("lookup", "") == errno.ENOENT
    rc, v, _r, _ = sb.resolve("lookup", "", EMPTY_OK)
    assert rc == 0 and v == f"{t}/data"


def test_symlinks_are_followed_in_the_virtual_namespace(world):
    sb, t = world
    os.symlink(f"{t}/deny/secret", t / "rw/abs")
    os.symlink("../deny/secret", t / "rw/rel")
    os.symlink(f"{t}/deny", t / "rw/dirlink")
    os.symlink("/proc/self/root" + str(t) + "/deny", t / "rw/proclink")
    os.symlink("../ro/file", t / "rw/tofile")
    for name in ["abs", "rel", "proclink"]:
        assert sb.real("read", f"{t}/rw/{name}" + ("/secret" if name == "proclink" else "")) \
            == errno.EACCES, name
    assert sb.real("read", f"{t}/rw/dirlink/secret") == errno.EACCES
    assert sb.real("read", "dirlink/inner/../secret") == errno.EACCES
    # a link in a writable place to a read-only file: reading fine, writing refused
    assert sb.real("read", f"{t}/rw/tofile") == f"{t}/ro/file"
    assert sb.real("write", f"{t}/rw/tofile") == errno.EACCES
    # not following the last component: the link itself, in the writable place
    rc, v, r, res = sb.resolve("delete", f"{t}/rw/abs", NOFOLLOW)
    assert rc == 0 and r == f"{t}/rw/abs"
    # a trailing slash forces following
    assert sb.real("lookup", f"{t}/rw/dirlink/", NOFOLLOW) == errno.EACCES


def test_symlinks_inside_a_redirect_point_into_the_virtual_tree(world):
    sb, t = world
    os.symlink(f"{t}/data/x", t / "store/abs")          # virtual target: /data/x -> store/x
    os.symlink(f"{t}/store/x", t / "store/real")        # names the real place directly
    os.symlink("dir/../x", t / "store/rel")
    assert sb.real("read", f"{t}/data/abs") == f"{t}/store/x"
    assert sb.real("read", f"{t}/data/real") == f"{t}/store/x"
    assert sb.real("read", f"{t}/data/rel") == f"{t}/store/x"
    rc, v, r, _ = sb.resolve("read", f"{t}/data/abs")
    assert v == f"{t}/data/x"


def test_link_loops_and_missing_components(world):
    sb, t = world
    os.symlink("b", t / "rw/a")
    os.symlink("a", t / "rw/b")
    assert sb.real("read", f"{t}/rw/a") == errno.ELOOP
    assert sb.real("read", f"{t}/rw/nodir/file") == errno.ENOENT
    assert sb.real("create", f"{t}/rw/newfile") == f"{t}/rw/newfile"
    assert sb.real("read", f"{t}/rw/newfile", STRICT) == errno.ENOENT
    assert sb.real("read", f"{t}/rw/file/x") == errno.ENOTDIR
    os.symlink("nowhere", t / "rw/dangling")
    assert sb.real("create", f"{t}/rw/dangling") == f"{t}/rw/nowhere"


def test_proc_self_root_and_cwd(world):
    sb, t = world
    assert sb.real("read", f"/proc/self/root{t}/deny/secret") == errno.EACCES
    assert sb.real("read", f"/proc/{os.getpid()}/root{t}/ro/file") == f"{t}/ro/file"
    assert sb.real("write", f"/proc/self/root{t}/ro/file") == errno.EACCES
    # cwd is the virtual cwd, even when the real cwd is somewhere else
    sb.lib.sb_set_cwd(f"{t}/data".encode())
    assert sb.real("read", "/proc/self/cwd/x") == f"{t}/store/x"
    assert sb.real("read", "/proc/self/cwd/../deny/secret") == errno.EACCES
    assert sb.real("read", f"/proc/thread-self/root{t}/deny/secret") == errno.EACCES
    assert sb.readlink("/proc/self/cwd") == f"{t}/data"
    assert sb.readlink("/proc/self/root") == "/"


def test_proc_fd_links(world):
    sb, t = world
    fd = os.open(t / "deny/secret", os.O_RDONLY)      # opened behind the sandbox's back
    try:
        # the process holds it for reading already: reading through /proc is harmless
        rc, v, r, res = sb.resolve("read", f"/proc/self/fd/{fd}")
        assert rc == 0 and res.magic == 1
        # but not an upgrade to writing
        assert sb.real("write", f"/proc/self/fd/{fd}") == errno.EACCES
        assert sb.real("write", f"/dev/fd/{fd}") == errno.EACCES
    finally:
        os.close(fd)
    fd = os.open(t / "ro/file", os.O_RDONLY)
    try:
        assert sb.real("write", f"/proc/self/fd/{fd}") == errno.EACCES
        assert sb.readlink(f"/proc/self/fd/{fd}") == f"{t}/ro/file"
    finally:
        os.close(fd)
    rfd, wfd = os.pipe()
    try:
        rc, v, r, res = sb.resolve("write", f"/dev/fd/{wfd}")
        assert rc == 0 and res.magic == 1 and r == f"/proc/{os.getpid()}/fd/{wfd}"
        assert sb.real("write", f"/proc/self/fd/{rfd}") == errno.EACCES
    finally:
        os.close(rfd)
        os.close(wfd)
    # through a redirect: readlink shows the virtual path
    fd = os.open(t / "store/x", os.O_RDONLY)
    try:
        assert sb.readlink(f"/proc/self/fd/{fd}") == f"{t}/data/x"
    finally:
        os.close(fd)


def test_dirfd_via_table_and_via_proc(world):
    sb, t = world
    fd = os.open(t / "store", os.O_RDONLY | os.O_DIRECTORY)
    try:
        before = sb.stats()
        assert sb.real("read", "x", dirfd=fd) == f"{t}/store/x"   # /proc fallback + reverse
        assert sb.fd_path(fd) == f"{t}/data"
        sb.lib.sb_fd_note(fd, f"{t}/data".encode())
        assert sb.real("read", "x", dirfd=fd) == f"{t}/store/x"
        assert sb.real("read", "../deny/secret", dirfd=fd) == errno.EACCES
        after = sb.stats()
        assert after["fd_hits"] > before["fd_hits"] and after["fd_misses"] > before["fd_misses"]
        # relative to a descriptor the agent opened, plain names can be left to the kernel
        assert sb.resolve("read", "x", dirfd=fd)[3].rel_ok == 1
        assert sb.resolve("read", "../data/x", dirfd=fd)[3].rel_ok == 0
        os.symlink("x", t / "store/lx")
        assert sb.resolve("read", "lx", dirfd=fd)[3].rel_ok == 0
        # from the cwd in an identity entry the kernel's own walk of the path is the same walk;
        # through a redirect it is not
        assert sb.resolve("read", "file")[3].rel_ok == 1
        assert sb.resolve("read", "../data/x")[3].rel_ok == 0
        fd2 = os.dup(fd)
        sb.lib.sb_fd_dup(fd, fd2)
        assert sb.fd_path(fd2) == f"{t}/data"
        os.close(fd2)
        sb.lib.sb_fd_forget(fd2)
        sb.lib.sb_fd_forget(fd)
        assert sb.lib.sb_fchdir_done(fd) == 0
        assert sb.getcwd() == f"{t}/data"
    finally:
        os.close(fd)
    assert sb.fd_path(9999) == errno.EBADF
    fd = os.open(t / "store", os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert sb.resolve("read", "x", dirfd=fd)[3].rel_ok == 0  # learnt from /proc: not trusted
    finally:
        os.close(fd)
    r, w = os.pipe()
    try:
        assert sb.real("read", "x", dirfd=r) == errno.ENOTDIR
    finally:
        os.close(r)
        os.close(w)


def test_private_directory(world):
    sb, t = world
    priv = f"{t}/priv{t}/tmp"                            # <private>/<prefix>
    assert os.path.isdir(priv)
    assert sb.real("create", f"{t}/tmp/a") == f"{priv}/a"
    assert sb.real("create", f"{t}/tmp") == priv
    assert sb.reverse(f"{priv}/a/b") == f"{t}/tmp/a/b"
    assert sb.reverse(f"{t}/store/dir") == f"{t}/data/dir"
    assert sb.reverse("/usr/bin") == "/usr/bin"
    # the real private dir is not reachable under its own name in the virtual tree?  It is
    # (it is under /, rx), but read-only: writing there directly is refused.
    assert sb.real("create", f"{priv}/b") == errno.EACCES


def test_rename_and_link_rules(world):
    sb, t = world
    ro_ = sb.ffi.new("struct sb_result *")
    rn_ = sb.ffi.new("struct sb_result *")
    def ren(a, b):
        return sb.lib.sb_resolve_rename(AT_FDCWD, a.encode(), AT_FDCWD, b.encode(), ro_, rn_)
    def lnk(a, b, follow=0):
        return sb.lib.sb_resolve_link(AT_FDCWD, a.encode(), AT_FDCWD, b.encode(), follow, ro_, rn_)
    assert ren(f"{t}/rw/file", f"{t}/rw/file2") == 0
    assert ren(f"{t}/rw/file", f"{t}/deny/file") == errno.EACCES      # into a denied place
    assert ren(f"{t}/ro/file", f"{t}/rw/file") == errno.EACCES        # out of a read-only one
    assert ren(f"{t}/rw/file", f"{t}/data/file") == errno.EXDEV       # across a redirect
    assert ren(f"{t}/tmp/a", f"{t}/rw/a") == errno.EXDEV              # private -> elsewhere
    assert ren(f"{t}/tmp/a", f"{t}/tmp/b") == 0
    # Parrot's own test: hard-linking a read-only file into a writable place
    assert lnk(f"{t}/ro/file", f"{t}/rw/hard") == errno.EACCES
    os.symlink(f"{t}/ro/file", t / "rw/sym")
    assert lnk(f"{t}/rw/sym", f"{t}/rw/hard", follow=1) == errno.EACCES
    assert lnk(f"{t}/rw/sym", f"{t}/rw/hard", follow=0) == 0          # links the symlink itself
    assert lnk(f"{t}/rw/file", f"{t}/rw/hard") == 0
    assert lnk(f"{t}/rw/file", f"{t}/tmp/hard") == errno.EXDEV


def test_erofs_option(sb, tree, monkeypatch):
    monkeypatch.setenv("BYPASS_SANDBOX_EROFS", "1")
    sb.install(mount_text(tree), cwd="/", private=str(tree / "priv"))
    assert sb.real("write", f"{tree}/ro/file") == errno.EROFS
    assert sb.real("read", f"{tree}/deny/secret") == errno.EACCES


def test_directory_cache_saves_lstats_and_is_flushed(world):
    sb, t = world
    deep = t / "rw/a/b/c"
    deep.mkdir(parents=True)
    sb.real("read", f"{deep}/f")
    s1 = sb.stats()
    for _ in range(10):
        assert sb.real("read", f"{deep}/f") == f"{deep}/f"
    s2 = sb.stats()
    assert s2["lstats"] - s1["lstats"] == 10            # only the last component, once a call
    assert s2["memo_hits"] - s1["memo_hits"] == 10      # the parent's walk is remembered
    sb.real("read", f"{deep}/../c/f")                   # another text: walked, from the cache
    assert sb.stats()["cache_hits"] > s2["cache_hits"]
    # replace a directory by a symlink into a denied place; the agent flushes on rename
    os.rename(t / "rw/a/b", t / "rw/a/old")
    os.symlink(f"{t}/deny", t / "rw/a/b")
    sb.lib.sb_cache_flush()
    assert sb.real("read", f"{t}/rw/a/b/secret") == errno.EACCES
    # a missing name that becomes a symlink (symlink() flushes in the agent)
    assert sb.real("create", f"{t}/rw/a/new/f") == errno.ENOENT
    (t / "rw/a/x").mkdir()
    assert sb.real("create", f"{t}/rw/a/x/f") == f"{t}/rw/a/x/f"
    os.rmdir(t / "rw/a/x")
    os.symlink(f"{t}/deny", t / "rw/a/x")
    sb.lib.sb_cache_flush()
    assert sb.real("create", f"{t}/rw/a/x/f") == errno.EACCES
    # with the cache off every component is checked
    sb.lib.sb_set_cache(0)
    s3 = sb.stats()
    sb.real("read", f"{t}/rw/a/old/c/f")
    assert sb.stats()["lstats"] - s3["lstats"] >= 4
    sb.lib.sb_set_cache(1)


def test_inactive_library_passes_paths_through(sb):
    sb.lib.sb_uninstall()
    assert sb.real("write", "relative/x") == "relative/x"


@pytest.fixture(scope="module")
def static_bin(tmp_path_factory):
    d = tmp_path_factory.mktemp("static")
    src = d / "s.c"
    src.write_text("int main(void){return 0;}\n")
    out = d / "s"
    r = subprocess.run(["gcc", "-static", "-o", str(out), str(src)], capture_output=True)
    if r.returncode != 0:
        raise AssertionError("no static libc to build a static test program")
    return out


def test_static_executable_detection(sb, tmp_path, static_bin, capfd, monkeypatch):
    assert sb.lib.sb_elf_is_static(str(static_bin).encode()) == 1
    assert sb.lib.sb_elf_is_static(b"/bin/ls") == 0
    assert sb.lib.sb_elf_is_static(os.path.realpath(sys.executable).encode()) == 0
    assert sb.lib.sb_elf_is_static(b"/etc/hostname") == 0
    script = tmp_path / "script"
    script.write_text(f"#!{static_bin}\n")
    assert sb.lib.sb_elf_is_static(str(script).encode()) == 1
    (tmp_path / "shell").write_text("#!/bin/sh\necho hi\n")
    assert sb.lib.sb_elf_is_static(str(tmp_path / "shell").encode()) == 0
    monkeypatch.delenv("BYPASS_SANDBOX_ALLOW_STATIC", raising=False)
    sb.install("/ rx\n")
    assert sb.lib.sb_exec_check(str(static_bin).encode(), b"/virtual/s") == errno.EACCES
    err = capfd.readouterr().err
    assert "refusing to run /virtual/s: statically linked" in err
    assert "BYPASS_SANDBOX_ALLOW_STATIC=1" in err
    monkeypatch.setenv("BYPASS_SANDBOX_ALLOW_STATIC", "1")
    sb.install("/ rx\n")                         # settings are read when the list is installed
    assert sb.lib.sb_exec_check(str(static_bin).encode(), b"/virtual/s") == 0
    loader = "/lib64/ld-linux-x86-64.so.2"
    if os.path.exists(loader):
        assert sb.lib.sb_elf_is_static(os.path.realpath(loader).encode()) == 0


DRIVER = """
import sys
sys.path.insert(0, {tests!r})
from sandbox_lib import Sandbox
sb = Sandbox({lib!r})
err = sb.ffi.new("char[]", 1024)
rc = sb.lib.sb_init_from_env(err, 1024)
if rc:
    print(sb.ffi.string(err).decode(), file=sys.stderr)
    sys.exit(2)
print(sb.ffi.string(sb.lib.sb_private_dir()).decode() if sb.lib.sb_private_dir() else "-")
print(sb.real("create", "/tmp/x"))
"""


def run_driver(sblib_path, env):
    code = DRIVER.format(tests=os.path.dirname(__file__), lib=str(sblib_path))
    full = dict(os.environ)
    for k in list(full):
        if k.startswith("BYPASS_"):
            del full[k]
    full.update(env)
    return subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True)


def test_init_from_env(tmp_path, sblib):
    lib = sblib.path
    bad = tmp_path / "bad.txt"
    bad.write_text("/ rx\n/home DENNY\n")
    r = run_driver(lib, {"BYPASS_MOUNTS": str(bad)})
    assert r.returncode == 2
    assert f"{bad}:2: error: unknown keyword 'DENNY'" in r.stderr
    good = tmp_path / "good.txt"
    good.write_text("/ rx\n/tmp PRIVATE\n")
    base = tmp_path / "base"
    base.mkdir()
    r = run_driver(lib, {"BYPASS_MOUNTS": str(good), "BYPASS_SANDBOX_PRIVATE_BASE": str(base),
                         "BYPASS_SANDBOX_KEEP_PRIVATE": "1"})
    assert r.returncode == 0, r.stderr
    priv, real = r.stdout.split()
    assert priv.startswith(f"{base}/bypass-private-") and real == f"{priv}/tmp/x"
    assert os.path.isdir(f"{priv}/tmp")
    assert f"private directory kept: {priv}" in r.stderr
    r = run_driver(lib, {"BYPASS_MOUNTS": str(good), "BYPASS_SANDBOX_PRIVATE_BASE": str(base)})
    assert r.returncode == 0, r.stderr
    priv2 = r.stdout.split()[0]
    assert not os.path.exists(priv2) and "kept" not in r.stderr
    # a directory named in the environment is not joined: only the run's sealed policy names
    # it, and without one this process starts a run of its own
    r = run_driver(lib, {"BYPASS_MOUNTS": str(good), "BYPASS_SANDBOX_PRIVATE": priv,
                         "BYPASS_SANDBOX_PRIVATE_BASE": str(base)})
    assert r.returncode == 0, r.stderr
    priv3 = r.stdout.split()[0]
    assert priv3 != priv and priv3.startswith(f"{base}/bypass-private-")
    assert f"a program set BYPASS_SANDBOX_PRIVATE={priv}; the run's sealed policy is kept" in r.stderr
    # no list: inactive
    r = run_driver(lib, {})
    assert r.returncode == 0 and r.stdout.split() == ["-", "/tmp/x"]
