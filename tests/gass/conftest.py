"""Fixtures for the gass tests: the test HTTP server, a private cache, the C test driver."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
GASS_SRC = REPO / "agents" / "gass"
sys.path.insert(0, str(HERE))

from http_server import HttpServer  # noqa: E402

CFLAGS = ["-Wall", "-Wextra", "-Werror", "-O2", "-g"]


def _have_libcurl() -> bool:
    import ctypes

    try:
        ctypes.CDLL("libcurl.so.4")
        return True
    except OSError:
        return False


requires_libcurl = pytest.mark.skipif(not _have_libcurl(), reason="libcurl.so.4 not installed")


@pytest.fixture(scope="session")
def gass_driver(tmp_path_factory) -> Path:
    """tests/gass/gass_driver.c linked with the gass support sources."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc not available")
    out = tmp_path_factory.mktemp("gass-build") / "gass_driver"
    sources = sorted(str(p) for p in GASS_SRC.glob("gass_*.c"))
    subprocess.run(["gcc", *CFLAGS, f"-I{GASS_SRC}", str(HERE / "gass_driver.c"), *sources,
                    "-o", str(out), "-ldl", "-lpthread"], check=True)
    return out


@pytest.fixture
def site(tmp_path) -> Path:
    root = tmp_path / "site"
    root.mkdir()
    return root


@pytest.fixture
def server(site):
    with HttpServer(site) as srv:
        yield srv


@pytest.fixture
def gass_env(tmp_path, monkeypatch) -> dict[str, str]:
    """Environment for processes using gass: a private cache, short timeouts."""
    cache = tmp_path / "cache"
    env = dict(os.environ)
    for name in list(env):
        if name.startswith("BYPASS_GASS_"):
            del env[name]
    env.update({
        "BYPASS_GASS_CACHE": str(cache),
        "BYPASS_GASS_CONNECT_TIMEOUT": "5",
        "BYPASS_GASS_READ_TIMEOUT": "5",
    })
    return env
