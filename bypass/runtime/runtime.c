/*
 * The fixed C runtime of a Bypass agent. See bypass_runtime.h for the contract.
 *
 * Rules this file keeps: no malloc on any path a wrapper can reach before main (settings are
 * copied into static buffers), no call to a function an agent may wrap except through the
 * depth guard or a raw syscall, and nothing that a vfork child cannot do (exec hooks build the
 * repaired environment on the stack).
 */
#define _GNU_SOURCE
#include <linux/close_range.h>
#include "bypass_runtime.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

__thread int bypass_depth __attribute__((tls_model("initial-exec")));

void bypass_guard_enter(void) { bypass_depth++; }
void bypass_guard_leave(void) { bypass_depth--; }

/* ------------------------------------------------------------------ originals */

/* A fork child that execs (a shell, make) would look its exec original up itself, in every
 * child, on pages the fork left it to fault in again (the loader's code, the C library's symbol
 * tables: about ten page faults per child), and readlink's, which a sandbox's check of the
 * program's path needs on a merged /usr (/bin is a link).  The parent looks them up once,
 * before its first fork, and its children find them here.  Only names every C library has: a
 * failed lookup would leave a message for the program's dlerror(). */
static const char *const prefork_names[] = {"execve", "execvpe", "readlink"};
static void *prefork_found[sizeof prefork_names / sizeof prefork_names[0]] BYPASS_HOT;
static int prefork_done BYPASS_HOT;

static void prefork_resolve(void)
{
    if (__atomic_load_n(&prefork_done, __ATOMIC_ACQUIRE))
        return;
    int saved_errno = errno;
    for (size_t i = 0; i < sizeof prefork_names / sizeof prefork_names[0]; i++)
        prefork_found[i] = dlsym(RTLD_NEXT, prefork_names[i]);
    __atomic_store_n(&prefork_done, 1, __ATOMIC_RELEASE);
    errno = saved_errno;
}

/* String compares by hand (prefix, strncmp(a, b, n) == 0, strcspn(entry, "=")): every process
 * of a run reads its settings with them at start, and a fork child runs them between fork and
 * exec; each C library function would be one more page of code to fault in there. */
static int starts_with(const char *s, const char *prefix)
{
    while (*prefix)
        if (*s++ != *prefix++)
            return 0;
    return 1;
}

static int same_prefix(const char *a, const char *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (a[i] != b[i])
            return 0;
        else if (!a[i])
            return 1;
    return 1;
}

static size_t name_length(const char *entry)
{
    size_t n = 0;
    while (entry[n] && entry[n] != '=')
        n++;
    return n;
}

static void *prefork_lookup(const char *name)
{
    if (!__atomic_load_n(&prefork_done, __ATOMIC_ACQUIRE))
        return NULL;
    for (size_t i = 0; i < sizeof prefork_names / sizeof prefork_names[0]; i++)
        if (same_prefix(name, prefork_names[i], SIZE_MAX))   /* in a fork child: not strcmp */
            return prefork_found[i];
    return NULL;
}

void *bypass_resolve_slow(void **slot, const char *name, const char *version)
{
    void *found = version ? NULL : prefork_lookup(name);
    if (!found) {
        int saved_errno = errno;
        found = version ? dlvsym(RTLD_NEXT, name, version) : NULL;
        if (!found)
            found = dlsym(RTLD_NEXT, name);
        errno = saved_errno;
    }
    /* Two threads may race here; both find the same address, so the second store is harmless. */
    if (found)
        __atomic_store_n(slot, found, __ATOMIC_RELEASE);
    if (BYPASS_DEBUG_ON(BYPASS_DEBUG_RESOLVE)) {
        int saved_errno = errno;
        Dl_info info;
        int known = found && dladdr(found, &info) && info.dli_fname;
        bypass_debug_write(BYPASS_DEBUG_RESOLVE, "%s%s%s -> %s", name, version ? "@" : "", version ? version : "",
                           found ? (known ? info.dli_fname : "?") : "not found (ENOSYS)");
        errno = saved_errno;
    }
    return found;
}

/* ------------------------------------------------------------------ messages */

static void write_all_raw(int fd, const char *text, size_t length)
{
    while (length > 0) {
        long done = syscall(SYS_write, fd, text, length);
        if (done < 0) {
            if (errno == EINTR)
                continue;
            return;
        }
        text += done;
        length -= (size_t)done;
    }
}

void bypass_log(const char *fmt, ...)
{
    int saved_errno = errno;
    char line[1024];
    int prefix = snprintf(line, sizeof line, "bypass[%s]: ", bypass_agent_name);
    va_list ap;
    va_start(ap, fmt);
    int body = vsnprintf(line + prefix, sizeof line - (size_t)prefix - 1, fmt, ap);
    va_end(ap);
    size_t length = (size_t)prefix + (body < 0 ? 0 : (size_t)body);
    if (length > sizeof line - 2)
        length = sizeof line - 2;
    line[length++] = '\n';
    write_all_raw(2, line, length);
    errno = saved_errno;
}

/* ------------------------------------------------------------------ settings */

#define SETTINGS_BYTES 16384
#define SETTINGS_MAX 64

static char settings_text[SETTINGS_BYTES] BYPASS_LARGE;       /* "NAME=value\0NAME=value\0…" */
static const char *settings[SETTINGS_MAX] BYPASS_HOT;
static size_t settings_count BYPASS_HOT;
static char self_path[4096] BYPASS_LARGE;
static int runtime_ready BYPASS_HOT;
static int runtime_state BYPASS_HOT;               /* 0 not started, 1 capturing, 2 captured */

/* Compared by hand, as the once below is done by hand: every process of a run comes here at
 * start, and the C library's strncmp and pthread_once are pages a process like /bin/true
 * would fault in for this alone. */
static int is_setting(const char *entry)
{
    return starts_with(entry, "BYPASS_") || starts_with(entry, "LD_PRELOAD=");
}

/* Where the agent was loaded from, asked of the loader where a child is about to start (not
 * at start-up: dladdr searches the symbol tables, and most processes start nothing).  Two
 * threads may ask at once; they write the same bytes. */
static int self_path_known BYPASS_HOT;

static const char *self_path_get(void)
{
    if (__atomic_load_n(&self_path_known, __ATOMIC_ACQUIRE))
        return self_path;
    int saved_errno = errno;
    Dl_info info;
    if (dladdr((void *)&self_path_get, &info) && info.dli_fname) {
        size_t length = strlen(info.dli_fname);
        if (length < sizeof self_path)
            memcpy(self_path, info.dli_fname, length + 1);
    }
    __atomic_store_n(&self_path_known, 1, __ATOMIC_RELEASE);
    errno = saved_errno;
    return self_path;
}

static void capture_settings(void)
{
    int saved_errno = errno;
    size_t used = 0;
    for (char **entry = environ; entry && *entry; entry++) {
        if (!is_setting(*entry) || settings_count == SETTINGS_MAX)
            continue;
        size_t length = strlen(*entry) + 1;
        if (used + length > sizeof settings_text)
            break;
        memcpy(settings_text + used, *entry, length);
        settings[settings_count++] = settings_text + used;
        used += length;
    }
    __atomic_store_n(&runtime_ready, 1, __ATOMIC_RELEASE);
    bypass_debug_init();
    errno = saved_errno;
}

void bypass_runtime_init(void)
{
    int expected = 0;
    if (__atomic_compare_exchange_n(&runtime_state, &expected, 1, 0, __ATOMIC_ACQ_REL,
                                    __ATOMIC_ACQUIRE)) {
        capture_settings();
        __atomic_store_n(&runtime_state, 2, __ATOMIC_RELEASE);
        return;
    }
    while (__atomic_load_n(&runtime_state, __ATOMIC_ACQUIRE) != 2)
        sched_yield();                  /* another thread is capturing: a few microseconds */
}

/* Before every other constructor of the agent (its support code's read settings). A priority
 * on bypass_runtime_init itself would be ignored: GCC drops it when the header's declaration
 * came first, and the order was then the link order's. */
__attribute__((constructor(101))) static void runtime_constructor(void)
{
    bypass_runtime_init();
    pthread_atfork(prefork_resolve, NULL, NULL);
}

static void ensure_ready(void)
{
    if (!__atomic_load_n(&runtime_ready, __ATOMIC_ACQUIRE))
        bypass_runtime_init();
}

const char *bypass_getenv(const char *name)
{
    ensure_ready();
    size_t length = strlen(name);
    for (size_t i = 0; i < settings_count; i++)
        if (same_prefix(settings[i], name, length) && settings[i][length] == '=')
            return settings[i] + length + 1;
    return NULL;
}

const char *bypass_self_path(void)
{
    ensure_ready();
    return self_path_get();
}

/* ------------------------------------------------------------------ the agent's descriptors */

#define AGENT_FDS_MAX 16
static int *agent_fds[AGENT_FDS_MAX] BYPASS_HOT;
static int agent_fds_used BYPASS_HOT;       /* slots ever filled: lets close() skip the scan in most agents */
static pthread_mutex_t agent_fds_lock BYPASS_HOT = PTHREAD_MUTEX_INITIALIZER;

int bypass_fd_register(int *slot)
{
    pthread_mutex_lock(&agent_fds_lock);
    for (int i = 0; i < AGENT_FDS_MAX; i++) {
        if (agent_fds[i] == NULL || agent_fds[i] == slot) {
            __atomic_store_n(&agent_fds[i], slot, __ATOMIC_RELEASE);
            if (i + 1 > agent_fds_used)
                __atomic_store_n(&agent_fds_used, i + 1, __ATOMIC_RELEASE);
            pthread_mutex_unlock(&agent_fds_lock);
            return 0;
        }
    }
    pthread_mutex_unlock(&agent_fds_lock);
    return -1;
}

void bypass_fd_unregister(int *slot)
{
    pthread_mutex_lock(&agent_fds_lock);
    for (int i = 0; i < AGENT_FDS_MAX; i++)
        if (agent_fds[i] == slot)
            __atomic_store_n(&agent_fds[i], NULL, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&agent_fds_lock);
}

static int *agent_slot_of(int fd)
{
    if (fd < 0)
        return NULL;
    int used = __atomic_load_n(&agent_fds_used, __ATOMIC_ACQUIRE);
    for (int i = 0; i < used; i++) {
        int *slot = __atomic_load_n(&agent_fds[i], __ATOMIC_ACQUIRE);
        if (slot && *slot == fd)
            return slot;
    }
    return NULL;
}

int bypass_fd_is_agent(int fd) { return agent_slot_of(fd) != NULL; }

int bypass_fd_move_high(int fd)
{
    if (fd < 0 || fd >= BYPASS_FD_FLOOR)
        return fd;
    int moved = (int)syscall(SYS_fcntl, fd, F_DUPFD_CLOEXEC, BYPASS_FD_FLOOR);
    if (moved < 0)
        return fd;
    syscall(SYS_close, fd);
    return moved;
}

/* The program wants this number: give the agent's descriptor another one first. */
static void relocate_agent_fd(int fd)
{
    int *slot = agent_slot_of(fd);
    if (!slot)
        return;
    int moved = (int)syscall(SYS_fcntl, fd, F_DUPFD_CLOEXEC, fd + 1);
    if (moved >= 0)
        *slot = moved;
}

int bypass_hook_close(int (*real)(int), int fd)
{
    if (bypass_fd_is_agent(fd)) {
        errno = EBADF;
        return -1;
    }
    return real(fd);
}

static int lowest_agent_fd_in(unsigned int first, unsigned int last)
{
    int lowest = -1;
    int used = __atomic_load_n(&agent_fds_used, __ATOMIC_ACQUIRE);
    for (int i = 0; i < used; i++) {
        int *slot = __atomic_load_n(&agent_fds[i], __ATOMIC_ACQUIRE);
        if (!slot || *slot < 0)
            continue;
        unsigned int fd = (unsigned int)*slot;
        if (fd >= first && fd <= last && (lowest < 0 || (int)fd < lowest))
            lowest = (int)fd;
    }
    return lowest;
}

/* Close [first, last] around the agent's descriptors (OpenSSH, Python's subprocess use this). */
int bypass_hook_close_range(int (*real)(unsigned int, unsigned int, int), unsigned int first, unsigned int last,
                            int flags)
{
    /* what the kernel refuses it refuses whole, before closing anything: let it say so */
    if (first > last || (flags & ~(CLOSE_RANGE_UNSHARE | CLOSE_RANGE_CLOEXEC)))
        return real(first, last, flags);
    while (first <= last) {
        int hole = lowest_agent_fd_in(first, last);
        if (hole < 0)
            return real(first, last, flags);
        if ((unsigned int)hole > first && real(first, (unsigned int)hole - 1, flags) < 0)
            return -1;
        if ((unsigned int)hole == UINT32_MAX)
            break;
        first = (unsigned int)hole + 1;
    }
    return 0;
}

void bypass_hook_closefrom(void (*real)(int), int lowfd)
{
    if (lowfd < 0)
        lowfd = 0;
    int hole;
    while ((hole = lowest_agent_fd_in((unsigned int)lowfd, UINT32_MAX)) >= 0) {
        if (hole > lowfd)
            syscall(SYS_close_range, (unsigned int)lowfd, (unsigned int)hole - 1, 0);
        lowfd = hole + 1;
    }
    real(lowfd);
}

int bypass_hook_dup2(int (*real)(int, int), int oldfd, int newfd)
{
    if (bypass_fd_is_agent(oldfd)) {
        errno = EBADF;
        return -1;
    }
    if (oldfd != newfd)
        relocate_agent_fd(newfd);
    return real(oldfd, newfd);
}

int bypass_hook_dup3(int (*real)(int, int, int), int oldfd, int newfd, int flags)
{
    if (bypass_fd_is_agent(oldfd)) {
        errno = EBADF;
        return -1;
    }
    if (oldfd != newfd)
        relocate_agent_fd(newfd);
    return real(oldfd, newfd, flags);
}

/* ------------------------------------------------------------------ environment of children */

static const char *env_value(char *const *envp, const char *name, size_t length)
{
    for (char *const *entry = envp; entry && *entry; entry++)
        if (same_prefix(*entry, name, length) && (*entry)[length] == '=')
            return *entry + length + 1;
    return NULL;
}

/* Does a colon- or space-separated list contain `item`? */
static int list_has(const char *list, const char *item)
{
    size_t length = strlen(item);
    if (length == 0)
        return 1;
    for (const char *at = list; at && *at;) {
        const char *end = at;
        while (*end && *end != ':' && *end != ' ')
            end++;
        if ((size_t)(end - at) == length && same_prefix(at, item, length))
            return 1;
        at = *end ? end + 1 : end;
    }
    return 0;
}

static size_t env_length(char *const *envp)
{
    size_t count = 0;
    while (envp && envp[count])
        count++;
    return count;
}

/* Room the repaired environment may need: the entries, one LD_PRELOAD, every setting, NULL. */
static size_t env_slots(char *const *envp)
{
    ensure_ready();
    return env_length(envp) + settings_count + 2;
}

static size_t preload_bytes(char *const *envp)
{
    const char *current = env_value(envp, "LD_PRELOAD", 10);
    const char *startup = bypass_getenv("LD_PRELOAD");
    return 16 + strlen(self_path_get()) + (current ? strlen(current) : 0) + (startup ? strlen(startup) : 0);
}

/*
 * Put back what the program's environment lost: our LD_PRELOAD (the whole list the program
 * started with, so stacked agents keep their order) and any BYPASS_* setting it no longer has.
 * Returns `envp` itself when nothing is missing, else `out` (caller's stack).
 */
static char *const *env_repair(char *const *envp, char **out, char *preload, size_t preload_size)
{
    const char *current = env_value(envp, "LD_PRELOAD", 10);
    self_path_get();
    int need_preload = self_path[0] && !(current && list_has(current, self_path));
    size_t missing = 0;
    for (size_t i = 0; i < settings_count; i++) {
        size_t length = name_length(settings[i]);
        if (!starts_with(settings[i], "LD_PRELOAD=") && !env_value(envp, settings[i], length))
            missing++;
    }
    if (!need_preload && missing == 0)
        return envp;

    size_t count = 0;
    for (char *const *entry = envp; entry && *entry; entry++)
        if (!(need_preload && starts_with(*entry, "LD_PRELOAD=")))
            out[count++] = *entry;
    if (need_preload) {
        const char *startup = bypass_getenv("LD_PRELOAD");
        const char *ours = (startup && list_has(startup, self_path)) ? startup : self_path;
        snprintf(preload, preload_size, "LD_PRELOAD=%s%s%s", ours, current ? " " : "", current ? current : "");
        out[count++] = preload;
    }
    for (size_t i = 0; i < settings_count; i++) {
        size_t length = name_length(settings[i]);
        if (!starts_with(settings[i], "LD_PRELOAD=") && !env_value(envp, settings[i], length))
            out[count++] = (char *)settings[i];
    }
    out[count] = NULL;
    return out;
}

/*
 * Run `call` with a repaired environment. The depth is reset around the exec itself because a
 * vfork child shares its parent's memory (and so this thread's depth) until it execs.
 */
#define WITH_REPAIRED_ENV(envp, fixed_env, call)                                         \
    do {                                                                                 \
        char *fixed_env##_slots[env_slots(envp)];                                        \
        char fixed_env##_preload[preload_bytes(envp)];                                   \
        char *const *fixed_env = env_repair(envp, fixed_env##_slots, fixed_env##_preload, \
                                            sizeof fixed_env##_preload);                 \
        int saved_depth = bypass_depth;                                                  \
        bypass_depth = 0;                                                                \
        if (bypass_debug_mask)                                                           \
            bypass_debug_exec(1);                                                        \
        call;                                                                            \
        if (bypass_debug_mask)                                                           \
            bypass_debug_exec(0);                                                        \
        bypass_depth = saved_depth;                                                      \
    } while (0)

int bypass_hook_execve(int (*real)(const char *, char *const *, char *const *), const char *path,
                       char *const *argv, char *const *envp)
{
    int result;
    WITH_REPAIRED_ENV(envp, env, result = real(path, argv, env));
    return result;
}

int bypass_hook_execvpe(int (*real)(const char *, char *const *, char *const *), const char *file,
                        char *const *argv, char *const *envp)
{
    int result;
    WITH_REPAIRED_ENV(envp, env, result = real(file, argv, env));
    return result;
}

int bypass_hook_fexecve(int (*real)(int, char *const *, char *const *), int fd, char *const *argv,
                        char *const *envp)
{
    int result;
    WITH_REPAIRED_ENV(envp, env, result = real(fd, argv, env));
    return result;
}

int bypass_hook_execveat(int (*real)(int, const char *, char *const *, char *const *, int), int dirfd,
                         const char *path, char *const *argv, char *const *envp, int flags)
{
    int result;
    WITH_REPAIRED_ENV(envp, env, result = real(dirfd, path, argv, env, flags));
    return result;
}

int bypass_hook_posix_spawn(bypass_spawn_fn real, pid_t *pid, const char *path,
                            const posix_spawn_file_actions_t *file_actions, const posix_spawnattr_t *attrp,
                            char *const *argv, char *const *envp)
{
    int result;
    WITH_REPAIRED_ENV(envp, env, result = real(pid, path, file_actions, attrp, argv, env));
    return result;
}

int bypass_hook_posix_spawnp(bypass_spawn_fn real, pid_t *pid, const char *file,
                             const posix_spawn_file_actions_t *file_actions, const posix_spawnattr_t *attrp,
                             char *const *argv, char *const *envp)
{
    int result;
    WITH_REPAIRED_ENV(envp, env, result = real(pid, file, file_actions, attrp, argv, env));
    return result;
}

/* system and popen hand `environ` to a hidden spawn, so repair `environ` itself. */
static void repair_environ(void)
{
    char *slots[env_slots(environ)];
    char preload[preload_bytes(environ)];
    char *const *fixed = env_repair(environ, slots, preload, sizeof preload);
    if (fixed == environ)
        return;
    for (size_t i = 0; fixed[i]; i++) {
        if (env_value(environ, fixed[i], strcspn(fixed[i], "=")) && strncmp(fixed[i], "LD_PRELOAD=", 11) != 0)
            continue;
        size_t length = strcspn(fixed[i], "=");
        char name[length + 1];
        memcpy(name, fixed[i], length);
        name[length] = '\0';
        setenv(name, fixed[i] + length + 1, 1);
    }
}

int bypass_hook_system(int (*real)(const char *), const char *command)
{
    repair_environ();
    if (bypass_debug_mask)
        bypass_debug_exec(1);
    int result = real(command);
    if (bypass_debug_mask)
        bypass_debug_exec(0);
    return result;
}

FILE *bypass_hook_popen(FILE *(*real)(const char *, const char *), const char *command, const char *type)
{
    repair_environ();
    if (bypass_debug_mask)
        bypass_debug_exec(1);
    FILE *result = real(command, type);
    if (bypass_debug_mask)
        bypass_debug_exec(0);
    return result;
}

size_t bypass_count_varargs(const char *first, va_list ap)
{
    if (first == NULL)
        return 0;
    size_t count = 1;
    while (va_arg(ap, const char *) != NULL)
        count++;
    return count;
}

/* ------------------------------------------------------------------ text */

size_t bypass_fmt(char *buf, size_t size, size_t at, const char *fmt, ...)
{
    if (at >= size)
        return at;
    va_list ap;
    va_start(ap, fmt);
    int wrote = vsnprintf(buf + at, size - at, fmt, ap);
    va_end(ap);
    if (wrote < 0)
        return at;
    at += (size_t)wrote;
    return at < size ? at : size - 1;
}

size_t bypass_fmt_string(char *buf, size_t size, size_t at, const char *s)
{
    if (s == NULL)
        return bypass_fmt(buf, size, at, "NULL");
    if (bypass_bad_pointer(s))          /* the call answers EFAULT; reading it would crash */
        return bypass_fmt(buf, size, at, "%p", (const void *)s);
    at = bypass_fmt(buf, size, at, "\"");
    size_t shown = 0;
    for (const unsigned char *c = (const unsigned char *)s; *c && at + 8 < size; c++, shown++) {
        if (shown == 256) {
            at = bypass_fmt(buf, size, at, "...");
            break;
        }
        if (*c == '"' || *c == '\\')
            at = bypass_fmt(buf, size, at, "\\%c", *c);
        else if (*c < 0x20 || *c >= 0x7f)
            at = bypass_fmt(buf, size, at, "\\x%02x", *c);
        else
            buf[at++] = (char)*c;
    }
    if (at < size)
        buf[at] = '\0';
    return bypass_fmt(buf, size, at, "\"");
}

size_t bypass_fmt_strings(char *buf, size_t size, size_t at, char *const *list)
{
    if (list == NULL)
        return bypass_fmt(buf, size, at, "NULL");
    at = bypass_fmt(buf, size, at, "[");
    for (size_t i = 0; list[i]; i++) {
        if (i == 32) {
            at = bypass_fmt(buf, size, at, ", ...");
            break;
        }
        at = bypass_fmt_string(buf, size, bypass_fmt(buf, size, at, i ? ", " : ""), list[i]);
    }
    return bypass_fmt(buf, size, at, "]");
}

/* `count` values read from ap as `kinds` says (bypass_runtime.h), comma-separated from buf's start. */
static size_t fmt_kinds(char *buf, size_t size, const char *kinds, size_t count, va_list *ap)
{
    size_t at = 0;
    if (size)
        buf[0] = '\0';
    for (size_t i = 0; i < count; i++) {
        if (i)
            at = bypass_fmt(buf, size, at, ", ");
        switch (kinds[i]) {
        case 'd': at = bypass_fmt(buf, size, at, "%lld", va_arg(*ap, long long)); break;
        case 'u': at = bypass_fmt(buf, size, at, "%llu", va_arg(*ap, unsigned long long)); break;
        case 'x': at = bypass_fmt(buf, size, at, "0x%llx", va_arg(*ap, unsigned long long)); break;
        case 'o': at = bypass_fmt(buf, size, at, "0%llo", va_arg(*ap, unsigned long long)); break;
        case 's': at = bypass_fmt_string(buf, size, at, va_arg(*ap, const char *)); break;
        case 'v': at = bypass_fmt_strings(buf, size, at, va_arg(*ap, char *const *)); break;
        case 'p': at = bypass_fmt(buf, size, at, "%p", va_arg(*ap, const void *)); break;
        default:  at = bypass_fmt(buf, size, at, "<%s>", va_arg(*ap, const char *)); break;
        }
    }
    return at;
}

size_t bypass_fmt_values(char *buf, size_t size, const char *kinds, ...)
{
    va_list ap;
    va_start(ap, kinds);
    size_t at = fmt_kinds(buf, size, kinds, strlen(kinds), &ap);
    va_end(ap);
    return at;
}

void bypass_debug_values(const char *entry, const char *name, int err, const char *kinds, ...)
{
    char args[1024], shown[320] = "...";
    const char *result = strchr(kinds, '=');
    va_list ap;
    va_start(ap, kinds);
    fmt_kinds(args, sizeof args, kinds, result ? (size_t)(result - kinds) : strlen(kinds), &ap);
    if (result)
        fmt_kinds(shown, sizeof shown, result + 1, strlen(result + 1), &ap);
    va_end(ap);
    bypass_debug_call(entry, name, args, shown, err);
}

const char *bypass_errno_name(int err)
{
    const char *name = strerrorname_np(err);
    return name ? name : "E?";
}
