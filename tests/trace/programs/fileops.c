/*
 * One of every file operation the knowledge covers, for coverage tests. Built four ways
 * (plain, _FORTIFY_SOURCE=2, _FILE_OFFSET_BITS=64, both) so each ABI entry point gets exercised.
 * Lengths and flags come from `volatile` variables so the compiler cannot prove them safe and
 * must call the fortified __*_chk / __open_2 forms.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <unistd.h>
#include <utime.h>

static volatile int runtime_flags = O_RDONLY;
static volatile size_t runtime_len = 16;

#define CHECK(call) do { if ((call) < 0) { perror(#call); return 1; } } while (0)

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: fileops DIR\n");
        return 2;
    }
    CHECK(chdir(argv[1]));
    char cwd[PATH_MAX];
    size_t cwd_len = sizeof cwd - runtime_len;
    if (!getcwd(cwd, cwd_len))
        return 1;

    int fd = open("data.txt", O_WRONLY | O_CREAT | O_TRUNC, 0644);
    CHECK(fd);
    CHECK(write(fd, "hello, world\n", 13));
    CHECK(pwrite(fd, "H", 1, 0));
    struct iovec iov[2] = {{"ab", 2}, {"cd\n", 3}};
    CHECK(writev(fd, iov, 2));
    CHECK(lseek(fd, 0, SEEK_END));
    CHECK(ftruncate(fd, 18));
    CHECK(fchmod(fd, 0640));
    CHECK(fsync(fd));
    CHECK(close(fd));

    fd = open("data.txt", runtime_flags);                 /* __open_2 when fortified */
    CHECK(fd);
    char buf[64];
    CHECK(read(fd, buf, runtime_len));                    /* __read_chk when fortified */
    CHECK(pread(fd, buf, runtime_len, 2));                /* __pread_chk / __pread64_chk */
    struct stat st;
    CHECK(fstat(fd, &st));
    int copy = dup(fd);
    CHECK(copy);
    CHECK(dup2(fd, copy));
    CHECK(dup3(fd, copy, O_CLOEXEC));
    CHECK(fcntl(copy, F_SETFD, FD_CLOEXEC));
    CHECK(close(copy));
    CHECK(close(fd));

    int dirfd = open(".", O_RDONLY | O_DIRECTORY);
    CHECK(dirfd);
    fd = openat(dirfd, "data.txt", runtime_flags);        /* __openat_2 when fortified */
    CHECK(fd);
    CHECK(close(fd));
    CHECK(fstatat(dirfd, "data.txt", &st, 0));
    struct statx stx;
    CHECK(statx(dirfd, "data.txt", 0, STATX_SIZE, &stx));
    CHECK(faccessat(dirfd, "data.txt", R_OK, 0));
    fd = creat("created.txt", 0600);
    CHECK(fd);
    CHECK(close(fd));

    CHECK(stat("data.txt", &st));
    CHECK(access("data.txt", R_OK));
    CHECK(euidaccess("data.txt", R_OK));
    CHECK(truncate("created.txt", 4));
    CHECK(chmod("created.txt", 0644));
    CHECK(chown("created.txt", getuid(), getgid()));
    struct utimbuf times = {1000, 2000};
    CHECK(utime("created.txt", &times));
    struct timeval tv[2] = {{1, 0}, {2, 0}};
    CHECK(utimes("created.txt", tv));
    CHECK(utimensat(AT_FDCWD, "created.txt", NULL, 0));

    CHECK(symlink("data.txt", "link"));
    CHECK(lstat("link", &st));
    char target[64];
    CHECK(readlink("link", target, runtime_len));         /* __readlink_chk */
    CHECK(readlinkat(dirfd, "link", target, runtime_len)); /* __readlinkat_chk */
    char resolved[PATH_MAX];
    if (!realpath("link", resolved))                      /* __realpath_chk */
        return 1;
    CHECK(link("data.txt", "hard"));
    CHECK(linkat(dirfd, "hard", dirfd, "hard2", 0));
    CHECK(rename("hard", "renamed"));
    CHECK(renameat(dirfd, "renamed", dirfd, "renamed2"));
    CHECK(unlink("renamed2"));
    CHECK(unlinkat(dirfd, "hard2", 0));
    CHECK(mkdir("sub", 0755));
    CHECK(mkdirat(dirfd, "sub/inner", 0755));
    CHECK(mkfifo("sub/fifo", 0600));
    CHECK(unlink("sub/fifo"));
    CHECK(rmdir("sub/inner"));

    DIR *dir = opendir(".");
    if (!dir)
        return 1;
    int entries = 0;
    while (readdir(dir))
        entries++;
    CHECK(closedir(dir));

    FILE *stream = fopen("data.txt", "r");
    if (!stream)
        return 1;
    stream = freopen("created.txt", "r", stream);
    if (!stream)
        return 1;
    CHECK(fclose(stream));
    fd = open("data.txt", O_RDONLY);
    CHECK(fd);
    stream = fdopen(fd, "r");
    if (!stream)
        return 1;
    CHECK(fclose(stream));

    char template[] = "tmpXXXXXX";
    fd = mkstemp(template);
    CHECK(fd);
    CHECK(close(fd));
    CHECK(remove(template));
    CHECK(rmdir("sub"));
    CHECK(fchdir(dirfd));
    CHECK(close(dirfd));
    printf("ok %d\n", entries);
    return 0;
}
