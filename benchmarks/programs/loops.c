/*
 * Benchmark loops timed from inside the process, so process start-up does not blur them.
 *   loops stat N PATH        N x stat(PATH)
 *   loops openread N PATH    N x open+read+close(PATH)
 *   loops spawn N PROGRAM    N x posix_spawn(PROGRAM)+waitpid: start-up cost of a child
 * Prints nanoseconds per iteration.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

int main(int argc, char **argv)
{
    if (argc != 4)
        return 2;
    long n = atol(argv[2]);
    const char *path = argv[3];
    char buf[256];
    struct stat st;
    double start = now_ns();
    for (long i = 0; i < n; i++) {
        if (strcmp(argv[1], "stat") == 0) {
            if (stat(path, &st) != 0)
                return 1;
        } else if (strcmp(argv[1], "openread") == 0) {
            int fd = open(path, O_RDONLY);
            if (fd < 0 || read(fd, buf, sizeof buf) < 0 || close(fd) != 0)
                return 1;
        } else if (strcmp(argv[1], "spawn") == 0) {
            pid_t pid;
            char *child_argv[] = {(char *)path, NULL};
            int status;
            if (posix_spawn(&pid, path, NULL, NULL, child_argv, environ) != 0 || waitpid(pid, &status, 0) != pid)
                return 1;
        } else {
            return 2;
        }
    }
    printf("%.1f\n", (now_ns() - start) / n);
    return 0;
}
