"""The shadow server: answers the remote calls of many agent processes at once.

    from bypass.rpc.server import ShadowServer
    server = ShadowServer({0: do_open, 1: do_read}, spec_hash=SPEC_HASH)
    address = server.listen()            # unix socket in a fresh private directory
    server.serve_forever()

A dispatch table maps call numbers to `handler(ctx, *args)`; a handler returns the result
(anything msgpack can carry) or raises OSError, which the agent sees as that errno.  `ctx`
is the caller's CallContext: `ctx.process` is its ProcessState, whose descriptor table
survives exec and is copied at fork with the entries sharing their open files, as POSIX does.

One thread per connection (not per call): a synchronous call then costs one recv, the
handler and one send, with no hand-off between threads.  A connection that breaks the
protocol is closed and logged; the others keep being served.
"""
from __future__ import annotations

import errno
import logging
import os
import resource
import secrets
import selectors
import socket
import stat
import tempfile
import threading
import time
from typing import Any, Callable, Mapping

from . import auth, creds, neutral
from .framing import _HEADER, _RECV_SIZE, _SMALL, FrameReader, new_packer, send_frame, send_frame_body
from .c_loop import c_loop
from .neutral import errno_to_neutral
from .protocol import (
    AGENT_MAGIC, CALL_CLOSE_FDS, CALL_FDS, CALL_FORK, CALL_PING, HANDSHAKE_TIMEOUT,
    MAX_FRAME, MAX_HANDSHAKE_FRAME, NONCE_SIZE, PROTOCOL_VERSION, REFUSED, SHADOW_MAGIC,
    STATUS_ERRNO, STATUS_FAILURE, STATUS_OK, WELCOME, ProtocolError, boot_id,
    local_platform, parse_address, process_parent, process_start_time,
)

log = logging.getLogger("bypass.shadow")

Handler = Callable[..., Any]


# Native actions (c/shadow_loop.c): the kinds, and the neutral forms of struct stat's members
# and of the 16 possible file types, as neutral.stat_to_neutral makes them.
_NATIVE_KINDS = {"fstat": 1, "stat": 2, "read": 3, "pread": 4}
_NATIVE_MAX = 8
_STAT_ORDER = tuple(neutral._STAT_COMPUTED.index(f) for f in neutral.STAT_FIELDS)
_FILE_TYPES = tuple(neutral.mode_to_neutral(t << 12) & ~0o7777 for t in range(16))


def _no_such_call(ctx, *args):
    raise OSError(errno.ENOSYS, "no such call in this shadow")


# ------------------------------------------------------------------------------------------------
# per-process state

class Shared:
    """A shadow-side object that several descriptors may refer to: the shadow's analogue of
    an open file description.  Closed (via `closer`) when the last reference goes."""

    __slots__ = ("obj", "closer", "refs", "lock", "__weakref__")

    def __init__(self, obj, closer: Callable[[Any], None] | None = None):
        self.obj = obj
        self.closer = closer
        self.refs = 0
        self.lock = threading.Lock()   # for handlers that need atomic multi-step use

    def incref(self) -> "Shared":
        self.refs += 1
        return self

    def decref(self) -> None:
        self.refs -= 1
        if self.refs == 0 and self.closer is not None:
            try:
                self.closer(self.obj)
            except Exception:
                log.exception("closing %r", self.obj)


class FdEntry:
    """One slot of a process's descriptor table: the shared object plus per-descriptor
    metadata (for instance the agent's placeholder identity or close-on-exec)."""

    __slots__ = ("shared", "meta")

    def __init__(self, shared: Shared, meta: dict | None = None):
        self.shared = shared
        self.meta = meta or {}

    @property
    def obj(self):
        return self.shared.obj


class ProcessState:
    """What the shadow remembers about one agent process.

    `fds` is keyed by the descriptor number the program sees, so that numbering is the
    agent's business and survives exec; `data` is free per-process state for shadow actions
    (current directory, counters...).  Both are copied at fork: descriptors share their
    Shared objects (and so, e.g., the file offset of the shadow's real descriptor)."""

    def __init__(self, key: str, pid: int = 0, platform: str = "", parent: str | None = None,
                 max_fds: int | None = None):
        self.key = key
        self.pid = pid
        self.platform = platform
        self.parent = parent
        self.max_fds = max_fds        # descriptors this process may hold (None: no limit)
        self.fds: dict[int, FdEntry] = {}
        self.data: dict[str, Any] = {}
        self.lock = threading.RLock()
        self.attached = 0
        self.detached_at: float | None = time.monotonic()

    # -- descriptor table ------------------------------------------------------------------------

    def install(self, fd: int, obj, closer: Callable[[Any], None] | None = None, **meta) -> FdEntry:
        """Put obj (or an existing Shared) at descriptor fd, closing what was there."""
        shared = obj if isinstance(obj, Shared) else Shared(obj, closer)
        with self.lock:
            if self.max_fds is not None and fd not in self.fds and len(self.fds) >= self.max_fds:
                if shared.refs == 0 and shared.closer is not None:
                    shared.closer(shared.obj)     # opened for this entry: not kept, not leaked
                raise OSError(errno.EMFILE, f"this process holds {len(self.fds)} descriptors in the shadow")
            entry = FdEntry(shared.incref(), meta)
            old = self.fds.get(fd)
            self.fds[fd] = entry
        if old is not None:
            old.shared.decref()
        return entry

    def entry(self, fd: int) -> FdEntry:
        e = self.fds.get(fd)
        if e is None:
            raise OSError(errno.EBADF, f"descriptor {fd} is not open in the shadow")
        return e

    def get(self, fd: int):
        return self.entry(fd).shared.obj

    def close(self, fd: int) -> None:
        with self.lock:
            e = self.fds.pop(fd, None)
        if e is None:
            raise OSError(errno.EBADF, f"descriptor {fd} is not open in the shadow")
        e.shared.decref()

    def dup(self, old: int, new: int, **meta) -> FdEntry:
        """new refers to the same open file as old (dup2 semantics)."""
        e = self.entry(old)
        if old == new:
            return e
        return self.install(new, e.shared, **(meta or dict(e.meta)))

    # -- lifetime --------------------------------------------------------------------------------

    def fork_copy(self, key: str) -> "ProcessState":
        """The state a child starts with: same descriptors sharing the same open files."""
        child = ProcessState(key, parent=self.key, platform=self.platform, max_fds=self.max_fds)
        with self.lock:
            for fd, e in self.fds.items():
                child.fds[fd] = FdEntry(e.shared.incref(), dict(e.meta))
            child.data = dict(self.data)
        return child

    def release(self) -> None:
        with self.lock:
            entries = list(self.fds.values())
            self.fds.clear()
        for e in entries:
            e.shared.decref()

    def __repr__(self):
        return f"<ProcessState {self.key} pid={self.pid} fds={sorted(self.fds)}>"


class CallContext:
    """Passed to every handler; one per connection (reused for each call).  peer_pid: the
    Unix-socket peer's pid (SO_PEERCRED) or None; private_fs: this connection's thread has a
    umask of its own (set_umask); umask: the one set last."""

    __slots__ = ("server", "process", "peer", "platform", "info", "peer_pid", "private_fs", "umask")

    def __init__(self, server, process: ProcessState, peer: str, platform: str, info: dict,
                 peer_pid: int | None = None, private_fs: bool = False):
        self.server = server
        self.process = process
        self.peer = peer
        self.platform = platform
        self.info = info
        self.peer_pid = peer_pid
        self.private_fs = private_fs
        self.umask = None

    def set_umask(self, mask: int) -> None:
        """The caller's umask for what this call creates (per thread: see creds)."""
        if not self.private_fs:
            raise OSError(errno.ENOTSUP, "no umask of its own for this connection")
        if mask != self.umask:
            creds.set_umask(mask)
            self.umask = mask

    def act_as_caller(self) -> None:
        """Take on the caller's current filesystem identity (a root shadow, local callers)."""
        self.server._act_as(self)


class _Refused(Exception):
    pass


# ------------------------------------------------------------------------------------------------
# the server

class ShadowServer:
    def __init__(self, dispatch: Mapping[int, Handler], *, spec_hash: str | None = None,
                 secret: bytes | str | None = None, max_frame: int = MAX_FRAME,
                 grace: float = 300.0, ticket_ttl: float = 60.0, max_connections: int = 1024,
                 max_fds_per_process: int | None = None, max_tickets_per_process: int = 64,
                 detached_fd_budget: int | None = None, max_pending_bytes: int = 256 << 20,
                 frame_timeout: float = 60.0,
                 name: str = "shadow", loop: str | None = None):
        """spec_hash: agents must present the same (None accepts any: tests, tools).
        secret: required for TCP; when set, Unix-socket clients must authenticate too.
        grace: how long a detached process's state is kept when we cannot tell whether the
        process still exists (a remote agent host).
        Limits, so that one client cannot starve the others (defaults from the shadow's own
        descriptor limit): max_fds_per_process descriptors per agent process (EMFILE beyond);
        max_tickets_per_process fork tickets waiting for their child (the oldest go);
        detached_fd_budget descriptors held by processes that are gone or exec-ing (beyond it,
        the states detached longest are released before their grace period ends);
        max_pending_bytes of big frames arriving at once in this process (a frame waits up to
        frame_timeout for room, then must arrive within frame_timeout, or the connection
        closes).
        loop: "c", "python" or "auto" (default: BYPASS_SHADOW_LOOP, else auto): which
        per-connection call loop answers the calls (see bypass.rpc.c_loop)."""
        self.dispatch: dict[int, Handler] = dict(dispatch)
        self.dispatch.update({CALL_PING: _ping, CALL_FORK: self._fork_ticket,
                              CALL_FDS: _list_fds, CALL_CLOSE_FDS: _close_fds})
        self.spec_hash = spec_hash
        self.secret = secret.encode() if isinstance(secret, str) else secret
        self.max_frame = max_frame
        self.grace = grace
        self.ticket_ttl = ticket_ttl
        self.max_connections = max_connections
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        nofile = nofile if nofile != resource.RLIM_INFINITY else 1 << 20
        self.max_fds_per_process = max_fds_per_process or max(64, nofile // 8)
        self.max_tickets_per_process = max_tickets_per_process
        self.detached_fd_budget = detached_fd_budget or max(64, nofile // 4)
        self.max_pending_bytes = max_pending_bytes
        self.frame_timeout = frame_timeout
        self.name = name
        self.processes: dict[str, ProcessState] = {}
        self.tickets: dict[int, tuple[ProcessState, float]] = {}
        self.lock = threading.Lock()
        self.address: str | None = None
        self._listener: socket.socket | None = None
        self._cleanup: list[Callable[[], None]] = []
        self._wake_r, self._wake_w = os.pipe()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._conns: set[socket.socket] = set()
        self._boot_id = boot_id()
        self.export = None        # an ExportRoot when file calls are confined (bypass.rpc.export)
        # A root shadow acts, per connection thread, as the agent process it serves (creds).
        self.as_caller = os.geteuid() == 0 and creds.of_process(os.getpid()) is not None
        self._c_loop = c_loop(loop)
        # the C loop performs the actions a spec declares native itself (False: never; tests
        # and benchmarks compare the two)
        self.native_actions = True

    # -- listening ---------------------------------------------------------------------------------

    def listen(self, address: str | None = None) -> str:
        """Bind and listen; returns the address agents should use (BYPASS_SHADOW).
        None: a Unix socket in a new private (0700) directory."""
        if address is None:
            d = tempfile.mkdtemp(prefix="bypass-shadow-")       # created 0700
            self._cleanup.append(lambda: os.rmdir(d))
            if self.as_caller:
                # A process of the run that became another user must still reach us; it
                # gets that user's rights only (see _handshake, creds).
                os.chmod(d, 0o711)
            address = f"unix:{d}/shadow.sock"
        kind, where = parse_address(address)
        if kind == "unix":
            self._listener = self._listen_unix(where)
            self.address = f"unix:{where}"
        else:
            if not self.secret:
                raise ValueError("a TCP shadow needs a shared secret (BYPASS_SHADOW_SECRET)")
            host, port = where
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            s = socket.socket(family, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
            s.listen(128)
            self._listener = s
            h, p = s.getsockname()[:2]
            self.address = f"tcp:{h}:{p}" if family == socket.AF_INET else f"tcp:[{h}]:{p}"
        self._listener.setblocking(False)
        log.info("%s listening on %s", self.name, self.address)
        return self.address

    def _listen_unix(self, path: str) -> socket.socket:
        d = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(d):
            os.makedirs(d, mode=0o700)
            self._cleanup.append(lambda: os.rmdir(d))
        mode = os.stat(d).st_mode
        if mode & 0o077 and not (self.as_caller and mode & 0o066 == 0):
            log.warning("%s: directory %s is accessible to other users (mode %o); any of them "
                        "can call the shadow", self.name, d, stat.S_IMODE(mode))
        if os.path.exists(path):
            # A stale socket from a dead shadow may be replaced; a live one may not.
            probe = socket.socket(socket.AF_UNIX)
            try:
                probe.connect(path)
                raise OSError(errno.EADDRINUSE, f"a shadow is already listening on {path}")
            except (ConnectionRefusedError, FileNotFoundError):
                os.unlink(path)
            finally:
                probe.close()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # the socket file itself: owner only (anyone, for a root shadow acting as its callers)
        old = os.umask(0o111 if self.as_caller else 0o177)
        try:
            s.bind(path)
        finally:
            os.umask(old)
        s.listen(128)
        self._cleanup.insert(0, lambda: os.unlink(path))
        # the remote agent's current-directory marker for this shadow's run (agents/remote)
        self._cleanup.insert(1, lambda: os.rmdir(path + ".cwd"))
        return s

    # -- serving ---------------------------------------------------------------------------------

    def start(self) -> "ShadowServer":
        """Serve in a background thread (listening first on a private socket if needed)."""
        if self._listener is None:
            self.listen()
        self._thread = threading.Thread(target=self.serve_forever, name=f"{self.name}-accept",
                                        daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        if self._listener is None:
            self.listen()
        sel = selectors.DefaultSelector()
        sel.register(self._listener, selectors.EVENT_READ)
        sel.register(self._wake_r, selectors.EVENT_READ)
        try:
            while not self._closing:
                for key, _ in sel.select(timeout=1.0):
                    if key.fileobj is self._listener:
                        self._accept()
                self._reap()
        finally:
            sel.close()

    def _accept(self) -> None:
        try:
            sock, addr = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:       # EMFILE and friends: log, keep serving the others
            log.error("%s: accept failed: %s", self.name, e)
            time.sleep(0.05)
            return
        sock.setblocking(True)
        _big_send_buffer(sock)
        peer_ids = None
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            peer = f"tcp:{addr[0]}:{addr[1]}"
        else:
            peer_ids = _unix_peer(sock)
            peer = f"unix:pid {peer_ids[0]} uid {peer_ids[1]}" if peer_ids else "unix:?"
        with self.lock:
            if len(self._conns) >= self.max_connections:
                log.warning("%s: too many connections, refusing %s", self.name, peer)
                sock.close()
                return
            self._conns.add(sock)
        threading.Thread(target=self._serve, args=(sock, peer, peer_ids), name=f"{self.name} {peer}",
                         daemon=True).start()

    def _serve(self, sock: socket.socket, peer: str, peer_ids: tuple[int, int] | None = None) -> None:
        process = None
        try:
            sock.settimeout(HANDSHAKE_TIMEOUT)
            reader = FrameReader(sock, self.max_frame, self.max_pending_bytes, self.frame_timeout)
            packer = new_packer()
            ctx = self._handshake(sock, reader, packer, peer, peer_ids)
            process = ctx.process
            sock.settimeout(None)
            self._loop(sock, reader, packer, ctx)
        except EOFError:
            pass
        except _Refused as e:
            log.warning("%s: refused %s: %s", self.name, peer, e)
        except ProtocolError as e:
            log.warning("%s: closing connection %s: %s", self.name, peer, e)
        except socket.timeout:
            log.warning("%s: closing connection %s: handshake timed out", self.name, peer)
        except OSError as e:
            if not self._closing:
                log.info("%s: connection %s ended: %s", self.name, peer, e)
        except Exception:
            log.exception("%s: connection %s failed", self.name, peer)
        finally:
            with self.lock:
                self._conns.discard(sock)
            sock.close()
            if process is not None:
                self._detach(process)

    def _act_as(self, ctx: CallContext) -> None:
        if not self.as_caller or ctx.peer_pid is None:
            return
        ids = creds.of_process(ctx.peer_pid)
        if ids is None:
            raise OSError(errno.EACCES, f"cannot read the credentials of process {ctx.peer_pid}")
        creds.act_as(*ids)

    def _handshake(self, sock, reader: FrameReader, packer, peer: str,
                   peer_ids: tuple[int, int] | None = None) -> CallContext:
        snonce = auth.nonce()
        send_frame(sock, packer, [SHADOW_MAGIC, PROTOCOL_VERSION, self.spec_hash or "",
                                  self.secret is not None, snonce])
        hello = reader.read(MAX_HANDSHAKE_FRAME)
        if not (isinstance(hello, list) and len(hello) == 6 and hello[0] == AGENT_MAGIC):
            raise ProtocolError("not a Bypass agent hello")
        _, version, spec, info, cnonce, mac = hello
        if not (isinstance(spec, str) and isinstance(info, dict) and isinstance(cnonce, bytes)
                and len(cnonce) == NONCE_SIZE):
            raise ProtocolError("malformed hello")

        def refuse(reason: str):
            try:
                send_frame(sock, packer, [REFUSED, reason])
            finally:
                raise _Refused(reason)

        if self.secret is not None and not auth.check(
                auth.agent_proof(self.secret, snonce, cnonce, spec), mac):
            refuse("authentication failed")
        if version != PROTOCOL_VERSION:
            refuse(f"protocol version {version!r} not supported (shadow speaks {PROTOCOL_VERSION})")
        if self.spec_hash is not None and spec != self.spec_hash:
            refuse(f"agent and shadow come from different specs ({spec[:12]} vs "
                   f"{self.spec_hash[:12]})")
        key, pid = info.get("key"), info.get("pid")
        if not (isinstance(key, str) and 0 < len(key) <= 200 and isinstance(pid, int)):
            raise ProtocolError("hello lacks a process key and pid")
        platform = info.get("platform") if isinstance(info.get("platform"), str) else "?"
        if self.as_caller and peer_ids is not None and peer_ids[1] != os.geteuid():
            # Another user reaches our (world-connectable) socket only as a process of the run
            # that changed its uid: one of ours that can become us again (real or saved uid),
            # or a child of a process we know.
            with self.lock:
                ours = key in self.processes or self._known_ancestor(
                    info.get("parent") if isinstance(info.get("parent"), str) else None) is not None
            if not ours and os.geteuid() not in creds.uids(peer_ids[0])[0:3:2]:
                refuse("not a process of this run")
        ctx = CallContext(self, None, peer, platform, info, peer_ids[0] if peer_ids else None,
                          creds.private_fs())
        try:
            self._act_as(ctx)
        except OSError as e:
            refuse(f"cannot act as the caller: {e}")
        process = ctx.process = self._attach(info, key, pid, platform)
        proof = (auth.shadow_proof(self.secret, snonce, cnonce, spec)
                 if self.secret is not None else None)
        send_frame(sock, packer, [WELCOME, key, proof,
                                  {"platform": local_platform(), "pid": os.getpid(),
                                   "max_frame": self.max_frame, "fds": len(process.fds)}])
        log.debug("%s: %s is process %s (%s)", self.name, peer, key, platform)
        return ctx

    def _loop(self, sock, reader: FrameReader, packer, ctx: CallContext) -> None:
        """Serve calls until the connection ends (EOFError) or breaks the protocol."""
        if self._c_loop is None:
            return self._python_loop(sock, reader, packer, ctx)
        pending, reader.pending = reader.pending, b""
        self._c_loop.serve(
            sock.fileno(), ctx, self.dispatch, _no_such_call,
            lambda call, exc: self._exception_reply(ctx, call, exc),
            lambda seq, call, result: self._pack_reply(packer, seq, call, result),
            FileRegion, ProtocolError, self.max_frame, _SMALL, pending, self.max_pending_bytes,
            self.frame_timeout, self._native())

    def _native(self) -> tuple | None:
        """What the C loop needs to perform the native actions of this dispatch table itself
        (c/shadow_loop.c), or None.  Taken per connection, from the handlers as they are now
        (one replaced by another, a wrapper, is not native any more).  A path lookup is
        native only in an export root that the kernel resolves (openat2) with no policy that
        renames files (the remote agent's _full)."""
        if not self.native_actions:
            return None
        from .export import ExportRoot
        export, rootfd = self.export, -1
        if type(export) is ExportRoot and export.kernel_resolve and getattr(self, "policy", None) is None:
            rootfd = export.rootfd
        calls = []
        for call, handler in self.dispatch.items():
            native = getattr(handler, "native", None)
            if native is None or len(calls) == _NATIVE_MAX:
                continue
            kind, file_type = native
            if kind in _NATIVE_KINDS and (kind != "stat" or rootfd >= 0):
                calls.append((call, _NATIVE_KINDS[kind], file_type))
        if not calls:
            return None
        return (tuple(calls), rootfd, export is not None and getattr(export, "alias", None) is not None,
                _STAT_ORDER, _FILE_TYPES)

    def _exception_reply(self, ctx: CallContext, call: int, exc: Exception) -> list:
        """[status, value] for a handler that raised: its errno, or a failure (logged)."""
        if isinstance(exc, OSError):
            return [STATUS_ERRNO, errno_to_neutral(exc.errno)]
        log.error("%s: call %d from %s failed", self.name, call, ctx.peer, exc_info=exc)
        return [STATUS_FAILURE, f"shadow: {exc.__class__.__name__}: {exc}"]

    def _pack_reply(self, packer, seq: int, call: int, result) -> bytes:
        """The body of [seq, STATUS_OK, result], or of a failure when msgpack cannot carry it."""
        try:
            return packer.pack([seq, STATUS_OK, result])
        except Exception as e:          # msgpack clears its buffer after a failed pack
            log.error("%s: call %d returned an unsendable result: %s", self.name, call, e)
            return new_packer().pack([seq, STATUS_FAILURE, f"shadow: bad result: {e}"])

    def _python_loop(self, sock, reader: FrameReader, packer, ctx: CallContext) -> None:
        """The same loop in Python: the fallback when the C loop cannot be built, and the
        reference for its behaviour.  The common case (a small request arriving whole in one
        recv) is inlined with everything bound to locals; anything else goes through
        FrameReader."""
        get = self.dispatch.get
        recv, send = sock.recv, sock.send
        header_of, header = _HEADER.unpack_from, _HEADER.pack
        u = reader.unpacker
        feed, unpack, tell = u.feed, u.unpack, u.tell
        small = _SMALL
        while True:
            if reader.pending:
                msg = reader.read()
            else:
                data = recv(_RECV_SIZE)
                n = len(data) - 4
                if 0 <= n <= small and header_of(data)[0] == n:
                    feed(data[4:])
                    reader.fed += n
                    try:
                        msg = unpack()
                    except Exception as e:
                        raise ProtocolError(f"undecodable frame: {e.__class__.__name__}: {e}") \
                            from None
                    if tell() != reader.fed:
                        raise ProtocolError("frame holds more than one value")
                elif not data:
                    raise EOFError
                else:
                    reader.pending = data
                    msg = reader.read()
            if type(msg) is not list or len(msg) < 2:
                raise ProtocolError("request is not an array [call, seq, args...]")
            call = msg[0]
            seq = msg[1]
            if type(call) is not int or type(seq) is not int:
                raise ProtocolError("request call number and sequence must be integers")
            try:
                result = get(call, _no_such_call)(ctx, *msg[2:])
            except Exception as e:
                status, value = self._exception_reply(ctx, call, e)
                body = packer.pack([seq, status, value])
            else:
                if type(result) is list and len(result) == 2 and type(result[0]) is int:
                    data = result[1]
                    if type(data) is FileRegion:
                        # [n, part of a file] (a read): from the page cache to the socket
                        _send_file_reply(sock, packer, seq, result[0], data)
                        continue
                    if type(data) in _BUFFERS and len(data) > small:
                        # [n, big buffer]: sent as it is, after a hand-made envelope
                        _send_buffer_reply(sock, packer, seq, result[0], data)
                        continue
                body = self._pack_reply(packer, seq, call, result)
            if len(body) <= 4096:
                frame = header(len(body)) + body
                sent = send(frame)
                if sent != len(frame):
                    sock.sendall(memoryview(frame)[sent:])
            else:
                send_frame_body(sock, body)

    # -- process states --------------------------------------------------------------------------

    def _attach(self, info: dict, key: str, pid: int, platform: str) -> ProcessState:
        parent = info.get("parent") if isinstance(info.get("parent"), str) else None
        ticket = info.get("ticket") if type(info.get("ticket")) is int else None
        with self.lock:
            process = self.processes.get(key)
            if process is None:
                snap = self.tickets.pop(ticket, None) if ticket else None
                if snap is not None:
                    process = snap[0]          # a snapshot taken by the parent at fork
                    process.key = key
                elif (known := self._known_ancestor(parent)) is not None:
                    # No ticket (vfork, posix_spawn, a parent not connected at fork time):
                    # the table, as it is now, of the parent or of the nearest ancestor
                    # that talked to us (sh -c 'x=$(mkdir d | cat)': the subshell never did).
                    process = self.processes[known].fork_copy(key)
                else:
                    process = ProcessState(key, max_fds=self.max_fds_per_process)
                process.parent = parent
                self.processes[key] = process
            process.pid = pid
            process.platform = platform
            process.attached += 1
            process.detached_at = None
        return process

    def _known_ancestor(self, parent: str | None, depth: int = 64) -> str | None:
        """parent if we know it, else the nearest known ancestor found through /proc (same
        host only: a remote agent host's processes cannot be looked up).  Under self.lock."""
        if parent is None or parent in self.processes:
            return parent
        boot, _, rest = parent.partition(":")
        pid, _, start = rest.partition(":")
        if boot != self._boot_id or not pid.isdigit():
            return None
        pid = int(pid)
        for _ in range(depth):
            up = process_parent(pid)
            if up is None or up[1] != start or up[0] <= 1:
                return None          # gone (or the pid was reused): its ancestry is unknown
            pid = up[0]
            start = process_start_time(pid)
            key = f"{boot}:{pid}:{start}"
            if key in self.processes:
                return key
        return None

    def _detach(self, process: ProcessState) -> None:
        with self.lock:
            process.attached -= 1
            if process.attached > 0:
                return
            process.detached_at = time.monotonic()
            if process.fds or process.data:
                return      # keep it: the process may be exec-ing and will be back
            if self.processes.get(process.key) is process:
                del self.processes[process.key]

    def _process_gone(self, process: ProcessState) -> bool:
        """True when we can tell the process no longer exists (same host, pid gone/reused)."""
        boot, _, rest = process.key.partition(":")
        pid, _, start = rest.partition(":")
        if boot != self._boot_id or not pid.isdigit():
            return False
        return process_start_time(int(pid)) != start

    def _reap(self) -> None:
        """Drop the state of processes that are gone, and expired fork tickets."""
        now = time.monotonic()
        doomed = []
        with self.lock:
            for key, p in list(self.processes.items()):
                if p.attached == 0 and p.detached_at is not None and (
                        now - p.detached_at > self.grace or self._process_gone(p)):
                    doomed.append(self.processes.pop(key))
            for t, (snap, born) in list(self.tickets.items()):
                if now - born > self.ticket_ttl:
                    doomed.append(self.tickets.pop(t)[0])
            # Descriptors kept for processes that may come back (exec) are bounded too.
            waiting = sorted((p for p in self.processes.values() if p.attached == 0 and p.fds),
                             key=lambda p: p.detached_at or 0)
            held = sum(len(p.fds) for p in waiting)
            for p in waiting:
                if held <= self.detached_fd_budget:
                    break
                held -= len(p.fds)
                doomed.append(self.processes.pop(p.key))
        for p in doomed:
            log.debug("%s: releasing state of %s", self.name, p.key)
            p.release()

    def _fork_ticket(self, ctx: CallContext) -> int:
        ticket = secrets.randbits(62) or 1
        snap = ctx.process.fork_copy("(fork ticket)")
        doomed = []
        with self.lock:
            mine = [t for t, (s, _) in self.tickets.items() if s.parent == ctx.process.key]
            while len(mine) >= self.max_tickets_per_process:
                doomed.append(self.tickets.pop(mine.pop(0))[0])     # (dicts keep their order)
            self.tickets[ticket] = (snap, time.monotonic())
        for p in doomed:
            p.release()
        return ticket

    # -- shutdown ----------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop accepting, close every connection, release all state."""
        if self._closing:
            return
        self._closing = True
        os.write(self._wake_w, b"x")
        if self._thread is not None:
            self._thread.join(5)
        if self._listener is not None:
            self._listener.close()
        with self.lock:
            conns = list(self._conns)
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for fn in self._cleanup:
            try:
                fn()
            except OSError:
                pass
        with self.lock:
            states = list(self.processes.values()) + [s for s, _ in self.tickets.values()]
            self.processes.clear()
            self.tickets.clear()
        for p in states:
            p.release()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# -- control calls ---------------------------------------------------------------------------------

def _ping(ctx: CallContext, *args):
    return list(args)


def _list_fds(ctx: CallContext):
    with ctx.process.lock:
        return [[fd, e.meta] for fd, e in sorted(ctx.process.fds.items())]


def _close_fds(ctx: CallContext, fds):
    if not isinstance(fds, list):
        raise OSError(errno.EINVAL, "close_fds wants a list")
    for fd in fds:
        try:
            ctx.process.close(fd)
        except (OSError, TypeError):
            pass
    return None


_BUFFERS = (bytes, bytearray, memoryview)


class FileRegion:
    """A handler result standing for `count` bytes of file descriptor `fd` at `offset`: the
    server sends them with sendfile(2), never copying them through Python.  The bytes must
    exist (count within the file); should the file shrink meanwhile, the connection is
    dropped rather than sending a frame with the wrong length."""

    __slots__ = ("fd", "offset", "count")

    def __init__(self, fd: int, offset: int, count: int):
        self.fd, self.offset, self.count = fd, offset, count

    def __len__(self):
        return self.count


def _envelope(packer, seq: int, n: int, length: int) -> bytes:
    """Frame header and msgpack of [seq, STATUS_OK, [n, <bin of length bytes>]] up to the
    payload: array headers and integers from the packer, the bin header by hand (bin32,
    which every msgpack reader accepts for any length)."""
    prefix = (b"\x93" + packer.pack(seq) + b"\x00" + b"\x92" + packer.pack(n)
              + b"\xc6" + length.to_bytes(4, "big"))
    return _HEADER.pack(len(prefix) + length) + prefix


def _send_file_reply(sock, packer, seq: int, n: int, region: FileRegion) -> None:
    sock.sendall(_envelope(packer, seq, n, region.count))
    offset, left = region.offset, region.count
    out = sock.fileno()
    while left > 0:
        k = os.sendfile(out, region.fd, offset, left)
        if k == 0:
            raise ProtocolError("file shrank while being sent")
        offset += k
        left -= k


def _send_buffer_reply(sock, packer, seq: int, n: int, data) -> None:
    """The frame of [seq, STATUS_OK, [n, <bin data>]] without copying data into a packer."""
    data = memoryview(data).cast("B")
    head = _envelope(packer, seq, n, len(data))
    sent = sock.sendmsg([head, data])
    if sent < len(head):
        sock.sendall(head[sent:])
        sent = len(head)
    if sent - len(head) < len(data):
        sock.sendall(data[sent - len(head):])


_SNDBUF = 4 << 20
_SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)


def _big_send_buffer(sock: socket.socket) -> None:
    """Room for a whole big reply in the socket: the shadow hands a 4 MiB read-ahead block to
    the kernel in one go instead of ping-ponging ~200 KiB at a time with the agent.  Beyond
    net.core.wmem_max only root may go (SO_SNDBUFFORCE); otherwise take what we get."""
    for opt in (_SO_SNDBUFFORCE, socket.SO_SNDBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, _SNDBUF)
            return
        except OSError:
            continue


def _unix_peer(sock: socket.socket) -> tuple[int, int] | None:
    """(pid, uid) of a Unix-socket peer (SO_PEERCRED), or None."""
    try:
        import struct
        ids = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, _ = struct.unpack("3i", ids)
        return pid, uid
    except (OSError, AttributeError):
        return None
