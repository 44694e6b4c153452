"""Length-prefixed msgpack frames over a stream socket.

A frame is a 4-byte big-endian body length followed by the msgpack body.  The reader keeps
one receive buffer per connection and usually gets a whole small frame in one recv; the
writer sends header and body with one sendmsg, without concatenating.
"""
from __future__ import annotations

import socket

import msgpack

from .protocol import HEADER_SIZE, MAX_FRAME, ProtocolError

# Strings carry C bytes as-is (paths need not be UTF-8): decode with surrogateescape so
# os functions get the original bytes back, and encode the same way.
UNPACK_OPTS = dict(raw=False, strict_map_key=False, unicode_errors="surrogateescape")


def new_packer() -> msgpack.Packer:
    return msgpack.Packer(use_bin_type=True, unicode_errors="surrogateescape")


class FrameReader:
    """Reads frames from one socket.  Raises EOFError at a clean end of stream (between
    frames), ProtocolError on an oversize or undecodable frame."""

    def __init__(self, sock: socket.socket, max_frame: int = MAX_FRAME, initial: int = 1 << 16):
        self.sock = sock
        self.max_frame = max_frame
        self.buf = bytearray(initial)
        self.view = memoryview(self.buf)
        self.start = 0    # first unread byte
        self.end = 0      # end of received data

    def _fill(self, need: int) -> None:
        """Receive until at least `need` unread bytes are buffered."""
        if self.start + need > len(self.buf):
            if need > len(self.buf):
                # Grow (bounded by max_frame via the caller's check) and keep unread bytes.
                new = bytearray(max(need, 2 * len(self.buf)))
                new[: self.end - self.start] = self.view[self.start:self.end]
                self.view.release()
                self.buf, self.view = new, memoryview(new)
            else:
                self.buf[: self.end - self.start] = self.view[self.start:self.end]
            self.end -= self.start
            self.start = 0
        while self.end - self.start < need:
            n = self.sock.recv_into(self.view[self.end:])
            if n == 0:
                if self.end == self.start:
                    raise EOFError
                raise ProtocolError("connection closed inside a frame")
            self.end += n

    def read_body(self, max_frame: int | None = None) -> memoryview:
        """The next frame's body (valid until the next read)."""
        limit = self.max_frame if max_frame is None else max_frame
        if self.end - self.start < HEADER_SIZE:
            self._fill(HEADER_SIZE)
        n = int.from_bytes(self.view[self.start:self.start + HEADER_SIZE], "big")
        if n > limit:
            raise ProtocolError(f"frame of {n} bytes exceeds the limit of {limit}")
        if self.end - self.start < HEADER_SIZE + n:
            self._fill(HEADER_SIZE + n)
        body = self.view[self.start + HEADER_SIZE:self.start + HEADER_SIZE + n]
        self.start += HEADER_SIZE + n
        if self.start == self.end:
            self.start = self.end = 0
        return body

    def read(self, max_frame: int | None = None):
        """The next frame, decoded."""
        body = self.read_body(max_frame)
        try:
            return msgpack.unpackb(body, **UNPACK_OPTS)
        except Exception as e:     # any decoding failure is the peer's fault
            raise ProtocolError(f"undecodable frame: {e.__class__.__name__}: {e}") from None


def send_frame(sock: socket.socket, packer: msgpack.Packer, obj) -> None:
    body = packer.pack(obj)
    header = len(body).to_bytes(HEADER_SIZE, "big")
    if len(body) <= 4096:
        sock.sendall(header + body)       # one small copy beats a second iovec
        return
    sent = sock.sendmsg([header, body])
    if sent < HEADER_SIZE + len(body):
        data = memoryview(header + body) if sent < HEADER_SIZE else memoryview(body)[sent - HEADER_SIZE:]
        if sent < HEADER_SIZE:
            data = data[sent:]
        sock.sendall(data)
