"""Compile pieces of the agent's C runtime into a shared object and load it with cffi.

Tests drive the real C code (no mocks): each test module names the C sources it needs and
the declarations it calls, and gets back a cffi `lib` for a .so built with gcc in a temp dir.
"""
from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import cffi

RPC_C = Path(__file__).resolve().parents[2] / "bypass" / "rpc" / "c"
CFLAGS = ["-std=gnu11", "-O2", "-g", "-fPIC", "-shared", "-Wall", "-Wextra", "-Werror",
          "-D_GNU_SOURCE", "-pthread"]


def build(outdir: Path, sources: list, cdef: str, extra_c: str = "", name: str = "t",
          include: tuple = ()):
    """Build `sources` (paths or names in bypass/rpc/c) plus `extra_c` text; return (ffi, lib)."""
    outdir.mkdir(parents=True, exist_ok=True)
    paths = [Path(s) if Path(s).is_absolute() else RPC_C / s for s in sources]
    if extra_c:
        extra = outdir / f"{name}_extra.c"
        extra.write_text(extra_c)
        paths.append(extra)
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in paths)).hexdigest()[:12]
    so = outdir / f"lib{name}-{digest}.so"
    if not so.exists():
        cmd = ["gcc", *CFLAGS, f"-I{RPC_C}", *[f"-I{d}" for d in include], "-o", str(so),
               *map(str, paths)]
        subprocess.run(cmd, check=True, capture_output=False)
    ffi = cffi.FFI()
    ffi.cdef(cdef)
    return ffi, ffi.dlopen(str(so))
