"""The export root: no escape by '..' or symlinks, with openat2 and with the manual walk."""
from __future__ import annotations

import errno
import os

import pytest

from bypass.rpc.export import ExportRoot


@pytest.fixture(params=["openat2", "walk"])
def root(request, tmp_path):
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
