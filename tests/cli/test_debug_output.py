"""`bypass run SPEC -d SUBSYSTEM -o FILE -- prog` (Parrot's -d/-o): real programs under real agents.

The debug file gets the lines of the subsystems asked for, from every process of the run (threads,
fork, exec, a sandboxed child that may not open the file again), and the program cannot tell:
same output, same descriptor numbers, nothing on its stderr."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from agentrun import AGENTS

TRACE = AGENTS / "trace" / "trace.bypass"
SANDBOX = AGENTS / "sandbox" / "sandbox.bypass"
REMOTE = AGENTS / "remote" / "remote.bypass"
LINE = re.compile(r"^(trace|sandbox|remote) (\d+) (calls|process|resolve|rpc|policy): .*$")


def bypass(*args, cwd, **kw) -> subprocess.CompletedProcess:
    """`bypass ARGS`; stderr without the line of an agent's first build, which is not the program's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BYPASS_") and k != "LD_PRELOAD"}
    if os.environ.get("BYPASS_CACHE_DIR"):
        env["BYPASS_CACHE_DIR"] = os.environ["BYPASS_CACHE_DIR"]
    done = subprocess.run([sys.executable, "-m", "bypass.cli", *args], cwd=cwd, capture_output=True,
                          text=True, env=env, timeout=300, **kw)
    done.stderr = re.sub(r"^bypass: building \S+ \(first run\) … [\d.]+ s\n", "", done.stderr, flags=re.M)
    return done


def lines_of(log: Path) -> list[str]:
    lines = log.read_text().splitlines()
    bad = [line for line in lines if not LINE.match(line)]
    assert not bad, f"lines not whole or not of the asked subsystems: {bad[:3]}"
    return lines


def test_calls_go_to_the_file_and_the_program_sees_nothing(tmp_path):
    data = tmp_path / "data.txt"
    data.write_text("hello\n" * 100)
    program = ("import os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); print(fd, len(os.read(fd, 10000)));"
               "print(sorted(int(n) for n in os.listdir('/proc/self/fd') if int(n) < 800))")
    native = subprocess.run([sys.executable, "-c", program, str(data)], capture_output=True, text=True)
    log = tmp_path / "debug.log"
    done = bypass("run", str(TRACE), "-d", "calls", "-o", str(log), "--", sys.executable, "-c", program, str(data),
                  cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == native.stdout                # same descriptor numbers, same bytes
    assert "calls:" not in done.stderr
    lines = lines_of(log)
    assert any(re.search(rf'calls: open\w*\(.*"{re.escape(str(data))}".*\) = \d+ <open\w*>$', line)
               for line in lines), lines[:20]
    assert all(" calls: " in line for line in lines)    # only the subsystem asked for


def test_every_process_of_the_run_writes_whole_lines_through_fork_threads_and_exec(tmp_path):
    script = ("import os, threading, sys\n"
              "def work(n):\n"
              "    for i in range(50):\n"
              "        try: os.stat(f'/nonexistent-{n}-{i}')\n"
              "        except OSError: pass\n"
              "ts = [threading.Thread(target=work, args=(n,)) for n in range(4)]\n"
              "[t.start() for t in ts]; [t.join() for t in ts]\n"
              "pid = os.fork()\n"
              "if pid == 0:\n"
              "    os.execv('/bin/cat', ['cat', '/etc/hostname'])\n"
              "os.waitpid(pid, 0)\n")
    log = tmp_path / "debug.log"
    done = bypass("run", str(TRACE), "-d", "calls,process", "-o", str(log), "--", sys.executable, "-c", script,
                  cwd=tmp_path)
    native = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout == native.stdout and done.stderr == native.stderr
    lines = lines_of(log)
    for n in range(4):
        assert sum(f"/nonexistent-{n}-" in line for line in lines) == 50, n
    pids = {m.group(2) for m in map(LINE.match, lines)}
    starts = [line for line in lines if " process: start " in line]
    assert len(starts) == 2 and any("/cat " in line for line in starts), starts
    assert len(pids) >= 2
    assert any(re.search(r'calls: open\w*\(.*"/etc/hostname"', line) for line in lines)   # in cat, after exec


def test_sandboxed_children_keep_writing_where_landlock_forbids_opening(tmp_path):
    mounts = tmp_path / "mounts.txt"
    mounts.write_text("/ rx\n/tmp PRIVATE\n/home DENY\n")
    log = tmp_path / "debug.log"            # not writable under "/ rx": only the first process opened it
    command = ["sh", "-c", "ls /home; cat /etc/hostname; ls /tmp"]
    plain = bypass("run", str(SANDBOX), "-m", str(mounts), "--", *command, cwd=tmp_path)
    done = bypass("run", str(SANDBOX), "-m", str(mounts), "-d", "policy", "-o", str(log), "--", *command,
                  cwd=tmp_path)
    assert (done.returncode, done.stdout, done.stderr) == (plain.returncode, plain.stdout, plain.stderr)
    lines = lines_of(log)
    assert any(re.search(r"sandbox \d+ policy: \w+ /home: EACCES \(mount list line 3\)$", line) for line in lines)
    assert any(re.search(r"policy: read /etc/hostname -> /etc/hostname \(mount list line 1\)$", line)
               for line in lines)
    assert len({m.group(2) for m in map(LINE.match, lines)}) >= 3       # sh, and each program it ran


def test_rpc_lines_of_a_remote_run(tmp_path):
    export = tmp_path / "export"
    export.mkdir()
    (export / "in.txt").write_text("remote bytes\n")
    log = tmp_path / "debug.log"
    done = bypass("run", str(REMOTE), "--export", str(export), "-d", "rpc", "-o", str(log), "--",
                  "cat", "/job/in.txt", cwd=tmp_path)
    assert done.returncode == 0 and done.stdout == "remote bytes\n", done.stderr
    lines = lines_of(log)
    assert any(re.search(r"remote \d+ rpc: connected to unix:", line) for line in lines), lines[:5]
    assert any(re.search(r"rpc: call \w+ \(\d+\): answered, \d+ us$", line) for line in lines), lines[:5]


def test_without_o_the_lines_go_to_stderr(tmp_path):
    done = bypass("run", str(TRACE), "-d", "calls", "--", "cat", "/etc/hostname", cwd=tmp_path)
    assert done.returncode == 0
    assert re.search(r'^trace \d+ calls: open\w*\(.*"/etc/hostname"', done.stderr, re.M), done.stderr


def refused(done: subprocess.CompletedProcess, folder: Path, before: list[str]) -> str:
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in folder.iterdir()) == before, "something was written"
    return done.stderr.strip().splitlines()[-1]


def test_unknown_subsystem_lists_the_known_ones(tmp_path):
    message = refused(bypass("run", str(TRACE), "-d", "calls,polcy", "--", "true", cwd=tmp_path), tmp_path, [])
    assert message.startswith(f"bypass: -d polcy: no such debug subsystem for {TRACE}; it has all, calls: ")
    for name in ("syscall", "process", "resolve"):
        assert f"; {name}: " in message
    assert "policy" not in message and "rpc" not in message        # the trace agent has neither
    sandbox = refused(bypass("run", str(SANDBOX), "-d", "rpc", "--", "true", cwd=tmp_path), tmp_path, [])
    assert "; policy: " in sandbox and "rpc:" not in sandbox.split("it has", 1)[1]


def test_o_needs_d_and_a_writable_place(tmp_path):
    message = refused(bypass("run", str(TRACE), "-o", "x.log", "--", "true", cwd=tmp_path), tmp_path, [])
    assert "-o FILE is where the debug output goes: give the subsystems with -d" in message
    message = refused(bypass("run", str(TRACE), "-d", "all", "-o", "/nonexistent/dir/x.log", "--", "true",
                             cwd=tmp_path), tmp_path, [])
    assert message == "bypass: -o /nonexistent/dir/x.log: no such directory /nonexistent/dir"


def test_a_spec_declares_only_known_subsystems(tmp_path):
    spec = tmp_path / "mine.bypass"
    spec.write_text('int close(int fd);\noptions "cache" "polcy" debug;\n')
    done = bypass("-agent", str(spec), cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert re.search(r"mine\.bypass:2:1: error: options \.\.\. debug: unknown subsystem \"polcy\"", done.stderr)


def test_a_calls_line_shows_each_argument_in_its_form(tmp_path):
    """Strings quoted, flags in hex (O_WRONLY|O_CREAT|O_CLOEXEC from Python), modes in octal, a failure's errno by name, an exec's line
    before it happens (it does not return when it works); the trace log shows the same values."""
    log, trace = tmp_path / "debug.log", tmp_path / "trace.log"
    made = tmp_path / "made"
    program = ("import os; os.close(os.open(os.sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o640))\n"
               "try:\n    os.rmdir('/nonexistent-bypass-dir')\nexcept OSError:\n    pass\n"
               "os.execv('/bin/true', ['true', 'a\"b'])")
    done = bypass("run", str(TRACE), "--trace", str(trace), "-d", "calls", "-o", str(log), "--",
                  sys.executable, "-c", program, str(made), cwd=tmp_path)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    text = "\n".join(lines_of(log))
    assert re.search(rf'calls: open\("{re.escape(str(made))}", 0x80041, 0640\) = \d+ <open\w*>$', text, re.M), text
    assert re.search(r'calls: rmdir\("/nonexistent-bypass-dir"\) = -1 ENOENT <rmdir>$', text, re.M), text
    assert re.search(r'calls: execv\w*\("/bin/true", \["true", "a\\"b"\](, \[.*\])?\) = \.\.\. <execv\w*>$',
                     text, re.M), text
    logged = trace.read_text()
    assert re.search(rf'^\d+ open\("{re.escape(str(made))}", 0x80041, 0640\) = \d+ <open\w*>$', logged, re.M), logged
    assert re.search(r'^\d+ rmdir\("/nonexistent-bypass-dir"\) = -1 ENOENT <rmdir>$', logged, re.M), logged
