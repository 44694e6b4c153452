"""Shared fixtures: agents are built once per test session with the real compiler."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from bypass.build import build

ROOT = Path(__file__).resolve().parent.parent
AGENTS = ROOT / "agents"


@pytest.fixture(scope="session")
def trace_agent(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("agents") / "trace.so"
    return build(AGENTS / "trace" / "trace.bypass", out)


def run(command, *, agent: Path | None = None, env: dict | None = None, cwd=None, input=None,
        timeout: float = 120, shell: bool = False) -> subprocess.CompletedProcess:
    """Run a real program, optionally with an agent preloaded; never inherits a stray LD_PRELOAD."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("BYPASS_") and k != "LD_PRELOAD"}
    full_env.update(env or {})
    if agent is not None:
        full_env["LD_PRELOAD"] = f"{agent} {full_env.get('LD_PRELOAD', '')}".strip()
    return subprocess.run(command, env=full_env, cwd=cwd, input=input, capture_output=True, timeout=timeout,
                          shell=shell)


def require(*programs: str) -> None:
    missing = [p for p in programs if shutil.which(p) is None]
    if missing:
        pytest.fail(f"test needs {', '.join(missing)} (CI installs them from .ci/apt-packages.txt)")
