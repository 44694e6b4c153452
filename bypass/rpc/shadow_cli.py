"""`bypass shadow` and `bypass run --export`: serving a spec's shadow.

    bypass shadow SPEC [--export DIR] [--listen unix:/path | tcp:host:port] [--secret-file F]
    bypass run SPEC --export DIR [--listen ADDR] -- COMMAND...
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import time
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


def make_server(spec_path, export: str | None = None, secret: bytes | None = None, *,
                policy=None, summary: bool = False, **options):
    """policy: a bypass.rpc.policy.Policy for the shadow's per-file decisions; summary: the
    caller will print the I/O report (refused for a spec whose shadow keeps none)."""
    from .export import ExportRoot
    module = load_shadow(spec_path)
    if (summary or policy is not None) and not hasattr(module, "report"):
        what = "--policy" if policy is not None else "--summary"
        raise BypassError(f"{what}: the shadow of {spec_path} keeps no I/O report and takes no "
                          "policy (the remote agent's does)")
    server = module.make_server(secret=secret, **options)
    server.module = module
    if export is not None:
        if not os.path.isdir(export):
            raise BypassError(f"--export {export}: not a directory")
        server.export = ExportRoot(export, getattr(module, "EXPORT_ALIAS", None))
    else:
        server.export = None
    if policy is not None:
        from .policy import Fetched
        server.policy = policy
        server.fetched = Fetched()
        server._cleanup.append(server.fetched.close)
        module.report().buffer = (policy.buffer_size, policy.block if policy.buffer_size else 0)
    return server


def load_policy(args, export: str | None):
    """--policy FILE [--process N] → a Policy (None without --policy)."""
    if args.policy is None:
        if args.process is not None:
            raise BypassError("--process needs --policy FILE: it is the $(PROCESS) of the policy's file_remaps")
        return None
    from .policy import load
    return load(args.policy, args.process or 0, export, os.environ.get("BYPASS_REMOTE_PREFIX", "/job"))


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
    add_policy_arguments(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="log every connection")


def add_policy_arguments(parser) -> None:
    parser.add_argument("--policy", metavar="FILE",
                        help="Condor-style remote-I/O policy: file_remaps, buffer_size, buffer_block_size, "
                             "buffer_files, fetch_files (see agents/remote/README.md)")
    parser.add_argument("--process", metavar="N", type=int,
                        help="with --policy: the job number that $(PROCESS) stands for (default 0)")
    parser.add_argument("--summary", action="store_true",
                        help="at the end, print the I/O report (totals, then per file) on stderr")
    parser.add_argument("--summary-json", metavar="FILE",
                        help="at the end, write the I/O report as JSON to FILE")


def print_summary(server, out=sys.stderr, json_file: str | None = None, text: bool = True) -> None:
    """The I/O report (Condor printed one at the end of a job)."""
    report = server.module.report()
    if text:
        print(report.as_text(), file=out)
    if json_file:
        with open(json_file, "w") as f:
            f.write(report.as_json() + "\n")


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_stop_requested: list[int] = []


def _request_stop(signum, _frame) -> None:
    # Only a list append: a handler that takes a lock (Event.set) deadlocks when the signal
    # lands while the main thread holds that lock in Event.wait (seen: about one SIGTERM in
    # fifteen never ended the shadow); one that raises can be hit by a second signal inside
    # the clean-up.
    _stop_requested.append(signum)


def cmd_shadow(args) -> int:
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="bypass shadow: %(message)s")
    for sig in _STOP_SIGNALS:
        signal.signal(sig, _request_stop)
    server = None
    try:
        server = make_server(args.spec, args.export, _secret(args, args.listen),
                             policy=load_policy(args, args.export),
                             summary=args.summary or bool(args.summary_json))
        address = server.listen(args.listen)
        print(f"{ENV_ADDRESS}={address}", flush=True)
        server.start()
        while not _stop_requested:
            time.sleep(0.2)
    finally:
        if server is not None:
            server.close()
            if args.summary or args.summary_json:
                print_summary(server, json_file=args.summary_json, text=args.summary)
    return 0


def run_with_shadow(spec_path, export: str | None, listen: str | None, run,
                    summary: bool = False, policy=None, summary_json: str | None = None) -> int:
    """Serve the shadow in this process while `run(extra_env)` runs the program."""
    logging.basicConfig(level=logging.WARNING, format="bypass shadow: %(message)s")
    secret = auth.secret_from_env()
    if listen and parse_address(listen)[0] == "tcp" and secret is None:
        secret = auth.new_secret().encode()
    server = make_server(spec_path, export, secret, policy=policy, summary=summary or bool(summary_json))
    address = server.listen(listen)
    server.start()
    env = {ENV_ADDRESS: address}
    if secret is not None:
        env[ENV_SECRET] = secret.decode()
    try:
        return run(env)
    finally:
        server.close()       # releases every process state: open files get counted
        if summary or summary_json:
            print_summary(server, json_file=summary_json, text=summary)
