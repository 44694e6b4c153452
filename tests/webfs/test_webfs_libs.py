"""A program in the tree with its own shared libraries found through $ORIGIN: the loader's opens
are invisible to a preload, so the agent fetches what the program's RUNPATH names before exec."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from webfs_lib import Server, make_growfs, require, run


def test_program_with_origin_libraries_runs_from_the_tree(webfs_so, tmp_path):
    require("gcc")
    tree = tmp_path / "site" / "tree"
    (tree / "bin").mkdir(parents=True)
    (tree / "lib").mkdir()
    src = tmp_path / "src"
    src.mkdir()
    (src / "dep.c").write_text('int dep_value(void) { return 41; }\n')
    (src / "greet.c").write_text('int dep_value(void);\nint greet_value(void) { return dep_value() + 1; }\n')
    (src / "main.c").write_text('#include <stdio.h>\nint greet_value(void);\n'
                                'int main(void) { printf("greet %d\\n", greet_value()); return 0; }\n')

    def cc(*args):
        subprocess.run(["gcc", *map(str, args)], check=True, capture_output=True)

    cc("-shared", "-fPIC", "-o", tree / "lib" / "libdep.so.1", "-Wl,-soname,libdep.so.1", src / "dep.c")
    (tree / "lib" / "libdep.so").symlink_to("libdep.so.1")
    cc("-shared", "-fPIC", "-o", tree / "lib" / "libgreet.so", src / "greet.c", "-L", tree / "lib", "-ldep",
       "-Wl,-rpath,$ORIGIN")
    cc("-o", tree / "bin" / "greet", src / "main.c", "-L", tree / "lib", "-lgreet", "-Wl,-rpath,$ORIGIN/../lib")
    local = tmp_path / "local"
    shutil.copytree(tree, local, symlinks=True)
    assert subprocess.run([local / "bin" / "greet"], capture_output=True).stdout == b"greet 42\n"
    make_growfs(tree)
    with Server(tmp_path / "site") as srv:
        env = {"BYPASS_WEBFS_MOUNTS": f"/software={srv.url('tree')}", "BYPASS_WEBFS_CACHE": str(tmp_path / "cache")}
        p = run(webfs_so, ["env", "/software/bin/greet"], env)   # env runs under the agent
        assert p.returncode == 0, p.stderr
        assert p.stdout == b"greet 42\n"
        assert {"/tree/lib/libgreet.so", "/tree/lib/libdep.so.1"} <= set(srv.requests)
        p = run(webfs_so, "cd /software/bin && ./greet && PATH=/software/bin greet", env, shell=True)
        assert p.stdout == b"greet 42\n" * 2, p.stderr


@pytest.mark.parametrize("published", ["growfs", "repository"])
def test_python_runs_with_its_standard_library_from_the_tree(webfs_so, tmp_path, published):
    """The interpreter, its pure-Python standard library and its C extension modules (dlopen'd
    from lib-dynload) all come from the tree, published by make_growfs or by bypass publish."""
    import sys
    import sysconfig

    tree = tmp_path / "site" / "tree"
    (tree / "bin").mkdir(parents=True)
    shutil.copy2(shutil.which("python3"), tree / "bin" / "python3")
    std = Path(sysconfig.get_paths()["stdlib"])
    shutil.copytree(std, tree / "lib" / std.name, symlinks=False,
                    ignore=shutil.ignore_patterns("test", "tests", "idlelib", "tkinter", "ensurepip", "lib2to3",
                                                  "__pycache__", "site-packages", "dist-packages", "turtledemo",
                                                  "pydoc_data", "config-*"))
    local = tmp_path / "local"
    shutil.copytree(tree, local, symlinks=True)
    if published == "growfs":
        make_growfs(tree)
    else:
        from repo_lib import cli
        cli("keygen", tmp_path / "k")
        cli("publish", local, tmp_path / "site" / "repo", "--key", tmp_path / "k")
    script = ("import sys, json, decimal, datetime, email.parser, collections; "
              "print(sys.prefix, decimal.__file__, sys.modules['_decimal'].__file__, json.dumps([decimal.Decimal(1) / 7]"
              "[0].as_tuple().exponent), datetime.date(2000, 1, 1).isoformat())")
    native = subprocess.run(["env", f"PYTHONHOME={local}", str(local / "bin" / "python3"), "-S", "-B", "-c", script],
                            capture_output=True)
    assert native.returncode == 0, native.stderr
    with Server(tmp_path / "site") as srv:
        mount = srv.url("tree") if published == "growfs" else f"{srv.url('repo')},key={tmp_path}/k.pub"
        env = {"BYPASS_WEBFS_MOUNTS": f"/software={mount}", "BYPASS_WEBFS_CACHE": str(tmp_path / "cache")}
        p = run(webfs_so, ["env", "PYTHONHOME=/software", "/software/bin/python3", "-S", "-B", "-c", script], env)
        assert p.returncode == 0, p.stderr
        assert p.stdout == native.stdout.replace(str(local).encode(), b"/software")
        assert b"/software/lib/" in p.stdout and b"lib-dynload/_decimal" in p.stdout
        if published == "growfs":
            assert any("lib-dynload/_decimal" in r for r in srv.requests)
        # only what was used was fetched: a fraction of the library
        files = sum(1 for q in tree.rglob("*") if q.is_file())
        assert len(srv.requests) < files / 2
