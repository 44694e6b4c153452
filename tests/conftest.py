"""Shared fixtures: agents are built once per test session with the real compiler."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentrun import AGENTS
from bypass.build import build


@pytest.fixture(scope="session")
def trace_agent(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("agents") / "trace.so"
    return build(AGENTS / "trace" / "trace.bypass", out)
