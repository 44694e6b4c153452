"""The divergences an agent means: `<spec stem>.expected` beside its spec.

One rule a line, `PATTERN | REASON` or `PATTERN -> OUTCOME | REASON`; `#` starts a comment.
PATTERN is a shell-style pattern matched against a divergence's title; OUTCOME, when given, one
matched against what the agent's side returned (its return value and errno as the report prints
them, without the data it observed), so a rule can say what the agent means to answer instead
of excusing every divergence of a call, e.g.

    result: fcntl_int(*F_SETLEASE*) | remote: a lease cannot be granted across machines
    result: open(* -> -1 ENXIO | a FIFO under /job cannot carry I/O across machines

A divergence that matches a rule is reported as expected, with the rule's reason.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path

from ..errors import BypassError


@dataclass(frozen=True)
class Rule:
    pattern: str
    reason: str
    line: int
    outcome: str | None = None


def expected_file(spec: Path) -> Path:
    return spec.with_suffix(".expected")


def load_rules(path: Path | None) -> list[Rule]:
    if path is None or not path.exists():
        return []
    rules = []
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise BypassError(f"{path}: cannot read the expected divergences: {exc}") from None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pattern, sep, reason = line.partition("|")
        if not sep or not pattern.strip() or not reason.strip():
            raise BypassError(f"{path}:{number}: error: want 'PATTERN | REASON', got {raw.strip()!r}")
        # " -> " (spaces around it) never occurs in a title, so it always means an outcome follows
        pattern, arrow, outcome = pattern.partition(" -> ")
        if arrow and not (pattern.strip() and outcome.strip()):
            raise BypassError(f"{path}:{number}: error: want 'PATTERN -> OUTCOME | REASON', got {raw.strip()!r}")
        rules.append(Rule(pattern.strip(), reason.strip(), number, outcome.strip() if arrow else None))
    return rules


def outcome_of(agent: str) -> str:
    """The agent's return value and errno, without the observation ("0  [bytes]" -> "0")."""
    return agent.split("[")[0].strip()


def match(rules: list[Rule], title: str, agent: str = "") -> Rule | None:
    for rule in rules:
        if fnmatch.fnmatchcase(title, rule.pattern) and (
                rule.outcome is None or fnmatch.fnmatchcase(outcome_of(agent), rule.outcome)):
            return rule
    return None
