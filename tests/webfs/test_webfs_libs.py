"""A program in the tree with its own shared libraries found through $ORIGIN: the loader's opens
are invisible to a preload, so the agent fetches what the program's RUNPATH names before exec."""

from __future__ import annotations

import shutil
import subprocess

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
