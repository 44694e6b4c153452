"""How each parameter of a declared call travels between agent and shadow (docs/protocol.md).

The templates ask this module for the C of `bypass_shadow_<call>()` (marshal the arguments,
make the synchronous call, unmarshal the result and out parameters) and for the Python that
receives the same arguments in the shadow.  Both sides are derived from the same
classification, so they cannot disagree on what travels, in which order, in which form.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..cdecl import CType
from ..errors import SpecError
from ..plan import PlannedCall, Value
from ..rpc.neutral import StructLayout, param_set, struct_layout, struct_type


@dataclass(frozen=True)
class Wire:
    """One parameter's journey.  sent: the shadow receives it as an argument; returned: it
    comes back in the reply, after the return value.  form says how it is encoded."""

    value: Value
    sent: bool
    returned: bool
    form: str            # int uint neutral mode string opaque int_array stat struct struct_array
                         # int_ptr untransportable none
    neutral: str | None = None
    size: str | None = None
    struct: str | None = None      # C type of a struct that travels member by member

    @property
    def codec(self) -> str:
        """Suffix of the struct's bypass_put_/bypass_get_ functions."""
        return _codec_suffix(self.struct)

    @property
    def layout(self) -> StructLayout:
        return struct_layout(self.struct)

    @property
    def name(self) -> str:
        return self.value.spec_name

    @property
    def ctype(self) -> CType:
        return self.value.spec_type


def _codec_suffix(ctype: str) -> str:
    """"struct flock64" -> "flock64": names bypass_put_/bypass_get_ for that C type."""
    return ctype.split()[-1]


def _is_struct_stat(t: CType | None) -> bool:
    return t is not None and t.text.replace("const ", "").strip() in ("struct stat", "struct stat64")


def classify(call: PlannedCall, v: Value) -> Wire:
    t = v.spec_type
    p = v.spec
    direction = p.direction if p else None
    form = p.form if p else None
    size = p.size if p else None
    if not t.is_pointer:
        if t.is_integer:
            if t.text in ("mode_t", "__mode_t"):
                return Wire(v, True, False, "mode")
            ns = param_set(call.name, v.name)
            if ns:
                return Wire(v, True, False, "neutral", neutral=ns)
            return Wire(v, True, False, "uint" if t.is_unsigned else "int")
        return Wire(v, False, False, "none")
    pointee = t.pointee
    layout = struct_layout(pointee.text) if pointee is not None else None
    if direction is None:
        # Unannotated pointers: a const C string is an input string; a non-const pointer to
        # one object (struct stat *buf) is an output; anything else cannot travel.
        if t.is_char_pointer and t.is_const_pointee:
            direction, form = "in", "string"
        elif t.is_char_pointer or t.is_function_pointer or pointee is None or pointee.is_void:
            return Wire(v, False, False, "none")
        elif t.is_const_pointee:
            direction = "in"
        elif _is_struct_stat(pointee) or layout or (pointee.is_integer and not pointee.is_pointer):
            direction = "out"
        else:
            return Wire(v, False, False, "none")
    sent = direction in ("in", "in out")
    returned = direction in ("out", "in out")
    if form == "string":
        return Wire(v, sent, returned, "string", size=size)
    if form == "opaque":
        return Wire(v, sent, returned, "opaque", size=size)
    if form == "array":
        # integers as integers (neutral byte order and width), structs member by member
        if pointee is not None and pointee.is_integer and not pointee.is_pointer:
            return Wire(v, sent, returned, "int_array", size=size)
        if layout is not None:
            return Wire(v, sent, returned, "struct_array", size=size, struct=struct_type(pointee.text))
        return Wire(v, sent, returned, "untransportable", size=size)
    if _is_struct_stat(pointee):
        return Wire(v, sent, returned, "stat")
    if layout is not None:
        return Wire(v, sent, returned, "struct", struct=struct_type(pointee.text))
    if pointee is not None and pointee.is_integer and not pointee.is_pointer:
        return Wire(v, sent, returned, "int_ptr")
    if pointee is None or pointee.is_void or t.is_function_pointer:
        return Wire(v, False, False, "none")
    return Wire(v, sent, returned, "untransportable")


def wires(call: PlannedCall) -> list[Wire]:
    return [classify(call, v) for v in call.values]


def sent(call: PlannedCall) -> list[Wire]:
    return [w for w in wires(call) if w.sent]


def returned(call: PlannedCall) -> list[Wire]:
    return [w for w in wires(call) if w.returned]


def forwardable(call: PlannedCall) -> bool:
    """Calls returning a pointer (FILE *, DIR *, char *) cannot be forwarded by default."""
    return call.spec_ret.is_void or call.spec_ret.is_integer


# ---- C ------------------------------------------------------------------------------------------

def _c_write(w: Wire) -> list[str]:
    return _at_spec(w, _c_write_lines(w))


def _c_write_lines(w: Wire) -> list[str]:
    n = w.name
    if w.form == "int":
        return [f"bp_mp_write_int(bypass_w, (int64_t)({n}));"]
    if w.form == "uint":
        return [f"bp_mp_write_uint(bypass_w, (uint64_t)({n}));"]
    if w.form == "mode":
        return [f"bp_mp_write_int(bypass_w, bypass_mode_to_neutral((mode_t)({n})));"]
    if w.form == "neutral":
        return [f"bp_mp_write_int(bypass_w, bypass_{w.neutral}_to_neutral((int64_t)({n}), NULL));"]
    if w.form == "string":
        return [f"bp_mp_write_cstr(bypass_w, (const char *)({n}));"]
    if w.form == "opaque":
        return [f"if ({n}) bp_mp_write_bin(bypass_w, {n}, (size_t)({w.size}));",
                "else bp_mp_write_nil(bypass_w);"]
    if w.form == "int_array":
        return [f"if ({n}) {{",
                f"    size_t bypass_k = (size_t)({w.size});",
                "    bp_mp_write_array(bypass_w, (uint32_t)bypass_k);",
                "    for (size_t bypass_i = 0; bypass_i < bypass_k; bypass_i++)",
                f"        bp_mp_write_int(bypass_w, (int64_t)({n})[bypass_i]);",
                "} else bp_mp_write_nil(bypass_w);"]
    if w.form == "stat":
        return [f"if ({n}) {{",
                "    int64_t bypass_st[BYPASS_STAT_NFIELDS];",
                f"    bypass_stat_to_neutral((const struct stat *)({n}), bypass_st);",
                "    bp_mp_write_array(bypass_w, BYPASS_STAT_NFIELDS);",
                "    for (int bypass_i = 0; bypass_i < BYPASS_STAT_NFIELDS; bypass_i++)",
                "        bp_mp_write_int(bypass_w, bypass_st[bypass_i]);",
                "} else bp_mp_write_nil(bypass_w);"]
    if w.form == "int_ptr":
        return [f"if ({n}) bp_mp_write_int(bypass_w, (int64_t)*({n}));",
                "else bp_mp_write_nil(bypass_w);"]
    if w.form == "struct":
        return [f"if ({n}) bypass_put_{w.codec}(bypass_w, {n});",
                "else bp_mp_write_nil(bypass_w);"]
    if w.form == "struct_array":
        return [f"if ({n}) {{",
                f"    size_t bypass_k = (size_t)({w.size});",
                "    bp_mp_write_array(bypass_w, (uint32_t)bypass_k);",
                "    for (size_t bypass_i = 0; bypass_i < bypass_k; bypass_i++)",
                f"        bypass_put_{w.codec}(bypass_w, &({n})[bypass_i]);",
                "} else bp_mp_write_nil(bypass_w);"]
    return ["bp_mp_write_nil(bypass_w);"]


def _at_spec(w: Wire, lines: list[str]) -> list[str]:
    """Put the spec's position on every line that evaluates the spec's size expression, so that a
    mistake in it (`opaque "lenght"`) is reported at the spec's line, not in the generated C."""
    at = w.value.spec.at if w.size and w.value.spec is not None else None
    if at is None:
        return lines
    out = []
    for line in lines:
        if f"({w.size})" in line:
            out += [f'#line {at.line} "{at.path}"', line, "#line @@RESET@@"]
        else:
            out.append(line)
    return out


def _c_read(w: Wire) -> list[str]:
    return _at_spec(w, _c_read_lines(w))


def _c_read_lines(w: Wire) -> list[str]:
    """Decode one returned value into the caller's memory (skipped when the pointer is NULL)."""
    n = w.name
    out = [f"if (!({n})) {{", "    bp_mp_skip(bypass_r);", "} else {"]
    if w.form in ("opaque", "string"):
        cap = {"opaque": f"(size_t)({w.size})",
               "string": f"(size_t)({w.size})" if w.size else "0"}[w.form]
        out += ["    const void *bypass_p = NULL;",
                "    uint32_t bypass_len = 0;",
                f"    size_t bypass_cap = {cap};",
                "    if (bp_mp_peek(bypass_r) == BP_MP_STR)",
                "        bp_mp_read_str(bypass_r, (const char **)&bypass_p, &bypass_len);",
                "    else",
                "        bp_mp_read_bin(bypass_r, &bypass_p, &bypass_len);"]
        if w.form == "string":
            out += ["    if (bypass_cap > 0) {",
                    "        if (bypass_len >= bypass_cap) bypass_len = (uint32_t)(bypass_cap - 1);",
                    f"        memcpy({n}, bypass_p, bypass_len);",
                    f"        ((char *)({n}))[bypass_len] = 0;",
                    "    }"]
        else:
            out += ["    if (bypass_len > bypass_cap) bypass_len = (uint32_t)bypass_cap;",
                    f"    if (bypass_len) memcpy({n}, bypass_p, bypass_len);"]
    elif w.form == "stat":
        out += ["    int64_t bypass_st[BYPASS_STAT_NFIELDS];",
                "    uint32_t bypass_k = 0;",
                "    if (bp_mp_read_array(bypass_r, &bypass_k) == 0 && bypass_k == BYPASS_STAT_NFIELDS) {",
                "        for (int bypass_i = 0; bypass_i < BYPASS_STAT_NFIELDS; bypass_i++)",
                "            bp_mp_read_int(bypass_r, &bypass_st[bypass_i]);",
                f"        bypass_stat_to_local(bypass_st, (struct stat *)({n}));",
                "    } else if (!bypass_r->error) {",
                "        bypass_r->error = BP_MP_ETYPE;",
                "    }"]
    elif w.form == "int_array":
        out += ["    uint32_t bypass_k = 0;",
                "    if (bp_mp_read_array(bypass_r, &bypass_k) == 0) {",
                "        for (uint32_t bypass_i = 0; bypass_i < bypass_k; bypass_i++) {",
                "            int64_t bypass_v = 0;",
                "            bp_mp_read_int(bypass_r, &bypass_v);",
                f"            if ((size_t)bypass_i < (size_t)({w.size}))",
                f"                ({n})[bypass_i] = (__typeof__(({n})[0]))bypass_v;",
                "        }",
                "    }"]
    elif w.form == "struct":
        out += [f"    bypass_get_{w.codec}(bypass_r, {n});"]
    elif w.form == "struct_array":
        out += ["    uint32_t bypass_k = 0;",
                "    if (bp_mp_read_array(bypass_r, &bypass_k) == 0) {",
                "        for (uint32_t bypass_i = 0; bypass_i < bypass_k; bypass_i++) {",
                f"            if ((size_t)bypass_i < (size_t)({w.size}))",
                f"                bypass_get_{w.codec}(bypass_r, &({n})[bypass_i]);",
                "            else",
                "                bp_mp_skip(bypass_r);",
                "        }",
                "    }"]
    elif w.form == "int_ptr":
        out += ["    int64_t bypass_v = 0;",
                "    bp_mp_read_int(bypass_r, &bypass_v);",
                f"    *({n}) = (__typeof__(*({n})))bypass_v;"]
    else:
        out += ["    bp_mp_skip(bypass_r);"]
    out.append("}")
    return out


def c_shadow_function(call: PlannedCall) -> str:
    """`bypass_shadow_<call>(...)`: the call performed by the shadow."""
    ret = call.spec_ret
    params = ", ".join(v.spec_type.declare(v.spec_name) for v in call.values) or "void"
    # not static: support code (@source files) of the agent calls these too
    head = f"BYPASS_UNUSED __attribute__((visibility(\"hidden\"))) {ret.declare(f'bypass_shadow_{call.name}({params})')}"
    fail = call.failure_value
    lines = [f"/* {call.name}: performed by the shadow (call number {call.number}). */", head, "{"]

    def refused(why: list[str]) -> str:
        """A body that only fails: this call cannot go to the shadow (why: a C comment)."""
        return "\n".join([*lines, *(f"    (void){w.name};" for w in wires(call)), *why, "    errno = ENOSYS;",
                          "    return;" if ret.is_void else f"    return {fail};", "}"])

    if not forwardable(call):
        return refused(["    /* A pointer result cannot come back from another address space: an",
                        "       agent_action must build it (see agents/remote for FILE * and DIR *). */"])
    stuck = [w for w in wires(call) if w.form == "untransportable"]
    if stuck:
        if call.action_kind == "shadow":
            raise _untransportable(call, stuck[0])
        return refused([f"    /* {stuck[0].ctype.text} has no neutral layout (bypass/rpc/neutral.toml [structs]):",
                        "       it cannot travel to the shadow (see the compiler's message for such a call). */"])
    for w in wires(call):
        if not w.sent and not w.returned:
            lines.append(f"    (void){w.name};")
    lines += ["    bp_mp_writer *bypass_w;", "    bp_mp_reader *bypass_r;"]
    if not ret.is_void:
        lines.append(f"    {ret.declare('bypass_ret')} = {fail};")
    s = sent(call)
    lines += [f"    if (bypass_rpc_begin(BYPASS_CALL_{call.name}, {len(s)}, &bypass_w) < 0)",
              f"        return{'' if ret.is_void else ' ' + fail};"]
    for w in s:
        lines += ["    " + x for x in _c_write(w)]
    outs = returned(call)
    lines += ["    if (bypass_rpc_finish(&bypass_r) == 0) {"]
    body = []
    if outs:
        body += ["uint32_t bypass_n = 0;",
                 f"if (bp_mp_read_array(bypass_r, &bypass_n) == 0 && bypass_n != {1 + len(outs)})",
                 "    bypass_r->error = BP_MP_ETYPE;"]
    if ret.is_void:
        body.append("bp_mp_skip(bypass_r);")
    else:
        body += ["int64_t bypass_v = 0;",
                 "if (bp_mp_peek(bypass_r) == BP_MP_NIL) bp_mp_read_nil(bypass_r);",
                 "else bp_mp_read_int(bypass_r, &bypass_v);",
                 f"bypass_ret = ({ret.text})bypass_v;"]
    for w in outs:
        body += _c_read(w)
    body += ["if (bypass_r->error) {",
             "    /* the shadow answered something this agent cannot read */"]
    if not ret.is_void:
        body.append(f"    bypass_ret = {fail};")
    body += ["    errno = EIO;", "}"]
    lines += ["        " + x for x in body]
    lines += ["    }"]
    if not ret.is_void:
        lines += ["    else", f"        bypass_ret = {fail};"]
    lines += ["    bypass_rpc_end();"]
    lines += ["    return;" if ret.is_void else "    return bypass_ret;", "}"]
    return "\n".join(lines)


def _untransportable(call: PlannedCall, w: Wire) -> SpecError:
    """The error for a forwarded call with a parameter that has no neutral form."""
    what = w.ctype.pointee.text if w.ctype.pointee is not None else w.ctype.text
    message = (f"'{w.name}' ({what}) cannot travel to the shadow: only integers, strings, struct stat "
               f"and the structs listed under [structs] in bypass/rpc/neutral.toml have a neutral form; "
               f"mark it opaque \"<size>\" to send its bytes as they are (between like machines only), "
               f"or give '{call.name}' an agent_action")
    at = w.value.spec.at if w.value.spec is not None and w.value.spec.at else call.function.at
    try:
        source = Path(at.path).read_text()
    except OSError:
        source = None
    return SpecError(at.path, at.line, at.col, message, source)


def c_struct_codecs(calls: list[PlannedCall]) -> str:
    """`bypass_put_<s>()` / `bypass_get_<s>()` for each [structs] layout these calls use."""
    used = sorted({w.struct for c in calls if c.shadow_client for w in wires(c) if w.struct})
    if not used:
        return ""
    headers = sorted({struct_layout(t).header for t in used})
    out = [*(f"#include <{h}>" for h in headers), "",
           "/* Structs travel as msgpack maps {member: integer} (bypass/rpc/neutral.toml [structs]).",
           " * A reader ignores members it does not know and leaves missing ones 0. */",
           "static BYPASS_UNUSED int bypass_read_number(bp_mp_reader *r, int64_t *v)",
           "{",
           "    if (bp_mp_peek(r) != BP_MP_UINT)",
           "        return bp_mp_read_int(r, v);",
           "    uint64_t u = 0;",
           "    int rc = bp_mp_read_uint(r, &u);",
           "    *v = (int64_t)u;",
           "    return rc;",
           "}"]
    for ctype in used:
        out += ["", *_struct_codec(struct_layout(ctype), ctype)]
    return "\n".join(out)


def _struct_codec(layout: StructLayout, ctype: str) -> list[str]:
    suffix = _codec_suffix(ctype)
    out = [f"static BYPASS_UNUSED void bypass_put_{suffix}(bp_mp_writer *w, const {ctype} *p)",
           "{",
           f"    bp_mp_write_map(w, {len(layout.fields)});"]
    for member, set_name, form in layout.fields:
        out.append(f'    bp_mp_write_cstr(w, "{member}");')
        if set_name:
            out.append(f"    bp_mp_write_int(w, bypass_{set_name}_to_neutral((int64_t)p->{member}, NULL));")
        elif form == "mode":
            out.append(f"    bp_mp_write_int(w, bypass_mode_to_neutral((mode_t)p->{member}));")
        elif form == "uint":
            out.append(f"    bp_mp_write_uint(w, (uint64_t)p->{member});")
        else:
            out.append(f"    bp_mp_write_int(w, (int64_t)p->{member});")
    out += ["}", "",
            f"static BYPASS_UNUSED void bypass_get_{suffix}(bp_mp_reader *r, {ctype} *p)",
            "{",
            "    uint32_t n = 0;",
            "    memset(p, 0, sizeof *p);",
            "    if (bp_mp_read_map(r, &n) < 0)",
            "        return;",
            "    for (uint32_t i = 0; i < n && !r->error; i++) {",
            "        const char *k = NULL;",
            "        uint32_t klen = 0;",
            "        int64_t v = 0;",
            "        if (bp_mp_read_str(r, &k, &klen) < 0)",
            "            return;"]
    for i, (member, set_name, form) in enumerate(layout.fields):
        test = f'klen == {len(member)} && memcmp(k, "{member}", {len(member)}) == 0'
        if set_name:
            value = f"bypass_{set_name}_to_local(v, NULL)"
        elif form == "mode":
            value = "bypass_mode_to_local(v)"
        else:
            value = "v"
        out += [f"        {'if' if i == 0 else 'else if'} ({test}) {{",
                "            if (bypass_read_number(r, &v) == 0)",
                f"                p->{member} = (__typeof__(p->{member})){value};",
                "        }"]
    out += ["        else",
            "            bp_mp_skip(r);     /* a member this machine's struct lacks */",
            "    }",
            "}"]
    return out


def c_forward(call: PlannedCall) -> str:
    args = ", ".join(v.spec_name for v in call.values)
    if call.spec_ret.is_void:
        return f"    (void)bypass_ctx;\n    bypass_shadow_{call.name}({args});\n    return;"
    return f"    (void)bypass_ctx;\n    return bypass_shadow_{call.name}({args});"


# ---- Python -------------------------------------------------------------------------------------

def py_name(name: str) -> str:
    """A C parameter name usable in Python: keywords (in, from, lambda...) get a '_'."""
    import keyword
    return name + "_" if keyword.iskeyword(name) else name


def py_params(call: PlannedCall) -> list[str]:
    return [py_name(w.name) for w in sent(call)]


def py_conversions(call: PlannedCall) -> list[str]:
    """Statements turning neutral arguments into this machine's values."""
    out = []
    for w in sent(call):
        n = py_name(w.name)
        if w.form == "neutral":
            out.append(f"{n} = _neutral.SETS[{w.neutral!r}].to_local({n})")
        elif w.form == "mode":
            out.append(f"{n} = _neutral.mode_to_local({n})")
        elif w.form == "stat":
            out.append(f"{n} = None if {n} is None else _neutral.stat_from_neutral({n})")
        elif w.form == "struct":
            out.append(f"{n} = None if {n} is None else _neutral.STRUCTS[{w.layout.name!r}].to_local({n})")
        elif w.form == "struct_array":
            out.append(f"{n} = None if {n} is None else [_neutral.STRUCTS[{w.layout.name!r}].to_local(x) for x in {n}]")
    return out


def py_out_forms(call: PlannedCall) -> list[str]:
    """How the shadow encodes each out parameter (bypass.rpc.shadow._encode)."""
    return [f"{w.form}:{w.layout.name}" if w.struct else w.form for w in returned(call)]


def py_block(text: str, indent: int = 4) -> str:
    """A spec's Python block re-indented as a function body."""
    import textwrap
    body = textwrap.dedent(text.expandtabs(4)).strip("\n")
    if not body.strip():
        body = "pass"
    return textwrap.indent(body, " " * indent)
