"""What a spec says, after parsing: a small typed model the rest of the pipeline reads."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..cdecl import CParam, CType


@dataclass(frozen=True)
class Position:
    path: str
    line: int
    col: int


@dataclass(frozen=True)
class Block:
    """A `{{ ... }}` block: its text and where that text starts in the spec."""

    text: str
    at: Position


@dataclass(frozen=True)
class Param:
    c: CParam
    direction: str | None = None          # None (by value), "in", "out", "in out"
    form: str | None = None               # None (one object), "string", "opaque", "array"
    size: str | None = None               # the quoted expression of string/opaque/array
    vararg: bool = False
    at: Position | None = None

    @property
    def name(self) -> str:
        return self.c.name

    @property
    def type(self) -> CType:
        return self.c.type


@dataclass(frozen=True)
class Function:
    name: str
    ret: CType
    params: tuple[Param, ...]
    at: Position
    agent_action: Block | None = None
    shadow_action: Block | None = None

    @property
    def fixed_params(self) -> tuple[Param, ...]:
        return tuple(p for p in self.params if not p.vararg)


@dataclass(frozen=True)
class OptionRule:
    patterns: tuple[str, ...]
    keyword: str                          # "ignore", "not_supported", "entry"
    argument: str | None
    at: Position


@dataclass
class Spec:
    path: str
    source: str
    agent_prologue: list[Block] = field(default_factory=list)
    shadow_prologue: list[Block] = field(default_factory=list)
    agent_default_action: Block | None = None
    functions: list[Function] = field(default_factory=list)
    options: list[OptionRule] = field(default_factory=list)
    includes: list[str] = field(default_factory=list)        # `#include` lines from @include
    sources: list[str] = field(default_factory=list)         # C files from @source, relative to the spec

    @property
    def name(self) -> str:
        from pathlib import Path
        return Path(self.path).stem
