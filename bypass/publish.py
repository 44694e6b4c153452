"""`bypass publish DIR OUT [--key K]`: a directory tree as a Bypass repository that any static
web server can serve and the webfs agent mounts (agents/webfs/README.md, "Bypass repositories").

    OUT/bypass.manifest      text, signed: format, revision, root catalog hash, time, signature
    OUT/data/ab/cdef...      objects: zlib-compressed content named by the SHA-256 of the content

Catalogs are SQLite databases stored as objects like files. The tree is split into nested
catalogs (every directory down to --nest-depth, and any directory holding a `.bypasscatalog`
file), so a client fetches only the catalogs of the subtrees it walks. A parent catalog names
each nested catalog by hash, so the signed manifest vouches for every byte below it.

Re-publishing writes only objects that are not there yet (unchanged files and unchanged subtrees'
catalogs keep their names), and the manifest last, so a server never names an object it lacks.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from .errors import BypassError

MANIFEST = "bypass.manifest"
FORMAT_LINE = "bypass-repository 1"
PUBLIC_KEY_TAG = "bypass-ed25519"
MARKER = ".bypasscatalog"
SCHEMA = """
CREATE TABLE catalog (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE entries (
    path TEXT PRIMARY KEY,      -- from the repository's root: '' for the root, '/lib/x.py'
    type TEXT NOT NULL,         -- D directory, F file, L symlink
    mode INTEGER NOT NULL,      -- st_mode, type bits included
    size INTEGER NOT NULL,
    mtime INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    hash TEXT,                  -- F: SHA-256 of the content (the object's name)
    target TEXT,                -- L: the link's target, as readlink gives it
    nested TEXT                 -- D: hash of the catalog of the subtree rooted here, if any
);
"""


# ------------------------------------------------------------------ keys

def _crypto():
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise BypassError("bypass publish signs with the 'cryptography' package: pip install cryptography") from None
    return serialization, ed25519


def public_key_text(raw: bytes) -> str:
    return f"{PUBLIC_KEY_TAG} {raw.hex()}\n"


def keygen(private: Path) -> Path:
    """A new Ed25519 key pair: PRIVATE (PEM, mode 0600) and PRIVATE.pub (what clients configure)."""
    serialization, ed25519 = _crypto()
    if private.exists():
        raise BypassError(f"{private} exists: not overwriting a key")
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    pub = Path(f"{private}.pub")
    pub.write_text(public_key_text(raw))
    return pub


def load_private_key(path: Path):
    serialization, ed25519 = _crypto()
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise BypassError(f"--key {path}: {exc.strerror}") from None
    except (ValueError, TypeError) as exc:
        raise BypassError(f"--key {path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise BypassError(f"--key {path}: an Ed25519 key is needed (bypass keygen makes one)")
    return key


# ------------------------------------------------------------------ objects

@dataclass
class Stats:
    files: int = 0
    objects_written: int = 0
    objects_kept: int = 0
    bytes_written: int = 0
    catalogs: int = 0
    skipped: list[str] = field(default_factory=list)


def _object_path(out: Path, digest: str) -> Path:
    return out / "data" / digest[:2] / digest[2:]


def _put_object(out: Path, data: bytes, stats: Stats) -> str:
    digest = hashlib.sha256(data).hexdigest()
    dest = _object_path(out, digest)
    if dest.exists():
        stats.objects_kept += 1
        return digest
    dest.parent.mkdir(parents=True, exist_ok=True)
    packed = zlib.compress(data, 6)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".new-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(packed)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    stats.objects_written += 1
    stats.bytes_written += len(packed)
    return digest


# ------------------------------------------------------------------ the walk

@dataclass
class Entry:
    path: str
    type: str
    st: os.stat_result
    hash: str | None = None
    target: str | None = None
    nested: str | None = None


def _scan(src: Path, rel: str, depth: int, nest_depth: int, out: Path, stats: Stats,
          catalogs: dict[str, list[Entry]], owner: str) -> None:
    """Entries below directory `rel` go to the catalog rooted at `owner`; a nested directory
    starts its own catalog (built before its parent's, which names it by hash)."""
    here = src / rel.lstrip("/") if rel else src
    with os.scandir(here) as it:
        names = sorted(it, key=lambda d: d.name)
    for d in names:
        path = f"{rel}/{d.name}"
        st = d.stat(follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            catalogs[owner].append(Entry(path, "L", st, target=os.readlink(d.path)))
        elif stat.S_ISREG(st.st_mode):
            data = Path(d.path).read_bytes()
            stats.files += 1
            catalogs[owner].append(Entry(path, "F", st, hash=_put_object(out, data, stats)))
        elif stat.S_ISDIR(st.st_mode):
            entry = Entry(path, "D", st)
            catalogs[owner].append(entry)
            nests = depth + 1 <= nest_depth or (Path(d.path) / MARKER).is_file()
            if nests:
                catalogs[path] = [Entry(path, "D", st)]
            _scan(src, path, depth + 1, nest_depth, out, stats, catalogs, path if nests else owner)
            if nests:
                entry.nested = _write_catalog(path, catalogs.pop(path), out, stats)
        else:
            stats.skipped.append(path)


def _write_catalog(root: str, entries: list[Entry], out: Path, stats: Stats) -> str:
    """The SQLite catalog of one subtree, stored as an object; its hash."""
    fd, tmp = tempfile.mkstemp(dir=out, prefix=".catalog-")
    os.close(fd)
    try:
        db = sqlite3.connect(tmp)
        db.execute("PRAGMA journal_mode=OFF")
        db.executescript(SCHEMA)
        db.executemany("INSERT INTO catalog VALUES (?, ?)", [("schema", "1"), ("root", root)])
        db.executemany(
            "INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(e.path, e.type, e.st.st_mode, e.st.st_size if e.type != "D" else 0, e.st.st_mtime_ns // 10**9,
              e.st.st_mtime_ns % 10**9, e.hash, e.target, e.nested) for e in sorted(entries, key=lambda e: e.path)])
        db.commit()
        db.close()
        data = Path(tmp).read_bytes()
    finally:
        Path(tmp).unlink(missing_ok=True)
    stats.catalogs += 1
    return _put_object(out, data, stats)


# ------------------------------------------------------------------ the manifest

def _previous_revision(out: Path) -> int:
    try:
        text = (out / MANIFEST).read_text()
    except FileNotFoundError:
        return 0
    for line in text.splitlines():
        if line.startswith("revision "):
            try:
                return int(line.split()[1])
            except (IndexError, ValueError):
                break
    raise BypassError(f"{out / MANIFEST}: no readable revision line; remove it to start again at revision 1")


def manifest_text(revision: int, root: str, when: int, sign) -> str:
    body = f"{FORMAT_LINE}\nrevision {revision}\nroot {root}\npublished {when}\n"
    return body + f"signature {sign(body.encode()).hex()}\n"


def publish(src: Path, out: Path, key_path: Path, nest_depth: int = 1) -> tuple[int, str, Stats]:
    if not src.is_dir():
        raise BypassError(f"{src}: not a directory")
    if nest_depth < 0:
        raise BypassError("--nest-depth must be 0 or more")
    out_abs, src_abs = out.resolve(), src.resolve()
    if out_abs == src_abs or src_abs in out_abs.parents:
        raise BypassError(f"{out} is inside {src}: the repository would publish itself")
    key = load_private_key(key_path)
    out.mkdir(parents=True, exist_ok=True)
    stats = Stats()
    catalogs: dict[str, list[Entry]] = {"": [Entry("", "D", src.stat())]}
    _scan(src, "", 0, nest_depth, out, stats, catalogs, "")
    root = _write_catalog("", catalogs.pop(""), out, stats)
    revision = _previous_revision(out) + 1
    text = manifest_text(revision, root, int(time.time()), key.sign)
    tmp = out / f".{MANIFEST}.{os.getpid()}"
    tmp.write_text(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, out / MANIFEST)
    return revision, root, stats


def main(argv: list[str]) -> int:
    import argparse
    parser = argparse.ArgumentParser(prog="bypass publish", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", help="the tree to publish")
    parser.add_argument("out", help="the repository folder to write (served as it is by a web server)")
    parser.add_argument("--key", metavar="K",
                        help="Ed25519 private key (PEM) to sign with; made, with K.pub, if missing "
                             "(default $BYPASS_PUBLISH_KEY, else ~/.config/bypass/publish.key)")
    parser.add_argument("--nest-depth", type=int, default=1, metavar="N",
                        help="directories down to depth N get their own catalog (default 1: each top-level "
                             "directory); a directory holding a .bypasscatalog file always does")
    args = parser.parse_args(argv)
    key = Path(args.key or os.environ.get("BYPASS_PUBLISH_KEY")
               or Path.home() / ".config" / "bypass" / "publish.key")
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True)
        pub = keygen(key)
        print(f"bypass publish: made a new key {key}; clients configure its public half {pub}", file=sys.stderr)
    try:
        revision, root, stats = publish(Path(args.dir), Path(args.out), key, args.nest_depth)
    except OSError as exc:
        raise BypassError(f"publish: {exc.filename or ''}: {exc.strerror}") from None
    for path in stats.skipped:
        print(f"bypass publish: {path}: not a file, directory or symlink: left out", file=sys.stderr)
    print(f"{args.out}: revision {revision}, root catalog {root}; {stats.files} files, {stats.catalogs} catalogs; "
          f"{stats.objects_written} objects written ({stats.bytes_written} bytes), {stats.objects_kept} already there")
    return 0


def keygen_main(argv: list[str]) -> int:
    import argparse
    parser = argparse.ArgumentParser(prog="bypass keygen", description="make an Ed25519 key pair for bypass publish")
    parser.add_argument("key", help="the private key file to write (mode 0600); its public half goes to KEY.pub")
    args = parser.parse_args(argv)
    pub = keygen(Path(args.key))
    print(f"{args.key}: private key (keep it); {pub}: public key (give it to clients: key=... in a webfs mount)")
    return 0
