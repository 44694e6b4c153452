"""Property tests: the C msgpack codec against the Python msgpack library, byte for byte."""
from __future__ import annotations

import math

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from .cbuild import build

CDEF = """
typedef struct bp_mp_writer bp_mp_writer;
typedef int (*bp_mp_grow_fn)(bp_mp_writer *w, size_t need);
struct bp_mp_writer { uint8_t *buf; size_t len; size_t cap; bp_mp_grow_fn grow; void *user; int error; };
typedef struct { const uint8_t *buf; size_t len; size_t pos; int error; } bp_mp_reader;
typedef enum {
    BP_MP_NIL, BP_MP_BOOL, BP_MP_UINT, BP_MP_INT, BP_MP_FLOAT32, BP_MP_FLOAT64,
    BP_MP_STR, BP_MP_BIN, BP_MP_ARRAY, BP_MP_MAP, BP_MP_EXT, BP_MP_INVALID, BP_MP_END
} bp_mp_kind;
void bp_mp_writer_init(bp_mp_writer *w, void *buf, size_t cap, bp_mp_grow_fn grow, void *user);
int bp_mp_write_nil(bp_mp_writer *w);
int bp_mp_write_bool(bp_mp_writer *w, int v);
int bp_mp_write_int(bp_mp_writer *w, int64_t v);
int bp_mp_write_uint(bp_mp_writer *w, uint64_t v);
int bp_mp_write_float(bp_mp_writer *w, float v);
int bp_mp_write_double(bp_mp_writer *w, double v);
int bp_mp_write_str(bp_mp_writer *w, const char *s, size_t n);
int bp_mp_write_bin(bp_mp_writer *w, const void *p, size_t n);
int bp_mp_write_array(bp_mp_writer *w, uint32_t n);
int bp_mp_write_map(bp_mp_writer *w, uint32_t n);
void bp_mp_reader_init(bp_mp_reader *r, const void *buf, size_t len);
bp_mp_kind bp_mp_peek(const bp_mp_reader *r);
int bp_mp_read_nil(bp_mp_reader *r);
int bp_mp_read_bool(bp_mp_reader *r, int *v);
int bp_mp_read_int(bp_mp_reader *r, int64_t *v);
int bp_mp_read_uint(bp_mp_reader *r, uint64_t *v);
int bp_mp_read_double(bp_mp_reader *r, double *v);
int bp_mp_read_str(bp_mp_reader *r, const char **p, uint32_t *n);
int bp_mp_read_bin(bp_mp_reader *r, const void **p, uint32_t *n);
int bp_mp_read_cstr(bp_mp_reader *r, char *dst, size_t cap);
int bp_mp_read_array(bp_mp_reader *r, uint32_t *n);
int bp_mp_read_map(bp_mp_reader *r, uint32_t *n);
int bp_mp_read_ext(bp_mp_reader *r, int8_t *type, const void **p, uint32_t *n);
int bp_mp_skip(bp_mp_reader *r);
int mp_copy(const uint8_t *in, size_t inlen, uint8_t *out, size_t cap, size_t *outlen);
"""

# A C-only round trip: decode any value with the reader and re-encode it with the writer.
# It exercises every reader function and the writer without Python in between.
COPY_C = r"""
#include "msgpack.h"
static int copy_one(bp_mp_reader *r, bp_mp_writer *w)
{
    uint32_t n; const void *p; const char *s; int64_t i; uint64_t u; double d; int b;
    switch (bp_mp_peek(r)) {
    case BP_MP_NIL: return bp_mp_read_nil(r) || bp_mp_write_nil(w);
    case BP_MP_BOOL: return bp_mp_read_bool(r, &b) || bp_mp_write_bool(w, b);
    case BP_MP_UINT: return bp_mp_read_uint(r, &u) || bp_mp_write_uint(w, u);
    case BP_MP_INT: return bp_mp_read_int(r, &i) || bp_mp_write_int(w, i);
    case BP_MP_FLOAT32: case BP_MP_FLOAT64:
        return bp_mp_read_double(r, &d) || bp_mp_write_double(w, d);
    case BP_MP_STR: return bp_mp_read_str(r, &s, &n) || bp_mp_write_str(w, s, n);
    case BP_MP_BIN: return bp_mp_read_bin(r, &p, &n) || bp_mp_write_bin(w, p, n);
    case BP_MP_ARRAY:
        if (bp_mp_read_array(r, &n) || bp_mp_write_array(w, n)) return -1;
        while (n--) if (copy_one(r, w)) return -1;
        return 0;
    case BP_MP_MAP:
        if (bp_mp_read_map(r, &n) || bp_mp_write_map(w, n)) return -1;
        while (n--) if (copy_one(r, w) || copy_one(r, w)) return -1;
        return 0;
    default: return -1;
    }
}
int mp_copy(const uint8_t *in, size_t inlen, uint8_t *out, size_t cap, size_t *outlen)
{
    bp_mp_reader r; bp_mp_writer w;
    bp_mp_reader_init(&r, in, inlen);
    bp_mp_writer_init(&w, out, cap, 0, 0);
    if (copy_one(&r, &w)) return -1;
    if (r.pos != inlen) return -2;
    *outlen = w.len;
    return 0;
}
"""


@pytest.fixture(scope="module")
def mp(tmp_path_factory):
    ffi, lib = build(tmp_path_factory.mktemp("mp"), ["msgpack.c"], CDEF, COPY_C, "mp")
    return ffi, lib


# ---- helpers: drive the C writer/reader from Python ------------------------------------------

class CWriter:
    """A C writer over a buffer grown by a Python callback (tests the grow path too)."""

    def __init__(self, ffi, lib, initial=8):
        self.ffi, self.lib = ffi, lib
        self.keep = []
        self.w = ffi.new("bp_mp_writer *")

        @ffi.callback("int(bp_mp_writer *, size_t)")
        def grow(w, need):
            new = ffi.new("uint8_t[]", max(need, 2 * w.cap))
            ffi.memmove(new, w.buf, w.len)
            self.keep.append(new)
            w.buf, w.cap = new, len(new)
            return 0

        self.grow = grow
        first = ffi.new("uint8_t[]", initial)
        self.keep.append(first)
        lib.bp_mp_writer_init(self.w, first, initial, grow, ffi.NULL)

    def write(self, v):
        lib, w = self.lib, self.w
        if v is None:
            rc = lib.bp_mp_write_nil(w)
        elif isinstance(v, bool):
            rc = lib.bp_mp_write_bool(w, v)
        elif isinstance(v, int):
            rc = lib.bp_mp_write_int(w, v) if v < 0 else lib.bp_mp_write_uint(w, v)
        elif isinstance(v, float):
            rc = lib.bp_mp_write_double(w, v)
        elif isinstance(v, str):
            b = v.encode("utf-8", "surrogatepass")
            rc = lib.bp_mp_write_str(w, b, len(b))
        elif isinstance(v, bytes):
            rc = lib.bp_mp_write_bin(w, v, len(v))
        elif isinstance(v, (list, tuple)):
            rc = lib.bp_mp_write_array(w, len(v))
            for x in v:
                self.write(x)
        elif isinstance(v, dict):
            rc = lib.bp_mp_write_map(w, len(v))
            for k, x in v.items():
                self.write(k)
                self.write(x)
        else:
            raise TypeError(v)
        assert rc == 0

    def getvalue(self):
        assert self.w.error == 0
        return bytes(self.ffi.buffer(self.w.buf, self.w.len))


def c_decode(ffi, lib, data: bytes):
    """Decode with the C reader, driven by bp_mp_peek, into Python objects."""
    buf = ffi.from_buffer(data)
    r = ffi.new("bp_mp_reader *")
    lib.bp_mp_reader_init(r, buf, len(data))
    i64, u64, d = ffi.new("int64_t *"), ffi.new("uint64_t *"), ffi.new("double *")
    b, n = ffi.new("int *"), ffi.new("uint32_t *")
    sp, pp = ffi.new("const char **"), ffi.new("const void **")

    def one():
        k = lib.bp_mp_peek(r)
        if k == lib.BP_MP_NIL:
            assert lib.bp_mp_read_nil(r) == 0
            return None
        if k == lib.BP_MP_BOOL:
            assert lib.bp_mp_read_bool(r, b) == 0
            return bool(b[0])
        if k == lib.BP_MP_UINT:
            assert lib.bp_mp_read_uint(r, u64) == 0
            return u64[0]
        if k == lib.BP_MP_INT:
            assert lib.bp_mp_read_int(r, i64) == 0
            return i64[0]
        if k in (lib.BP_MP_FLOAT32, lib.BP_MP_FLOAT64):
            assert lib.bp_mp_read_double(r, d) == 0
            return d[0]
        if k == lib.BP_MP_STR:
            assert lib.bp_mp_read_str(r, sp, n) == 0
            return ffi.buffer(sp[0], n[0])[:].decode("utf-8", "surrogatepass")
        if k == lib.BP_MP_BIN:
            assert lib.bp_mp_read_bin(r, pp, n) == 0
            return ffi.buffer(pp[0], n[0])[:]
        if k == lib.BP_MP_ARRAY:
            assert lib.bp_mp_read_array(r, n) == 0
            return [one() for _ in range(n[0])]
        if k == lib.BP_MP_MAP:
            assert lib.bp_mp_read_map(r, n) == 0
            count = n[0]
            out = {}
            for _ in range(count):
                key = one()
                out[key] = one()
            return out
        raise AssertionError(f"unexpected kind {k}")

    v = one()
    assert r.error == 0 and r.pos == len(data)
    return v


def c_copy(ffi, lib, data: bytes) -> bytes:
    out = ffi.new("uint8_t[]", len(data) + 16)
    n = ffi.new("size_t *")
    assert lib.mp_copy(data, len(data), out, len(out), n) == 0
    return bytes(ffi.buffer(out, n[0]))


# ---- strategies --------------------------------------------------------------------------------

ints = st.integers(min_value=-(2**63), max_value=2**64 - 1)
scalars = (st.none() | st.booleans() | ints | st.floats(allow_nan=False)
           | st.text(max_size=40) | st.binary(max_size=40))
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=20)
    | st.dictionaries(st.text(max_size=8) | st.integers(-1000, 1000), inner, max_size=20),
    max_leaves=60)

BOUNDARY_INTS = sorted({x + d for x in [0, 0x7f, 0xff, 0xffff, 0xffffffff, 2**63 - 1, 2**64 - 1,
                                        -32, -128, -32768, -(2**31), -(2**63)]
                        for d in (-1, 0, 1)
                        if -(2**63) <= x + d <= 2**64 - 1})
BOUNDARY_LENGTHS = [0, 1, 15, 16, 31, 32, 255, 256, 65535, 65536, 70000]

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def pack(v):
    return msgpack.packb(v, use_bin_type=True)


def unpack(b):
    return msgpack.unpackb(b, raw=False, strict_map_key=False)


# ---- tests ---------------------------------------------------------------------------------------

@FAST
@given(values)
def test_c_encoding_equals_packb(mp, v):
    ffi, lib = mp
    w = CWriter(ffi, lib)
    w.write(v)
    assert w.getvalue() == pack(v)


@FAST
@given(values)
def test_c_decodes_packb(mp, v):
    ffi, lib = mp
    assert c_decode(ffi, lib, pack(v)) == unpack(pack(v))


@FAST
@given(values)
def test_c_copy_is_identity(mp, v):
    ffi, lib = mp
    data = pack(v)
    assert c_copy(ffi, lib, data) == data


@pytest.mark.parametrize("n", BOUNDARY_INTS)
def test_integer_boundaries(mp, n):
    ffi, lib = mp
    w = CWriter(ffi, lib)
    w.write(n)
    assert w.getvalue() == pack(n)
    assert c_decode(ffi, lib, pack(n)) == n


@pytest.mark.parametrize("n", BOUNDARY_LENGTHS)
def test_length_boundaries(mp, n):
    ffi, lib = mp
    for v in ("x" * n, b"\xff" * n, [1] * n, {i: None for i in range(n)}):
        w = CWriter(ffi, lib)
        w.write(v)
        assert w.getvalue() == pack(v), (type(v), n)
        assert c_copy(ffi, lib, pack(v)) == pack(v)


def test_special_floats(mp):
    ffi, lib = mp
    for f in (0.0, -0.0, math.inf, -math.inf, math.nan, 5e-324, 1.7976931348623157e308):
        w = CWriter(ffi, lib)
        w.write(f)
        assert w.getvalue() == pack(f)
        back = c_decode(ffi, lib, pack(f))
        assert (math.isnan(back) and math.isnan(f)) or back == f


def test_float32_decodes(mp):
    ffi, lib = mp
    data = msgpack.packb(1.5, use_single_float=True)
    assert data[0] == 0xca
    assert c_decode(ffi, lib, data) == 1.5
    w = CWriter(ffi, lib)
    assert lib.bp_mp_write_float(w.w, 1.5) == 0
    assert w.getvalue() == data


@FAST
@given(values)
def test_every_truncation_is_detected(mp, v):
    ffi, lib = mp
    data = pack(v)
    r = ffi.new("bp_mp_reader *")
    for cut in range(len(data)):
        prefix = data[:cut]
        lib.bp_mp_reader_init(r, prefix, cut)
        assert lib.bp_mp_skip(r) == -1
        assert r.error == 2  # BP_MP_ETRUNC


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=64))
def test_random_bytes_never_overrun(mp, data):
    ffi, lib = mp
    r = ffi.new("bp_mp_reader *")
    lib.bp_mp_reader_init(r, data, len(data))
    rc = lib.bp_mp_skip(r)
    assert r.pos <= len(data)
    if rc == 0:
        # Whatever C accepted as one value, Python must accept as the same prefix.
        # skip(), not next(): random maps may have unhashable keys.
        unp = msgpack.Unpacker(raw=True, strict_map_key=False)
        unp.feed(data[: r.pos])
        unp.skip()
        assert unp.tell() == r.pos


def test_range_and_type_errors(mp):
    ffi, lib = mp
    r = ffi.new("bp_mp_reader *")
    i64, u64 = ffi.new("int64_t *"), ffi.new("uint64_t *")
    big = pack(2**64 - 1)
    lib.bp_mp_reader_init(r, big, len(big))
    assert lib.bp_mp_read_int(r, i64) == -1 and r.error == 4 and r.pos == 0
    neg = pack(-1)
    lib.bp_mp_reader_init(r, neg, len(neg))
    assert lib.bp_mp_read_uint(r, u64) == -1 and r.error == 4
    s = pack("abc")
    lib.bp_mp_reader_init(r, s, len(s))
    assert lib.bp_mp_read_int(r, i64) == -1 and r.error == 3
    # Errors are sticky: a later read of the right type still fails.
    n = ffi.new("uint32_t *")
    sp = ffi.new("const char **")
    assert lib.bp_mp_read_str(r, sp, n) == -1
    # A str with an embedded NUL is not accepted as a C string.
    z = pack("a\0b")
    buf = ffi.new("char[16]")
    lib.bp_mp_reader_init(r, z, len(z))
    assert lib.bp_mp_read_cstr(r, buf, 16) == -1
    ok = pack("hello")
    lib.bp_mp_reader_init(r, ok, len(ok))
    assert lib.bp_mp_read_cstr(r, buf, 6) == 0 and ffi.string(buf) == b"hello"
    lib.bp_mp_reader_init(r, ok, len(ok))
    assert lib.bp_mp_read_cstr(r, buf, 5) == -1  # no room for the NUL


def test_fixed_buffer_reports_full(mp):
    ffi, lib = mp
    buf = ffi.new("uint8_t[4]")
    w = ffi.new("bp_mp_writer *")
    lib.bp_mp_writer_init(w, buf, 4, ffi.NULL, ffi.NULL)
    assert lib.bp_mp_write_uint(w, 1) == 0
    assert lib.bp_mp_write_uint(w, 2**40) == -1
    assert w.error == 1 and w.len == 1
    assert lib.bp_mp_write_nil(w) == -1  # sticky


def test_ext_values_are_skipped(mp):
    ffi, lib = mp
    for size in (1, 2, 4, 8, 16, 3, 300, 70000):
        data = pack(msgpack.ExtType(5, b"x" * size))
        r = ffi.new("bp_mp_reader *")
        lib.bp_mp_reader_init(r, data, len(data))
        assert lib.bp_mp_skip(r) == 0 and r.pos == len(data)
