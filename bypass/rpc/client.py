"""A small synchronous Python client of the shadow (for tests, tools and benchmarks).

The agent's real client is C (c/rpc_client.c); this one speaks the same protocol.
"""
from __future__ import annotations

import os
import socket

from . import auth
from .framing import FrameReader, new_packer, send_frame
from .neutral import errno_to_local
from .protocol import (
    AGENT_MAGIC, MAX_FRAME, PROTOCOL_VERSION, REFUSED, SHADOW_MAGIC, STATUS_ERRNO, STATUS_OK,
    WELCOME, ProtocolError, local_platform, parse_address, process_key,
)


class ShadowRefused(ConnectionError):
    pass


class ShadowFailure(Exception):
    """The shadow reported a failure of its own (STATUS_FAILURE)."""


def connect_socket(address: str, timeout: float = 5.0) -> socket.socket:
    kind, where = parse_address(address)
    if kind == "unix":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    else:
        s = socket.socket(socket.AF_INET6 if ":" in where[0] else socket.AF_INET)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.settimeout(timeout)
    try:
        s.connect(where)
    except BaseException:
        s.close()
        raise
    return s


class ShadowClient:
    def __init__(self, address: str, *, secret: bytes | str | None = None, spec_hash: str = "",
                 key: str | None = None, parent: str | None = None, ticket: int | None = None,
                 timeout: float = 10.0):
        self.sock = connect_socket(address, timeout)
        self.reader = FrameReader(self.sock, MAX_FRAME)
        self.packer = new_packer()
        self.seq = 0
        secret = secret.encode() if isinstance(secret, str) else secret
        greeting = self.reader.read()
        if not (isinstance(greeting, list) and len(greeting) == 5 and greeting[0] == SHADOW_MAGIC):
            raise ProtocolError(f"not a Bypass shadow: {greeting!r}")
        _, version, _, auth_required, snonce = greeting
        cnonce = auth.nonce()
        mac = auth.agent_proof(secret, snonce, cnonce, spec_hash) if secret else None
        self.key = key or process_key()
        info = {"platform": local_platform(), "pid": os.getpid(), "ppid": os.getppid(),
                "key": self.key, "parent": parent, "ticket": ticket, "first": True}
        send_frame(self.sock, self.packer,
                   [AGENT_MAGIC, PROTOCOL_VERSION, spec_hash, info, cnonce, mac])
        reply = self.reader.read()
        if isinstance(reply, list) and reply and reply[0] == REFUSED:
            self.close()
            raise ShadowRefused(reply[1] if len(reply) > 1 else "refused")
        if not (isinstance(reply, list) and len(reply) == 4 and reply[0] == WELCOME):
            raise ProtocolError(f"bad welcome {reply!r}")
        if secret and not auth.check(auth.shadow_proof(secret, snonce, cnonce, spec_hash), reply[2]):
            self.close()
            raise ShadowRefused("the shadow could not prove it knows the secret")
        self.welcome = reply[3]

    def call(self, call_no: int, *args):
        """One synchronous call: the result, or OSError with the local errno."""
        self.seq += 1
        send_frame(self.sock, self.packer, [call_no, self.seq, *args])
        reply = self.reader.read()
        seq, status, value = reply[0], reply[1], reply[2]
        if seq != self.seq:
            raise ProtocolError(f"reply {seq} to request {self.seq}")
        if status == STATUS_OK:
            return value
        if status == STATUS_ERRNO:
            e = errno_to_local(value)
            raise OSError(e, os.strerror(e))
        raise ShadowFailure(value)

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
