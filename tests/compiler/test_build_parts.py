"""How an agent is compiled (issue 14, "small, fast builds"): only the forwarding code a spec uses,
the runtime compiled once per toolchain and shared through the cache, large agents split into
parts compiled side by side. Each promise is checked on real builds; splitting must not change
what the agent exports or does."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import bypass.build
from agentrun import AGENTS, run
from bypass.build import build, generate, plan_spec
from bypass.codegen.render import splittable

TRACE = AGENTS / "trace" / "trace.bypass"


def defined_symbols(so: Path, dynamic: bool) -> set[str]:
    """Exported symbols (dynamic), or every symbol of the object's own table."""
    command = ["nm", "--defined-only", *(["-D"] if dynamic else []), str(so)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return {line.split()[-1] for line in done.stdout.splitlines() if line.strip()}


def test_forwarding_code_only_for_calls_that_forward_or_name_it(tmp_path):
    spec = tmp_path / "mine.bypass"
    spec.write_text("int unlink( in string const char *path )\nagent_action {{\n    return unlink(path);\n}};\n"
                    "int close( int fd );\n"
                    "int rmdir( in string const char *path )\nagent_action {{\n"
                    "    return bypass_shadow_rmdir(path);\n}};\n")
    agent_c = generate(spec).agent_c
    assert "bypass_shadow_close(int fd)\n{" in agent_c           # forwarded: no action
    assert re.search(r"bypass_shadow_rmdir\(const char \*path\)\n\{", agent_c)   # its action calls it
    assert "bypass_shadow_unlink" not in agent_c                  # its own action, no shadow
    assert not re.search(r"bypass_shadow_\w+\(", generate(TRACE).agent_c)


def close_specs(folder):
    """Two one-call specs: close forwarded to the shadow, and close handled by the agent itself."""
    forwarding = folder / "fwd.bypass"
    forwarding.write_text("int close( int fd );\n")
    quiet = folder / "quiet.bypass"
    quiet.write_text("int close( int fd )\nagent_action {{\n    return close(fd);\n}};\n")
    return forwarding, quiet


def test_runtime_is_compiled_once_and_an_agent_without_shadow_calls_has_no_client(tmp_path):
    cache = tmp_path / "cache"
    forwarding, quiet = close_specs(tmp_path)
    build(forwarding, tmp_path / "fwd.so", runtime_cache=cache)
    keys = list((cache / "runtime").iterdir())
    assert len(keys) == 1 and (keys[0] / "libbypass_runtime.a").is_file()
    archive = keys[0] / "libbypass_runtime.a"
    stamp = archive.stat().st_mtime_ns
    build(quiet, tmp_path / "quiet.so", runtime_cache=cache)
    assert list((cache / "runtime").iterdir()) == keys and archive.stat().st_mtime_ns == stamp
    assert "bypass_rpc_begin" in defined_symbols(tmp_path / "fwd.so", dynamic=False)
    quiet_symbols = defined_symbols(tmp_path / "quiet.so", dynamic=False)
    assert "bypass_rpc_begin" not in quiet_symbols and "bypass_resolve_slow" in quiet_symbols
    # the quiet agent works: close() of a descriptor the program owns, through the agent
    done = run([sys.executable, "-c", "import os; fd = os.open('/dev/null', 0); os.close(fd); print('ok')"],
               agent=tmp_path / "quiet.so")
    assert done.returncode == 0 and done.stdout == b"ok\n", done.stderr


def test_concurrent_first_builds_share_one_runtime(tmp_path):
    cache = tmp_path / "cache"
    env = {k: v for k, v in os.environ.items() if k != "BYPASS_CACHE_DIR"}
    env["BYPASS_CACHE_DIR"] = str(cache)
    specs = []
    for n in range(2):
        spec = tmp_path / f"s{n}.bypass"
        spec.write_text(f"int close( int fd )\nagent_action {{{{\n    return close(fd) + {n} - {n};\n}}}};\n")
        specs.append(spec)
    builds = [subprocess.Popen([sys.executable, "-m", "bypass.cli", "build", str(s), "-o", str(s.with_suffix(".so"))],
                               env=env, stderr=subprocess.PIPE, text=True) for s in specs]
    for process in builds:
        assert process.wait(timeout=300) == 0, process.stderr.read()
    entries = sorted(p.name for p in (cache / "runtime").iterdir())
    assert len(entries) == 1 and not entries[0].startswith("."), entries      # no half-published folder


def test_a_split_agent_exports_and_does_what_the_single_file_does(tmp_path, monkeypatch):
    monkeypatch.setattr(bypass.build, "parallel_jobs", lambda: 3)
    split = build(TRACE, tmp_path / "split.so", keep_c=tmp_path / "parts", runtime_cache=tmp_path / "cache")
    parts = sorted(p.name for p in (tmp_path / "parts").glob("trace_agent*.c"))
    assert parts == ["trace_agent.c", "trace_agent_2.c", "trace_agent_3.c"]
    # the original interface's one file, compiled by hand as a user would
    folder = tmp_path / "single"
    folder.mkdir()
    done = subprocess.run([sys.executable, "-m", "bypass.cli", "-agent", str(TRACE)], capture_output=True,
                          text=True, cwd=folder)
    assert done.returncode == 0, done.stderr
    command = done.stderr.split("compile it with:  ", 1)[1].strip()
    subprocess.run(command + " -O2 -fvisibility=hidden", shell=True, check=True, cwd=folder)   # as bypass build
    single = folder / "trace.so"
    assert defined_symbols(split, dynamic=True) == defined_symbols(single, dynamic=True)
    logs = []
    for agent in (split, single):
        log = tmp_path / f"{agent.stem}.log"
        result = run(["sh", "-c", "ls -l /usr/bin >/dev/null; cat /etc/hostname; stat / >/dev/null"], agent=agent,
                     env={"BYPASS_TRACE": str(log)})
        assert result.returncode == 0
        logs.append(re.sub(r"^\d+ |0x[0-9a-f]+", "", log.read_text(), flags=re.M))
    assert logs[0] == logs[1]


def test_a_prologue_with_definitions_stays_in_one_part(tmp_path):
    remote = plan_spec(AGENTS / "remote" / "remote.bypass")
    assert not splittable(remote)                   # it defines remote_call_read()
    assert splittable(plan_spec(TRACE))             # includes only


def test_a_spec_that_does_not_compile_still_leaves_the_runtime_compiled(tmp_path):
    spec = tmp_path / "typo.bypass"
    spec.write_text("int unlink( in string const char *path )\nagent_action {{\n    return unlink(pat);\n}};\n")
    cache = tmp_path / "cache"
    try:
        build(spec, tmp_path / "typo.so", runtime_cache=cache)
    except bypass.build.BuildError as exc:
        assert re.search(r"typo\.bypass:3:\d+: error: .pat. undeclared", str(exc)), exc
    else:
        raise AssertionError("a spec with an undeclared name built")
    assert not (tmp_path / "typo.so").exists()
    entries = list((cache / "runtime").iterdir())
    assert len(entries) == 1 and (entries[0] / "libbypass_runtime.a").is_file(), entries


def test_the_shadow_client_is_compiled_only_for_an_agent_that_links_it(tmp_path):
    cache = tmp_path / "cache"
    forwarding, quiet = close_specs(tmp_path)
    build(quiet, tmp_path / "quiet.so", runtime_cache=cache)
    (folder,) = list((cache / "runtime").iterdir())
    assert sorted(p.name for p in folder.glob("*.a")) == ["libbypass_runtime.a"]
    core = (folder / "libbypass_runtime.a").stat().st_mtime_ns
    # the next agent that calls its shadow adds the client to the same folder, the core untouched
    build(forwarding, tmp_path / "fwd.so", runtime_cache=cache)
    assert list((cache / "runtime").iterdir()) == [folder]
    assert sorted(p.name for p in folder.glob("*.a")) == ["libbypass_rpc.a", "libbypass_runtime.a"]
    assert (folder / "libbypass_runtime.a").stat().st_mtime_ns == core
    assert "bypass_rpc_begin" in defined_symbols(tmp_path / "fwd.so", dynamic=False)
    # with no cache to keep it in, both archives are compiled for this build alone
    build(forwarding, tmp_path / "alone.so", runtime_cache=None)
    assert "bypass_rpc_begin" in defined_symbols(tmp_path / "alone.so", dynamic=False)
