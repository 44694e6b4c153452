"""The original Bypass interface, the example from the Bypass talk, options rules, `bypass run`, and
two agents stacked in LD_PRELOAD composing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bypass.build import build
from agentrun import AGENTS, run

TALK_EXAMPLE = """\
agent_prologue {{
@include "globus_common.h"
@include "globus_gass_file.h"
}};
int open( const char *name, int flags, int mode )
agent_action {{
    globus_module_activate( GLOBUS_GASS_FILE_MODULE );
    return globus_gass_open( name, flags, mode );
}};
int close( int fd )
agent_action {{
    return globus_gass_close( fd );
}};
"""

# Local stand-ins for the Globus headers: "gass" here maps gass:NAME to /tmp-like files, and the
# calls inside reach the next layer because they run inside the agent.
GLOBUS_COMMON = """\
#define GLOBUS_GASS_FILE_MODULE 1
static int globus_activated;
static inline void globus_module_activate(int module) { globus_activated |= module; }
"""
GLOBUS_GASS_FILE = """\
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
static inline int globus_gass_open(const char *name, int flags, int mode)
{
    if (strncmp(name, "gass:", 5) == 0) {
        char local[4096];
        snprintf(local, sizeof local, "%s/%s", getenv("GASS_ROOT"), name + 5);
        return open(local, flags, mode);
    }
    return open(name, flags, mode);
}
static inline int globus_gass_close(int fd) { return close(fd); }
"""


def bypass(*args, cwd):
    return subprocess.run([sys.executable, "-m", "bypass.cli", *args], cwd=cwd, capture_output=True, text=True)


def write_talk_example(folder: Path) -> Path:
    (folder / "globus_common.h").write_text(GLOBUS_COMMON)
    (folder / "globus_gass_file.h").write_text(GLOBUS_GASS_FILE)
    spec = folder / "gass.bypass"
    spec.write_text(TALK_EXAMPLE)
    return spec


def test_talk_example_generates_builds_and_runs(tmp_path):
    spec = write_talk_example(tmp_path)
    done = bypass("-agent", spec.name, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    agent_c = (tmp_path / "gass_agent.c").read_text()
    assert '__asm__("open64")' in agent_c and '__asm__("__open_2")' in agent_c
    assert '#line 6 "gass.bypass"' in agent_c
    agent = build(spec, tmp_path / "gass.so")
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "hello.txt").write_text("hello from gass\n")
    done = run(["cat", "gass:hello.txt"], agent=agent, env={"GASS_ROOT": str(tmp_path / "root")})
    assert done.returncode == 0 and done.stdout == b"hello from gass\n"


def test_agent_and_shadow_into_folder(tmp_path):
    spec = write_talk_example(tmp_path)
    done = bypass("-agent", "-shadow", spec.name, "-o", "out/", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "gass_agent.c").is_file() and (tmp_path / "out" / "gass_shadow.py").is_file()
    compile(( tmp_path / "out" / "gass_shadow.py").read_text(), "gass_shadow.py", "exec")


def test_generation_is_deterministic(tmp_path):
    spec = AGENTS / "trace" / "trace.bypass"
    first = bypass("-agent", str(spec), "-o", str(tmp_path / "a.c"), cwd=tmp_path)
    second = bypass("-agent", str(spec), "-o", str(tmp_path / "b.c"), cwd=tmp_path)
    assert first.returncode == second.returncode == 0
    a = (tmp_path / "a.c").read_text().replace('"a.c"', '"X"')
    b = (tmp_path / "b.c").read_text().replace('"b.c"', '"X"')
    assert a == b


REMAP = """\
/* Remaps one path: opening /bypass-test/magic opens $REMAP_TARGET instead. */
agent_prologue {{
@include <stdlib.h>
}};
int open( in string const char *path, int flags, [ int mode ] )
agent_action {{
    if (strcmp(path, "/bypass-test/magic") == 0 && getenv("REMAP_TARGET"))
        path = getenv("REMAP_TARGET");
    return open(path, flags, mode);
}};
"""


def test_two_stacked_agents_compose(trace_agent, tmp_path):
    spec = tmp_path / "remap.bypass"
    spec.write_text(REMAP)
    remap = build(spec, tmp_path / "remap.so")
    target = tmp_path / "target.txt"
    target.write_text("remapped\n")
    log = tmp_path / "trace.log"
    env = {"REMAP_TARGET": str(target), "BYPASS_TRACE": str(log)}
    # trace first: it sees the program's path, then its `open(...)` reaches remap, then libc.
    done = run(["cat", "/bypass-test/magic"], env={**env, "LD_PRELOAD": f"{trace_agent} {remap}"})
    assert done.stdout == b"remapped\n"
    assert 'open("/bypass-test/magic"' in log.read_text()
    # remap first: trace (the next layer) sees the remapped path.
    log.unlink()
    done = run(["cat", "/bypass-test/magic"], env={**env, "LD_PRELOAD": f"{remap} {trace_agent}"})
    assert done.stdout == b"remapped\n"
    text = log.read_text()
    assert f'open("{target}"' in text and "/bypass-test/magic" not in text


def test_options_rules(tmp_path):
    spec = tmp_path / "opts.bypass"
    spec.write_text(REMAP + 'options "open64" "__open*" ignore;\noptions "unlink" not_supported;\n'
                    'options "open64" entry "open";\n')
    done = bypass("-agent", spec.name, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    agent_c = (tmp_path / "opts_agent.c").read_text()
    assert '__asm__("__open_2")' not in agent_c          # ignored
    assert '__asm__("open64")' in agent_c                # re-added by the later entry rule
    assert '__asm__("unlink")' in agent_c and "options: not_supported" in agent_c
    agent = build(spec, tmp_path / "opts.so")
    victim = tmp_path / "victim"
    victim.write_text("x")
    done = run(["python3", "-c", f"import os; os.unlink({str(victim)!r})"], agent=agent)
    assert done.returncode != 0 and b"Function not implemented" in done.stderr
    assert victim.exists()


def test_run_returns_the_command_status(tmp_path):
    spec = AGENTS / "trace" / "trace.bypass"
    env_cache = {"BYPASS_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-m", "bypass.cli", "run", str(spec), "--trace", str(tmp_path / "t.log"),
                           "--", "sh", "-c", "cat /etc/hostname >/dev/null; exit 42"],
                          capture_output=True, env={**__import__("os").environ, **env_cache})
    assert done.returncode == 42
    assert "/etc/hostname" in (tmp_path / "t.log").read_text()
    assert len(list((tmp_path / "cache").glob("trace-*.so"))) == 1
    done = subprocess.run([sys.executable, "-m", "bypass.cli", "run", str(spec), "--", "no-such-program-xyz"],
                          capture_output=True, text=True, env={**__import__("os").environ, **env_cache})
    assert done.returncode == 2 and "command not found" in done.stderr


def test_ignoring_every_entry_of_a_call_still_builds(tmp_path):
    spec = tmp_path / "partial.bypass"
    spec.write_text("int close(int fd) agent_action {{ return close(fd); }};\n"
                    "int unlink(const char *path) agent_action {{ return unlink(path); }};\n"
                    'options "unlink" ignore;\n')
    agent = build(spec, tmp_path / "partial.so")
    exported = subprocess.run(["nm", "-D", "--defined-only", str(agent)], capture_output=True, text=True).stdout
    names = {line.split()[-1] for line in exported.splitlines()}
    assert "close" in names and "unlink" not in names
