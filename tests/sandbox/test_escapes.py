"""Escape attempts: each tries to read a DENY file and to write a read-only one.

The policy is sealed for the whole run: a child cannot loosen it through its environment or by
rewriting the mount list file.
"""

from __future__ import annotations

import os
import textwrap

import pytest

from test_agent import PY, run, work  # noqa: F401  (work is a fixture)

SEALED = "the run's sealed policy is kept"


def attempts(w) -> str:
    """Shell commands that print the secret or change the read-only file if they get through."""
    return f"cat {w}/deny/secret; echo changed > {w}/ro/f"


def assert_held(w, p):
    assert "needle" not in p.stdout, p.stdout
    assert (w / "ro/f").read_text() == "original\n"
    assert "Permission denied" in p.stderr, p.stderr


@pytest.mark.parametrize("prefix", [
    "BYPASS_MOUNTS=/dev/null",
    "BYPASS_MOUNTS=",
    "BYPASS_SANDBOX_POLICY=0",
    "BYPASS_SANDBOX_POLICY=",
    "env -u BYPASS_SANDBOX_POLICY BYPASS_MOUNTS=/dev/null",
    "env -i PATH=/usr/bin:/bin BYPASS_MOUNTS=/dev/null",
    "BYPASS_SANDBOX_ALLOW_STATIC=1 BYPASS_SANDBOX_CACHE=0 BYPASS_MOUNTS=/dev/null",
])
def test_a_changed_environment_does_not_loosen_the_policy(agent, work, prefix):
    p = run(agent, work, f"{prefix} sh -c '{attempts(work)}'")
    assert_held(work, p)
    if "=/dev/null" in prefix or "POLICY=0" in prefix:
        assert SEALED in p.stderr


def test_a_changed_environment_through_system_and_popen(agent, work):
    code = textwrap.dedent(f"""
        import os
        os.environ["BYPASS_MOUNTS"] = "/dev/null"
        del os.environ["BYPASS_SANDBOX_POLICY"]
        os.system("{attempts(work)}")
        print(os.popen("cat {work}/deny/secret").read())
    """)
    p = run(agent, work, [PY, "-c", code])
    assert_held(work, p)
    assert p.stderr.count(SEALED) == 1, p.stderr


def test_the_private_directory_cannot_be_pointed_elsewhere(agent, work):
    (work / "deny/tmp").mkdir()
    (work / "deny/tmp/x").write_text("needle in deny/tmp\n")
    p = run(agent, work, f"BYPASS_SANDBOX_PRIVATE={work}/deny cat /tmp/x; "
                         f"BYPASS_SANDBOX_PRIVATE={work}/ro sh -c 'echo changed > /tmp/f'; "
                         f"cat /tmp/f")
    assert "needle" not in p.stdout
    assert p.stdout == "changed\n"
    assert not (work / "ro/tmp").exists()
    assert SEALED in p.stderr


def test_rewriting_the_mount_list_file_changes_nothing(agent, work):
    """The list lives in a writable place; the run keeps what it read at the start."""
    (work / "out/mounts.txt").write_text((work / "mounts.txt").read_text())
    p = run(agent, work, f"echo '/ rwx' > {work}/out/mounts.txt; sh -c '{attempts(work)}'",
            BYPASS_MOUNTS=str(work / "out/mounts.txt"))
    assert (work / "out/mounts.txt").read_text() == "/ rwx\n"
    assert_held(work, p)


def test_a_child_that_lost_the_policy_refuses_to_run(agent, work):
    """A child told it belongs to a run whose policy it cannot find does not start unsandboxed
    (here the descriptor is closed by a raw system call, which the agent cannot guard)."""
    script = work / "out/lose.py"
    script.write_text(textwrap.dedent(f"""
        import ctypes, os, subprocess
        fd = int(os.environ["BYPASS_SANDBOX_POLICY"])
        libc = ctypes.CDLL(None, use_errno=True)
        def lose():
            libc.syscall(3, fd)             # SYS_close on x86_64
        p = subprocess.run(["/bin/cat", "{work}/deny/secret"], preexec_fn=lose)
        print("status", p.returncode)
    """))
    p = run(agent, work, [PY, str(script)])
    assert "needle" not in p.stdout, p.stdout
    assert "status 2" in p.stdout
    assert "is not open in this process; refusing to run without it" in p.stderr
