"""Load and check the knowledge files: libc calls, the ABI symbols that reach each, and how.

A knowledge file is TOML, one table per canonical call (see docs/architecture.md). The loader
turns each into a `Call` with its `Entry` list and checks that every entry can be adapted to the
call: each canonical parameter must come from the entry (same name), an `args` expression, a
`defaults` expression, or the entry's varargs.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from ..cdecl import CFunction, parse_function
from ..errors import BypassError, SpecError

KNOWLEDGE_DIR = Path(__file__).parent
DEFAULT_PLATFORM = "linux-glibc"
# Oldest symbol version per architecture: a symbol older than the port carries the port's version.
BASE_VERSIONS = {"x86_64": "2.2.5", "aarch64": "2.17"}

_CALL_KEYS = {"decl", "family", "headers", "varargs", "path_args", "at_pairs", "fd_args", "entry", "guard",
              "fail", "always", "note"}
_ENTRY_KEYS = {"symbol", "decl", "since", "also", "dlvsym", "guard", "defaults", "args", "prepare",
               "next_symbol", "next_args", "next_hook", "private", "note", "arch"}


@dataclass(frozen=True)
class Vararg:
    name: str
    type: str
    promoted: str
    when: str


@dataclass(frozen=True)
class Entry:
    symbol: str
    decl: CFunction
    since: str | None = None             # glibc version that introduced this symbol version
    also: tuple[str, ...] = ()           # older versions of the same symbol still exported
    dlvsym: bool = False
    guard: str | None = None
    defaults: dict = field(default_factory=dict)
    args: dict = field(default_factory=dict)
    prepare: str | None = None
    next_symbol: str | None = None
    next_args: str | None = None
    next_hook: str | None = None
    private: bool = False
    arch: tuple[str, ...] = ()           # empty: every architecture
    note: str | None = None

    def version(self, arch: str) -> str:
        """The symbol version string this entry binds to on `arch` (e.g. GLIBC_2.33)."""
        base = BASE_VERSIONS[arch]
        since = self.since or base
        return "GLIBC_" + max(since, base, key=_version_key)

    def old_versions(self, arch: str) -> list[str]:
        base = BASE_VERSIONS[arch]
        return ["GLIBC_" + v for v in self.also if _version_key(v) > _version_key(base)] if arch != "x86_64" \
            else ["GLIBC_" + v for v in self.also]


@dataclass(frozen=True)
class Call:
    name: str
    decl: CFunction
    family: str
    source: str
    headers: tuple[str, ...] = ()
    varargs: tuple[Vararg, ...] = ()
    path_args: tuple[str, ...] = ()
    at_pairs: tuple[tuple[str, str], ...] = ()
    fd_args: tuple[str, ...] = ()
    entries: tuple[Entry, ...] = ()
    guard: str | None = None
    fail: str | None = None              # C expression returned on failure; default from the return type
    always: bool = False                 # wrapped in every agent (keeps the agent alive in children)
    note: str | None = None

    @property
    def canonical_params(self) -> list[str]:
        return [p.name for p in self.decl.params] + [v.name for v in self.varargs]

    @property
    def failure_value(self) -> str:
        if self.fail is not None:
            return self.fail
        if self.decl.ret.is_void:
            return ""
        return "NULL" if self.decl.ret.is_pointer else "-1"


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


class KnowledgeError(BypassError):
    pass


def _fail(source: str, where: str, message: str) -> KnowledgeError:
    return KnowledgeError(f"{source}: [{where}]: {message}")


def _check_keys(source: str, where: str, table: dict, allowed: set[str]) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise _fail(source, where, f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")


def _parse_decl(source: str, where: str, text: str) -> CFunction:
    try:
        return parse_function(text, source)
    except SpecError as exc:
        raise _fail(source, where, f"bad declaration {text!r}: {exc.message}") from None


def _call_from_table(name: str, table: dict, source: str) -> Call:
    _check_keys(source, name, table, _CALL_KEYS)
    if "decl" not in table:
        raise _fail(source, name, "a call needs 'decl'")
    decl = _parse_decl(source, name, table["decl"])
    if decl.name != name:
        raise _fail(source, name, f"decl names '{decl.name}', not '{name}'")
    varargs = tuple(Vararg(v["name"], v["type"], v.get("promoted", v["type"]), v.get("when", "1"))
                    for v in table.get("varargs", []))
    if varargs and not decl.variadic:
        raise _fail(source, name, "varargs given but the decl has no '...'")
    entries = []
    for index, raw in enumerate(table.get("entry", [{"symbol": name}])):
        where = f"{name}.entry[{index}] {raw.get('symbol', '?')}"
        _check_keys(source, where, raw, _ENTRY_KEYS)
        if "symbol" not in raw:
            raise _fail(source, where, "an entry needs 'symbol'")
        symbol = raw["symbol"]
        entry_decl = _parse_decl(source, where, raw["decl"]) if "decl" in raw else \
            CFunction(symbol, decl.ret, decl.params, decl.variadic)
        if entry_decl.name != symbol:
            raise _fail(source, where, f"decl names '{entry_decl.name}', not '{symbol}'")
        entry = Entry(symbol=symbol, decl=entry_decl, since=raw.get("since"), also=tuple(raw.get("also", ())),
                      dlvsym=raw.get("dlvsym", False), guard=raw.get("guard"), defaults=dict(raw.get("defaults", {})),
                      args=dict(raw.get("args", {})), prepare=raw.get("prepare"),
                      next_symbol=raw.get("next_symbol"), next_args=raw.get("next_args"),
                      next_hook=raw.get("next_hook"), private=raw.get("private", False),
                      arch=tuple(raw.get("arch", ())), note=raw.get("note"))
        _check_adapter(source, where, decl, varargs, entry)
        entries.append(entry)
    return Call(name=name, decl=decl, family=table.get("family", name), source=source,
                headers=tuple(table.get("headers", ())), varargs=varargs,
                path_args=tuple(table.get("path_args", ())), at_pairs=tuple(tuple(p) for p in table.get("at_pairs", ())),
                fd_args=tuple(table.get("fd_args", ())), entries=tuple(entries), guard=table.get("guard"),
                fail=table.get("fail"), always=table.get("always", False), note=table.get("note"))


def _check_adapter(source: str, where: str, call: CFunction, varargs: tuple[Vararg, ...], entry: Entry) -> None:
    entry_names = {p.name for p in entry.decl.params}
    for param in call.params:
        if param.name not in entry_names and param.name not in entry.args and param.name not in entry.defaults:
            raise _fail(source, where, f"canonical parameter '{param.name}' has no source "
                                       f"(same-named entry parameter, args or defaults)")
    for vararg in varargs:
        if vararg.name in entry_names or vararg.name in entry.args or vararg.name in entry.defaults:
            continue
        if not entry.decl.variadic:
            raise _fail(source, where, f"vararg '{vararg.name}' needs a default: the entry is not variadic")
    if entry.next_args is None and entry.next_symbol is not None and entry.next_symbol != entry.symbol:
        raise _fail(source, where, "next_symbol needs next_args")


@dataclass
class Knowledge:
    calls: dict[str, Call]

    def by_symbol(self) -> dict[str, tuple[Call, Entry]]:
        table = {}
        for call in self.calls.values():
            for entry in call.entries:
                table[entry.symbol] = (call, entry)
        return table

    def families(self) -> dict[str, list[Call]]:
        grouped: dict[str, list[Call]] = {}
        for call in self.calls.values():
            grouped.setdefault(call.family, []).append(call)
        return grouped


def load_files(paths: list[Path]) -> Knowledge:
    calls: dict[str, Call] = {}
    seen_symbols: dict[str, str] = {}
    for path in sorted(paths):
        source = str(path)
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise KnowledgeError(f"{source}: {exc}") from None
        for name, table in data.items():
            if not isinstance(table, dict):
                raise _fail(source, name, "expected a table")
            call = _call_from_table(name, table, source)
            if name in calls:
                raise _fail(source, name, f"call is already described in {calls[name].source}")
            for entry in call.entries:
                if entry.symbol in seen_symbols:
                    raise _fail(source, name, f"symbol '{entry.symbol}' is already an entry of "
                                              f"'{seen_symbols[entry.symbol]}'")
                seen_symbols[entry.symbol] = name
            calls[name] = call
    return Knowledge(calls)


@lru_cache(maxsize=4)
def load_knowledge(platform: str = DEFAULT_PLATFORM) -> Knowledge:
    folder = KNOWLEDGE_DIR / platform
    if not folder.is_dir():
        raise KnowledgeError(f"no knowledge for platform '{platform}' (looked in {folder})")
    return load_files(list(folder.glob("*.toml")))
