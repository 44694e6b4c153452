"""The remote agent against the kernel: a probe program does the same operations on /job
(through the shadow) and on a local copy of the export (natively); return values, errno,
bytes read and the resulting trees must be the same."""
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

from .test_remote_agent import agent, export, shadow  # noqa: F401  (the same agent, export and shadow)

# Each probe prints one line per step: its result, or the errno name it failed with.
PROBE_HEAD = r'''
import ctypes, errno, fcntl, os, socket, sys
B, L = sys.argv[1], sys.argv[2]      # the tree under test, and a local scratch directory
libc = ctypes.CDLL(None, use_errno=True)

def show(name, fn):
    try:
        r = fn()
    except OSError as e:
        r = errno.errorcode.get(e.errno, str(e.errno))
    print(f"{name}: {r!r}", flush=True)

def c(ret):
    if ret == -1:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return ret
'''


def snapshot(root: Path, times: bool = False) -> dict:
    """Everything a program could tell about a tree: types, modes, owners, bytes, links."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            rel = str(p.relative_to(root))
            kind = stat.S_IFMT(st.st_mode)
            item = [kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid]
            if stat.S_ISLNK(st.st_mode):
                item.append(os.readlink(p))
            elif stat.S_ISREG(st.st_mode):
                item += [st.st_size, p.read_bytes()]
            if times:
                item.append(st.st_mtime_ns)
            out[rel] = item
    return out


def differential(agent, shadow, export, tmp_path, body, times=False, env=None):
    """Run the probe natively on a copy of the export, then under the agent on /job."""
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE_HEAD + textwrap.dedent(body))
    native = tmp_path / "native"
    shutil.copytree(export, native, symlinks=True)
    results = []
    for base, preload in ((str(native), None), ("/job", agent)):
        scratch = tmp_path / f"scratch-{'agent' if preload else 'native'}"
        scratch.mkdir()
        e = {k: v for k, v in os.environ.items() if not k.startswith("BYPASS_") and k != "LD_PRELOAD"}
        if preload:
            e.update(LD_PRELOAD=str(preload), BYPASS_SHADOW=shadow.address, BYPASS_SHADOW_TIMEOUT="10")
        e.update(env or {})
        p = subprocess.run([sys.executable, str(probe), base, str(scratch)], env=e, capture_output=True,
                           text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        assert "bypass[" not in p.stderr, p.stderr
        results.append(p.stdout.replace(base, "B"))
    assert results[1].splitlines() == results[0].splitlines()
    assert snapshot(export, times) == snapshot(native, times)
    return results[0].splitlines()


def test_vectored_io_and_space_allocation(agent, shadow, export, tmp_path):
    out = differential(agent, shadow, export, tmp_path, r'''
        fd = os.open(f"{B}/v.txt", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        show("pwritev", lambda: os.pwritev(fd, [b"hel", b"", b"lo world"], 0))
        show("pwritev past the end", lambda: os.pwritev(fd, [b"tail"], 20))
        show("pwritev negative offset", lambda: os.pwritev(fd, [b"x"], -5))
        bufs = [bytearray(3), bytearray(0), bytearray(40)]
        show("preadv", lambda: (os.preadv(fd, bufs, 1), bytes(bufs[0]), bytes(bufs[2])))
        show("offset untouched", lambda: os.lseek(fd, 0, os.SEEK_CUR))
        show("pwritev2 at the offset", lambda: os.pwritev(fd, [b"AB", b"C"], -1, os.RWF_DSYNC))
        show("offset moved", lambda: os.lseek(fd, 0, os.SEEK_CUR))
        b2 = [bytearray(4), bytearray(2)]
        show("preadv2 at the offset", lambda: (os.preadv(fd, b2, -1, os.RWF_DSYNC), bytes(b2[0]), bytes(b2[1])))
        show("writev", lambda: os.writev(fd, [b"1", b"23"]))
        os.lseek(fd, 0, 0)
        r = [bytearray(5), bytearray(5)]
        show("readv", lambda: (os.readv(fd, r), bytes(r[0]), bytes(r[1])))
        show("write(fd, NULL, 0)", lambda: c(libc.write(fd, None, 0)))
        show("posix_fallocate", lambda: os.posix_fallocate(fd, 0, 10000))
        show("size", lambda: os.fstat(fd).st_size)
        fallocate = libc.fallocate64
        fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
        show("punch a hole", lambda: c(fallocate(fd, 3, 2, 4)))
        show("keep size", lambda: c(fallocate(fd, 1, 0, 20000)))
        show("after", lambda: (os.fstat(fd).st_size, os.pread(fd, 12, 0)))
        show("fallocate bad offset", lambda: c(fallocate(fd, 0, -1, 10)))
        rfd = os.open(f"{B}/data/input.txt", os.O_RDONLY)
        show("posix_fallocate read-only", lambda: os.posix_fallocate(rfd, 0, 10))
        show("pwritev read-only", lambda: os.pwritev(rfd, [b"x"], 0))
        ''')
    assert out[0] == "pwritev: 11" and "after: (10000, b'AB\\x00\\x00\\x00\\x00wor123')" in out


def test_kernel_copies_with_remote_ends(agent, shadow, export, tmp_path):
    out = differential(agent, shadow, export, tmp_path, r'''
        src = os.open(f"{B}/data/input.txt", os.O_RDONLY)
        dst = os.open(f"{B}/copy", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        loc = os.open(f"{L}/local", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        show("copy_file_range", lambda: os.copy_file_range(src, dst, 1000))
        show("with offsets", lambda: os.copy_file_range(src, dst, 100, 5000, 2000))
        show("offsets", lambda: (os.lseek(src, 0, 1), os.lseek(dst, 0, 1)))
        show("to a local file", lambda: os.copy_file_range(src, loc, 2000))
        show("from a local file", lambda: os.copy_file_range(loc, dst, 300, 0))
        show("flags", lambda: c(libc.copy_file_range(src, None, dst, None, 10, 1)))
        show("sendfile", lambda: os.sendfile(dst, src, None, 700))
        show("sendfile with an offset", lambda: os.sendfile(loc, src, 100, 50))
        show("sendfile from a local file", lambda: os.sendfile(dst, loc, 0, 64))
        show("offsets after", lambda: (os.lseek(src, 0, 1), os.lseek(dst, 0, 1), os.lseek(loc, 0, 1)))
        a, b = socket.socketpair()
        show("sendfile to a socket", lambda: (os.sendfile(a.fileno(), src, 0, 11), b.recv(100)))
        rp, wp = os.pipe()
        show("splice into a pipe", lambda: (os.splice(src, wp, 20), os.read(rp, 100)))
        show("splice at an offset", lambda: (os.splice(src, wp, 11, offset_src=0), os.read(rp, 100)))
        os.write(wp, b"from the pipe\n")
        show("splice out of a pipe", lambda: os.splice(rp, dst, 100))
        show("splice file to file", lambda: os.splice(src, dst, 10))
        show("splice pipe offset", lambda: os.splice(src, wp, 10, offset_dst=0))
        show("tee", lambda: c(libc.tee(src, wp, 10, 0)))
        os.set_blocking(wp, False)
        try:
            while True:
                os.write(wp, b"x" * 4096)
        except BlockingIOError:
            pass
        show("splice into a full pipe", lambda: os.splice(src, wp, 10, flags=os.SPLICE_F_NONBLOCK))
        show("offset kept", lambda: os.lseek(src, 0, 1))
        show("local file", lambda: open(f"{L}/local", "rb").read())
        show("copy", lambda: open(f"{B}/copy", "rb").read()[-40:])
        ''')
    assert out[0] == "copy_file_range: 1000" and "splice file to file: 'EINVAL'" in out


def test_owners_and_times_of_symlinks_and_descriptor_paths(agent, shadow, export, tmp_path):
    if os.geteuid() != 0:
        pytest.fail("giving files away needs root (the test environment runs as root)")
    differential(agent, shadow, export, tmp_path, r'''
        os.symlink("data/input.txt", f"{B}/lnk")
        show("lchown", lambda: os.lchown(f"{B}/lnk", 1234, 1235))
        show("owners", lambda: (os.lstat(f"{B}/lnk").st_uid, os.lstat(f"{B}/lnk").st_gid, os.stat(f"{B}/lnk").st_uid))
        show("fchownat nofollow", lambda: os.chown(f"{B}/lnk", 4321, -1, follow_symlinks=False))
        show("owner", lambda: os.lstat(f"{B}/lnk").st_uid)
        show("lchown missing", lambda: os.lchown(f"{B}/nope", 1, 1))
        show("utimensat nofollow", lambda: os.utime(f"{B}/lnk", ns=(10**9, 2 * 10**9), follow_symlinks=False))
        show("times", lambda: (os.lstat(f"{B}/lnk").st_mtime_ns, os.stat(f"{B}/lnk").st_mtime_ns == 2 * 10**9))
        fd = os.open(f"{B}/data/sub/a.txt", os.O_RDONLY)
        show("chmod through /proc/self/fd", lambda: os.chmod(f"/proc/self/fd/{fd}", 0o600))
        show("mode", lambda: oct(os.stat(f"{B}/data/sub/a.txt").st_mode))
        show("readlink /proc/self/fd", lambda: os.readlink(f"/proc/self/fd/{fd}"))
        show("stat /dev/fd", lambda: os.stat(f"/dev/fd/{fd}").st_size)
        show("reopen", lambda: os.read(os.open(f"/proc/self/fd/{fd}", os.O_RDONLY), 6))
        show("as a directory", lambda: os.stat(f"/proc/self/fd/{fd}/"))
        d = os.open(f"{B}/data", os.O_RDONLY | os.O_DIRECTORY)
        show("under a directory", lambda: os.stat(f"/proc/self/fd/{d}/sub/a.txt").st_size)
        os.utime(f"{B}/data/sub/a.txt", ns=(5, 7))
        ''', times=True)


def test_unforwarded_kernel_calls_on_a_placeholder_fail(agent, shadow, export, tmp_path):
    """A placeholder is no file: what the agent does not forward must fail, not act on it
    (and what it forwards acts on the remote file)."""
    code = textwrap.dedent(r'''
        import errno, fcntl, os, termios
        fd = os.open("/job/data/input.txt", os.O_RDWR)
        for name, fn in [("ioctl", lambda: fcntl.ioctl(fd, termios.FIONREAD, b"\0" * 4)),
                         ("fsetxattr", lambda: os.setxattr(fd, "user.x", b"1")),
                         ("setxattr", lambda: os.setxattr("/job/data/input.txt", "user.x", b"1")),
                         ("posix_fadvise", lambda: os.posix_fadvise(fd, 0, 10, os.POSIX_FADV_DONTNEED)),
                         ("fdatasync", lambda: os.fdatasync(fd))]:
            try:
                fn()
                print(name, "ok")
            except OSError as e:
                print(name, errno.errorcode[e.errno])
        fcntl.flock(fd, fcntl.LOCK_EX)
        print("flock", fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDWR)
        ''')
    e = dict(os.environ, LD_PRELOAD=str(agent), BYPASS_SHADOW=shadow.address, BYPASS_SHADOW_TIMEOUT="10")
    p = subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == ["ioctl EBADF", "fsetxattr ok", "setxattr ok",
                                     "posix_fadvise EBADF", "fdatasync ok", "flock True"]
    assert os.getxattr(export / "data" / "input.txt", "user.x") == b"1"


def test_nodes_times_and_modes_made_in_the_export(agent, shadow, export, tmp_path):
    if os.geteuid() != 0:
        pytest.fail("device nodes need root (the test environment runs as root)")
    differential(agent, shadow, export, tmp_path, r'''
        import stat
        show("mkfifo", lambda: os.mkfifo(f"{B}/fifo", 0o640))
        show("mkfifo again", lambda: os.mkfifo(f"{B}/fifo"))
        show("mknod fifo", lambda: os.mknod(f"{B}/data/fifo2", stat.S_IFIFO | 0o600))
        show("mknod char device", lambda: os.mknod(f"{B}/null", stat.S_IFCHR | 0o600, os.makedev(1, 3)))
        show("device", lambda: (lambda st: (stat.S_ISCHR(st.st_mode), os.major(st.st_rdev), os.minor(st.st_rdev)))(os.stat(f"{B}/null")))
        show("O_PATH of a fifo", lambda: stat.S_ISFIFO(os.fstat(os.open(f"{B}/fifo", os.O_PATH)).st_mode))
        show("O_PATH of a directory", lambda: stat.S_ISDIR(os.fstat(os.open(f"{B}/data/", os.O_PATH | os.O_DIRECTORY)).st_mode))
        d = os.open(f"{B}/data", os.O_RDONLY | os.O_DIRECTORY)
        show("mkfifoat", lambda: os.mkfifo("fifo3", 0o600, dir_fd=d))
        show("mknodat in a missing directory", lambda: os.mknod("nope/x", stat.S_IFIFO | 0o600, dir_fd=d))
        os.symlink("data/input.txt", f"{B}/lnk")
        show("lchmod a symlink", lambda: c(libc.lchmod(f"{B}/lnk".encode(), 0o600)))
        show("lchmod a file", lambda: c(libc.lchmod(f"{B}/data/input.txt".encode(), 0o604)))
        class utimbuf(ctypes.Structure):
            _fields_ = [("actime", ctypes.c_long), ("modtime", ctypes.c_long)]
        class timeval(ctypes.Structure):
            _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]
        show("utime", lambda: c(libc.utime(f"{B}/data/sub/a.txt".encode(), ctypes.byref(utimbuf(100, 200)))))
        tv = (timeval * 2)(timeval(300, 5), timeval(400, 6))
        show("utimes", lambda: c(libc.utimes(f"{B}/data/input.txt".encode(), tv)))
        show("lutimes", lambda: c(libc.lutimes(f"{B}/lnk".encode(), tv)))
        bad = (timeval * 2)(timeval(1, 2000000), timeval(1, 0))
        show("utimes bad usec", lambda: c(libc.utimes(f"{B}/data/input.txt".encode(), bad)))
        fd = os.open(f"{B}/data/sub", os.O_RDONLY)
        show("futimes", lambda: c(libc.futimes(fd, tv)))
        show("futimesat", lambda: c(libc.futimesat(d, b"sub/a.txt", tv)))
        show("times", lambda: [os.lstat(f"{B}/{p}").st_mtime_ns for p in ("lnk", "data/input.txt", "data/sub", "data/sub/a.txt")])
        stdout = ctypes.c_void_p.in_dll(libc, "stdout")
        out = libc.freopen(f"{B}/reopened.txt".encode(), b"w", stdout)
        libc.printf(b"through stdio %d\n", 42)
        libc.fflush(None)
        print("and from python", bool(out), flush=True)
        for p in ("fifo", "null", "data/fifo2", "data/fifo3", "reopened.txt", "data"):
            os.utime(f"{B}/{p}", ns=(5, 7))
        ''', times=True)
    assert (export / "reopened.txt").read_text() == "through stdio 42\nand from python True\n"


def agent_env(agent, shadow, **more):
    e = {k: v for k, v in os.environ.items() if not k.startswith("BYPASS_") and k != "LD_PRELOAD"}
    e.update(LD_PRELOAD=str(agent), BYPASS_SHADOW=shadow.address, BYPASS_SHADOW_TIMEOUT="10", **more)
    return e


def test_fifos_and_sockets_under_job_fail_clearly(agent, shadow, export):
    code = textwrap.dedent(r'''
        import errno, os, socket
        os.chdir("/job/data")
        os.mkfifo("f")
        for name, fn in [("open fifo", lambda: os.open("f", os.O_RDONLY | os.O_NONBLOCK)),
                         ("bind relative", lambda: socket.socket(socket.AF_UNIX).bind("s.sock")),
                         ("bind absolute", lambda: socket.socket(socket.AF_UNIX).bind("/job/s.sock")),
                         ("connect missing", lambda: socket.socket(socket.AF_UNIX).connect("/job/none")),
                         ("connect fifo", lambda: socket.socket(socket.AF_UNIX).connect("f")),
                         ("abstract", lambda: socket.socket(socket.AF_UNIX).bind("\0bypass-test-%d" % os.getpid()))]:
            try:
                fn()
                print(name, "ok")
            except OSError as e:
                print(name, errno.errorcode[e.errno])
        ''')
    p = subprocess.run([sys.executable, "-c", code], env=agent_env(agent, shadow), capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == ["open fifo ENXIO", "bind relative EADDRNOTAVAIL", "bind absolute EADDRNOTAVAIL",
                                     "connect missing ENOENT", "connect fifo ECONNREFUSED", "abstract ok"]
    assert stat.S_ISFIFO((export / "data" / "f").lstat().st_mode)


def test_freopen_of_a_stream_over_a_remote_file(agent, shadow, export, tmp_path):
    """A stream over a /job file is the agent's cookie stream, which glibc's freopen cannot
    reuse (it crashed): stdout made remote can be sent to another /job file or to a local one
    and back, in freopen's mode ("w+" reads back: conform's freopen_std); another such stream
    fails ENOTSUP, after the new path's own error, and stays usable (agents/remote/README.md)."""
    local = tmp_path / "local.txt"
    code = textwrap.dedent(r'''
        import ctypes, errno, sys
        libc = ctypes.CDLL(None, use_errno=True)
        libc.fopen.restype = libc.freopen.restype = ctypes.c_void_p
        libc.freopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p]
        libc.fputs.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
        libc.fflush.argtypes = libc.fclose.argtypes = [ctypes.c_void_p]
        libc.fgets.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_void_p]
        libc.rewind.argtypes = [ctypes.c_void_p]
        stdout = ctypes.c_void_p.in_dll(libc, "stdout")
        def reopen(path, mode, stream):
            r = libc.freopen(path, mode, stream)
            return "ok" if r else errno.errorcode[ctypes.get_errno()]
        out = []
        for path in (b"/job/data/o1", b"/job/data/o2", sys.argv[1].encode(), b"/job/data/o3"):
            out.append(reopen(path, b"w", stdout))
            libc.fputs(b"to " + path + b"\n", stdout)
            libc.fflush(stdout)
        line = ctypes.create_string_buffer(64)
        out.append(reopen(b"/job/data/o4", b"w+", stdout))
        libc.fputs(b"read back\n", stdout)
        libc.fflush(stdout)
        libc.rewind(stdout)
        out.append(libc.fgets(line, 64, stdout) is not None and line.value.decode())
        f = libc.fopen(b"/job/data/input.txt", b"r")
        out.append(reopen(b"/etc/hostname", b"r", f))
        out.append(reopen(b"/job/data/o1", b"r", f))
        out.append(reopen(None, b"r", f))
        out.append(reopen(b"/job/data/o1", b"q", f))
        out.append(reopen(b"/job/nowhere/o5", b"w", f))
        out.append(reopen(sys.argv[1].encode() + b".d/o5", b"w", f))
        out.append(libc.fgets(line, 64, f) is not None and line.value.decode())
        sys.stderr.write(repr(out))
        ''')
    p = subprocess.run([sys.executable, "-c", code, str(local)], env=agent_env(agent, shadow),
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    first = (export / "data" / "input.txt").read_text().splitlines(keepends=True)[0]
    assert eval(p.stderr) == ["ok"] * 5 + ["read back\n"] + ["ENOTSUP", "ENOTSUP", "ENOTSUP", "EINVAL"] + \
        ["ENOENT", "ENOENT", first]
    assert [(export / "data" / n).read_text() for n in ("o1", "o2", "o3", "o4")] == \
        ["to /job/data/o1\n", "to /job/data/o2\n", "to /job/data/o3\n", "read back\n"]
    assert local.read_text() == f"to {local}\n"
    assert not (export / "nowhere").exists()
    for n in ("o1", "o2", "o3", "o4"):
        (export / "data" / n).unlink()


def test_remote_cwd_in_a_fork_of_a_fork_and_a_private_marker(agent, shadow, export):
    p = subprocess.run(["sh", "-c", "cd /job && x=$(mkdir lost | cat); mkdir kept; (cd data && (mkdir deep; pwd))"],
                       env=agent_env(agent, shadow), capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout == "/job/data\n"
    assert (export / "lost").is_dir() and (export / "kept").is_dir() and (export / "data" / "deep").is_dir()
    marker = Path(shadow.address[len("unix:"):] + ".cwd")
    assert marker.is_dir() and list(marker.iterdir()) == [] and stat.S_IMODE(marker.stat().st_mode) & 0o222 == 0
    assert not os.path.exists("/tmp/.bypass-remote-cwd/lost")


def test_the_marker_goes_with_its_shadow(agent, export, tmp_path):
    from .test_remote_agent import make_server, SPEC
    runs = []
    for i in range(2):
        root = tmp_path / f"export{i}"
        root.mkdir()
        server = make_server(SPEC, str(root))
        server.listen()
        server.start()
        runs.append((server, root))
    try:
        procs = [subprocess.Popen(["sh", "-c", f"cd /job && mkfifo f{i} && readlink /proc/$$/cwd && sleep 0.5"],
                                  env=agent_env(agent, server), stdout=subprocess.PIPE, text=True)
                 for i, (server, _) in enumerate(runs)]
        outs = [p.communicate(timeout=60)[0] for p in procs]
        assert all(p.returncode == 0 for p in procs)
        markers = [server.address[len("unix:"):] + ".cwd" for server, _ in runs]
        assert outs == [m + "\n" for m in markers] and markers[0] != markers[1]
        assert [sorted(os.listdir(root)) for _, root in runs] == [["f0"], ["f1"]]
    finally:
        for server, _ in runs:
            server.close()
    assert not any(os.path.exists(m) for m in markers)


SPAWNER = r'''
import os, subprocess, sys
os.chdir("/job/data")
print(subprocess.run(["pwd"], cwd="/job/data/sub", capture_output=True, text=True).stdout.strip())
print(subprocess.run(["sh", "-c", "pwd; echo made > here.txt"], cwd="sub", capture_output=True, text=True).stdout.strip())
print(os.getcwd())
with open("rel.txt", "w") as f:
    f.write("parent\n")
with open("/job/child-out.txt", "w") as out:
    subprocess.run(["echo", "from the child"], stdout=out, check=True)
    subprocess.run(["sh", "-c", "echo to stderr >&2"], stderr=out, check=True)
print("parent still writes to its own stdout", flush=True)
os.write(1, b"and fd 1 is local\n")
sys.stderr.write("and stderr too\n")
'''


def test_subprocess_cwd_and_redirections_leave_the_parent_alone(agent, shadow, export):
    p = subprocess.run([sys.executable, "-c", SPAWNER], env=agent_env(agent, shadow), capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == ["/job/data/sub", "/job/data/sub", "/job/data",
                                     "parent still writes to its own stdout", "and fd 1 is local"]
    assert p.stderr == "and stderr too\n"
    assert (export / "data" / "rel.txt").read_text() == "parent\n"
    assert (export / "data" / "sub" / "here.txt").read_text() == "made\n"
    assert (export / "child-out.txt").read_text() == "from the child\nto stderr\n"


def test_errors_match_the_kernel(agent, shadow, export, tmp_path):
    """Path shapes, bad pointers and descriptors, sizes: the kernel's answers, not crashes."""
    out = differential(agent, shadow, export, tmp_path, r'''
        import resource, stat, tempfile
        os.chdir(B)
        BAD = ctypes.c_void_p(1)
        buf = ctypes.create_string_buffer(512)
        show("stat(bad path)", lambda: c(libc.stat(BAD, buf)))
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
        NONE = ctypes.c_void_p(libc.mmap(None, 4096, 0, 0x22, -1, 0))      # PROT_NONE, private anonymous
        show("stat(PROT_NONE path)", lambda: c(libc.stat(NONE, buf)))
        show("rename(PROT_NONE path)", lambda: c(libc.rename(NONE, b"data/x")))
        show("statx(PROT_NONE path)", lambda: c(libc.statx(-100, NONE, 0, 0xfff, buf)))
        libc.getwd.restype = libc.get_current_dir_name.restype = ctypes.c_char_p
        show("getwd", lambda: libc.getwd(ctypes.create_string_buffer(4096)))
        show("get_current_dir_name", lambda: libc.get_current_dir_name())
        os.symlink("nowhere", "dangling")
        show("lchown dangling//", lambda: os.lchown("dangling//", 1, 1))
        os.makedirs("rp/a/b")
        os.symlink("a/b", "rp/lnk")
        os.symlink("../../rp", "rp/a/up")
        libc.realpath.restype = libc.canonicalize_file_name.restype = ctypes.c_char_p
        show("realpath through links", lambda: libc.realpath(b"rp/lnk/..", None))
        show("realpath up and back", lambda: libc.realpath(b"rp/a/up/lnk/../b/./", ctypes.create_string_buffer(4096)))
        show("realpath dangling", lambda: c(-1 if libc.realpath(b"dangling", None) is None else 0))
        show("realpath file/", lambda: c(-1 if libc.realpath(b"data/input.txt/", None) is None else 0))
        show("canonicalize_file_name", lambda: libc.canonicalize_file_name(b"./rp//lnk"))
        show("open(bad path)", lambda: c(libc.open(BAD, 0)))
        show("stat(bad buffer)", lambda: c(libc.stat(b"data/input.txt", BAD)))
        fd = os.open("data/input.txt", os.O_RDWR)
        show("fstat(bad buffer)", lambda: c(libc.fstat(fd, BAD)))
        show("read(bad buffer)", lambda: c(libc.read(fd, BAD, 10)))
        show("write(bad buffer)", lambda: c(libc.write(fd, BAD, 10)))
        show("write(NULL, 0)", lambda: c(libc.write(fd, None, 0)))
        show("stat('')", lambda: os.stat(""))
        show("open('')", lambda: os.open("", os.O_RDONLY))
        show("scandir('')", lambda: c(libc.scandir(b"", ctypes.byref(ctypes.c_void_p()), None, None)))
        show("mkdir('')", lambda: os.mkdir(""))
        show("stat file/", lambda: os.stat("data/input.txt/"))
        show("unlink file/", lambda: os.unlink("data/sub/a.txt/"))
        show("rmdir file/", lambda: os.rmdir("data/sub/a.txt/"))
        show("rename file/", lambda: os.rename("data/sub/a.txt/", "x"))
        show("rename to file/", lambda: os.rename("data/sub/a.txt", "y/"))
        os.symlink("data/sub", "dirlink")
        os.symlink("data/input.txt", "filelink")
        show("lstat dirlink/", lambda: stat.S_ISDIR(os.lstat("dirlink/").st_mode))
        show("lstat filelink/", lambda: os.lstat("filelink/"))
        show("unlink filelink/", lambda: os.unlink("filelink/"))
        show("mkdir new/", lambda: os.mkdir("newdir/"))
        show("symlink to new/", lambda: os.symlink("x", "newlink/"))
        show("link to new/", lambda: os.link("data/input.txt", "hardlink/"))
        show("open creat new/", lambda: os.open("newfile/", os.O_CREAT | os.O_WRONLY, 0o644))
        show("stat bad dirfd", lambda: os.stat("x", dir_fd=9999))
        show("rename bad dirfd", lambda: os.rename("x", "data/y", src_dir_fd=9999))
        show("link bad dirfd", lambda: os.link("data/input.txt", "z", dst_dir_fd=9999))
        show("rename non-directory dirfd", lambda: os.rename("x", "data/y", src_dir_fd=fd))
        import struct
        show("statfs type and ST_VALID", lambda: (c(libc.statfs(b"data", buf)), struct.unpack_from("l", buf.raw, 0)[0],
                                                  struct.unpack_from("l", buf.raw, 80)[0]))
        show("getcwd(buf, 0)", lambda: c(0 if libc.getcwd(buf, 0) else -1))
        libc.getcwd.restype = ctypes.c_char_p
        show("getcwd(NULL, 0)", lambda: libc.getcwd(None, 0))
        show("getcwd(NULL, 2)", lambda: c(-1 if libc.getcwd(None, 2) is None else 0))
        top = resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 1
        show("dup2 to the highest", lambda: os.dup2(fd, top) == top)
        show("dup2 beyond", lambda: os.dup2(fd, top + 1))
        show("read through it", lambda: os.pread(top, 10, 0))
        show("typed create mode", lambda: oct(os.fstat(os.open("typed", os.O_CREAT | os.O_WRONLY, stat.S_IFREG | 0o640)).st_mode))
        t = os.open(".", os.O_TMPFILE | os.O_RDWR, 0o600)
        show("O_TMPFILE", lambda: (os.write(t, b"temporary"), os.pread(t, 20, 0), stat.S_ISREG(os.fstat(t).st_mode)))
        with tempfile.TemporaryFile(dir=B) as f:
            f.write(b"abc")
            f.seek(0)
            show("TemporaryFile", lambda: f.read())
        long = "d" * 200
        deep = "/".join([long] * 20)
        os.makedirs(deep)
        os.chdir(deep)
        show("relative beyond PATH_MAX", lambda: (os.mkdir(long), os.stat(long + "/" + ".").st_nlink))
        show("absolute at PATH_MAX", lambda: os.stat(B + "/" + "x/" * 2048))
        os.chdir(B)
        import shutil
        shutil.rmtree(long)              # (descriptor-relative all the way down)
        class statx_ts(ctypes.Structure):
            _fields_ = [("sec", ctypes.c_int64), ("nsec", ctypes.c_uint32), ("pad", ctypes.c_int32)]
        class statx(ctypes.Structure):
            _fields_ = [("mask", ctypes.c_uint32), ("blksize", ctypes.c_uint32), ("attrs", ctypes.c_uint64),
                        ("nlink", ctypes.c_uint32), ("uid", ctypes.c_uint32), ("gid", ctypes.c_uint32),
                        ("mode", ctypes.c_uint16), ("pad", ctypes.c_uint16), ("ino", ctypes.c_uint64),
                        ("size", ctypes.c_uint64), ("blocks", ctypes.c_uint64), ("amask", ctypes.c_uint64),
                        ("atime", statx_ts), ("btime", statx_ts), ("ctime", statx_ts), ("mtime", statx_ts),
                        ("spare", ctypes.c_uint64 * 16)]   # struct statx is 256 bytes
        sx = statx()
        import time
        show("statx btime", lambda: (c(libc.statx(-100, b"typed", 0, 0xfff, ctypes.byref(sx))), bool(sx.mask & 0x800),
                                     abs(sx.btime.sec - time.time()) < 3600))
        os.utime(".", ns=(5, 7))
        ''')
    assert "stat(bad path): 'EFAULT'" in out and "relative beyond PATH_MAX: (None, 2)" in out


def test_absolute_symlinks_into_job_resolve_in_the_export(agent, shadow, export):
    os.symlink("/job/data/input.txt", export / "abs")
    os.symlink("/job/data", export / "data" / "sub" / "up")
    os.symlink("/jobless/x", export / "other")
    p = subprocess.run(["sh", "-c", "head -1 /job/abs; cat /job/data/sub/up/sub/a.txt; ls /job/data/sub/up/sub; "
                        "readlink /job/abs; ln -s /job/data/sub/a.txt /job/mine && cat /job/mine; "
                        "cd /job/data/sub/up && cat sub/a.txt; cat /job/other"],
                       env=agent_env(agent, shadow), capture_output=True, text=True, timeout=60)
    assert p.stdout.splitlines() == ["line 00000", "needle in a", "a.txt", "b.txt", "up", "/job/data/input.txt",
                                     "needle in a", "needle in a"]
    assert p.returncode != 0 and "/job/other" in p.stderr
    assert os.readlink(export / "mine") == "/job/data/sub/a.txt"


def test_the_programs_umask_applies(agent, shadow, export, tmp_path):
    differential(agent, shadow, export, tmp_path, r'''
        import stat, tempfile
        os.umask(0o027)
        show("open", lambda: os.close(os.open(f"{B}/u-file", os.O_CREAT | os.O_WRONLY, 0o666)))
        show("mkdir", lambda: os.mkdir(f"{B}/u-dir", 0o777))
        show("mkfifo", lambda: os.mkfifo(f"{B}/u-fifo", 0o666))
        show("mkstemp", lambda: tempfile.mkstemp(dir=f"{B}/u-dir") and None)
        show("umask back", lambda: oct(os.umask(0)))
        show("open 0", lambda: os.close(os.open(f"{B}/u-zero", os.O_CREAT | os.O_WRONLY, 0o666)))
        show("modes", lambda: [oct(os.stat(f"{B}/{p}").st_mode) for p in ("u-file", "u-dir", "u-fifo", "u-zero")])
        for n in os.listdir(f"{B}/u-dir"):
            os.rename(f"{B}/u-dir/{n}", f"{B}/u-dir/tmp")
        ''')


CREDENTIALS = r'''
    import stat
    def tree():
        return sorted((p, oct(os.lstat(f"{B}/{p}").st_mode), os.lstat(f"{B}/{p}").st_uid,
                       os.lstat(f"{B}/{p}").st_gid) for p in ("open", "open/mine", "suid", "pub"))
    os.setegid(65534)
    os.seteuid(65534)
    show("read secret", lambda: open(f"{B}/secret").read())
    show("read pub", lambda: open(f"{B}/pub").read())
    show("create in locked", lambda: open(f"{B}/locked/x", "w"))
    show("create in open", lambda: open(f"{B}/open/mine", "w").write("mine"))
    show("write suid", lambda: open(f"{B}/suid", "a").write("more"))
    show("chmod pub", lambda: os.chmod(f"{B}/pub", 0o666))
    show("chown mine", lambda: os.chown(f"{B}/open/mine", 0, 0))
    show("unlink in sticky", lambda: os.unlink(f"{B}/open/roots"))
    show("tree", tree)
    os.seteuid(0)
    os.setegid(0)
    show("root again", lambda: (open(f"{B}/secret").read(), os.chmod(f"{B}/pub", 0o640)))
    pid = os.fork()
    if pid == 0:
        os.setgid(65534)
        os.setuid(65534)
        show("child reads pub", lambda: open(f"{B}/pub").read())
        show("child reads secret", lambda: open(f"{B}/secret").read())
        show("child creates", lambda: open(f"{B}/open/child", "w").write("c"))
        show("child owner", lambda: (os.stat(f"{B}/open/child").st_uid, os.stat(f"{B}/open/child").st_gid))
        os._exit(0)
    os.waitpid(pid, 0)
'''


def test_a_root_shadow_acts_with_the_callers_credentials(agent, tmp_path):
    """seteuid(65534) in the program: the shadow (root) checks, owns and clears as 65534."""
    if os.geteuid() != 0:
        pytest.fail("this test needs root (the test environment runs as root)")
    from .test_remote_agent import make_server, SPEC
    top = Path(tempfile.mkdtemp(prefix="bypass-creds-"))     # traversable by 65534, unlike tmp_path
    try:
        os.chmod(top, 0o755)
        export = top / "export"
        (export / "locked").mkdir(parents=True)
        (export / "open").mkdir()
        os.chmod(export / "open", 0o1777)
        (export / "open" / "roots").write_text("root's")
        (export / "secret").write_text("secret")
        os.chmod(export / "secret", 0o600)
        (export / "pub").write_text("public")
        (export / "suid").write_text("x")
        os.chmod(export / "suid", 0o4777)
        server = make_server(SPEC, str(export))
        server.listen()
        server.start()
        try:
            assert server.as_caller
            out = differential(agent, server, export, top, CREDENTIALS)
        finally:
            server.close()
        assert "read secret: 'EACCES'" in out and "child reads secret: 'EACCES'" in out
        assert "child owner: (65534, 65534)" in out
    finally:
        shutil.rmtree(top)


def test_shared_writable_mappings_are_written_back(agent, shadow, export, tmp_path):
    out = differential(agent, shadow, export, tmp_path, r'''
        import mmap
        fd = os.open(f"{B}/m.bin", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        os.ftruncate(fd, 10000)
        m = mmap.mmap(fd, 10000, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        m[0:5] = b"hello"
        m.flush()
        show("after msync", lambda: os.pread(fd, 5, 0))
        os.pwrite(fd, b"ZZ", 100)                      # a write() between map and write-back
        m[5000:5005] = b"world"
        m.close()
        show("after munmap", lambda: (os.pread(fd, 5, 5000), os.pread(fd, 2, 100)))
        g = os.open(f"{B}/m.bin", os.O_RDWR)
        m2 = mmap.mmap(g, 4096, mmap.MAP_SHARED, offset=4096)
        os.close(g)
        m2[10:12] = b"XY"
        del m2
        show("mapped at an offset, closed first", lambda: os.pread(fd, 2, 4106))
        ro = os.open(f"{B}/m.bin", os.O_RDONLY)
        show("shared writable of a read-only descriptor", lambda: mmap.mmap(ro, 100, mmap.MAP_SHARED))
        m3 = mmap.mmap(fd, 0, mmap.MAP_SHARED)
        m3[-3:] = b"end"
        os.close(fd)
        ''')
    assert "after munmap: (b'world', b'ZZ')" in out
    assert (export / "m.bin").read_bytes()[-3:] == b"end"


def test_cp_into_an_existing_remote_directory(agent, shadow, export, tmp_path):
    """cp opens its target directory O_PATH and copies relative to it."""
    (tmp_path / "src" / "deep").mkdir(parents=True)
    (tmp_path / "src" / "deep" / "f").write_text("copied\n")
    p = subprocess.run(["sh", "-c", f"mkdir /job/t && cp -r {tmp_path}/src /job/t/ && ls /job/t"],
                       env=agent_env(agent, shadow), capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout == "src\n" and (export / "t" / "src" / "deep" / "f").read_text() == "copied\n"


THREADED_SPAWNER = r'''
import os, subprocess, threading
def spin():
    for i in range(300):
        os.stat("/job/bin/s.sh")
threads = [threading.Thread(target=spin) for _ in range(2)]
for t in threads:
    t.start()
for i in range(8):
    print(subprocess.run(["/job/bin/s.sh", str(i)], cwd="/job/bin", capture_output=True, text=True).stdout.strip())
for t in threads:
    t.join()
print(os.getcwd())
'''


def test_vfork_children_borrow_the_connection_while_threads_use_it(agent, shadow, export):
    """subprocess (vfork) runs a /job program, which must be staged through the shadow from
    the child, while other threads of the parent keep calling."""
    (export / "bin").mkdir()
    (export / "bin" / "s.sh").write_text('#!/bin/sh\necho "ran in $(pwd) with $1"\n')
    (export / "bin" / "s.sh").chmod(0o755)
    p = subprocess.run([sys.executable, "-c", "import os; os.chdir('/job'); exec(open(0).read())"],
                       input=THREADED_SPAWNER, env=agent_env(agent, shadow), capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == [f"ran in /job/bin with {i}" for i in range(8)] + ["/job"]
    assert "bypass[" not in p.stderr


FSX = Path(__file__).resolve().parent / "data" / "fsx.py"


@pytest.mark.parametrize("seed", [11, 12])
def test_random_operations_leave_the_bytes_a_local_file_would(agent, shadow, export, tmp_path, seed):
    """(15,000 operations per seed here; the issue's 100,000 take ~35 s through the shadow)"""
    native = subprocess.run([sys.executable, str(FSX), str(tmp_path / "f"), str(seed), "15000"],
                            capture_output=True, text=True, timeout=300)
    assert native.returncode == 0, native.stderr
    remote = subprocess.run([sys.executable, str(FSX), "/job/f", str(seed), "15000"], env=agent_env(agent, shadow),
                            capture_output=True, text=True, timeout=300)
    assert remote.returncode == 0, remote.stderr
    assert remote.stdout == native.stdout and len(native.stdout.split()) == 3
    assert (export / "f").read_bytes() == (tmp_path / "f").read_bytes()


def test_real_programs_leave_what_they_leave_natively(agent, shadow, export, tmp_path):
    """git clone, sqlite3 in WAL mode, compileall, command substitutions and pipelines: their
    results under /job are those of the same script on a local copy."""
    repo = tmp_path / "origin"
    (repo / "src").mkdir(parents=True)
    (repo / "src" / "a.c").write_text("int main(void) { return 0; }\n")
    (repo / "run.sh").write_text("#!/bin/sh\necho run\n")
    (repo / "run.sh").chmod(0o755)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", "-C", str(repo)]
    for cmd in (["init", "-q"], ["add", "."], ["commit", "-qm", "first"]):
        assert subprocess.run(git + cmd, capture_output=True).returncode == 0

    def script(p):
        return (f"cd {p} && git clone -q {repo} repo && (cd repo && git status --porcelain && "
                f"git log --format=%s -1 && ./run.sh) > git.txt && "
                "sqlite3 w.db 'pragma journal_mode=wal; create table t(a); insert into t values (1),(2),(3);' "
                ">/dev/null && sqlite3 w.db 'select sum(a) from t' > sql.txt && "
                "mkdir py && printf 'x = 1\\n' > py/m.py && python3 -m compileall -q py && "
                "ls py/__pycache__ | sed 's/[0-9]//g' > pyc.txt && "
                "n=$(grep -c 9 data/input.txt | tr -d ' '); echo \"nines $n\" > subst.txt && "
                "for f in $(ls data | sort); do echo \"$f $(cat data/$f 2>/dev/null | wc -c)\"; done >> subst.txt && "
                "cat data/input.txt | sort -r | head -3 | tr a-z A-Z >> subst.txt")

    native = tmp_path / "native"
    shutil.copytree(export, native, symlinks=True)
    p = subprocess.run(["sh", "-c", script(native)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    p = subprocess.run(["sh", "-c", script("/job")], env=agent_env(agent, shadow), capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    for name in ("git.txt", "sql.txt", "pyc.txt", "subst.txt"):
        assert (export / name).read_text() == (native / name).read_text(), name
    assert snapshot(export / "repo" / "src") == snapshot(native / "repo" / "src")
    assert (export / "git.txt").read_text() == "first\nrun\n"


def test_extended_attributes(agent, shadow, export, tmp_path):
    differential(agent, shadow, export, tmp_path, r'''
        f = f"{B}/data/input.txt"
        os.symlink("data/input.txt", f"{B}/lnk")
        show("none yet", lambda: os.listxattr(f))
        show("get missing", lambda: os.getxattr(f, "user.a"))
        show("set", lambda: os.setxattr(f, "user.a", b"value one"))
        show("create again", lambda: os.setxattr(f, "user.a", b"x", os.XATTR_CREATE))
        show("replace missing", lambda: os.setxattr(f, "user.b", b"x", os.XATTR_REPLACE))
        show("through the link", lambda: os.setxattr(f"{B}/lnk", "user.b", b"two"))
        show("on the link itself", lambda: os.setxattr(f"{B}/lnk", "user.c", b"x", follow_symlinks=False))
        show("list", lambda: sorted(os.listxattr(f)))
        show("list the link itself", lambda: os.listxattr(f"{B}/lnk", follow_symlinks=False))
        show("link/", lambda: os.listxattr(f"{B}/lnk/", follow_symlinks=False))
        fd = os.open(f, os.O_RDONLY)
        show("fget", lambda: os.getxattr(fd, "user.b"))
        buf = ctypes.create_string_buffer(4)
        show("too small", lambda: c(libc.getxattr(f.encode(), b"user.a", buf, 4)))
        show("size only", lambda: c(libc.getxattr(f.encode(), b"user.a", None, 0)))
        show("list size only", lambda: c(libc.listxattr(f.encode(), None, 0)))
        show("remove", lambda: os.removexattr(f, "user.a"))
        show("remove missing", lambda: os.removexattr(f, "user.a"))
        show("after", lambda: [(n, os.getxattr(f, n)) for n in sorted(os.listxattr(f))])
        show("missing file", lambda: os.listxattr(f"{B}/nope"))
        ''')


EXECVEAT = r'''
import ctypes, os, sys
os.chdir("/job/bin")
libc = ctypes.CDLL(None, use_errno=True)
argv = (ctypes.c_char_p * 3)(b"s.sh", sys.argv[1].encode(), None)
envp = (ctypes.c_char_p * 1)(None)
if sys.argv[1] == "relative":
    libc.execveat(-100, b"./s.sh", argv, envp, 0)
else:
    # (inheritable: a script's interpreter reads it through /dev/fd/N after the exec)
    fd = os.open("/job/bin/s.sh", os.O_RDONLY)
    os.set_inheritable(fd, True)
    libc.execveat(fd, b"", argv, envp, 0x1000)   # AT_EMPTY_PATH
print("execveat failed", ctypes.get_errno())
'''


def test_execveat_of_a_remote_program(agent, shadow, export):
    (export / "bin").mkdir()
    (export / "bin" / "s.sh").write_text('#!/bin/sh\necho "ran in $(pwd) with $1"\n')
    (export / "bin" / "s.sh").chmod(0o755)
    for how in ("relative", "descriptor"):
        p = subprocess.run([sys.executable, "-c", EXECVEAT, how], env=agent_env(agent, shadow),
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        assert p.stdout == f"ran in /job/bin with {how}\n"


def test_descriptor_calls_found_by_later_conform_seeds(agent, shadow, export, tmp_path):
    """conform seed 301: a NULL path with AT_EMPTY_PATH is the descriptor's file to statx and
    fstatat (Linux 6.11 on; EFAULT without the flag), and glibc's utimensat refuses any NULL
    path with EINVAL.  The agent answered the local placeholder's stat, and changed times.
    Seed 323: glibc's opendir opens with O_NONBLOCK, which F_GETFL of dirfd() shows.  Seed
    350: record locks and F_SETFL on an O_PATH descriptor are EBADF before the lock is read.
    Seed 351: freopen reads its mode before the path (EINVAL, not ENAMETOOLONG).  Seed 417:
    fchownat(AT_FDCWD, "", AT_EMPTY_PATH) changes the current directory itself.  Seeds 25 and
    108 (after conform's stream steps came): fchownat of an O_PATH descriptor by "", getdents
    of a removed directory, fexecve of an O_PATH descriptor of a symlink.  Seed 260: futimens
    with both times UTIME_OMIT is 0 before the descriptor is looked at (an O_PATH one too)."""
    differential(agent, shadow, export, tmp_path, r'''
        import struct
        os.chdir(B)
        fd = os.open("data/input.txt", os.O_RDONLY)
        new = os.open("data/new", os.O_RDWR | os.O_CREAT | os.O_NONBLOCK, 0o444)
        sx, st = ctypes.create_string_buffer(256), ctypes.create_string_buffer(256)
        def statx_null(d, flags):
            c(libc.statx(d, None, flags, 0x7ff, sx))
            nlink, uid, gid, mode = struct.unpack_from("IIIH", sx.raw, 16)
            return oct(mode), nlink, uid, struct.unpack_from("Q", sx.raw, 40)[0]
        def fstatat_null(d, flags):
            c(libc.fstatat(d, None, st, flags))
            nlink, mode, uid = struct.unpack_from("QII", st.raw, 16)
            return oct(mode), nlink, uid, struct.unpack_from("q", st.raw, 48)[0]
        for d, name in ((fd, "input.txt"), (new, "a new 0444 file")):
            show(f"statx NULL AT_EMPTY_PATH, {name}", lambda: statx_null(d, 0x1000))
            show(f"statx NULL, {name}", lambda: statx_null(d, 0))
            show(f"fstatat NULL AT_EMPTY_PATH, {name}", lambda: fstatat_null(d, 0x1000))
            show(f"fstatat NULL, {name}", lambda: fstatat_null(d, 0))
        ts = (ctypes.c_long * 4)(300000000, 0, 300000000, 0)
        show("utimensat NULL", lambda: c(libc.utimensat(fd, None, ts, 0)))
        show("utimensat NULL NOFOLLOW", lambda: c(libc.utimensat(fd, None, ts, 0x100)))
        show("mtime after", lambda: os.stat("data/input.txt").st_mtime_ns != 300000000 * 10**9)
        libc.opendir.restype = ctypes.c_void_p
        stream = ctypes.c_void_p(libc.opendir(b"data/sub"))
        show("F_GETFL of an opendir stream", lambda: hex(fcntl.fcntl(c(libc.dirfd(stream)), fcntl.F_GETFL)))
        path_fd = os.open("data/input.txt", os.O_PATH)
        unlocked = struct.pack("hhqqi", fcntl.F_UNLCK, 0, 10, 100, 0)
        for name, cmd in (("F_GETLK", fcntl.F_GETLK), ("F_SETLK", fcntl.F_SETLK), ("F_OFD_GETLK", 36)):
            show(f"{name} F_UNLCK on O_PATH", lambda: fcntl.fcntl(path_fd, cmd, unlocked))
        show("F_SETFL on O_PATH", lambda: fcntl.fcntl(path_fd, fcntl.F_SETFL, os.O_NONBLOCK))
        show("F_GETFL on O_PATH", lambda: hex(fcntl.fcntl(path_fd, fcntl.F_GETFL)))
        OMIT = (1 << 30) - 2
        show("futimens UTIME_OMIT twice on O_PATH", lambda: c(libc.futimens(path_fd, (ctypes.c_long * 4)(0, OMIT, 0, OMIT))))
        show("futimens one time on O_PATH", lambda: c(libc.futimens(path_fd, (ctypes.c_long * 4)(0, OMIT, 5, 0))))
        # every descriptor call on an O_PATH descriptor: what the kernel allows, and EBADF
        buf = ctypes.create_string_buffer(64)
        for name, call in (
                ("fsync", lambda: os.fsync(path_fd)), ("fdatasync", lambda: os.fdatasync(path_fd)),
                ("ftruncate", lambda: os.ftruncate(path_fd, 0)), ("fchmod", lambda: os.fchmod(path_fd, 0o600)),
                ("fchown", lambda: os.fchown(path_fd, 0, 0)), ("fstatvfs", lambda: os.fstatvfs(path_fd).f_namemax),
                ("fadvise", lambda: os.posix_fadvise(path_fd, 0, 0, os.POSIX_FADV_NORMAL)),
                ("fallocate", lambda: c(libc.fallocate(path_fd, 0, ctypes.c_long(0), ctypes.c_long(10)))),
                ("flock", lambda: fcntl.flock(path_fd, fcntl.LOCK_SH)), ("lseek", lambda: os.lseek(path_fd, 0, 1)),
                ("read", lambda: os.read(path_fd, 5)), ("write", lambda: os.write(path_fd, b"x")),
                ("pread", lambda: os.pread(path_fd, 5, 0)), ("getxattr", lambda: os.listxattr(path_fd)),
                ("setxattr", lambda: os.setxattr(path_fd, "user.x", b"1")),
                ("futimens", lambda: os.utime(path_fd, (1, 1))), ("fstat", lambda: os.fstat(path_fd).st_size),
                ("fchdir", lambda: os.fchdir(c(os.open("data", os.O_PATH))) or os.getcwd().replace(B, "B")),
                ("getdents", lambda: c(libc.getdents64(c(os.open(".", os.O_PATH)), buf, 64))),
                ("dup", lambda: os.fstat(os.dup(path_fd)).st_size)):
            show(f"{name} on O_PATH", call)
        show("fchownat of the current directory", lambda: c(libc.fchownat(-100, b"", 0, 1, 0x1000)))
        show("its group", lambda: os.stat(".").st_gid)
        libc.fopen.restype = libc.freopen.restype = ctypes.c_void_p
        libc.freopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p]
        long_name = (B + "/." * 2100 + "/data/input.txt").encode()
        for mode in (b"q", b"r"):
            stream = libc.fopen((B + "/data/input.txt").encode(), b"r")
            show(f"freopen of a path over PATH_MAX, mode {mode}",
                 lambda: c(-1 if libc.freopen(long_name, mode, stream) is None else 0))
        # seed 25 (after conform's stream steps came): fchownat(O_PATH descriptor, "",
        # AT_EMPTY_PATH) changes its file (fchown of it is EBADF); getdents64 of a removed
        # directory is ENOENT, which glibc's readdir takes for the end
        show("fchownat of an O_PATH descriptor", lambda: c(libc.fchownat(path_fd, b"", 0, 1, 0x1000)))
        show("its file's group", lambda: os.stat("data/input.txt").st_gid)
        os.mkdir("gone")
        gone = os.open("gone", os.O_RDONLY | os.O_DIRECTORY)
        os.rmdir("gone")
        records = ctypes.create_string_buffer(4096)
        show("getdents64 of a removed directory", lambda: c(libc.getdents64(gone, records, 4096)))
        show("its listing", lambda: [e.name for e in os.scandir(gone)])
        # seed 108: fexecve of an O_PATH|O_NOFOLLOW descriptor of a symlink is ELOOP
        os.chdir(B)
        os.symlink("input.txt", "data/link")
        def fexecve_status(fd):
            pid = os.fork()
            if pid == 0:
                try:
                    os.execve(fd, ["x"], {})
                except OSError as e:
                    os._exit(e.errno)
                os._exit(0)
            return errno.errorcode.get(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
        show("fexecve of a symlink", lambda: fexecve_status(os.open("data/link", os.O_PATH | os.O_NOFOLLOW)))
        os.unlink("data/link")
        ''')


def test_kernel_order_of_checks_found_by_conform(agent, shadow, export, tmp_path):
    """What `bypass conform` found (issue 12): flags before paths, access modes before
    buffers, iovec bases, splice's rules, symlink targets, a bad directory descriptor after the
    old name, AT_SYMLINK_FOLLOW, rename's EBUSY and trailing slashes, leases and seals."""
    out = differential(agent, shadow, export, tmp_path, r'''
        os.chdir(B)
        BAD = ctypes.c_void_p(-1)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
        NONE = ctypes.c_void_p(libc.mmap(None, 4096, 0, 0x22, -1, 0))      # PROT_NONE, private anonymous
        O_CD = os.O_CREAT | os.O_DIRECTORY
        show("open O_CREAT|O_DIRECTORY ''", lambda: c(libc.open(b"", os.O_WRONLY | O_CD, 0o777)))
        show("open O_CREAT|O_DIRECTORY bad path", lambda: c(libc.open(NONE, O_CD | os.O_TRUNC, 0o644)))
        show("openat O_CREAT|O_DIRECTORY", lambda: os.open("data/n2", os.O_RDWR | O_CD, 0o700))
        ro = os.open("data/input.txt", os.O_RDONLY)
        rw = os.open("data/rw", os.O_RDWR | os.O_CREAT, 0o644)
        show("write(read-only, bad buffer)", lambda: c(libc.write(ro, BAD, 5)))
        show("read(write-only... bad buffer)", lambda: c(libc.read(os.open("data/rw", os.O_WRONLY), BAD, 5)))
        class iovec(ctypes.Structure):
            _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
        iov = (iovec * 2)(iovec(ctypes.c_void_p(-1).value, 0), iovec(ctypes.cast(ctypes.c_char_p(b"abc"), ctypes.c_void_p).value, 3))
        show("pwritev, a zero-length kernel address", lambda: c(libc.pwritev(rw, iov, 2, ctypes.c_long(0))))
        iov2 = (iovec * 2)(iovec(ctypes.cast(ctypes.c_char_p(b"abc"), ctypes.c_void_p).value, 3), iovec(NONE.value, 5))
        show("pwritev, an unreadable second buffer", lambda: c(libc.pwritev(rw, iov2, 2, ctypes.c_long(0))))
        show("after", lambda: os.pread(rw, 20, 0))
        r, w = os.pipe()
        os.write(w, b"hello")
        app = os.open("data/app", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        show("splice into O_APPEND", lambda: os.splice(r, app, 5))
        show("splice from a directory", lambda: os.splice(os.open("data/sub", os.O_RDONLY), w, 10))
        show("splice of nothing", lambda: os.splice(r, app, 0))
        show("splice read-only out", lambda: os.splice(r, ro, 5))
        show("symlink('', new)", lambda: os.symlink("", "x/."))
        show("symlink('', bad)", lambda: c(libc.symlink(b"", NONE)))
        show("symlink('', dir//)", lambda: os.symlink("", "data//"))
        os.symlink("nowhere", "dangling")
        os.symlink("loop", "loop")
        os.symlink("data/sub", "dlnk")
        os.symlink("data/input.txt", "flnk")
        FOLLOW = 0x400                               # AT_SYMLINK_FOLLOW (os.link would not pass it)
        show("linkat FOLLOW dangling", lambda: c(libc.linkat(-100, b"dangling", -100, b"n1", FOLLOW)))
        show("linkat FOLLOW loop", lambda: c(libc.linkat(-100, b"loop", -100, b"n1", FOLLOW)))
        show("linkat FOLLOW to a directory", lambda: c(libc.linkat(-100, b"dlnk", -100, b"n1", FOLLOW)))
        show("linkat FOLLOW to a file", lambda: (c(libc.linkat(-100, b"flnk", -100, b"n2", FOLLOW)), os.lstat("n2").st_nlink))
        show("linkat FOLLOW onto a name taken", lambda: c(libc.linkat(-100, b"flnk", -100, b"dlnk", FOLLOW)))
        show("linkat missing, bad new dirfd", lambda: os.link(B + "/missing", "x", dst_dir_fd=9999))
        show("linkat loop, file as new dirfd", lambda: c(libc.linkat(-100, b"loop", rw, b"n3/x", FOLLOW)))
        show("renameat missing parent, bad new dirfd", lambda: os.rename("nodir/f", "y", dst_dir_fd=9999))
        show("renameat2 '', bad old dirfd", lambda: c(libc.renameat2(9999, b"", -100, b"data/n5", 1)))
        show("rename to '.'", lambda: os.rename("dangling//", "."))
        show("rename to '..'", lambda: os.rename("flnk", "data/.."))
        show("exchange with an ancestor", lambda: c(libc.renameat2(-100, b"data/rw", -100, b"data//", 2)))
        show("exchange a directory with file/", lambda: c(libc.renameat2(-100, b"data/sub", -100, b"data/rw/", 2)))
        show("F_GETLEASE", lambda: fcntl.fcntl(ro, fcntl.F_GETLEASE))
        show("F_ADD_SEALS read-only", lambda: fcntl.fcntl(ro, 1033, 1))
        show("F_ADD_SEALS read-write", lambda: fcntl.fcntl(rw, 1033, 1))
        show("mmap O_PATH", lambda: c(-1 if libc.mmap(None, 4096, 3, 1, os.open(".", os.O_PATH), 0) in (None, 2**64 - 1) else 0))
        show("mmap a directory", lambda: c(-1 if libc.mmap(None, 4096, 1, 1, os.open("data", os.O_RDONLY), 0) in (None, 2**64 - 1) else 0))
        show("F_GETFL of O_PATH", lambda: oct(fcntl.fcntl(os.open("data", os.O_PATH), fcntl.F_GETFL)))
        show("F_GETFL", lambda: oct(fcntl.fcntl(rw, fcntl.F_GETFL)))
        wo = os.open("data/rw", os.O_WRONLY)
        show("pread(write-only, offset -1)", lambda: os.pread(wo, 5, -1))
        show("pwrite(read-only, offset -1)", lambda: os.pwrite(ro, b"x", -1))
        show("sendfile into O_APPEND, 0 bytes", lambda: os.sendfile(app, rw, None, 0))
        show("pwritev2 RWF_APPEND at 0", lambda: (os.pwritev(rw, [b"end", b"!"], 0, os.RWF_APPEND), os.lseek(rw, 0, 1)))
        show("pwritev2 RWF_APPEND at -1", lambda: (os.pwritev(rw, [b"more"], -1, os.RWF_APPEND), os.lseek(rw, 0, 1)))
        show("contents", lambda: os.pread(rw, 50, 0))
        os.mkfifo("data/fifo")
        show("truncate a FIFO", lambda: os.truncate("data/fifo", 0))
        show("truncate a directory", lambda: os.truncate("data", 0))
        show("truncate negative", lambda: os.truncate("data/rw", -1))
        libc.freopen.restype = ctypes.c_void_p
        libc.fopen.restype = ctypes.c_void_p
        show("freopen file/ w+", lambda: c(-1 if libc.freopen(b"data/rw/", b"w+", ctypes.c_void_p(libc.fopen(b"/dev/null", b"r"))) is None else 0))
        show("freopen '' in a remote cwd", lambda: c(-1 if libc.freopen(b"", b"a", ctypes.c_void_p(libc.fopen(b"/dev/null", b"r"))) is None else 0))
        sock = socket.socket(socket.AF_UNIX)
        show("bind file/", lambda: sock.bind("data/rw/"))
        show("bind missing/", lambda: sock.bind("data/nothing/"))
        show("rename NOREPLACE to '..'", lambda: c(libc.renameat2(-100, b"data/rw", -100, b"data/sub/..", 1)))
        show("mkfifo with a file type, bad path", lambda: c(libc.mkfifo(NONE, 0o100644)))
        show("mknod a directory, bad path", lambda: c(libc.mknod(NONE, 0o40755, 0)))
        show("mmap a directory for writing", lambda: c(-1 if libc.mmap(None, 4096, 3, 1, os.open("data", os.O_RDONLY), 0) in (None, 2**64 - 1) else 0))
        show("pathconf PIPE_BUF, missing", lambda: os.pathconf("data/none", "PC_PIPE_BUF"))
        show("pathconf PIPE_BUF, too long", lambda: os.pathconf("./" * 2100, "PC_PIPE_BUF"))
        show("pathconf NAME_MAX, too long", lambda: os.pathconf("./" * 2100, "PC_NAME_MAX"))
        show("pathconf PIPE_BUF ''", lambda: c(libc.pathconf(b"", 5)))
        ap = os.open("data/apm", os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        os.write(ap, b"hello world\n")
        import mmap
        mm = mmap.mmap(ap, 12)
        mm[0:5] = b"HELLO"
        mm.flush()
        show("a shared mapping of an O_APPEND file, written back in place", lambda: (os.fstat(ap).st_size, os.pread(ap, 30, 0)))
        mm.close()
        omit = (ctypes.c_long * 4)(0, (1 << 30) - 2, 0, (1 << 30) - 2)      # UTIME_OMIT twice
        show("utimensat(AT_FDCWD, NULL, omit)", lambda: c(libc.utimensat(-100, None, omit, 0)))
        os.makedirs("data/gone")
        os.chdir("data/gone")
        os.rmdir(B + "/data/gone")
        show("rename a lone name in a removed cwd, bad new dirfd", lambda: os.rename("f", "y", dst_dir_fd=9999))
        show("renameat2 EXCHANGE, the same", lambda: c(libc.renameat2(-100, b"f", -1, b"y", 2)))
        show("rename a/b there, bad new dirfd", lambda: os.rename("a/b", "y", dst_dir_fd=9999))
        os.chdir(B)
        ''')
    assert "linkat FOLLOW dangling: 'ENOENT'" in out and "splice into O_APPEND: 'EINVAL'" in out
    assert "rename a lone name in a removed cwd, bad new dirfd: 'EBADF'" in out
    assert "rename a/b there, bad new dirfd: 'ENOENT'" in out


def test_current_directory_is_where_the_kernel_puts_it(agent, shadow, export, tmp_path):
    """chdir through a symlink, fchdir to a renamed directory or to a file, xattrs of the
    current directory, exec of "" and of symlinks, a file open for writing (ETXTBSY)."""
    (export / "prog").write_text("#!/bin/sh\nexit 3\n")
    (export / "prog").chmod(0o755)
    out = differential(agent, shadow, export, tmp_path, r'''
        os.chdir(B)
        os.symlink("data/sub", "dlnk")
        os.symlink("prog", "plnk")
        libc.get_current_dir_name.restype = ctypes.c_char_p
        os.chdir("dlnk")
        show("getcwd through a link", lambda: os.getcwd())
        show("get_current_dir_name", lambda: libc.get_current_dir_name())
        os.chdir("..")
        show("after ..", lambda: os.getcwd())
        os.chdir(B)
        d = os.open("data/sub", os.O_RDONLY)
        os.rename("data/sub", "data/moved")
        show("fchdir to a renamed directory", lambda: (os.fchdir(d), os.getcwd()))
        show("flistxattr(AT_FDCWD)", lambda: c(libc.flistxattr(-100, None, 0)))
        show("fremovexattr(AT_FDCWD)", lambda: c(libc.fremovexattr(-100, b"user.none")))
        show("fsetxattr(AT_FDCWD)", lambda: c(libc.fsetxattr(-100, b"user.k", b"v3", 2, 0)))
        val = ctypes.create_string_buffer(16)
        show("fgetxattr(AT_FDCWD)", lambda: (c(libc.fgetxattr(-100, b"user.k", val, 16)), val.value))
        os.chdir(B)
        f = os.open("data/input.txt", os.O_RDONLY)
        show("fchdir to a file", lambda: os.fchdir(f))

        def child(fn):
            pid = os.fork()
            if pid == 0:
                fn()
                os._exit(ctypes.get_errno() & 0x7f)
            return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        argv = (ctypes.c_char_p * 2)(b"x", None)
        envp = (ctypes.c_char_p * 1)(None)
        show("execveat NOFOLLOW of a file", lambda: child(lambda: libc.execveat(-100, b"./prog", argv, envp, 0x100 | 0x1000)))
        show("execveat NOFOLLOW of a link", lambda: child(lambda: libc.execveat(-100, b"plnk", argv, envp, 0x100)))
        show("execveat of '' at the cwd", lambda: child(lambda: libc.execveat(-100, b"", argv, envp, 0x1000)))
        w = os.open("prog", os.O_WRONLY)
        show("fexecve of a file open for writing", lambda: child(lambda: libc.fexecve(w, argv, envp)))
        os.close(w)
        show("fexecve of a close-on-exec script", lambda: child(lambda: libc.fexecve(os.open("prog", os.O_RDONLY), argv, envp)))
        r = os.open("prog", os.O_RDONLY)
        os.set_inheritable(r, True)
        show("fexecve once closed", lambda: child(lambda: libc.fexecve(r, argv, envp)))
        t = os.open("data/t", os.O_RDWR | os.O_CREAT, 0o600)
        show("fexecve of a file without x", lambda: child(lambda: libc.fexecve(t, argv, envp)))
        ''')
    assert "fexecve once closed: 3" in out and "fexecve of a file open for writing: 26" in out


def test_file_offsets_known_here_stay_the_kernels(agent, shadow, export, tmp_path):
    """The agent answers lseek(fd, 0, SEEK_CUR) itself while only this process can move the
    offset: after its own reads, writes and seeks, through a dup; never for an offset another
    process shares (fork, subprocess, posix_spawn), an O_APPEND write or a copy made by the
    shadow's kernel moves."""
    out = differential(agent, shadow, export, tmp_path, r'''
    import subprocess
    p = B + "/data/off.txt"
    with open(p, "wb") as f:
        f.write(b"0123456789" * 1000)
    tell = lambda fd: os.lseek(fd, 0, os.SEEK_CUR)
    fd = os.open(p, os.O_RDWR)
    show("opened", lambda: tell(fd))
    show("read", lambda: (os.read(fd, 100), tell(fd))[1])
    show("written", lambda: (os.write(fd, b"abc"), tell(fd))[1])
    show("set where it is", lambda: os.lseek(fd, 103, os.SEEK_SET))
    show("negative", lambda: os.lseek(fd, -1, os.SEEK_SET))
    show("after the error", lambda: tell(fd))
    d = os.dup(fd)
    show("read through a dup", lambda: (os.read(d, 10), tell(fd))[1])
    show("vectored", lambda: (os.readv(fd, [bytearray(4), bytearray(5)]), tell(d))[1])
    show("positional", lambda: (os.pread(fd, 7, 0), os.pwrite(fd, b"P", 1), tell(fd))[2])
    show("past the end", lambda: (os.lseek(fd, 20000, os.SEEK_SET), os.read(fd, 5), tell(fd)))
    show("end", lambda: (os.lseek(fd, -6, os.SEEK_END), os.read(fd, 100), tell(fd)))
    os.lseek(fd, 200, os.SEEK_SET)
    pid = os.fork()
    if pid == 0:
        os.read(fd, 50)
        os._exit(0)
    os.waitpid(pid, 0)
    show("after a forked child read", lambda: tell(fd))
    show("and again", lambda: (os.read(fd, 1), tell(fd))[1])
    g = os.open(p, os.O_RDONLY)
    os.read(g, 7)
    code = "import os, sys; os.read(int(sys.argv[1]), 20)"
    subprocess.run([sys.executable, "-c", code, str(g)], pass_fds=(g,), check=True)
    show("after a subprocess read", lambda: tell(g))
    h = os.open(p, os.O_RDONLY)
    os.read(h, 3)
    os.waitpid(os.posix_spawn(sys.executable, [sys.executable, "-c", code, str(h)], os.environ), 0)
    show("after a spawned child read", lambda: tell(h))
    a = os.open(p, os.O_WRONLY | os.O_APPEND)
    show("append", lambda: (tell(a), os.write(a, b"xyz"), tell(a)))
    w = os.open(p, os.O_WRONLY)
    fcntl.fcntl(w, fcntl.F_SETFL, os.O_APPEND)
    show("append set later", lambda: (os.write(w, b"!"), tell(w)))
    src = os.open(p, os.O_RDONLY)
    dst = os.open(B + "/data/copy.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.read(src, 5)
    show("sendfile", lambda: (os.sendfile(dst, src, None, 30), tell(src), tell(dst)))
    show("copy_file_range", lambda: (os.copy_file_range(src, dst, 40), tell(src), tell(dst)))
    ''')
    assert "after a forked child read: 250" in out and "after a subprocess read: 27" in out


def test_a_python_open_and_read_asks_no_offset_of_the_shadow(agent, shadow, export):
    """Python asks the offset of every file it opens (twice); the agent knows it."""
    p = subprocess.run([sys.executable, "-c", "print(len(open('/job/data/input.txt', 'rb').read()))"],
                       env=agent_env(agent, shadow), capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    row = next(f for f in shadow.module.report().files() if f["path"] == "/job/data/input.txt")
    assert row["seeks"] >= 1 and row["wire"]["seeks"] == 0, row


def test_job_is_a_directory_of_the_root(agent, shadow, export):
    """".." of /job is this machine's "/", as for a file system mounted at /job: a path may
    climb out of the export and come back; ".." after a symlink is the kernel's (physical)."""
    (export / "l").symlink_to("data/sub")
    code = textwrap.dedent(r'''
        import errno, os
        def show(fn):
            try:
                return fn()
            except OSError as e:
                return errno.errorcode[e.errno]
        print(show(lambda: open('/job/../job/data/sub/a.txt').read().strip()))
        print(show(lambda: open('/job/l/../../data/sub/a.txt').read().strip()))
        print(show(lambda: open('/job/missing/../data/sub/a.txt').read()))
        print(show(lambda: open('/job/data/input.txt/../sub/a.txt').read()))
        d = os.open('/job/data', os.O_RDONLY | os.O_DIRECTORY)
        print(show(lambda: open(os.open('../../job/data/sub/a.txt', os.O_RDONLY, dir_fd=d)).read().strip()))
        print(os.path.realpath('/job/..'), os.path.realpath('/job/data/..'))
        os.chdir('/job')
        print(show(lambda: open('../job/data/sub/a.txt').read().strip()))
        print(sorted(os.listdir('..')) == sorted(os.listdir('/')) and len(os.listdir('/job/..')) > 1)
        os.chdir('data')
        print(show(lambda: os.stat('../../job/data/sub').st_nlink), os.getcwd())
        os.chdir('../..')
        print(os.getcwd(), os.path.exists('job'))
    ''')
    p = subprocess.run([sys.executable, "-c", code], env=agent_env(agent, shadow), capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == [
        "needle in a", "needle in a", "ENOENT", "ENOTDIR", "needle in a", "/ /job", "needle in a", "True",
        f"{(export / 'data' / 'sub').stat().st_nlink} /job/data", "/ False"]


def test_names_relative_to_a_directory_descriptor_follow_the_directory(agent, shadow, export, tmp_path):
    """openat(dirfd, name) and friends look the name up from the directory itself, as the
    kernel does, after the directory was renamed or removed (not by its old name)."""
    differential(agent, shadow, export, tmp_path, r'''
    os.makedirs(B + "/data/sub/deeper")
    d = os.open(B + "/data/sub", os.O_RDONLY | os.O_DIRECTORY)
    os.rename(B + "/data/sub", B + "/data/moved")
    show("read", lambda: open(os.open("a.txt", os.O_RDONLY, dir_fd=d)).read())
    show("stat", lambda: os.stat("deeper", dir_fd=d).st_nlink)
    show("mkdir", lambda: os.mkdir("made", dir_fd=d))
    show("rename", lambda: os.rename("b.txt", "c.txt", src_dir_fd=d, dst_dir_fd=d))
    show("unlink", lambda: os.unlink("c.txt", dir_fd=d))
    show("above", lambda: os.stat("../input.txt", dir_fd=d).st_size)
    p = os.open(B + "/data/moved/deeper", os.O_PATH)
    os.rmdir(B + "/data/moved/deeper")
    show("access removed", lambda: os.access("./", os.X_OK, dir_fd=p))
    show("stat removed", lambda: os.stat(".", dir_fd=p).st_nlink)
    show("create in removed", lambda: os.open("new", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=p))
    ''')


def test_a_spawned_writer_that_exited_leaves_the_file_executable(agent, shadow, export, tmp_path):
    """posix_spawn's addopen for writing is opened by the shadow in the parent: once the child
    is gone, nothing holds the file open for writing (no ETXTBSY), as natively."""
    differential(agent, shadow, export, tmp_path, r'''
    p = B + "/data/prog"
    fd = os.open(p, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o700)
    acts = [(os.POSIX_SPAWN_OPEN, 0, p, os.O_WRONLY | os.O_TRUNC, 0o644),
            (os.POSIX_SPAWN_OPEN, 1, "/dev/null", os.O_WRONLY, 0)]
    show("spawned", lambda: os.waitstatus_to_exitcode(os.waitpid(
        os.posix_spawn("/bin/cat", ["cat"], os.environ, file_actions=acts), 0)[1]))
    def run():
        pid = os.fork()
        if pid == 0:
            try:
                os.execve(fd, ["x"], os.environ)
            except OSError as e:
                os._exit(e.errno)
        return errno.errorcode.get(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
    show("fexecve", run)
    ''')


def test_a_write_from_memory_that_faults_extends_the_file_as_the_kernel(agent, shadow, export, tmp_path):
    """A write whose buffer faults from its first byte fails EFAULT, but ext4 has by then
    extended a file written past its end to the write's offset (conform seed 208: a later read
    saw the longer file natively).  An address of the kernel's half is refused before anything;
    a buffer that faults further on writes what could be read, up to the page that cannot (and
    a read fills what it can), where the agent read or wrote the unreadable page and crashed."""
    out = differential(agent, shadow, export, tmp_path, r'''
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    NONE = ctypes.c_void_p(libc.mmap(None, 4096, 0, 0x22, -1, 0))      # PROT_NONE, private anonymous
    class iovec(ctypes.Structure):
        _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
    iov = (iovec * 2)(iovec(NONE.value, 5), iovec(ctypes.cast(ctypes.c_char_p(b"abc"), ctypes.c_void_p).value, 3))
    fd = os.open(B + "/data/grown", os.O_RDWR | os.O_CREAT, 0o644)
    os.write(fd, b"abc")
    where = lambda: (os.fstat(fd).st_size, os.lseek(fd, 0, os.SEEK_CUR))
    show("pwrite past the end", lambda: (c(libc.pwrite(fd, NONE, 5, ctypes.c_long(4800))), where()))
    show("read after it", lambda: len(os.read(fd, 8192)))
    show("pwrite of NULL", lambda: c(libc.pwrite(fd, None, 5, ctypes.c_long(5000))))
    show("pwrite of the kernel's half", lambda: c(libc.pwrite(fd, ctypes.c_void_p(1 << 47), 5, ctypes.c_long(9000))))
    show("sizes", where)
    os.lseek(fd, 6000, os.SEEK_SET)
    show("write at a far offset", lambda: (c(libc.write(fd, NONE, 5)), where()))
    show("sizes after write", where)
    show("pwritev", lambda: c(libc.pwritev(fd, iov, 2, ctypes.c_long(7000))))
    os.lseek(fd, 7500, os.SEEK_SET)
    show("writev", lambda: c(libc.writev(fd, iov, 2)))
    show("sizes after the vectors", where)
    show("pwritev2 RWF_APPEND", lambda: c(libc.pwritev2(fd, iov, 2, ctypes.c_long(-1), 0x10)))
    a = os.open(B + "/data/app", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    show("appending", lambda: c(libc.pwrite(a, NONE, 5, ctypes.c_long(4000))))
    show("appended size", lambda: os.fstat(a).st_size)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    two = libc.mmap(None, 8192, 3, 0x22, -1, 0)
    ctypes.memset(two, ord("z"), 4096)
    libc.mprotect(two + 4096, 4096, 0)                  # the second page unreadable
    tail = ctypes.c_void_p(two + 4000)
    show("pwrite that faults further on", lambda: c(libc.pwrite(fd, tail, 200, ctypes.c_long(10000))))
    show("write that faults further on", lambda: (c(libc.write(fd, tail, 200)), where()))
    iov3 = (iovec * 2)(iovec(tail.value, 200), iovec(NONE.value, 5))
    show("writev that faults further on", lambda: (c(libc.writev(fd, iov3, 2)), where()))
    show("bytes", lambda: os.pread(fd, 300, 9990))
    show("pread that faults further on", lambda: (c(libc.pread(fd, tail, 200, ctypes.c_long(9990))),
                                                  ctypes.string_at(tail, 20)))
    os.lseek(fd, 9900, os.SEEK_SET)
    show("read that faults further on", lambda: (c(libc.read(fd, tail, 200)), where()))
    show("read that faults at once", lambda: (c(libc.read(fd, NONE, 5)), where()))
    ''')
    assert "read after it: 4797" in out and "sizes: (5000, 4800)" in out and "sizes after write: (6000, 6000)" in out
    assert "pwrite that faults further on: 96" in out and "read that faults further on: (96, (10096, 9996))" in out
