/*
 * gass_quick.c -- plain-http exchanges without libcurl: HEAD, a conditional GET answered 304,
 * and a GET whose body has a valid Content-Length and no transfer or content coding.
 *
 * Why: loading libcurl and its ~30 libraries costs ~7.5 ms per process on the reference
 * machine, more than reading a 200 MiB file from the page cache takes 10 % of. Most URL opens
 * of a warm cache are a revalidation answered "304 Not Modified", and every stat() is a HEAD.
 *
 * The reader is strict, because what it accepts is served to programs as a file:
 *   - the status line must be "HTTP/1.0" or "HTTP/1.1", a space and three digits;
 *   - every header line must be "name: value" with CRLF endings; the whole block fits in
 *     GASS_MAX_HEADER_BYTES;
 *   - Content-Length must be a non-negative decimal number and nothing else (repeated headers
 *     must agree); the body must be exactly that long: a short body, or bytes after it, are EIO
 *     and nothing is kept.
 * A clear violation is answered here (EIO, EFBIG, ETIMEDOUT). What is legal but beyond this
 * reader -- https, credentials, a proxy, redirects, 1xx, chunked or compressed bodies, a body
 * without Content-Length, folded headers, bare-LF line ends, an unresolvable host or a refused
 * connection -- is handed to libcurl before any byte of a body is taken. A timeout is never
 * handed over: the request has had its time (struct gass_limits), libcurl would only wait again.
 * BYPASS_GASS_QUICK=0 turns this path off.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "gass_internal.h"

/* Results of the steps below besides 0: the exchange is answered with errno set (ANSWER), or
 * must be made again with libcurl (HAND_OVER). */
enum { ANSWER = -1, HAND_OVER = -2 };

/* The low-speed rule: no byte for read_s, or fewer than low_speed * read_s bytes within a read_s
 * window, fails; so does passing the request's deadline. */
struct pace {
    const struct gass_limits *limits;
    double window_start, last_byte;
    long long window_bytes;
};

static void pace_init(struct pace *p, const struct gass_limits *l)
{
    p->limits = l;
    p->window_start = p->last_byte = gass_now();
    p->window_bytes = 0;
}

static int pace_check(struct pace *p, long long got)
{
    double now = gass_now();
    const struct gass_limits *l = p->limits;
    p->window_bytes += got;
    if (got > 0)
        p->last_byte = now;
    if (now >= l->deadline || now - p->last_byte >= l->read_s) {
        errno = ETIMEDOUT;
        return -1;
    }
    if (now - p->window_start >= l->read_s) {
        if ((double)p->window_bytes < (double)l->low_speed * l->read_s) {
            errno = ETIMEDOUT;
            return -1;
        }
        p->window_start = now;
        p->window_bytes = 0;
    }
    return 0;
}

/* Wait until `fd` is ready for `events`; 0, or -1 with ETIMEDOUT when the pace rule fails. */
static int pace_wait(struct pace *p, int fd, short events)
{
    struct pollfd pfd = {.fd = fd, .events = events};
    for (;;) {
        /* Until the next moment the rule could fail: silence, the window's end, the deadline. */
        double until = p->last_byte + p->limits->read_s;
        if (p->window_start + p->limits->read_s < until)
            until = p->window_start + p->limits->read_s;
        if (p->limits->deadline < until)
            until = p->limits->deadline;
        double left = until - gass_now();
        int n = poll(&pfd, 1, left > 0 ? (int)(left * 1000) + 1 : 0);
        if (n > 0)
            return 0;
        if (n < 0 && errno != EINTR)
            return -1;
        if (pace_check(p, 0) < 0)
            return -1;
    }
}

/* recv() that waits by the pace rule: bytes, 0 at end of stream, -1 with errno. Header bytes
 * do not count as progress (as in libcurl): a header block must be complete within the read
 * timeout, however it trickles. */
static ssize_t pace_recv(struct pace *p, int fd, char *buf, size_t size, int body)
{
    for (;;) {
        ssize_t n = recv(fd, buf, size, 0);
        if (n > 0)
            return pace_check(p, body ? n : 0) < 0 ? -1 : n;
        if (n == 0)
            return 0;
        if (errno != EAGAIN && errno != EINTR)
            return -1;
        if (pace_wait(p, fd, POLLIN) < 0)
            return -1;
    }
}

static int quick_allowed(const struct gass_url *u)
{
    return !u->https && !u->has_userinfo && gass_env_number("BYPASS_GASS_QUICK", 1) != 0 &&
           !gass_proxied(u);
}

/* Connect to host:port of `u`. The socket, or HAND_OVER (name or address trouble: libcurl says
 * what it is), or ANSWER with ETIMEDOUT. */
static int quick_connect(const struct gass_url *u, const struct gass_limits *l, const char **path)
{
    const char *host = u->redacted + 7; /* after "http://" */
    size_t host_len = strcspn(host, "/");
    *path = host + host_len;
    if (host[0] == '[' || host_len == 0 || host_len > 300)
        return HAND_OVER; /* IPv6 literals: leave to libcurl */
    char name[301], port[8] = "80";
    memcpy(name, host, host_len);
    name[host_len] = '\0';
    char *colon = strchr(name, ':');
    if (colon) {
        *colon = '\0';
        snprintf(port, sizeof port, "%s", colon + 1);
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_NUMERICSERV};
    struct addrinfo *found = NULL;
    if (getaddrinfo(name, port, &hints, &found) != 0)
        return HAND_OVER;
    double until = l->started + l->connect_s;
    if (until > l->deadline)
        until = l->deadline;
    int fd = HAND_OVER;
    for (struct addrinfo *a = found; a && fd < 0; a = a->ai_next) {
        fd = socket(a->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0) {
            fd = HAND_OVER;
            continue;
        }
        if (connect(fd, a->ai_addr, a->ai_addrlen) == 0)
            break;
        int err = errno;
        if (err == EINPROGRESS) {
            struct pollfd p = {.fd = fd, .events = POLLOUT};
            int n;
            do {
                double left = until - gass_now();
                n = left > 0 ? poll(&p, 1, (int)(left * 1000) + 1) : 0;
            } while (n < 0 && errno == EINTR);
            socklen_t len = sizeof err;
            if (n == 0)
                err = ETIMEDOUT;
            else if (n < 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
                err = EIO;
            if (err == 0)
                break; /* connected */
        }
        close(fd);
        fd = HAND_OVER;
        if (err == ETIMEDOUT) {
            gass_log("%s: no connection within %.0f s", u->logname, l->connect_s);
            fd = ANSWER;
            break;
        }
    }
    freeaddrinfo(found);
    if (fd == ANSWER)
        errno = ETIMEDOUT;
    return fd;
}

/* The parsed header block of a response. */
struct head {
    long status;
    long long length;      /* -1: no Content-Length */
    int bad_length;        /* a Content-Length that is not a number, or two that disagree */
    int coded;             /* Transfer-Encoding, or a Content-Encoding other than identity */
    char etag[256];
    char last_modified[128];
};

static void copy_value(char *out, size_t size, const char *v, size_t n)
{
    while (n > 0 && (*v == ' ' || *v == '\t'))
        v++, n--;
    while (n > 0 && (v[n - 1] == ' ' || v[n - 1] == '\t'))
        n--;
    snprintf(out, size, "%.*s", (int)(n < size ? n : size - 1), v);
}

static int is_token_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

/* Parse block[0..len) (status line and header lines, each ending in CRLF, without the empty
 * line). 0, or ANSWER (EIO) for a broken response, or HAND_OVER for a legal form we leave to
 * libcurl. */
static int parse_head(const char *block, size_t len, struct head *h)
{
    memset(h, 0, sizeof *h);
    h->length = -1;
    /* A bare LF anywhere: a lenient server libcurl copes with. */
    for (size_t i = 0; i < len; i++)
        if (block[i] == '\n' && (i == 0 || block[i - 1] != '\r'))
            return HAND_OVER;
    const char *line = block, *end = block + len;
    const char *eol = memmem(line, (size_t)(end - line), "\r\n", 2);
    if (eol == NULL || eol - line < 12 || (strncmp(line, "HTTP/1.1 ", 9) != 0 &&
                                           strncmp(line, "HTTP/1.0 ", 9) != 0))
        goto broken;
    for (int i = 9; i < 12; i++)
        if (line[i] < '0' || line[i] > '9')
            goto broken;
    if (eol - line > 12 && line[12] != ' ')
        goto broken;
    h->status = (line[9] - '0') * 100 + (line[10] - '0') * 10 + (line[11] - '0');
    for (line = eol + 2; line < end; line = eol + 2) {
        eol = memmem(line, (size_t)(end - line), "\r\n", 2);
        if (eol == NULL)
            goto broken;
        if (line[0] == ' ' || line[0] == '\t')
            return HAND_OVER; /* obsolete line folding */
        const char *colon = memchr(line, ':', (size_t)(eol - line));
        if (colon == NULL || colon == line)
            goto broken;
        for (const char *c = line; c < colon; c++)
            if (!is_token_char(*c))
                goto broken;
        size_t name_len = (size_t)(colon - line);
        const char *value = colon + 1;
        size_t value_len = (size_t)(eol - value);
#define IS(name) (name_len == sizeof(name) - 1 && strncasecmp(line, name, name_len) == 0)
        if (IS("Content-Length")) {
            long long n = gass_parse_length(value, value_len);
            if (n < 0 || (h->length >= 0 && h->length != n))
                h->bad_length = 1;
            h->length = n;
        } else if (IS("Transfer-Encoding")) {
            h->coded = 1;
        } else if (IS("Content-Encoding")) {
            char coding[32];
            copy_value(coding, sizeof coding, value, value_len);
            if (strcasecmp(coding, "identity") != 0)
                h->coded = 1;
        } else if (IS("ETag")) {
            copy_value(h->etag, sizeof h->etag, value, value_len);
        } else if (IS("Last-Modified")) {
            copy_value(h->last_modified, sizeof h->last_modified, value, value_len);
        }
#undef IS
    }
    return 0;
broken:
    errno = EIO;
    return ANSWER;
}

/* Copy exactly `length` body bytes (the first `have_len` already in `have`) to `out`. 0, or -1
 * with errno: EIO for a short or overlong body, ETIMEDOUT, or the write's error. */
static int receive_body(int fd, int out, char *buf, size_t buf_size, size_t have_len,
                        long long length, struct pace *pace, const struct gass_url *u)
{
    long long done = 0;
    struct gass_progress progress;
    gass_progress_start(&progress, pace->limits->started);
    double last_log = pace->limits->started;
    int debug = gass_debug();
    ssize_t n = (ssize_t)have_len;
    int rc = -1;
    for (;;) {
        if (n > length - done) {
            gass_log("GET %s: more than the %lld bytes of Content-Length", u->logname, length);
            errno = EIO;
            goto out;
        }
        for (ssize_t off = 0; off < n;) {
            ssize_t w = write(out, buf + off, (size_t)(n - off));
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0) {
                if (w == 0)
                    errno = EIO;
                goto out;
            }
            off += w;
        }
        done += n;
        gass_progress_update(&progress, u, done, length);
        if (debug && gass_now() - last_log >= 1.0) {
            last_log = gass_now();
            gass_dlog(GASS_DEBUG_HTTP, "GET %s: %.1f / %.1f MiB (%d%%)", u->logname, done / 1048576.0,
                      length / 1048576.0, (int)(100.0 * done / (length ? length : 1)));
        }
        if (done == length)
            break;
        /* A whole buffer, not just what is left: bytes past the end must be seen to refuse. */
        n = pace_recv(pace, fd, buf, buf_size, 1);
        if (n < 0) {
            if (errno == ETIMEDOUT) {
                gass_log("GET %s: too slow or silent (%lld of %lld bytes)", u->logname, done,
                         length);
            } else {
                /* a reset: to the program, the same broken transfer libcurl reports as EIO */
                gass_log("GET %s: %s after %lld of %lld bytes", u->logname, strerror(errno),
                         done, length);
                errno = EIO;
            }
            goto out;
        }
        if (n == 0) {
            gass_log("GET %s: connection closed after %lld of %lld bytes", u->logname, done, length);
            errno = EIO;
            goto out;
        }
    }
    /* Whatever is already waiting after the body is more than the server announced. */
    char extra;
    if (recv(fd, &extra, 1, MSG_PEEK | MSG_DONTWAIT) > 0) {
        gass_log("GET %s: more than the %lld bytes of Content-Length", u->logname, length);
        errno = EIO;
        goto out;
    }
    rc = 0;
    if (debug)
        gass_dlog(GASS_DEBUG_HTTP, "GET %s -> 200, %lld bytes in %.3f s (without libcurl)", u->logname, done,
                  gass_now() - pace->limits->started);
out:;
    int saved = errno;
    gass_progress_end(&progress);
    errno = saved;
    return rc;
}

static int send_all(struct pace *pace, int fd, const char *data, size_t len)
{
    for (size_t sent = 0; sent < len;) {
        ssize_t w = send(fd, data + sent, len - sent, MSG_NOSIGNAL);
        if (w < 0 && (errno == EAGAIN || errno == EINTR)) {
            if (pace_wait(pace, fd, POLLOUT) < 0)
                return -1;
            continue;
        }
        if (w <= 0)
            return -1;
        sent += (size_t)w;
    }
    return 0;
}

/* Read up to the end of the header block into buf. Its length (the empty line included) and in
 * *got everything read so far; or ANSWER/HAND_OVER. */
static long read_head(struct pace *pace, int fd, char *buf, size_t size, size_t *got,
                      const struct gass_url *u)
{
    *got = 0;
    size_t limit = size - 1 < GASS_MAX_HEADER_BYTES ? size - 1 : GASS_MAX_HEADER_BYTES;
    for (;;) {
        ssize_t m = pace_recv(pace, fd, buf + *got, size - 1 - *got, 0);
        if (m < 0) {
            if (errno == ETIMEDOUT)
                gass_log("%s: no answer within the time allowed", u->logname);
            else
                errno = EIO;
            return ANSWER;
        }
        if (m == 0) {
            gass_log("%s: the server closed the connection without a complete answer", u->logname);
            errno = EIO;
            return ANSWER;
        }
        size_t from = *got > 3 ? *got - 3 : 0;
        *got += (size_t)m;
        buf[*got] = '\0';
        for (size_t i = from; i + 1 < *got; i++) {
            if (buf[i] != '\n')
                continue;
            if (buf[i + 1] == '\n')
                return HAND_OVER; /* bare LF ends: not ours */
            if (i + 2 < *got && buf[i + 1] == '\r' && buf[i + 2] == '\n') {
                if (i + 3 > limit)
                    break;
                return (long)(i + 3);
            }
        }
        if (*got >= limit) {
            gass_log("%s: response headers larger than %d bytes", u->logname, GASS_MAX_HEADER_BYTES);
            errno = EIO;
            return ANSWER;
        }
    }
}

int gass_quick_request(const struct gass_url *u, const char *method, const char *if_none_match,
                       const char *if_modified_since, int out_fd, const struct gass_limits *l,
                       struct gass_response *r, int *rc)
{
    /* One buffer for the request, the header block and the body: a thread's, not the heap's. */
    static __thread char buf[256 * 1024];
    if (!quick_allowed(u))
        return 0;
    if (if_none_match && !if_none_match[0])
        if_none_match = NULL;
    if (if_modified_since && !if_modified_since[0])
        if_modified_since = NULL;
    const char *path;
    int fd = quick_connect(u, l, &path);
    if (fd == HAND_OVER)
        return 0;
    memset(r, 0, sizeof *r);
    r->length = r->mtime = -1;
    if (fd == ANSWER) {
        *rc = -1;
        return 1;
    }
    struct pace pace;
    pace_init(&pace, l);
    size_t host_len = (size_t)(path - (u->redacted + 7));
    int n = snprintf(buf, sizeof buf,
                     "%s %s%s HTTP/1.1\r\nHost: %.*s\r\nUser-Agent: bypass-gass/0.1\r\nAccept: */*\r\n"
                     "%s%s%s%s%s%sConnection: close\r\n\r\n",
                     method, path[0] ? "" : "/", path, (int)host_len, u->redacted + 7,
                     if_none_match ? "If-None-Match: " : "", if_none_match ? if_none_match : "",
                     if_none_match ? "\r\n" : "", if_modified_since ? "If-Modified-Since: " : "",
                     if_modified_since ? if_modified_since : "", if_modified_since ? "\r\n" : "");
    int result = 0; /* 1: answered */
    size_t got = 0;
    long head_len;
    struct head h;
    if (n <= 0 || (size_t)n >= sizeof buf || send_all(&pace, fd, buf, (size_t)n) < 0) {
        if (errno != ETIMEDOUT)
            goto out; /* hand over: libcurl tells what is wrong with the connection */
        gass_log("%s %s: the server takes no request", method, u->logname);
        goto answer;
    }
    head_len = read_head(&pace, fd, buf, sizeof buf, &got, u);
    if (head_len == HAND_OVER)
        goto out;
    if (head_len == ANSWER)
        goto answer;
    int parsed = parse_head(buf, (size_t)head_len - 2, &h);
    if (parsed == HAND_OVER)
        goto out;
    if (parsed == ANSWER || h.bad_length) {
        gass_log("%s %s: malformed response (status line or Content-Length)", method, u->logname);
        errno = EIO;
        goto answer;
    }
    int is_head = strcmp(method, "HEAD") == 0;
    if (h.status < 200 || (h.status >= 300 && h.status < 400 && h.status != 304))
        goto out; /* 1xx and redirects: libcurl's */
    if (!is_head && h.status >= 200 && h.status < 300 &&
        (h.status != 200 || h.coded || h.length < 0 || out_fd < 0))
        goto out; /* a body this reader does not take */

    r->status = h.status;
    r->length = h.length;
    memcpy(r->etag, h.etag, sizeof r->etag);
    memcpy(r->last_modified, h.last_modified, sizeof r->last_modified);
    r->mtime = r->last_modified[0] ? (long long)gass_http_date(r->last_modified) : -1;
    result = 1;
    if (h.status >= 400) {
        *rc = -1;
        errno = gass_status_errno(h.status);
    } else if (!is_head && h.status == 200) {
        if (h.length > l->max_size) {
            gass_log("GET %s: %lld bytes is more than BYPASS_GASS_MAX_SIZE (%lld)", u->logname,
                     h.length, l->max_size);
            errno = EFBIG;
            goto answer;
        }
        /* From here on the exchange is ours: a failure is the answer, not a reason to retry. */
        memmove(buf, buf + head_len, got - (size_t)head_len);
        *rc = receive_body(fd, out_fd, buf, sizeof buf, got - (size_t)head_len, h.length, &pace, u);
        goto out;
    } else {
        *rc = 0;
    }
    gass_dlog(GASS_DEBUG_HTTP, "%s %s -> %ld in %.3f s (without libcurl)", method, u->logname, h.status,
              gass_now() - l->started);
    goto out;
answer:
    result = 1;
    *rc = -1;
out:;
    int saved = errno;
    close(fd);
    errno = saved;
    return result;
}
