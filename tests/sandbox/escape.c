/*
 * escape.c - what the preload layer cannot see: raw system calls (built
 * static too, and run through the loader by the tests), io_uring, a file
 * handle, dlopen; and posix_spawn file actions that move the child before
 * naming a relative path.  Prints one line per attempt: "read ok <bytes>" or
 * "read <error>", "write ok" or "write <error>", and so on.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/io_uring.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

/* One IORING_OP_OPENAT, no liburing: the file descriptor, or -errno. */
static long uring_openat(const char *path, int flags)
{
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    int ring = (int)syscall(SYS_io_uring_setup, 4, &p);
    if (ring < 0)
        return -errno;
    size_t sq_size = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    size_t cq_size = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    if (p.features & IORING_FEAT_SINGLE_MMAP)
        sq_size = cq_size = sq_size > cq_size ? sq_size : cq_size;
    char *sq = mmap(NULL, sq_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring,
                    IORING_OFF_SQ_RING);
    char *cq = (p.features & IORING_FEAT_SINGLE_MMAP)
                   ? sq
                   : mmap(NULL, cq_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring,
                          IORING_OFF_CQ_RING);
    struct io_uring_sqe *sqes = mmap(NULL, p.sq_entries * sizeof *sqes, PROT_READ | PROT_WRITE,
                                     MAP_SHARED | MAP_POPULATE, ring, IORING_OFF_SQES);
    if (sq == MAP_FAILED || cq == MAP_FAILED || sqes == MAP_FAILED)
        return -ENOMEM;
    unsigned *tail = (unsigned *)(sq + p.sq_off.tail);
    unsigned idx = *tail & *(unsigned *)(sq + p.sq_off.ring_mask);
    memset(&sqes[idx], 0, sizeof sqes[idx]);
    sqes[idx].opcode = IORING_OP_OPENAT;
    sqes[idx].fd = AT_FDCWD;
    sqes[idx].addr = (unsigned long)path;
    sqes[idx].open_flags = (unsigned)flags;
    ((unsigned *)(sq + p.sq_off.array))[idx] = idx;
    __atomic_store_n(tail, *tail + 1, __ATOMIC_RELEASE);
    if (syscall(SYS_io_uring_enter, ring, 1, 1, IORING_ENTER_GETEVENTS, NULL, 0) < 0)
        return -errno;
    unsigned head = *(unsigned *)(cq + p.cq_off.head) & *(unsigned *)(cq + p.cq_off.ring_mask);
    return ((struct io_uring_cqe *)(cq + p.cq_off.cqes))[head].res;
}

/* A file handle taken before the run (name_to_handle_at, in hex), opened inside it. */
static long handle_open(const char *mount_path, const char *hex, int flags)
{
    size_t n = strlen(hex) / 2;
    struct file_handle *h = malloc(sizeof *h + n);
    unsigned type;
    if (!h || sscanf(hex, "%8x", &type) != 1)
        return -EINVAL;
    h->handle_type = (int)type;
    h->handle_bytes = (unsigned)(n - 4);
    for (size_t i = 4; i < n; i++) {
        unsigned b;
        sscanf(hex + 2 * i, "%2x", &b);
        h->f_handle[i - 4] = (unsigned char)b;
    }
    int mfd = open(mount_path, O_RDONLY | O_DIRECTORY);
    long fd = syscall(SYS_open_by_handle_at, mfd, h, flags);
    return fd < 0 ? -errno : fd;
}

static void report(long rfd, long wfd)
{
    char buf[256];
    long n = rfd >= 0 ? read((int)rfd, buf, sizeof buf - 1) : rfd;
    if (n >= 0) {
        buf[n] = '\0';
        printf("read ok %s", buf);
    } else {
        printf("read %s\n", strerror((int)-n));
    }
    n = wfd >= 0 ? write((int)wfd, "escaped\n", 8) : wfd;
    printf("write %s\n", n == 8 ? "ok" : strerror((int)-n));
}

/* echo NAME's text into NAME, relative to DIR, which the child reaches by `how`: "chdir"
 * (addchdir_np), "fchdir" (addopen of DIR, then addfchdir_np), "dup" (the same through a
 * dup2 of the list's own), "fchdir-parent" (the parent's descriptor of DIR).  Prints
 * "spawn-write ok" or the error the list or the spawn gave. */
static void spawn_write(const char *how, const char *dir, const char *name)
{
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    int e = 0;
    if (strcmp(how, "chdir") == 0) {
        e = posix_spawn_file_actions_addchdir_np(&fa, dir);
    } else if (strcmp(how, "fchdir-parent") == 0) {
        int d = open(dir, O_RDONLY | O_DIRECTORY);
        e = d < 0 ? errno : posix_spawn_file_actions_addfchdir_np(&fa, d);
    } else {
        e = posix_spawn_file_actions_addopen(&fa, 7, dir, O_RDONLY | O_DIRECTORY, 0);
        if (!e && strcmp(how, "dup") == 0)
            e = posix_spawn_file_actions_adddup2(&fa, 7, 8);
        if (!e)
            e = posix_spawn_file_actions_addfchdir_np(&fa, strcmp(how, "dup") == 0 ? 8 : 7);
    }
    if (!e)
        e = posix_spawn_file_actions_addopen(&fa, 1, name, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    pid_t pid;
    char *args[] = {"echo", "escaped", NULL};
    if (!e)
        e = posix_spawn(&pid, "/bin/echo", &fa, NULL, args, environ);
    int status = 0;
    if (!e && waitpid(pid, &status, 0) == pid && !(WIFEXITED(status) && WEXITSTATUS(status) == 0))
        e = ECHILD;
    posix_spawn_file_actions_destroy(&fa);
    printf("spawn-write %s\n", e ? strerror(e) : "ok");
}

/* posix_spawnp of NAME with a list that moves the child to DIR first: the C library searches
 * PATH (this process's) in the child, so a relative name or PATH entry is found from DIR.
 * The program's own output comes first; then "spawnp ok" or the error. */
static void spawnp_from(const char *dir, const char *name)
{
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    int e = posix_spawn_file_actions_addchdir_np(&fa, dir);
    pid_t pid;
    char *args[] = {(char *)name, NULL};
    fflush(stdout);
    if (!e)
        e = posix_spawnp(&pid, name, &fa, NULL, args, environ);
    int status = 0;
    if (!e && waitpid(pid, &status, 0) == pid && !(WIFEXITED(status) && WEXITSTATUS(status) == 0))
        e = ECHILD;
    posix_spawn_file_actions_destroy(&fa);
    printf("spawnp %s\n", e ? strerror(e) : "ok");
}

/* Many lists alive at once: the agent's room for them runs out.  Prints how many dup2 actions
 * failed, then what a chdir action gives with the room full and after the lists are freed. */
static void spawn_many(const char *dir)
{
    enum { N = 20 };
    posix_spawn_file_actions_t fa[N], more;
    int failed = 0;
    for (int i = 0; i < N; i++) {
        posix_spawn_file_actions_init(&fa[i]);
        failed += posix_spawn_file_actions_adddup2(&fa[i], 1, 9) != 0;
    }
    posix_spawn_file_actions_init(&more);
    int full = posix_spawn_file_actions_addchdir_np(&more, dir);
    int fchdir_full = posix_spawn_file_actions_addfchdir_np(&fa[N - 1], 9);
    for (int i = 0; i < N; i++)
        posix_spawn_file_actions_destroy(&fa[i]);
    posix_spawn_file_actions_destroy(&more);
    posix_spawn_file_actions_init(&more);
    int after = posix_spawn_file_actions_addchdir_np(&more, dir);
    posix_spawn_file_actions_destroy(&more);
    printf("dup2-failed %d; chdir-full %s; fchdir-full %s; chdir-after %s\n", failed,
           full ? strerror(full) : "ok", fchdir_full ? strerror(fchdir_full) : "ok",
           after ? strerror(after) : "ok");
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "spawn-many") == 0) {
        spawn_many(argv[2]);
        return 0;
    }
    if (argc == 4 && strcmp(argv[1], "spawnp") == 0) {
        spawnp_from(argv[2], argv[3]);
        return 0;
    }
    if (argc == 5 && strcmp(argv[1], "spawn") == 0) {
        spawn_write(argv[2], argv[3], argv[4]);
        return 0;
    }
    if (argc == 4 && strcmp(argv[1], "raw") == 0) {
        char buf[256];
        long fd = syscall(SYS_openat, AT_FDCWD, argv[2], O_RDONLY, 0);
        long n = fd >= 0 ? syscall(SYS_read, fd, buf, sizeof buf - 1) : -1;
        if (n >= 0) {
            buf[n] = '\0';
            printf("read ok %s", buf);
        } else {
            printf("read %s\n", strerror(errno));
        }
        fd = syscall(SYS_openat, AT_FDCWD, argv[3], O_WRONLY | O_TRUNC, 0);
        n = fd >= 0 ? syscall(SYS_write, fd, "escaped\n", 8) : -1;
        printf("write %s\n", n == 8 ? "ok" : strerror(errno));
        return 0;
    }
    if (argc == 4 && strcmp(argv[1], "uring") == 0) {
        report(uring_openat(argv[2], O_RDONLY), uring_openat(argv[3], O_WRONLY | O_TRUNC));
        return 0;
    }
    if (argc == 5 && strcmp(argv[1], "handle") == 0) {
        report(handle_open(argv[2], argv[3], O_RDONLY), handle_open(argv[2], argv[4], O_WRONLY | O_TRUNC));
        return 0;
    }
    if (argc == 3 && strcmp(argv[1], "name") == 0) {
        struct file_handle *h = malloc(sizeof *h + MAX_HANDLE_SZ);
        int mount_id;
        h->handle_bytes = MAX_HANDLE_SZ;
        if (!h || name_to_handle_at(AT_FDCWD, argv[2], h, &mount_id, 0) < 0) {
            perror("name_to_handle_at");
            return 1;
        }
        printf("%08x", (unsigned)h->handle_type);
        for (unsigned i = 0; i < h->handle_bytes; i++)
            printf("%02x", h->f_handle[i]);
        printf("\n");
        return 0;
    }
    if (argc == 3 && strcmp(argv[1], "dlopen") == 0) {
        void *h = dlopen(argv[2], RTLD_NOW);
        printf("dlopen %s\n", h ? "ok" : dlerror());
        return 0;
    }
    fprintf(stderr, "usage: escape raw|uring READ WRITE | name PATH | handle DIR HREAD HWRITE | "
                    "dlopen LIB | spawn chdir|fchdir|dup|fchdir-parent DIR NAME | spawn-many DIR | "
                    "spawnp DIR NAME\n");
    return 2;
}
