/*
 * gass_quick.c -- answer the header-only exchanges (HEAD, and a conditional GET that comes back
 * 304) without libcurl.
 *
 * Why: loading libcurl and its ~30 libraries costs ~7.5 ms per process on the reference
 * machine, more than reading a 200 MiB file from the page cache takes 10 % of. Most URL opens
 * of a warm cache are a revalidation answered "304 Not Modified", and every stat() is a HEAD:
 * one small request and a header block. This file does that over plain http, and also takes a
 * plain body (Content-Length, no transfer coding) into the cache when the server sends one. It
 * gives up before anything is consumed -- and the caller repeats the request with libcurl --
 * on everything else: https, credentials, a proxy setting, a redirect, chunked or compressed
 * bodies, or a failure to connect (so those errors are reported by libcurl).
 * BYPASS_GASS_QUICK=0 turns it off.
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

static int wait_for(int fd, short events, int timeout_ms)
{
    struct pollfd p = {.fd = fd, .events = events};
    for (;;) {
        int n = poll(&p, 1, timeout_ms);
        if (n > 0)
            return 0;
        if (n == 0 || errno != EINTR)
            return -1;
    }
}

static int quick_allowed(const struct gass_url *u)
{
    static const char *const proxies[] = {"http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"};
    if (u->https || u->has_userinfo || gass_env_number("BYPASS_GASS_QUICK", 1) == 0)
        return 0;
    for (size_t i = 0; i < sizeof proxies / sizeof proxies[0]; i++)
        if (gass_env(proxies[i]) != NULL)
            return 0;
    return 1;
}

/* Connect to host:port of `u` within the connect timeout; -1 on any failure. */
static int quick_connect(const struct gass_url *u, const char **path)
{
    const char *host = u->redacted + 7; /* after "http://" */
    size_t host_len = strcspn(host, "/");
    *path = host + host_len;
    if (host[0] == '[' || host_len == 0 || host_len > 300)
        return -1; /* IPv6 literals: leave to libcurl */
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
        return -1;
    int timeout = (int)(1000 * gass_env_number("BYPASS_GASS_CONNECT_TIMEOUT", 10));
    int fd = -1;
    for (struct addrinfo *a = found; a && fd < 0; a = a->ai_next) {
        fd = socket(a->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0)
            continue;
        int err = 0;
        socklen_t len = sizeof err;
        if (connect(fd, a->ai_addr, a->ai_addrlen) < 0 &&
            (errno != EINPROGRESS || wait_for(fd, POLLOUT, timeout) < 0 ||
             getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0 || err != 0)) {
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(found);
    return fd;
}

static void header_value(const char *headers, const char *name, char *out, size_t size)
{
    size_t len = strlen(name);
    out[0] = '\0';
    for (const char *line = strstr(headers, "\r\n"); line; line = strstr(line + 2, "\r\n")) {
        if (strncasecmp(line + 2, name, len) == 0 && line[2 + len] == ':') {
            const char *v = line + 3 + len;
            while (*v == ' ' || *v == '\t')
                v++;
            size_t n = strcspn(v, "\r\n");
            snprintf(out, size, "%.*s", (int)(n < size ? n : size - 1), v);
            return;
        }
    }
}

/* Copy a body of `length` bytes (some already in `have`) to `out`; 0, or -1 with errno. */
static int receive_body(int fd, int out, const char *have, size_t have_len, long long length,
                        int timeout, const struct gass_url *u)
{
    static __thread char buf[256 * 1024];
    long long done = 0;
    double started = gass_now(), last_report = started;
    int debug = gass_debug();
    const char *data = have;
    ssize_t n = (ssize_t)have_len;
    for (;;) {
        for (ssize_t off = 0; off < n;) {
            ssize_t w = write(out, data + off, (size_t)(n - off));
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0)
                return -1;
            off += w;
        }
        done += n;
        if (debug && gass_now() - last_report >= 1.0) {
            last_report = gass_now();
            gass_log("GET %s: %.1f / %.1f MiB (%d%%)", u->logname, done / 1048576.0,
                     length / 1048576.0, (int)(100.0 * done / (length ? length : 1)));
        }
        if (done >= length)
            break;
        size_t want = sizeof buf;
        if ((long long)want > length - done)
            want = (size_t)(length - done);
        n = recv(fd, buf, want, 0);
        data = buf;
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            n = 0;
            if (wait_for(fd, POLLIN, timeout) < 0) {
                gass_log("GET %s: no data for %d s", u->logname, timeout / 1000);
                errno = ETIMEDOUT;
                return -1;
            }
            continue;
        }
        if (n <= 0) {
            gass_log("GET %s: connection closed after %lld of %lld bytes", u->logname, done, length);
            errno = EIO;
            return -1;
        }
    }
    if (debug)
        gass_log("GET %s -> 200, %lld bytes in %.3f s (without libcurl)", u->logname, done,
                 gass_now() - started);
    return 0;
}

int gass_quick_request(const struct gass_url *u, const char *method, const char *if_none_match,
                       const char *if_modified_since, int out_fd, struct gass_response *r, int *rc)
{
    if (!quick_allowed(u))
        return 0;
    if (if_none_match && !if_none_match[0])
        if_none_match = NULL;
    if (if_modified_since && !if_modified_since[0])
        if_modified_since = NULL;
    const char *path;
    int fd = quick_connect(u, &path);
    if (fd < 0)
        return 0;
    double started = gass_now();
    char request[GASS_URL_MAX + 1024];
    size_t host_len = (size_t)(path - (u->redacted + 7));
    int n = snprintf(request, sizeof request,
                     "%s %s%s HTTP/1.1\r\nHost: %.*s\r\nUser-Agent: bypass-gass/0.1\r\nAccept: */*\r\n"
                     "%s%s%s%s%s%sConnection: close\r\n\r\n",
                     method, path[0] ? "" : "/", path, (int)host_len, u->redacted + 7,
                     if_none_match ? "If-None-Match: " : "", if_none_match ? if_none_match : "",
                     if_none_match ? "\r\n" : "", if_modified_since ? "If-Modified-Since: " : "",
                     if_modified_since ? if_modified_since : "", if_modified_since ? "\r\n" : "");
    int timeout = (int)(1000 * gass_env_number("BYPASS_GASS_READ_TIMEOUT", 30));
    char reply[16384];
    size_t got = 0;
    int answered = 0;
    if (n <= 0 || (size_t)n >= sizeof request)
        goto out;
    for (ssize_t sent = 0; sent < n;) {
        ssize_t w = send(fd, request + sent, (size_t)(n - sent), MSG_NOSIGNAL);
        if (w < 0 && (errno == EAGAIN || errno == EINTR)) {
            if (wait_for(fd, POLLOUT, timeout) < 0)
                goto out;
            continue;
        }
        if (w <= 0)
            goto out;
        sent += w;
    }
    /* Read the header block; a body (if any) is not ours to read. */
    while (got < sizeof reply - 1) {
        ssize_t m = recv(fd, reply + got, sizeof reply - 1 - got, 0);
        if (m < 0 && (errno == EAGAIN || errno == EINTR)) {
            if (wait_for(fd, POLLIN, timeout) < 0)
                goto out;
            continue;
        }
        if (m <= 0)
            goto out;
        got += (size_t)m;
        reply[got] = '\0';
        if (strstr(reply, "\r\n\r\n"))
            break;
    }
    char *end = strstr(reply, "\r\n\r\n");
    if (end == NULL || strncmp(reply, "HTTP/1.", 7) != 0)
        goto out;
    end[2] = '\0';
    long status = strtol(reply + 9, NULL, 10);
    int is_head = strcmp(method, "HEAD") == 0;
    /* What we can answer: HEAD with any final non-redirect status; a GET when it needs no body
     * (304, or a status that is an error to the program anyway), or when the body is a plain
     * Content-Length one (no chunked or compressed transfer). */
    if ((status >= 300 && status < 400 && status != 304) || status < 200)
        goto out;
    char value[256], coding[64];
    header_value(reply, "Content-Length", value, sizeof value);
    header_value(reply, "Transfer-Encoding", coding, sizeof coding);
    int plain_body = value[0] != '\0' && coding[0] == '\0';
    int body = !is_head && status >= 200 && status <= 299;
    if (!is_head && !body &&
        !(status == 304 || status == 401 || status == 403 || status == 404 || status == 410))
        goto out;
    if (body && (!plain_body || out_fd < 0))
        goto out;

    memset(r, 0, sizeof *r);
    r->status = status;
    r->length = value[0] ? atoll(value) : -1;
    header_value(reply, "ETag", r->etag, sizeof r->etag);
    header_value(reply, "Last-Modified", r->last_modified, sizeof r->last_modified);
    r->mtime = r->last_modified[0] ? (long long)gass_http_date(r->last_modified) : -1;
    answered = 1;
    if (body) {
        /* From here on the exchange is ours: a failure is the answer, not a reason to retry. */
        size_t header_len = (size_t)(end + 4 - reply);
        *rc = receive_body(fd, out_fd, end + 4, got - header_len, r->length, timeout, u);
        goto out;
    }
    if ((status >= 200 && status <= 299) || status == 304) {
        *rc = 0;
    } else {
        *rc = -1;
        errno = gass_status_errno(status);
    }
    if (gass_debug())
        gass_log("%s %s -> %ld in %.3f s (without libcurl)", method, u->logname, status,
                 gass_now() - started);
out:;
    int saved = errno;
    close(fd);
    errno = saved;
    return answered;
}
