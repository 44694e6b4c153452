"""Paths and markers shared by the gass tests (a uniquely named module: tests import it by name)."""

from __future__ import annotations

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


# libcurl4 is installed by .ci/run; a machine without it fails these tests rather than skipping them.
requires_libcurl = pytest.mark.usefixtures("libcurl_present")
