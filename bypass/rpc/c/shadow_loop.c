/*
 * shadow_loop.c — the shadow's per-connection call loop, as a CPython extension module.
 *
 * One synchronous call costs the shadow: receive a frame, decode [call, seq, args...], run
 * the Python handler, encode [seq, status, result], send.  Written in Python, everything but
 * the handler costs ~5 µs of interpreter time per call, as much as the whole C-to-C socket
 * round trip; here it costs well under 1 µs, so only the handler (the shadow action, which
 * stays Python) is paid for in Python — but for the few actions a spec declares native,
 * performed here ("native actions" below).  cffi cannot build Python objects from C, hence
 * the plain C API.
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
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <sched.h>
#include <time.h>
#include <unistd.h>
#include <stdint.h>
#include <string.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>

#include "msgpack.h"

#define HEADER 4
#define RECV_SIZE (64 * 1024)          /* one recv brings a whole small request */
#define KEEP_BUFFER (1024 * 1024)      /* a connection keeps at most this after a big frame */
#define MAX_DEPTH 64                   /* requests are shallow; deeper nesting is hostile */
#define SMALL_ARGS 16
#define NATIVE_MAX 8                   /* native actions a shadow may name */

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

    /* Native actions (see "native actions" below): what this connection's calls may do here */
    struct native_call {
        int64_t call;
        int kind;
        PyObject *file_type;    /* borrowed from the serve() arguments */
    } natives[NATIVE_MAX];
    int n_natives;
    int rootfd;                 /* the export root's descriptor, or -1: no native lookups */
    int alias;                  /* the root has an alias (absolute symlinks into it) */
    uint8_t stat_order[16];     /* wire position -> computed member (neutral.STAT_FIELDS) */
    uint32_t file_types[16];    /* (st_mode & S_IFMT) >> 12 -> neutral file type bits */
    uint8_t *data;              /* what a native read reads into */
    size_t data_cap;
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

/* Between two frames, poll a while before blocking: a program's calls come in bursts (a python3
 * start makes about 414 in 90 ms), and a thread that blocks at once lets its CPU go idle, which
 * a virtual machine wakes 0.1 to 2 ms late when the next request arrives (the agent's client
 * polls for its reply for the same reason, bypass/rpc/c/rpc_client.c).  Yielding at each turn
 * leaves the CPU to whoever needs it; an idle connection costs this much CPU once. */
#define REQUEST_POLL_NS 100000

static void poll_for_request(int fd)
{
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    char byte;
    do {
        if (recv(fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT) >= 0 || (errno != EAGAIN && errno != EINTR))
            return;
        sched_yield();
        clock_gettime(CLOCK_MONOTONIC, &t);
    } while ((t.tv_sec - t0.tv_sec) * 1000000000L + (t.tv_nsec - t0.tv_nsec) < REQUEST_POLL_NS);
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
        if (c->have == 0)
            poll_for_request(c->fd);
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
/* Start a successful pair reply, [seq, 0, [first, ...: the caller writes the pair's second item. */
static bp_mp_writer *pair_reply_head(conn *c, int64_t seq, int64_t first)
{
    bp_mp_writer *w = &c->out;
    w->len = HEADER;
    w->error = 0;
    bp_mp_write_array(w, 3);
    bp_mp_write_int(w, seq);
    bp_mp_write_int(w, 0);
    bp_mp_write_array(w, 2);
    bp_mp_write_int(w, first);
    return w;
}

static int envelope(conn *c, int64_t seq, int64_t n, uint64_t len)
{
    bp_mp_writer *w = pair_reply_head(c, seq, n);
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

/* The handler raised (the exception is set): the server turns it into [status, value], which
 * is sent.  KeyboardInterrupt and other non-Exception throwables end the connection, as in
 * the Python loop.  0, or -1 with an exception set. */
static int send_exception_reply(conn *c, int64_t call, int64_t seq)
{
    if (!PyErr_ExceptionMatches(PyExc_Exception))
        return -1;
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
        return -1;
    int enc = -1;
    if (!PyList_Check(reply) || PyList_GET_SIZE(reply) != 2 || !PyLong_Check(PyList_GET_ITEM(reply, 0))) {
        PyErr_SetString(PyExc_TypeError, "exception_reply must return [status, value]");
    } else {
        enc = encode_reply(c, seq, (int)PyLong_AsLong(PyList_GET_ITEM(reply, 0)), PyList_GET_ITEM(reply, 1));
        if (enc == UNKNOWN) {
            PyErr_SetString(PyExc_TypeError, "exception_reply returned a value msgpack cannot carry");
            enc = -1;
        }
    }
    Py_DECREF(reply);
    return enc == 0 ? send_reply(c) : -1;
}

/* ------------------------------------------------------------------------------------------ */
/* one call                                                                                   */
/* ------------------------------------------------------------------------------------------ */
/* native actions                                                                             */
/*
 * A few calls are asked so often (a python3 start-up under /job: ~150 stat, ~80 fstat, ~80
 * read) that the Python action, cheap as it is with warm caches, is most of the shadow's time
 * per call once the program's run has emptied those caches.  A spec may declare that an action
 * is exactly one of the kinds below (bypass/rpc/shadow.py: NATIVE_ACTIONS); the loop then
 * performs it here, with the same system calls in the same order, the same accounting and
 * the same reply bytes.  Whatever the C code does not handle exactly as the action would (an
 * argument of another type, a descriptor whose object is not the declared type, a stream read,
 * a path that needs the lookup by hand...) goes to the Python action, before anything was
 * done (or after side-effect-free work only: a lookup or a stat).  The thread's identity
 * (a root shadow's fsuid/fsgid/groups for its caller, the umask) is per thread, set by the
 * Python code of this connection's thread, and applies to these system calls as to its own.
 *
 *   fstat  (slot): os.fstat(obj.fd) of ctx.process.fds[slot].shared.obj   -> [0, stat]
 *   stat   (dslot < 0, path, follow): ExportRoot.stat(path, follow), the export root resolving
 *          in the kernel (openat2) and no policy naming files                -> [0, stat]
 *   read   (slot, count, want): the remote agent's read: os.read(obj.fd, want if the open
 *          file is this descriptor's alone else count), obj.io[0] += 1, obj.io[1] += n
 *          (a read-ahead of a regular file beyond 64 KiB is streamed: Python's) -> [n, bytes]
 *   pread  (slot, count, offset): os.pread(obj.fd, count, offset), counted the same way
 */

enum { NATIVE_FSTAT = 1, NATIVE_STAT, NATIVE_READ, NATIVE_PREAD };
enum { N_PYTHON = 0, N_SENT = 1, N_RAISED = 2, N_BROKEN = -1 };

#define NATIVE_READ_MAX (16 << 20)     /* larger reads go to Python, which allocates them itself */
#define STREAM_ABOVE 65536             /* the read action's read-ahead threshold */
#define EXPORT_PATH_MAX 4096           /* export.py _PATH_MAX: longer paths are walked by hand */
#ifndef SYS_openat2
#define SYS_openat2 437                /* the same number on every Linux architecture */
#endif
#define RESOLVE_NO_MAGICLINKS_ 0x02
#define RESOLVE_NO_SYMLINKS_ 0x04
#define RESOLVE_IN_ROOT_ 0x10

static PyObject *s_process, *s_fds, *s_shared, *s_obj, *s_refs, *s_fd, *s_regular, *s_io;

static const struct native_call *native_of(conn *c, int64_t call)
{
    for (int i = 0; i < c->n_natives; i++)
        if (c->natives[i].call == call)
            return &c->natives[i];
    return NULL;
}

/* Integer arguments as msgpack carries them; 0, or -1 for anything else (then: Python). */
static int arg_int(bp_mp_reader *r, int64_t *v)
{
    bp_mp_kind k = bp_mp_peek(r);
    if ((k != BP_MP_INT && k != BP_MP_UINT) || bp_mp_read_int(r, v) < 0)
        return -1;
    return 0;
}

static int raise_errno(int err)
{
    errno = err;
    PyErr_SetFromErrno(PyExc_OSError);
    return N_RAISED;
}

/* An int attribute that fits a C long long; 0, 1 (not an exact int: Python), -1 (raised). */
static int int_attr(PyObject *o, PyObject *name, long long *v)
{
    PyObject *a = PyObject_GetAttr(o, name);
    if (!a)
        return -1;
    int rc = 1, overflow = 0;
    if (PyLong_CheckExact(a)) {
        *v = PyLong_AsLongLongAndOverflow(a, &overflow);
        rc = overflow ? 1 : 0;
    }
    Py_DECREF(a);
    return rc;
}

/* ctx.process.fds[slot] and its shared object, as ProcessState.entry finds them (EBADF when
 * the slot is not open).  N_SENT (found: *shared and *obj are new references), N_RAISED,
 * N_PYTHON when the object is not of the declared type. */
static int slot_object(conn *c, int64_t slot, PyObject *file_type, PyObject **shared, PyObject **obj)
{
    PyObject *process = PyObject_GetAttr(c->ctx, s_process);
    if (!process)
        return N_RAISED;
    PyObject *fds = PyObject_GetAttr(process, s_fds);
    Py_DECREF(process);
    if (!fds)
        return N_RAISED;
    if (!PyDict_CheckExact(fds)) {
        Py_DECREF(fds);
        return N_PYTHON;
    }
    PyObject *key = PyLong_FromLongLong(slot);
    PyObject *entry = key ? PyDict_GetItemWithError(fds, key) : NULL;    /* borrowed */
    Py_XDECREF(key);
    Py_XINCREF(entry);
    Py_DECREF(fds);
    if (!entry)
        return PyErr_Occurred() ? N_RAISED : raise_errno(EBADF);
    *shared = PyObject_GetAttr(entry, s_shared);
    Py_DECREF(entry);
    if (!*shared)
        return N_RAISED;
    *obj = PyObject_GetAttr(*shared, s_obj);
    if (!*obj) {
        Py_CLEAR(*shared);
        return N_RAISED;
    }
    if (file_type == NULL || Py_TYPE(*obj) != (PyTypeObject *)file_type) {
        Py_CLEAR(*shared);
        Py_CLEAR(*obj);
        return N_PYTHON;
    }
    return N_SENT;
}

/* The object's descriptor (its `fd`, an int as os.fstat and os.read take it). */
static int object_fd(PyObject *obj, int *fd)
{
    long long v;
    int rc = int_attr(obj, s_fd, &v);
    if (rc != 0)
        return rc < 0 ? N_RAISED : N_PYTHON;
    if (v < INT_MIN || v > INT_MAX)
        return N_PYTHON;                /* (os functions raise OverflowError: Python's) */
    *fd = (int)v;
    return N_SENT;
}

/* [seq, 0, [0, stat]] with stat as neutral.stat_to_neutral makes it; N_PYTHON for a device
 * number os.stat_result would not carry as a plain unsigned integer (NODEV). */
static int send_stat_reply(conn *c, int64_t seq, const struct stat *st)
{
    if (st->st_dev == (dev_t)-1 || st->st_rdev == (dev_t)-1)
        return N_PYTHON;
    /* the members in neutral.py's _STAT_COMPUTED order; signed ones as Python has them */
    uint64_t v[16];
    uint16_t is_signed = 0;
#define U(i, x) (v[i] = (uint64_t)(x))
#define S(i, x) (v[i] = (uint64_t)(int64_t)(x), is_signed |= 1u << (i))
    U(0, ((uint64_t)major(st->st_dev) << 32) | minor(st->st_dev));
    U(1, st->st_ino);
    U(2, c->file_types[(st->st_mode & S_IFMT) >> 12] | (st->st_mode & 07777));
    U(3, st->st_nlink);
    /* (os.stat_result has uid/gid -1 as -1, not 4294967295) */
    if (st->st_uid == (uid_t)-1) S(4, -1); else U(4, st->st_uid);
    if (st->st_gid == (gid_t)-1) S(5, -1); else U(5, st->st_gid);
    U(6, ((uint64_t)major(st->st_rdev) << 32) | minor(st->st_rdev));
    S(7, st->st_size);
    S(8, st->st_blksize);
    S(9, st->st_blocks);
    S(10, st->st_atim.tv_sec);
    S(11, st->st_atim.tv_nsec);
    S(12, st->st_mtim.tv_sec);
    S(13, st->st_mtim.tv_nsec);
    S(14, st->st_ctim.tv_sec);
    S(15, st->st_ctim.tv_nsec);
#undef U
#undef S
    bp_mp_writer *w = pair_reply_head(c, seq, 0);
    bp_mp_write_array(w, 16);
    for (int i = 0; i < 16; i++) {
        int m = c->stat_order[i];
        if (is_signed >> m & 1)
            bp_mp_write_int(w, (int64_t)v[m]);
        else
            bp_mp_write_uint(w, v[m]);
    }
    return send_reply(c) < 0 ? N_BROKEN : N_SENT;
}

/* [seq, 0, [n, <bin n>]]: the bin in its smallest form up to the loop's `small`, as bin32
 * beyond (what the Python loop sends for a big buffer), the bytes sent from where they are. */
static int send_data_reply(conn *c, int64_t seq, const uint8_t *data, size_t n)
{
    bp_mp_writer *w = &c->out;
    if (n > (size_t)c->small) {
        if (envelope(c, seq, (int64_t)n, n) < 0)
            return N_BROKEN;
    } else {
        pair_reply_head(c, seq, (int64_t)n);
        bp_mp_write_bin_header(w, (uint32_t)n);
        if (w->error)
            return (PyErr_NoMemory(), N_BROKEN);
        put32(w->buf, (uint32_t)(w->len - HEADER + n));
    }
    struct iovec iov[2] = { { w->buf, w->len }, { (void *)data, n } };
    return send_iov(c, iov, n ? 2 : 1) < 0 ? N_BROKEN : N_SENT;
}

/* seq[i] += v, as Python's `seq[i] += v` does it. */
static int add_item(PyObject *seq, Py_ssize_t i, Py_ssize_t v)
{
    PyObject *index = PyLong_FromSsize_t(i), *by = PyLong_FromSsize_t(v);
    PyObject *old = index && by ? PyObject_GetItem(seq, index) : NULL;
    PyObject *sum = old ? PyNumber_InPlaceAdd(old, by) : NULL;
    int rc = sum ? PyObject_SetItem(seq, index, sum) : -1;
    Py_XDECREF(index);
    Py_XDECREF(by);
    Py_XDECREF(old);
    Py_XDECREF(sum);
    return rc;
}

/* The action's `_count(rfile, "r", n)`: io[0] += 1; io[1] += n. */
static int count_read(PyObject *obj, Py_ssize_t n)
{
    PyObject *io = PyObject_GetAttr(obj, s_io);
    if (!io)
        return -1;
    int rc = add_item(io, 0, 1) < 0 || add_item(io, 1, n) < 0 ? -1 : 0;
    Py_DECREF(io);
    return rc;
}

static int native_fstat(conn *c, const struct native_call *nc, bp_mp_reader *r, uint32_t nargs, int64_t seq)
{
    int64_t slot;
    if (nargs != 1 || arg_int(r, &slot) < 0 || r->pos != r->len)
        return N_PYTHON;
    PyObject *shared, *obj;
    int rc = slot_object(c, slot, nc->file_type, &shared, &obj);
    if (rc != N_SENT)
        return rc;
    int fd;
    rc = object_fd(obj, &fd);
    Py_DECREF(shared);
    Py_DECREF(obj);
    if (rc != N_SENT)
        return rc;
    struct stat st;
    int err;
    Py_BEGIN_ALLOW_THREADS
    err = fstat(fd, &st) < 0 ? errno : 0;
    Py_END_ALLOW_THREADS
    return err ? raise_errno(err) : send_stat_reply(c, seq, &st);
}

static long openat2_(int dirfd, const char *path, uint64_t flags, uint64_t resolve)
{
    uint64_t how[3] = { flags, 0, resolve };    /* struct open_how: flags, mode, resolve */
    return syscall(SYS_openat2, dirfd, path, how, sizeof how);
}

/* ExportRoot.stat(path, follow) for a path the kernel resolves in one go: 0 and *st, an errno
 * to raise, or -1 when ExportRoot.open would walk the path by hand (a symlink may lead into
 * the alias; a path of PATH_MAX or more) — then the Python action does it all again. */
static int export_stat(conn *c, const char *path, uint32_t len, int follow, struct stat *st)
{
    while (len > 0 && *path == '/') {
        path++;
        len--;
    }
    if (len >= EXPORT_PATH_MAX)
        return -1;
    char p[EXPORT_PATH_MAX];
    if (len == 0)
        memcpy(p, ".", 2);
    else {
        memcpy(p, path, len);       /* (a NUL inside ends it, as the C string Python passes) */
        p[len] = 0;
    }
    int err = 0;
    Py_BEGIN_ALLOW_THREADS
    long fd = openat2_(c->rootfd, p, O_PATH | O_CLOEXEC | (follow ? 0 : O_NOFOLLOW),
                       RESOLVE_IN_ROOT_ | RESOLVE_NO_MAGICLINKS_);
    if (fd >= 0) {
        err = fstat((int)fd, st) < 0 ? errno : 0;
        if (close((int)fd) < 0)
            err = errno;            /* (os.close in a finally: its error wins) */
    } else {
        err = errno;
        if (c->alias && err == ELOOP)
            err = -1;
        else if (c->alias && (err == ENOENT || err == ENOTDIR)) {
            /* ExportRoot._fails_without_links: the same error before any symlink is met
             * means no symlink into the alias was involved */
            long probe = openat2_(c->rootfd, p, O_PATH | O_CLOEXEC, RESOLVE_IN_ROOT_ | RESOLVE_NO_SYMLINKS_);
            if (probe >= 0) {
                close((int)probe);
                err = -1;
            } else if (errno != err) {
                err = -1;
            }
        }
    }
    Py_END_ALLOW_THREADS
    return err;
}

static int native_stat(conn *c, bp_mp_reader *r, uint32_t nargs, int64_t seq)
{
    int64_t dslot, follow;
    const char *path;
    uint32_t len;
    if (nargs != 3 || c->rootfd < 0 || arg_int(r, &dslot) < 0 || dslot >= 0 || bp_mp_peek(r) != BP_MP_STR
        || bp_mp_read_str(r, &path, &len) < 0 || arg_int(r, &follow) < 0 || r->pos != r->len)
        return N_PYTHON;
    struct stat st;
    int err = export_stat(c, path, len, follow != 0, &st);
    if (err < 0)
        return N_PYTHON;
    return err ? raise_errno(err) : send_stat_reply(c, seq, &st);
}

/* Room for a native read; N_SENT or N_RAISED (MemoryError). */
static int data_room(conn *c, size_t n)
{
    if (n <= c->data_cap && c->data)
        return N_SENT;
    uint8_t *p = realloc(c->data, n ? n : 1);
    if (!p) {
        PyErr_NoMemory();
        return N_RAISED;
    }
    c->data = p;
    c->data_cap = n ? n : 1;
    return N_SENT;
}

static int native_read(conn *c, const struct native_call *nc, bp_mp_reader *r, uint32_t nargs, int64_t seq,
                       int positional)
{
    int64_t slot, count, third;         /* third: want (read) or offset (pread) */
    if (nargs != 3 || arg_int(r, &slot) < 0 || arg_int(r, &count) < 0 || arg_int(r, &third) < 0
        || r->pos != r->len)
        return N_PYTHON;
    PyObject *shared, *obj;
    int rc = slot_object(c, slot, nc->file_type, &shared, &obj);
    if (rc != N_SENT)
        return rc;
    rc = 0;                              /* from here: 0 go on, 1 Python's, -1 raised */
    int64_t n = count;
    if (!positional) {
        long long refs, regular = 0;
        rc = int_attr(shared, s_refs, &refs);
        if (rc == 0 && refs == 1 && third > STREAM_ABOVE) {
            PyObject *reg = PyObject_GetAttr(obj, s_regular);
            int truth = reg ? PyObject_IsTrue(reg) : -1;
            Py_XDECREF(reg);
            if (truth < 0)
                rc = -1;
            regular = truth > 0;
        }
        if (rc == 0 && regular)
            rc = 1;                      /* streamed with sendfile: the Python action's */
        if (rc == 0)
            n = refs == 1 ? third : count;
    }
    int fd = -1;
    if (rc == 0)
        rc = object_fd(obj, &fd) == N_SENT ? 0 : (PyErr_Occurred() ? -1 : 1);
    if (rc == 0 && (n < 0 || n > NATIVE_READ_MAX))
        rc = 1;                          /* (os.read's ValueError, or a big allocation) */
    if (rc == 0 && data_room(c, (size_t)n) != N_SENT)
        rc = -1;
    Py_DECREF(shared);
    if (rc != 0) {
        Py_DECREF(obj);
        return rc < 0 ? N_RAISED : N_PYTHON;
    }
    ssize_t got;
    int err;
    Py_BEGIN_ALLOW_THREADS
    do
        got = positional ? pread(fd, c->data, (size_t)n, (off_t)third) : read(fd, c->data, (size_t)n);
    while (got < 0 && errno == EINTR);    /* (os.read and os.pread retry, PEP 475) */
    err = errno;
    Py_END_ALLOW_THREADS
    if (got < 0) {
        Py_DECREF(obj);
        return raise_errno(err);
    }
    rc = count_read(obj, got);
    Py_DECREF(obj);
    if (rc < 0)
        return N_RAISED;
    rc = send_data_reply(c, seq, c->data, (size_t)got);
    if (c->data_cap > KEEP_BUFFER) {
        free(c->data);
        c->data = NULL;
        c->data_cap = 0;
    }
    return rc;
}

/* N_PYTHON (nothing done: the Python action answers), N_SENT, N_RAISED (the action's
 * exception is set: reply with it), N_BROKEN (the connection failed). */
static int serve_native(conn *c, const struct native_call *nc, bp_mp_reader *r, uint32_t nargs, int64_t seq)
{
    switch (nc->kind) {
    case NATIVE_FSTAT:
        return native_fstat(c, nc, r, nargs, seq);
    case NATIVE_STAT:
        return native_stat(c, r, nargs, seq);
    case NATIVE_READ:
        return native_read(c, nc, r, nargs, seq, 0);
    case NATIVE_PREAD:
        return native_read(c, nc, r, nargs, seq, 1);
    }
    return N_PYTHON;
}

/* serve()'s `native` argument: (((call, kind, file_type or None), ...), rootfd, alias,
 * stat_order (16 ints), file_types (16 ints)), or None. */
static int native_setup(conn *c, PyObject *native)
{
    c->rootfd = -1;
    if (native == NULL || native == Py_None)
        return 0;
    PyObject *calls, *order, *types;
    if (!PyArg_ParseTuple(native, "O!ipO!O!:native", &PyTuple_Type, &calls, &c->rootfd, &c->alias,
                          &PyTuple_Type, &order, &PyTuple_Type, &types))
        return -1;
    if (PyTuple_GET_SIZE(order) != 16 || PyTuple_GET_SIZE(types) != 16 || PyTuple_GET_SIZE(calls) > NATIVE_MAX) {
        PyErr_SetString(PyExc_ValueError, "native: 16 stat members, 16 file types, at most 8 calls");
        return -1;
    }
    for (int i = 0; i < 16; i++) {
        long m = PyLong_AsLong(PyTuple_GET_ITEM(order, i));
        long t = PyLong_AsLong(PyTuple_GET_ITEM(types, i));
        if (PyErr_Occurred())
            return -1;
        if (m < 0 || m > 15 || t < 0 || t > UINT32_MAX) {
            PyErr_SetString(PyExc_ValueError, "native: bad stat member or file type");
            return -1;
        }
        c->stat_order[i] = (uint8_t)m;
        c->file_types[i] = (uint32_t)t;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(calls); i++) {
        struct native_call *nc = &c->natives[i];
        long long call;
        if (!PyArg_ParseTuple(PyTuple_GET_ITEM(calls, i), "LiO:native call", &call, &nc->kind, &nc->file_type))
            return -1;
        if (nc->kind < NATIVE_FSTAT || nc->kind > NATIVE_PREAD) {
            PyErr_SetString(PyExc_ValueError, "native: unknown kind");
            return -1;
        }
        nc->call = call;
        if (nc->file_type == Py_None)
            nc->file_type = NULL;
        c->n_natives = (int)i + 1;
    }
    return 0;
}


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
    const struct native_call *nc = c->n_natives ? native_of(c, call) : NULL;
    if (nc) {
        size_t args_at = r.pos;
        switch (serve_native(c, nc, &r, (uint32_t)nargs, seq)) {
        case N_SENT:
            return 0;
        case N_RAISED:
            return send_exception_reply(c, call, seq);
        case N_BROKEN:
            return -1;
        }
        r.pos = args_at;                 /* N_PYTHON: the Python action, from the start */
        r.error = 0;
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
        rc = send_exception_reply(c, call, seq);
        goto out;
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
                             "frame_timeout", "native", NULL };
    conn c = { 0 };
    Py_buffer pending = { 0 };
    PyObject *native = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "iOO!OOOOOnny*|ndO:serve", names, &c.fd, &c.ctx,
                                     &PyDict_Type, &c.dispatch, &c.no_such_call, &c.exception_reply,
                                     &c.pack_reply, &c.file_region, &c.protocol_error, &c.max_frame,
                                     &c.small, &pending, &c.budget, &c.frame_timeout, &native))
        return NULL;
    if (native_setup(&c, native) < 0) {
        PyBuffer_Release(&pending);
        return NULL;
    }
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
    free(c.data);
    return NULL;        /* always an exception: EOFError at a clean end */
}

/* ------------------------------------------------------------------------------------------ */
/* openat2 for the export root (bypass/rpc/export.py): every path an agent sends is looked up
 * with it, and through ctypes the call costs several times the system call itself.         */

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
      "max_frame, small, pending[, budget, frame_timeout, native]): answer calls on a connected socket until it ends (EOFError) or "
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
    static PyObject **names[] = { &s_process, &s_fds, &s_shared, &s_obj, &s_refs, &s_fd, &s_regular, &s_io };
    static const char *spelled[] = { "process", "fds", "shared", "obj", "refs", "fd", "regular", "io" };
    for (size_t i = 0; i < sizeof names / sizeof *names; i++)
        if (!*names[i] && !(*names[i] = PyUnicode_InternFromString(spelled[i])))
            return NULL;
    return PyModule_Create(&module);
}
