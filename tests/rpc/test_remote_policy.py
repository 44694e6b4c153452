"""Issue 16: policy in the shadow, mechanism in the agent.  file_remaps with $(PROCESS), URLs and
local: paths; buffered and staged files that give the bytes direct remote calls give; the I/O
report against what the program did, counted independently by the trace agent."""
from __future__ import annotations

import functools
import http.server
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from bypass.build import build

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "agents" / "remote" / "remote.bypass"
TRACE = ROOT / "agents" / "trace" / "trace.bypass"
FSX = Path(__file__).resolve().parent / "data" / "fsx.py"


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    return build(SPEC, tmp_path_factory.mktemp("remote") / "remote.so")


@pytest.fixture(scope="module")
def trace_agent(tmp_path_factory):
    return build(TRACE, tmp_path_factory.mktemp("trace") / "trace.so")


def bypass(*args, timeout=300, **kw):
    return subprocess.run([sys.executable, "-m", "bypass.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, **kw)


def run_job(agent, export, policy_text, *command, tmp_path, process=None, summary=True):
    """`bypass run --export` with a policy; returns (completed process, report as JSON)."""
    policy = tmp_path / f"policy-{len(list(tmp_path.iterdir()))}.txt"
    policy.write_text(policy_text)
    out = tmp_path / f"report-{len(list(tmp_path.iterdir()))}.json"
    extra = ["--process", process] if process is not None else []
    p = bypass("run", SPEC, "--agent", agent, "--export", export, "--policy", policy, *extra,
               *(["--summary"] if summary else []), "--summary-json", out, "--", *command)
    return p, (json.loads(out.read_text()) if out.exists() else None)


# ---- file_remaps -------------------------------------------------------------------------------

def test_remap_with_process_gives_each_job_its_own_data(agent, tmp_path):
    export = tmp_path / "export"
    export.mkdir()
    (export / "data.0").write_text("job zero's data\n")
    (export / "data.1").write_text("job one's data\n")
    policy = 'file_remaps = "datafile = data.$(PROCESS) ; out = result.$(Process)"\n'
    for n in (0, 1):
        p, report = run_job(agent, export, policy, "sh", "-c",
                            "cat /job/datafile; stat -c %s /job/datafile; test -r /job/datafile && "
                            "echo done > /job/out", tmp_path=tmp_path, process=n)
        assert p.returncode == 0, p.stderr
        data = (export / f"data.{n}").read_text()
        assert p.stdout == data + f"{len(data)}\n"            # every call on the name is the file's
        assert (export / f"result.{n}").read_text() == "done\n"
        rows = {f["path"]: f for f in report["files"]}
        assert rows[f"/job/data.{n}"]["decision"] == "remote,from:/job/datafile"
        assert rows[f"/job/result.{n}"]["bytes_written"] == 5
    assert not (export / "datafile").exists() and not (export / "out").exists()


@pytest.fixture
def web(tmp_path):
    root = tmp_path / "web"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def test_remap_to_a_url_reads_the_fetched_copy(agent, tmp_path, web):
    root, base = web
    calib = bytes(range(256)) * 5000                      # 1.28 MB: more than one pull
    (root / "calib").write_bytes(calib)
    export = tmp_path / "export"
    export.mkdir()
    policy = f'file_remaps = "calib = {base}/calib ; gone = {base}/missing"\n'
    code = ("import os, errno\n"
            "f = open('/job/calib', 'rb'); f.seek(1000); a = f.read(10); f.seek(0); b = f.read(); f.close()\n"
            "print(a.hex(), len(b), os.stat('/proc/self/exe') is not None)\n"
            "import hashlib; print(hashlib.sha256(b).hexdigest())\n"
            "print(os.stat('/job/calib').st_size, os.access('/job/calib', os.R_OK))\n"
            "for flags in (os.O_WRONLY, os.O_RDWR | os.O_TRUNC):\n"
            "    try: os.write(os.open('/job/calib', flags), b'no')\n"
            "    except OSError as e: print(errno.errorcode[e.errno])\n"
            "try: open('/job/gone')\n"
            "except OSError as e: print(errno.errorcode[e.errno])\n")
    p, report = run_job(agent, export, policy, sys.executable, "-c", code, tmp_path=tmp_path)
    assert p.returncode == 0, p.stderr
    import hashlib
    refused = "EPERM" if os.geteuid() == 0 else "EACCES"     # (root may open it: the copy is sealed)
    assert p.stdout.splitlines() == [calib[1000:1010].hex() + f" {len(calib)} True",
                                     hashlib.sha256(calib).hexdigest(), f"{len(calib)} True", refused, refused,
                                     "ENOENT"]
    assert "HTTP 404" in p.stderr and f"{base}/missing" in p.stderr
    rows = {f["path"]: f for f in report["files"]}
    assert rows["/job/calib"]["decision"] == f"{base}/calib" and rows["/job/calib"]["local_io_unseen"]
    assert not list(export.iterdir())                      # nothing was written to the export


def test_remap_to_a_local_path(agent, tmp_path):
    export, scratch = tmp_path / "export", tmp_path / "scratch"
    export.mkdir()
    scratch.mkdir()
    p, report = run_job(agent, export, f'file_remaps = "tmp.dat = local:{scratch}/t.dat"\n', "sh", "-c",
                        "echo local > /job/tmp.dat; cat /job/tmp.dat", tmp_path=tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout == "local\n" and (scratch / "t.dat").read_text() == "local\n"
    assert not (export / "tmp.dat").exists()
    assert {f["path"]: f["decision"] for f in report["files"]} == {"/job/tmp.dat": f"local:{scratch}/t.dat"}


def test_fopen_and_opendir_of_remapped_names(agent, tmp_path, web):
    """sort reads with fopen, ls with opendir: a remap to local: or a URL is a plain local
    stream or directory for them."""
    root, base = web
    (root / "words").write_text("pear\napple\nfig\n")
    export, scratch = tmp_path / "export", tmp_path / "scratch"
    export.mkdir()
    (scratch / "dir").mkdir(parents=True)
    (scratch / "dir" / "inside").write_text("")
    (scratch / "list").write_text("b\na\n")
    policy = f'file_remaps = "words = {base}/words ; list = local:{scratch}/list ; d = local:{scratch}/dir"\n'
    p, _ = run_job(agent, export, policy, "sh", "-c", "sort /job/words; sort /job/list; ls /job/d/", tmp_path=tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["apple", "fig", "pear", "a", "b", "inside"]


# ---- bad policy files --------------------------------------------------------------------------

@pytest.mark.parametrize("text, line, message", [
    ("buffer_size = 100\nbuffer_sise = 3\n", 2, "unknown setting 'buffer_sise'"),
    ("# c\n\nbuffer_size = lots\n", 3, "buffer_size wants a number of bytes"),
    ('file_remaps = "a = b.$(CLUSTER)"\n', 1, "unknown macro $(CLUSTER)"),
    ('file_remaps = "a = /etc/passwd"\n', 1, "outside the export"),
    ('file_remaps = "a = b\n', 1, "unbalanced quotes"),
    ('file_remaps = "a b"\n', 1, "expected `name = target`"),
    ('buffer_files = "x = (10)"\n', 1, "buffer_files wants `name = (size, block)`"),
    ("buffer_block_size = 0\n", 1, "out of range"),
    ('file_remaps = "x = local:rel"\n', 1, "must be an absolute path"),
    ("buffer_size = 1\nbuffer_size = 2\n", 2, "already set on line 1"),
    ("just words\n", 1, "expected `name = value`"),
])
def test_a_bad_policy_is_refused_with_file_and_line(agent, tmp_path, text, line, message):
    export = tmp_path / "export"
    export.mkdir()
    policy = tmp_path / "p.txt"
    policy.write_text(text)
    p = bypass("run", SPEC, "--agent", agent, "--export", export, "--policy", policy, "--", "true")
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert f"{policy}:{line}: error: " in p.stderr and message in p.stderr, p.stderr


def test_options_that_cannot_apply_are_refused(agent, tmp_path):
    policy = tmp_path / "p.txt"
    policy.write_bytes(b"buffer_size = 1\n\xff\n")
    for args, message in [(["--summary"], "--summary needs --export"),
                          (["--summary-json", tmp_path / "r.json"], "--summary-json needs --export"),
                          (["--policy", policy], "--policy needs --export"),
                          (["--export", tmp_path, "--process", "3"], "--process needs --policy"),
                          (["--export", tmp_path, "--policy", policy], f"{policy}:2: error: not UTF-8")]:
        p = bypass("run", SPEC, "--agent", agent, *args, "--", "true")
        assert p.returncode == 2 and message in p.stderr and "Traceback" not in p.stderr, p.stderr
    # a shadow that keeps no report: --summary is refused before anything is served
    p = bypass("shadow", TRACE, "--summary", timeout=60)
    assert p.returncode == 2 and "keeps no I/O report" in p.stderr and "BYPASS_SHADOW=" not in p.stdout


# ---- buffered and staged files are exact -------------------------------------------------------

POLICIES = {
    "small blocks": "buffer_size = 65536\nbuffer_block_size = 1000\n",   # blocks collide, unaligned size
    "file-sized buffer": "buffer_size = 1000000\nbuffer_block_size = 32768\n",
    "staged": "fetch_files = *\n",
    "per file": 'buffer_size = 4096\nbuffer_files = "f = (300000, 4096)"\n',
}


@pytest.mark.parametrize("name", POLICIES)
def test_buffered_and_staged_files_leave_the_bytes_direct_calls_do(agent, tmp_path, name):
    """fsx's soak (two descriptors, mappings, vectored I/O, truncation, allocation) prints what a
    run on a local file prints, and leaves the same file."""
    native = subprocess.run([sys.executable, FSX, tmp_path / "f", "21", "6000"], capture_output=True,
                            text=True, timeout=300)
    assert native.returncode == 0, native.stderr
    export = tmp_path / "export"
    export.mkdir()
    p, report = run_job(agent, export, POLICIES[name], sys.executable, FSX, "/job/f", "21", "6000",
                        tmp_path=tmp_path, summary=False)
    assert p.returncode == 0, p.stderr
    assert p.stdout == native.stdout and len(native.stdout.split()) == 3
    assert (export / "f").read_bytes() == (tmp_path / "f").read_bytes()
    decision = report["files"][0]["decision"]
    assert decision == ("staged" if name == "staged" else "buffered(300000,4096)" if name == "per file"
                        else "buffered(65536,1000)" if name == "small blocks" else "buffered(1000000,32768)")


def test_another_process_sees_what_a_buffered_writer_wrote(agent, tmp_path):
    """Writes held in a buffer are written back before the next call reaches the shadow (here:
    the fork for the child) and at close, so a reader started then sees them."""
    export = tmp_path / "export"
    export.mkdir()
    code = ("import os, subprocess\n"
            "fd = os.open('/job/w', os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)\n"
            "for i in range(100): os.write(fd, b'%03d\\n' % i)\n"
            "print(subprocess.run(['wc', '-c', '/job/w'], capture_output=True, text=True).stdout.split()[0])\n"
            "os.write(fd, b'tail\\n')\n"
            "print(os.stat('/job/w').st_size)\n"
            "os.close(fd)\n")
    p, _ = run_job(agent, export, "buffer_size = 1000000\n", sys.executable, "-c", code, tmp_path=tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["400", "405"]
    assert (export / "w").read_bytes() == b"".join(b"%03d\n" % i for i in range(100)) + b"tail\n"


WRITE_PAST_LIMIT = r"""
import errno, os
fd = os.open('/job/big', os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
said = []
try:
    for i in range(40):
        os.write(fd, b'x' * 4096)
    os.fsync(fd)
except OSError as e:
    said.append(errno.errorcode[e.errno])
try:
    os.close(fd)
except OSError as e:
    said.append(errno.errorcode[e.errno])
print(said[0] if said else 'no error')
"""


@pytest.mark.parametrize("policy", ["", "buffer_size = 1000000\n", "fetch_files = big\n"])
def test_a_write_that_fails_when_written_back_is_not_reported_done(agent, tmp_path, policy):
    """A shadow whose files may not grow past 64 KiB (RLIMIT_FSIZE): the direct write fails at
    once; a held write makes fsync (or close) fail with the same error, never success."""
    import resource
    import signal as sig
    export = tmp_path / "export"
    export.mkdir()
    (tmp_path / "p.txt").write_text(policy or "# none\n")

    def limit():
        sig.signal(sig.SIGXFSZ, sig.SIG_IGN)           # EFBIG instead of the signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
    shadow = subprocess.Popen([sys.executable, "-m", "bypass.cli", "shadow", SPEC, "--export", export,
                               "--policy", tmp_path / "p.txt"], stdout=subprocess.PIPE, text=True,
                              preexec_fn=limit)
    try:
        address = shadow.stdout.readline().strip().split("=", 1)[1]
        p = subprocess.run([sys.executable, "-c", WRITE_PAST_LIMIT], capture_output=True, text=True, timeout=120,
                           env=dict(os.environ, LD_PRELOAD=str(agent), BYPASS_SHADOW=address))
    finally:
        shadow.terminate()
        shadow.wait(30)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "EFBIG"
    assert (export / "big").stat().st_size <= 65536


@pytest.mark.parametrize("policy", [None, "buffer_size = 65536\nbuffer_block_size = 1024\n", "fetch_files = *\n"])
def test_conform_finds_nothing_a_buffer_or_stage_changes(agent, tmp_path, policy):
    """`bypass conform` with a policy that buffers or stages every file finds no divergence
    from the kernel but those remote.expected gives reasons for, as without a policy."""
    export = tmp_path / "export"
    export.mkdir()
    extra = []
    if policy:
        (tmp_path / "p.txt").write_text(policy)
        extra = ["--policy", tmp_path / "p.txt"]
    done = bypass("conform", SPEC, "--agent", agent, "--export", export, "--seed", 1, "--ops", 1000, "--json",
                  *extra, timeout=600)
    items = json.loads(done.stdout)["items"]
    unexpected = sorted(i["title"] for i in items if not i["expected"])
    assert not any(i["agent"].startswith("killed") or "child killed" in i["agent"] for i in items), unexpected
    assert unexpected == [], unexpected
    assert list(export.iterdir()) == []


# ---- the report --------------------------------------------------------------------------------

JOB = r"""
import os, random, sys
base = sys.argv[1]
rnd = random.Random(5)
fd = os.open(base + "/in.dat", os.O_RDONLY)
for _ in range(300):
    os.lseek(fd, rnd.randrange(200000), os.SEEK_SET)
    os.read(fd, rnd.randrange(1, 3000))
os.read(fd, 10 ** 6)                                   # to the end, and past it
os.close(fd)
out = os.open(base + "/out.dat", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
for i in range(200):
    os.write(out, b"x" * rnd.randrange(1, 500))
os.lseek(out, 10, os.SEEK_SET)
os.write(out, b"head")
os.pwrite(out, b"p", 3)
os.close(out)
rw = os.open(base + "/in.dat", os.O_RDWR)
os.pread(rw, 100, 5)
os.close(rw)
for name in ("missing", "nodir/x"):
    try:
        os.open(base + "/" + name, os.O_RDONLY)
    except OSError:
        pass
"""


def traced_counts(log: str, base: str) -> dict:
    """Per file, from the trace agent's log: opens (failed ones too), reads, writes, seeks."""
    rows, fds = {}, {}
    for line in log.splitlines():
        m = re.match(r"(\d+) (\w+)\((.*)\) = (-?\d+)", line)
        if not m:
            continue
        pid, name, args, result = m.group(1), m.group(2), m.group(3), int(m.group(4))
        if name in ("open", "openat"):
            path = re.search(r'"([^"]*)"', args).group(1)
            if path.startswith(base + "/"):
                row = rows.setdefault("/job" + path[len(base):], dict.fromkeys(
                    ("opens", "failed_opens", "reads", "bytes_read", "writes", "bytes_written", "seeks"), 0))
                row["opens"] += 1
                if result < 0:
                    row["failed_opens"] += 1
                else:
                    fds[(pid, result)] = row
            continue
        fd = args.split(",")[0]
        row = fds.get((pid, int(fd))) if fd.isdigit() else None
        if row is None:
            continue
        if name in ("read", "pread", "pread64"):
            row["reads"] += 1
            row["bytes_read"] += max(result, 0)
        elif name in ("write", "pwrite", "pwrite64"):
            row["writes"] += 1
            row["bytes_written"] += max(result, 0)
        elif name in ("lseek", "lseek64"):
            row["seeks"] += 1
        elif name == "close":
            del fds[(pid, int(fd))]
    return rows


@pytest.fixture(scope="module")
def traced(trace_agent, tmp_path_factory):
    """The job on local disk under the trace agent: the independent count."""
    work = tmp_path_factory.mktemp("traced")
    data = work / "data"
    data.mkdir()
    (data / "in.dat").write_bytes(os.urandom(200000))
    (work / "job.py").write_text(JOB)
    log = work / "trace.log"
    p = bypass("run", TRACE, "--agent", trace_agent, "--trace", log, "--", sys.executable, work / "job.py", data)
    assert p.returncode == 0, p.stderr
    return data, traced_counts(log.read_text(), str(data))


@pytest.mark.parametrize("policy", ["", "buffer_size = 300000\n", "buffer_size = 8192\nbuffer_block_size = 512\n",
                                    "fetch_files = *.dat\n"])
def test_report_totals_are_its_rows_and_what_the_program_did(agent, traced, tmp_path, policy):
    data, expected = traced
    export = tmp_path / "export"
    export.mkdir()
    (export / "in.dat").write_bytes((data / "in.dat").read_bytes())
    (tmp_path / "job.py").write_text(JOB)
    p, report = run_job(agent, export, policy or "# nothing\n", sys.executable, tmp_path / "job.py", "/job",
                        tmp_path=tmp_path)
    assert p.returncode == 0, p.stderr
    assert (export / "out.dat").read_bytes() == (data / "out.dat").read_bytes()
    keys = ("opens", "failed_opens", "reads", "bytes_read", "writes", "bytes_written", "seeks")
    got = {f["path"]: {k: f[k] for k in keys} for f in report["files"]}
    assert got == expected
    totals = report["totals"]
    for k in keys:
        assert totals[k] == sum(f[k] for f in report["files"]), k
    assert totals["files"] == 4 and totals["failed_opens"] == 2 and totals["elapsed_seconds"] > 0
    assert totals["throughput_bytes_per_second"] > 0
    # the text report says the same, in Condor's shape: totals first, then a row per file
    text = p.stderr[p.stderr.index("I/O report"):]
    assert f"reads          {totals['reads']} ({totals['bytes_read']} bytes)" in text
    assert f"files opened   {totals['opens']} (2 failed) in 4 file(s)" in text
    row = next(line for line in text.splitlines() if line.endswith(" /job/in.dat")).split()
    assert row[:7] == [str(got["/job/in.dat"][k]) for k in keys]


def test_report_names_are_escaped_and_job_relative(agent, tmp_path):
    export = tmp_path / "export"
    export.mkdir()
    p, report = run_job(agent, export, "# none\n", "sh", "-c",
                        "cd /job && echo a > ./x && cat /job/./x x > /dev/null && "
                        "echo b > '/job/two words' && echo c > \"$(printf '/job/bad\\377name')\"",
                        tmp_path=tmp_path)
    assert p.returncode == 0, p.stderr
    paths = sorted(f["path"] for f in report["files"])
    assert paths == ["/job/bad\\xffname", "/job/two\\x20words", "/job/x"]
    lines = p.stderr.splitlines()
    header = next(i for i, line in enumerate(lines) if line.lstrip().startswith("opens"))
    rows = lines[header + 1:]
    assert len(rows) == 3 and all(len(r.split()) == 9 for r in rows)
    x = next(r for r in rows if r.endswith(" /job/x")).split()
    assert x[0] == "3" and x[3] == "4"          # three opens, 2 + 2 bytes read by cat


# ---- the policy's decisions (no agent needed) -----------------------------------------------------

def test_decisions_follow_condors_precedence(tmp_path):
    from bypass.rpc.policy import EXPORT, LOCAL, STAGE, URL, parse
    (tmp_path / "sub").mkdir()
    policy = parse('file_remaps = "in = sub/in.$(PROCESS) ; /job/cal = http://h/c ; t = local:/s/t"\n'
                   "buffer_size = 100000\nbuffer_block_size = 200000\n"
                   'buffer_files = "sub/*.log = (0, 0) ; *.big = (4000000, 65536)"\n'
                   "fetch_files = *.db, sub/keep*\n", "p", process=7, export=str(tmp_path))
    assert policy.decide("/in").where == "/sub/in.7" and policy.export_name("/./in") == "/sub/in.7"
    assert policy.export_name("/in/") == "/sub/in.7/" and policy.export_name("/other") == "/other"
    assert policy.decide("/cal") == policy.decide("/cal").__class__(URL, "http://h/c", STAGE, 0)
    assert policy.decide("/t").kind == LOCAL and policy.decide("/t").where == "/s/t"
    assert (policy.decide("/x").size, policy.decide("/x").block) == (100000, 100000)   # block <= buffer
    assert (policy.decide("/sub/a.log").size, policy.decide("/a.log").size) == (0, 100000)
    assert policy.decide("/deep/er/f.big").size == 4000000                # no "/": any directory
    assert policy.decide("/a/b.db").size == STAGE and policy.decide("/sub/keep.txt").size == STAGE
    assert policy.decide("/keep.txt").size == 100000 and policy.decide("/x").kind == EXPORT
    assert parse("# only comments\n\n").empty()


def test_a_bad_policy_is_refused_by_bypass_shadow_too(tmp_path):
    policy = tmp_path / "p.txt"
    policy.write_text('fetch_files = *.db\nfile_remaps = "a = $(PROCESS"\n')
    p = bypass("shadow", SPEC, "--export", tmp_path, "--policy", policy, timeout=60)
    assert p.returncode == 2 and f"{policy}:2: error: unclosed $(" in p.stderr and "Traceback" not in p.stderr
    assert "BYPASS_SHADOW=" not in p.stdout
