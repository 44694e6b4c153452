"""The divergences an agent means: `<spec stem>.expected` beside its spec.

One rule a line, `PATTERN | REASON`; `#` starts a comment.  PATTERN is a shell-style pattern
matched against a divergence's title, e.g.

    result: fcntl_int(*F_SETLEASE*) | remote: a lease cannot be granted across machines

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
        rules.append(Rule(pattern.strip(), reason.strip(), number))
    return rules


def match(rules: list[Rule], title: str) -> Rule | None:
    for rule in rules:
        if fnmatch.fnmatchcase(title, rule.pattern):
            return rule
    return None
