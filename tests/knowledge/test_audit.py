"""The knowledge audit against this machine's real libc (glibc 2.36 on Debian 12)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bypass.knowledge.audit import FAMILIES_FILE, audit, load_families, load_knowledge_dir, main, running_libc
from bypass.knowledge.elfsyms import ElfReadError, read_exports, read_program
from bypass.knowledge.loader import KNOWLEDGE_DIR

SHIPPED = KNOWLEDGE_DIR / "linux-glibc"


def run_audit(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bypass.cli", "knowledge", "audit", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def libc_exports():
    return read_exports(running_libc())


def test_running_libc_is_found_and_versioned(libc_exports):
    assert libc_exports.soname == "libc.so.6"
    assert libc_exports.release() >= "GLIBC_2.36"
    # realpath: a default and a hidden (compat) version
    versions = {(v.version, v.default) for v in libc_exports.symbols["realpath"]}
    assert ("GLIBC_2.3", True) in versions and ("GLIBC_2.2.5", False) in versions


def test_shipped_knowledge_has_no_gap_on_this_libc(libc_exports):
    report = audit(load_knowledge_dir(SHIPPED), load_families(FAMILIES_FILE), libc_exports)
    assert report.gaps == [], [g.symbol for g in report.gaps]
    assert report.unchecked_families == []
    assert report.version_mismatches == []
    assert report.not_exported == []
    assert all(f.problem is None for f in report.multi_versioned)
    assert {"open", "stat", "read", "dir", "exec"} <= set(report.covered)
    # intentionally uncovered families are listed as such, with what libc exports for them
    assert "xattr" in report.covered and "copy" in report.covered
    assert "aio_read@@GLIBC_2.34" in report.not_covered["aio"]["symbols"]
    assert report.not_covered["glob"]["symbols"] and report.not_covered["fts"]["symbols"]


def test_cli_exit_zero_and_json():
    done = run_audit("--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["ok"] is True and data["gaps"] == []
    multi = {f["symbol"]: f for f in data["multi_versioned"]}
    assert multi["realpath"]["problem"] is None
    private = {f["symbol"] for f in data["private"]}
    assert "__open_nocancel" in private


def test_text_report_says_no_gaps():
    done = run_audit()
    assert done.returncode == 0
    assert "Result: no gaps" in done.stdout
    assert "Not covered by the knowledge" in done.stdout


def test_deleting_an_alias_is_reported_as_a_gap(tmp_path):
    copy = tmp_path / "knowledge"
    shutil.copytree(SHIPPED, copy)
    open_toml = copy / "open.toml"
    text = open_toml.read_text()
    entry = '''[[open.entry]]
symbol = "__open64_2"
since = "2.7"
decl = "int __open64_2(const char *path, int flags)"
defaults = { mode = "0" }
next_symbol = "open64"
next_args = "path, flags, mode"
'''
    assert entry in text
    open_toml.write_text(text.replace(entry, ""))
    done = run_audit("--knowledge", str(copy), "--json")
    assert done.returncode == 1
    data = json.loads(done.stdout)
    assert [g["symbol"] for g in data["gaps"]] == ["__open64_2"]
    assert data["covered"]["open"]["gaps"] == ["__open64_2"]
    text_report = run_audit("--knowledge", str(copy))
    assert text_report.returncode == 1
    assert "__open64_2@@GLIBC_2.7" in text_report.stdout


def test_wrong_since_is_a_version_mismatch(tmp_path, libc_exports):
    copy = tmp_path / "knowledge"
    shutil.copytree(SHIPPED, copy)
    stat_toml = copy / "stat.toml"
    stat_toml.write_text(stat_toml.read_text().replace('symbol = "statx"\nsince = "2.28"', 'symbol = "statx"\nsince = "2.30"'))
    report = audit(load_knowledge_dir(copy), load_families(), libc_exports)
    assert [f.symbol for f in report.version_mismatches] == ["statx"]
    assert report.ok                      # a mismatch is reported, only gaps fail the audit


@pytest.mark.parametrize("libc, message", [("/nonexistent/libc.so.6", "no such file"),
                                           ("/etc/passwd", "not an ELF file")])
def test_bad_libc_is_a_clear_error(libc, message):
    done = run_audit("--libc", libc)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_bad_knowledge_dir_is_a_clear_error(tmp_path):
    done = run_audit("--knowledge", str(tmp_path / "none"))
    assert done.returncode == 2 and "not a knowledge directory" in done.stderr
    assert "Traceback" not in done.stderr


def test_main_in_process(capsys):
    assert main(["--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True


def test_program_reader_tells_static_from_dynamic(tmp_path):
    assert read_program("/bin/ls").dynamic
    with pytest.raises(ElfReadError):
        read_program("/etc/hostname")
