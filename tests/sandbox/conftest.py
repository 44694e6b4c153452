"""Fixtures for the sandbox tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox_lib import Sandbox, build_library


@pytest.fixture(scope="session")
def sblib(tmp_path_factory) -> Sandbox:
    return Sandbox(build_library(tmp_path_factory.mktemp("sblib")))


@pytest.fixture
def sb(sblib):
    yield sblib
    sblib.lib.sb_uninstall()


@pytest.fixture(scope="session")
def agent(tmp_path_factory) -> Path:
    """The sandbox agent, built by the real compiler."""
    from bypass.build import build

    from sandbox_lib import SANDBOX

    out = tmp_path_factory.mktemp("sandbox-agent") / "sandbox.so"
    return Path(build(SANDBOX / "sandbox.bypass", out))
