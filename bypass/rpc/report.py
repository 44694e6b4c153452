"""The remote agent's I/O report, in Condor's shape: a totals block, then one row per file.

What the program did (reads, writes, seeks and their bytes) is counted by the agent, where the
calls happen (read-ahead, buffers and staged copies hide them from the shadow), and sent with
each close; the shadow adds what crossed the wire, the opens it saw fail and the decision its
policy took for the file.
"""
from __future__ import annotations

import json
import threading
import time

from .policy import job_path

PROGRAM = ("reads", "bytes_read", "writes", "bytes_written", "seeks")


def escape(name: str) -> str:
    """A name in one column: printable characters stay, anything else (blanks, control
    characters, bytes that are not UTF-8, the backslash) becomes \\xNN."""
    raw = name.encode("utf-8", "surrogateescape")
    text = raw.decode("utf-8", "replace")
    if "\ufffd" in text:                      # not UTF-8: escape byte by byte
        return "".join(chr(b) if 0x21 <= b <= 0x7e and b != 0x5c else f"\\x{b:02x}" for b in raw)
    return "".join(c if c.isprintable() and not c.isspace() and c != "\\" else
                   "".join(f"\\x{b:02x}" for b in c.encode()) for c in text)


class Row:
    __slots__ = ("opens", "failed", "program", "wire", "decision", "local")

    def __init__(self):
        self.opens = self.failed = 0
        self.program = [0] * 5
        self.wire = [0] * 5            # what the shadow served: reads, bytes, writes, bytes, seeks
        self.decision = "remote"
        self.local = False             # its I/O happened on the execution machine, unseen


class Report:
    def __init__(self, prefix: str = "/job"):
        self.prefix = prefix
        self.rows: dict[str, Row] = {}
        self.keys: dict[str, str] = {}           # the names the shadow used -> the job's
        self.tried: dict[str, int] = {}
        self.first = self.last = None
        self.buffer = (0, 0)           # the policy's default buffer (size, block)
        self.lock = threading.Lock()

    def _row(self, export_path: str) -> Row:
        now = time.monotonic()
        if self.first is None:
            self.first = now
        self.last = now
        key = self._key(export_path)
        row = self.rows.get(key)
        if row is None:                # (not setdefault: a Row for every call is not free)
            row = self.rows[key] = Row()
        return row

    def _key(self, export_path: str) -> str:
        # (a file is opened, tallied and closed under one name: made into the job's once)
        key = self.keys.get(export_path)
        if key is None:
            key = self.keys[export_path] = job_path(export_path, self.prefix)
        return key

    def attempt(self, export_path: str) -> None:
        """The shadow is about to open it (a failed open is one that never closes)."""
        with self.lock:
            self._row(export_path)
            key = self.keys[export_path]          # (made by _row)
            self.tried[key] = self.tried.get(key, 0) + 1

    def decided(self, export_path: str, decision: str, local: bool = False) -> None:
        with self.lock:
            row = self._row(export_path)
            row.decision = decision
            row.local = local          # opened and read on the execution machine: unseen

    def program(self, export_path: str, counts) -> None:
        with self.lock:
            row = self._row(export_path)
            for i, v in enumerate(counts):
                row.program[i] += v

    def closed(self, export_path: str, wire) -> None:
        with self.lock:
            row = self._row(export_path)
            row.opens += 1
            for i, v in enumerate(wire):
                row.wire[i] += v

    # ---- the report ------------------------------------------------------------------------

    def files(self) -> list[dict]:
        with self.lock:
            out = []
            for path, row in self.rows.items():
                failed = max(0, self.tried.get(path, 0) - (0 if row.local else row.opens))
                entry = {"path": escape(path), "opens": row.opens + failed, "failed_opens": failed,
                         **dict(zip(PROGRAM, row.program)), "decision": row.decision,
                         "local_io_unseen": row.local,
                         "wire": dict(zip(PROGRAM, row.wire))}
                out.append(entry)
        out = [e for e in out if e["opens"] or e["local_io_unseen"]]
        return sorted(out, key=lambda e: (-(e["bytes_read"] + e["bytes_written"]), e["path"]))

    def totals(self, files: list[dict] | None = None) -> dict:
        files = self.files() if files is None else files
        sums = {k: sum(f[k] for f in files) for k in ("opens", "failed_opens", *PROGRAM)}
        elapsed = (self.last - self.first) if self.first is not None else 0.0
        moved = sums["bytes_read"] + sums["bytes_written"]
        return {"files": len(files), **sums, "elapsed_seconds": round(elapsed, 6),
                "throughput_bytes_per_second": round(moved / elapsed) if elapsed > 0 else 0,
                "buffer_size": self.buffer[0], "buffer_block_size": self.buffer[1],
                "wire": {k: sum(f["wire"][k] for f in files) for k in PROGRAM}}

    def as_json(self) -> str:
        files = self.files()
        return json.dumps({"totals": self.totals(files), "files": files}, indent=1)

    def as_text(self) -> str:
        files = self.files()
        t = self.totals(files)
        buffer = (f"{t['buffer_size']} bytes, blocks of {t['buffer_block_size']}"
                  if t["buffer_size"] else "none (remote calls, sequential read-ahead)")
        lines = [
            "I/O report",
            f"  files opened   {t['opens']} ({t['failed_opens']} failed) in {t['files']} file(s)",
            f"  reads          {t['reads']} ({t['bytes_read']} bytes)",
            f"  writes         {t['writes']} ({t['bytes_written']} bytes)",
            f"  seeks          {t['seeks']}",
            f"  elapsed        {t['elapsed_seconds']:.3f} s (first open to last close)",
            f"  throughput     {t['throughput_bytes_per_second'] / 1e6:.3f} MB/s",
            f"  buffer         {buffer}",
            f"  over the wire  {t['wire']['bytes_read']} bytes read in {t['wire']['reads']} call(s), "
            f"{t['wire']['bytes_written']} written in {t['wire']['writes']}",
            f"{'opens':>6} {'failed':>6} {'reads':>8} {'bytes read':>12} {'writes':>8} "
            f"{'bytes written':>13} {'seeks':>8}  {'decision':28} file",
        ]
        for f in files:
            unseen = f["local_io_unseen"]
            cells = ["-"] * 7 if unseen else [str(f[k]) for k in ("opens", "failed_opens", *PROGRAM)]
            lines.append(f"{cells[0]:>6} {cells[1]:>6} {cells[2]:>8} {cells[3]:>12} "
                         f"{cells[4]:>8} {cells[5]:>13} {cells[6]:>8}  {escape(f['decision']):28} {f['path']}")
        return "\n".join(lines)
