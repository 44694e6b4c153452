"""Agent settings given on the command line (`--set NAME=VALUE`, `-m FILE`) → environment variables."""

from __future__ import annotations

import os

from .errors import BypassError


def agent_settings(assignments: list[str] | None, mounts: str | None = None) -> dict[str, str]:
    """Environment for an agent run; a bad mount list fails here, before any program starts."""
    settings: dict[str, str] = {}
    for item in assignments or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise BypassError(f"--set wants NAME=VALUE, got {item!r}")
        settings[name] = value
    if mounts:
        from .mounts import load_mounts
        load_mounts(mounts)
        settings["BYPASS_MOUNTS"] = os.path.abspath(mounts)
    return settings
