/*
 * rpc_client.c — see rpc_client.h and docs/protocol.md.
 *
 * This code runs inside arbitrary programs, inside agent actions (where the agent's own
 * wrappers pass straight through to libc).  So: no malloc (static buffer, mmap to grow), no
 * stdio streams, every blocking wait bounded by a socket timeout, SIGPIPE avoided with
 * MSG_NOSIGNAL, and the connection's descriptor kept high and close-on-exec.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "rpc_client.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "bypass_neutral.h"
#include "sha256.h"

/* Hooks into the agent runtime when it is linked in; weak, so unit tests can do without. */
extern const char *bypass_getenv(const char *name) __attribute__((weak));
extern void bypass_guard_enter(void) __attribute__((weak));
extern void bypass_guard_leave(void) __attribute__((weak));
extern const char bypass_spec_hash[] __attribute__((weak));
extern int bypass_fd_register(int *slot) __attribute__((weak));
/* An agent that buffers remote state may define these: before_fork runs before fork with the
 * connection still free, so it can settle things with the shadow and take its own locks;
 * after_fork(0 parent / 1 child) runs after it (see agents/remote). */
extern void bypass_rpc_before_fork(void) __attribute__((weak));
extern void bypass_rpc_after_fork(int in_child) __attribute__((weak));
/* An agent that can tell a vfork child (which runs in its parent's memory, where a call must
 * not take over the parent's connection) from a forked one defines this (see agents/remote). */
extern int bypass_rpc_shares_memory(void) __attribute__((weak));
/* An agent that holds writes back (agents/remote/policy.c) defines this: it runs before each
 * call, outside the connection's lock, so that the call sees what the agent held. */
extern void bypass_rpc_before_call(int64_t call_no) __attribute__((weak));
/* Debug output (debug.c) and the call names (the generated agent), for `bypass run -d rpc`. */
extern unsigned bypass_debug_mask __attribute__((weak));
extern void bypass_debug_write(unsigned subsystem, const char *fmt, ...) __attribute__((weak, format(printf, 2, 3)));
extern const char *const bypass_call_names[] __attribute__((weak));
extern const unsigned bypass_call_names_count __attribute__((weak));
#define RPC_DEBUG_BIT (1u << 3)      /* BYPASS_DEBUG_RPC in bypass_runtime.h */
#define RPC_DEBUG_ON() (&bypass_debug_mask != NULL && (bypass_debug_mask & RPC_DEBUG_BIT) && bypass_debug_write)
/* The call in progress, for its debug line (written by bypass_rpc_end, under the lock). */
static struct {
    int64_t call_no, started_ns;
    int err;
} dbg;

#define HANDSHAKE_MAX 4096
#define NONCE_SIZE 32
#define SMALL_BUF (64 * 1024)
#define FD_FLOOR 1000                 /* keep our socket out of the program's way */
#define DEFAULT_TIMEOUT 60.0
#define KEY_MAX 160

#if defined(__linux__)
#define OS_NAME "linux"
#elif defined(__APPLE__)
#define OS_NAME "darwin"
#elif defined(__FreeBSD__)
#define OS_NAME "freebsd"
#else
#define OS_NAME "unix"
#endif
#if defined(__x86_64__)
#define ARCH_NAME "x86_64"
#elif defined(__aarch64__)
#define ARCH_NAME "aarch64"
#elif defined(__i386__)
#define ARCH_NAME "i686"
#elif defined(__arm__)
#define ARCH_NAME "arm"
#else
#define ARCH_NAME "unknown"
#endif

static uint8_t small_buf[SMALL_BUF];
static uint8_t hs_buf[HANDSHAKE_MAX + 4];

static struct {
    pthread_mutex_t lock;
    int fd;                    /* -1: not connected */
    pid_t pid;                 /* the process this state belongs to (fork detection) */
    int dead;                  /* shadow unreachable: fail fast */
    int warned;                /* the one stderr message was written */
    int failure_warned;
    int failure_errno;         /* what a failed call reports (EIO) */
    int connected_before;      /* this process image has had a connection */
    uint64_t seq;
    char key[KEY_MAX];         /* our process key, once connected */
    char parent[KEY_MAX];      /* the parent's key, after fork */
    int64_t ticket;            /* fork ticket from the parent, for the child's hello */
    /* configuration overrides (bypass_rpc_configure) */
    char address[256];
    char secret[256];
    int secret_set;
    double timeout;
    char spec[96];
    /* the request/reply buffer */
    uint8_t *buf;
    size_t cap;
    bp_mp_writer w;
    bp_mp_reader r;
    /* the calling thread's state, restored at bypass_rpc_end */
    sigset_t saved_mask;
    int saved_cancel;
    sigset_t fork_mask;
    int borrowed;              /* a vfork child's call: the parent's connection is in `lent` */
} S = {
    .lock = PTHREAD_MUTEX_INITIALIZER,
    .fd = -1,
    .failure_errno = EIO,
};

/* What a vfork child sets aside while it makes a call on a connection of its own (its
 * parent, suspended in vfork or busy in other threads, finds everything as it was). */
static struct {
    int fd, dead, connected_before;
    pid_t pid;
    uint64_t seq;
    int64_t ticket;
    char key[KEY_MAX], parent[KEY_MAX];
} lent;

/* ---------------------------------------------------------------------------------------- */
/* small helpers                                                                             */

static const char *env(const char *name)
{
    return bypass_getenv ? bypass_getenv(name) : getenv(name);
}

static void guard_enter(void) { if (bypass_guard_enter) bypass_guard_enter(); }
static void guard_leave(void) { if (bypass_guard_leave) bypass_guard_leave(); }

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
    char line[600];
    va_list ap;
    int n = snprintf(line, sizeof line, "bypass[%d]: ", (int)getpid());
    va_start(ap, fmt);
    n += vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    va_end(ap);
    if (n > (int)sizeof line - 2)
        n = (int)sizeof line - 2;
    line[n++] = '\n';
    ssize_t ignored = write(2, line, (size_t)n);
    (void)ignored;
}

static const char *address(void)
{
    return S.address[0] ? S.address : env("BYPASS_SHADOW");
}

static double timeout_seconds(void)
{
    if (S.timeout > 0)
        return S.timeout;
    const char *t = env("BYPASS_SHADOW_TIMEOUT");
    double v = t ? strtod(t, NULL) : 0;
    return v > 0 ? v : DEFAULT_TIMEOUT;
}

/* The shared secret, from the override, BYPASS_SHADOW_SECRET or BYPASS_SHADOW_SECRET_FILE. */
static size_t load_secret(char *out, size_t cap)
{
    if (S.secret_set) {
        size_t n = strlen(S.secret);
        memcpy(out, S.secret, n);
        return n;
    }
    const char *s = env("BYPASS_SHADOW_SECRET");
    if (s && *s) {
        size_t n = strlen(s);
        if (n > cap) n = cap;
        memcpy(out, s, n);
        return n;
    }
    const char *path = env("BYPASS_SHADOW_SECRET_FILE");
    if (!path || !*path)
        return 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, out, cap);
    close(fd);
    if (n <= 0)
        return 0;
    while (n > 0 && (out[n - 1] == '\n' || out[n - 1] == '\r' || out[n - 1] == ' '))
        n--;
    return (size_t)n;
}

static const char *spec_hash(void)
{
    if (S.spec[0]) return S.spec;
    if (bypass_spec_hash) return bypass_spec_hash;
    return "";
}

/* Read a small file into buf (NUL-terminated); length or -1. */
static ssize_t slurp(const char *path, char *buf, size_t cap)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, buf, cap - 1);
    close(fd);
    if (n < 0)
        return -1;
    buf[n] = 0;
    return n;
}

/* "bootid:pid:starttime" — the shadow's name for a process; see protocol.md. */
static void make_key(pid_t pid, char *out, size_t cap)
{
    static char boot[64];
    char path[64], stat[1024];
    const char *start = "0";
    if (!boot[0]) {
        if (slurp("/proc/sys/kernel/random/boot_id", boot, sizeof boot) <= 0)
            strcpy(boot, "noboot");
        boot[strcspn(boot, "\n")] = 0;
    }
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    if (slurp(path, stat, sizeof stat) > 0) {
        /* field 22 (starttime) counted after the ")" that ends the command name */
        char *p = strrchr(stat, ')');
        int field = 2;
        while (p && *p && field < 22) {
            if (*p == ' ') {
                field++;
                if (field == 22) {
                    start = p + 1;
                    p[1 + strcspn(p + 1, " ")] = 0;
                    break;
                }
            }
            p++;
        }
    }
    snprintf(out, cap, "%s:%d:%s", boot, (int)pid, start);
}

/* ---------------------------------------------------------------------------------------- */
/* the buffer: static to start with, mmap-grown for big frames (never malloc)               */

static int grow_to(size_t need)
{
    if (need > BYPASS_RPC_MAX_FRAME + 4)
        return -1;
    if (need <= S.cap)
        return 0;
    size_t cap = S.cap ? S.cap : SMALL_BUF;
    while (cap < need)
        cap *= 2;
    void *p = mmap(NULL, cap, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return -1;
    memcpy(p, S.buf, S.cap);
    if (S.buf != small_buf)
        munmap(S.buf, S.cap);
    S.buf = p;
    S.cap = cap;
    return 0;
}

static int writer_grow(bp_mp_writer *w, size_t need)
{
    if (grow_to(need) < 0)
        return -1;
    w->buf = S.buf;
    w->cap = S.cap;
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* transport                                                                                 */

static void set_timeouts(int fd, double seconds)
{
    struct timeval tv;
    tv.tv_sec = (time_t)seconds;
    tv.tv_usec = (suseconds_t)((seconds - (double)tv.tv_sec) * 1e6);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

/* A blocking socket whose connect, sends and receives all time out (SO_SNDTIMEO bounds
 * connect on Linux for both Unix and TCP sockets). */
static int open_socket(const char *addr, double timeout, char *why, size_t whylen)
{
    int fd = -1;
    if (strncmp(addr, "unix:", 5) == 0) {
        struct sockaddr_un sun;
        memset(&sun, 0, sizeof sun);
        sun.sun_family = AF_UNIX;
        if (strlen(addr + 5) >= sizeof sun.sun_path) {
            snprintf(why, whylen, "socket path too long");
            errno = ENAMETOOLONG;
            return -1;
        }
        strcpy(sun.sun_path, addr + 5);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
            goto fail;
        set_timeouts(fd, timeout);
        if (connect(fd, (struct sockaddr *)&sun, sizeof sun) < 0)
            goto fail;
        return fd;
    }
    if (strncmp(addr, "tcp:", 4) == 0) {
        char host[256];
        const char *colon = strrchr(addr + 4, ':');
        if (!colon || (size_t)(colon - (addr + 4)) >= sizeof host) {
            snprintf(why, whylen, "bad address (want tcp:host:port)");
            errno = EINVAL;
            return -1;
        }
        memcpy(host, addr + 4, (size_t)(colon - (addr + 4)));
        host[colon - (addr + 4)] = 0;
        if (host[0] == '[') {                    /* [::1] */
            memmove(host, host + 1, strlen(host));
            host[strcspn(host, "]")] = 0;
        }
        struct sockaddr_storage ss;
        socklen_t sslen;
        memset(&ss, 0, sizeof ss);
        int port = atoi(colon + 1);
        struct sockaddr_in *in4 = (struct sockaddr_in *)&ss;
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
        if (inet_pton(AF_INET, host, &in4->sin_addr) == 1) {
            in4->sin_family = AF_INET;
            in4->sin_port = htons((uint16_t)port);
            sslen = sizeof *in4;
        } else if (inet_pton(AF_INET6, host, &in6->sin6_addr) == 1) {
            in6->sin6_family = AF_INET6;
            in6->sin6_port = htons((uint16_t)port);
            sslen = sizeof *in6;
        } else {
            /* A host name: resolve it (may load NSS modules; only at connect time). */
            struct addrinfo hints, *res = NULL;
            memset(&hints, 0, sizeof hints);
            hints.ai_socktype = SOCK_STREAM;
            int rc = getaddrinfo(host, colon + 1, &hints, &res);
            if (rc != 0 || !res) {
                snprintf(why, whylen, "cannot resolve %s: %s", host, gai_strerror(rc));
                errno = EHOSTUNREACH;
                return -1;
            }
            memcpy(&ss, res->ai_addr, res->ai_addrlen);
            sslen = res->ai_addrlen;
            freeaddrinfo(res);
        }
        fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
            goto fail;
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        set_timeouts(fd, timeout);
        if (connect(fd, (struct sockaddr *)&ss, sslen) < 0)
            goto fail;
        return fd;
    }
    snprintf(why, whylen, "bad address (want unix:/path or tcp:host:port)");
    errno = EINVAL;
    return -1;
fail:
    {
        int e = errno;
        if (e == EINPROGRESS || e == EAGAIN)
            e = ETIMEDOUT;
        snprintf(why, whylen, "%s", strerror(e));
        if (fd >= 0)
            close(fd);
        errno = e;
        return -1;
    }
}

/* Every call ends within the timeout, however many sends and receives it takes: a send or
 * receive after the first is given only what is left of the call's time (SO_*TIMEO shortened,
 * restored when the call ends).  A call of one send and one prompt receive pays two
 * clock_gettime for this. */
static int64_t call_deadline;    /* CLOCK_MONOTONIC ns; 0 outside calls (handshakes) */
static int call_shortened;

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int shorten(int fd)
{
    if (!call_deadline)
        return 0;
    int64_t left = call_deadline - now_ns();
    if (left <= 0) {
        errno = ETIMEDOUT;
        return -1;
    }
    struct timeval tv = { (time_t)(left / 1000000000), (suseconds_t)(left % 1000000000 / 1000) };
    if (!tv.tv_sec && !tv.tv_usec)
        tv.tv_usec = 1;          /* (0 would mean: wait forever) */
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    call_shortened = 1;
    return 0;
}

static void call_begins(void)
{
    call_deadline = now_ns() + (int64_t)(timeout_seconds() * 1e9);
}

/* Before the first receive of a call: shorten only if sending already took a while. */
/* How long a caller polls for its reply before it blocks.  Most replies come back within tens
 * of microseconds, but a thread that blocks at once lets its CPU go idle, and a virtual
 * machine's idle vCPU takes 0.1 to 2 ms to wake when the reply arrives: a python3 start
 * importing 40 modules from /job (about 414 calls) took 161 ms (median) on an idle 2-vCPU
 * machine and 96 ms with its CPUs kept busy by other work.  The poll yields the CPU at each
 * turn, so a shadow waiting for this CPU runs; a slower reply costs at most this much CPU. */
#define REPLY_POLL_NS 60000

static void poll_for_reply(int fd)
{
    int saved = errno;
    int64_t until = now_ns() + REPLY_POLL_NS;
    char byte;
    do {
        if (recv(fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT) >= 0 || (errno != EAGAIN && errno != EINTR))
            break;              /* a reply, its end or an error: the real receive takes it */
        sched_yield();
    } while (now_ns() < until);
    errno = saved;
}

static int first_receive(int fd)
{
    poll_for_reply(fd);
    if (call_deadline && call_deadline - now_ns() < (int64_t)(timeout_seconds() * 1e9) - 1000000)
        return shorten(fd);
    return 0;
}

static void call_ends(void)
{
    if (call_shortened && S.fd >= 0)
        set_timeouts(S.fd, timeout_seconds());
    call_shortened = 0;
    call_deadline = 0;
}

static int send_all(int fd, const uint8_t *p, size_t n)
{
    for (int first = 1; n > 0; first = 0) {
        if (!first && shorten(fd) < 0)
            return -1;
        ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                errno = ETIMEDOUT;
            return -1;
        }
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

/*
 * Receive one frame into *buf (growing it through grow when allowed).  Replies are never
 * pipelined, so reading "whatever is there" cannot swallow part of a next frame: most
 * replies arrive with one recv.  Returns the body length, or -1 with errno.
 */
static ssize_t recv_frame(int fd, uint8_t **buf, size_t *cap, size_t max, int can_grow)
{
    size_t have = 0, total = 4;
    for (int first = 1; have < total; first = 0) {
        if ((first ? first_receive(fd) : shorten(fd)) < 0)
            return -1;
        ssize_t k = recv(fd, *buf + have, *cap - have, 0);
        if (k == 0) {
            errno = ECONNRESET;
            return -1;
        }
        if (k < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                errno = ETIMEDOUT;
            return -1;
        }
        have += (size_t)k;
        if (total == 4 && have >= 4) {
            uint8_t *b = *buf;
            size_t len = ((size_t)b[0] << 24) | ((size_t)b[1] << 16) | ((size_t)b[2] << 8) | b[3];
            if (len > max) {
                errno = EMSGSIZE;
                return -1;
            }
            total = 4 + len;
            if (total > *cap) {
                if (!can_grow || grow_to(total) < 0) {
                    errno = EMSGSIZE;
                    return -1;
                }
                *buf = S.buf;
                *cap = S.cap;
            }
        }
    }
    return (ssize_t)(total - 4);
}

static void put_header(uint8_t *p, size_t len)
{
    p[0] = (uint8_t)(len >> 24);
    p[1] = (uint8_t)(len >> 16);
    p[2] = (uint8_t)(len >> 8);
    p[3] = (uint8_t)len;
}

static int str_is(bp_mp_reader *r, const char *want)
{
    const char *s;
    uint32_t n;
    return bp_mp_read_str(r, &s, &n) == 0 && n == strlen(want) && memcmp(s, want, n) == 0;
}

/* Move fd to >= FD_FLOOR with close-on-exec (lower when the descriptor limit is small). */
static int move_high(int fd)
{
    static const int floors[] = {FD_FLOOR, 512, 256, 64};
    for (size_t i = 0; i < sizeof floors / sizeof floors[0]; i++) {
        if (fd >= floors[i])
            return fd;
        int hi = fcntl(fd, F_DUPFD_CLOEXEC, floors[i]);
        if (hi >= 0) {
            close(fd);
            return hi;
        }
    }
    return fd;
}

/* ---------------------------------------------------------------------------------------- */
/* connecting and the handshake                                                              */

static void drop_connection(void)
{
    if (S.fd >= 0)
        close(S.fd);
    S.fd = -1;
}

/* Give up on the shadow for this process: one message, then every call fails fast. */
static void declare_dead(const char *what, const char *why)
{
    drop_connection();
    S.dead = 1;
    dbg.err = -1;
    if (RPC_DEBUG_ON())
        bypass_debug_write(RPC_DEBUG_BIT, "shadow %s: %s", what, why);
    if (!S.warned) {
        const char *a = address();
        S.warned = 1;
        say("shadow %s (%s): %s; remote calls fail with %s", what, a ? a : "BYPASS_SHADOW unset",
            why, strerror(S.failure_errno));
    }
}

static int handshake(int fd, double timeout, char *why, size_t whylen)
{
    (void)timeout;
    uint8_t *hb = hs_buf;
    size_t hcap = sizeof hs_buf;
    bp_mp_reader r;
    uint32_t n;
    int64_t version;
    int auth_required = 0;
    const void *snonce;
    uint32_t snonce_len;
    const char *sspec;
    uint32_t sspec_len;

    /* 1. the shadow's greeting: [magic, version, spec, auth_required, nonce] */
    ssize_t len = recv_frame(fd, &hb, &hcap, HANDSHAKE_MAX, 0);
    if (len < 0) {
        snprintf(why, whylen, "no greeting: %s", strerror(errno));
        return -1;
    }
    bp_mp_reader_init(&r, hb + 4, (size_t)len);
    if (bp_mp_read_array(&r, &n) || n != 5 || !str_is(&r, "bypass-shadow") ||
        bp_mp_read_int(&r, &version) || bp_mp_read_str(&r, &sspec, &sspec_len) ||
        bp_mp_read_bool(&r, &auth_required) || bp_mp_read_bin(&r, &snonce, &snonce_len) ||
        snonce_len != NONCE_SIZE) {
        snprintf(why, whylen, "not a Bypass shadow");
        return -1;
    }
    uint8_t snonce_copy[NONCE_SIZE];
    memcpy(snonce_copy, snonce, NONCE_SIZE);

    char secret[256];
    size_t secret_len = load_secret(secret, sizeof secret);
    if (auth_required && secret_len == 0) {
        snprintf(why, whylen, "the shadow requires a secret (BYPASS_SHADOW_SECRET)");
        return -1;
    }

    /* 2. our hello: [magic, version, spec, info, cnonce, mac] */
    uint8_t cnonce[NONCE_SIZE], mac[BP_SHA256_SIZE];
    if (getentropy(cnonce, sizeof cnonce) != 0) {
        snprintf(why, whylen, "no randomness: %s", strerror(errno));
        return -1;
    }
    const char *spec = spec_hash();
    if (secret_len)
        bp_hmac_sha256(secret, secret_len, "bypass-agent", 13 /* with the NUL */,
                       snonce_copy, NONCE_SIZE, cnonce, NONCE_SIZE, spec, strlen(spec), mac);
    if (!S.parent[0] && !S.connected_before)
        make_key(getppid(), S.parent, sizeof S.parent);   /* spawned child: parent by ppid */
    make_key(getpid(), S.key, sizeof S.key);

    bp_mp_writer w;
    bp_mp_writer_init(&w, hs_buf, sizeof hs_buf, NULL, NULL);
    w.len = 4;
    bp_mp_write_array(&w, 6);
    bp_mp_write_cstr(&w, "bypass-agent");
    bp_mp_write_int(&w, BYPASS_RPC_PROTOCOL_VERSION);
    bp_mp_write_cstr(&w, spec);
    bp_mp_write_map(&w, 7);
    bp_mp_write_cstr(&w, "platform");
    bp_mp_write_cstr(&w, OS_NAME "-" ARCH_NAME);
    bp_mp_write_cstr(&w, "pid");
    bp_mp_write_int(&w, getpid());
    bp_mp_write_cstr(&w, "ppid");
    bp_mp_write_int(&w, getppid());
    bp_mp_write_cstr(&w, "key");
    bp_mp_write_cstr(&w, S.key);
    bp_mp_write_cstr(&w, "parent");
    bp_mp_write_cstr(&w, S.parent[0] ? S.parent : NULL);
    bp_mp_write_cstr(&w, "ticket");
    if (S.ticket)
        bp_mp_write_int(&w, S.ticket);
    else
        bp_mp_write_nil(&w);
    bp_mp_write_cstr(&w, "first");
    bp_mp_write_bool(&w, !S.connected_before);
    bp_mp_write_bin(&w, cnonce, sizeof cnonce);
    if (secret_len)
        bp_mp_write_bin(&w, mac, sizeof mac);
    else
        bp_mp_write_nil(&w);
    if (w.error) {
        snprintf(why, whylen, "hello too large");
        return -1;
    }
    put_header(hs_buf, w.len - 4);
    if (send_all(fd, hs_buf, w.len) < 0) {
        snprintf(why, whylen, "hello not sent: %s", strerror(errno));
        return -1;
    }

    /* 3. ["welcome", key, proof, info] or ["refused", reason] */
    hb = hs_buf;
    hcap = sizeof hs_buf;
    len = recv_frame(fd, &hb, &hcap, HANDSHAKE_MAX, 0);
    if (len < 0) {
        snprintf(why, whylen, "no welcome: %s", strerror(errno));
        return -1;
    }
    bp_mp_reader_init(&r, hb + 4, (size_t)len);
    if (bp_mp_read_array(&r, &n) || n < 2) {
        snprintf(why, whylen, "malformed welcome");
        return -1;
    }
    bp_mp_reader save = r;
    if (str_is(&r, "refused")) {
        const char *reason = "";
        uint32_t rlen = 0;
        bp_mp_read_str(&r, &reason, &rlen);
        snprintf(why, whylen, "refused: %.*s", (int)rlen, reason);
        return -1;
    }
    r = save;
    const void *proof;
    uint32_t proof_len;
    const char *k;
    uint32_t klen;
    if (n != 4 || !str_is(&r, "welcome") || bp_mp_read_str(&r, &k, &klen)) {
        snprintf(why, whylen, "malformed welcome");
        return -1;
    }
    if (secret_len) {
        /* Mutual: the shadow must show it knows the secret too. */
        uint8_t expect[BP_SHA256_SIZE];
        bp_hmac_sha256(secret, secret_len, "bypass-shadow", 14, cnonce, NONCE_SIZE,
                       snonce_copy, NONCE_SIZE, spec, strlen(spec), expect);
        if (bp_mp_peek(&r) != BP_MP_BIN || bp_mp_read_bin(&r, &proof, &proof_len) ||
            proof_len != sizeof expect || memcmp(proof, expect, sizeof expect) != 0) {
            snprintf(why, whylen, "the shadow did not prove it knows the secret");
            return -1;
        }
    }
    memset(secret, 0, sizeof secret);
    return 0;
}

/* Under the lock: make sure we have a connection (or say why not). */
static int ensure_connected(void)
{
    if (S.fd >= 0)
        return 0;
    if (S.dead)
        return -1;
    if (!S.buf) {
        S.buf = small_buf;
        S.cap = sizeof small_buf;
    }
    const char *a = address();
    char why[300] = "";
    if (!a || !*a) {
        declare_dead("not configured", "BYPASS_SHADOW is not set");
        return -1;
    }
    double t = timeout_seconds();
    int fd = open_socket(a, t < 10 ? t : 10, why, sizeof why);
    if (fd < 0) {
        declare_dead("unreachable", why);
        return -1;
    }
    fd = move_high(fd);
    if (handshake(fd, t, why, sizeof why) < 0) {
        close(fd);
        declare_dead("handshake failed", why);
        return -1;
    }
    set_timeouts(fd, t);
    S.fd = fd;
    /* The runtime keeps the program's close/dup2/close_range off registered descriptors. */
    static int registered;
    if (!registered && bypass_fd_register) {
        registered = 1;
        bypass_fd_register(&S.fd);
    }
    S.pid = getpid();
    S.connected_before = 1;
    S.ticket = 0;
    if (RPC_DEBUG_ON())
        bypass_debug_write(RPC_DEBUG_BIT, "connected to %s", a);
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* fork: the child gets its own connection and the parent's descriptor table               */

static void reset_in_child(void)
{
    pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
    S.lock = fresh;
    if (S.fd >= 0)
        close(S.fd);     /* the parent's connection: our copy only */
    S.fd = -1;
    if (S.key[0])
        memcpy(S.parent, S.key, sizeof S.parent);
    S.key[0] = 0;
    S.pid = getpid();
    S.dead = 0;          /* let the child try once more; `warned` keeps it quiet */
    S.seq = 0;
}

/* Under the lock, connected: a call with no arguments whose result is an int (or nil). */
static int simple_call_locked(int64_t call_no, int64_t *result);

static void atfork_prepare(void)
{
    if (bypass_rpc_before_fork) {
        guard_enter();
        bypass_rpc_before_fork();
        guard_leave();
    }
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    guard_enter();
    pthread_mutex_lock(&S.lock);
    S.fork_mask = old;
    S.ticket = 0;
    /* Snapshot our table for the child (see protocol.md); nothing to do when we never
     * talked to the shadow or it is gone. */
    if (S.fd >= 0 && !S.dead && S.pid == getpid()) {
        int64_t t = 0;
        if (simple_call_locked(BYPASS_RPC_CALL_FORK, &t) == 0)
            S.ticket = t;
    }
}

static void atfork_parent(void)
{
    sigset_t m = S.fork_mask;
    S.ticket = 0;
    pthread_mutex_unlock(&S.lock);
    if (bypass_rpc_after_fork)
        bypass_rpc_after_fork(0);
    guard_leave();
    pthread_sigmask(SIG_SETMASK, &m, NULL);
}

static void atfork_child(void)
{
    sigset_t m = S.fork_mask;
    reset_in_child();
    if (bypass_rpc_after_fork)
        bypass_rpc_after_fork(1);
    guard_leave();
    pthread_sigmask(SIG_SETMASK, &m, NULL);
}

__attribute__((constructor)) static void rpc_client_init(void)
{
    pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
}

/* ---------------------------------------------------------------------------------------- */
/* calls                                                                                     */

static const char *call_name(int64_t call_no)
{
    if (&bypass_call_names_count != NULL && bypass_call_names && call_no > 0 &&
        (uint64_t)call_no < bypass_call_names_count)
        return bypass_call_names[call_no];
    return "internal";
}

static void start_request(int64_t call_no, uint32_t nargs)
{
    if (RPC_DEBUG_ON()) {
        dbg.call_no = call_no;
        dbg.started_ns = now_ns();
        dbg.err = 0;
    }
    bp_mp_writer_init(&S.w, S.buf, S.cap, writer_grow, NULL);
    S.w.len = 4;
    bp_mp_write_array(&S.w, 2 + nargs);
    bp_mp_write_int(&S.w, call_no);
    bp_mp_write_uint(&S.w, ++S.seq);
}

/* Send the request in S.buf and receive the reply into it; decode the reply's envelope.
 * 0: S.r is at the result.  -1: errno set (the shadow's errno, or failure_errno). */
static int send_request(void)
{
    if (S.w.error) {
        /* too large for a frame: the caller should have split it; nothing was sent */
        errno = S.w.error == BP_MP_ENOSPC ? EMSGSIZE : EIO;
        return -1;
    }
    size_t total = S.w.len;
    put_header(S.buf, total - 4);
    call_begins();
    if (send_all(S.fd, S.buf, total) < 0) {
        int e = errno;
        if (e == EBADF || e == ENOTSOCK) {
            /* The program closed our descriptor (closefrom...): nothing reached the shadow,
             * so it is safe to reconnect and send again, once. */
            S.fd = -1;
            if (ensure_connected() < 0 || send_all(S.fd, S.buf, total) < 0) {
                if (!S.dead)
                    declare_dead("lost", strerror(errno));
                errno = S.failure_errno;
                return -1;
            }
        } else {
            declare_dead("lost", strerror(e));
            errno = S.failure_errno;
            return -1;
        }
    }
    return 0;
}

static int decode_envelope(size_t len)
{
    bp_mp_reader_init(&S.r, S.buf + 4, len);
    uint32_t n;
    uint64_t seq;
    int64_t status;
    if (bp_mp_read_array(&S.r, &n) || n < 3 || bp_mp_read_uint(&S.r, &seq) || seq != S.seq ||
        bp_mp_read_int(&S.r, &status)) {
        declare_dead("sent a malformed reply", "protocol error");
        errno = S.failure_errno;
        return -1;
    }
    if (status == 0)
        return 0;
    if (status == 1) {
        int64_t neutral;
        if (bp_mp_read_int(&S.r, &neutral)) {
            errno = S.failure_errno;
            return -1;
        }
        errno = (int)bypass_errno_to_local(neutral, NULL);
        dbg.err = errno;
        return -1;
    }
    const char *msg = "";
    uint32_t mlen = 0;
    bp_mp_read_str(&S.r, &msg, &mlen);
    if (!S.failure_warned) {
        S.failure_warned = 1;
        say("shadow failed a call: %.*s", (int)(mlen > 400 ? 400 : mlen), msg);
    }
    errno = S.failure_errno;
    return -1;
}

static int transact(void)
{
    if (send_request() < 0)
        return -1;
    uint8_t *buf = S.buf;
    size_t cap = S.cap;
    ssize_t len = recv_frame(S.fd, &buf, &cap, BYPASS_RPC_MAX_FRAME, 1);
    if (len < 0) {
        /* The request may or may not have been performed: report failure, never success. */
        declare_dead(errno == ETIMEDOUT ? "not answering" : "lost", strerror(errno));
        errno = S.failure_errno;
        return -1;
    }
    return decode_envelope((size_t)len);
}

/* recv at most n bytes into p (at least 1); -1 with errno on error, timeout or end.  first:
 * the call's first receive. */
static ssize_t recv_some(void *p, size_t n, int first)
{
    for (;;) {
        if ((first ? first_receive(S.fd) : shorten(S.fd)) < 0)
            return -1;
        ssize_t k = recv(S.fd, p, n, 0);
        if (k > 0)
            return k;
        if (k == 0)
            errno = ECONNRESET;
        else if (errno == EINTR)
            continue;
        else if (errno == EAGAIN || errno == EWOULDBLOCK)
            errno = ETIMEDOUT;
        return -1;
    }
}

static ssize_t lost_reply(void)
{
    declare_dead(errno == ETIMEDOUT ? "not answering" : "lost", strerror(errno));
    errno = S.failure_errno;
    return -1;
}

/*
 * Like bypass_rpc_finish for calls whose reply is [n, bin] (reads): the bin's bytes are
 * received straight into dst (at most cap), not copied through the connection's buffer, so a
 * big read costs one copy out of the kernel.  Any other reply (an errno) is handled as usual.
 */
ssize_t bypass_rpc_finish_into(void *dst, size_t cap, size_t *got)
{
    if (send_request() < 0)
        return -1;
    /* The envelope before the payload is at most ~30 bytes: take 64 (never past the frame). */
    size_t have = 0, total = 4;
    while (have < total && have < 64) {
        ssize_t k = recv_some(S.buf + have, (total < 64 ? total : 64) - have, have == 0);
        if (k < 0)
            return lost_reply();
        have += (size_t)k;
        if (total == 4 && have >= 4) {
            size_t flen = ((size_t)S.buf[0] << 24) | ((size_t)S.buf[1] << 16) |
                          ((size_t)S.buf[2] << 8) | S.buf[3];
            if (flen > BYPASS_RPC_MAX_FRAME) {
                errno = EMSGSIZE;
                return lost_reply();
            }
            total = 4 + flen;
        }
    }
    bp_mp_reader r;
    bp_mp_reader_init(&r, S.buf + 4, have - 4);
    uint32_t n, n2, blen = 0;
    uint64_t seq;
    int64_t status, result;
    if (bp_mp_read_array(&r, &n) || n != 3 || bp_mp_read_uint(&r, &seq) || seq != S.seq ||
        bp_mp_read_int(&r, &status)) {
        declare_dead("sent a malformed reply", "protocol error");
        errno = S.failure_errno;
        return -1;
    }
    if (status != 0 || bp_mp_read_array(&r, &n2) || n2 != 2 || bp_mp_read_int(&r, &result) ||
        r.pos >= r.len) {
        /* not a data reply: read the whole (small) frame and decode it the usual way */
        if (total > S.cap && grow_to(total) < 0) {
            errno = EMSGSIZE;
            return lost_reply();
        }
        while (have < total) {
            ssize_t k = recv_some(S.buf + have, total - have, 0);
            if (k < 0)
                return lost_reply();
            have += (size_t)k;
        }
        if (decode_envelope(total - 4) < 0)
            return -1;
        errno = EIO;           /* status 0 but not [n, bin]: this call cannot be read so */
        return -1;
    }
    /* bin header: c4 (u8 length), c5 (u16), c6 (u32) */
    const uint8_t *b = r.buf + r.pos;
    size_t avail = r.len - r.pos, hl;
    if (b[0] == 0xc4 && avail >= 2) { blen = b[1]; hl = 2; }
    else if (b[0] == 0xc5 && avail >= 3) { blen = (uint32_t)(b[1] << 8 | b[2]); hl = 3; }
    else if (b[0] == 0xc6 && avail >= 5) { blen = (uint32_t)b[1] << 24 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 8 | b[4]; hl = 5; }
    else {
        declare_dead("sent a malformed reply", "protocol error");
        errno = S.failure_errno;
        return -1;
    }
    size_t start = 4 + r.pos + hl;       /* payload offset in the frame */
    if (start + blen != total || blen > cap) {
        declare_dead("sent a malformed reply", "protocol error");
        errno = S.failure_errno;
        return -1;
    }
    size_t already = have > start ? have - start : 0;
    memcpy(dst, S.buf + start, already);
    while (already < blen) {
        ssize_t k = recv_some((uint8_t *)dst + already, blen - already, 0);
        if (k < 0)
            return lost_reply();
        already += (size_t)k;
    }
    *got = blen;
    return (ssize_t)result;
}

static int simple_call_locked(int64_t call_no, int64_t *result)
{
    start_request(call_no, 0);
    int rc = transact();
    call_ends();
    if (rc < 0)
        return -1;
    if (bp_mp_peek(&S.r) == BP_MP_NIL) {
        *result = 0;
        return 0;
    }
    return bp_mp_read_int(&S.r, result) == 0 ? 0 : -1;
}

/* Exchange the connection identity in S with the one in `lent`. */
static void swap_connection(void)
{
#define SWAP(field)                                                                       \
    do {                                                                                  \
        __typeof__(S.field) t_ = S.field;                                                 \
        S.field = lent.field;                                                             \
        lent.field = t_;                                                                  \
    } while (0)
    SWAP(fd);
    SWAP(dead);
    SWAP(connected_before);
    SWAP(pid);
    SWAP(seq);
    SWAP(ticket);
#undef SWAP
    char k[KEY_MAX];
    memcpy(k, S.key, KEY_MAX), memcpy(S.key, lent.key, KEY_MAX), memcpy(lent.key, k, KEY_MAX);
    memcpy(k, S.parent, KEY_MAX), memcpy(S.parent, lent.parent, KEY_MAX), memcpy(lent.parent, k, KEY_MAX);
}

/* A vfork child runs in its parent's memory: under the lock (other threads of the parent may
 * be calling), it puts the parent's connection aside and connects as itself, a child of the
 * parent; bypass_rpc_end puts everything back.  The child's connection is one per call (the
 * parent's socket stays open in the child until its exec). */
static void borrow(void)
{
    lent.fd = -1;
    lent.dead = lent.connected_before = 0;
    lent.pid = getpid();
    lent.seq = 0;
    lent.ticket = 0;
    lent.key[0] = 0;
    memcpy(lent.parent, S.key[0] ? S.key : S.parent, KEY_MAX);
    /* before S.pid changes: the parent's other threads must see a borrow, not a fork */
    __atomic_store_n(&S.borrowed, 1, __ATOMIC_SEQ_CST);
    swap_connection();
}

static void give_back_connection(void)
{
    if (!S.borrowed)
        return;
    if (S.fd >= 0)
        close(S.fd);
    swap_connection();
    __atomic_store_n(&S.borrowed, 0, __ATOMIC_SEQ_CST);
}

/* S.pid is not ours: a fork that skipped the atfork handlers (raw clone), or, in the parent,
 * a vfork child's borrow in progress (the lock makes this thread wait for it to end). */
static int forked_behind_our_back(void)
{
    pid_t me = getpid();
    if (__atomic_load_n(&S.pid, __ATOMIC_SEQ_CST) == me || S.pid == 0)
        return 0;
    if (__atomic_load_n(&S.borrowed, __ATOMIC_SEQ_CST))
        return 0;
    return __atomic_load_n(&S.pid, __ATOMIC_SEQ_CST) != me;
}

int bypass_rpc_begin(int64_t call_no, uint32_t nargs, bp_mp_writer **w)
{
    if (bypass_rpc_before_call)
        bypass_rpc_before_call(call_no);
    int saved_errno = errno;
    sigset_t all, old;
    int oldcancel;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &oldcancel);
    int vforked = 0;
    if (S.pid != 0 && S.pid != getpid()) {
        if (bypass_rpc_shares_memory && bypass_rpc_shares_memory())
            vforked = 1;
        else if (forked_behind_our_back())
            reset_in_child();
    }
    pthread_mutex_lock(&S.lock);
    if (vforked)
        borrow();
    S.saved_mask = old;
    S.saved_cancel = oldcancel;
    if (ensure_connected() < 0) {
        give_back_connection();
        pthread_mutex_unlock(&S.lock);
        pthread_setcancelstate(oldcancel, NULL);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        errno = S.failure_errno;
        return -1;
    }
    start_request(call_no, nargs);
    *w = &S.w;
    errno = saved_errno;
    return 0;
}

int bypass_rpc_finish(bp_mp_reader **r)
{
    *r = &S.r;
    return transact();
}

void bypass_rpc_end(void)
{
    int e = errno;
    if (RPC_DEBUG_ON() && dbg.started_ns) {
        double us = (double)(now_ns() - dbg.started_ns) / 1e3;
        if (dbg.err > 0)
            bypass_debug_write(RPC_DEBUG_BIT, "call %s (%lld): %s, %.0f us", call_name(dbg.call_no),
                               (long long)dbg.call_no, strerrorname_np(dbg.err) ? strerrorname_np(dbg.err) : "E?", us);
        else
            bypass_debug_write(RPC_DEBUG_BIT, "call %s (%lld): %s, %.0f us", call_name(dbg.call_no),
                               (long long)dbg.call_no, dbg.err ? "failed" : "answered", us);
        dbg.started_ns = 0;
    }
    sigset_t m = S.saved_mask;
    int c = S.saved_cancel;
    call_ends();
    give_back_connection();
    pthread_mutex_unlock(&S.lock);
    pthread_setcancelstate(c, NULL);
    pthread_sigmask(SIG_SETMASK, &m, NULL);
    errno = e;
}

int bypass_rpc_ping(void)
{
    bp_mp_writer *w;
    bp_mp_reader *r;
    if (bypass_rpc_begin(BYPASS_RPC_CALL_PING, 0, &w) < 0)
        return -1;
    int rc = bypass_rpc_finish(&r);
    bypass_rpc_end();
    return rc;
}

void bypass_rpc_configure(const char *addr, const char *secret, double timeout_seconds)
{
    pthread_mutex_lock(&S.lock);
    snprintf(S.address, sizeof S.address, "%s", addr ? addr : "");
    snprintf(S.secret, sizeof S.secret, "%s", secret ? secret : "");
    S.secret_set = secret != NULL;
    S.timeout = timeout_seconds > 0 ? timeout_seconds : 0;
    pthread_mutex_unlock(&S.lock);
}

void bypass_rpc_set_spec_hash(const char *hash)
{
    snprintf(S.spec, sizeof S.spec, "%s", hash ? hash : "");
}

void bypass_rpc_set_failure_errno(int e)
{
    S.failure_errno = e;
}

int bypass_rpc_fd(void)
{
    return S.fd;
}

void bypass_rpc_reset(void)
{
    pthread_mutex_lock(&S.lock);
    drop_connection();
    S.dead = 0;
    S.warned = 0;
    S.failure_warned = 0;
    pthread_mutex_unlock(&S.lock);
}
