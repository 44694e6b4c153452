/*
 * escape.c - what the preload layer cannot see: raw system calls (built
 * static too, and run through the loader by the tests) and dlopen.  Prints
 * one line per attempt: "read ok <bytes>" / "read EACCES" and so on.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char **argv)
{
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
    if (argc == 3 && strcmp(argv[1], "dlopen") == 0) {
        void *h = dlopen(argv[2], RTLD_NOW);
        printf("dlopen %s\n", h ? "ok" : dlerror());
        return 0;
    }
    fprintf(stderr, "usage: escape raw READ WRITE | escape dlopen LIB\n");
    return 2;
}
