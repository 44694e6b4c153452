"""`bypass gass cache ...`: look at and clear the gass agent's per-user cache.

The layout is the one agents/gass/gass_cache.c writes (see the comment at its top):
data/<key> and data/<key>.meta, locks/<key>.lock, tmp/, writes/<dev>.<ino> (staged writes in
progress) and unsent/ (data of uploads that failed at exit, which `list` shows and `clear` keeps). Entries are removed only while their
lock can be taken, exactly as the agent's own eviction does, so clearing the cache while
programs use it never pulls a file from under a download in progress.

Reached as `bypass gass cache {dir,list,clear} [--all]` (bypass/cli.py calls add_subcommand).
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

STALE_TMP_SECONDS = 3600  # a download/staging file untouched this long belongs to a dead process


def cache_dir(env: dict[str, str] | None = None) -> Path:
    """Where the gass agent keeps its cache, by the same rules as gass_cache_dir() in C."""
    env = os.environ if env is None else env
    if env.get("BYPASS_GASS_CACHE"):
        return Path(env["BYPASS_GASS_CACHE"])
    if env.get("XDG_CACHE_HOME"):
        return Path(env["XDG_CACHE_HOME"]) / "bypass-gass"
    if env.get("HOME"):
        return Path(env["HOME"]) / ".cache" / "bypass-gass"
    return Path(f"/tmp/bypass-gass-{os.getuid()}")


@dataclass
class Entry:
    key: str
    url: str
    size: int
    etag: str
    last_used: float


def _read_meta(path: Path) -> dict[str, str]:
    fields: dict[str, str] = {}
    try:
        for line in path.read_text(errors="replace").splitlines():
            name, _, value = line.partition(" ")
            fields[name] = value
    except OSError:
        pass
    return fields


def entries(root: Path | None = None) -> list[Entry]:
    root = cache_dir() if root is None else root
    result = []
    data = root / "data"
    if not data.is_dir():
        return result
    for path in data.iterdir():
        if len(path.name) != 16 or "." in path.name:
            continue
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        meta = _read_meta(path.with_name(path.name + ".meta"))
        result.append(Entry(path.name, meta.get("url", "?"), st.st_size, meta.get("etag", ""),
                            st.st_atime))
    return sorted(result, key=lambda e: e.last_used, reverse=True)


def unsent(root: Path | None = None) -> list[tuple[Path, str]]:
    """Data kept from uploads that failed at exit: (file, the URL it was going to)."""
    root = cache_dir() if root is None else root
    folder = root / "unsent"
    if not folder.is_dir():
        return []
    result = []
    for path in sorted(folder.iterdir()):
        if path.suffix == ".url":
            continue
        try:
            url = path.with_name(path.name + ".url").read_text().strip()
        except OSError:
            url = "?"
        result.append((path, url))
    return result


def _try_lock(root: Path, key: str) -> int | None:
    try:
        fd = os.open(root / "locks" / f"{key}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return None
        raise
    return fd


def clear(root: Path | None = None, everything: bool = False) -> tuple[int, int, int]:
    """Remove cache entries not in use right now, and abandoned temp files.

    With everything=True, temp files are removed whatever their age (use it only when no
    program is using gass). Returns (entries removed, bytes freed, entries skipped as busy).
    """
    root = cache_dir() if root is None else root
    removed = freed = busy = 0
    (root / "locks").mkdir(parents=True, exist_ok=True)
    for entry in entries(root):
        fd = _try_lock(root, entry.key)
        if fd is None:
            busy += 1
            continue
        try:
            for name in (entry.key + ".meta", entry.key):
                try:
                    (root / "data" / name).unlink()
                except FileNotFoundError:
                    pass
            removed += 1
            freed += entry.size
        finally:
            os.close(fd)
    tmp = root / "tmp"
    now = time.time()
    if tmp.is_dir():
        for path in tmp.iterdir():
            try:
                if everything or now - path.stat().st_mtime > STALE_TMP_SECONDS:
                    path.unlink()
            except FileNotFoundError:
                pass
    # A staged write's record whose staging file is gone belongs to a process that died.
    writes = root / "writes"
    if writes.is_dir():
        for record in writes.iterdir():
            staging = _read_meta(record).get("staging")
            if everything or staging is None or not os.path.exists(staging):
                try:
                    record.unlink()
                except FileNotFoundError:
                    pass
    return removed, freed, busy


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def run(args: argparse.Namespace) -> int:
    root = cache_dir()
    if args.action == "dir":
        print(root)
    elif args.action == "list":
        total = 0
        for e in entries(root):
            total += e.size
            used = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.last_used))
            print(f"{_human(e.size):>10}  {used}  {e.url}")
        print(f"{_human(total)} in {root}")
        for path, url in unsent(root):
            print(f"unsent (upload failed, data kept): {path} -> {url}")
    elif args.action == "clear":
        removed, freed, busy = clear(root, everything=args.all)
        print(f"removed {removed} entries ({_human(freed)}) from {root}"
              + (f"; {busy} in use, kept" if busy else ""))
    return 0


def add_subcommand(subparsers) -> None:
    """Add `gass cache {dir,list,clear}` to an argparse subparsers object."""
    gass = subparsers.add_parser("gass", help="the gass agent's tools")
    gass_sub = gass.add_subparsers(dest="gass_command", required=True)
    cache = gass_sub.add_parser("cache", help="show or clear the per-user URL cache")
    cache.add_argument("action", choices=["dir", "list", "clear"])
    cache.add_argument("--all", action="store_true",
                       help="with clear: also remove temp files of running programs")
    cache.set_defaults(func=run)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bypass")
    sub = parser.add_subparsers(dest="command", required=True)
    add_subcommand(sub)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] != ["gass"]:
        argv = ["gass", "cache"] + argv  # run directly: `python3 -m bypass.agents.gass.gass_cache clear`
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
