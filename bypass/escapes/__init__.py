"""`bypass escapes SPEC -- CMD`: what the agent does not see.

Runs CMD under the agent built from SPEC with the trace agent stacked *under* it
(LD_PRELOAD="spec.so trace.so"), so the trace log holds exactly what the spec passes down to libc,
while strace records the file-related system calls the kernel receives. Every system call no
trapped call explains is an escape; the report groups them by cause. With SPEC = the trace agent
itself, only the trace agent is loaded.
"""

from .cli import main

__all__ = ["main"]
