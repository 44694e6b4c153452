/*
 * msgpack.h — a small, allocation-free msgpack codec for the agent runtime.
 *
 * The agent runs inside arbitrary programs, sometimes before malloc is usable, so the codec
 * never allocates: the writer fills a caller-supplied buffer (optionally grown through a
 * callback the caller provides) and the reader works in place over a received frame, handing
 * out pointers into it for str/bin payloads.
 *
 * Encoding choices match the Python msgpack library (msgpack.packb, use_bin_type=True) byte
 * for byte: integers in their smallest form, str8 is used for strings, bin types for bytes,
 * fix/16/32 headers for arrays and maps.  Doubles are written as float64 (what Python floats
 * become); bp_mp_write_float writes float32 for callers that want it.
 *
 * Errors are sticky: after a failure every later call fails too and `error` stays set, so a
 * long encode/decode sequence can be checked once at the end.
 */
#ifndef BYPASS_MSGPACK_H
#define BYPASS_MSGPACK_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Error codes kept in writer/reader `error` (0 = none). */
enum {
    BP_MP_OK = 0,
    BP_MP_ENOSPC = 1,    /* writer: buffer full and it could not grow */
    BP_MP_ETRUNC = 2,    /* reader: the data ends inside a value */
    BP_MP_ETYPE = 3,     /* reader: the value has another type than asked for */
    BP_MP_ERANGE = 4,    /* reader: an integer does not fit the requested C type */
    BP_MP_EDEPTH = 5,    /* reserved (skipping is iterative, so nesting never fails) */
    BP_MP_EINVAL = 6     /* reader: a byte that starts no msgpack value (0xc1) */
};

/* Value kinds as seen by bp_mp_peek(). */
typedef enum {
    BP_MP_NIL, BP_MP_BOOL, BP_MP_UINT, BP_MP_INT, BP_MP_FLOAT32, BP_MP_FLOAT64,
    BP_MP_STR, BP_MP_BIN, BP_MP_ARRAY, BP_MP_MAP, BP_MP_EXT, BP_MP_INVALID, BP_MP_END
} bp_mp_kind;

typedef struct bp_mp_writer bp_mp_writer;

/*
 * Grow callback: make room for at least `need` bytes in total (w->cap >= need) by updating
 * w->buf and w->cap (keeping the first w->len bytes).  Return 0 on success, -1 if it cannot.
 */
typedef int (*bp_mp_grow_fn)(bp_mp_writer *w, size_t need);

struct bp_mp_writer {
    uint8_t *buf;
    size_t len;            /* bytes written so far */
    size_t cap;            /* size of buf */
    bp_mp_grow_fn grow;    /* NULL: fixed buffer */
    void *user;            /* for the grow callback */
    int error;
};

typedef struct {
    const uint8_t *buf;
    size_t len;
    size_t pos;
    int error;
} bp_mp_reader;

/* ---- writer ---- */
void bp_mp_writer_init(bp_mp_writer *w, void *buf, size_t cap, bp_mp_grow_fn grow, void *user);
int bp_mp_write_nil(bp_mp_writer *w);
int bp_mp_write_bool(bp_mp_writer *w, int v);
int bp_mp_write_int(bp_mp_writer *w, int64_t v);     /* smallest form, like msgpack-python */
int bp_mp_write_uint(bp_mp_writer *w, uint64_t v);
int bp_mp_write_float(bp_mp_writer *w, float v);
int bp_mp_write_double(bp_mp_writer *w, double v);
int bp_mp_write_str(bp_mp_writer *w, const char *s, size_t n);
int bp_mp_write_cstr(bp_mp_writer *w, const char *s); /* NULL writes nil */
int bp_mp_write_bin(bp_mp_writer *w, const void *p, size_t n);
int bp_mp_write_array(bp_mp_writer *w, uint32_t n);  /* header; then n values */
int bp_mp_write_map(bp_mp_writer *w, uint32_t n);    /* header; then n key/value pairs */
/* Headers only, for payloads the caller copies in afterwards (bp_mp_write_raw). */
int bp_mp_write_str_header(bp_mp_writer *w, uint32_t n);
int bp_mp_write_bin_header(bp_mp_writer *w, uint32_t n);
int bp_mp_write_raw(bp_mp_writer *w, const void *p, size_t n);
/* Reserve n bytes and return a pointer to them (NULL on failure); valid until the next write. */
void *bp_mp_write_reserve(bp_mp_writer *w, size_t n);

/* ---- reader ---- */
void bp_mp_reader_init(bp_mp_reader *r, const void *buf, size_t len);
bp_mp_kind bp_mp_peek(const bp_mp_reader *r);
int bp_mp_read_nil(bp_mp_reader *r);
int bp_mp_read_bool(bp_mp_reader *r, int *v);
int bp_mp_read_int(bp_mp_reader *r, int64_t *v);     /* any integer form that fits int64 */
int bp_mp_read_uint(bp_mp_reader *r, uint64_t *v);   /* any integer form that is >= 0 */
int bp_mp_read_double(bp_mp_reader *r, double *v);   /* float32 or float64 */
/* str/bin: *p points into the reader's buffer, not NUL-terminated. */
int bp_mp_read_str(bp_mp_reader *r, const char **p, uint32_t *n);
int bp_mp_read_bin(bp_mp_reader *r, const void **p, uint32_t *n);
/* Copy a str into dst (size cap) with a terminating NUL; ERANGE if it does not fit. */
int bp_mp_read_cstr(bp_mp_reader *r, char *dst, size_t cap);
int bp_mp_read_array(bp_mp_reader *r, uint32_t *n);
int bp_mp_read_map(bp_mp_reader *r, uint32_t *n);
int bp_mp_read_ext(bp_mp_reader *r, int8_t *type, const void **p, uint32_t *n);
/* Skip one whole value, however deeply nested (iterative, no recursion). */
int bp_mp_skip(bp_mp_reader *r);
/* Helpers: nil-or-int, for optional arguments. */
int bp_mp_read_optional_int(bp_mp_reader *r, int64_t *v, int *present);


const char *bp_mp_strerror(int error);

#ifdef __cplusplus
}
#endif
#endif
