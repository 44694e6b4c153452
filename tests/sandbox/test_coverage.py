"""Every path-taking call the knowledge base knows has an action in the sandbox spec."""

from __future__ import annotations

from pathlib import Path

from bypass.knowledge.loader import load_knowledge
from bypass.spec.parser import load_spec

SPEC = Path(__file__).resolve().parents[2] / "agents" / "sandbox" / "sandbox.bypass"

# Calls that return or change what "the current directory" or "a descriptor's path" means.
ALSO = {"getcwd", "getwd", "get_current_dir_name", "fchdir", "close", "dup", "dup2", "dup3",
        "closedir", "fclose", "execvp", "execvpe", "posix_spawnp", "fexecve", "tmpfile"}


def test_every_path_taking_call_has_an_action():
    knowledge = load_knowledge()
    spec = load_spec(SPEC)
    actions = {f.name for f in spec.functions if f.agent_action is not None}
    wanted = {name for name, call in knowledge.calls.items() if call.path_args or call.at_pairs}
    wanted |= {name for name in ALSO if name in knowledge.calls}
    missing = sorted(wanted - actions)
    assert not missing, f"sandbox.bypass has no action for: {missing}"
