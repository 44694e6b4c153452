/*
 * msgpack.c — see msgpack.h.  Plain C99, no allocation, no libc beyond memcpy.
 */
#include "msgpack.h"

#include <string.h>

/* ------------------------------------------------------------------------------------------ */
/* writer                                                                                     */

void bp_mp_writer_init(bp_mp_writer *w, void *buf, size_t cap, bp_mp_grow_fn grow, void *user)
{
    w->buf = (uint8_t *)buf;
    w->len = 0;
    w->cap = buf ? cap : 0;
    w->grow = grow;
    w->user = user;
    w->error = BP_MP_OK;
}

/* Make room for n more bytes; the one place that may call the grow callback. */
static int room(bp_mp_writer *w, size_t n)
{
    if (w->error)
        return -1;
    if (n <= w->cap - w->len)
        return 0;
    if (n > SIZE_MAX - w->len || !w->grow || w->grow(w, w->len + n) != 0 || w->cap - w->len < n) {
        w->error = BP_MP_ENOSPC;
        return -1;
    }
    return 0;
}

static inline void put8(uint8_t *p, uint8_t v) { p[0] = v; }
static inline void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static inline void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}
static inline void put64(uint8_t *p, uint64_t v)
{
    put32(p, (uint32_t)(v >> 32));
    put32(p + 4, (uint32_t)v);
}

/* A one-byte tag followed by a 0/1/2/4/8-byte big-endian number. */
static int tagged(bp_mp_writer *w, uint8_t tag, uint64_t v, int width)
{
    if (room(w, 1 + (size_t)width) < 0)
        return -1;
    uint8_t *p = w->buf + w->len;
    p[0] = tag;
    switch (width) {
    case 0: break;
    case 1: put8(p + 1, (uint8_t)v); break;
    case 2: put16(p + 1, (uint16_t)v); break;
    case 4: put32(p + 1, (uint32_t)v); break;
    default: put64(p + 1, v); break;
    }
    w->len += 1 + (size_t)width;
    return 0;
}

int bp_mp_write_nil(bp_mp_writer *w) { return tagged(w, 0xc0, 0, 0); }
int bp_mp_write_bool(bp_mp_writer *w, int v) { return tagged(w, v ? 0xc3 : 0xc2, 0, 0); }

int bp_mp_write_uint(bp_mp_writer *w, uint64_t v)
{
    if (v < 0x80) return tagged(w, (uint8_t)v, 0, 0);          /* positive fixint */
    if (v <= 0xff) return tagged(w, 0xcc, v, 1);
    if (v <= 0xffff) return tagged(w, 0xcd, v, 2);
    if (v <= 0xffffffffu) return tagged(w, 0xce, v, 4);
    return tagged(w, 0xcf, v, 8);
}

int bp_mp_write_int(bp_mp_writer *w, int64_t v)
{
    /* Non-negative values use the unsigned forms, as msgpack-python does. */
    if (v >= 0) return bp_mp_write_uint(w, (uint64_t)v);
    if (v >= -32) return tagged(w, (uint8_t)(int8_t)v, 0, 0);  /* negative fixint */
    if (v >= INT8_MIN) return tagged(w, 0xd0, (uint64_t)v, 1);
    if (v >= INT16_MIN) return tagged(w, 0xd1, (uint64_t)v, 2);
    if (v >= INT32_MIN) return tagged(w, 0xd2, (uint64_t)v, 4);
    return tagged(w, 0xd3, (uint64_t)v, 8);
}

int bp_mp_write_float(bp_mp_writer *w, float v)
{
    uint32_t bits;
    memcpy(&bits, &v, sizeof bits);
    return tagged(w, 0xca, bits, 4);
}

int bp_mp_write_double(bp_mp_writer *w, double v)
{
    uint64_t bits;
    memcpy(&bits, &v, sizeof bits);
    return tagged(w, 0xcb, bits, 8);
}

int bp_mp_write_str_header(bp_mp_writer *w, uint32_t n)
{
    if (n < 32) return tagged(w, (uint8_t)(0xa0 | n), 0, 0);
    if (n <= 0xff) return tagged(w, 0xd9, n, 1);
    if (n <= 0xffff) return tagged(w, 0xda, n, 2);
    return tagged(w, 0xdb, n, 4);
}

int bp_mp_write_bin_header(bp_mp_writer *w, uint32_t n)
{
    if (n <= 0xff) return tagged(w, 0xc4, n, 1);
    if (n <= 0xffff) return tagged(w, 0xc5, n, 2);
    return tagged(w, 0xc6, n, 4);
}

int bp_mp_write_array(bp_mp_writer *w, uint32_t n)
{
    if (n < 16) return tagged(w, (uint8_t)(0x90 | n), 0, 0);
    if (n <= 0xffff) return tagged(w, 0xdc, n, 2);
    return tagged(w, 0xdd, n, 4);
}

int bp_mp_write_map(bp_mp_writer *w, uint32_t n)
{
    if (n < 16) return tagged(w, (uint8_t)(0x80 | n), 0, 0);
    if (n <= 0xffff) return tagged(w, 0xde, n, 2);
    return tagged(w, 0xdf, n, 4);
}

int bp_mp_write_raw(bp_mp_writer *w, const void *p, size_t n)
{
    if (room(w, n) < 0)
        return -1;
    if (n)
        memcpy(w->buf + w->len, p, n);
    w->len += n;
    return 0;
}

void *bp_mp_write_reserve(bp_mp_writer *w, size_t n)
{
    if (room(w, n) < 0)
        return NULL;
    void *p = w->buf + w->len;
    w->len += n;
    return p;
}

int bp_mp_write_str(bp_mp_writer *w, const char *s, size_t n)
{
    if (n > 0xffffffffu) {
        if (!w->error) w->error = BP_MP_ENOSPC;
        return -1;
    }
    if (bp_mp_write_str_header(w, (uint32_t)n) < 0)
        return -1;
    return bp_mp_write_raw(w, s, n);
}

int bp_mp_write_cstr(bp_mp_writer *w, const char *s)
{
    return s ? bp_mp_write_str(w, s, strlen(s)) : bp_mp_write_nil(w);
}

int bp_mp_write_bin(bp_mp_writer *w, const void *p, size_t n)
{
    if (n > 0xffffffffu) {
        if (!w->error) w->error = BP_MP_ENOSPC;
        return -1;
    }
    if (bp_mp_write_bin_header(w, (uint32_t)n) < 0)
        return -1;
    return bp_mp_write_raw(w, p, n);
}

/* ------------------------------------------------------------------------------------------ */
/* reader                                                                                     */

void bp_mp_reader_init(bp_mp_reader *r, const void *buf, size_t len)
{
    r->buf = (const uint8_t *)buf;
    r->len = buf ? len : 0;
    r->pos = 0;
    r->error = BP_MP_OK;
}

static inline uint16_t get16(const uint8_t *p) { return (uint16_t)((p[0] << 8) | p[1]); }
static inline uint32_t get32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static inline uint64_t get64(const uint8_t *p) { return ((uint64_t)get32(p) << 32) | get32(p + 4); }

static int fail(bp_mp_reader *r, int error)
{
    if (!r->error)
        r->error = error;
    return -1;
}

/* True when n more bytes are available. */
static inline int avail(const bp_mp_reader *r, size_t n) { return n <= r->len - r->pos; }

/* Read a big-endian unsigned number of `width` bytes at pos+1 (after the tag). */
static int tail(bp_mp_reader *r, int width, uint64_t *v)
{
    if (!avail(r, 1 + (size_t)width))
        return fail(r, BP_MP_ETRUNC);
    const uint8_t *p = r->buf + r->pos + 1;
    switch (width) {
    case 1: *v = p[0]; break;
    case 2: *v = get16(p); break;
    case 4: *v = get32(p); break;
    case 8: *v = get64(p); break;
    default: *v = 0; break;
    }
    r->pos += 1 + (size_t)width;
    return 0;
}

bp_mp_kind bp_mp_peek(const bp_mp_reader *r)
{
    if (r->error)
        return BP_MP_INVALID;
    if (!avail(r, 1))
        return BP_MP_END;
    uint8_t b = r->buf[r->pos];
    if (b < 0x80 || (b >= 0xcc && b <= 0xcf)) return BP_MP_UINT;
    if (b >= 0xe0 || (b >= 0xd0 && b <= 0xd3)) return BP_MP_INT;
    if (b >= 0x80 && b <= 0x8f) return BP_MP_MAP;
    if (b >= 0x90 && b <= 0x9f) return BP_MP_ARRAY;
    if (b >= 0xa0 && b <= 0xbf) return BP_MP_STR;
    switch (b) {
    case 0xc0: return BP_MP_NIL;
    case 0xc2: case 0xc3: return BP_MP_BOOL;
    case 0xc4: case 0xc5: case 0xc6: return BP_MP_BIN;
    case 0xc7: case 0xc8: case 0xc9: return BP_MP_EXT;
    case 0xca: return BP_MP_FLOAT32;
    case 0xcb: return BP_MP_FLOAT64;
    case 0xd4: case 0xd5: case 0xd6: case 0xd7: case 0xd8: return BP_MP_EXT;
    case 0xd9: case 0xda: case 0xdb: return BP_MP_STR;
    case 0xdc: case 0xdd: return BP_MP_ARRAY;
    case 0xde: case 0xdf: return BP_MP_MAP;
    default: return BP_MP_INVALID;  /* 0xc1 is never used */
    }
}

int bp_mp_read_nil(bp_mp_reader *r)
{
    if (r->error) return -1;
    if (!avail(r, 1)) return fail(r, BP_MP_ETRUNC);
    if (r->buf[r->pos] != 0xc0) return fail(r, BP_MP_ETYPE);
    r->pos++;
    return 0;
}

int bp_mp_read_bool(bp_mp_reader *r, int *v)
{
    if (r->error) return -1;
    if (!avail(r, 1)) return fail(r, BP_MP_ETRUNC);
    uint8_t b = r->buf[r->pos];
    if (b != 0xc2 && b != 0xc3) return fail(r, BP_MP_ETYPE);
    *v = b == 0xc3;
    r->pos++;
    return 0;
}

/*
 * Decode any integer form.  *neg tells whether the value is negative; then *mag holds it as
 * int64 bits, otherwise as uint64.
 */
static int read_integer(bp_mp_reader *r, uint64_t *bits, int *neg)
{
    if (r->error) return -1;
    if (!avail(r, 1)) return fail(r, BP_MP_ETRUNC);
    uint8_t b = r->buf[r->pos];
    uint64_t v;
    *neg = 0;
    if (b < 0x80) { *bits = b; r->pos++; return 0; }
    if (b >= 0xe0) { *bits = (uint64_t)(int64_t)(int8_t)b; *neg = 1; r->pos++; return 0; }
    switch (b) {
    case 0xcc: if (tail(r, 1, &v)) return -1; *bits = v; return 0;
    case 0xcd: if (tail(r, 2, &v)) return -1; *bits = v; return 0;
    case 0xce: if (tail(r, 4, &v)) return -1; *bits = v; return 0;
    case 0xcf: if (tail(r, 8, &v)) return -1; *bits = v; return 0;
    case 0xd0: if (tail(r, 1, &v)) return -1; *bits = (uint64_t)(int64_t)(int8_t)v; break;
    case 0xd1: if (tail(r, 2, &v)) return -1; *bits = (uint64_t)(int64_t)(int16_t)v; break;
    case 0xd2: if (tail(r, 4, &v)) return -1; *bits = (uint64_t)(int64_t)(int32_t)v; break;
    case 0xd3: if (tail(r, 8, &v)) return -1; *bits = v; break;
    default: return fail(r, BP_MP_ETYPE);
    }
    /* Signed forms may carry non-negative values (other encoders use them). */
    *neg = (int64_t)*bits < 0;
    return 0;
}

int bp_mp_read_int(bp_mp_reader *r, int64_t *v)
{
    size_t start = r->pos;
    uint64_t bits;
    int neg;
    if (read_integer(r, &bits, &neg)) return -1;
    if (!neg && bits > (uint64_t)INT64_MAX) { r->pos = start; return fail(r, BP_MP_ERANGE); }
    *v = (int64_t)bits;
    return 0;
}

int bp_mp_read_uint(bp_mp_reader *r, uint64_t *v)
{
    size_t start = r->pos;
    uint64_t bits;
    int neg;
    if (read_integer(r, &bits, &neg)) return -1;
    if (neg) { r->pos = start; return fail(r, BP_MP_ERANGE); }
    *v = bits;
    return 0;
}

int bp_mp_read_optional_int(bp_mp_reader *r, int64_t *v, int *present)
{
    if (bp_mp_peek(r) == BP_MP_NIL) {
        *present = 0;
        return bp_mp_read_nil(r);
    }
    *present = 1;
    return bp_mp_read_int(r, v);
}

int bp_mp_read_double(bp_mp_reader *r, double *v)
{
    if (r->error) return -1;
    if (!avail(r, 1)) return fail(r, BP_MP_ETRUNC);
    uint64_t bits;
    if (r->buf[r->pos] == 0xcb) {
        if (tail(r, 8, &bits)) return -1;
        memcpy(v, &bits, sizeof *v);
        return 0;
    }
    if (r->buf[r->pos] == 0xca) {
        float f;
        uint32_t b32;
        if (tail(r, 4, &bits)) return -1;
        b32 = (uint32_t)bits;
        memcpy(&f, &b32, sizeof f);
        *v = f;
        return 0;
    }
    return fail(r, BP_MP_ETYPE);
}

/* Read a length-prefixed payload header and return the payload, bounds-checked. */
static int payload(bp_mp_reader *r, int width, const uint8_t **p, uint32_t *n)
{
    uint64_t len;
    size_t start = r->pos;
    if (width == 0) { len = r->buf[r->pos] & 0x1f; r->pos++; }
    else if (tail(r, width, &len)) return -1;
    if (!avail(r, (size_t)len)) { r->pos = start; return fail(r, BP_MP_ETRUNC); }
    *p = r->buf + r->pos;
    *n = (uint32_t)len;
    r->pos += (size_t)len;
    return 0;
}

int bp_mp_read_str(bp_mp_reader *r, const char **p, uint32_t *n)
{
    if (r->error) return -1;
    if (!avail(r, 1)) return fail(r, BP_MP_ETRUNC);
    uint8_t b = r->buf[r->pos];
    const uint8_t *q;
    int rc;
    if (b >= 0xa0 && b <= 0xbf) rc = payload(r, 0, &q, n);
    else if (b == 0xd9) rc = payload(r, 1, &q, n);
    else if (b == 0xda) rc = payload(r, 2, &q, n);
    else if (b == 0xdb) rc = payload(r, 4, &q, n);
    else return fail(r, BP_MP_ETYPE);
    if (rc == 0) *p = (const char *)q;
    return rc;
}

int bp_mp_read_cstr(bp_mp_reader *r, char *dst, size_t cap)
{
    size_t start = r->pos;
    const char *p;
    uint32_t n;
    if (bp_mp_read_str(r, &p, &n)) return -1;
    /* An embedded NUL would silently truncate a path: refuse it. */
    if ((size_t)n >= cap || memchr(p, 0, n)) { r->pos = start; return fail(r, BP_MP_ERANGE); }
    memcpy(dst, p, n);
    dst[n] = 0;
    return 0;
}

int bp_mp_read_bin(bp_mp_reader *r, const void **p, uint32_t *n)
{
    if (r->error) return -1;
    if (!avail(r, 1)) return fail(r, BP_MP_ETRUNC);
    const uint8_t *q;
    int rc;
    switch (r->buf[r->pos]) {
    case 0xc4: rc = payload(r, 1, &q, n); break;
    case 0xc5: rc = payload(r, 2, &q, n); break;
    case 0xc6: rc = payload(r, 4, &q, n); break;
    default: return fail(r, BP_MP_ETYPE);
    }
    if (rc == 0) *p = q;
    return rc;
}

int bp_mp_read_array(bp_mp_reader *r, uint32_t *n)
{
    if (r->error) return -1;
    if (!avail(r, 1)) return fail(r, BP_MP_ETRUNC);
    uint8_t b = r->buf[r->pos];
    uint64_t v;
    if (b >= 0x90 && b <= 0x9f) { *n = b & 0x0f; r->pos++; return 0; }
    if (b == 0xdc) { if (tail(r, 2, &v)) return -1; *n = (uint32_t)v; return 0; }
    if (b == 0xdd) { if (tail(r, 4, &v)) return -1; *n = (uint32_t)v; return 0; }
    return fail(r, BP_MP_ETYPE);
}

int bp_mp_read_map(bp_mp_reader *r, uint32_t *n)
{
    if (r->error) return -1;
    if (!avail(r, 1)) return fail(r, BP_MP_ETRUNC);
    uint8_t b = r->buf[r->pos];
    uint64_t v;
    if (b >= 0x80 && b <= 0x8f) { *n = b & 0x0f; r->pos++; return 0; }
    if (b == 0xde) { if (tail(r, 2, &v)) return -1; *n = (uint32_t)v; return 0; }
    if (b == 0xdf) { if (tail(r, 4, &v)) return -1; *n = (uint32_t)v; return 0; }
    return fail(r, BP_MP_ETYPE);
}

int bp_mp_read_ext(bp_mp_reader *r, int8_t *type, const void **p, uint32_t *n)
{
    if (r->error) return -1;
    if (!avail(r, 1)) return fail(r, BP_MP_ETRUNC);
    size_t start = r->pos;
    uint8_t b = r->buf[r->pos];
    uint64_t len;
    switch (b) {
    case 0xd4: len = 1; r->pos++; break;
    case 0xd5: len = 2; r->pos++; break;
    case 0xd6: len = 4; r->pos++; break;
    case 0xd7: len = 8; r->pos++; break;
    case 0xd8: len = 16; r->pos++; break;
    case 0xc7: if (tail(r, 1, &len)) return -1; break;
    case 0xc8: if (tail(r, 2, &len)) return -1; break;
    case 0xc9: if (tail(r, 4, &len)) return -1; break;
    default: return fail(r, BP_MP_ETYPE);
    }
    if (!avail(r, 1 + (size_t)len)) { r->pos = start; return fail(r, BP_MP_ETRUNC); }
    *type = (int8_t)r->buf[r->pos];
    *p = r->buf + r->pos + 1;
    *n = (uint32_t)len;
    r->pos += 1 + (size_t)len;
    return 0;
}

/*
 * Skip one value.  Iterative: a count of values still to skip replaces recursion, so hostile
 * nesting cannot exhaust the stack; a bogus element count fails at the end of the data.
 */
int bp_mp_skip(bp_mp_reader *r)
{
    uint64_t pending = 1;
    while (pending > 0) {
        uint32_t n;
        const void *p;
        const char *s;
        int8_t t;
        int64_t i;
        uint64_t u;
        double d;
        int b;
        int rc;
        pending--;
        switch (bp_mp_peek(r)) {
        case BP_MP_NIL: rc = bp_mp_read_nil(r); break;
        case BP_MP_BOOL: rc = bp_mp_read_bool(r, &b); break;
        case BP_MP_UINT: rc = bp_mp_read_uint(r, &u); break;
        case BP_MP_INT: rc = bp_mp_read_int(r, &i); break;
        case BP_MP_FLOAT32: case BP_MP_FLOAT64: rc = bp_mp_read_double(r, &d); break;
        case BP_MP_STR: rc = bp_mp_read_str(r, &s, &n); break;
        case BP_MP_BIN: rc = bp_mp_read_bin(r, &p, &n); break;
        case BP_MP_EXT: rc = bp_mp_read_ext(r, &t, &p, &n); break;
        case BP_MP_ARRAY: rc = bp_mp_read_array(r, &n); if (!rc) pending += n; break;
        case BP_MP_MAP: rc = bp_mp_read_map(r, &n); if (!rc) pending += 2 * (uint64_t)n; break;
        case BP_MP_END: return fail(r, BP_MP_ETRUNC);
        default: return fail(r, r->error ? r->error : BP_MP_EINVAL);
        }
        if (rc) return -1;
    }
    return 0;
}

const char *bp_mp_strerror(int error)
{
    switch (error) {
    case BP_MP_OK: return "no error";
    case BP_MP_ENOSPC: return "msgpack buffer full";
    case BP_MP_ETRUNC: return "msgpack data truncated";
    case BP_MP_ETYPE: return "msgpack value of unexpected type";
    case BP_MP_ERANGE: return "msgpack value out of range";
    case BP_MP_EDEPTH: return "msgpack nesting too deep";
    case BP_MP_EINVAL: return "invalid msgpack byte";
    default: return "unknown msgpack error";
    }
}
