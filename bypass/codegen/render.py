"""Render an AgentPlan into agent C source and a Python shadow module (jinja2)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import jinja2

from .. import __version__
from ..cdecl import CType
from ..plan import AgentPlan, NextCall, PlannedCall, PlannedEntry, Value
from . import rpc_marshal

TEMPLATES = Path(__file__).parent / "templates"


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
        autoescape=False,
    )
    env.filters["basename"] = os.path.basename
    env.globals.update(
        next_params=next_params, action_params=action_params, version_expr=version_expr, cast_ret=cast_ret,
        cast_value_to_canonical=cast_value_to_canonical, entry_action_args=entry_action_args,
        format_args=format_args, format_result=format_result, version=__version__, failed_test=failed_test,
        is_exec=lambda call: bool(call.call and call.call.family == "exec"), debug_failed=debug_failed, debug_line=debug_line,
    )
    # agent <-> shadow calls (docs/protocol.md): both sides from one classification
    env.globals.update(
        shadow_function=rpc_marshal.c_shadow_function, shadow_forward_body=rpc_marshal.c_forward,
        struct_codecs=rpc_marshal.c_struct_codecs,
        py_params=rpc_marshal.py_params, py_conversions=rpc_marshal.py_conversions,
        py_out_forms=rpc_marshal.py_out_forms,
    )
    env.filters["py_block"] = rpc_marshal.py_block
    return env


def next_params(call: PlannedCall) -> str:
    parts = [f"const struct bypass_ctx_{call.name} *bypass_ctx"]
    parts += [v.type.declare(v.name) for v in call.values]
    return ", ".join(parts)


def action_params(call: PlannedCall) -> str:
    return "".join(f", {v.spec_type.declare(v.spec_name)}" for v in call.values)


def version_expr(nxt: NextCall) -> str:
    """The symbol version to ask dlvsym for, chosen by the compiler for the target architecture."""
    if not nxt.dlvsym:
        return "NULL"
    branches = []
    for arch, macro in (("x86_64", "__x86_64__"), ("aarch64", "__aarch64__")):
        if arch in nxt.dlvsym:
            branches.append((macro, f'"{nxt.dlvsym[arch]}"'))
    expr = "NULL"
    for macro, version in reversed(branches):
        expr = f"BYPASS_ARCH_{macro.strip('_').upper()} ? {version} : ({expr})"
    return expr


def cast_ret(from_type: CType, to_type: CType) -> str:
    return "" if from_type.text == to_type.text else f"({to_type.text})"


def cast_value_to_canonical(value: Value) -> str:
    if value.spec_type.text == value.type.text:
        return value.spec_name
    return f"({value.type.text})({value.spec_name})"


def entry_action_args(call: PlannedCall, entry: PlannedEntry) -> list[str]:
    args = []
    for value, expr in zip(call.values, entry.canonical_args):
        args.append(expr if value.spec_type.text == value.type.text else f"({value.spec_type.text})({expr})")
    return args


# Arguments are shown by one runtime function reading a letter per value (bypass_fmt_values in
# runtime.c): a call's formatter is one line of C instead of one printf per argument, which the
# compiler would otherwise optimise again for each of the hundred calls of a large agent.
def _format_kind(ctype: CType, expr: str, is_string: bool) -> tuple[str, str]:
    """(letter, C argument) showing one value."""
    if ctype.is_string_array:
        return "v", f"(char *const *)({expr})"
    if is_string:
        return "s", f"(const char *)({expr})"
    if ctype.is_pointer:
        return "p", f"(const void *)({expr})"
    if ctype.is_integer:
        if ctype.is_unsigned:
            return "u", f"(unsigned long long)({expr})"
        return "d", f"(long long)({expr})"
    if ctype.text.endswith("_func_t") or ctype.text.endswith("_fn_t"):
        return "p", f"(const void *)({expr})"
    return "t", f'((void)({expr}), "{ctype.text}")'     # shown by its type's name: <struct timespec>


_FLAG_NAMES = {"flags", "oflag", "mask"}
_MODE_NAMES = {"mode"}


def format_kind(value: Value, expr: str | None = None) -> tuple[str, str]:
    """How one argument (read from `expr`, by default its name) is shown: strings quoted, flags in
    hex, modes in octal."""
    ctype, name = value.spec_type, expr or value.spec_name
    if ctype.is_integer and value.name in _FLAG_NAMES:
        return "x", f"(unsigned long long)({name})"
    if ctype.is_integer and value.name in _MODE_NAMES:
        return "o", f"(unsigned long long)({name})"
    is_string = ctype.is_char_pointer and (ctype.is_const_pointee or (value.spec is not None and value.spec.form == "string"
                                                                     and value.spec.direction != "out"))
    return _format_kind(ctype, name, is_string)


def _format_call(kinds: list[tuple[str, str]]) -> str:
    letters = "".join(kind for kind, _ in kinds)
    return f'bypass_fmt_values(bypass_buf, bypass_size, "{letters}"' + "".join(f", {arg}" for _, arg in kinds) + ")"


def format_args(call: PlannedCall) -> str:
    """C expression writing the call's arguments into bypass_buf (bypass_size bytes)."""
    return _format_call([format_kind(v) for v in call.values])


def format_result(call: PlannedCall) -> str:
    ret = call.spec_ret
    if ret.is_void:
        return _format_call([])
    return _format_call([_format_kind(ret, "bypass_result", ret.is_char_pointer)])


def debug_line(call: PlannedCall, entry: PlannedEntry, returned: bool) -> str:
    """The C call writing the `-d calls` line of this entry point: one runtime function reads the
    values as the letters say, so no call carries a formatter of its own for debugging."""
    shown = [format_kind(value, expr) for value, expr in zip(call.values, entry_action_args(call, entry))]
    kinds = "".join(letter for letter, _ in shown)
    args = [arg for _, arg in shown]
    err = "0"
    if returned:
        kinds += "="
        if not call.spec_ret.is_void:
            letter, arg = _format_kind(call.spec_ret, "bypass_result", call.spec_ret.is_char_pointer)
            kinds += letter
            args.append(arg)
        failed = debug_failed(call)
        err = "0" if failed == "0" else f"{failed} ? errno : 0"
    return f'bypass_debug_values("{entry.symbol}", "{call.name}", {err}, "{kinds}"' + "".join(f", {a}" for a in args) + ")"


def debug_failed(call: PlannedCall) -> str:
    """failed_test for debug lines, with the failure value in the result's own type: a spec's own
    call (umask returning mode_t) gets the knowledge's default -1, which must not warn."""
    if call.spec_ret.is_void or call.failure_value == "errno":
        return failed_test(call, "bypass_result")
    return f"bypass_result == ({call.spec_ret.text})({call.failure_value})"


def failed_test(call: PlannedCall, result: str) -> str:
    """C test for "this result means the call failed" (posix_spawn returns an error number)."""
    if call.spec_ret.is_void:
        return "0"
    if call.failure_value == "errno":
        return f"{result} != 0"
    return f"{result} == {call.failure_value}"


def _reset_line_markers(text: str, output_name: str) -> str:
    """`#line @@RESET@@` returns compiler positions to the generated file after spec text."""
    lines = text.split("\n")
    for index, line in enumerate(lines):
        if line.strip() == "#line @@RESET@@":
            lines[index] = f'#line {index + 2} "{output_name}"'
    return "\n".join(lines)


def _agent_template() -> jinja2.Template:
    env = _environment()
    env.globals["shadow_forward"] = lambda call: env.get_template("shadow_call.c.j2").module.forward(call)
    return env.get_template("agent.c.j2")


def render_agent(plan: AgentPlan, output_name: str) -> str:
    text = _agent_template().render(plan=plan, calls=plan.calls, part=0, parts=1, spec_file=plan.spec.path)
    return _reset_line_markers(text, output_name)


def _weight(call: PlannedCall) -> int:
    """Roughly what a call costs the C compiler: its action is inlined into every entry point."""
    action = len(call.action.text) if call.action else 200
    return (1 + len(call.entries)) * (200 + action) + (2000 if call.shadow_client else 0)


def splittable(plan: AgentPlan) -> bool:
    """Parts each repeat the agent_prologue, which is harmless only for a prologue of preprocessor
    lines (includes, macros): a function or variable defined there would be defined once per part."""
    for block in plan.spec.agent_prologue:
        text = re.sub(r"/\*.*?\*/|//[^\n]*", " ", block.text, flags=re.S).replace("\\\n", " ")
        if any(line.strip() and not line.lstrip().startswith("#") for line in text.split("\n")):
            return False
    return True


def render_agent_parts(plan: AgentPlan, names: list[str]) -> list[tuple[str, str]]:
    """The agent as len(names) translation units of about equal compile cost, for a parallel build.
    The first part defines the agent's constants; a call's code stays whole and in spec order."""
    if len(names) == 1 or not splittable(plan):
        return [(names[0], render_agent(plan, names[0]))]
    loads = [0] * len(names)
    where: dict[int, int] = {}
    for index in sorted(range(len(plan.calls)), key=lambda i: -_weight(plan.calls[i])):
        lightest = loads.index(min(loads))
        where[index] = lightest
        loads[lightest] += _weight(plan.calls[index])
    template = _agent_template()
    parts = []
    for number, name in enumerate(names):
        calls = [call for index, call in enumerate(plan.calls) if where[index] == number]
        text = template.render(plan=plan, calls=calls, part=number + 1, parts=len(names), spec_file=plan.spec.path)
        parts.append((name, _reset_line_markers(text, name)))
    return parts


def render_shadow(plan: AgentPlan) -> str:
    return _environment().get_template("shadow.py.j2").render(plan=plan, spec_file=plan.spec.path)
