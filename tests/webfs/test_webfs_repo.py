"""Bypass repositories: `bypass publish` writes them, any static HTTP server serves them, the webfs
agent mounts them (signed manifest, nested SQLite catalogs fetched per subtree, compressed objects
checked by SHA-256). Real programs compared with the same tree on local disk."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import zlib

import pytest

from repo_lib import Proxy, catalog, cli, file_hash, listing, manifest, nested, object_path, software_tree
from webfs_lib import REOPEN_HELD, REPO, Server, dead_port, run


@pytest.fixture
def repo(tmp_path):
    """(local tree, repository folder, public key file, running Server serving tmp_path/site)."""
    local = software_tree(tmp_path / "local", tmp_path / "src")
    cli("keygen", tmp_path / "k")
    cli("publish", local, tmp_path / "site" / "repo", "--key", tmp_path / "k")
    with Server(tmp_path / "site") as srv:
        yield local, tmp_path / "site" / "repo", tmp_path / "k.pub", srv
    # read-only directories (the tree's, and the skeletons' copies of them): removable again
    for d in tmp_path.rglob("*"):
        if d.is_dir() and not d.is_symlink():
            d.chmod(0o755)


def agent_env(tmp_path, srv, pub, **more) -> dict:
    env = {"BYPASS_WEBFS_MOUNTS": f"/software={srv.url('repo')},key={pub}",
           "BYPASS_WEBFS_CACHE": str(tmp_path / "cache"),
           "BYPASS_GASS_CONNECT_TIMEOUT": "2", "BYPASS_GASS_READ_TIMEOUT": "2", "BYPASS_GASS_TIMEOUT": "10"}
    env.update(more)
    return env


def sh(agent, env):
    return lambda cmd: run(agent, ["sh", "-c", cmd], env)


def test_programs_see_the_local_tree(webfs_so, repo, tmp_path):
    local, _, pub, srv = repo
    go = sh(webfs_so, agent_env(tmp_path, srv, pub))
    for cmd in ("ls -lR --full-time TREE", "cd TREE && find . -printf '%p %y %m %s %T@ %l\\n' | sort",
                "cd TREE && find . -type f -print0 | sort -z | xargs -0 md5sum", "du -a TREE",
                "cat TREE/share/latest TREE/share/data.bin | md5sum", "readlink TREE/bin/hi; realpath TREE/share/latest"):
        got, want = listing(cmd, "/software", go, local)
        assert got == want, cmd
    p = go("/software/bin/greet && /software/bin/hi a b && cd /software/lib && PYTHONPATH=/software/lib "
           "python3 -c 'import pkg; print(pkg.NAME, pkg.VALUE)'")
    assert p.returncode == 0, p.stderr
    assert p.stdout == b"greet 42\nhello from /software/bin/hi with a b\npkg 45\n"
    p = go("echo x > /software/new; mkdir /software/lib/d; rm /software/bin/hi")
    assert p.stderr.count(b"Read-only file system") == 3


def test_gcc_compiles_and_links_against_the_tree(webfs_so, repo, tmp_path):
    """gcc, cc1, as and ld all run under the agent: the source, the header and the library they
    open come from the repository."""
    local, _, pub, srv = repo
    out = tmp_path / "greet-built"
    p = run(webfs_so, ["gcc", "-I/software/include", "-o", str(out), "/software/share/main.c", "-L/software/lib",
                       "-lgreet"], agent_env(tmp_path, srv, pub))
    assert p.returncode == 0, p.stderr
    done = subprocess.run([out], env=dict(os.environ, LD_LIBRARY_PATH=str(local / "lib")), capture_output=True)
    assert done.stdout == b"greet 42\n"
    assert all(r == "/repo/bypass.manifest" or r.startswith("/repo/data/") for r in srv.requests), srv.requests


def test_a_stopped_server_with_a_warm_cache_is_not_an_error(webfs_so, repo, tmp_path):
    _, _, pub, srv = repo
    env = agent_env(tmp_path, srv, pub, BYPASS_WEBFS_TTL="0")
    first = run(webfs_so, ["sh", "-c", "/software/bin/greet; cat /software/lib/pkg/sub/mod.py"], env)
    assert first.stdout == b"greet 42\nVALUE = sum(range(10))\n", first.stderr
    srv.set_mode("silent")                    # the server no longer answers (connections hang)
    env["BYPASS_GASS_READ_TIMEOUT"] = env["BYPASS_GASS_TIMEOUT"] = "1"
    again = run(webfs_so, ["sh", "-c", "/software/bin/greet; cat /software/lib/pkg/sub/mod.py"], env)
    assert again.stdout == first.stdout
    assert b"no mirror answered" in again.stderr and b"using the cached catalog" in again.stderr
    # what was never fetched cannot be had: the transport's errno, said, within the timeouts
    gone = run(webfs_so, ["cat", "/software/lib/pkg/__init__.py"], env)
    assert gone.returncode == 1 and gone.stdout == b"", gone.stderr
    assert b"/software/lib/pkg/__init__.py: no mirror could send it (Connection timed out)" in gone.stderr
    # nor a subtree whose catalog was never fetched
    gone = run(webfs_so, ["ls", "/software/share"], env)
    assert gone.returncode == 2 and gone.stdout == b"", gone.stderr
    assert b"/software/share: no mirror could send it (Connection timed out)" in gone.stderr


def test_only_the_catalogs_of_walked_subtrees_are_fetched(webfs_so, repo, tmp_path):
    _, site, pub, srv = repo
    subs = nested(site, tmp_path / "scratch.db")
    assert set(subs) == {"/bin", "/lib", "/share", "/frozen", "/include"}
    p = run(webfs_so, ["cat", "/software/lib/pkg/sub/mod.py"], agent_env(tmp_path, srv, pub))
    assert p.stdout == b"VALUE = sum(range(10))\n", p.stderr
    mod = file_hash(site, "/lib/pkg/sub/mod.py", tmp_path / "scratch.db")
    root = manifest(site)["root"]
    asked = [r.split("/repo/", 1)[1] for r in srv.requests]
    assert asked == ["bypass.manifest"] + [f"data/{h[:2]}/{h[2:]}" for h in (root, subs["/lib"], mod)]


def test_symlinks_into_other_subtrees_lead_there_on_a_cold_cache(webfs_so, repo, tmp_path):
    _, _, pub, srv = repo
    env = agent_env(tmp_path, srv, pub)
    p = run(webfs_so, ["cat", "/software/bin/pkg-init"], env)
    assert p.stdout == b"from .sub.mod import VALUE\nNAME = 'pkg'\n", p.stderr


def test_republish_writes_only_new_objects_and_clients_follow_after_the_ttl(webfs_so, repo, tmp_path):
    local, site, pub, srv = repo
    before = {p: p.stat().st_mtime_ns for p in (site / "data").rglob("*") if p.is_file()}
    env = agent_env(tmp_path, srv, pub)
    assert run(webfs_so, ["cat", "/software/share/doc/README with spaces.txt"], env).stdout.startswith(b"needle")
    (local / "share" / "doc" / "README with spaces.txt").write_text("changed\n")
    out = cli("publish", local, site, "--key", tmp_path / "k").stdout
    # the file, the catalogs of share and of the root: nothing else
    assert "revision 2" in out and "3 objects written" in out, out
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())
    cached = run(webfs_so, ["cat", "/software/share/doc/README with spaces.txt"], env)
    assert cached.stdout.startswith(b"needle")          # within the TTL: the revision already in use
    fresh = run(webfs_so, ["cat", "/software/share/doc/README with spaces.txt"], dict(env, BYPASS_WEBFS_TTL="0"))
    assert fresh.stdout == b"changed\n", fresh.stderr


def _refused(webfs_so, env, *needles: bytes):
    p = run(webfs_so, ["ls", "/software/bin"], env)
    assert p.returncode == 2 and b"Input/output error" in p.stderr, p.stderr
    for n in needles:
        assert n in p.stderr, p.stderr
    return p


def test_unsigned_mis_signed_and_wrong_key_manifests_are_refused(webfs_so, repo, tmp_path):
    _, site, pub, srv = repo
    good = (site / "bypass.manifest").read_text()
    body, sig = good.rsplit("signature ", 1)
    cli("keygen", tmp_path / "other")
    cases = {
        "unsigned": (body, b"not signed"),
        "altered": (body.replace("revision 1", "revision 9") + "signature " + sig, b"does not match the configured key"),
        "garbage": ("\x00\x01binary", b"not a manifest"),
        "huge": (good * 100, b"larger than a manifest can be: refused"),
    }
    for i, (name, (text, needle)) in enumerate(cases.items()):
        (site / "bypass.manifest").write_text(text)
        _refused(webfs_so, agent_env(tmp_path, srv, pub, BYPASS_WEBFS_CACHE=str(tmp_path / f"c{i}")), needle)
        assert not (tmp_path / f"c{i}" / "trees").exists() or not list((tmp_path / f"c{i}" / "trees").iterdir())
    (site / "bypass.manifest").write_text(good)
    _refused(webfs_so, agent_env(tmp_path, srv, f"{tmp_path}/other.pub", BYPASS_WEBFS_CACHE=str(tmp_path / "c9")),
             b"does not match the configured key")
    assert run(webfs_so, ["ls", "/software/bin"], agent_env(tmp_path, srv, pub)).returncode == 0


def test_a_replayed_older_manifest_is_refused(webfs_so, repo, tmp_path):
    local, site, pub, srv = repo
    old = (site / "bypass.manifest").read_text()
    (local / "bin" / "hello.sh").write_text("#!/bin/sh\necho new\n")
    cli("publish", local, site, "--key", tmp_path / "k")
    env = agent_env(tmp_path, srv, pub, BYPASS_WEBFS_TTL="0")
    assert run(webfs_so, ["sh", "/software/bin/hello.sh"], env).stdout == b"new\n"
    (site / "bypass.manifest").write_text(old)       # a server replaying revision 1, validly signed
    p = run(webfs_so, ["sh", "/software/bin/hello.sh"], env)
    assert b"older than the revision this cache already has" in p.stderr
    assert p.stdout == b"new\n"                        # the newer revision, from the cache
    fresh = agent_env(tmp_path, srv, pub, BYPASS_WEBFS_CACHE=str(tmp_path / "fresh"))
    # a cache that never saw revision 2 takes revision 1 (documented: memory is per cache)
    assert run(webfs_so, ["cat", "/software/bin/hello.sh"], fresh).stdout.startswith(b'#!/bin/sh\necho "hello')


def test_tampered_and_truncated_objects_are_eio_and_never_cached(webfs_so, repo, tmp_path):
    _, site, pub, srv = repo
    env = agent_env(tmp_path, srv, pub)
    data = object_path(site, file_hash(site, "/share/data.bin", tmp_path / "s.db"))
    readme = object_path(site, file_hash(site, "/share/doc/README with spaces.txt", tmp_path / "s.db"))
    packed = data.read_bytes()
    raw = bytearray(zlib.decompress(packed))
    raw[1000] ^= 1
    cases = [zlib.compress(bytes(raw)),                   # one bit of the content changed
             packed[: len(packed) // 2],                   # the stream cut short
             packed + b"tail",                             # bytes after the stream
             zlib.compress(bytes(raw) + b"more"),          # longer than the catalog says
             b"not zlib at all",
             os.urandom(3_000_000)]                        # far longer than it can be: not taken whole
    for bad in cases:
        data.write_bytes(bad)
        p = run(webfs_so, ["cat", "/software/share/data.bin"], env)
        assert p.returncode == 1 and p.stdout == b"" and b"Input/output error" in p.stderr, p.stderr
        if len(bad) > 1_000_000:     # zlib's bound for 200000 bytes, and more: refused as it comes
            assert b"/software/share/data.bin: " + srv.url("repo").encode() + b" sent more than the object can be: refused" \
                in p.stderr, p.stderr
        else:
            assert b"/software/share/data.bin: http://127.0.0.1" in p.stderr and b"refused" in p.stderr
    data.write_bytes(packed)
    srv.set_mode("truncate")                               # Content-Length says more than is sent
    p = run(webfs_so, ["cat", "/software/share/doc/README with spaces.txt"], env)
    assert p.returncode == 1 and p.stdout == b"", p.stderr
    srv.set_mode("plain")
    readme_text = zlib.decompress(readme.read_bytes())
    p = run(webfs_so, ["cat", "/software/share/data.bin", "/software/share/doc/README with spaces.txt"], env)
    assert p.returncode == 0 and p.stdout == bytes(zlib.decompress(packed)) + readme_text, p.stderr


def test_a_tampered_catalog_is_refused(webfs_so, repo, tmp_path):
    _, site, pub, srv = repo
    digest = nested(site, tmp_path / "s.db")["/bin"]
    import sqlite3
    scratch = tmp_path / "bin.db"
    scratch.write_bytes(zlib.decompress(object_path(site, digest).read_bytes()))
    db = sqlite3.connect(scratch)
    db.execute("UPDATE entries SET target = '/etc/passwd' WHERE path = '/bin/hi'")
    db.commit()
    db.close()
    object_path(site, digest).write_bytes(zlib.compress(scratch.read_bytes()))
    p = run(webfs_so, ["readlink", "-v", "/software/bin/hi"], agent_env(tmp_path, srv, pub))
    assert p.returncode == 1 and p.stdout == b"" and b"Input/output error" in p.stderr, p.stderr
    assert b"/software/bin: http://127.0.0.1" in p.stderr and b"refused" in p.stderr
    assert not (tmp_path / "cache" / "catalogs" / digest).exists()


def test_bad_key_settings_stop_the_program(webfs_so, repo, tmp_path):
    _, _, pub, srv = repo
    (tmp_path / "bad.pub").write_text("ssh-ed25519 AAAA\n")
    for key, needle in ((tmp_path / "missing.pub", b"No such file"), (tmp_path / "bad.pub", b"not a public key")):
        p = run(webfs_so, ["true"], agent_env(tmp_path, srv, key))
        assert p.returncode == 2 and b"bypass[webfs]: error: /software: key file" in p.stderr and needle in p.stderr
    for extra, needle in ((f",key={pub}", b"more than one key="), (",proxy=ftp://x", b"proxy 'ftp://x' is not DIRECT"),
                          (",key=k.pub", b"key= wants the public key file's absolute path")):
        env = agent_env(tmp_path, srv, pub)
        env["BYPASS_WEBFS_MOUNTS"] += extra
        p = run(webfs_so, ["true"], env)
        assert p.returncode == 2 and b"bypass[webfs]: error: /software: " + needle in p.stderr, p.stderr


def test_two_repositories_a_dead_mirror_and_the_repositories_file(webfs_so, repo, tmp_path):
    local, site, pub, srv = repo
    other = tmp_path / "other"
    (other / "d").mkdir(parents=True)
    (other / "d" / "x.txt").write_text("second repository\n")
    cli("keygen", tmp_path / "k2")
    cli("publish", other, tmp_path / "site" / "repo2", "--key", tmp_path / "k2")
    (tmp_path / "repos.txt").write_text(
        f"# two signed repositories\n/software http://127.0.0.1:{dead_port()}/repo {srv.url('repo')} key={pub}\n"
        f"/cvmfs/two.example.org {srv.url('repo2')} key={tmp_path}/k2.pub\n")
    env = agent_env(tmp_path, srv, pub, BYPASS_WEBFS_REPOS=str(tmp_path / "repos.txt"))
    del env["BYPASS_WEBFS_MOUNTS"]
    p = run(webfs_so, ["sh", "-c", "cat /cvmfs/two.example.org/d/x.txt && /software/bin/greet"], env)
    assert p.stdout == b"second repository\ngreet 42\n", p.stderr
    assert b"mirror http://127.0.0.1:" in p.stderr and b"failed (" in p.stderr and b"the others are used" in p.stderr
    assert b"fastest mirror " + srv.url("repo").encode() in p.stderr


def test_proxies_fail_over_in_turn_and_mirrors_are_used_fastest_first(webfs_so, repo, tmp_path):
    _, site, pub, srv = repo
    shutil.copytree(site, tmp_path / "site" / "slow")       # a second mirror, made slow below
    with Proxy() as proxy:
        dead = f"http://127.0.0.1:{dead_port()}"
        env = agent_env(tmp_path, srv, pub, BYPASS_WEBFS_DEBUG="1",
                        BYPASS_WEBFS_MOUNTS=f"/software={srv.url('slow')},{srv.url('repo')},key={pub},"
                                            f"proxy={dead},proxy={proxy.url}")
        srv.httpd.delay = {"/slow/": 0.3}
        p = run(webfs_so, ["sh", "-c", "/software/bin/greet; cat /software/lib/pkg/sub/mod.py"], env)
        assert p.stdout == b"greet 42\nVALUE = sum(range(10))\n", p.stderr
        assert f"proxy {dead} failed".encode() in p.stderr and f"trying {proxy.url}".encode() in p.stderr
        assert b"fastest mirror " + srv.url("repo").encode() in p.stderr
        objects = [u for u in proxy.seen if "/data/" in u]
        assert objects and all("/repo/data/" in u for u in objects)   # the fast mirror's, through the proxy
        assert {u for u in proxy.seen if u.endswith("bypass.manifest")} == {srv.url("repo/bypass.manifest"),
                                                                              srv.url("slow/bypass.manifest")}
        # once: the working proxy is remembered by the cache for the job's later processes
        assert len([line for line in p.stderr.splitlines() if b"proxy" in line and b"failed" in line]) == 1
        # the next process asks no manifest (TTL) and keeps the measured order
        before = len(proxy.seen)
        assert run(webfs_so, ["cat", "/software/share/doc/empty", "/software/frozen/inside.txt"], env).returncode == 0
        assert all("/repo/" in u for u in proxy.seen[before:])


def test_the_alien_cache_serves_other_nodes_and_is_checked(webfs_so, repo, tmp_path):
    _, site, pub, srv = repo
    alien = tmp_path / "alien"
    alien.mkdir()
    node1 = agent_env(tmp_path, srv, pub, BYPASS_WEBFS_ALIEN=str(alien), BYPASS_WEBFS_CACHE=str(tmp_path / "n1"))
    assert run(webfs_so, ["env", "/software/bin/greet"], node1).stdout == b"greet 42\n"
    stored = sorted(p.relative_to(alien) for p in alien.rglob("*") if p.is_file())
    assert stored and not [p for p in stored if p.name.startswith(".new")]
    first = len(srv.requests)
    node2 = dict(node1, BYPASS_WEBFS_CACHE=str(tmp_path / "n2"))
    assert run(webfs_so, ["env", "/software/bin/greet"], node2).stdout == b"greet 42\n"
    assert [r for r in srv.requests[first:]] == ["/repo/bypass.manifest"]     # the rest from the alien cache
    greet = file_hash(site, "/bin/greet", tmp_path / "s.db")
    object_path(alien, greet).write_bytes(zlib.compress(b"#!/bin/sh\necho evil\n"))
    node3 = dict(node1, BYPASS_WEBFS_CACHE=str(tmp_path / "n3"))
    p = run(webfs_so, ["env", "/software/bin/greet"], node3)
    assert p.stdout == b"greet 42\n" and b"alien cache's copy" in p.stderr and b"damaged: ignored" in p.stderr


def concurrently(agent, cmd, env, n=16) -> list[tuple[bytes, bytes, int]]:
    """(stdout, stderr, exit status) of n processes started at once on the same cache."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("BYPASS_")}
    full.update(env, LD_PRELOAD=str(agent))
    procs = [subprocess.Popen(cmd, env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(n)]
    return [p.communicate(timeout=60) + (p.returncode,) for p in procs]


def assert_cache_whole(cache, local):
    """Nothing half-written is left for the next process: no temporary file or tree; every file
    of the skeleton is either a placeholder of the right size or the whole local file; the tree's
    list of nested catalogs has each subtree listed and loaded at most once, loaded only once
    listed, and ends with a whole line."""
    assert list((cache / "tmp").iterdir()) == []
    leftovers = [q for q in cache.rglob("*") if any(t in q.name for t in (".tmp-", ".new.", ".new-", ".evict-"))
                 or (q.name.startswith("fetch.") and q.name != "fetch.lock")]
    assert leftovers == []
    [tree] = [q for q in (cache / "trees").iterdir() if q.is_dir()]
    for q in (tree / "root").rglob("*"):
        if q.is_file() and not q.is_symlink():
            mine = local / q.relative_to(tree / "root")
            assert q.stat().st_size == mine.stat().st_size, q
            assert q.stat().st_blocks == 0 or q.read_bytes() == mine.read_bytes(), q
    text = (tree / "nested").read_text()
    assert text.endswith("\n")
    listed, loaded = [], []
    for line in text.splitlines():
        kind, rest = line.split(" ", 1)
        if kind == "N":
            listed.append(rest.split(" ", 1)[1])
        elif kind == "L":
            assert rest in listed, line
            loaded.append(rest)
    assert len(listed) == len(set(listed)) and len(loaded) == len(set(loaded)), text


def test_concurrent_cold_processes_fetch_each_object_once(webfs_so, repo, tmp_path):
    local, _, pub, srv = repo
    done = concurrently(webfs_so, ["md5sum", "/software/share/data.bin", "/software/lib/pkg/__init__.py"],
                        agent_env(tmp_path, srv, pub))
    outs = {out for out, _, _ in done}
    assert len(outs) == 1 and b"data.bin" in outs.pop(), [err for _, err, _ in done if err]
    assert all(status == 0 for _, _, status in done)
    objects = [r for r in srv.requests if "/data/" in r]
    assert len(objects) == len(set(objects)), objects
    assert_cache_whole(tmp_path / "cache", local)


def test_a_placeholder_filled_after_it_was_opened_reads_the_content(webfs_so, repo, tmp_path):
    """A descriptor opened on a placeholder that another fetch has since replaced: the kernel
    names the old inode "... (deleted)"; the agent finds the file by its own name. Here one process
    makes it happen on purpose (an O_PATH descriptor kept across the fetch, reopened through
    /proc/self/fd); 16 cold processes reading the same files make it happen by chance."""
    local, _, pub, srv = repo
    p = run(webfs_so, ["python3", "-c", REOPEN_HELD], agent_env(tmp_path, srv, pub))
    want = hashlib.md5((local / "share" / "data.bin").read_bytes()).hexdigest()
    assert p.returncode == 0 and p.stdout.decode().split() == [want, want], p.stderr
    assert_cache_whole(tmp_path / "cache", local)


MISSING = """import errno, os, sys
def e(f, *a):
    try:
        f(*a)
        return "ok"
    except OSError as x:
        return errno.errorcode[x.errno]
T = sys.argv[1]
for name in ("/share/nosuch", "/lib/pkg/nosuch", "/share/nodir/x", "/frozen/nosuch", "/nosuch", "/nodir/x"):
    print(name, e(os.stat, T + name), e(os.open, T + name, os.O_RDONLY), e(os.listdir, T + name))
print("/share/data.bin/x", e(os.stat, T + "/share/data.bin/x"))
with open(T + "/share/doc/README with spaces.txt") as f:
    print(f.read(19), end="")
"""


def test_missing_names_under_nested_catalogs_are_enoent(webfs_so, repo, tmp_path):
    """As the kernel answers for the local tree, cold and concurrently (the lookup waits for the
    subtree's catalog, then the skeleton answers), and warm with the server gone (nothing is asked
    for a name no catalog lists)."""
    local, site, pub, srv = repo
    want = subprocess.run([sys.executable, "-c", MISSING, str(local)], capture_output=True).stdout
    assert want.count(b"ENOENT") == 18 and want.endswith(b"needle in the tree\n")
    env = agent_env(tmp_path, srv, pub)
    done = concurrently(webfs_so, [sys.executable, "-c", MISSING, "/software"], env)
    assert [(out, status) for out, _, status in done] == [(want, 0)] * 16, [err for _, err, _ in done if err]
    subs = nested(site, tmp_path / "scratch.db")
    catalogs = [f"/repo/data/{h[:2]}/{h[2:]}" for h in (manifest(site)["root"], subs["/share"], subs["/lib"],
                                                          subs["/frozen"])]
    objects = sorted(r for r in srv.requests if "/data/" in r)
    assert len(objects) == len(set(objects)) and set(catalogs) <= set(objects), objects
    assert len(objects) == len(catalogs) + 1                # and the README, once
    assert_cache_whole(tmp_path / "cache", local)
    srv.set_mode("silent")
    again = run(webfs_so, [sys.executable, "-c", MISSING, "/software"], env)
    assert again.stdout == want and again.stderr == b"", again.stderr


def test_publish_refuses_what_it_cannot_do(tmp_path):
    (tmp_path / "t").mkdir()
    p = cli("publish", tmp_path / "t", tmp_path / "t" / "out", "--key", tmp_path / "k", check=False)
    assert p.returncode == 2 and "inside" in p.stderr
    (tmp_path / "k2").write_text("not a key")
    p = cli("publish", tmp_path / "t", tmp_path / "out", "--key", tmp_path / "k2", check=False)
    assert p.returncode == 2 and "not an unencrypted PEM private key" in p.stderr and "Traceback" not in p.stderr
    p = cli("publish", tmp_path / "nothere", tmp_path / "out", "--key", tmp_path / "k", check=False)
    assert p.returncode == 2 and "not a directory" in p.stderr
    shutil.rmtree(tmp_path / "t")


def test_bypass_run_mounts_with_dash_m(webfs_so, repo, tmp_path):
    _, _, pub, srv = repo
    relative = os.path.relpath(pub, REPO)          # cli() runs in REPO: -M makes the key's path absolute
    p = cli("run", "agents/webfs/webfs.bypass", "--agent", webfs_so, "-M", f"/software={srv.url('repo')},key={relative}",
            "--set", f"BYPASS_WEBFS_CACHE={tmp_path / 'cache'}", "--", "sh", "-c", "cd / && cat /software/lib/pkg/sub/mod.py")
    assert p.stdout == "VALUE = sum(range(10))\n"
    p = cli("run", "agents/webfs/webfs.bypass", "--agent", webfs_so, "-M", "software", "--", "true", check=False)
    assert p.returncode == 2 and "-M wants PREFIX=URL" in p.stderr
    p = cli("run", "agents/webfs/webfs.bypass", "--agent", webfs_so, "-M", f"/software={srv.url('repo')},key=/nope",
            "--", "true", check=False)
    assert p.returncode == 2 and "bypass[webfs]: error: /software: key file /nope" in p.stderr


def test_publish_nests_catalogs_by_depth_and_by_marker(tmp_path):
    tree = tmp_path / "t"
    (tree / "a" / "deep" / "er").mkdir(parents=True)
    (tree / "a" / "deep" / "er" / "f").write_text("f\n")
    (tree / "a" / "deep" / ".bypasscatalog").write_text("")
    (tree / "b" / "c").mkdir(parents=True)
    cli("publish", tree, tmp_path / "repo", "--key", tmp_path / "k", "--nest-depth", "1")
    repo = tmp_path / "repo"
    root = manifest(repo)["root"]
    assert nested(repo, tmp_path / "s.db").keys() == {"/a", "/b"}
    db = catalog(repo, nested(repo, tmp_path / "s.db")["/a"], tmp_path / "a.db")
    assert dict(db.execute("SELECT path, nested IS NOT NULL FROM entries")) == {"/a": 0, "/a/deep": 1}
    deep = db.execute("SELECT nested FROM entries WHERE path = '/a/deep'").fetchone()[0]
    db.close()
    db = catalog(repo, deep, tmp_path / "d.db")
    assert sorted(r[0] for r in db.execute("SELECT path FROM entries")) == [
        "/a/deep", "/a/deep/.bypasscatalog", "/a/deep/er", "/a/deep/er/f"]
    db.close()
    cli("publish", tree, repo, "--key", tmp_path / "k", "--nest-depth", "0")
    assert manifest(repo)["revision"] == "2" and manifest(repo)["root"] != root
    assert nested(repo, tmp_path / "s.db").keys() == {"/a/deep"}


def test_a_signed_catalog_that_does_not_make_a_tree_is_refused(webfs_so, tmp_path):
    """A publisher's bug, not an attack (the catalog is signed): entries outside the subtree, with
    `..`, without their directory, or of an unknown type are EIO, and nothing of them is built."""
    import hashlib
    import sqlite3

    from bypass.publish import SCHEMA, keygen, load_private_key, manifest_text

    keygen(tmp_path / "k")
    key = load_private_key(tmp_path / "k")
    empty = hashlib.sha256(b"").hexdigest()
    rows = {
        "dotdot": [("/../escape", "F", 0o100644, 0, 1, 0, empty, None, None)],
        "orphan": [("/no/dir/f", "F", 0o100644, 0, 1, 0, empty, None, None)],
        "type": [("/x", "Q", 0o100644, 0, 1, 0, None, None, None)],
        "mode": [("/x", "D", 0o100644, 0, 1, 0, None, None, None)],
    }
    for i, (name, extra) in enumerate(rows.items()):
        repo = tmp_path / f"site{i}" / "repo"
        (repo / "data").mkdir(parents=True)
        db_path = tmp_path / f"{name}.db"
        db = sqlite3.connect(db_path)
        db.executescript(SCHEMA)
        db.executemany("INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       [("", "D", 0o40755, 0, 1, 0, None, None, None), *extra])
        db.commit()
        db.close()
        data = db_path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        object_path(repo, digest).parent.mkdir(parents=True)
        object_path(repo, digest).write_bytes(zlib.compress(data))
        (repo / "bypass.manifest").write_text(manifest_text(1, digest, 1, key.sign))
        with Server(tmp_path / f"site{i}") as srv:
            env = agent_env(tmp_path, srv, tmp_path / "k.pub", BYPASS_WEBFS_CACHE=str(tmp_path / f"c{i}"))
            p = run(webfs_so, ["ls", "/software"], env)
        assert p.returncode == 2 and b"Input/output error" in p.stderr, (name, p.stderr)
        assert b"refused" in p.stderr, p.stderr
        assert not list((tmp_path / f"c{i}").rglob("escape"))
        assert not (tmp_path / f"c{i}" / "trees").exists() or not [
            q for q in (tmp_path / f"c{i}" / "trees").iterdir() if not q.name.endswith(".lock")]


def test_the_bounded_cache_evicts_and_refetches_repository_files(webfs_so, repo, tmp_path):
    local, site, pub, srv = repo
    env = agent_env(tmp_path, srv, pub, BYPASS_WEBFS_CACHE_MAX="230000")   # data.bin: 200,000 bytes
    job = "cat {T}/share/data.bin | md5sum; cat {T}/bin/greet | md5sum; {T}/bin/greet"
    want = subprocess.run(job.format(T=local), shell=True, capture_output=True).stdout
    assert run(webfs_so, ["sh", "-c", job.format(T="/software")], env).stdout == want
    [tree] = [q for q in (tmp_path / "cache" / "trees").iterdir() if q.is_dir()]
    filled = sum(q.stat().st_size for q in (tree / "root").rglob("*")
                 if q.is_file() and not q.is_symlink() and q.stat().st_blocks > 0)
    assert filled <= 230_000 and (tree / "root" / "share" / "data.bin").stat().st_blocks == 0
    digest = file_hash(site, "/share/data.bin", tmp_path / "s.db")
    data = f"/repo/data/{digest[:2]}/{digest[2:]}"
    assert run(webfs_so, ["sh", "-c", job.format(T="/software")], env).stdout == want
    assert srv.requests.count(data) == 2                   # fetched again, checked again
