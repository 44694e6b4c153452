"""webfs on a tree made by the real make_growfs and served by http.server: real programs see the
same tree as on local disk, byte for byte; writes are EROFS; programs run from the tree."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

from webfs_lib import REOPEN_HELD, run


def _same(agent, env, local: Path, shell_cmd: str):
    """shell_cmd run on the local tree ({T} = its path) and through webfs ({T} = /software)."""
    native = subprocess.run(shell_cmd.replace("{T}", str(local)), shell=True, capture_output=True, timeout=60)
    mounted = run(agent, shell_cmd.replace("{T}", "/software"), env, shell=True)
    assert mounted.returncode == native.returncode, (shell_cmd, mounted.stderr, native.stderr)
    assert mounted.stderr == native.stderr.replace(str(local).encode(), b"/software"), shell_cmd
    assert mounted.stdout == native.stdout.replace(str(local).encode(), b"/software"), shell_cmd
    return mounted


def test_listings_and_contents_are_those_of_local_disk(webfs_so, env, served):
    local, _, srv = served
    commands = [
        "du -a {T} | sort -k2",
        "sed -n 2p {T}/share/latest; head -c 100 {T}/share/data.bin | od -c | head -3",
        "cd {T} && ls -lR --time-style=+%s",
        "ls -l --time-style=+%s {T}/share/doc {T}/bin",
        "cd {T} && find . -mindepth 1 -printf '%p %y %m %s %Ts %l %n\\n' | sort",
        "cd {T} && find . -type f -print0 | sort -z | xargs -0 md5sum",
        "grep -r needle {T} | sort",
        # after the md5sum above fetched every file (see README: tar on a cold cache)
        # (the root's own line left out: make_growfs wrote its catalog into the served root)
        "cd {T} && tar -cf - . | tar -tvf - --full-time | grep -v ' ./$' | sort -k6",
        "grep -rl needle {T}/share | sort",
        "stat -c '%n %s %f %Y %h' {T}/share/latest {T}/share/data.bin {T}/frozen",
        "stat -L -c '%n %s %f %Y' {T}/share/latest",
        "readlink {T}/bin/hi {T}/share/latest; realpath {T}/share/latest {T}/bin/../lib/pkg",
        "cat {T}/share/latest | wc -c; cat {T}/nope; ls {T}/bin/nope/x; cat {T}/share/doc/",
        "test -x {T}/bin/hello.sh; echo x=$?; test -r {T}/frozen; echo r=$?",
        "cd {T}/lib/pkg && pwd && ls .. && cat ../pkg/sub/mod.py && /bin/pwd",
        "cd {T}/lib && python3 -c 'import os; print(os.getcwd()); print(sorted(os.listdir(\"pkg\")))'",
    ]
    for cmd in commands:
        _same(webfs_so, env, local, cmd)
    # the same views again with every file already fetched (warm cache)
    for cmd in commands:
        _same(webfs_so, env, local, cmd)
    assert any(r.endswith("/.growfsdir") for r in srv.requests)


def test_programs_scripts_and_imports_run_from_the_tree(webfs_so, env, served):
    local, _, _ = served
    _same(webfs_so, env, local, "{T}/bin/mytrue && echo ran-true")
    _same(webfs_so, env, local, "{T}/bin/hi one two; {T}/bin/hello.sh three")
    _same(webfs_so, env, local, "sh {T}/bin/hello.sh four; PATH={T}/bin:$PATH hello.sh five; cd {T}/bin && ./hi six")
    _same(webfs_so, env, local,
          "PYTHONPATH={T}/lib python3 -B -c 'import pkg, pkg.sub.mod as m; print(pkg.NAME, pkg.VALUE, m.__file__)'")
    _same(webfs_so, env, local,
          "python3 -B -c 'import runpy,sys; sys.path.insert(0, \"{T}/lib\"); import pkg; print(pkg.__file__)'")


def test_writes_are_erofs_and_missing_names_enoent(webfs_so, env, served, tmp_path):
    checks = r'''
import errno, os
def err(f, *a, **k):
    try:
        f(*a, **k)
    except OSError as e:
        return errno.errorcode[e.errno]
    return "ok"
S = "/software"
print(err(os.open, S + "/new", os.O_CREAT | os.O_WRONLY, 0o644))
print(err(os.open, S + "/share/data.bin", os.O_RDWR))
print(err(os.open, S + "/share/data.bin", os.O_WRONLY | os.O_TRUNC))
print(err(os.mkdir, S + "/d"))
print(err(os.unlink, S + "/share/data.bin"))
print(err(os.rmdir, S + "/share/doc"))
print(err(os.rename, S + "/share/data.bin", S + "/share/x"))
print(err(os.rename, S + "/share/data.bin", "moved"))
print(err(os.link, S + "/share/data.bin", "hard"))
print(err(os.symlink, "x", S + "/l"))
print(err(os.chmod, S + "/share/data.bin", 0o777))
print(err(os.utime, S + "/share/data.bin", None))
print(err(os.truncate, S + "/share/data.bin", 0))
print(err(os.setxattr, S + "/share/data.bin", "user.x", b"1"))
print(err(os.access, S + "/share/data.bin", os.W_OK) if False else os.access(S + "/share/data.bin", os.W_OK))
print(err(os.stat, S + "/missing"), err(os.open, S + "/missing", os.O_RDONLY), err(os.listdir, S + "/missing"))
print(err(os.stat, S + "/share/data.bin/"), err(os.readlink, S + "/share/data.bin"))
os.chdir(S + "/share")
print(err(os.open, "rel-new", os.O_CREAT | os.O_WRONLY, 0o644), err(os.unlink, "data.bin"))
d = os.open(S + "/share", os.O_RDONLY | os.O_DIRECTORY)
print(err(os.open, "by-dirfd", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=d), err(os.unlink, "data.bin", dir_fd=d))
print(os.statvfs(S).f_flag & os.ST_RDONLY == os.ST_RDONLY)
'''
    p = run(webfs_so, ["python3", "-c", checks], env, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout.decode().split("\n") == [
        "EROFS", "EROFS", "EROFS", "EROFS", "EROFS", "EROFS", "EROFS", "EROFS", "EROFS", "EROFS", "EROFS",
        "EROFS", "EROFS", "EROFS", "False", "ENOENT ENOENT ENOENT", "ENOTDIR EINVAL", "EROFS EROFS",
        "EROFS EROFS", "True", ""]
    assert not (tmp_path / "moved").exists() and not (tmp_path / "hard").exists()


def test_fetched_once_then_served_from_the_cache(webfs_so, env, served, tmp_path):
    _, _, srv = served
    local, _, _ = served
    want = subprocess.run(["md5sum"], input=(local / "share" / "data.bin").read_bytes(), capture_output=True).stdout
    p = run(webfs_so, "cat /software/share/data.bin | md5sum; md5sum < /software/share/data.bin", env, shell=True)
    assert p.returncode == 0 and p.stdout == want * 2
    p2 = run(webfs_so, "cat /software/share/data.bin | md5sum", env, shell=True)
    assert p2.stdout == want
    assert [r for r in srv.requests if r.endswith("data.bin")] == ["/tree/share/data.bin"]
    assert sum(r.endswith(".growfsdir") for r in srv.requests) == 1  # within BYPASS_WEBFS_TTL
    # nothing half-written is left in the cache
    cache = tmp_path / "cache"
    assert [q.name for q in cache.rglob("fetch.*")] == ["fetch.lock"]      # no download left over
    assert list((cache / "tmp").iterdir()) == [] and not list(cache.rglob("*.tmp-*"))


def test_16_concurrent_cold_processes_fetch_each_file_once(webfs_so, env, served):
    _, _, srv = served
    script = "find /software -type f -exec cat {} + | md5sum"
    procs = []
    for _ in range(16):
        full = {k: v for k, v in os.environ.items() if not k.startswith("BYPASS_") and k != "LD_PRELOAD"}
        full.update(env, LD_PRELOAD=str(webfs_so))
        procs.append(subprocess.Popen(script, shell=True, env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    assert len({o[0] for o in outs}) == 1
    files = [r for r in srv.requests if not r.endswith((".growfsdir", ".growfschecksum"))]
    assert len(files) == len(set(files)), sorted(files)
    assert sum(r.endswith(".growfsdir") for r in srv.requests) == 1


def test_a_placeholder_filled_after_it_was_opened_reads_the_content(webfs_so, env, served):
    """What one of many concurrent cold processes meets by chance, made to happen on purpose:
    the descriptor's placeholder was replaced by the fetched file (test_webfs_repo.py has more)."""
    local, _, _ = served
    p = run(webfs_so, ["python3", "-c", REOPEN_HELD], env)
    want = hashlib.md5((local / "share" / "data.bin").read_bytes()).hexdigest()
    assert p.returncode == 0 and p.stdout.decode().split() == [want, want], p.stderr


def test_cache_size_is_bounded_least_recently_used_first(webfs_so, env, served, tmp_path):
    local, _, srv = served
    limit = 230_000                                  # data.bin is 200,000 bytes, mytrue ~35,000
    e = dict(env, BYPASS_WEBFS_CACHE_MAX=str(limit))
    job = "cat {T}/share/data.bin | md5sum; cat {T}/share/latest | md5sum; cat {T}/bin/mytrue | md5sum; " \
          "{T}/bin/mytrue && echo ran"
    p = run(webfs_so, job.format(T="/software"), e, shell=True)
    want = subprocess.run(job.format(T=local), shell=True, capture_output=True).stdout
    assert p.returncode == 0 and p.stdout == want, p.stderr
    [tree] = [q for q in (tmp_path / "cache" / "trees").iterdir() if q.is_dir()]
    filled = {str(q.relative_to(tree / "root")): q.stat().st_size for q in (tree / "root").rglob("*")
              if q.is_file() and not q.is_symlink() and q.stat().st_blocks > 0}
    assert sum(filled.values()) <= limit
    # over the limit when mytrue came: the least recently used (data.bin) went, the README stayed
    assert set(filled) == {"bin/mytrue", "share/doc/README with spaces.txt"}
    assert int((tmp_path / "cache" / "used").read_text()) == sum(filled.values())
    # an evicted file is fetched again, checked again, and is the same
    p = run(webfs_so, "cat /software/share/data.bin | md5sum", e, shell=True)
    assert p.stdout == want.split(b"\n")[0] + b"\n"
    assert [r for r in srv.requests if r.endswith("data.bin")] == ["/tree/share/data.bin"] * 2
    assert not [q for q in tree.rglob("*evict*")]
    # the listing is unchanged by eviction
    ls = "ls -lR --time-style=+%s {}"
    assert run(webfs_so, ls.format("/software"), e, shell=True).stdout.replace(b"/software", b"T") == \
        subprocess.run(ls.format(local), shell=True, capture_output=True).stdout.replace(str(local).encode(), b"T")


def test_bad_cache_size_is_refused(webfs_so, env):
    p = run(webfs_so, ["/bin/true"], dict(env, BYPASS_WEBFS_CACHE_MAX="lots"))
    assert p.returncode == 2 and b"BYPASS_WEBFS_CACHE_MAX='lots' is not a size" in p.stderr


def test_stdio_and_descriptors_keep_their_flags(webfs_so, env, served):
    local, _, _ = served
    code = r'''
import ctypes, fcntl, os
libc = ctypes.CDLL(None, use_errno=True)
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
libc.fileno.argtypes = [ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
f = libc.fopen(b"/software/share/data.bin", b"re")
fd = libc.fileno(f)
print(bool(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC), len(os.read(fd, 1 << 20)))
libc.fclose(f)
fd = os.open("/software/lib/pkg/sub/mod.py", os.O_RDONLY)     # python: O_CLOEXEC by default
g = os.open("/software/bin/mytrue", os.O_RDONLY | os.O_NONBLOCK, 0)
os.set_inheritable(g, True)
print(bool(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC), os.read(fd, 100).decode().strip())
print(os.get_inheritable(g), bool(fcntl.fcntl(g, fcntl.F_GETFL) & os.O_NONBLOCK), len(os.read(g, 1 << 20)))
'''
    p = run(webfs_so, ["python3", "-c", code], env)
    assert p.returncode == 0, p.stderr
    size = (local / "bin" / "mytrue").stat().st_size
    assert p.stdout.decode().split("\n") == ["True 200000", "True VALUE = sum(range(10))", f"True True {size}", ""]
