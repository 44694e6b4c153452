"""Bypass: compile interposition specs and libc knowledge into LD_PRELOAD agents and shadows."""

import os as _os
import sys as _sys

__version__ = "0.1.0"


def _agents_from_checkout() -> None:
    """Each shipped agent is one folder (spec, C support, Python helpers such as
    ``agents/sandbox/mounts.py``), imported as ``bypass.agents.NAME.MODULE``.  Installed, that
    folder is ``bypass/agents``; in a source checkout it sits beside the package, where users
    know it.  Register the checkout's folder under the installed name so both import alike."""
    package = _os.path.dirname(__file__)
    if _os.path.isdir(_os.path.join(package, "agents")) or "bypass.agents" in _sys.modules:
        return
    beside = _os.path.join(_os.path.dirname(package), "agents")
    if not _os.path.isfile(_os.path.join(beside, "trace", "trace.bypass")):
        return
    import importlib.machinery
    import types
    spec = importlib.machinery.ModuleSpec("bypass.agents", None, is_package=True)
    spec.submodule_search_locations = [beside]
    module = types.ModuleType("bypass.agents", "The shipped agents, from the source checkout.")
    module.__spec__, module.__path__ = spec, [beside]
    _sys.modules["bypass.agents"] = module


_agents_from_checkout()
