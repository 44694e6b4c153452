"""`bypass shadow` and `bypass run --export`: serving a spec's shadow.

    bypass shadow SPEC [--export DIR] [--listen unix:/path | tcp:host:port] [--secret-file F]
    bypass run SPEC --export DIR [--listen ADDR] -- COMMAND...
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import types
from pathlib import Path

from ..errors import BypassError
from . import auth
from .protocol import ENV_ADDRESS, ENV_SECRET, ENV_SECRET_FILE, parse_address

log = logging.getLogger("bypass.shadow")


def _shadow_cache_key(spec_path: Path) -> str:
    """Everything the generated shadow depends on, hashed without parsing anything (parsing
    a big spec takes seconds; a program started under `bypass run` should not wait for it)."""
    import hashlib
    package = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256(spec_path.read_bytes())
    for pattern in ("*.py", "*/*.py", "*/*.toml", "*/*/*.toml", "codegen/templates/*.j2"):
        for f in sorted(package.glob(pattern)):
            digest.update(str(f).encode() + b"\0" + f.read_bytes())
    return digest.hexdigest()[:20]


def shadow_source(spec_path: str | Path) -> str:
    """The spec's generated shadow module (cached next to built agents)."""
    from ..build import cache_dir, generate
    spec_path = Path(spec_path)
    cached = cache_dir() / "shadows" / f"{spec_path.stem}-{_shadow_cache_key(spec_path)}.py"
    try:
        return cached.read_text()
    except OSError:
        pass
    text = generate(spec_path).shadow_py
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(f".{cached.name}.{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, cached)
    except OSError:
        pass           # no cache: still works, only slower
    return text


def load_shadow(spec_path: str | Path) -> types.ModuleType:
    """Generate (or fetch from the cache) the spec's shadow module and load it."""
    module = types.ModuleType(f"bypass_shadow_{Path(spec_path).stem}")
    module.__file__ = f"<shadow of {spec_path}>"
    exec(compile(shadow_source(spec_path), module.__file__, "exec"), module.__dict__)
    return module


def make_server(spec_path, export: str | None = None, secret: bytes | None = None, **options):
    from .export import ExportRoot
    module = load_shadow(spec_path)
    server = module.make_server(secret=secret, **options)
    server.module = module
    if export is not None:
        if not os.path.isdir(export):
            raise BypassError(f"--export {export}: not a directory")
        server.export = ExportRoot(export, getattr(module, "EXPORT_ALIAS", None))
    else:
        server.export = None
    return server


def _secret(args, listen: str | None) -> bytes | None:
    if getattr(args, "secret_file", None):
        with open(args.secret_file, "rb") as f:
            return f.read().strip()
    secret = auth.secret_from_env()
    if secret is None and listen and parse_address(listen)[0] == "tcp":
        fresh = auth.new_secret()
        print(f"bypass shadow: no secret given; agents must set {ENV_SECRET}={fresh}",
              file=sys.stderr, flush=True)
        secret = fresh.encode()
    return secret


def add_arguments(parser) -> None:
    parser.add_argument("spec", help="the .bypass specification whose shadow to serve")
    parser.add_argument("--export", metavar="DIR",
                        help="shadow file calls act inside DIR only (no escape by .. or symlinks)")
    parser.add_argument("--listen", metavar="ADDR",
                        help="unix:/path or tcp:host:port (default: a Unix socket in a new private "
                             "directory; tcp needs a secret)")
    parser.add_argument("--secret-file", metavar="FILE",
                        help=f"shared secret for TCP (default ${ENV_SECRET} or ${ENV_SECRET_FILE}; "
                             "a fresh one is printed when none is set)")
    parser.add_argument("--summary", action="store_true",
                        help="at exit, print the per-file I/O summary (specs that keep one)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every connection")


def print_summary(server, out=sys.stderr) -> None:
    """The shadow module's per-file I/O summary (Condor printed one at the end of a job)."""
    rows = server.module.summary() if hasattr(server.module, "summary") else None
    if rows is None:
        print("bypass shadow: this spec's shadow keeps no I/O summary", file=out)
        return
    print(f"{'file':40} {'opens':>5} {'reads':>7} {'bytes read':>12} {'writes':>7} "
          f"{'bytes written':>13} {'seeks':>6}", file=out)
    for path, opens, reads, rbytes, writes, wbytes, seeks in rows:
        print(f"{path:40} {opens:5} {reads:7} {rbytes:12} {writes:7} {wbytes:13} {seeks:6}", file=out)


def cmd_shadow(args) -> int:
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="bypass shadow: %(message)s")
    server = make_server(args.spec, args.export, _secret(args, args.listen))
    address = server.listen(args.listen)
    print(f"{ENV_ADDRESS}={address}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    server.start()
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.close()
        if args.summary:
            print_summary(server)
    return 0


def run_with_shadow(spec_path, export: str | None, listen: str | None, run,
                    summary: bool = False) -> int:
    """Serve the shadow in this process while `run(extra_env)` runs the program."""
    logging.basicConfig(level=logging.WARNING, format="bypass shadow: %(message)s")
    secret = auth.secret_from_env()
    if listen and parse_address(listen)[0] == "tcp" and secret is None:
        secret = auth.new_secret().encode()
    server = make_server(spec_path, export, secret)
    address = server.listen(listen)
    server.start()
    env = {ENV_ADDRESS: address}
    if secret is not None:
        env[ENV_SECRET] = secret.decode()
    try:
        return run(env)
    finally:
        server.close()       # releases every process state: open files get counted
        if summary:
            print_summary(server)
