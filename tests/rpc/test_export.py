"""The export root: no escape by '..' or symlinks, with openat2 and with the manual walk."""
from __future__ import annotations

import errno
import os

import pytest

from bypass.rpc import export
from bypass.rpc.export import ExportRoot


@pytest.fixture(params=["openat2", "openat2-ctypes", "walk"])
def root(request, tmp_path, monkeypatch):
    if request.param == "openat2-ctypes":       # (no C loop module built here)
        monkeypatch.setattr(export, "_openat2", export._ctypes_openat2)
    top = tmp_path / "root"
    (top / "a" / "b").mkdir(parents=True)
    (top / "a" / "file").write_text("inside\n")
    (top / "a" / "abs").symlink_to("/a/file")          # absolute: means <root>/a/file
    (top / "a" / "rel").symlink_to("../a/file")
    (top / "a" / "up").symlink_to("../../../../../etc")
    (top / "a" / "passwd").symlink_to("/etc/passwd")
    (top / "a" / "loop").symlink_to("loop")
    (top / "a" / "dir").symlink_to("b")
    (tmp_path / "outside.txt").write_text("outside\n")
    r = ExportRoot(str(top))
    if request.param == "walk":
        r.kernel_resolve = False
    yield r
    r.close()


def read(root, path):
    fd = root.open(path, os.O_RDONLY)
    try:
        return os.read(fd, 100).decode()
    finally:
        os.close(fd)


def test_paths_inside(root):
    assert read(root, "/a/file") == "inside\n"
    assert read(root, "a/./b/../file") == "inside\n"
    assert read(root, "/a/abs") == "inside\n"        # absolute symlinks stay in the root
    assert read(root, "/a/rel") == "inside\n"
    assert read(root, "/../../a/file") == "inside\n"  # ".." stops at the root
    assert root.stat("/a/dir").st_mode & 0o170000 == 0o040000


@pytest.mark.parametrize("path", ["/a/up/passwd", "/a/passwd", "/../outside.txt", "/a/../../outside.txt",
                                  "/../../../../etc/passwd"])
def test_no_way_out(root, path):
    with pytest.raises(OSError) as e:
        read(root, path)
    assert e.value.errno in (errno.ENOENT, errno.ENOTDIR)


def test_loops_and_nofollow(root):
    with pytest.raises(OSError) as e:
        read(root, "/a/loop")
    assert e.value.errno == errno.ELOOP
    assert root.stat("/a/abs", follow=False).st_mode & 0o170000 == 0o120000


def test_create_through_a_dangling_symlink_stays_inside(root, tmp_path):
    (tmp_path / "root" / "a" / "newlink").symlink_to("/a/created.txt")
    fd = root.open("/a/newlink", os.O_WRONLY | os.O_CREAT, 0o644)
    os.close(fd)
    assert (tmp_path / "root" / "a" / "created.txt").exists()
    root.mkdir("/a/b/new", 0o755)
    root.rename("/a/b/new", "/newer")
    assert (tmp_path / "root" / "newer").is_dir()


def test_exclusive_create_does_not_follow_a_last_symlink(root, tmp_path):
    """O_CREAT|O_EXCL on a dangling symlink is EEXIST, as the kernel answers, also by the walk
    a path over PATH_MAX takes (conform seed 666: the walk made the symlink's target)."""
    (tmp_path / "root" / "a" / "dangling").symlink_to("nowhere")
    long = "/a" + "/." * 2100 + "/dangling"
    for path in ("/a/dangling", long):
        with pytest.raises(OSError) as e:
            root.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        assert e.value.errno == errno.EEXIST, path
    assert not (tmp_path / "root" / "a" / "nowhere").exists()


@pytest.fixture(params=["openat2", "openat2-ctypes", "walk"])
def aliased(request, tmp_path, monkeypatch):
    """A root that agents see as /job: absolute symlinks to /job/... lead back into it."""
    if request.param == "openat2-ctypes":
        monkeypatch.setattr(export, "_openat2", export._ctypes_openat2)
    top = tmp_path / "root"
    (top / "a" / "b").mkdir(parents=True)
    (top / "a" / "file").write_text("inside\n")
    (top / "a" / "jobdir").symlink_to("/job/a/b")
    (top / "a" / "jobfile").symlink_to("/job/a/file")
    (top / "a" / "jobup").symlink_to("/job/../../../etc")
    (top / "a" / "plain").symlink_to("b")
    r = ExportRoot(str(top), "/job")
    if request.param == "walk":
        r.kernel_resolve = False
    yield r
    r.close()


def test_alias_symlinks_and_failed_lookups(aliased):
    """A failed lookup that met a symlink into the alias is looked up again by hand; one that
    met no symlink fails as it is, with the same errno either way."""
    assert read(aliased, "/a/jobfile") == "inside\n"
    assert aliased.stat("/a/jobdir").st_mode & 0o170000 == 0o040000
    assert aliased.stat("/a/jobdir/../file").st_size == 7
    for path, err in (("/a/nope", errno.ENOENT), ("/nope/deeper", errno.ENOENT),
                      ("/a/jobdir/nope", errno.ENOENT), ("/a/plain/nope", errno.ENOENT),
                      ("/a/file/x", errno.ENOTDIR), ("/a/jobfile/x", errno.ENOTDIR),
                      ("/a/file/", errno.ENOTDIR), ("/a/jobup/passwd", errno.ENOENT)):
        for follow in (True, False):
            with pytest.raises(OSError) as e:
                aliased.stat(path, follow)
            assert e.value.errno == err, (path, follow)
    fd = aliased.open("/a/jobdir/new", os.O_WRONLY | os.O_CREAT, 0o600)   # created through the alias
    os.close(fd)
    assert aliased.stat("/a/b/new").st_size == 0


def test_c_openat2_is_ctypes_openat2(tmp_path):
    """The C loop module's openat2 answers as the ctypes one does: descriptors, errno, name."""
    from bypass.rpc.c_loop import c_loop
    fast = getattr(c_loop("auto"), "openat2", None)
    if fast is None:
        pytest.skip("no C loop module here (no compiler or Python headers)")
    (tmp_path / "f").write_text("x")
    top = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    try:
        for fn in (fast, export._ctypes_openat2):
            fd = fn(top, b"f", os.O_RDONLY | os.O_CLOEXEC, 0, export.RESOLVE_IN_ROOT)
            try:
                assert os.read(fd, 5) == b"x"
            finally:
                os.close(fd)
        for dirfd, name, err in ((top, b"missing\xff", errno.ENOENT), (top, b"../f", None), (-5, b"f", errno.EBADF),
                                 (top, b"f", errno.EINVAL)):
            got = []
            for fn in (fast, export._ctypes_openat2):
                resolve = export.RESOLVE_BENEATH if err is None else export.RESOLVE_IN_ROOT
                flags = os.O_RDONLY | (os.O_CREAT if err == errno.EINVAL else 0)
                with pytest.raises(OSError) as e:
                    os.close(fn(dirfd, name, flags, 0o1000000 if err == errno.EINVAL else 0, resolve))
                got.append((type(e.value), e.value.errno, e.value.strerror, e.value.filename))
            assert got[0] == got[1]
            assert err is None or got[0][1] == err
            assert got[0][3] == name.decode(errors="surrogateescape")
    finally:
        os.close(top)


def test_directory_entry_types(tmp_path):
    """Each entry's type is the one lstat gives (from getdents' d_type where it has one)."""
    import socket
    import stat

    from bypass.rpc.neutral import SETS
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("x")
    (tmp_path / "link").symlink_to("file")
    (tmp_path / "dangling").symlink_to("nowhere")
    os.mkfifo(tmp_path / "fifo")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "sock"))
    names = {stat.S_IFDIR: "DT_DIR", stat.S_IFREG: "DT_REG", stat.S_IFLNK: "DT_LNK",
             stat.S_IFIFO: "DT_FIFO", stat.S_IFSOCK: "DT_SOCK"}
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        got = {name: kind for name, kind, _ in export.dir_entries(fd)}
    finally:
        os.close(fd)
        sock.close()
    want = {os.fsencode(p.name): SETS["dirent_types"].neutral(names[stat.S_IFMT(p.lstat().st_mode)])
            for p in tmp_path.iterdir()}
    assert got == want and len(want) == 6
