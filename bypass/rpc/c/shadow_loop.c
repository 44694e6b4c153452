/*
 * shadow_loop.c — the shadow's per-connection call loop, as a CPython extension module.
 *
 * One synchronous call costs the shadow: receive a frame, decode [call, seq, args...], run
 * the Python handler, encode [seq, status, result], send.  Written in Python, everything but
 * the handler costs ~5 µs of interpreter time per call, as much as the whole C-to-C socket
 * round trip; here it costs well under 1 µs, so only the handler (the shadow action, which
 * stays Python) is paid for in Python.  cffi cannot build Python objects from C, hence the
 * plain C API.
 *
 * It speaks exactly what bypass/rpc/server.py's Python loop speaks (that loop remains the
 * fallback when no compiler is at hand and the reference for behaviour):
 *   - frames are a 4-byte big-endian length and one msgpack value; oversize, truncated,
 *     undecodable or multi-value frames raise ProtocolError (the caller closes the connection
 *     and logs it); a clean end of stream between frames raises EOFError;
 *   - strings decode with surrogateescape (paths need not be UTF-8), ext types are refused;
 *   - a handler's exception goes to the Python `exception_reply(call, exc)`, which returns the
 *     [status, value] to send (errno or failure; logging happens there);
 *   - a result the C encoder does not know goes to the Python `pack_reply(seq, call, result)`,
 *     which returns the frame body (or a failure reply when msgpack cannot carry it);
 *   - [n, FileRegion] results are sent with sendfile, [n, big buffer] results without copying.
 * The GIL is released around every recv/send/sendfile, so other connections run meanwhile.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <poll.h>
#include <time.h>
#include <unistd.h>
#include <stdint.h>
#include <string.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>

#include "msgpack.h"

#define HEADER 4
#define RECV_SIZE (64 * 1024)          /* one recv brings a whole small request */
#define KEEP_BUFFER (1024 * 1024)      /* a connection keeps at most this after a big frame */
#define MAX_DEPTH 64                   /* requests are shallow; deeper nesting is hostile */
#define SMALL_ARGS 16

/* What the server hands us once per connection. */
typedef struct {
    int fd;
    PyObject *ctx;              /* CallContext: first argument of every handler */
    PyObject *dispatch;         /* dict: call number -> handler */
    PyObject *no_such_call;     /* handler for unknown numbers */
    PyObject *exception_reply;  /* (call, exc) -> [status, value] */
    PyObject *pack_reply;       /* (seq, call, result) -> bytes (frame body) */
    PyObject *file_region;      /* the FileRegion type */
    PyObject *protocol_error;   /* the ProtocolError type */
    Py_ssize_t max_frame;
    Py_ssize_t small;           /* buffers above this go out without a copy */
    Py_ssize_t budget;          /* bytes of big frames this process receives at once (0: any) */
    double frame_timeout;       /* seconds a big frame may take to arrive (0: no limit) */
    double deadline;            /* CLOCK_MONOTONIC seconds, while a big frame arrives */

    uint8_t *in;                /* receive buffer: `have` bytes, frames at the front */
    size_t in_cap, have;
    bp_mp_writer out;           /* reply being built; first HEADER bytes left for the length */
} conn;

static PyObject *protocol_error(conn *c, const char *fmt, ...)
{
    char msg[200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    PyErr_SetString(c->protocol_error, msg);
    return NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* socket I/O, GIL released                                                                   */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Bytes of big frames being received by all connections of this process: a client that sends
 * most of a frame and stops must not hold memory without bound or for ever.  A big frame
 * waits (up to frame_timeout) for room in the budget, then must arrive within frame_timeout. */
static Py_ssize_t in_flight;

static int reserve(conn *c, size_t n)
{
    if (c->budget <= 0)
        return 0;
    double until = now_s() + (c->frame_timeout > 0 ? c->frame_timeout : 60);
    for (;;) {
        Py_ssize_t cur = __atomic_load_n(&in_flight, __ATOMIC_RELAXED);
        if (cur + (Py_ssize_t)n <= c->budget || cur == 0) {
            if (__atomic_compare_exchange_n(&in_flight, &cur, cur + (Py_ssize_t)n, 0, __ATOMIC_ACQ_REL,
                                            __ATOMIC_RELAXED))
                return 0;
            continue;
        }
        if (now_s() > until) {
            protocol_error(c, "%zd bytes of frames already arriving: no room for %zu more", cur, n);
            return -1;
        }
        Py_BEGIN_ALLOW_THREADS
        usleep(10000);
        Py_END_ALLOW_THREADS
    }
}

static void unreserve(conn *c, size_t n)
{
    if (c->budget > 0)
        __atomic_sub_fetch(&in_flight, (Py_ssize_t)n, __ATOMIC_ACQ_REL);
}

/* Have at least `need` bytes in c->in.  0: ok; -1: exception set (EOFError only when the
 * stream ended cleanly before the first byte of a frame). */
static int fill(conn *c, size_t need)
{
    if (need > c->in_cap) {
        size_t cap = need > 2 * c->in_cap ? need : 2 * c->in_cap;
        uint8_t *p = realloc(c->in, cap);
        if (!p) {
            PyErr_NoMemory();
            return -1;
        }
        c->in = p;
        c->in_cap = cap;
    }
    while (c->have < need) {
        ssize_t k;
        int late = 0;
        Py_BEGIN_ALLOW_THREADS
        if (c->deadline > 0) {
            struct pollfd p = { .fd = c->fd, .events = POLLIN };
            double left = c->deadline - now_s();
            int r;
            do
                r = poll(&p, 1, left > 0 ? (int)(left * 1000) + 1 : 0);
            while (r < 0 && errno == EINTR);
            late = r == 0;
        }
        do
            k = late ? 0 : recv(c->fd, c->in + c->have, c->in_cap - c->have, 0);
        while (k < 0 && errno == EINTR);
        Py_END_ALLOW_THREADS
        if (late) {
            protocol_error(c, "a frame of %zu bytes did not arrive within %g s", need, c->frame_timeout);
            return -1;
        }
        if (k < 0) {
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
        if (k == 0) {
            if (c->have == 0)
                PyErr_SetNone(PyExc_EOFError);
            else
                protocol_error(c, "connection closed inside a frame");
            return -1;
        }
        c->have += (size_t)k;
    }
    return 0;
}

static int send_iov(conn *c, struct iovec *iov, int n)
{
    int rc = 0;
    Py_BEGIN_ALLOW_THREADS
    while (n > 0) {
        struct msghdr m = { .msg_iov = iov, .msg_iovlen = (size_t)n };
        ssize_t k = sendmsg(c->fd, &m, MSG_NOSIGNAL);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            rc = -1;
            break;
        }
        while (n > 0 && (size_t)k >= iov->iov_len) {
            k -= (ssize_t)iov->iov_len;
            iov++;
            n--;
        }
        if (n > 0) {
            iov->iov_base = (char *)iov->iov_base + k;
            iov->iov_len -= (size_t)k;
        }
    }
    Py_END_ALLOW_THREADS
    if (rc < 0)
        PyErr_SetFromErrno(PyExc_OSError);
    return rc;
}

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}

/* Send c->out (its first HEADER bytes become the body length). */
static int send_reply(conn *c)
{
    if (c->out.error)
        return (PyErr_NoMemory(), -1);
    put32(c->out.buf, (uint32_t)(c->out.len - HEADER));
    struct iovec iov = { c->out.buf, c->out.len };
    return send_iov(c, &iov, 1);
}

/* ------------------------------------------------------------------------------------------ */
/* msgpack -> Python                                                                          */

static PyObject *decode(conn *c, bp_mp_reader *r, int depth);

static PyObject *undecodable(conn *c, bp_mp_reader *r)
{
    return protocol_error(c, "undecodable frame: %s", bp_mp_strerror(r->error ? r->error : BP_MP_EINVAL));
}

static PyObject *decode_array(conn *c, bp_mp_reader *r, int depth)
{
    uint32_t n;
    if (bp_mp_read_array(r, &n) < 0)
        return undecodable(c, r);
    if (n > r->len - r->pos)       /* every element takes at least one byte */
        return protocol_error(c, "undecodable frame: an array claims %u elements", n);
    PyObject *list = PyList_New(n);
    if (!list)
        return NULL;
    for (uint32_t i = 0; i < n; i++) {
        PyObject *item = decode(c, r, depth + 1);
        if (!item) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, item);
    }
    return list;
}

static PyObject *decode_map(conn *c, bp_mp_reader *r, int depth)
{
    uint32_t n;
    if (bp_mp_read_map(r, &n) < 0)
        return undecodable(c, r);
    if ((uint64_t)n * 2 > r->len - r->pos)
        return protocol_error(c, "undecodable frame: a map claims %u entries", n);
    PyObject *dict = PyDict_New();
    if (!dict)
        return NULL;
    for (uint32_t i = 0; i < n; i++) {
        PyObject *k = decode(c, r, depth + 1);
        PyObject *v = k ? decode(c, r, depth + 1) : NULL;
        int rc = v ? PyDict_SetItem(dict, k, v) : -1;
        Py_XDECREF(k);
        Py_XDECREF(v);
        if (rc < 0) {
            Py_DECREF(dict);
            if (v && PyErr_ExceptionMatches(PyExc_TypeError)) {    /* unhashable key */
                PyErr_Clear();
                return protocol_error(c, "undecodable frame: a map key is not hashable");
            }
            return NULL;
        }
    }
    return dict;
}

static PyObject *decode(conn *c, bp_mp_reader *r, int depth)
{
    if (depth > MAX_DEPTH)
        return protocol_error(c, "undecodable frame: nested deeper than %d", MAX_DEPTH);
    union { int b; int64_t i; uint64_t u; double d; } v;
    const void *p;
    uint32_t n;
    switch (bp_mp_peek(r)) {
    case BP_MP_NIL:
        bp_mp_read_nil(r);
        Py_RETURN_NONE;
    case BP_MP_BOOL:
        bp_mp_read_bool(r, &v.b);
        return PyBool_FromLong(v.b);
    case BP_MP_UINT:
        if (bp_mp_read_uint(r, &v.u) < 0)
            return undecodable(c, r);
        return PyLong_FromUnsignedLongLong(v.u);
    case BP_MP_INT:
        if (bp_mp_read_int(r, &v.i) < 0)
            return undecodable(c, r);
        return PyLong_FromLongLong(v.i);
    case BP_MP_FLOAT32:
    case BP_MP_FLOAT64:
        if (bp_mp_read_double(r, &v.d) < 0)
            return undecodable(c, r);
        return PyFloat_FromDouble(v.d);
    case BP_MP_STR:
        if (bp_mp_read_str(r, (const char **)&p, &n) < 0)
            return undecodable(c, r);
        return PyUnicode_DecodeUTF8(p, n, "surrogateescape");
    case BP_MP_BIN:
        if (bp_mp_read_bin(r, &p, &n) < 0)
            return undecodable(c, r);
        return PyBytes_FromStringAndSize(p, n);
    case BP_MP_ARRAY:
        return decode_array(c, r, depth);
    case BP_MP_MAP:
        return decode_map(c, r, depth);
    case BP_MP_EXT:
        return protocol_error(c, "undecodable frame: msgpack ext types are not part of the protocol");
    case BP_MP_END:
        return protocol_error(c, "undecodable frame: %s", bp_mp_strerror(BP_MP_ETRUNC));
    default:
        return undecodable(c, r);
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Python -> msgpack (byte for byte what msgpack.Packer(use_bin_type=True) writes)            */

#define UNKNOWN 1   /* encode(): a type for pack_reply to deal with (no exception set) */

static int encode(bp_mp_writer *w, PyObject *o, int depth)
{
    if (depth > MAX_DEPTH)
        return UNKNOWN;
    if (o == Py_None)
        return bp_mp_write_nil(w);
    if (PyBool_Check(o))
        return bp_mp_write_bool(w, o == Py_True);
    if (PyLong_Check(o)) {
        int overflow;
        long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
        if (overflow == 0)
            return v == -1 && PyErr_Occurred() ? (PyErr_Clear(), UNKNOWN) : bp_mp_write_int(w, v);
        if (overflow > 0) {
            unsigned long long u = PyLong_AsUnsignedLongLong(o);
            if (!PyErr_Occurred())
                return bp_mp_write_uint(w, u);
            PyErr_Clear();
        }
        return UNKNOWN;            /* beyond 64 bits: msgpack's own error message */
    }
    if (PyFloat_Check(o))
        return bp_mp_write_double(w, PyFloat_AS_DOUBLE(o));
    if (PyUnicode_Check(o)) {
        Py_ssize_t n;
        const char *s = PyUnicode_AsUTF8AndSize(o, &n);
        if (s)
            return (uint64_t)n > UINT32_MAX ? UNKNOWN : bp_mp_write_str(w, s, (size_t)n);
        PyErr_Clear();              /* lone surrogates: the bytes they escape */
        PyObject *b = PyUnicode_AsEncodedString(o, "utf-8", "surrogateescape");
        if (!b) {
            PyErr_Clear();
            return UNKNOWN;
        }
        int rc = (uint64_t)PyBytes_GET_SIZE(b) > UINT32_MAX ? UNKNOWN
                 : bp_mp_write_str(w, PyBytes_AS_STRING(b), (size_t)PyBytes_GET_SIZE(b));
        Py_DECREF(b);
        return rc;
    }
    if (PyBytes_Check(o) || PyByteArray_Check(o) || PyMemoryView_Check(o)) {
        Py_buffer view;
        if (PyObject_GetBuffer(o, &view, PyBUF_C_CONTIGUOUS) < 0) {
            PyErr_Clear();
            return UNKNOWN;
        }
        int rc = (uint64_t)view.len > UINT32_MAX ? UNKNOWN : bp_mp_write_bin(w, view.buf, (size_t)view.len);
        PyBuffer_Release(&view);
        return rc;
    }
    if (PyList_Check(o) || PyTuple_Check(o)) {
        Py_ssize_t n = PySequence_Fast_GET_SIZE(o);
        PyObject **items = PySequence_Fast_ITEMS(o);
        if ((uint64_t)n > UINT32_MAX)
            return UNKNOWN;
        int rc = bp_mp_write_array(w, (uint32_t)n);
        for (Py_ssize_t i = 0; i < n && rc == 0; i++)
            rc = encode(w, items[i], depth + 1);
        return rc;
    }
    if (PyDict_Check(o)) {
        Py_ssize_t pos = 0, n = PyDict_GET_SIZE(o);
        PyObject *k, *v;
        if ((uint64_t)n > UINT32_MAX)
            return UNKNOWN;
        int rc = bp_mp_write_map(w, (uint32_t)n);
        while (rc == 0 && PyDict_Next(o, &pos, &k, &v)) {
            rc = encode(w, k, depth + 1);
            if (rc == 0)
                rc = encode(w, v, depth + 1);
        }
        return rc;
    }
    return UNKNOWN;
}

static int out_grow(bp_mp_writer *w, size_t need)
{
    size_t cap = w->cap * 2 > need ? w->cap * 2 : need;
    uint8_t *p = realloc(w->buf, cap);
    if (!p)
        return -1;
    w->buf = p;
    w->cap = cap;
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* replies                                                                                    */

/* The frame header and msgpack of [seq, STATUS_OK, [n, <bin32 of `len` bytes>]] up to the
 * payload, which the caller sends right after (from a file or a Python buffer). */
static int envelope(conn *c, int64_t seq, int64_t n, uint64_t len)
{
    bp_mp_writer *w = &c->out;
    w->len = HEADER;
    bp_mp_write_array(w, 3);
    bp_mp_write_int(w, seq);
    bp_mp_write_int(w, 0);
    bp_mp_write_array(w, 2);
    bp_mp_write_int(w, n);
    uint8_t bin32[5] = { 0xc6 };
    put32(bin32 + 1, (uint32_t)len);
    bp_mp_write_raw(w, bin32, sizeof bin32);
    if (w->error)
        return (PyErr_NoMemory(), -1);
    put32(w->buf, (uint32_t)(w->len - HEADER + len));
    return 0;
}

static int long_attr(PyObject *o, const char *name, long long *v)
{
    PyObject *a = PyObject_GetAttrString(o, name);
    if (!a)
        return -1;
    *v = PyLong_AsLongLong(a);
    Py_DECREF(a);
    return *v == -1 && PyErr_Occurred() ? -1 : 0;
}

/* [n, FileRegion(fd, offset, count)]: envelope, then the bytes straight from the file. */
static int send_file_reply(conn *c, int64_t seq, int64_t n, PyObject *region)
{
    long long fd, offset, count;
    if (long_attr(region, "fd", &fd) < 0 || long_attr(region, "offset", &offset) < 0
        || long_attr(region, "count", &count) < 0)
        return -1;
    if (count < 0 || count > UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "FileRegion count out of range");
        return -1;
    }
    if (envelope(c, seq, n, (uint64_t)count) < 0)
        return -1;
    struct iovec iov = { c->out.buf, c->out.len };
    if (send_iov(c, &iov, 1) < 0)
        return -1;
    off_t off = (off_t)offset;
    long long left = count;
    int err = 0;
    Py_BEGIN_ALLOW_THREADS
    while (left > 0) {
        ssize_t k = sendfile(c->fd, (int)fd, &off, (size_t)left);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0) {
            err = k < 0 ? errno : 0;
            break;
        }
        left -= k;
    }
    Py_END_ALLOW_THREADS
    if (left > 0) {
        if (err) {
            errno = err;
            PyErr_SetFromErrno(PyExc_OSError);
        } else {
            protocol_error(c, "file shrank while being sent");
        }
        return -1;
    }
    return 0;
}

/* [n, big buffer]: envelope and the caller's bytes in one sendmsg, never copied. */
static int send_buffer_reply(conn *c, int64_t seq, int64_t n, PyObject *data)
{
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_C_CONTIGUOUS) < 0)
        return -1;
    int rc = -1;
    if ((uint64_t)view.len > UINT32_MAX)
        PyErr_SetString(PyExc_ValueError, "reply buffer over 4 GiB");
    else if (envelope(c, seq, n, (uint64_t)view.len) == 0) {
        struct iovec iov[2] = { { c->out.buf, c->out.len }, { view.buf, (size_t)view.len } };
        rc = send_iov(c, iov, 2);
    }
    PyBuffer_Release(&view);
    return rc;
}

/* Send the handler's result: 1 when it was one of the big-data shapes (sent), 0 when it is
 * for the encoder, -1 on error. */
static int send_big_result(conn *c, int64_t seq, PyObject *result)
{
    if (!PyList_CheckExact(result) || PyList_GET_SIZE(result) != 2 || !PyLong_CheckExact(PyList_GET_ITEM(result, 0)))
        return 0;
    PyObject *data = PyList_GET_ITEM(result, 1);
    int overflow;
    long long n = PyLong_AsLongLongAndOverflow(PyList_GET_ITEM(result, 0), &overflow);
    if (overflow)
        return 0;
    if (Py_IS_TYPE(data, (PyTypeObject *)c->file_region))
        return send_file_reply(c, seq, n, data) < 0 ? -1 : 1;
    if ((PyBytes_CheckExact(data) || PyByteArray_CheckExact(data) || PyMemoryView_Check(data))
        && PyObject_Length(data) > c->small)
        return send_buffer_reply(c, seq, n, data) < 0 ? -1 : 1;
    return 0;
}

/* Encode [seq, status, value] into c->out; UNKNOWN leaves it to Python's packer. */
static int encode_reply(conn *c, int64_t seq, int status, PyObject *value)
{
    bp_mp_writer *w = &c->out;
    w->len = HEADER;
    w->error = 0;
    bp_mp_write_array(w, 3);
    bp_mp_write_int(w, seq);
    bp_mp_write_int(w, status);
    int rc = encode(w, value, 0);
    if (rc == 0 && w->error)
        return (PyErr_NoMemory(), -1);
    return rc;
}

/* The reply body from the Python packer, for results the C encoder does not handle. */
static int python_reply(conn *c, int64_t seq, int64_t call, PyObject *result)
{
    PyObject *body = PyObject_CallFunction(c->pack_reply, "LLO", (long long)seq, (long long)call, result);
    if (!body)
        return -1;
    if (!PyBytes_Check(body)) {
        Py_DECREF(body);
        PyErr_SetString(PyExc_TypeError, "pack_reply must return bytes");
        return -1;
    }
    bp_mp_writer *w = &c->out;
    w->len = HEADER;
    w->error = 0;
    bp_mp_write_raw(w, PyBytes_AS_STRING(body), (size_t)PyBytes_GET_SIZE(body));
    Py_DECREF(body);
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* one call                                                                                   */

static int read_id(bp_mp_reader *r, int64_t *v)
{
    bp_mp_kind k = bp_mp_peek(r);
    return (k == BP_MP_INT || k == BP_MP_UINT) ? bp_mp_read_int(r, v) : -1;
}

/* Serve the frame at the front of c->in (body of `len` bytes).  0 or -1 (exception set). */
static int serve_frame(conn *c, size_t len)
{
    bp_mp_reader r;
    bp_mp_reader_init(&r, c->in + HEADER, len);
    uint32_t count;
    int64_t call, seq;
    if (bp_mp_peek(&r) != BP_MP_ARRAY || bp_mp_read_array(&r, &count) < 0 || count < 2) {
        protocol_error(c, "request is not an array [call, seq, args...]");
        return -1;
    }
    if (read_id(&r, &call) < 0 || read_id(&r, &seq) < 0) {
        protocol_error(c, "request call number and sequence must be integers");
        return -1;
    }
    size_t nargs = count - 2;
    if (nargs > r.len - r.pos) {
        protocol_error(c, "undecodable frame: a request claims %zu arguments", nargs);
        return -1;
    }
    PyObject *small_argv[SMALL_ARGS + 1];
    PyObject **argv = nargs < SMALL_ARGS ? small_argv : PyMem_Malloc((nargs + 1) * sizeof *argv);
    if (!argv) {
        PyErr_NoMemory();
        return -1;
    }
    int rc = -1;
    size_t have = 0;
    argv[0] = c->ctx;
    for (; have < nargs; have++)
        if (!(argv[1 + have] = decode(c, &r, 1)))
            goto out;
    if (r.pos != r.len) {
        protocol_error(c, "frame holds more than one value");
        goto out;
    }

    PyObject *key = PyLong_FromLongLong(call);
    if (!key)
        goto out;
    PyObject *handler = PyDict_GetItemWithError(c->dispatch, key);   /* borrowed */
    Py_DECREF(key);
    if (!handler) {
        if (PyErr_Occurred())
            goto out;
        handler = c->no_such_call;
    }
    Py_INCREF(handler);
    PyObject *result = PyObject_Vectorcall(handler, argv, 1 + nargs, NULL);
    Py_DECREF(handler);

    int enc;
    if (result) {
        int big = send_big_result(c, seq, result);
        if (big != 0) {
            Py_DECREF(result);
            rc = big < 0 ? -1 : 0;
            goto out;
        }
        enc = encode_reply(c, seq, 0, result);
        if (enc == UNKNOWN)
            enc = python_reply(c, seq, call, result);
        Py_DECREF(result);
    } else {
        /* Exception: the server turns it into [status, value] (KeyboardInterrupt and other
         * non-Exception throwables end the connection, as in the Python loop). */
        if (!PyErr_ExceptionMatches(PyExc_Exception))
            goto out;
        PyObject *type, *exc, *tb;
        PyErr_Fetch(&type, &exc, &tb);
        PyErr_NormalizeException(&type, &exc, &tb);
        if (tb)
            PyException_SetTraceback(exc, tb);     /* so the server's log shows where */
        Py_XDECREF(type);
        Py_XDECREF(tb);
        PyObject *reply = PyObject_CallFunction(c->exception_reply, "LO", (long long)call, exc);
        Py_DECREF(exc);
        if (!reply)
            goto out;
        if (!PyList_Check(reply) || PyList_GET_SIZE(reply) != 2 || !PyLong_Check(PyList_GET_ITEM(reply, 0))) {
            Py_DECREF(reply);
            PyErr_SetString(PyExc_TypeError, "exception_reply must return [status, value]");
            goto out;
        }
        enc = encode_reply(c, seq, (int)PyLong_AsLong(PyList_GET_ITEM(reply, 0)), PyList_GET_ITEM(reply, 1));
        if (enc == UNKNOWN) {
            PyErr_SetString(PyExc_TypeError, "exception_reply returned a value msgpack cannot carry");
            enc = -1;
        }
        Py_DECREF(reply);
    }
    if (enc == 0)
        rc = send_reply(c);
out:
    for (size_t i = 0; i < have; i++)
        Py_DECREF(argv[1 + i]);
    if (argv != small_argv)
        PyMem_Free(argv);
    return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* the module                                                                                 */

static PyObject *serve(PyObject *self, PyObject *args, PyObject *kwargs)
{
    (void)self;
    static char *names[] = { "fd", "ctx", "dispatch", "no_such_call", "exception_reply", "pack_reply",
                             "file_region", "protocol_error", "max_frame", "small", "pending", "budget",
                             "frame_timeout", NULL };
    conn c = { 0 };
    Py_buffer pending = { 0 };
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "iOO!OOOOOnny*|nd:serve", names, &c.fd, &c.ctx,
                                     &PyDict_Type, &c.dispatch, &c.no_such_call, &c.exception_reply,
                                     &c.pack_reply, &c.file_region, &c.protocol_error, &c.max_frame,
                                     &c.small, &pending, &c.budget, &c.frame_timeout))
        return NULL;
    if (!PyType_Check(c.file_region) || !PyExceptionClass_Check(c.protocol_error) || c.max_frame <= 0) {
        PyBuffer_Release(&pending);
        PyErr_SetString(PyExc_TypeError, "serve: bad file_region, protocol_error or max_frame");
        return NULL;
    }
    c.in_cap = RECV_SIZE > (size_t)pending.len ? RECV_SIZE : (size_t)pending.len;
    c.in = malloc(c.in_cap);
    bp_mp_writer_init(&c.out, malloc(4096), 4096, out_grow, NULL);
    if (!c.in || !c.out.buf) {
        PyBuffer_Release(&pending);
        free(c.in);
        free(c.out.buf);
        return PyErr_NoMemory();
    }
    memcpy(c.in, pending.buf, (size_t)pending.len);
    c.have = (size_t)pending.len;
    PyBuffer_Release(&pending);

    for (;;) {
        if (fill(&c, HEADER) < 0)
            break;
        uint32_t len = ((uint32_t)c.in[0] << 24) | ((uint32_t)c.in[1] << 16) | ((uint32_t)c.in[2] << 8) | c.in[3];
        if (len > (size_t)c.max_frame) {
            protocol_error(&c, "frame of %u bytes exceeds the limit of %zd", len, c.max_frame);
            break;
        }
        int big = HEADER + (size_t)len > RECV_SIZE;
        if (big && reserve(&c, len) < 0)
            break;
        c.deadline = big && c.frame_timeout > 0 ? now_s() + c.frame_timeout : 0;
        int rc = fill(&c, HEADER + (size_t)len);
        c.deadline = 0;
        if (big)
            unreserve(&c, len);
        if (rc < 0 || serve_frame(&c, len) < 0)
            break;
        /* Drop the frame; a pipelined next one moves to the front. */
        c.have -= HEADER + (size_t)len;
        memmove(c.in, c.in + HEADER + len, c.have);
        if (c.in_cap > KEEP_BUFFER && c.have <= RECV_SIZE) {
            uint8_t *p = realloc(c.in, RECV_SIZE);
            if (p) {
                c.in = p;
                c.in_cap = RECV_SIZE;
            }
        }
        if (c.out.cap > KEEP_BUFFER) {
            uint8_t *p = realloc(c.out.buf, 4096);
            if (p) {
                c.out.buf = p;
                c.out.cap = 4096;
            }
        }
    }
    free(c.in);
    free(c.out.buf);
    return NULL;        /* always an exception: EOFError at a clean end */
}

/* ------------------------------------------------------------------------------------------ */
/* openat2 for the export root (bypass/rpc/export.py): every path an agent sends is looked up
 * with it, and through ctypes the call costs several times the system call itself.         */

#ifndef SYS_openat2
#define SYS_openat2 437             /* the same number on every Linux architecture */
#endif

static PyObject *py_openat2(PyObject *self, PyObject *args)
{
    (void)self;
    int dirfd;
    PyObject *path;
    unsigned long long how[3];      /* struct open_how: flags, mode, resolve */
    if (!PyArg_ParseTuple(args, "iO!KKK:openat2", &dirfd, &PyBytes_Type, &path, &how[0], &how[1], &how[2]))
        return NULL;
    long fd;
    int err;
    Py_BEGIN_ALLOW_THREADS
    fd = syscall(SYS_openat2, dirfd, PyBytes_AS_STRING(path), how, sizeof how);
    err = errno;
    Py_END_ALLOW_THREADS
    if (fd >= 0)
        return PyLong_FromLong(fd);
    /* OSError(errno, strerror, path) as export.py's ctypes fallback raises it */
    PyObject *name = PyUnicode_DecodeUTF8(PyBytes_AS_STRING(path), PyBytes_GET_SIZE(path), "surrogateescape");
    if (name == NULL)
        return NULL;
    errno = err;
    PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, name);
    Py_DECREF(name);
    return NULL;
}

static PyMethodDef methods[] = {
    { "openat2", py_openat2, METH_VARARGS,
      "openat2(dirfd, path, flags, mode, resolve) -> descriptor, or OSError(errno, strerror, path)." },
    { "serve", (PyCFunction)(void (*)(void))serve, METH_VARARGS | METH_KEYWORDS,
      "serve(fd, ctx, dispatch, no_such_call, exception_reply, pack_reply, file_region, protocol_error, "
      "max_frame, small, pending[, budget, frame_timeout]): answer calls on a connected socket until it ends (EOFError) or "
      "breaks the protocol (ProtocolError)." },
    { NULL, NULL, 0, NULL }
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_bypass_shadow_loop",
    "The shadow's per-connection call loop in C (see bypass/rpc/c_loop.py).", -1, methods,
    NULL, NULL, NULL, NULL
};

PyMODINIT_FUNC PyInit__bypass_shadow_loop(void)
{
    return PyModule_Create(&module);
}
