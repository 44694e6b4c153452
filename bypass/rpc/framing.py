"""Length-prefixed msgpack frames over a stream socket.

A frame is a 4-byte big-endian body length followed by the msgpack body.  The reader keeps
one receive buffer per connection and usually gets a whole small frame in one recv; the
writer sends header and body with one sendmsg, without concatenating.
"""
from __future__ import annotations

import socket
import struct
import threading
import time

import msgpack

from .protocol import HEADER_SIZE, MAX_FRAME, ProtocolError

# Strings carry C bytes as-is (paths need not be UTF-8): decode with surrogateescape so
# os functions get the original bytes back, and encode the same way.
UNPACK_OPTS = dict(raw=False, strict_map_key=False, unicode_errors="surrogateescape")


def new_packer() -> msgpack.Packer:
    return msgpack.Packer(use_bin_type=True, unicode_errors="surrogateescape")


_HEADER = struct.Struct(">I")
_SMALL = 1 << 16          # frames up to this size go through the persistent Unpacker
_RECV_SIZE = 1 << 16          # under malloc's mmap threshold: a recv buffer costs no mmap/munmap


class _InFlight:
    """Bytes of big frames being received by all connections of this process (the C loop
    keeps the same count for its own): a client that sends most of a frame and stops must not
    hold memory without bound or for ever."""

    def __init__(self):
        self.used = 0
        self.cond = threading.Condition()

    def take(self, n: int, budget: int, timeout: float) -> None:
        with self.cond:
            if not self.cond.wait_for(lambda: self.used == 0 or self.used + n <= budget, timeout):
                raise ProtocolError(f"{self.used} bytes of frames already arriving: no room for {n} more")
            self.used += n

    def give(self, n: int) -> None:
        with self.cond:
            self.used -= n
            self.cond.notify_all()


_IN_FLIGHT = _InFlight()


class FrameReader:
    """Reads frames from one socket.  Raises EOFError at a clean end of stream (between
    frames), ProtocolError on an oversize, truncated or undecodable frame.

    Fast path (this is most of a shadow's per-call cost): one recv usually brings a whole
    small frame; its body goes through one persistent msgpack.Unpacker (much cheaper per
    message than msgpack.unpackb), and Unpacker.tell() proves the body held exactly one
    value.  Big frames are assembled from several recvs and decoded with unpackb."""

    def __init__(self, sock: socket.socket, max_frame: int = MAX_FRAME, budget: int = 0,
                 frame_timeout: float = 0):
        """budget: bytes of big frames the process receives at once (0: any); frame_timeout:
        seconds a big frame may wait for room and then take to arrive (0: no limit)."""
        self.sock = sock
        self.recv = sock.recv
        self.max_frame = max_frame
        self.budget = budget
        self.frame_timeout = frame_timeout
        self.pending = b""          # received bytes not yet consumed
        self.unpacker = msgpack.Unpacker(max_buffer_size=_SMALL, **UNPACK_OPTS)
        self.fed = 0                # bytes fed to the unpacker so far

    def _more(self, have: int, want: int) -> bytes:
        chunk = self.recv(max(_RECV_SIZE, min(want - have, 1 << 20)))
        if not chunk:
            if have == 0:
                raise EOFError
            raise ProtocolError("connection closed inside a frame")
        return chunk

    def read_body(self, max_frame: int | None = None):
        """The next frame's body (bytes or memoryview)."""
        limit = self.max_frame if max_frame is None else max_frame
        buf = self.pending
        while len(buf) < HEADER_SIZE:
            buf += self._more(len(buf), HEADER_SIZE)
        n = _HEADER.unpack_from(buf)[0]
        if n > limit:
            raise ProtocolError(f"frame of {n} bytes exceeds the limit of {limit}")
        total = HEADER_SIZE + n
        if len(buf) < total:
            big = total > _RECV_SIZE and self.budget > 0
            if big:
                _IN_FLIGHT.take(n, self.budget, self.frame_timeout or 60)
            timeout = self.sock.gettimeout()
            deadline = time.monotonic() + self.frame_timeout if big and self.frame_timeout else None
            try:
                parts, have = [buf], len(buf)
                while have < total:
                    if deadline is not None:
                        self.sock.settimeout(max(0.001, deadline - time.monotonic()))
                    try:
                        chunk = self._more(have, total)
                    except socket.timeout:
                        raise ProtocolError(f"a frame of {total} bytes did not arrive within "
                                            f"{self.frame_timeout:g} s") from None
                    parts.append(chunk)
                    have += len(chunk)
                buf = b"".join(parts)
            finally:
                if big:
                    _IN_FLIGHT.give(n)
                    self.sock.settimeout(timeout)
        if len(buf) == total:
            self.pending = b""
            return memoryview(buf)[HEADER_SIZE:] if n > _SMALL else buf[HEADER_SIZE:]
        self.pending = buf[total:]
        return buf[HEADER_SIZE:total]

    def read(self, max_frame: int | None = None):
        """The next frame, decoded."""
        body = self.read_body(max_frame)
        try:
            if len(body) > _SMALL:
                return msgpack.unpackb(body, **UNPACK_OPTS)
            u = self.unpacker
            u.feed(body)
            self.fed += len(body)
            msg = u.unpack()
        except Exception as e:     # any decoding failure is the peer's fault
            raise ProtocolError(f"undecodable frame: {e.__class__.__name__}: {e}") from None
        if u.tell() != self.fed:
            raise ProtocolError("frame holds more than one value")
        return msg


def send_frame(sock: socket.socket, packer: msgpack.Packer, obj) -> None:
    body = packer.pack(obj)
    if len(body) <= 4096:
        sock.sendall(_HEADER.pack(len(body)) + body)   # one small copy beats a second iovec
    else:
        send_frame_body(sock, body)


def send_frame_body(sock: socket.socket, body: bytes) -> None:
    """Send a frame around an already packed body, without copying the body."""
    header = _HEADER.pack(len(body))
    sent = sock.sendmsg([header, body])
    if sent < HEADER_SIZE:
        sock.sendall(header[sent:])
        sent = HEADER_SIZE
    if sent - HEADER_SIZE < len(body):
        sock.sendall(memoryview(body)[sent - HEADER_SIZE:])
