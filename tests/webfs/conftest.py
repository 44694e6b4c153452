"""Fixtures for the webfs tests: the agent from the real compiler, a served GROW-FS tree."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from webfs_lib import SPEC, Server, make_growfs, sample_tree  # noqa: E402


@pytest.fixture(scope="session")
def webfs_so(tmp_path_factory) -> Path:
    from bypass.build import build

    out = tmp_path_factory.mktemp("webfs-agent") / "webfs.so"
    build(SPEC, out)
    return out


@pytest.fixture
def served(tmp_path):
    """(local tree, served copy with .growfsdir, running Server)."""
    local = sample_tree(tmp_path / "local")
    site = tmp_path / "site"
    site.mkdir()
    shutil.copytree(local, site / "tree", symlinks=True)
    make_growfs(site / "tree")
    with Server(site) as srv:
        yield local, site / "tree", srv
    for p in (local / "frozen", site / "tree" / "frozen"):
        p.chmod(0o755)
    # the cache's skeleton keeps the catalog's modes: make it removable for tmp_path's cleanup
    for d in (tmp_path / "cache").rglob("*") if (tmp_path / "cache").exists() else []:
        if d.is_dir() and not d.is_symlink():
            d.chmod(0o755)


@pytest.fixture
def env(tmp_path, served) -> dict:
    _, _, srv = served
    return {
        "BYPASS_WEBFS_MOUNTS": f"/software={srv.url('tree')}",
        "BYPASS_WEBFS_CACHE": str(tmp_path / "cache"),
        "BYPASS_GASS_CONNECT_TIMEOUT": "2",
        "BYPASS_GASS_READ_TIMEOUT": "2",
        "BYPASS_GASS_TIMEOUT": "10",
    }
