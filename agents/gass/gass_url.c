/*
 * gass_url.c -- recognising and splitting URLs, and the small helpers every gass file uses
 * (environment, logging, status -> errno).
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <limits.h>
#include <sys/stat.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "bypass_runtime.h"
#include <unistd.h>

#include "gass_internal.h"

/* When linked into an agent, the runtime keeps the BYPASS_* settings the program started with
 * (programs may scrub their environment); standalone (tests) there is only getenv. Weak, so
 * this file builds and runs without the runtime. */
extern const char *bypass_getenv(const char *name) __attribute__((weak));

/* Some programs make every name absolute before opening it: SQLite turns "http://h/db" into
 * "<cwd>/http:/h/db" (cwd prepended, "//" collapsed). Recognise exactly that shape -- the
 * prefix must be the current directory, and the directory must have no real "http:" entry --
 * and return where the scheme starts, else NULL. */
static const char *absolutized_url(const char *path)
{
    const char *at = strstr(path, "/http");
    if (at == NULL)
        return NULL;
    const char *scheme = at + 1;
    size_t name = (scheme[4] == 's') ? 6 : 5; /* "https:" or "http:" */
    if (strncmp(scheme + name - 1, ":/", 2) != 0 || scheme[name + 1] == '\0')
        return NULL;
    char cwd[PATH_MAX];
    size_t prefix = (size_t)(at - path);
    if (getcwd(cwd, sizeof cwd) == NULL || strlen(cwd) != prefix || strncmp(cwd, path, prefix) != 0)
        return NULL;
    char local[PATH_MAX];
    struct stat st;
    snprintf(local, sizeof local, "%.*s", (int)(name + prefix + 1), path);
    if (lstat(local, &st) == 0)
        return NULL; /* a real directory called "http:" here: this is a local path */
    return scheme;
}

int gass_is_url(const char *path)
{
    /* Called for every path of every trapped call: test the first byte before anything else. */
    if (bypass_unreadable_string(path))           /* the next layer answers EFAULT */
        return 0;
    if (path[0] == 'h' || path[0] == 'H')
        return strncasecmp(path, "http://", 7) == 0 || strncasecmp(path, "https://", 8) == 0;
    return path[0] == '/' && absolutized_url(path) != NULL;
}

unsigned long long gass_hash64(const void *data, size_t len, unsigned long long seed)
{
    /* FNV-1a: enough to name cache files; the cache also stores the URL and checks it, so a
     * collision costs a refetch, never wrong data. */
    const unsigned char *p = data;
    unsigned long long h = 0xcbf29ce484222325ULL ^ seed;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

static int is_unreserved_or_sub(int c)
{
    /* RFC 3986 characters allowed in a host name (reg-name) besides pct-encoding. */
    return isalnum(c) || strchr("-._~!$&'()*+,;=", c) != NULL;
}

static int append(char *dst, size_t size, size_t *len, const char *src, size_t n)
{
    if (*len + n + 1 > size) {
        errno = ENAMETOOLONG;
        return -1;
    }
    memcpy(dst + *len, src, n);
    *len += n;
    dst[*len] = '\0';
    return 0;
}

int gass_url_parse(const char *text, struct gass_url *u)
{
    memset(u, 0, sizeof *u);
    char rebuilt[GASS_URL_MAX];
    const char *found;
    if (text != NULL && text[0] == '/' && (found = absolutized_url(text)) != NULL) {
        /* "<cwd>/http:/host/path" -> "http://host/path" */
        const char *colon = strchr(found, ':');
        const char *rest = colon + 1;
        while (*rest == '/')
            rest++;
        snprintf(rebuilt, sizeof rebuilt, "%.*s://%s", (int)(colon - found), found, rest);
        text = rebuilt;
    }
    if (!gass_is_url(text)) {
        errno = EINVAL;
        return -1;
    }
    size_t total = strlen(text);
    if (total >= GASS_URL_MAX) {
        errno = ENAMETOOLONG;
        return -1;
    }
    /* Control characters, spaces and stray '%' make a URL malformed; reject them here rather
     * than let libcurl guess. */
    for (size_t i = 0; i < total; i++) {
        unsigned char c = (unsigned char)text[i];
        if (c <= 0x20 || c == 0x7f)
            goto malformed;
        if (c == '%' && !(isxdigit((unsigned char)text[i + 1]) && isxdigit((unsigned char)text[i + 2])))
            goto malformed;
    }

    u->https = (text[4] == 's' || text[4] == 'S');
    const char *scheme = u->https ? "https" : "http";
    const char *auth = text + (u->https ? 8 : 7);
    size_t auth_len = strcspn(auth, "/?#");
    const char *rest = auth + auth_len;            /* path, query, fragment */
    size_t rest_len = strcspn(rest, "#");          /* the fragment never leaves the client */

    /* userinfo is everything up to the last '@' of the authority. */
    const char *host = auth;
    size_t host_len = auth_len;
    const char *at = NULL;
    for (const char *p = auth; p < auth + auth_len; p++)
        if (*p == '@')
            at = p;
    if (at != NULL) {
        u->has_userinfo = 1;
        size_t user_len = strcspn(auth, ":@");
        if (user_len >= sizeof u->user)
            goto malformed;
        memcpy(u->user, auth, user_len);
        host = at + 1;
        host_len = (size_t)(auth + auth_len - host);
    }

    /* host [":" port], host is a reg-name or an [IPv6] literal. */
    const char *port = NULL;
    size_t name_len = host_len;
    if (host_len > 0 && host[0] == '[') {
        const char *close = memchr(host, ']', host_len);
        if (close == NULL)
            goto malformed;
        for (const char *p = host + 1; p < close; p++)
            if (!isxdigit((unsigned char)*p) && *p != ':' && *p != '.')
                goto malformed;
        name_len = (size_t)(close + 1 - host);
        if (name_len < host_len) {
            if (host[name_len] != ':')
                goto malformed;
            port = host + name_len + 1;
        }
    } else {
        const char *colon = memchr(host, ':', host_len);
        if (colon != NULL) {
            name_len = (size_t)(colon - host);
            port = colon + 1;
        }
        for (size_t i = 0; i < name_len; i++)
            if (!is_unreserved_or_sub((unsigned char)host[i]) && host[i] != '%')
                goto malformed;
    }
    if (name_len == 0 || name_len > 255)
        goto malformed;
    if (port != NULL) {
        size_t port_len = (size_t)(host + host_len - port);
        long value = 0;
        if (port_len == 0 || port_len > 5)
            goto malformed;
        for (size_t i = 0; i < port_len; i++) {
            if (!isdigit((unsigned char)port[i]))
                goto malformed;
            value = value * 10 + (port[i] - '0');
        }
        if (value < 1 || value > 65535)
            goto malformed;
    }

    /* full: the original text without the fragment. */
    size_t len = 0;
    if (append(u->full, sizeof u->full, &len, text, (size_t)(rest + rest_len - text)) < 0)
        return -1;

    /* redacted: lower-case scheme and host, no userinfo, path "/" when empty (as libcurl
     * would send it), so "http://h" and "http://h/" share a cache entry. */
    len = 0;
    char lowered[300];
    for (size_t i = 0; i < name_len; i++)
        lowered[i] = (char)tolower((unsigned char)host[i]);
    if (append(u->redacted, sizeof u->redacted, &len, scheme, strlen(scheme)) < 0 ||
        append(u->redacted, sizeof u->redacted, &len, "://", 3) < 0 ||
        append(u->redacted, sizeof u->redacted, &len, lowered, name_len) < 0 ||
        append(u->redacted, sizeof u->redacted, &len, host + name_len, host_len - name_len) < 0)
        return -1;
    if ((rest_len == 0 || rest[0] != '/') && append(u->redacted, sizeof u->redacted, &len, "/", 1) < 0)
        return -1;
    if (append(u->redacted, sizeof u->redacted, &len, rest, rest_len) < 0)
        return -1;

    /* logname: redacted with the query's value replaced, tokens must not reach a log. */
    size_t query = strcspn(u->redacted, "?");
    memcpy(u->logname, u->redacted, query);
    u->logname[query] = '\0';
    if (u->redacted[query] == '?')
        strcat(u->logname, "?...");

    /* Cache key: URL identity plus the user name (different users may be served different
     * content); never the password. */
    char keytext[GASS_URL_MAX + sizeof u->user + 2];
    int n = snprintf(keytext, sizeof keytext, "%s\n%s", u->redacted, u->user);
    unsigned long long h = gass_hash64(keytext, (size_t)n, 0);
    snprintf(u->key, sizeof u->key, "%016llx", h);
    /* A different seed for the inode: st_ino must not be 0, which some programs treat as
     * "unknown". */
    u->ino = gass_hash64(u->redacted, strlen(u->redacted), 0x9e3779b97f4a7c15ULL) | 1;
    return 0;

malformed:
    errno = EINVAL;
    return -1;
}

const char *gass_env(const char *name)
{
    /* The runtime keeps only BYPASS_* settings; HOME and XDG_CACHE_HOME come from the
     * program's environment. */
    const char *value = NULL;
    if (bypass_getenv && strncmp(name, "BYPASS_", 7) == 0)
        value = bypass_getenv(name);
    if (value == NULL)
        value = getenv(name);
    return (value != NULL && value[0] != '\0') ? value : NULL;
}

long long gass_env_number(const char *name, long long fallback)
{
    const char *text = gass_env(name);
    if (text == NULL)
        return fallback;
    char *end = NULL;
    errno = 0;
    double value = strtod(text, &end);
    if (end == text || errno != 0 || value < 0)
        return fallback;
    switch (*end) {
    case 'k': case 'K': value *= 1024.0; break;
    case 'm': case 'M': value *= 1024.0 * 1024.0; break;
    case 'g': case 'G': value *= 1024.0 * 1024.0 * 1024.0; break;
    case 't': case 'T': value *= 1024.0 * 1024.0 * 1024.0 * 1024.0; break;
    default: break;
    }
    return (long long)value;
}

/* The runtime's debug output (weak: the tests build these files without the runtime). */
extern unsigned bypass_debug_mask __attribute__((weak));
extern void bypass_debug_write(unsigned subsystem, const char *fmt, ...) __attribute__((weak, format(printf, 2, 3)));

static unsigned runtime_debug(unsigned subsystem)
{
    return &bypass_debug_mask && bypass_debug_write ? bypass_debug_mask & subsystem : 0;
}

int gass_debug(void)
{
    return (int)gass_env_number("BYPASS_GASS_DEBUG", 0) || runtime_debug(GASS_DEBUG_CACHE | GASS_DEBUG_HTTP);
}

void gass_dlog(unsigned subsystem, const char *fmt, ...)
{
    int to_runtime = runtime_debug(subsystem) != 0;
    if (!to_runtime && !gass_env_number("BYPASS_GASS_DEBUG", 0))
        return;
    char text[900];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    if (to_runtime)
        bypass_debug_write(subsystem, "%s", text);
    else
        gass_log("%s", text);
}

void gass_log(const char *fmt, ...)
{
    /* One write() per line so lines from concurrent processes do not interleave; a fixed buffer
     * because this may run where allocating is unwelcome. */
    char line[1024];
    int n = snprintf(line, sizeof line, "gass[%d]: ", (int)getpid());
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    va_end(ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len > sizeof line - 2)
        len = sizeof line - 2;
    line[len++] = '\n';
    int saved = errno;
    ssize_t ignored = write(2, line, len);
    (void)ignored;
    errno = saved;
}

int gass_status_errno(long status)
{
    switch (status) {
    case 400: return EINVAL;
    case 401: case 403: case 407: return EACCES;
    case 404: case 410: return ENOENT;
    case 405: case 501: return EROFS;   /* the server does not take this method here */
    case 408: case 504: return ETIMEDOUT;
    case 409: case 412: return EEXIST;
    case 411: case 417: return EIO;
    case 413: return EFBIG;
    case 414: return ENAMETOOLONG;
    case 507: return ENOSPC;
    default: return EIO;
    }
}

double gass_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

time_t gass_http_date(const char *text)
{
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    if (text[0] && strptime(text, "%a, %d %b %Y %H:%M:%S GMT", &tm) != NULL)
        return timegm(&tm);
    return (time_t)-1;
}

long long gass_parse_length(const char *text, size_t len)
{
    /* Stricter than strtoll on purpose: "12abc", "-1", "+5", "0x10", "" and values past 2^62
     * are all a server we cannot trust with the length of a file. */
    size_t i = 0;
    while (i < len && (text[i] == ' ' || text[i] == '\t'))
        i++;
    long long value = 0;
    size_t digits = 0;
    for (; i < len && text[i] >= '0' && text[i] <= '9'; i++, digits++) {
        if (value > ((1LL << 62) - 9) / 10)
            return -1;
        value = value * 10 + (text[i] - '0');
    }
    while (i < len && (text[i] == ' ' || text[i] == '\t'))
        i++;
    return (digits > 0 && i == len) ? value : -1;
}

static double seconds_setting(const char *name, double fallback)
{
    const char *text = gass_env(name);
    char *end = NULL;
    double value = text ? strtod(text, &end) : fallback;
    if (text && (end == text || !(value > 0)))
        value = fallback;
    return value;
}

__thread long long gass_max_size_override;

void gass_limits_init(struct gass_limits *l)
{
    l->started = gass_now();
    l->connect_s = seconds_setting("BYPASS_GASS_CONNECT_TIMEOUT", 10);
    l->read_s = seconds_setting("BYPASS_GASS_READ_TIMEOUT", 30);
    l->deadline = l->started + seconds_setting("BYPASS_GASS_TIMEOUT", 3600);
    l->low_speed = gass_env_number("BYPASS_GASS_LOW_SPEED", 1024);
    l->max_size = gass_env_number("BYPASS_GASS_MAX_SIZE",
                                  gass_env_number("BYPASS_GASS_CACHE_MAX", GASS_DEFAULT_CACHE_MAX));
    if (gass_max_size_override > 0 && gass_max_size_override < l->max_size)
        l->max_size = gass_max_size_override;
}

void gass_progress_start(struct gass_progress *p, double started)
{
    p->started = p->last = started;
    p->shown = 0;
    p->enabled = !gass_debug() && gass_env_number("BYPASS_GASS_PROGRESS", 1) != 0 && isatty(2);
}

void gass_progress_update(struct gass_progress *p, const struct gass_url *u, long long done,
                          long long total)
{
    if (!p->enabled)
        return;
    double now = gass_now();
    if (now - p->started < 1.0 || now - p->last < 0.25)
        return;
    p->last = now;
    p->shown = 1;
    double rate = done / (now - p->started) / 1048576.0;
    char line[600];
    int n;
    if (total > 0)
        n = snprintf(line, sizeof line, "\rgass: %.400s: %.1f / %.1f MiB (%d%%), %.1f MiB/s\033[K",
                     u->logname, done / 1048576.0, total / 1048576.0,
                     (int)(100.0 * done / total), rate);
    else
        n = snprintf(line, sizeof line, "\rgass: %.400s: %.1f MiB, %.1f MiB/s\033[K", u->logname,
                     done / 1048576.0, rate);
    int saved = errno;
    ssize_t ignored = write(2, line, n < (int)sizeof line ? (size_t)n : sizeof line - 1);
    (void)ignored;
    errno = saved;
}

void gass_progress_end(struct gass_progress *p)
{
    if (p->shown) {
        int saved = errno;
        ssize_t ignored = write(2, "\n", 1);
        (void)ignored;
        errno = saved;
        p->shown = 0;
    }
}

/* Is `host` (length len) named by the no_proxy list? Entries are host names or domain suffixes,
 * comma or blank separated, an optional leading dot; "*" names every host. */
static int no_proxy_matches(const char *list, const char *host, size_t len)
{
    for (const char *p = list; *p;) {
        p += strspn(p, ", \t");
        size_t n = strcspn(p, ", \t");
        const char *entry = p;
        p += n;
        if (n == 1 && entry[0] == '*')
            return 1;
        if (n > 0 && entry[0] == '.') {
            entry++;
            n--;
        }
        if (n == 0 || n > len)
            continue;
        if (strncasecmp(host + len - n, entry, n) == 0 && (n == len || host[len - n - 1] == '.'))
            return 1;
    }
    return 0;
}

__thread const char *gass_proxy_override;

int gass_proxied(const struct gass_url *u)
{
    if (gass_proxy_override)
        return gass_proxy_override[0] != '\0';
    static const char *const names[] = {"BYPASS_GASS_PROXY", "https_proxy", "HTTPS_PROXY",
                                        "http_proxy", "all_proxy", "ALL_PROXY"};
    int proxy = 0;
    /* https_proxy applies to https URLs only, http_proxy to http ones (libcurl's rule). */
    for (size_t i = 0; i < sizeof names / sizeof names[0] && !proxy; i++) {
        if ((i == 1 || i == 2) && !u->https)
            continue;
        if (i == 3 && u->https)
            continue;
        proxy = gass_env(names[i]) != NULL;
    }
    if (!proxy)
        return 0;
    const char *list = gass_env("no_proxy");
    if (list == NULL)
        list = gass_env("NO_PROXY");
    if (list == NULL)
        return 1;
    const char *host = strstr(u->redacted, "://") + 3;
    size_t len = strcspn(host, ":/?");
    if (host[0] == '[')
        len = strcspn(host, "]") + 1;
    return !no_proxy_matches(list, host, len);
}
