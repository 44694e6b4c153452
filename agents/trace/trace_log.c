/*
 * Log writer of the trace agent. It runs inside agent actions, so the libc calls below reach
 * the real functions. Each line goes out in one write() on an O_APPEND descriptor, so lines from
 * threads and from parent and child processes interleave whole.
 */
#define _GNU_SOURCE
#include "trace_log.h"

#include "bypass_runtime.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

int trace_state = TRACE_UNKNOWN;
static int log_fd = -1;

static int open_log(void)
{
    const char *path = bypass_getenv("BYPASS_TRACE");
    if (!path || !*path)
        return TRACE_OFF;
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
        bypass_log("cannot open trace log %s: %s", path, strerror(errno));
        return TRACE_OFF;
    }
    log_fd = bypass_fd_move_high(fd);
    bypass_fd_register(&log_fd);
    return TRACE_ON;
}

int trace_start(void)
{
    static pthread_mutex_t once = PTHREAD_MUTEX_INITIALIZER;
    pthread_mutex_lock(&once);
    if (trace_state == TRACE_UNKNOWN)
        __atomic_store_n(&trace_state, open_log(), __ATOMIC_RELEASE);
    pthread_mutex_unlock(&once);
    return trace_state == TRACE_ON;
}

static void emit(const char *line, size_t length)
{
    while (length > 0) {
        ssize_t done = write(log_fd, line, length);
        if (done < 0 && errno == EINTR)
            continue;
        if (done <= 0)
            return;
        line += done;
        length -= (size_t)done;
    }
}

void trace_write(const char *name, const char *entry, const char *args, const char *result, int err)
{
    char line[2048];
    size_t at = bypass_fmt(line, sizeof line, 0, "%d %s(%s) = %s", (int)getpid(), name, args, result);
    if (err)
        at = bypass_fmt(line, sizeof line, at, " %s", bypass_errno_name(err));
    at = bypass_fmt(line, sizeof line, at, " <%s>\n", entry);
    if (at == sizeof line - 1)
        line[at - 1] = '\n';
    emit(line, at);
}

void trace_write_start(const char *name, const char *entry, const char *args)
{
    char line[2048];
    size_t at = bypass_fmt(line, sizeof line, 0, "%d %s(%s) ... <%s>\n", (int)getpid(), name, args, entry);
    if (at == sizeof line - 1)
        line[at - 1] = '\n';
    emit(line, at);
}
