"""Where the agents shipped with Bypass are: agents/ in a source checkout, bypass/agents once installed."""

from __future__ import annotations

from pathlib import Path

from .errors import BypassError

_PACKAGE = Path(__file__).resolve().parent


def agents_dir() -> Path:
    for candidate in (_PACKAGE / "agents", _PACKAGE.parent / "agents"):
        if (candidate / "trace" / "trace.bypass").is_file():
            return candidate
    raise BypassError("the shipped agents are missing from this installation (agents/trace/trace.bypass)")


def agent_spec(name: str) -> Path:
    """The spec of a shipped agent, e.g. agent_spec("trace")."""
    spec = agents_dir() / name / f"{name}.bypass"
    if not spec.is_file():
        raise BypassError(f"no shipped agent named {name!r} (looked for {spec})")
    return spec
