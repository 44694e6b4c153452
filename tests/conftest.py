"""Shared fixtures: agents are built once per test session with the real compiler."""

from __future__ import annotations

import getpass
import tempfile
from pathlib import Path

import pytest

from agentrun import AGENTS
from bypass.build import build


@pytest.fixture(scope="session")
def trace_agent(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("agents") / "trace.so"
    return build(AGENTS / "trace" / "trace.bypass", out)


def pytest_unconfigure(config):
    """pytest's folder for this user's runs (/tmp/pytest-of-USER) outlives the run's own, which
    tmp_path_retention_policy = "none" removes: the suite leaves nothing in /tmp."""
    if config.option.basetemp:
        return
    try:
        (Path(tempfile.gettempdir()) / f"pytest-of-{getpass.getuser()}").rmdir()
    except (OSError, KeyError):
        pass                            # not empty (another run's), or no such user: left as it is
