"""Fixtures for the sandbox tests."""

from __future__ import annotations

import pytest

from sandbox_lib import Sandbox, build_library


@pytest.fixture(scope="session")
def sblib(tmp_path_factory) -> Sandbox:
    return Sandbox(build_library(tmp_path_factory.mktemp("sblib")))


@pytest.fixture
def sb(sblib):
    yield sblib
    sblib.lib.sb_uninstall()
