"""Malformed specs fail cleanly: `file:line:col: error: message`, the line and a caret, exit
status 2, no traceback, and no output file."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

BAD_SPECS = {
    "unclosed_params": ("int open(const char *p\n", 1, "never closed"),
    "unknown_type": ("int open(foo_t x);\n", 1, "unexpected 'x'"),
    "misspelled_action": ("int close(int fd)\nagent_acton {{ return 0; }};\n", 2, "expected agent_action"),
    "unclosed_block": ("int close(int fd)\nagent_action {{ return 0;\n", 2, "never closed"),
    "stray_close_block": ("int close(int fd); }}\n", 1, "'}}' without"),
    "unknown_directive": ("agent_prologue {{\n  @inclde \"x.h\"\n}};\n", 2, "unknown directive '@inclde'"),
    "include_unquoted": ("agent_prologue {{\n@include x.h\n}};\n", 2, "quoted file name"),
    "no_return_type": ("open(const char *p);\n", 1, "no return type"),
    "bad_option": ('options "open*" frobnicate;\n', 1, "expected one of ignore"),
    "option_without_pattern": ("options ignore;\n", 1, "quoted symbol pattern"),
    "out_by_value": ("int f(out int x);\n", 1, "must be a pointer"),
    "opaque_without_length": ("ssize_t read(int fd, out opaque void *buf, size_t n);\n", 1, "quoted length"),
    "string_not_char": ("int f(in string int *x);\n", 1, "must be a char pointer"),
    "duplicate_function": ("int close(int fd);\nint close(int fd);\n", 2, "declared twice"),
    "duplicate_param": ("int f(int a, int a);\n", 1, "declared twice"),
    "vararg_then_fixed": ("int f(int a, [ int b ], int c);\n", 1, "cannot follow"),
    "wrong_arity": ("int open(const char *path);\n", 1, "takes 3 parameter"),
    "entry_alias_declared": ("int open64(const char *p, int f, [ int m ]);\n", 1, "entry point of 'open'"),
    "missing_semicolon": ("int close(int fd)\nint dup(int fd);\n", 2, "expected agent_action"),
    "hash_include": ("#include <stdio.h>\n", 1, "preprocessor lines"),
    "bad_string": ('options "open* ignore;\n', 1, "never closed"),
    "garbage": ("\x01\n", 1, "unexpected character"),
    # forwarded to the shadow, but struct statfs has no neutral layout (never raw memory silently)
    "struct_without_layout": ("int close(int fd);\nint statfs(in string const char *path,\n"
                              "           out struct statfs *buf);\n", 3, "cannot travel to the shadow"),
}


def bypass(*args, cwd):
    return subprocess.run([sys.executable, "-m", "bypass.cli", *args], cwd=cwd, capture_output=True, text=True)


@pytest.mark.parametrize("name", list(BAD_SPECS))
def test_malformed_spec_fails_cleanly(name, tmp_path):
    text, line, needle = BAD_SPECS[name]
    spec = tmp_path / f"{name}.bypass"
    spec.write_text(text)
    done = bypass("-agent", "-shadow", spec.name, cwd=tmp_path)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    first = done.stderr.splitlines()[0]
    assert re.match(rf"{re.escape(spec.name)}:{line}:\d+: error: ", first), done.stderr
    assert needle in first, done.stderr
    assert "^" in done.stderr.splitlines()[-1]
    assert sorted(p.name for p in tmp_path.iterdir()) == [spec.name], "an output file was written"


def test_struct_without_layout_is_fine_as_opaque_or_with_an_action(tmp_path):
    spec = tmp_path / "fs.bypass"
    spec.write_text("agent_prologue {{\n@include \"sys/vfs.h\"\n}};\n"
                    "int statfs(in string const char *path, out opaque \"sizeof(struct statfs)\" struct statfs *buf);\n"
                    "int fstatfs(int fd, struct statfs *buf)\nagent_action {{ return fstatfs(fd, buf); }};\n")
    done = bypass("build", spec.name, "-o", "fs.so", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "fs.so").exists()


def test_build_of_malformed_spec_writes_no_agent(tmp_path):
    spec = tmp_path / "bad.bypass"
    spec.write_text("int close(int fd) agent_action {{ return 0; }}\nint close(int fd);\n")
    done = bypass("build", spec.name, "-o", "bad.so", cwd=tmp_path)
    assert done.returncode == 2 and "declared twice" in done.stderr
    assert not (tmp_path / "bad.so").exists()


def test_compile_error_in_action_points_at_the_spec(tmp_path):
    spec = tmp_path / "oops.bypass"
    spec.write_text("int close(int fd)\nagent_action {{\n    return undefined_helper(fd);\n}};\n")
    done = bypass("build", spec.name, "-o", "oops.so", cwd=tmp_path)
    assert done.returncode == 2
    assert "C compiler rejected" in done.stderr
    assert re.search(r"oops\.bypass:3:\d+: error: implicit declaration of function .undefined_helper", done.stderr)
    assert not (tmp_path / "oops.so").exists()


def test_missing_compiler_is_said_plainly(tmp_path):
    spec = tmp_path / "fine.bypass"
    spec.write_text("int close(int fd);\n")
    done = subprocess.run([sys.executable, "-m", "bypass.cli", "build", spec.name], cwd=tmp_path,
                          capture_output=True, text=True, env={"PATH": str(tmp_path)})
    assert done.returncode == 2
    assert "no C compiler found" in done.stderr and "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [spec.name]


def test_named_compiler_that_is_not_there_is_not_replaced_by_cc(tmp_path):
    spec = tmp_path / "fine.bypass"
    spec.write_text("int close(int fd);\n")
    done = subprocess.run([sys.executable, "-m", "bypass.cli", "build", spec.name], cwd=tmp_path,
                          capture_output=True, text=True, env={**os.environ, "CC": "nosuchcc"})
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines()[-1] == ("bypass: CC=nosuchcc: no such compiler (not found on PATH); "
                                            "unset CC to use cc")
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [spec.name]


def test_unreadable_spec(tmp_path):
    done = bypass("-agent", "missing.bypass", cwd=tmp_path)
    assert done.returncode == 2 and "missing.bypass:1:1: error: cannot read spec" in done.stderr
