/*
 * gass_http.c -- HTTP(S) through libcurl, loaded on first use.
 *
 * Why libcurl, and why dlopen: libcurl is the well-kept HTTP client every Debian system has
 * (TLS, redirects, proxies from the environment, HTTP/2), so gass does not grow its own. But
 * linking it into the agent would make every program the agent is preloaded into load libcurl
 * and its ~30 dependencies (OpenSSL, nghttp2, krb5, ldap...) at start-up, pay for their
 * constructors, and risk clashing with a program's own copy. dlopen()ing "libcurl.so.4" the
 * first time a URL is actually opened means a program that never opens a URL pays nothing, and
 * the agent still loads (URL opens then fail with a clear message) on a machine without libcurl.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "gass_curl.h"
#include "gass_internal.h"

static struct {
    int (*global_init)(long flags);
    CURL *(*easy_init)(void);
    int (*easy_setopt)(CURL *handle, int option, ...);
    int (*easy_perform)(CURL *handle);
    int (*easy_getinfo)(CURL *handle, int info, ...);
    void (*easy_reset)(CURL *handle);
    void (*easy_cleanup)(CURL *handle);
    const char *(*easy_strerror)(int code);
    struct curl_slist *(*slist_append)(struct curl_slist *list, const char *text);
    void (*slist_free_all)(struct curl_slist *list);
} curl;

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static int curl_ready;        /* 1 once every symbol resolved and curl_global_init succeeded */

static void load_curl(void)
{
    const char *name = gass_env("BYPASS_GASS_LIBCURL");
    if (name == NULL)
        name = "libcurl.so.4";
    void *lib = dlopen(name, RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE);
    if (lib == NULL) {
        gass_log("cannot load %s (%s): URLs cannot be opened", name, dlerror());
        return;
    }
#define RESOLVE(field, symbol)                                                 \
    do {                                                                       \
        *(void **)&curl.field = dlsym(lib, symbol);                            \
        if (curl.field == NULL) {                                              \
            gass_log("%s lacks %s: URLs cannot be opened", name, symbol);      \
            return;                                                            \
        }                                                                      \
    } while (0)
    RESOLVE(global_init, "curl_global_init");
    RESOLVE(easy_init, "curl_easy_init");
    RESOLVE(easy_setopt, "curl_easy_setopt");
    RESOLVE(easy_perform, "curl_easy_perform");
    RESOLVE(easy_getinfo, "curl_easy_getinfo");
    RESOLVE(easy_reset, "curl_easy_reset");
    RESOLVE(easy_cleanup, "curl_easy_cleanup");
    RESOLVE(easy_strerror, "curl_easy_strerror");
    RESOLVE(slist_append, "curl_slist_append");
    RESOLVE(slist_free_all, "curl_slist_free_all");
#undef RESOLVE
    if (curl.global_init(GASS_CURL_GLOBAL_DEFAULT) != GASS_CURLE_OK) {
        gass_log("curl_global_init failed: URLs cannot be opened");
        return;
    }
    curl_ready = 1;
}

/* One easy handle per thread, reused so that consecutive requests to a server share a
 * connection. After fork() the child must not touch the parent's connections (the socket is
 * shared), so a handle is only reused by the process that made it; the child's copy is simply
 * abandoned, not cleaned up, since cleanup could write to the shared socket. */
static __thread CURL *thread_handle;
static __thread pid_t thread_handle_pid;

static CURL *get_handle(void)
{
    pthread_once(&curl_once, load_curl);
    if (!curl_ready) {
        errno = ENOSYS;
        return NULL;
    }
    pid_t pid = getpid();
    if (thread_handle != NULL && thread_handle_pid == pid) {
        curl.easy_reset(thread_handle);
        return thread_handle;
    }
    thread_handle = curl.easy_init();
    thread_handle_pid = pid;
    if (thread_handle == NULL)
        errno = ENOMEM;
    return thread_handle;
}

/* State of one exchange, shared by the callbacks. */
struct exchange {
    const struct gass_url *url;
    const char *method;
    struct gass_response *resp;
    CURL *handle;
    int out_fd;               /* a GET's body goes here; -1: discard any body */
    int in_fd;                /* a PUT's body comes from here */
    int io_errno;             /* errno of a failed read/write in a callback */
    long long bytes;          /* body bytes moved */
    long long header_bytes;   /* size of the current response's header block so far */
    long long length;         /* its Content-Length, -1 if none yet */
    long long moved;          /* bytes up and down when last seen moving, and when */
    double last_move;
    int stalled;              /* stopped by on_progress for lack of progress */
    struct gass_limits limits;
    struct gass_progress progress;
    double started, last_report;
};

/* Stop the transfer from a callback with this errno (libcurl then returns a write error). */
static size_t refuse(struct exchange *x, int err, const char *why)
{
    snprintf(x->resp->error, sizeof x->resp->error, "%s", why); /* perform() logs it */
    x->io_errno = err;
    return 0;
}

static size_t on_header(char *line, size_t size, size_t count, void *data)
{
    struct exchange *x = data;
    size_t len = size * count;
    char text[512];
    size_t n = len < sizeof text - 1 ? len : sizeof text - 1;
    memcpy(text, line, n);
    text[n] = '\0';
    while (n > 0 && (text[n - 1] == '\r' || text[n - 1] == '\n' || text[n - 1] == ' '))
        text[--n] = '\0';

    /* A status line starts a new response (redirects, 100 Continue): forget the headers of
     * the previous one so only the final response's validators are kept. */
    if (strncmp(text, "HTTP/", 5) == 0) {
        const char *sp = strchr(text, ' ');
        x->resp->status = sp ? strtol(sp + 1, NULL, 10) : 0;
        x->resp->etag[0] = '\0';
        x->resp->last_modified[0] = '\0';
        x->header_bytes = (long long)len;
        x->length = -1;
        return len;
    }
    x->header_bytes += (long long)len;
    if (x->header_bytes > GASS_MAX_HEADER_BYTES)
        return refuse(x, EIO, "response headers too large");
    char *colon = strchr(text, ':');
    if (colon == NULL)
        return len;
    *colon = '\0';
    const char *value = colon + 1;
    while (*value == ' ' || *value == '\t')
        value++;
    if (strcasecmp(text, "Content-Length") == 0) {
        /* libcurl reads "12abc" as 12 and keeps the first of two disagreeing values: a server
         * that cannot say how long a file is does not get it cached. */
        long long n = len < sizeof text - 1 ? gass_parse_length(value, strlen(value)) : -1;
        if (n < 0 || (x->length >= 0 && x->length != n))
            return refuse(x, EIO, "malformed Content-Length");
        x->length = n;
    } else if (strcasecmp(text, "ETag") == 0)
        snprintf(x->resp->etag, sizeof x->resp->etag, "%s", value);
    else if (strcasecmp(text, "Last-Modified") == 0)
        snprintf(x->resp->last_modified, sizeof x->resp->last_modified, "%s", value);
    return len;
}

static size_t on_body(char *data, size_t size, size_t count, void *arg)
{
    struct exchange *x = arg;
    size_t len = size * count;
    /* Only a successful response's body is the file; an error page is dropped. */
    if (x->resp->status < 200 || x->resp->status > 299 || x->out_fd < 0)
        return len;
    if (x->bytes + (long long)len > x->limits.max_size)
        return refuse(x, EFBIG, "larger than BYPASS_GASS_MAX_SIZE");
    size_t done = 0;
    while (done < len) {
        ssize_t n = write(x->out_fd, data + done, len - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            x->io_errno = n < 0 ? errno : EIO;
            return 0; /* makes libcurl stop with CURLE_WRITE_ERROR */
        }
        done += (size_t)n;
    }
    x->bytes += (long long)len;
    return len;
}

static size_t on_upload(char *buffer, size_t size, size_t count, void *arg)
{
    struct exchange *x = arg;
    for (;;) {
        ssize_t n = read(x->in_fd, buffer, size * count);
        if (n >= 0) {
            x->bytes += n;
            return (size_t)n;
        }
        if (errno != EINTR) {
            x->io_errno = errno;
            return GASS_CURL_READFUNC_ABORT;
        }
    }
}

static int on_progress(void *arg, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                       curl_off_t ulnow)
{
    struct exchange *x = arg;
    double now = gass_now();
    /* libcurl's low-speed check averages over several seconds, so a transfer that stops after
     * some bytes would run on for read_s plus that: silence is measured here, to the second
     * (libcurl calls this at least once a second). */
    if (dlnow + ulnow != x->moved) {
        x->moved = dlnow + ulnow;
        x->last_move = now;
    } else if (now - x->last_move >= x->limits.read_s) {
        x->io_errno = ETIMEDOUT;
        x->stalled = 1;
        return 1;
    }
    if (x->out_fd >= 0)
        gass_progress_update(&x->progress, x->url, dlnow, dltotal);
    if (!gass_debug())
        return 0;
    if (now - x->last_report < 1.0)
        return 0;
    x->last_report = now;
    curl_off_t total = ultotal > 0 ? ultotal : dltotal;
    curl_off_t sofar = ultotal > 0 ? ulnow : dlnow;
    double rate = sofar / (now - x->started) / 1048576.0;
    if (total > 0)
        gass_dlog(GASS_DEBUG_HTTP, "%s %s: %.1f / %.1f MiB (%d%%), %.1f MiB/s", x->method, x->url->logname,
                  sofar / 1048576.0, total / 1048576.0, (int)(100.0 * sofar / total), rate);
    else
        gass_dlog(GASS_DEBUG_HTTP, "%s %s: %.1f MiB, %.1f MiB/s", x->method, x->url->logname,
                  sofar / 1048576.0, rate);
    return 0;
}

static int curl_errno(int code, const struct exchange *x)
{
    switch (code) {
    case GASS_CURLE_URL_MALFORMAT:
    case GASS_CURLE_UNSUPPORTED_PROTOCOL: /* also: a redirect to a scheme other than http(s) */
        return EINVAL;
    case GASS_CURLE_OPERATION_TIMEDOUT:
        return ETIMEDOUT;
    case GASS_CURLE_TOO_MANY_REDIRECTS:
        return ELOOP;
    case GASS_CURLE_OUT_OF_MEMORY:
        /* libcurl also says this of a single header line over 100 KiB: once a response has
         * begun, it is the server's fault far more likely than ours. */
        return x->header_bytes > 0 ? EIO : ENOMEM;
    case GASS_CURLE_FILESIZE_EXCEEDED:
        return EFBIG;
    case GASS_CURLE_WRITE_ERROR:
    case GASS_CURLE_READ_ERROR:
    case GASS_CURLE_ABORTED_BY_CALLBACK:
        return x->io_errno ? x->io_errno : EIO;
    default:
        /* refused connection, unknown host, reset, TLS failure: the file is unreachable */
        return EIO;
    }
}

/* Run one request. `setup` has set the method-specific options already. */
static int perform(struct exchange *x, struct curl_slist *headers)
{
    CURL *h = x->handle;
    char errbuf[GASS_CURL_ERROR_SIZE] = "";
    int debug = gass_debug();

    curl.easy_setopt(h, GASS_CURLOPT_URL, x->url->full);
    curl.easy_setopt(h, GASS_CURLOPT_ERRORBUFFER, errbuf);
    curl.easy_setopt(h, GASS_CURLOPT_USERAGENT, "bypass-gass/0.1");
    /* Signals belong to the program: with NOSIGNAL libcurl never installs SIGALRM/SIGPIPE
     * handlers (it must not, in a multithreaded host program). */
    curl.easy_setopt(h, GASS_CURLOPT_NOSIGNAL, 1L);
    /* Nothing may hang: bounded connect, a transfer slower than the low-speed limit over the
     * read timeout is abandoned, and the whole request ends by the deadline it started with
     * (what the quick path already used of it is gone). */
    const struct gass_limits *l = &x->limits;
    long left_ms = (long)((l->deadline - gass_now()) * 1000);
    if (left_ms < 1)
        left_ms = 1;
    long connect_ms = (long)(l->connect_s * 1000);
    curl.easy_setopt(h, GASS_CURLOPT_CONNECTTIMEOUT_MS, connect_ms < left_ms ? connect_ms : left_ms);
    curl.easy_setopt(h, GASS_CURLOPT_TIMEOUT_MS, left_ms);
    curl.easy_setopt(h, GASS_CURLOPT_LOW_SPEED_LIMIT, l->low_speed > 0 ? (long)l->low_speed : 1L);
    long window = (long)(l->read_s + 0.5);
    curl.easy_setopt(h, GASS_CURLOPT_LOW_SPEED_TIME, window > 0 ? window : 1L);
    if (x->out_fd >= 0)
        curl.easy_setopt(h, GASS_CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)l->max_size);
    /* an override of "" is set too: it must also turn off the proxy libcurl takes from http_proxy */
    const char *proxy = gass_proxy_override ? gass_proxy_override : gass_env("BYPASS_GASS_PROXY");
    if (proxy != NULL)
        curl.easy_setopt(h, GASS_CURLOPT_PROXY, proxy);
    curl.easy_setopt(h, GASS_CURLOPT_FOLLOWLOCATION, 1L);
    curl.easy_setopt(h, GASS_CURLOPT_MAXREDIRS, (long)gass_env_number("BYPASS_GASS_MAX_REDIRS", 10));
    /* Only http(s), also after a redirect: a server must not send us to file:// or ftp://. */
    curl.easy_setopt(h, GASS_CURLOPT_PROTOCOLS, GASS_CURLPROTO_HTTP | GASS_CURLPROTO_HTTPS);
    curl.easy_setopt(h, GASS_CURLOPT_REDIR_PROTOCOLS, GASS_CURLPROTO_HTTP | GASS_CURLPROTO_HTTPS);
    curl.easy_setopt(h, GASS_CURLOPT_FILETIME, 1L);
    curl.easy_setopt(h, GASS_CURLOPT_BUFFERSIZE, 256L * 1024);
    curl.easy_setopt(h, GASS_CURLOPT_HEADERFUNCTION, on_header);
    curl.easy_setopt(h, GASS_CURLOPT_HEADERDATA, x);
    /* Always our body callback: libcurl's default would print bodies (error pages, replies
     * to PUT/DELETE) on the program's stdout. */
    curl.easy_setopt(h, GASS_CURLOPT_WRITEFUNCTION, on_body);
    curl.easy_setopt(h, GASS_CURLOPT_WRITEDATA, x);
    if (gass_env_number("BYPASS_GASS_INSECURE", 0)) {
        curl.easy_setopt(h, GASS_CURLOPT_SSL_VERIFYPEER, 0L);
        curl.easy_setopt(h, GASS_CURLOPT_SSL_VERIFYHOST, 0L);
    }
    if (headers != NULL)
        curl.easy_setopt(h, GASS_CURLOPT_HTTPHEADER, headers);
    gass_progress_start(&x->progress, l->started);
    curl.easy_setopt(h, GASS_CURLOPT_NOPROGRESS, 0L);
    curl.easy_setopt(h, GASS_CURLOPT_XFERINFOFUNCTION, on_progress);
    curl.easy_setopt(h, GASS_CURLOPT_XFERINFODATA, x);

    x->resp->status = 0;
    x->resp->length = -1;
    x->resp->mtime = -1;
    x->resp->etag[0] = x->resp->last_modified[0] = x->resp->error[0] = '\0';
    x->started = x->last_report = x->last_move = gass_now();

    int code = curl.easy_perform(h);
    gass_progress_end(&x->progress);

    long status = 0;
    curl.easy_getinfo(h, GASS_CURLINFO_RESPONSE_CODE, &status);
    x->resp->status = status;
    curl_off_t value = -1;
    if (curl.easy_getinfo(h, GASS_CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &value) == GASS_CURLE_OK)
        x->resp->length = value;
    value = -1;
    if (curl.easy_getinfo(h, GASS_CURLINFO_FILETIME_T, &value) == GASS_CURLE_OK)
        x->resp->mtime = value;

    double took = gass_now() - x->started;
    if (code != GASS_CURLE_OK) {
        int err = curl_errno(code, x);
        /* Transport failures are rare and otherwise undiagnosable from the program's message
         * ("Input/output error"), so they are always logged -- an upload's by its caller, in
         * the one line that also says what became of the data. */
        if (x->stalled)
            snprintf(x->resp->error, sizeof x->resp->error, "no data for %.1f s", l->read_s);
        else if (x->resp->error[0] == '\0') /* else a callback's reason, more telling */
            snprintf(x->resp->error, sizeof x->resp->error, "%s%s%.200s",
                     curl.easy_strerror(code), errbuf[0] ? ": " : "", errbuf);
        if (strcmp(x->method, "PUT") != 0)
            gass_log("%s %s: %s", x->method, x->url->logname, x->resp->error);
        errno = err;
        return -1;
    }
    if (debug)
        gass_dlog(GASS_DEBUG_HTTP, "%s %s -> %ld, %lld bytes in %.3f s (%.1f MiB/s)", x->method,
                  x->url->logname, status, x->bytes, took, took > 0 ? x->bytes / took / 1048576.0 : 0.0);
    if ((status >= 200 && status <= 299) || status == 304)
        return 0;
    errno = gass_status_errno(status);
    return -1;
}

static int exchange_init(struct exchange *x, const struct gass_url *u, const char *method,
                         const struct gass_limits *l, struct gass_response *r)
{
    memset(x, 0, sizeof *x);
    memset(r, 0, sizeof *r);
    x->limits = *l;
    x->length = -1;
    x->url = u;
    x->method = method;
    x->resp = r;
    x->out_fd = -1;
    x->in_fd = -1;
    x->handle = get_handle();
    return x->handle ? 0 : -1;
}

static int http_head(const struct gass_url *u, struct gass_response *r)
{
    struct exchange x;
    struct gass_limits l;
    int rc;
    gass_limits_init(&l);
    if (gass_quick_request(u, "HEAD", NULL, NULL, -1, &l, r, &rc))
        return rc;
    if (exchange_init(&x, u, "HEAD", &l, r) < 0)
        return -1;
    curl.easy_setopt(x.handle, GASS_CURLOPT_NOBODY, 1L);
    return perform(&x, NULL);
}

static int http_get(const struct gass_url *u, int out_fd, const char *if_none_match,
                  const char *if_modified_since, struct gass_response *r)
{
    struct exchange x;
    struct gass_limits l;
    int quick_rc;
    gass_limits_init(&l);
    /* Plain http without a redirect needs no libcurl (see gass_quick.c). */
    if (gass_quick_request(u, "GET", if_none_match, if_modified_since, out_fd, &l, r, &quick_rc))
        return quick_rc;
    if (exchange_init(&x, u, "GET", &l, r) < 0)
        return -1;
    x.out_fd = out_fd;
    struct curl_slist *headers = NULL;
    char line[400];
    if (if_none_match && if_none_match[0]) {
        snprintf(line, sizeof line, "If-None-Match: %s", if_none_match);
        headers = curl.slist_append(headers, line);
    }
    if (if_modified_since && if_modified_since[0]) {
        snprintf(line, sizeof line, "If-Modified-Since: %s", if_modified_since);
        headers = curl.slist_append(headers, line);
    }
    curl.easy_setopt(x.handle, GASS_CURLOPT_HTTPGET, 1L);
    int rc = perform(&x, headers);
    if (headers)
        curl.slist_free_all(headers);
    return rc;
}

static int http_put(const struct gass_url *u, int in_fd, long long size, struct gass_response *r)
{
    struct exchange x;
    struct gass_limits l;
    gass_limits_init(&l);
    if (exchange_init(&x, u, "PUT", &l, r) < 0)
        return -1;
    x.in_fd = in_fd;
    /* No "Expect: 100-continue": it costs a round trip (or a 1 s wait on servers that ignore
     * it) for every large upload. */
    struct curl_slist *headers = curl.slist_append(NULL, "Expect:");
    curl.easy_setopt(x.handle, GASS_CURLOPT_UPLOAD, 1L);
    curl.easy_setopt(x.handle, GASS_CURLOPT_READFUNCTION, on_upload);
    curl.easy_setopt(x.handle, GASS_CURLOPT_READDATA, &x);
    curl.easy_setopt(x.handle, GASS_CURLOPT_INFILESIZE_LARGE, (curl_off_t)size);
    int rc = perform(&x, headers);
    curl.slist_free_all(headers);
    return rc;
}

static int http_delete(const struct gass_url *u, struct gass_response *r)
{
    struct exchange x;
    struct gass_limits l;
    gass_limits_init(&l);
    if (exchange_init(&x, u, "DELETE", &l, r) < 0)
        return -1;
    curl.easy_setopt(x.handle, GASS_CURLOPT_CUSTOMREQUEST, "DELETE");
    return perform(&x, NULL);
}

/* The public entry points count the exchanges this thread is in, so that an _exit called from a
 * signal handler in the middle of one does not start another (libcurl's handle and the quick
 * path's buffer are per thread). */
static __thread int exchanges_running;

int gass_http_busy(void)
{
    return exchanges_running;
}

int gass_http_head(const struct gass_url *u, struct gass_response *r)
{
    exchanges_running++;
    int rc = http_head(u, r);
    exchanges_running--;
    return rc;
}

int gass_http_get(const struct gass_url *u, int out_fd, const char *if_none_match,
                  const char *if_modified_since, struct gass_response *r)
{
    exchanges_running++;
    int rc = http_get(u, out_fd, if_none_match, if_modified_since, r);
    exchanges_running--;
    return rc;
}

int gass_http_put(const struct gass_url *u, int in_fd, long long size, struct gass_response *r)
{
    exchanges_running++;
    int rc = http_put(u, in_fd, size, r);
    exchanges_running--;
    return rc;
}

int gass_http_delete(const struct gass_url *u, struct gass_response *r)
{
    exchanges_running++;
    int rc = http_delete(u, r);
    exchanges_running--;
    return rc;
}
