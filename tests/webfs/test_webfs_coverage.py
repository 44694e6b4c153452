"""Every path-taking call the knowledge base knows has an action in the webfs spec, plus the calls
that report or change the current directory (a tree's skeleton path must never show) and the
exec variants that search $PATH (a PATH entry may be in a tree)."""

from __future__ import annotations

from bypass.knowledge.loader import load_knowledge
from bypass.spec.parser import load_spec
from webfs_lib import SPEC

ALSO = {"getcwd", "getwd", "get_current_dir_name", "fchdir", "execvp", "execvpe", "posix_spawnp"}


def test_every_path_taking_call_has_an_action():
    knowledge = load_knowledge()
    spec = load_spec(SPEC)
    actions = {f.name for f in spec.functions if f.agent_action is not None}
    wanted = {name for name, call in knowledge.calls.items() if call.path_args or call.at_pairs}
    assert len(wanted) > 60                       # the knowledge base was read, not an empty set
    wanted |= {name for name in ALSO if name in knowledge.calls}
    missing = sorted(wanted - actions)
    assert not missing, f"webfs.bypass has no action for: {missing}"


def test_every_action_maps_or_passes_on_inactive():
    """Each action starts by handing the call on when no tree is mounted (the conform run shows
    the agent is then exact) and every path argument goes through wf_map."""
    spec = load_spec(SPEC)
    for f in spec.functions:
        body = f.agent_action.text if f.agent_action else ""
        assert "WF_PASS_IF_INACTIVE();" in body.split("\n", 3)[1] or "WF_PASS_IF_INACTIVE();" in body[:200], f.name
        knowledge = load_knowledge().calls.get(f.name)
        if knowledge and knowledge.path_args:
            assert any(m in body for m in ("WF_MAP(", "WF_CHECK(", "wf_map(", "wf_search_path(")), f.name
