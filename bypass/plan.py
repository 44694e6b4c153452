"""Merge a spec with the knowledge base: which symbols the agent exports and how each adapts.

The result (`AgentPlan`) is everything the templates need, already decided, so the templates
only lay text out. For each trapped call:

* the canonical parameters (knowledge names and types) and the spec's names and types for them,
* what runs: the spec's agent_action, the spec's agent_default_action, a pass-through (calls that
  every agent wraps to stay alive in children), or a forward to the shadow,
* every exported entry point: its ABI declaration, how its arguments become the canonical ones,
  which context it keeps (e.g. `__xstat`'s `ver`), and how the next layer down is reached.
"""

from __future__ import annotations

import fnmatch
import hashlib
from dataclasses import dataclass, field

from .cdecl import CFunction, CParam, CType
from .errors import SpecError
from .knowledge.loader import Call, Entry, Knowledge, Vararg
from .spec.model import Block, Function, Param, Spec

ARCHES = {"x86_64": "__x86_64__", "aarch64": "__aarch64__"}


@dataclass
class Value:
    """A canonical parameter: its knowledge name/type, and the spec's name/type for it."""

    name: str
    type: CType
    spec: Param | None
    vararg: Vararg | None = None

    @property
    def spec_name(self) -> str:
        return self.spec.name if self.spec else self.name

    @property
    def spec_type(self) -> CType:
        return self.spec.type if self.spec else self.type


@dataclass
class Local:
    """A local variable an entry declares to hold a canonical value."""

    decl: str
    init: str
    vararg: Vararg | None = None
    last_fixed: str | None = None


@dataclass
class NextCall:
    symbol: str
    decl: CFunction
    args: list[str]
    hook: str | None
    dlvsym: dict[str, str] = field(default_factory=dict)   # arch → version, when dlvsym is needed


@dataclass
class PlannedEntry:
    symbol: str
    decl: CFunction
    guard: str | None
    locals: list[Local]
    prepare: str | None
    context: list[CParam]
    canonical_args: list[str]        # expressions, in canonical order, typed as the canonical types
    next: NextCall
    not_supported: bool = False

    @property
    def ident(self) -> str:
        return self.symbol


@dataclass
class PlannedCall:
    name: str
    number: int | None               # RPC call number (declared calls only)
    ret: CType                       # canonical return type
    spec_ret: CType
    values: list[Value]
    variadic: bool                   # the canonical call takes varargs
    varargs: list[Vararg]
    entries: list[PlannedEntry]
    action_kind: str                 # "user", "default", "passthrough", "shadow"
    action: Block | None
    shadow_action: Block | None
    failure_value: str
    source: str                      # where the knowledge came from, for comments
    function: Function | None
    call: Call | None
    needs_next_decls: list[NextCall] = field(default_factory=list)
    shadow_client: bool = False      # the agent carries bypass_shadow_<call>() (see _shadow_clients)

    @property
    def fixed_values(self) -> list[Value]:
        return [v for v in self.values if v.vararg is None]

    @property
    def returns_void(self) -> bool:
        return self.ret.is_void

    @property
    def has_context(self) -> bool:
        return any(e.context for e in self.entries)

    def real_symbols(self) -> list[NextCall]:
        seen: dict[str, NextCall] = {}
        for entry in self.entries:
            seen.setdefault(entry.next.symbol, entry.next)
        return list(seen.values())


@dataclass
class AgentPlan:
    spec: Spec
    calls: list[PlannedCall]
    headers: list[str]
    spec_hash: str

    @property
    def name(self) -> str:
        return self.spec.name


def _error(spec: Spec, function: Function, message: str) -> SpecError:
    return SpecError(spec.path, function.at.line, function.at.col, message, spec.source)


def _param_error(spec: Spec, param: Param, message: str) -> SpecError:
    return SpecError(spec.path, param.at.line, param.at.col, message, spec.source)


class Planner:
    def __init__(self, spec: Spec, knowledge: Knowledge):
        self.spec = spec
        self.knowledge = knowledge
        self.by_symbol = knowledge.by_symbol()
        self.extra_entries: dict[str, list[str]] = {}
        for rule in spec.options:
            if rule.keyword == "entry":
                if rule.argument not in knowledge.calls and rule.argument not in {f.name for f in spec.functions}:
                    raise SpecError(spec.path, rule.at.line, rule.at.col,
                                    f"options ... entry \"{rule.argument}\": no such call", spec.source)
                self.extra_entries.setdefault(rule.argument, []).extend(rule.patterns)

    def option_for(self, symbol: str) -> str | None:
        """The last options rule matching `symbol` wins (as in the original Bypass)."""
        verdict = None
        for rule in self.spec.options:
            if rule.keyword in ("ignore", "not_supported") and any(fnmatch.fnmatchcase(symbol, p) for p in rule.patterns):
                verdict = rule.keyword
        return verdict

    def plan(self) -> AgentPlan:
        calls: list[PlannedCall] = []
        declared = {f.name for f in self.spec.functions}
        for number, function in enumerate(self.spec.functions, start=1):
            calls.append(self.plan_declared(function, number))
        for call in self.knowledge.calls.values():
            if call.name in declared:
                continue
            if call.always:
                calls.append(self.plan_known(call, None, None, "passthrough"))
            elif any(self.option_for(e.symbol) == "not_supported" for e in call.entries if not e.private):
                planned = self.plan_known(call, None, None, "passthrough")
                planned.entries = [e for e in planned.entries if e.not_supported]
                calls.append(planned)
        for planned in calls:
            self.link_next_declarations(planned)
        _mark_shadow_clients(self.spec, calls)
        headers = sorted({h for c in calls if c.call for h in c.call.headers})
        digest = hashlib.sha256()
        for planned in calls:
            digest.update(f"{planned.number}:{planned.name}:{[v.type.text for v in planned.values]}\n".encode())
        return AgentPlan(self.spec, calls, headers, digest.hexdigest()[:16])

    # -- declared functions ----------------------------------------------------------
    def plan_declared(self, function: Function, number: int) -> PlannedCall:
        kind = "user" if function.agent_action else ("default" if self.spec.agent_default_action else "shadow")
        action = function.agent_action or self.spec.agent_default_action
        call = self.knowledge.calls.get(function.name)
        if call is None:
            if function.name in self.by_symbol:
                owner = self.by_symbol[function.name][0].name
                raise _error(self.spec, function, f"'{function.name}' is an entry point of '{owner}' in the knowledge "
                                                  f"base; declare '{owner}' instead (it catches every entry point)")
            call = self.call_from_spec(function)
        return self.plan_known(call, function, number, kind, action)

    def call_from_spec(self, function: Function) -> Call:
        """A call the knowledge does not know: the spec's declaration is its only entry point."""
        fixed = tuple(p.c for p in function.fixed_params)
        varargs = tuple(Vararg(p.name, p.type.text, _promoted(p.type), "1") for p in function.params if p.vararg)
        decl = CFunction(function.name, function.ret, fixed, bool(varargs))
        entry = Entry(symbol=function.name, decl=decl)
        return Call(name=function.name, decl=decl, family="user", source=self.spec.path, varargs=varargs,
                    entries=(entry,))

    def plan_known(self, call: Call, function: Function | None, number: int | None, kind: str,
                   action: Block | None = None) -> PlannedCall:
        canonical = list(call.decl.params)
        values = [Value(p.name, p.type, None) for p in canonical]
        values += [Value(v.name, _ctype(v.type), None, v) for v in call.varargs]
        spec_ret = call.decl.ret
        if function is not None:
            if len(function.params) != len(values):
                described = ", ".join(v.name if v.vararg is None else f"[{v.name}]" for v in values) or "none"
                raise _error(self.spec, function,
                             f"'{function.name}' takes {len(values)} parameter(s) in the knowledge base ({described}); "
                             f"this declaration has {len(function.params)}")
            for value, param in zip(values, function.params):
                value.spec = param
            spec_ret = function.ret
            if spec_ret.is_void != call.decl.ret.is_void:
                raise _error(self.spec, function, f"'{function.name}' returns {call.decl.ret.text} in the knowledge base")
        entries = []
        for entry in call.entries:
            if entry.private:
                continue
            verdict = self.option_for(entry.symbol)
            if verdict == "ignore":
                continue
            entries.append(self.plan_entry(call, entry, verdict == "not_supported"))
        for symbol in self.extra_entries.get(call.name, []):
            decl = CFunction(symbol, call.decl.ret, call.decl.params, call.decl.variadic)
            entries.append(self.plan_entry(call, Entry(symbol=symbol, decl=decl), False))
        return PlannedCall(
            name=call.name, number=number, ret=call.decl.ret, spec_ret=spec_ret, values=values,
            variadic=bool(call.varargs), varargs=list(call.varargs), entries=entries, action_kind=kind,
            action=action, shadow_action=function.shadow_action if function else None,
            failure_value=call.failure_value, source=call.source, function=function, call=call)

    def plan_entry(self, call: Call, entry: Entry, not_supported: bool) -> PlannedEntry:
        entry_params = {p.name: p for p in entry.decl.params}
        canonical_names = {p.name for p in call.decl.params} | {v.name for v in call.varargs}
        locals_: list[Local] = []
        canonical_args: list[str] = []
        last_fixed = entry.decl.params[-1].name if entry.decl.params else None
        for param in call.decl.params:
            canonical_args.append(self.canonical_value(param.name, param.type, entry, entry_params, locals_))
        for vararg in call.varargs:
            vtype = _ctype(vararg.type)
            if vararg.name in entry_params or vararg.name in entry.args or vararg.name in entry.defaults:
                canonical_args.append(self.canonical_value(vararg.name, vtype, entry, entry_params, locals_))
            else:
                locals_.append(Local(vtype.declare(vararg.name), "0", vararg, last_fixed))
                canonical_args.append(vararg.name)
        context = [p for p in entry.decl.params if p.name not in canonical_names]
        guard = _join_guards(call.guard, entry.guard, _arch_guard(entry.arch))
        return PlannedEntry(symbol=entry.symbol, decl=entry.decl, guard=guard, locals=locals_, prepare=entry.prepare,
                            context=context, canonical_args=canonical_args, next=self.next_call(call, entry),
                            not_supported=not_supported)

    @staticmethod
    def canonical_value(name: str, ctype: CType, entry: Entry, entry_params: dict[str, CParam],
                        locals_: list[Local]) -> str:
        if name in entry.args:
            locals_.append(Local(ctype.declare(name), entry.args[name]))
            return name
        if name in entry_params:
            return _cast(name, entry_params[name].type, ctype)
        locals_.append(Local(ctype.declare(name), entry.defaults[name]))
        return name

    def next_call(self, call: Call, entry: Entry) -> NextCall:
        dlvsym = {arch: entry.version(arch) for arch in ARCHES} if entry.dlvsym else {}
        if entry.next_symbol and entry.next_symbol != entry.symbol:
            target = self.by_symbol.get(entry.next_symbol)
            if target is None:
                raise SpecError(call.source, 1, 1, f"[{call.name}] {entry.symbol}: next_symbol "
                                                   f"'{entry.next_symbol}' is not in the knowledge base")
            target_call, target_entry = target
            tdlvsym = {arch: target_entry.version(arch) for arch in ARCHES} if target_entry.dlvsym else {}
            return NextCall(entry.next_symbol, target_entry.decl, _split_args(entry.next_args), entry.next_hook, tdlvsym)
        if entry.next_args:
            return NextCall(entry.symbol, entry.decl, _split_args(entry.next_args), entry.next_hook, dlvsym)
        canonical = {p.name: p.type for p in call.decl.params} | {v.name: _ctype(v.type) for v in call.varargs}
        args = []
        for param in entry.decl.params:
            if param.name in canonical:
                args.append(_cast(param.name, canonical[param.name], param.type))
            else:
                args.append(param.name)          # a context value, declared as a local in the next function
        if entry.decl.variadic:
            args += [v.name for v in call.varargs if v.name not in {p.name for p in entry.decl.params}]
        return NextCall(entry.symbol, entry.decl, args, entry.next_hook, dlvsym)

    @staticmethod
    def link_next_declarations(planned: PlannedCall) -> None:
        planned.needs_next_decls = planned.real_symbols()


def _mark_shadow_clients(spec: Spec, calls: list[PlannedCall]) -> None:
    """Give bypass_shadow_<call>() only to the calls that use it: those forwarded by default and
    those whose name some C of the spec writes (an action, the prologue, the C files beside the
    spec that @source compiles or @include reads). An agent that forwards nothing carries no
    marshalling code, and the C compiler — most of a build's time — compiles only what runs."""
    import re
    from pathlib import Path
    texts = [spec.source]
    folder = Path(spec.path).resolve().parent
    for path in sorted(folder.glob("*.[ch]")) + [folder / name for name in spec.sources]:
        try:
            texts.append(path.read_text(errors="replace"))
        except OSError:
            pass                     # a missing @source is reported by the build, by its name
    named = set(re.findall(r"\bbypass_shadow_(\w+)", "\n".join(texts)))
    for planned in calls:
        planned.shadow_client = planned.number is not None and (planned.action_kind == "shadow"
                                                                or planned.name in named)


def _split_args(text: str | None) -> list[str]:
    if not text:
        return []
    parts, depth, current = [], 0, ""
    for ch in text:
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += ch
    parts.append(current.strip())
    return parts


def _ctype(text: str) -> CType:
    from .cdecl import parse_param
    return parse_param(f"{text} __bypass_value", "<knowledge>", 1, 1).type


def _promoted(ctype: CType) -> str:
    if ctype.is_integer and ctype.text in ("char", "short", "unsigned char", "unsigned short", "signed char"):
        return "int"
    return ctype.text


def _cast(expr: str, from_type: CType, to_type: CType) -> str:
    if from_type.text == to_type.text:
        return expr
    return f"({to_type.text}){expr}"


def _arch_guard(arches: tuple[str, ...]) -> str | None:
    if not arches:
        return None
    return " || ".join(f"defined({ARCHES[a]})" for a in arches)


def _join_guards(*guards: str | None) -> str | None:
    present = [g for g in guards if g]
    if not present:
        return None
    if len(present) == 1:
        return present[0]
    return " && ".join(f"({g})" for g in present)


def make_plan(spec: Spec, knowledge: Knowledge) -> AgentPlan:
    return Planner(spec, knowledge).plan()
