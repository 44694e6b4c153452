"""What a spec declares for `bypass run` to check: the settings its agent reads, with their types
(`options "BYPASS_X" setting "seconds";`), and the debug subsystems its own code reports on
(`options "policy" "cache" debug;`). Both are read with the lexer alone, so that a run with a
warm cache does not pay for a full parse.

The subsystem names are a fixed vocabulary, one bit each in the runtime (bypass_runtime.h,
BYPASS_DEBUG_*): the runtime and the generated code report on `calls`, `process`, `resolve`
and `rpc`; a spec's own C code reports on the others with bypass_debug(BYPASS_DEBUG_POLICY, ...).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from .errors import BypassError

# Every agent has these (the runtime and the generated wrappers write them).
RUNTIME_SUBSYSTEMS = {
    "calls": "every call the agent traps: arguments, result, errno, entry point",
    "syscall": "the same as calls (Parrot's name)",
    "process": "agent start-up in each process image (program, parent, agent)",
    "resolve": "where each original function was found",
}
# Only an agent that calls its shadow.
RPC_SUBSYSTEM = {"rpc": "calls to the shadow: connection, each request and its answer"}
# What a spec's own code may report on; it names those it does with `options "..." debug;`.
SPEC_SUBSYSTEMS = {
    "policy": "the agent's decision for a path (mount entry, local or remote, denied)",
    "cache": "cache hits, misses and fetches",
    "http": "HTTP requests and answers",
}

# Types a setting declaration may give, and what a value of each looks like.
_NUMBER = r"(\d+(\.\d*)?|\.\d+)"
SETTING_TYPES = {
    "number": (re.compile(_NUMBER + r"\Z"), "a number >= 0, e.g. 10 or 2.5"),
    "seconds": (re.compile(_NUMBER + r"\Z"), "seconds, a number >= 0, e.g. 30 or 0.5"),
    "size": (re.compile(_NUMBER + r"[kKmMgGtT]?\Z"), "bytes, a number with an optional K, M, G or T, e.g. 512M"),
    "bool": (re.compile(r"(0|1|yes|no|true|false)\Z", re.I), "0 or 1 (or yes/no, true/false)"),
    "path": (re.compile(r".+\Z", re.S), "a path"),
    "file": (None, "an existing file"),
}


def check_type_name(type_name: str) -> str | None:
    """None when a declaration may use this type, else what is wrong with it."""
    if type_name in SETTING_TYPES:
        return None
    if "|" in type_name and all(re.fullmatch(r"[\w.:/-]+", word) for word in type_name.split("|")):
        return None
    return (f"unknown setting type \"{type_name}\"; the types are {', '.join(SETTING_TYPES)}, "
            f"or a choice of words such as \"auto|on|off\"")


def check_value(name: str, type_name: str | None, value: str) -> None:
    if type_name is None:
        return
    if "|" in type_name:
        if value not in type_name.split("|"):
            raise BypassError(f"--set {name}={value}: {name} is one of {', '.join(type_name.split('|'))}")
        return
    pattern, described = SETTING_TYPES[type_name]
    if type_name == "file":
        ok = os.path.isfile(value)
    else:
        ok = pattern.match(value) is not None
    if not ok:
        raise BypassError(f"--set {name}={value!r}: {name} wants {described}")


@dataclass(frozen=True)
class Setting:
    pattern: str               # a name or a glob (BYPASS_GASS_*)
    type: str | None           # a SETTING_TYPES key, "a|b|c", or None (any text)


def _rules(spec_path: str | os.PathLike[str], keyword: str) -> list[tuple[list[str], str | None]]:
    """(patterns, argument) of each `options "..." ... KEYWORD ["argument"];` rule."""
    from .spec.lexer import Lexer
    from .spec.parser import read_spec_text
    tokens = Lexer(read_spec_text(spec_path), str(spec_path)).tokens()
    found = []
    for at, token in enumerate(tokens):
        if token.kind != "ident" or token.text != "options":
            continue
        end = at + 1
        while end < len(tokens) and tokens[end].kind == "string":
            end += 1
        if end < len(tokens) and tokens[end].kind == "ident" and tokens[end].text == keyword:
            argument = tokens[end + 1].text if end + 1 < len(tokens) and tokens[end + 1].kind == "string" else None
            found.append(([t.text for t in tokens[at + 1:end]], argument))
    return found


def declared_settings(spec_path: str | os.PathLike[str]) -> list[Setting]:
    return [Setting(p, argument) for patterns, argument in _rules(spec_path, "setting") for p in patterns]


def declared_subsystems(spec_path: str | os.PathLike[str]) -> list[str]:
    return [p for patterns, _ in _rules(spec_path, "debug") for p in patterns]
