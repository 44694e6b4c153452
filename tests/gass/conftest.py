"""Fixtures for the gass tests: the test HTTP server, a private cache, the C test driver."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gassenv import CFLAGS, GASS_SRC, HERE, REPO, HttpServer, _have_libcurl  # noqa: F401


@pytest.fixture(scope="session")
def libcurl_present() -> None:
    if not _have_libcurl():
        pytest.fail("libcurl.so.4 is missing: apt-get install libcurl4 (listed in .ci/apt-packages.txt)")


@pytest.fixture(scope="session")
def gass_driver(tmp_path_factory) -> Path:
    """tests/gass/gass_driver.c linked with the gass support sources."""
    if shutil.which("gcc") is None:
        pytest.fail("gcc is needed (installed by .ci/run)")
    out = tmp_path_factory.mktemp("gass-build") / "gass_driver"
    sources = sorted(str(p) for p in GASS_SRC.glob("gass_*.c"))
    subprocess.run(["gcc", *CFLAGS, f"-I{GASS_SRC}", f"-I{REPO / 'bypass' / 'runtime'}", str(HERE / "gass_driver.c"),
                    *sources, str(REPO / "bypass" / "runtime" / "memory.c"),    # the pointer checks of gass_url.c
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


@pytest.fixture(scope="session")
def gass_so(tmp_path_factory) -> Path:
    """The gass agent, built from agents/gass/gass.bypass by the real compiler."""
    from bypass.build import build

    out = tmp_path_factory.mktemp("gass-agent") / "gass.so"
    build(REPO / "agents" / "gass" / "gass.bypass", out)
    return out


@pytest.fixture
def run(gass_so, gass_env, tmp_path):
    """run(cmd...) with the agent preloaded, in tmp_path; returns CompletedProcess (bytes)."""
    def _run(*cmd: str, timeout: float = 60, input: bytes | None = None, **extra):
        env = dict(gass_env, LD_PRELOAD=str(gass_so), **extra)
        return subprocess.run(list(cmd), capture_output=True, env=env, timeout=timeout,
                              cwd=tmp_path, input=input)
    return _run
