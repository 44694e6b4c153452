"""Local <-> neutral conversion on the Python (shadow) side.

The neutral numbers come from `neutral.toml` (next to this file), the one source of truth
shared with the C generator `neutral_c.py`.  Local values come from the running platform's
Python modules (os, errno, fcntl, stat), so this module is correct on whatever machine the
shadow runs on.

    from bypass.rpc import neutral
    flags = neutral.SETS["open_flags"].to_local(wire_flags)
    neutral.errno_to_neutral(e.errno)
    neutral.stat_to_neutral(os.stat(path))      # list of 16 ints, in STAT_FIELDS order
"""
from __future__ import annotations

import importlib
import operator
import os
import stat as _stat
import tomllib
from collections import namedtuple
from functools import cached_property
from pathlib import Path

DATA_FILE = Path(__file__).with_name("neutral.toml")


class NeutralError(ValueError):
    """A value has no translation (and its set has no default)."""


def load_data(path: Path = DATA_FILE) -> dict:
    with open(path, "rb") as f:
        return tomllib.load(f)


class NeutralSet:
    """One named set of flags (kind "bits") or values (kind "enum") from neutral.toml."""

    def __init__(self, name: str, spec: dict):
        self.name = name
        self._local_memo: dict[int, int] = {}     # neutral -> local, for to_local
        self.kind = spec["kind"]
        if self.kind not in ("bits", "enum"):
            raise ValueError(f"neutral.toml: [{name}] has unknown kind {self.kind!r}")
        self.python_modules = list(spec.get("python", []))
        self.headers = list(spec.get("headers", []))
        self.aliases: dict[str, str] = dict(spec.get("aliases", {}))
        self.field = spec.get("field")
        self.default = spec.get("default")
        # Zero-valued local bit flags cannot be detected; some enums use 0 for "absent".
        self.skip_zero = self.kind == "bits" or spec.get("zero_is_absent", False)
        # name -> neutral value (bits: 1 << bit number; enum: the ID)
        self.neutral_values: dict[str, int] = {
            n: (1 << v if self.kind == "bits" else v) for n, v in spec["names"].items()}
        for alias, target in self.aliases.items():
            if target not in self.neutral_values:
                raise ValueError(f"neutral.toml: [{name}] alias {alias} -> unknown {target}")
        if self.default is not None and self.default not in self.neutral_values:
            raise ValueError(f"neutral.toml: [{name}] default {self.default} is not a name")

    # -- local values ------------------------------------------------------------------------

    def local_value(self, name: str) -> int | None:
        """The running platform's value for `name`, or None if it has none."""
        for modname in self.python_modules:
            mod = importlib.import_module(modname)
            v = getattr(mod, name, None)
            if isinstance(v, int):
                return v
        return None

    @cached_property
    def _pairs(self) -> list[tuple[str, int, int]]:
        """(name, neutral, local) for names known here; aliases after the real names so
        the canonical name wins when values coincide.  Zero-valued bit flags are dropped:
        they cannot be detected (e.g. O_LARGEFILE on 64-bit glibc)."""
        out = []
        for name, nv in self.neutral_values.items():
            lv = self.local_value(name)
            if lv is not None and not (self.skip_zero and lv == 0):
                out.append((name, nv, lv))
        for alias, target in self.aliases.items():
            lv = self.local_value(alias)
            if lv is not None and not (self.skip_zero and lv == 0):
                out.append((alias, self.neutral_values[target], lv))
        return out

    @cached_property
    def _field(self):
        """(local mask, neutral mask, [(neutral, local)]) of the value sub-field, or None."""
        if not self.field:
            return None
        lmask = self.local_value(self.field["mask"])
        if lmask is None:
            return None
        values = []
        for n, nv in self.field["values"].items():
            lv = self.local_value(n)
            if lv is not None:
                values.append((nv, lv))
        return lmask, self.field["neutral_mask"], values

    # -- conversion -----------------------------------------------------------------------------

    def to_neutral(self, local: int, strict: bool = False) -> int:
        """Local value -> neutral.  Bits: unknown local bits are dropped (NeutralError when
        strict).  Enum: unknown values become the default, else NeutralError."""
        if self.kind == "enum":
            for _, nv, lv in self._pairs:
                if lv == local:
                    return nv
            if self.default is not None and not strict:
                return self.neutral_values[self.default]
            raise NeutralError(f"{self.name}: local value {local} has no neutral name")
        out, covered = 0, 0
        if self._field:
            lmask, nmask, values = self._field
            sub = local & lmask
            for nv, lv in values:
                if lv == sub:
                    out |= nv
                    break
            else:
                if strict:
                    raise NeutralError(f"{self.name}: field value {sub:#o} unknown")
            covered |= lmask
        for _, nv, lv in self._pairs:
            if local & lv == lv:
                out |= nv
                covered |= lv
        if strict and local & ~covered:
            raise NeutralError(f"{self.name}: local bits {local & ~covered:#o} unknown")
        return out

    def to_local(self, neutral: int, strict: bool = False) -> int:
        """Neutral value -> local.  Names this platform lacks are dropped (bits) or become the
        default (enum); with strict, NeutralError instead."""
        if strict or type(neutral) is not int:
            return self._to_local(neutral, strict)
        # (open flags...: a program uses few distinct values, and converts one on every call)
        local = self._local_memo.get(neutral)
        if local is None:
            local = self._to_local(neutral)
            if len(self._local_memo) < 1024:
                self._local_memo[neutral] = local
        return local

    def _to_local(self, neutral: int, strict: bool = False) -> int:
        if self.kind == "enum":
            for _, nv, lv in self._pairs:
                if nv == neutral:
                    return lv
            if self.default is not None and not strict:
                lv = self.local_value(self.default)
                if lv is not None:
                    return lv
            raise NeutralError(f"{self.name}: neutral value {neutral} unknown here")
        out, covered = 0, 0
        if self._field:
            lmask, nmask, values = self._field
            sub = neutral & nmask
            for nv, lv in values:
                if nv == sub:
                    out |= lv
                    break
            covered |= nmask
        for _, nv, lv in self._pairs:
            if neutral & nv:
                out |= lv
                covered |= nv
        if strict and neutral & ~covered:
            raise NeutralError(f"{self.name}: neutral bits {self.names(neutral & ~covered)} "
                               "unsupported here")
        return out

    # -- names (for platforms that do not expose a local value, e.g. AT_* in Python) --------

    def names(self, neutral: int) -> list[str]:
        """The neutral names in a neutral value (bits), or the one name (enum)."""
        if self.kind == "enum":
            return [n for n, v in self.neutral_values.items() if v == neutral][:1]
        out = []
        if self.field:
            sub = neutral & self.field["neutral_mask"]
            out += [n for n, v in self.field["values"].items() if v == sub][:1]
        out += [n for n, v in self.neutral_values.items() if neutral & v]
        return out

    def neutral(self, *names: str) -> int:
        """Neutral value of names (OR-ed for bits)."""
        out = 0
        for name in names:
            name = self.aliases.get(name, name)
            if self.field and name in self.field["values"]:
                out |= self.field["values"][name]
            elif name in self.neutral_values:
                v = self.neutral_values[name]
                if self.kind == "enum":
                    return v
                out |= v
            else:
                raise NeutralError(f"{self.name}: no neutral name {name}")
        return out


_DATA = load_data()
SETS: dict[str, NeutralSet] = {
    name: NeutralSet(name, spec) for name, spec in _DATA.items() if "kind" in spec}
STAT_FIELDS: tuple[str, ...] = tuple(f["name"] for f in _DATA["stat"]["fields"])
PARAM_SETS: dict[tuple[str, str], str] = {
    (call, rule["param"]): rule["set"] for rule in _DATA.get("param_sets", []) for call in rule["calls"]}


def param_set(call: str, param: str) -> str | None:
    """The neutral set a call's parameter travels through (None: an ordinary integer)."""
    return PARAM_SETS.get((call, param))

open_flags = SETS["open_flags"]
at_flags = SETS["at_flags"]
fcntl_cmds = SETS["fcntl_cmds"]
errnos = SETS["errno"]
file_types = SETS["file_types"]


# -- errno -------------------------------------------------------------------------------------

def errno_to_neutral(e: int | None) -> int:
    return errnos.to_neutral(e) if e else errnos.neutral("EIO")


def errno_to_local(n: int) -> int:
    return errnos.to_local(n)


def oserror(neutral_errno: int, message: str | None = None) -> OSError:
    """An OSError carrying the local errno for a neutral one."""
    e = errno_to_local(neutral_errno)
    return OSError(e, message or os.strerror(e))


# -- st_mode, device numbers, struct stat ------------------------------------------------------

_NEUTRAL_TYPE: dict[int, int] = {}      # local S_IFMT bits -> neutral, as they are met


def mode_to_neutral(mode: int) -> int:
    ftype = _stat.S_IFMT(mode)
    nt = _NEUTRAL_TYPE.get(ftype)
    if nt is None:
        try:
            nt = file_types.to_neutral(ftype, strict=True) if ftype else 0
        except NeutralError:
            nt = 0
        _NEUTRAL_TYPE[ftype] = nt
    return nt | (mode & 0o7777)


def mode_to_local(neutral_mode: int) -> int:
    nt = neutral_mode & ~0o7777
    try:
        lt = file_types.to_local(nt, strict=True) if nt else 0
    except NeutralError:
        lt = 0
    return lt | (neutral_mode & 0o7777)


_DEVNUM_NEUTRAL: dict[int, int] = {0: 0}      # local -> neutral, as they are met


def devnum_to_neutral(dev: int) -> int:
    # (every stat passes here twice, with the few device numbers of the export's file systems)
    n = _DEVNUM_NEUTRAL.get(dev)
    if n is None:
        n = (os.major(dev) << 32) | os.minor(dev)
        if len(_DEVNUM_NEUTRAL) < 4096:
            _DEVNUM_NEUTRAL[dev] = n
    return n


def devnum_to_local(neutral_dev: int) -> int:
    return os.makedev(neutral_dev >> 32, neutral_dev & 0xFFFFFFFF)


NeutralStat = namedtuple("NeutralStat", STAT_FIELDS)


# stat_to_neutral computes the members in this order, then picks them in STAT_FIELDS order
# (every stat and fstat of a remote file passes here: no dict, one call per member at most)
_STAT_COMPUTED = ("dev", "ino", "mode", "nlink", "uid", "gid", "rdev", "size", "blksize", "blocks",
                  "atime_sec", "atime_nsec", "mtime_sec", "mtime_nsec", "ctime_sec", "ctime_nsec")
_stat_in_wire_order = operator.itemgetter(*(_STAT_COMPUTED.index(f) for f in STAT_FIELDS))


def stat_to_neutral(st: os.stat_result) -> list[int]:
    """An os.stat_result as the wire's list of neutral integers (STAT_FIELDS order)."""
    a_s, a_ns = divmod(st.st_atime_ns, 1_000_000_000)
    m_s, m_ns = divmod(st.st_mtime_ns, 1_000_000_000)
    c_s, c_ns = divmod(st.st_ctime_ns, 1_000_000_000)
    return list(_stat_in_wire_order((
        devnum_to_neutral(st.st_dev), st.st_ino, mode_to_neutral(st.st_mode), st.st_nlink, st.st_uid,
        st.st_gid, devnum_to_neutral(getattr(st, "st_rdev", 0)), st.st_size, getattr(st, "st_blksize", 0),
        getattr(st, "st_blocks", 0), a_s, a_ns, m_s, m_ns, c_s, c_ns)))


def stat_from_neutral(fields) -> NeutralStat:
    """Wire list -> NeutralStat with LOCAL mode and device numbers (times stay sec+nsec)."""
    if len(fields) != len(STAT_FIELDS):
        raise NeutralError(f"stat: expected {len(STAT_FIELDS)} fields, got {len(fields)}")
    st = NeutralStat(*fields)
    return st._replace(mode=mode_to_local(st.mode), dev=devnum_to_local(st.dev),
                       rdev=devnum_to_local(st.rdev))


# -- other structs: maps {member: integer} -------------------------------------------------------

class StructLayout:
    """A struct that travels member by member ([structs] of neutral.toml)."""

    FORMS = ("int", "uint", "mode")

    def __init__(self, name: str, spec: dict):
        self.name = name
        self.header = spec["header"]
        self.types = tuple(spec["types"])
        self.fields: tuple[tuple[str, str | None, str], ...] = tuple(
            (f["name"], f.get("set"), f.get("form", "int")) for f in spec["fields"])
        for member, set_name, form in self.fields:
            if set_name is not None and set_name not in SETS:
                raise ValueError(f"neutral.toml: [structs.{name}] {member}: unknown set {set_name!r}")
            if form not in self.FORMS:
                raise ValueError(f"neutral.toml: [structs.{name}] {member}: unknown form {form!r}")

    def to_local(self, wire) -> dict:
        """A received map -> {member: local value}; absent members are 0, unknown ones ignored."""
        if not isinstance(wire, dict):
            raise NeutralError(f"struct {self.name}: expected a map of members, got {type(wire).__name__}")
        out = {}
        for member, set_name, form in self.fields:
            v = wire.get(member, 0)
            if type(v) is not int:
                raise NeutralError(f"struct {self.name}: member {member} is not an integer")
            out[member] = self._member(v, set_name, form, to_local=True)
        return out

    def to_neutral(self, value) -> dict:
        """A dict, or any object with the members as attributes (os.statvfs_result), -> map."""
        get = value.get if isinstance(value, dict) else (lambda m, d: getattr(value, m, d))
        out = {}
        for member, set_name, form in self.fields:
            out[member] = self._member(int(get(member, 0)), set_name, form, to_local=False)
        return out

    @staticmethod
    def _member(v: int, set_name: str | None, form: str, to_local: bool) -> int:
        if set_name is not None:
            return SETS[set_name].to_local(v) if to_local else SETS[set_name].to_neutral(v)
        if form == "mode":
            return mode_to_local(v) if to_local else mode_to_neutral(v)
        return v


STRUCTS: dict[str, StructLayout] = {
    name: StructLayout(name, spec) for name, spec in _DATA.get("structs", {}).items()}
_STRUCT_TYPES: dict[str, StructLayout] = {t: s for s in STRUCTS.values() for t in s.types}


def struct_type(ctype: str) -> str:
    """A C type spelling without qualifiers: "const struct timespec" -> "struct timespec"."""
    return " ".join(w for w in ctype.split() if w not in ("const", "volatile"))


def struct_layout(ctype: str) -> StructLayout | None:
    """The layout for a C type spelling ("const struct timespec"), or None."""
    return _STRUCT_TYPES.get(struct_type(ctype))
