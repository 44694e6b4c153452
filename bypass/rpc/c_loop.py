"""The shadow's call loop in C (c/shadow_loop.c): built on first use, cached, loaded.

The server uses it when it can and falls back to its Python loop otherwise (no compiler, no
Python headers), saying why once in the log.  BYPASS_SHADOW_LOOP=python forces the Python
loop; =c makes a missing C loop an error instead of a fallback.

The module is compiled like an agent: with the machine's C compiler, into the agent cache
(BYPASS_CACHE_DIR), under a name keyed by its sources and the running Python's ABI, written
to a temporary file and renamed so that concurrent shadows never load half a file.
"""
from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import logging
import os
import subprocess
import sys
import sysconfig
import threading
from pathlib import Path
from types import ModuleType

log = logging.getLogger("bypass.shadow")

C_DIR = Path(__file__).resolve().parent / "c"
SOURCES = ("shadow_loop.c", "msgpack.c")
HEADERS = ("msgpack.h",)
MODULE = "_bypass_shadow_loop"
ENV_LOOP = "BYPASS_SHADOW_LOOP"          # auto (default) | c | python

_lock = threading.Lock()
_loaded: dict[str, ModuleType | None] = {}
_why_not = ""


class CLoopUnavailable(RuntimeError):
    pass


def _key(include: str) -> str:
    h = hashlib.sha256()
    for name in SOURCES + HEADERS:
        h.update((C_DIR / name).read_bytes())
    h.update(sysconfig.get_config_var("SOABI").encode() if sysconfig.get_config_var("SOABI") else b"")
    h.update(sys.version.encode())
    h.update(include.encode())
    return h.hexdigest()[:16]


def _build(output: Path, include: str) -> None:
    from ..build import find_compiler          # the agent build's compiler choice
    tmp = output.with_name(f".{output.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    cmd = [find_compiler(), "-std=gnu11", "-O2", "-shared", "-fPIC", "-fvisibility=hidden",
           "-Wall", "-Wextra", "-D_GNU_SOURCE", f"-I{include}", f"-I{C_DIR}", "-o", str(tmp),
           *(str(C_DIR / s) for s in SOURCES)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise CLoopUnavailable(f"the C compiler failed: {done.stderr.strip()[-600:]}")
    os.replace(tmp, output)


def _load() -> ModuleType:
    from ..build import cache_dir
    include = sysconfig.get_paths()["include"]
    if not (Path(include) / "Python.h").exists():
        raise CLoopUnavailable(f"no Python headers in {include} (Debian: apt-get install python3-dev)")
    output = cache_dir() / f"{MODULE}-{_key(include)}.so"
    if not output.exists():
        output.parent.mkdir(parents=True, exist_ok=True)
        _build(output, include)
    loader = importlib.machinery.ExtensionFileLoader(MODULE, str(output))
    spec = importlib.util.spec_from_file_location(MODULE, output, loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def c_loop(mode: str | None = None) -> ModuleType | None:
    """The compiled loop module, or None when the Python loop is to be used.
    mode: "auto" (default, from BYPASS_SHADOW_LOOP), "c" (required) or "python"."""
    global _why_not
    mode = (mode or os.environ.get(ENV_LOOP) or "auto").lower()
    if mode not in ("auto", "c", "python"):
        raise ValueError(f"{ENV_LOOP} must be auto, c or python, not {mode!r}")
    if mode == "python":
        return None
    with _lock:
        if "module" not in _loaded:
            try:
                _loaded["module"] = _load()
            except Exception as e:     # no compiler (BuildError), no headers, a failed build...
                _loaded["module"] = None
                _why_not = str(e)
                if mode == "auto":
                    log.info("shadow: using the Python call loop: %s", e)
        module = _loaded["module"]
    if module is None and mode == "c":
        raise CLoopUnavailable(f"the C call loop is not available: {_why_not}")
    return module
