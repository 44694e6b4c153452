"""Helpers for tests that run real programs under agents (imported by name, so keep it unique)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
AGENTS = ROOT / "agents"


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
