"""Constants of the Bypass wire protocol; docs/protocol.md explains them."""
from __future__ import annotations

import os
import platform

PROTOCOL_VERSION = 1

SHADOW_MAGIC = "bypass-shadow"
AGENT_MAGIC = "bypass-agent"
WELCOME = "welcome"
REFUSED = "refused"

# Frames: a 4-byte big-endian length, then that many bytes of msgpack.
HEADER_SIZE = 4
MAX_FRAME = 16 << 20             # largest request or reply body
MAX_HANDSHAKE_FRAME = 4096       # before authentication nobody gets a big buffer
MAX_PAYLOAD = 8 << 20            # agents split buffers above this (read/write chunks)
HANDSHAKE_TIMEOUT = 10.0         # seconds a new connection may take to say hello
NONCE_SIZE = 32

# Reply status (second element of a reply).
STATUS_OK = 0        # value = the call's result
STATUS_ERRNO = 1     # value = neutral errno
STATUS_FAILURE = 2   # value = message; the shadow failed (agent reports EIO)

# Control calls: negative call numbers, never generated from a spec.
CALL_PING = -1       # () -> args echoed back (latency probe, liveness)
CALL_FORK = -2       # () -> ticket: a snapshot of the caller's descriptor table for a child
CALL_FDS = -3        # () -> [[fd, meta], ...]: the process's remote descriptors
CALL_CLOSE_FDS = -4  # ([fd, ...]) -> None: drop entries (e.g. placeholders lost in exec)

ENV_ADDRESS = "BYPASS_SHADOW"                # unix:/path | tcp:host:port
ENV_SECRET = "BYPASS_SHADOW_SECRET"          # shared secret (required for tcp)
ENV_SECRET_FILE = "BYPASS_SHADOW_SECRET_FILE"
ENV_TIMEOUT = "BYPASS_SHADOW_TIMEOUT"        # seconds per call (default 60)


class ProtocolError(Exception):
    """The peer broke the protocol; the connection is closed."""


def local_platform() -> str:
    """e.g. 'linux-x86_64': what an agent reports about itself in its hello."""
    return f"{platform.system().lower()}-{platform.machine()}"


def parse_address(address: str) -> tuple[str, object]:
    """'unix:/path' -> ('unix', '/path'); 'tcp:host:port' -> ('tcp', (host, port))."""
    kind, sep, rest = address.partition(":")
    if not sep or not rest:
        raise ValueError(f"bad shadow address {address!r} (want unix:/path or tcp:host:port)")
    if kind == "unix":
        return "unix", rest
    if kind == "tcp":
        host, sep, port = rest.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"bad tcp address {address!r} (want tcp:host:port)")
        return "tcp", (host.strip("[]") or "127.0.0.1", int(port))
    raise ValueError(f"bad shadow address {address!r}: unknown transport {kind!r}")


def boot_id() -> str:
    """This host's boot id, part of process keys (so pids of two machines never collide)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return platform.node()


def _stat_fields(pid: int) -> list[bytes] | None:
    """/proc/<pid>/stat from field 3 on; None when the process does not exist or is a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # the command name (field 2) may contain spaces and parens: split after the last ')'
    rest = data[data.rfind(b")") + 2:].split()
    if not rest or rest[0] == b"Z":
        return None
    return rest


def process_start_time(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks): survives exec, changes when
    the pid is reused.  None when the process does not exist (or is a zombie)."""
    rest = _stat_fields(pid)
    return None if rest is None else rest[19].decode()


def process_parent(pid: int) -> tuple[int, str] | None:
    """(ppid, start time of pid) from one read of /proc/<pid>/stat, or None."""
    rest = _stat_fields(pid)
    return None if rest is None else (int(rest[1]), rest[19].decode())


def process_key(pid: int | None = None) -> str:
    """The key the shadow files a process's state under: boot id, pid, start time."""
    pid = os.getpid() if pid is None else pid
    return f"{boot_id()}:{pid}:{process_start_time(pid) or 0}"
