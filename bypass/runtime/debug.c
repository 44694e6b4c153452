/*
 * Debug output by subsystem (`bypass run SPEC -d calls,policy -o FILE -- prog`), Parrot style.
 *
 * BYPASS_DEBUG names the subsystems (comma-separated, or "all"); BYPASS_DEBUG_FILE the file the
 * lines are appended to (stderr without it). Both are settings: they follow the program into
 * its children like every BYPASS_* variable.
 *
 * The program must not notice: the file is opened once per process image, moved above the
 * program's descriptors (BYPASS_FD_FLOOR), close-on-exec, and registered so that close,
 * close_range and dup2 cannot take it. The runtime's exec hooks let it through an exec (a
 * sandboxed child may not open the path again: Landlock), and the next image's agent takes it
 * over, close-on-exec again, or opens the path when there is none. The window: from the hook's
 * F_SETFD to its return the descriptor is inheritable, and a program without the agent started
 * in it (static, set-uid, or exec'd by another thread's raw fork+exec) keeps it open; a descriptor
 * cannot both survive exec and be closed by it, and the path cannot replace it (Landlock), so this
 * is documented (README.md) rather than closed. When the descriptor cannot
 * be moved up there (a low RLIMIT_NOFILE), each line opens the path, writes and closes instead. A line is built on the stack and written with one write() on an O_APPEND
 * descriptor, so lines of threads and forked processes interleave whole.
 *
 * Off, it costs a test of bypass_debug_mask where a line could be written.
 */
#define _GNU_SOURCE
#include "bypass_runtime.h"

#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

unsigned bypass_debug_mask BYPASS_HOT;

static const struct {
    const char *name;
    unsigned bit;
} subsystems[] = {
    {"calls", BYPASS_DEBUG_CALLS},   {"syscall", BYPASS_DEBUG_CALLS},   /* Parrot's name for it */
    {"process", BYPASS_DEBUG_PROCESS}, {"resolve", BYPASS_DEBUG_RESOLVE}, {"rpc", BYPASS_DEBUG_RPC},
    {"policy", BYPASS_DEBUG_POLICY}, {"cache", BYPASS_DEBUG_CACHE},     {"http", BYPASS_DEBUG_HTTP},
    {"all", ~0u},
};

static int debug_fd = -1;        /* -1: stderr (no file) or one open per line (debug_path) */
static char debug_path[1024] BYPASS_LARGE;

static unsigned parse_names(const char *list)
{
    unsigned mask = 0;
    while (list && *list) {
        size_t length = strcspn(list, ",");
        for (size_t i = 0; i < sizeof subsystems / sizeof subsystems[0]; i++)
            if (strlen(subsystems[i].name) == length && strncmp(subsystems[i].name, list, length) == 0)
                mask |= subsystems[i].bit;
        list += length + (list[length] == ',');
    }
    return mask;
}

static const char *name_of(unsigned bit)
{
    for (size_t i = 0; i < sizeof subsystems / sizeof subsystems[0]; i++)
        if (subsystems[i].bit == bit)
            return subsystems[i].name;
    return "debug";
}

static int open_path(void)
{
    return (int)syscall(SYS_openat, AT_FDCWD, debug_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
}

/* The descriptor the previous image let through exec, if it is still open and is the file. */
static int inherited(void)
{
    struct stat want, have;
    if (syscall(SYS_newfstatat, AT_FDCWD, debug_path, &want, 0) < 0)
        return -1;
    for (int fd = BYPASS_FD_FLOOR; fd < BYPASS_FD_FLOOR + 32; fd++) {
        int flags = (int)syscall(SYS_fcntl, fd, F_GETFL);
        if (flags < 0 || (flags & O_ACCMODE) != O_WRONLY || !(flags & O_APPEND))
            continue;
        if (syscall(SYS_fstat, fd, &have) == 0 && have.st_dev == want.st_dev && have.st_ino == want.st_ino) {
            syscall(SYS_fcntl, fd, F_SETFD, FD_CLOEXEC);
            return fd;
        }
    }
    return -1;
}

/* Around an exec (the runtime's hooks): the file stays open for the next image. */
void bypass_debug_exec(int before)
{
    int fd = __atomic_load_n(&debug_fd, __ATOMIC_ACQUIRE);
    if (fd >= 0)
        syscall(SYS_fcntl, fd, F_SETFD, before ? 0 : FD_CLOEXEC);
}

/* Called once by the runtime's constructor, after the settings are captured. */
void bypass_debug_init(void)
{
    unsigned mask = parse_names(bypass_getenv("BYPASS_DEBUG"));
    if (mask == 0)
        return;
    const char *file = bypass_getenv("BYPASS_DEBUG_FILE");
    if (file && *file && strlen(file) < sizeof debug_path) {
        memcpy(debug_path, file, strlen(file) + 1);
        int fd = inherited();
        if (fd < 0)
            fd = open_path();
        if (fd >= 0) {
            int high = bypass_fd_move_high(fd);
            if (high >= BYPASS_FD_FLOOR) {
                debug_fd = high;
                bypass_fd_register(&debug_fd);
            } else {
                syscall(SYS_close, high);   /* keep the program's numbering: a path per line */
            }
        }
    }
    __atomic_store_n(&bypass_debug_mask, mask, __ATOMIC_RELEASE);
    if (mask & BYPASS_DEBUG_PROCESS) {
        char exe[512];
        long got = syscall(SYS_readlink, "/proc/self/exe", exe, sizeof exe - 1);
        exe[got > 0 ? got : 0] = '\0';
        bypass_debug_write(BYPASS_DEBUG_PROCESS, "start %s (parent %d), agent %s", exe, (int)getppid(),
                           bypass_self_path());
    }
}

static void emit(const char *line, size_t length)
{
    int fd = __atomic_load_n(&debug_fd, __ATOMIC_ACQUIRE);
    int opened = -1;
    if (fd < 0 && debug_path[0])
        fd = opened = open_path();
    if (fd < 0)
        fd = 2;
    while (length > 0) {
        long done = syscall(SYS_write, fd, line, length);
        if (done < 0 && errno == EINTR)
            continue;
        if (done <= 0)
            break;
        line += done;
        length -= (size_t)done;
    }
    if (opened >= 0)
        syscall(SYS_close, opened);
}

void bypass_debug_write(unsigned subsystem, const char *fmt, ...)
{
    int saved_errno = errno;
    char line[2048];
    size_t at = bypass_fmt(line, sizeof line, 0, "%s %d %s: ", bypass_agent_name, (int)getpid(), name_of(subsystem));
    va_list ap;
    va_start(ap, fmt);
    if (at < sizeof line) {
        int wrote = vsnprintf(line + at, sizeof line - at, fmt, ap);
        if (wrote > 0)
            at = at + (size_t)wrote < sizeof line ? at + (size_t)wrote : sizeof line - 1;
    }
    va_end(ap);
    if (at > sizeof line - 2)
        at = sizeof line - 2;
    line[at++] = '\n';
    emit(line, at);
    errno = saved_errno;
}

void bypass_debug_call(const char *entry, const char *name, const char *args, const char *result, int err)
{
    if (err)
        bypass_debug_write(BYPASS_DEBUG_CALLS, "%s(%s) = %s %s <%s>", name, args, result, bypass_errno_name(err), entry);
    else
        bypass_debug_write(BYPASS_DEBUG_CALLS, "%s(%s) = %s <%s>", name, args, result, entry);
}
