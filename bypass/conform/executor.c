/* The executor of `bypass conform`: one libc call per step, read from a script.
 *
 *   executor ROOT RESULTS_FD  < script
 *
 * The same binary runs natively and under the agent; the Python engine compares what the two
 * runs report.  It is a plain C program on purpose: an interpreter would add file calls of its
 * own that the agent also sees.  It reads the whole script before the first step and writes
 * results into a shared mapping of the results file, through raw system calls the agent never
 * sees; then descriptors 0 and 1 are /dev/null and nothing of the protocol is open, so a step
 * (closefrom(3), dup2 onto any number) cannot disturb it, and what a step reported before a
 * crash is still there.
 *
 * Script line:  ID OP ARG...           (one step; ID is a small integer, unique in the script)
 * Result line:  ID RET ERRNO DATA      (DATA: hex of what the step read or observed, or "-")
 *
 * Arguments:   123 / -1      integers (flags and modes arrive as numbers)
 *              s:HEX         a string (NUL-terminated bytes; "s:" is the empty string)
 *              r:HEX         ROOT "/" bytes: an absolute path inside this run's root
 *              R:N:HEX       ROOT, then "./" padding, then "/" bytes, N bytes long in all (paths
 *                            near PATH_MAX have the same length on both sides, whatever ROOT is)
 *              bad           (char *)-1, a pointer into the kernel's half (the kernel answers EFAULT)
 *              guard         a pointer to a mapped but inaccessible page (EFAULT as well)
 *              null          NULL
 *              #ID           the descriptor step ID returned (-1 if it failed or never ran)
 *              %ID           the directory stream step ID opened
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <grp.h>
#include <limits.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sendfile.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <unistd.h>
#include <utime.h>

#define RESULTS_MAX (64 << 20)
#define MAX_ARGS 12
#define MAX_IDS 4096
#define OUT_MAX (1 << 16)

extern char **environ;

static char root[PATH_MAX];
static long current_id;         /* the step being run */
static char *guard_page;
static int fds[MAX_IDS];
static DIR *dirs[MAX_IDS];

/* ---- protocol I/O: raw system calls, invisible to any agent ---- */

static char *script;            /* the whole script, read before the first step */
static size_t script_len, script_pos;
static char *results;           /* MAP_SHARED on the results file; NULL: write to stdout */
static size_t results_len;

static __attribute__((unused)) int read_script(void)
{
    size_t cap = 1 << 20;
    script = malloc(cap + 1);
    for (;;) {
        if (script_len == cap) {
            cap *= 2;
            script = realloc(script, cap + 1);
        }
        if (!script)
            return -1;
        long n = syscall(SYS_read, 0, script + script_len, cap - script_len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        if (n == 0)
            break;
        script_len += (size_t)n;
    }
    script[script_len] = 0;
    return 0;
}

static __attribute__((unused)) char *next_line(void)
{
    if (script_pos >= script_len)
        return NULL;
    char *line = script + script_pos;
    char *nl = memchr(line, '\n', script_len - script_pos);
    if (nl) {
        *nl = 0;
        script_pos = (size_t)(nl - script) + 1;
    } else {
        script_pos = script_len;
    }
    return line;
}

static void emit(const char *s, size_t n)
{
    if (results) {
        if (n > RESULTS_MAX - 1 - results_len)
            n = RESULTS_MAX - 1 - results_len;
        memcpy(results + results_len, s, n);
        results_len += n;
        return;
    }
    while (n > 0) {
        long w = syscall(SYS_write, 1, s, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            _exit(3);
        s += w;
        n -= (size_t)w;
    }
}

/* What a step observed (bytes read, a stat, a listing), sent as hex. */
static unsigned char data[OUT_MAX];
static size_t data_len;
static int has_data;

static void put(const void *p, size_t n)
{
    has_data = 1;
    if (n > sizeof data - data_len)
        n = sizeof data - data_len;
    memcpy(data + data_len, p, n);
    data_len += n;
}

static void putf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void putf(const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n > 0)
        put(tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

static void report(long id, long ret, int err)
{
    static char line[2 * OUT_MAX + 64];
    int n = snprintf(line, sizeof line, "%ld %ld %d ", id, ret, err);
    if (!has_data) {
        line[n++] = '-';
    } else {
        static const char hex[] = "0123456789abcdef";
        for (size_t i = 0; i < data_len; i++) {
            line[n++] = hex[data[i] >> 4];
            line[n++] = hex[data[i] & 15];
        }
        if (data_len == 0)
            line[n++] = '=';           /* observed, but nothing: distinct from "no data" */
    }
    line[n++] = '\n';
    emit(line, (size_t)n);
}

/* ---- arguments ---- */

struct arg {
    long num;
    char *str;        /* NULL for numbers; NULL or an invalid pointer for null/bad/guard */
    size_t len;       /* bytes of str (without the NUL) */
};

static int unhex(const char *h, char *out, size_t max)
{
    size_t n = 0;
    for (; h[0] && h[1]; h += 2) {
        int hi = h[0] <= '9' ? h[0] - '0' : h[0] - 'a' + 10;
        int lo = h[1] <= '9' ? h[1] - '0' : h[1] - 'a' + 10;
        if (n + 1 >= max)
            return -1;
        out[n++] = (char)(hi << 4 | lo);
    }
    out[n] = 0;
    return (int)n;
}

static char strings[MAX_ARGS][3 * PATH_MAX + 64];

static void parse_arg(int i, const char *tok, struct arg *a)
{
    memset(a, 0, sizeof *a);
    char *s = strings[i];
    if (strncmp(tok, "s:", 2) == 0) {
        a->len = (size_t)unhex(tok + 2, s, sizeof strings[i]);
        a->str = s;
    } else if (strncmp(tok, "r:", 2) == 0) {
        size_t rl = strlen(root);
        memcpy(s, root, rl);
        s[rl] = '/';
        a->len = rl + 1 + (size_t)unhex(tok + 2, s + rl + 1, sizeof strings[i] - rl - 1);
        a->str = s;
    } else if (strncmp(tok, "R:", 2) == 0) {
        char *colon;
        long total = strtol(tok + 2, &colon, 10);
        char tail[PATH_MAX * 2];
        int tl = unhex(colon + 1, tail, sizeof tail);
        size_t rl = strlen(root);
        long pad = total - (long)rl - 1 - tl;
        if (pad < 0)
            pad = 0;
        if (pad > (long)sizeof strings[i] - (long)rl - tl - 4)
            pad = (long)sizeof strings[i] - (long)rl - tl - 4;
        memcpy(s, root, rl);
        size_t n = rl;
        s[n++] = '/';
        for (long k = 0; k < pad; k++)
            s[n++] = (k % 2 == 0 && k + 1 < pad) ? '.' : '/';
        memcpy(s + n, tail, (size_t)tl);
        n += (size_t)tl;
        s[n] = 0;
        a->len = n;
        a->str = s;
    } else if (strcmp(tok, "bad") == 0) {
        a->str = (char *)-1;
    } else if (strcmp(tok, "guard") == 0) {
        a->str = guard_page;
    } else if (strcmp(tok, "null") == 0) {
        a->str = NULL;
    } else if (tok[0] == '#') {
        long id = strtol(tok + 1, NULL, 10);
        a->num = id >= 0 && id < MAX_IDS ? fds[id] : -1;
    } else if (tok[0] == '%') {
        long id = strtol(tok + 1, NULL, 10);
        a->num = id >= 0 && id < MAX_IDS ? id : 0;
    } else {
        a->num = strtol(tok, NULL, 0);
    }
}

/* ---- observations ---- */

static char type_char(mode_t m)
{
    switch (m & S_IFMT) {
    case S_IFREG: return 'f';
    case S_IFDIR: return 'd';
    case S_IFLNK: return 'l';
    case S_IFIFO: return 'p';
    case S_IFSOCK: return 's';
    case S_IFCHR: return 'c';
    case S_IFBLK: return 'b';
    }
    return '?';
}

/* Times are sent whole; the engine compares only those a step set explicitly (old dates). */
static void put_stat(const struct stat *st)
{
    putf("type=%c mode=%04o nlink=%lu uid=%u gid=%u size=%lld atime=%lld.%09ld mtime=%lld.%09ld",
         type_char(st->st_mode), (unsigned)(st->st_mode & 07777), (unsigned long)st->st_nlink,
         (unsigned)st->st_uid, (unsigned)st->st_gid, S_ISDIR(st->st_mode) ? 0LL : (long long)st->st_size,
         (long long)st->st_atim.tv_sec, st->st_atim.tv_nsec,
         (long long)st->st_mtim.tv_sec, st->st_mtim.tv_nsec);
}

static void put_statx(const struct statx *sx)
{
    putf("type=%c mode=%04o nlink=%u uid=%u gid=%u size=%llu mtime=%lld.%09u btime=%s mask=%x",
         type_char(sx->stx_mode), (unsigned)(sx->stx_mode & 07777), sx->stx_nlink, sx->stx_uid, sx->stx_gid,
         S_ISDIR(sx->stx_mode) ? 0ULL : (unsigned long long)sx->stx_size,
         (long long)sx->stx_mtime.tv_sec, sx->stx_mtime.tv_nsec,
         (sx->stx_mask & STATX_BTIME) && sx->stx_btime.tv_sec ? "set" : "none",
         sx->stx_mask & (STATX_BASIC_STATS | STATX_BTIME));
}

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* A directory listing, sorted (the order readdir gives is the file system's business). */
static void put_listing(DIR *d)
{
    char *names[512];
    int n = 0;
    struct dirent *e;
    errno = 0;
    while ((e = readdir(d)) != NULL && n < 512) {
        char buf[300];
        snprintf(buf, sizeof buf, "%s:%d", e->d_name, e->d_type);
        names[n++] = strdup(buf);
    }
    qsort(names, (size_t)n, sizeof names[0], cmp_names);
    for (int i = 0; i < n; i++) {
        put(names[i], strlen(names[i]));
        put("/", 1);
        free(names[i]);
    }
}

static int ftw_visit(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    putf("%d:%d:%c:", flag, ftw->level, type_char(st->st_mode));
    put(path, strlen(path));
    put("\n", 1);
    return 0;
}

#define S(i) (a[i].str)
#define N(i) (a[i].num)
#define I(i) ((int)a[i].num)

static int ftw_visit_old(const char *path, const struct stat *st, int flag)
{
    putf("%d:%c:", flag, type_char(st->st_mode));
    put(path, strlen(path));
    put("\n", 1);
    return 0;
}

/* Linux dirent64 records from getdents64 or getdirentries, listed sorted like readdir_all. */
static void put_records(const char *buf, long n, int is64)
{
    char *names[512];
    int count = 0;
    for (long at = 0; at < n && count < 512;) {
        const char *name;
        unsigned char type;
        unsigned short reclen;
        if (is64) {
            const struct dirent64 *d = (const void *)(buf + at);
            name = d->d_name, type = d->d_type, reclen = d->d_reclen;
        } else {
            const struct dirent *d = (const void *)(buf + at);
            name = d->d_name, type = d->d_type, reclen = d->d_reclen;
        }
        char line[300];
        snprintf(line, sizeof line, "%s:%d", name, type);
        names[count++] = strdup(line);
        at += reclen;
    }
    qsort(names, (size_t)count, sizeof names[0], cmp_names);
    put("", 0);
    for (int i = 0; i < count; i++) {
        put(names[i], strlen(names[i]));
        put("/", 1);
        free(names[i]);
    }
}

/* A temporary file or directory from a template: the step renames it to the template with
 * the step's id for the random part, so both sides end with the same tree, and reports the name it got
 * with the random part masked (unchanged X's would show). */
static long from_template(const char *op, struct arg *a)
{
    char t[PATH_MAX];
    snprintf(t, sizeof t, "%s", S(0));
    int suffix = (int)N(1), flags = I(2);
    long r;
    if (!strcmp(op, "mkdtemp"))
        r = mkdtemp(t) ? 0 : -1;
    else if (!strcmp(op, "mkstemp"))
        r = mkstemp(t);
    else if (!strcmp(op, "mkostemp"))
        r = mkostemp(t, flags);
    else if (!strcmp(op, "mkstemps"))
        r = mkstemps(t, suffix);
    else
        r = mkostemps(t, suffix, flags);
    if (r < 0)
        return r;
    char fixed[PATH_MAX];
    snprintf(fixed, sizeof fixed, "%s", S(0));
    size_t len = strlen(t), end = len - (size_t)(suffix > 0 ? suffix : 0);
    char digits[16];                /* the step's id: unique in the run, the same on both sides */
    snprintf(digits, sizeof digits, "%06ld", current_id % 1000000);
    for (size_t i = end >= 6 ? end - 6 : 0, k = 0; i < end; i++, k++)
        fixed[i] = digits[k];
    char made[PATH_MAX];
    memcpy(made, t, len + 1);
    size_t from = end >= 6 ? end - 6 : 0;
    if (memcmp(t + from, "XXXXXX", end - from) != 0)     /* changed at all: random, masked */
        memset(t + from, '?', end - from);
    put(t, len);
    rename(made, fixed);
    errno = 0;
    return r;
}

/* ---- process steps ---- */

/* Alarms are not inherited: a child arms its own, so a FIFO without a peer cannot hold it. */
static pid_t fork_child(void)
{
    pid_t pid = fork();
    if (pid == 0)
        alarm(2);
    return pid;
}

static long child_status(pid_t pid)
{
    int status;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR)
            return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 1000 + WTERMSIG(status);
}

/* A child reports one errno (0 = success) as its exit status. */
static void child_exit(long r)
{
    _exit(r < 0 ? (errno & 0x7f) : 0);
}

/* The child's stdout is the pipe's write end (a dup2 action): it is closed here only after the
 * spawn, so that the action finds it open. */
static long spawn_and_read(const char *prog, char *const argv[], posix_spawn_file_actions_t *fa, int pipe[2],
                           int search)
{
    pid_t pid;
    int pipe_r = pipe[0];
    int err = search ? posix_spawnp(&pid, prog, fa, NULL, argv, environ)
                     : posix_spawn(&pid, prog, fa, NULL, argv, environ);
    close(pipe[1]);
    if (err) {
        close(pipe_r);
        errno = err;
        return -1;
    }
    char buf[4096];
    ssize_t n;
    while ((n = read(pipe_r, buf, sizeof buf)) > 0)
        put(buf, (size_t)n);
    if (n < 0)                  /* the alarm: the child is stuck (a FIFO without a peer) */
        kill(pid, SIGKILL);
    close(pipe_r);
    if (!has_data)
        put("", 0);
    return child_status(pid);
}

/* ---- streams ---- */

static int stream_writes(const char *mode)
{
    return mode[0] != 'r' || strchr(mode, '+');
}

/* The step's alarm fires once: a composite step re-arms it before each call that can wait
 * (an open or a read of a FIFO), else the second such call would wait for ever. */
static void rearm(void)
{
    alarm(1);
}

/* What a program sees through a stream: the bytes it writes (flushed), then, if the mode
 * reads, the file from its start. */
static void stream_io(FILE *f, const char *mode, struct arg *d)
{
    if (stream_writes(mode)) {
        size_t w = fwrite(d->str, 1, d->len, f);
        int flushed = fflush(f);
        putf("w=%zu flush=%d:%d ", w, flushed, flushed ? errno : 0);
    }
    if (mode[0] == 'r' || strchr(mode, '+')) {
        char buf[512];
        int sought = fseek(f, 0, SEEK_SET);
        rearm();
        size_t n = fread(buf, 1, sizeof buf, f);
        putf("seek=%d r=%zu err=%d:", sought, n, ferror(f));
        put(buf, n);
    }
}

/* ---- the steps ---- */

static void on_alarm(int sig)
{
    (void)sig;
}


static long run_step(const char *op, struct arg *a, int nargs)
{
    (void)nargs;
    char buf[OUT_MAX];
    long r;

    if (!strcmp(op, "open"))        return open(S(0), I(1), (mode_t)N(2));
    if (!strcmp(op, "openat"))      return openat(I(0), S(1), I(2), (mode_t)N(3));
    if (!strcmp(op, "creat"))       return creat(S(0), (mode_t)N(1));
    if (!strcmp(op, "close"))       return close(I(0));
    if (!strcmp(op, "read") || !strcmp(op, "pread")) {
        size_t n = (size_t)N(1) < sizeof buf ? (size_t)N(1) : sizeof buf;
        r = op[0] == 'r' ? read(I(0), buf, n) : pread(I(0), buf, n, N(2));
        if (r >= 0)
            put(buf, (size_t)r);
        return r;
    }
    if (!strcmp(op, "write"))       return write(I(0), S(1), (size_t)N(2));
    if (!strcmp(op, "pwrite"))      return pwrite(I(0), S(1), (size_t)N(2), N(3));
    if (!strcmp(op, "readv") || !strcmp(op, "preadv") || !strcmp(op, "preadv2")) {
        size_t n1 = (size_t)N(1) % 2048, n2 = (size_t)N(2) % 2048;
        struct iovec iov[2] = {{buf, n1}, {buf + n1, n2}};
        if (op[1] == 'e')
            r = readv(I(0), iov, 2);
        else if (op[6] == 0)
            r = preadv(I(0), iov, 2, N(3));
        else
            r = preadv2(I(0), iov, 2, N(3), I(4));
        if (r >= 0)
            put(buf, (size_t)r);
        return r;
    }
    if (!strcmp(op, "writev") || !strcmp(op, "pwritev") || !strcmp(op, "pwritev2")) {
        struct iovec iov[2] = {{S(1), a[1].len}, {S(2), a[2].len}};
        if (op[0] == 'w')
            return writev(I(0), iov, 2);
        if (op[7] == 0)
            return pwritev(I(0), iov, 2, N(3));
        return pwritev2(I(0), iov, 2, N(3), I(4));
    }
    if (!strcmp(op, "lseek"))       return lseek(I(0), N(1), I(2));
    if (!strcmp(op, "truncate"))    return truncate(S(0), N(1));
    if (!strcmp(op, "ftruncate"))   return ftruncate(I(0), N(1));
    if (!strcmp(op, "fallocate"))   return fallocate(I(0), I(1), N(2), N(3));
    if (!strcmp(op, "posix_fallocate")) {
        int e = posix_fallocate(I(0), N(1), N(2));
        errno = e;
        return e ? -1 : 0;
    }
    if (!strcmp(op, "fsync"))       return fsync(I(0));
    if (!strcmp(op, "fdatasync"))   return fdatasync(I(0));
    if (!strcmp(op, "dup"))         return dup(I(0));
    if (!strcmp(op, "dup2"))        return dup2(I(0), I(1));
    if (!strcmp(op, "dup3"))        return dup3(I(0), I(1), I(2));
    if (!strcmp(op, "fcntl_int"))   return fcntl(I(0), I(1), N(2));
    if (!strcmp(op, "fcntl_lock")) {
        struct flock fl = {.l_type = (short)N(2), .l_whence = SEEK_SET, .l_start = N(3), .l_len = N(4)};
        r = fcntl(I(0), I(1), &fl);
        if (r >= 0)
            putf("type=%d start=%lld len=%lld", fl.l_type, (long long)fl.l_start, (long long)fl.l_len);
        return r;
    }
    if (!strcmp(op, "flock"))       return flock(I(0), I(1));
    if (!strcmp(op, "mkdir"))       return mkdir(S(0), (mode_t)N(1));
    if (!strcmp(op, "mkdirat"))     return mkdirat(I(0), S(1), (mode_t)N(2));
    if (!strcmp(op, "rmdir"))       return rmdir(S(0));
    if (!strcmp(op, "unlink"))      return unlink(S(0));
    if (!strcmp(op, "unlinkat"))    return unlinkat(I(0), S(1), I(2));
    if (!strcmp(op, "remove"))      return remove(S(0));
    if (!strcmp(op, "rename"))      return rename(S(0), S(1));
    if (!strcmp(op, "renameat"))    return renameat(I(0), S(1), I(2), S(3));
    if (!strcmp(op, "renameat2"))   return renameat2(I(0), S(1), I(2), S(3), (unsigned)N(4));
    if (!strcmp(op, "link"))        return link(S(0), S(1));
    if (!strcmp(op, "linkat"))      return linkat(I(0), S(1), I(2), S(3), I(4));
    if (!strcmp(op, "symlink"))     return symlink(S(0), S(1));
    if (!strcmp(op, "symlinkat"))   return symlinkat(S(0), I(1), S(2));
    if (!strcmp(op, "readlink") || !strcmp(op, "readlinkat")) {
        size_t n = (size_t)N(op[8] ? 2 : 1);
        if (n > sizeof buf)
            n = sizeof buf;
        r = op[8] ? readlinkat(I(0), S(1), buf, n) : readlink(S(0), buf, n);
        if (r >= 0)
            put(buf, (size_t)r);
        return r;
    }
    if (!strcmp(op, "mkfifo"))      return mkfifo(S(0), (mode_t)N(1));
    if (!strcmp(op, "mkfifoat"))    return mkfifoat(I(0), S(1), (mode_t)N(2));
    if (!strcmp(op, "mknod"))       return mknod(S(0), (mode_t)N(1), 0);
    if (!strcmp(op, "mknodat"))     return mknodat(I(0), S(1), (mode_t)N(2), 0);
    if (!strcmp(op, "bind_unix") || !strcmp(op, "connect_unix")) {
        int s = socket(AF_UNIX, SOCK_STREAM, 0);
        if (s < 0)
            return -1;
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        size_t n = a[0].len < sizeof sa.sun_path ? a[0].len : sizeof sa.sun_path - 1;
        memcpy(sa.sun_path, S(0), n);
        r = op[0] == 'b' ? bind(s, (struct sockaddr *)&sa, sizeof sa) : connect(s, (struct sockaddr *)&sa, sizeof sa);
        int e = errno;
        close(s);
        errno = e;
        return r;
    }
    if (!strcmp(op, "chmod"))       return chmod(S(0), (mode_t)N(1));
    if (!strcmp(op, "fchmod"))      return fchmod(I(0), (mode_t)N(1));
    if (!strcmp(op, "fchmodat"))    return fchmodat(I(0), S(1), (mode_t)N(2), I(3));
    if (!strcmp(op, "chown"))       return chown(S(0), (uid_t)N(1), (gid_t)N(2));
    if (!strcmp(op, "lchown"))      return lchown(S(0), (uid_t)N(1), (gid_t)N(2));
    if (!strcmp(op, "fchown"))      return fchown(I(0), (uid_t)N(1), (gid_t)N(2));
    if (!strcmp(op, "fchownat"))    return fchownat(I(0), S(1), (uid_t)N(2), (gid_t)N(3), I(4));
    if (!strcmp(op, "utimensat") || !strcmp(op, "futimens")) {
        /* N < 0 means UTIME_NOW (-1) or UTIME_OMIT (-2) */
        int k = op[0] == 'u' ? 2 : 1;
        struct timespec ts[2];
        for (int j = 0; j < 2; j++) {
            long v = N(k + j);
            ts[j].tv_sec = v < 0 ? 0 : v;
            ts[j].tv_nsec = v == -1 ? UTIME_NOW : v == -2 ? UTIME_OMIT : 250000000;
        }
        return op[0] == 'u' ? utimensat(I(0), S(1), ts, I(4)) : futimens(I(0), ts);
    }
    if (!strcmp(op, "utime")) {
        struct utimbuf ub = {.actime = N(1), .modtime = N(2)};
        return utime(S(0), N(1) < 0 ? NULL : &ub);
    }
    if (!strcmp(op, "utimes") || !strcmp(op, "lutimes")) {
        struct timeval tv[2] = {{N(1), 500000}, {N(2), 500000}};
        return op[0] == 'u' ? utimes(S(0), N(1) < 0 ? NULL : tv) : lutimes(S(0), N(1) < 0 ? NULL : tv);
    }
    if (!strcmp(op, "setxattr"))    return setxattr(S(0), S(1), S(2), a[2].len, I(3));
    if (!strcmp(op, "lsetxattr"))   return lsetxattr(S(0), S(1), S(2), a[2].len, I(3));
    if (!strcmp(op, "fsetxattr"))   return fsetxattr(I(0), S(1), S(2), a[2].len, I(3));
    if (!strcmp(op, "getxattr") || !strcmp(op, "lgetxattr") || !strcmp(op, "fgetxattr")) {
        size_t n = (size_t)N(2) < sizeof buf ? (size_t)N(2) : sizeof buf;
        r = op[0] == 'g' ? getxattr(S(0), S(1), buf, n)
          : op[0] == 'l' ? lgetxattr(S(0), S(1), buf, n) : fgetxattr(I(0), S(1), buf, n);
        if (r > 0 && n > 0)
            put(buf, (size_t)r);
        return r;
    }
    if (!strcmp(op, "listxattr") || !strcmp(op, "llistxattr") || !strcmp(op, "flistxattr")) {
        size_t n = (size_t)N(1) < sizeof buf ? (size_t)N(1) : sizeof buf;
        r = op[0] == 'l' && op[1] == 'i' ? listxattr(S(0), buf, n)
          : op[0] == 'l' ? llistxattr(S(0), buf, n) : flistxattr(I(0), buf, n);
        if (r > 0 && n > 0)
            put(buf, (size_t)r);
        return r;
    }
    if (!strcmp(op, "canonicalize_file_name") || !strcmp(op, "get_current_dir_name") || !strcmp(op, "getwd")) {
        char *p;
        if (op[0] == 'c')
            p = canonicalize_file_name(S(0));
        else if (op[0] == 'g' && op[3] == '_')
            p = get_current_dir_name();
        else {
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
            p = getwd(buf);
#pragma GCC diagnostic pop
        }
        if (!p)
            return -1;
        put(p, strlen(p));
        if (p != buf)
            free(p);
        return 0;
    }
    if (!strcmp(op, "close_range")) return close_range((unsigned)N(0), (unsigned)N(1), I(2));
    if (!strcmp(op, "closefrom")) {
        closefrom(I(0));
        return 0;
    }
    if (!strcmp(op, "execve_child") || !strcmp(op, "execv_child") || !strcmp(op, "execvp_child") ||
        !strcmp(op, "execvpe_child") || !strcmp(op, "execveat_child") || !strcmp(op, "fexecve_child")) {
        pid_t pid = fork_child();
        if (pid < 0)
            return -1;
        if (pid == 0) {
            char *argv[] = {"x", NULL};
            if (!strcmp(op, "execve_child"))
                execve(S(0), argv, environ);
            else if (!strcmp(op, "execv_child"))
                execv(S(0), argv);
            else if (!strcmp(op, "execvp_child"))
                execvp(S(0), argv);
            else if (!strcmp(op, "execvpe_child"))
                execvpe(S(0), argv, environ);
            else if (op[0] == 'f')
                fexecve(I(0), argv, environ);
            else
                execveat(I(0), S(1), argv, environ, I(2));
            _exit(errno & 0x7f);
        }
        return child_status(pid);
    }
    if (!strcmp(op, "system"))      return system(S(0));
    if (!strcmp(op, "popen_read")) {
        FILE *f = popen(S(0), "r");
        if (!f)
            return -1;
        size_t n = fread(buf, 1, sizeof buf, f);
        put(buf, n);
        /* the rest is read and dropped: a command writing more than buf would race pclose
         * (its last write failing EPIPE or not, as the scheduler has it) */
        while (n == sizeof buf && fread(buf, 1, sizeof buf, f) > 0)
            ;
        return pclose(f);
    }
    if (!strcmp(op, "fopen_read") || !strcmp(op, "freopen_read") || !strcmp(op, "fdopen_read")) {
        FILE *f;
        if (op[1] == 'o')
            f = fopen(S(0), S(1));
        else if (op[1] == 'r') {
            FILE *base = fopen("/dev/null", "r");
            f = base ? freopen(S(0), S(1), base) : NULL;
        } else
            f = fdopen(I(0), S(1));
        if (!f)
            return -1;
        size_t n = fread(buf, 1, sizeof buf, f);
        put(buf, n);
        if (op[1] == 'd')
            return ferror(f) ? -1 : 0;     /* the descriptor stays the step's: no fclose */
        int e = ferror(f) ? EBADF : 0;
        r = fclose(f);
        if (e) {
            errno = e;
            return -1;
        }
        return r;
    }
    if (!strcmp(op, "fopen_freopen")) {
        /* a stream over a file of the tree, given a new file (or, path NULL, a new mode): bytes
         * written before are left in its buffer, for freopen to flush to the old file */
        FILE *f = fopen(S(0), S(1));
        if (!f) {
            put("fopen", 5);
            return -1;
        }
        if (stream_writes(S(1)))
            putf("w=%zu ", fwrite(S(4), 1, a[4].len, f));
        rearm();
        FILE *g = freopen(S(2), S(3), f);
        if (!g) {
            int e = errno;
            put("freopen", 7);
            fclose(f);          /* glibc's freopen left it closed: this frees it (EOF) */
            errno = e;
            return -1;
        }
        stream_io(g, S(3), &a[4]);
        return fclose(g);
    }
    if (!strcmp(op, "freopen_std")) {
        /* stdin, stdout or stderr sent to a file of the tree, used, then reopened again (another
         * path, the same, NULL for a new mode, or a local one); then back to /dev/null and the
         * descriptor the step found, so the steps after it see the usual table */
        int std = I(0) == 0 ? 0 : I(0) == 1 ? 1 : 2;
        FILE **slot = std == 0 ? &stdin : std == 1 ? &stdout : &stderr;
        int saved = (int)syscall(SYS_fcntl, std, F_DUPFD_CLOEXEC, 900);
        const char *paths[2] = {S(1), S(3)}, *modes[2] = {S(2), S(4)};
        int e = 0;
        r = 0;
        for (int k = 0; k < 2 && r == 0; k++) {
            rearm();
            FILE *f = freopen(paths[k], modes[k], *slot);
            if (!f) {
                e = errno;
                putf("%s", k ? "second" : "first");
                r = -1;
            } else {
                stream_io(f, modes[k], &a[5]);
            }
        }
        putf(" back=%d", freopen("/dev/null", std ? "w" : "r", *slot) != NULL);
        if (saved >= 0) {
            syscall(SYS_dup3, saved, std, 0);
            syscall(SYS_close, saved);
        }
        errno = e;
        return r;
    }
    if (!strcmp(op, "fopen_write")) {
        FILE *f = fopen(S(0), S(1));
        if (!f)
            return -1;
        size_t w = fwrite(S(2), 1, a[2].len, f);
        r = fclose(f);
        return r < 0 ? r : (long)w;
    }
    if (!strcmp(op, "tmpfile_rw")) {
        FILE *f = tmpfile();
        if (!f)
            return -1;
        fwrite(S(0), 1, a[0].len, f);
        rewind(f);
        size_t n = fread(buf, 1, sizeof buf, f);
        put(buf, n);
        return fclose(f);
    }
    if (!strcmp(op, "mkstemp") || !strcmp(op, "mkostemp") || !strcmp(op, "mkstemps") ||
        !strcmp(op, "mkostemps") || !strcmp(op, "mkdtemp"))
        return from_template(op, a);
    if (!strcmp(op, "statfs") || !strcmp(op, "fstatfs")) {
        struct statfs sf;
        r = op[0] == 's' ? statfs(S(0), &sf) : fstatfs(I(0), &sf);
        if (r == 0)
            putf("type=%lx bsize=%ld namelen=%ld frsize=%ld flags=%lx", (long)sf.f_type, (long)sf.f_bsize,
                 (long)sf.f_namelen, (long)sf.f_frsize, (long)sf.f_flags);
        return r;
    }
    if (!strcmp(op, "statvfs") || !strcmp(op, "fstatvfs")) {
        struct statvfs sv;
        r = op[0] == 's' ? statvfs(S(0), &sv) : fstatvfs(I(0), &sv);
        if (r == 0)
            putf("bsize=%lu frsize=%lu namemax=%lu flag=%lx", sv.f_bsize, sv.f_frsize, sv.f_namemax, sv.f_flag);
        return r;
    }
    if (!strcmp(op, "pathconf"))    return pathconf(S(0), I(1));
    if (!strcmp(op, "fpathconf"))   return fpathconf(I(0), I(1));
    if (!strcmp(op, "ftw")) {
        put("", 0);
        return ftw(S(0), ftw_visit_old, 8);
    }
    if (!strcmp(op, "futimes") || !strcmp(op, "futimesat")) {
        int k = op[6] == 'a' ? 2 : 1;
        struct timeval tv[2] = {{N(k), 500000}, {N(k + 1), 500000}};
        return op[6] == 'a' ? futimesat(I(0), S(1), N(k) < 0 ? NULL : tv) : futimes(I(0), N(k) < 0 ? NULL : tv);
    }
    if (!strcmp(op, "lchmod"))      return lchmod(S(0), (mode_t)N(1));
    if (!strcmp(op, "getdents64") || !strcmp(op, "getdirentries")) {
        off_t base = 0;
        r = op[3] == 'd' ? getdents64(I(0), buf, sizeof buf) : getdirentries(I(0), buf, sizeof buf, &base);
        if (r >= 0)
            put_records(buf, r, op[3] == 'd');
        return r < 0 ? r : 0;     /* the byte count depends on record padding, not on the tree */
    }
    if (!strcmp(op, "readdir_r_all")) {
        DIR *d = dirs[N(0)];
        if (!d) {
            errno = EBADF;
            return -1;
        }
        char *names[512];
        int n = 0, e = 0;
        struct dirent entry, *got;
        for (;;) {
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
            e = readdir_r(d, &entry, &got);
#pragma GCC diagnostic pop
            if (e || !got || n >= 512)
                break;
            names[n++] = strdup(entry.d_name);
        }
        qsort(names, (size_t)n, sizeof names[0], cmp_names);
        put("", 0);
        for (int i = 0; i < n; i++) {
            put(names[i], strlen(names[i]));
            put("/", 1);
            free(names[i]);
        }
        errno = e;
        return e ? -1 : 0;
    }
    if (!strcmp(op, "tee_pipe") || !strcmp(op, "vmsplice_pipe")) {
        int p[2], q[2];
        if (pipe(p) < 0)
            return -1;
        if (op[0] == 't') {
            if (pipe(q) < 0 || write(p[1], S(0), a[0].len) < 0)
                return -1;
            r = tee(p[0], q[1], a[0].len, SPLICE_F_NONBLOCK);
            int e = errno;
            ssize_t n = r > 0 ? read(q[0], buf, (size_t)r) : 0;
            if (n > 0)
                put(buf, (size_t)n);
            close(q[0]);
            close(q[1]);
            errno = e;
        } else {
            struct iovec iov = {S(0), a[0].len};
            r = vmsplice(p[1], &iov, 1, 0);
            int e = errno;
            ssize_t n = r > 0 ? read(p[0], buf, (size_t)r) : 0;
            if (n > 0)
                put(buf, (size_t)n);
            errno = e;
        }
        int e = errno;
        close(p[0]);
        close(p[1]);
        errno = e;
        return r;
    }
    if (!strcmp(op, "lremovexattr")) return lremovexattr(S(0), S(1));
    if (!strcmp(op, "removexattr")) return removexattr(S(0), S(1));
    if (!strcmp(op, "fremovexattr")) return fremovexattr(I(0), S(1));
    if (!strcmp(op, "stat") || !strcmp(op, "lstat") || !strcmp(op, "fstat") || !strcmp(op, "fstatat")) {
        struct stat st;
        r = op[0] == 's' ? stat(S(0), &st) : op[0] == 'l' ? lstat(S(0), &st)
          : op[5] == 0 ? fstat(I(0), &st) : fstatat(I(0), S(1), &st, I(2));
        if (r == 0)
            put_stat(&st);
        return r;
    }
    if (!strcmp(op, "statx")) {
        struct statx sx;
        r = statx(I(0), S(1), I(2), (unsigned)N(3), &sx);
        if (r == 0)
            put_statx(&sx);
        return r;
    }
    if (!strcmp(op, "access"))      return access(S(0), I(1));
    if (!strcmp(op, "faccessat"))   return faccessat(I(0), S(1), I(2), I(3));
    if (!strcmp(op, "euidaccess"))  return euidaccess(S(0), I(1));
    if (!strcmp(op, "opendir") || !strcmp(op, "fdopendir")) {
        long id = N(1);
        DIR *d = op[0] == 'o' ? opendir(S(0)) : fdopendir(I(0));
        if (!d)
            return -1;
        if (id >= 0 && id < MAX_IDS)
            dirs[id] = d;
        return 0;
    }
    if (!strcmp(op, "readdir_all") || !strcmp(op, "closedir") || !strcmp(op, "rewinddir")) {
        DIR *d = dirs[N(0)];
        if (!d) {
            errno = EBADF;
            return -1;
        }
        if (op[0] == 'c') {
            dirs[N(0)] = NULL;
            return closedir(d);
        }
        if (op[1] == 'e' && op[2] == 'w') {
            rewinddir(d);
            return 0;
        }
        errno = 0;
        put_listing(d);
        if (!has_data)
            put("", 0);
        return errno ? -1 : 0;
    }
    if (!strcmp(op, "scandir") || !strcmp(op, "scandirat")) {
        struct dirent **list;
        int n = op[7] ? scandirat(I(0), S(1), &list, NULL, alphasort) : scandir(S(0), &list, NULL, alphasort);
        if (n < 0)
            return -1;
        put("", 0);
        for (int i = 0; i < n; i++) {
            put(list[i]->d_name, strlen(list[i]->d_name));
            put("/", 1);
            free(list[i]);
        }
        free(list);
        return n;
    }
    if (!strcmp(op, "nftw")) {
        put("", 0);
        return nftw(S(0), ftw_visit, 8, I(1) & ~FTW_CHDIR);
    }
    if (!strcmp(op, "getcwd")) {
        size_t n = (size_t)N(0) < sizeof buf ? (size_t)N(0) : sizeof buf;
        char *p = getcwd(n ? buf : NULL, n);
        if (!p)
            return -1;
        put(p, strlen(p));
        if (p != buf)
            free(p);
        return 0;
    }
    if (!strcmp(op, "chdir"))       return chdir(S(0));
    if (!strcmp(op, "fchdir"))      return fchdir(I(0));
    if (!strcmp(op, "realpath")) {
        char *p = realpath(S(0), NULL);
        if (!p)
            return -1;
        put(p, strlen(p));
        free(p);
        return 0;
    }
    if (!strcmp(op, "copy_file_range")) return copy_file_range(I(0), NULL, I(1), NULL, (size_t)N(2), 0);
    if (!strcmp(op, "sendfile"))    return sendfile(I(0), I(1), NULL, (size_t)N(2));
    if (!strcmp(op, "splice_in")) {
        /* file -> pipe -> what the step reads back */
        int p[2];
        if (pipe2(p, O_NONBLOCK) < 0)
            return -1;
        r = splice(I(0), NULL, p[1], NULL, (size_t)N(1), SPLICE_F_NONBLOCK);
        int e = errno;
        ssize_t n = r > 0 ? read(p[0], buf, sizeof buf) : 0;
        if (n > 0)
            put(buf, (size_t)n);
        close(p[0]);
        close(p[1]);
        errno = e;
        return r;
    }
    if (!strcmp(op, "splice_out")) {
        /* bytes -> pipe -> file */
        int p[2];
        if (pipe(p) < 0)
            return -1;
        if (write(p[1], S(1), a[1].len) < 0)
            return -1;
        r = splice(p[0], NULL, I(0), NULL, a[1].len, SPLICE_F_NONBLOCK);
        int e = errno;
        close(p[0]);
        close(p[1]);
        errno = e;
        return r;
    }
    if (!strcmp(op, "mmap_read") || !strcmp(op, "mmap_write")) {
        size_t len = (size_t)N(1);
        char *m = mmap(NULL, len, op[5] == 'r' ? PROT_READ : PROT_READ | PROT_WRITE, MAP_SHARED, I(0), 0);
        if (m == MAP_FAILED)
            return -1;
        if (op[5] == 'r') {
            /* only what lies within the file: a page past the end raises SIGBUS */
            struct stat st;
            size_t n = fstat(I(0), &st) == 0 && (size_t)st.st_size < len ? (size_t)st.st_size : len;
            put(m, n);
            r = 0;
        } else {
            struct stat st;
            size_t n = fstat(I(0), &st) == 0 && (size_t)st.st_size < len ? (size_t)st.st_size : len;
            size_t w = a[2].len < n ? a[2].len : n;
            memcpy(m, S(2), w);
            r = msync(m, len, MS_SYNC);
        }
        int e = errno;
        munmap(m, len);
        errno = e;
        return r;
    }
    if (!strcmp(op, "umask"))       return umask((mode_t)N(0));
    if (!strcmp(op, "fork_append")) {
        /* a forked child appends to a file and reports its errno as exit status */
        pid_t pid = fork_child();
        if (pid < 0)
            return -1;
        if (pid == 0) {
            int fd = open(S(0), O_WRONLY | O_CREAT | O_APPEND, 0644);
            if (fd < 0)
                child_exit(-1);
            child_exit(write(fd, S(1), a[1].len) < 0 ? -1 : close(fd));
        }
        return child_status(pid);
    }
    if (!strcmp(op, "fork_write_fd")) {
        /* a forked child writes through an inherited descriptor (shared offset) */
        pid_t pid = fork_child();
        if (pid < 0)
            return -1;
        if (pid == 0)
            child_exit(write(I(0), S(1), a[1].len));
        return child_status(pid);
    }
    if (!strcmp(op, "fork_fork_mkdir")) {
        pid_t pid = fork_child();
        if (pid < 0)
            return -1;
        if (pid == 0) {
            pid_t inner = fork_child();
            if (inner < 0)
                child_exit(-1);
            if (inner == 0)
                child_exit(mkdir(S(0), 0755));
            _exit((int)child_status(inner));
        }
        return child_status(pid);
    }
    if (!strcmp(op, "vfork_chdir_exec")) {
        /* what subprocess.Popen(cwd=...) does: the child's chdir must not move the parent */
        pid_t pid = vfork();
        if (pid < 0)
            return -1;
        if (pid == 0) {
            alarm(2);
            if (chdir(S(0)) < 0)
                _exit(errno & 0x7f);
            char *argv[] = {"true", NULL};
            execve("/bin/true", argv, environ);
            _exit(126);
        }
        return child_status(pid);
    }
    if (!strcmp(op, "spawn_cat") || !strcmp(op, "spawnp_cat")) {
        /* posix_spawn with an open file action: cat's stdin is the file, its stdout a pipe */
        int p[2];
        if (pipe(p) < 0)
            return -1;
        posix_spawn_file_actions_t fa;
        posix_spawn_file_actions_init(&fa);
        posix_spawn_file_actions_addopen(&fa, 0, S(0), I(1), 0644);
        posix_spawn_file_actions_adddup2(&fa, p[1], 1);
        posix_spawn_file_actions_addclose(&fa, p[0]);
        char *argv[] = {"cat", NULL};
        r = spawn_and_read(op[5] == 'p' ? "cat" : "/bin/cat", argv, &fa, p, op[5] == 'p');
        posix_spawn_file_actions_destroy(&fa);
        return r;
    }
    if (!strcmp(op, "spawn_pwd")) {
        int p[2];
        if (pipe(p) < 0)
            return -1;
        posix_spawn_file_actions_t fa;
        posix_spawn_file_actions_init(&fa);
        posix_spawn_file_actions_addchdir_np(&fa, S(0));
        posix_spawn_file_actions_adddup2(&fa, p[1], 1);
        posix_spawn_file_actions_addclose(&fa, p[0]);
        char *argv[] = {"pwd", "-P", NULL};
        r = spawn_and_read("/bin/pwd", argv, &fa, p, 0);
        posix_spawn_file_actions_destroy(&fa);
        return r;
    }
    if (!strcmp(op, "as_nobody")) {
        /* as root: a child that becomes nobody opens (N(1) flags) and reports its errno */
        pid_t pid = fork_child();
        if (pid < 0)
            return -1;
        if (pid == 0) {
            if (setgroups(0, NULL) < 0 || setgid(65534) < 0 || setuid(65534) < 0)
                _exit(126);
            int fd = open(S(0), I(1), 0644);
            child_exit(fd < 0 ? -1 : close(fd));
        }
        return child_status(pid);
    }
    errno = ENOSYS;
    return -2;
}

/* One script line: run the step, report its result. */
static void do_line(char *line)
{
    char *tok[MAX_ARGS + 2];
    int nt = 0;
    for (char *save = NULL, *t = strtok_r(line, " ", &save); t && nt < MAX_ARGS + 2;
         t = strtok_r(NULL, " ", &save))
        tok[nt++] = t;
    if (nt < 2)
        return;
    long id = strtol(tok[0], NULL, 10);
    current_id = id;
    struct arg a[MAX_ARGS];
    for (int i = 2; i < nt; i++)
        parse_arg(i - 2, tok[i], &a[i - 2]);
    data_len = 0;
    has_data = 0;
    alarm(2);
    errno = 0;
    long r = run_step(tok[1], a, nt - 2);
    int err = r < 0 ? errno : 0;
    alarm(0);
    if (r >= 0 && id >= 0 && id < MAX_IDS &&
        (!strcmp(tok[1], "open") || !strcmp(tok[1], "openat") || !strcmp(tok[1], "creat") ||
         !strncmp(tok[1], "dup", 3) || !strncmp(tok[1], "mkstemp", 7) || !strncmp(tok[1], "mkostemp", 8) ||
         (!strcmp(tok[1], "fcntl_int") && (a[1].num == F_DUPFD || a[1].num == F_DUPFD_CLOEXEC))))
        fds[id] = (int)r;
    report(id, r, err);
}

static int conform_init(const char *where)
{
    if (strlen(where) >= sizeof root - 1)
        return -1;
    strcpy(root, where);
    guard_page = mmap(NULL, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    for (int i = 0; i < MAX_IDS; i++)
        fds[i] = -1;
    /* a step that would block for ever (a FIFO without a peer) is interrupted instead */
    struct sigaction sa = {.sa_handler = on_alarm};
    sigaction(SIGALRM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    umask(022);
    if (chdir(root) < 0) {
        fprintf(stderr, "executor: cannot enter %s: %s\n", root, strerror(errno));
        return -1;
    }
    return 0;
}

#ifdef CONFORM_SNIPPET
/* A reproduction printed by `bypass conform` includes this file and calls STEP() per step. */
#define STEP(text) do { char step_line[] = text; do_line(step_line); } while (0)
#else
int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: executor ROOT RESULTS_FD < script\n");
        return 2;
    }
    int results_fd = atoi(argv[2]);
    if (read_script() < 0)
        return 3;
    results = mmap(NULL, RESULTS_MAX, PROT_READ | PROT_WRITE, MAP_SHARED, results_fd, 0);
    if (results == MAP_FAILED)
        return 3;
    syscall(SYS_close, results_fd);
    /* the steps start from a program's usual table: 0 and 1 /dev/null, 2 the error pipe */
    int null = (int)syscall(SYS_openat, AT_FDCWD, "/dev/null", O_RDWR);
    if (null >= 0) {
        syscall(SYS_dup3, null, 0, 0);
        syscall(SYS_dup3, null, 1, 0);
        if (null > 2)
            syscall(SYS_close, null);
    }
    if (conform_init(argv[1]) < 0)
        return 4;
    char *line;
    while ((line = next_line()) != NULL)
        do_line(line);
    return 0;
}
#endif
