"""Condor's remote-I/O policy for the remote agent's shadow: *policy in the shadow, mechanism in
the agent*.  At open, the agent asks the shadow once per path where the file is and how to read
it; the answer comes from a submit-file-like policy (`bypass shadow --policy FILE`):

    file_remaps = "datafile = data.$(PROCESS) ; calib = http://host/calib ; tmp = local:/scratch/t"
    buffer_size = 20000000
    buffer_block_size = 32768
    buffer_files = "big.dat = (20000000, 65536) ; *.log = (0, 0)"
    fetch_files = "*.db, input*"

Names are the job's (relative to the remote prefix, /job, or absolute under it).  A decision is
a location (the export, maybe another file of it; a local path on the execution machine; a URL
fetched whole by the shadow) and a buffering (none, buffer(size, block) or stage).
"""
from __future__ import annotations

import errno
import fnmatch
import os
import posixpath
import re
import tempfile
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from ..errors import BypassError

# what the agent is told (agents/remote/policy.c has the same numbers)
NO_POLICY, EXPORT, LOCAL, URL = 0, 1, 2, 3
STAGE = -1                      # the buffer size that means "stage the whole file"
DEFAULT_BLOCK = 32768           # Condor's default buffer_block_size
MAX_BLOCK = 8 * 1024 * 1024     # one block travels in one RPC reply (BYPASS_RPC_MAX_PAYLOAD)
MAX_BUFFER = 1 << 30
URL_SCHEMES = ("http://", "https://", "ftp://")
SETTINGS = ("file_remaps", "buffer_size", "buffer_block_size", "buffer_files", "fetch_files")


@dataclass(frozen=True)
class Decision:
    kind: int                   # EXPORT, LOCAL or URL
    where: str = ""             # the export path, local path or URL ("" : the name itself)
    size: int = 0               # 0 none, > 0 buffer(size, block), STAGE
    block: int = 0

    def describe(self, name: str, prefix: str = "/job") -> str:
        """One word for the report: remote, buffered(size,block), staged, local:PATH, the URL;
        HOW,from:NAME for the file another name was remapped to inside the export."""
        how = ("staged" if self.size == STAGE else
               f"buffered({self.size},{self.block})" if self.size > 0 else "remote")
        if self.kind == LOCAL:
            return f"local:{self.where}"
        if self.kind == URL:
            return self.where
        if self.where:
            return f"{how},from:{job_path(name, prefix)}"
        return how


def job_path(export_path: str, prefix: str = "/job") -> str:
    """An export path ("/./run.sh", "//a/../b") as the job names it ("/job/run.sh")."""
    clean = posixpath.normpath("/" + export_path.lstrip("/"))
    clean = "/" + clean.lstrip("/")          # normpath keeps a leading "//"
    return prefix.rstrip("/") + ("" if clean == "/" else clean) or "/"


class PolicyError(BypassError):
    pass


@dataclass
class Policy:
    remaps: dict = field(default_factory=dict)       # export path -> (kind, where)
    buffer_size: int = 0
    block: int = DEFAULT_BLOCK
    buffer_files: list = field(default_factory=list)  # (pattern, size, block), first match wins
    fetch_files: list = field(default_factory=list)   # patterns of staged files
    process: int = 0

    def empty(self) -> bool:
        return not (self.remaps or self.buffer_size or self.buffer_files or self.fetch_files)

    def export_name(self, export_path: str) -> str:
        """The export file a name stands for: its file_remaps target inside the export, or the
        name itself, untouched (".", "..", symlinks and trailing slashes keep their meaning)."""
        if not self.remaps:
            return export_path
        kind, where = self.remaps.get(posixpath.normpath("/" + export_path.lstrip("/")), (EXPORT, ""))
        if kind != EXPORT or not where:
            return export_path
        return where + "/" if export_path.endswith("/") else where

    def decide(self, export_path: str) -> Decision:
        name = posixpath.normpath("/" + export_path.lstrip("/"))
        kind, where = self.remaps.get(name, (EXPORT, ""))
        if kind != EXPORT:
            return Decision(kind, where, STAGE if kind == URL else 0, 0)
        size, block = self._buffering(name.lstrip("/"))
        return Decision(EXPORT, where, size, block)

    def _buffering(self, rel: str) -> tuple[int, int]:
        if any(_matches(p, rel) for p in self.fetch_files):
            return STAGE, 0
        for pattern, size, block in self.buffer_files:
            if _matches(pattern, rel):
                return (size, block) if size > 0 else (0, 0)
        return (self.buffer_size, self.block) if self.buffer_size > 0 else (0, 0)


def _matches(pattern: str, rel: str) -> bool:
    """A pattern with a "/" names a path from the job's top; one without, a file name anywhere."""
    return fnmatch.fnmatchcase(rel, pattern) or ("/" not in pattern and
                                                 fnmatch.fnmatchcase(posixpath.basename(rel), pattern))


# ---- the policy file ------------------------------------------------------------------------

def load(path: str, process: int = 0, export: str | None = None, prefix: str = "/job") -> Policy:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise PolicyError(f"--policy {path}: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise PolicyError(f"{path}:{line}: error: not UTF-8 text") from None
    return parse(text, path, process, export, prefix)


def parse(text: str, path: str = "<policy>", process: int = 0, export: str | None = None,
          prefix: str = "/job") -> Policy:
    if process < 0:
        raise PolicyError(f"--process {process}: a job number is 0 or more")
    policy = Policy(process=process)
    seen: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        def fail(message: str, _n=number, _line=line):
            raise PolicyError(f"{path}:{_n}: error: {message}\n    {_line.strip()}")
        body = line.strip()
        if not body or body.startswith("#"):
            continue
        key, sep, value = body.partition("=")
        key = key.strip().lower()
        if not sep or not re.fullmatch(r"[a-z_]+", key):
            fail("expected `name = value`")
        if key not in SETTINGS:
            fail(f"unknown setting {key!r} (this shadow knows {', '.join(SETTINGS)})")
        if key in seen:
            fail(f"{key} was already set on line {seen[key]}")
        seen[key] = number
        value = _unquote(value.strip(), fail)
        value = _macros(value, process, fail)
        if key == "file_remaps":
            for left, right in _pairs(value, fail):
                policy.remaps[_job_name(left, prefix, fail)] = _target(right, export, prefix, fail)
        elif key == "buffer_size":
            policy.buffer_size = _number(value, 0, MAX_BUFFER, key, fail)
        elif key == "buffer_block_size":
            policy.block = _number(value, 1, MAX_BLOCK, key, fail)
        elif key == "buffer_files":
            for left, right in _pairs(value, fail):
                m = re.fullmatch(r"\(\s*(\d+)\s*,\s*(\d+)\s*\)", right)
                if not m:
                    fail(f"buffer_files wants `name = (size, block)`, got {right!r} for {left!r}")
                size = _number(m.group(1), 0, MAX_BUFFER, f"{left}'s buffer size", fail)
                block = _number(m.group(2), 0, MAX_BLOCK, f"{left}'s block size", fail)
                if size and not block:
                    fail(f"{left}: a buffer needs a block size of 1 or more")
                policy.buffer_files.append((left, size, min(block, size) if size else 0))
        elif key == "fetch_files":
            policy.fetch_files = [p.strip() for p in value.split(",") if p.strip()]
    if policy.buffer_size and policy.block > policy.buffer_size:
        policy.block = policy.buffer_size
    return policy


def _unquote(value: str, fail) -> str:
    if value.startswith('"'):
        if len(value) < 2 or not value.endswith('"') or '"' in value[1:-1]:
            fail("unbalanced quotes")
        return value[1:-1]
    return value


def _macros(value: str, process: int, fail) -> str:
    def one(m):
        if m.group(1).lower() != "process":
            fail(f"unknown macro $({m.group(1)}) (this shadow knows $(PROCESS))")
        return str(process)
    out = re.sub(r"\$\(([^)]*)\)", one, value)
    if "$(" in out:
        fail("unclosed $(")
    return out


def _pairs(value: str, fail):
    for item in value.split(";"):
        if not item.strip():
            continue
        left, sep, right = item.partition("=")
        if not sep or not left.strip() or not right.strip():
            fail(f"expected `name = target` between semicolons, got {item.strip()!r}")
        yield left.strip(), right.strip()


def _number(text: str, low: int, high: int, what: str, fail) -> int:
    if not re.fullmatch(r"\d+", text):
        fail(f"{what} wants a number of bytes, got {text!r}")
    n = int(text)
    if not low <= n <= high:
        fail(f"{what} {n} is out of range ({low}..{high})")
    return n


def _job_name(name: str, prefix: str, fail) -> str:
    """The export path of a name the job uses: "datafile", "sub/x" or "/job/sub/x"."""
    if name.startswith("/"):
        if name != prefix and not name.startswith(prefix.rstrip("/") + "/"):
            fail(f"{name!r} is not under {prefix}: the job's remote files are")
        name = name[len(prefix.rstrip("/")):]
    clean = posixpath.normpath("/" + name.lstrip("/"))
    if clean == "/" or ".." in name.split("/"):
        fail(f"{name!r} does not name a file of the job")
    return clean


def _target(right: str, export: str | None, prefix: str, fail) -> tuple[int, str]:
    if right.lower().startswith(URL_SCHEMES):
        return URL, right
    if right.startswith("local:"):
        local = right[len("local:"):]
        if not local.startswith("/"):
            fail(f"local:{local} must be an absolute path on the execution machine")
        return LOCAL, local
    if right.startswith("remote:"):
        right = right[len("remote:"):]
    if right.startswith("/") and export and not right.startswith(prefix.rstrip("/") + "/"):
        root = os.path.realpath(export)
        full = os.path.normpath(right)
        if full != root and not full.startswith(root.rstrip("/") + "/"):
            fail(f"{right!r} is outside the export {root}: the shadow serves nothing else")
        right = "/" + os.path.relpath(full, root)
    if re.match(r"^[a-z]+://", right, re.I):
        fail(f"{right!r}: only {', '.join(URL_SCHEMES)} URLs can be fetched")
    return EXPORT, _job_name(right, prefix, fail)


# ---- URLs: fetched whole by the shadow, read by the agent from its own copy -----------------

class Fetched:
    """URLs fetched for this run, each once, kept in unlinked temporary files."""

    def __init__(self, timeout: float = 30.0):
        self.timeout = timeout
        self._files: dict[str, int] = {}
        self._lock = threading.Lock()

    def fd(self, url: str) -> int:
        with self._lock:
            if url not in self._files:
                self._files[url] = self._fetch(url)
            return self._files[url]

    def _fetch(self, url: str) -> int:
        import logging
        log = logging.getLogger("bypass.shadow")
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as reply:
                f = tempfile.TemporaryFile()
                try:
                    while chunk := reply.read(1 << 20):
                        f.write(chunk)
                    f.flush()
                    fd = os.dup(f.fileno())
                finally:
                    f.close()
                return fd
        except urllib.error.HTTPError as exc:
            log.warning("%s: HTTP %s %s", url, exc.code, exc.reason)
            raise OSError(errno.ENOENT if exc.code in (404, 410) else
                          errno.EACCES if exc.code in (401, 403) else errno.EIO, url) from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            log.warning("%s: cannot fetch (%s)", url, getattr(exc, "reason", exc))
            raise OSError(errno.EIO, url) from None

    def close(self) -> None:
        with self._lock:
            for fd in self._files.values():
                os.close(fd)
            self._files.clear()
