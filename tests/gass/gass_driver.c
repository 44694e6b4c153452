/*
 * gass_driver.c -- drives the gass support library from the command line, for the tests.
 *
 *   gass_driver read URL            print the URL's content (gass_open O_RDONLY + gass_close)
 *   gass_driver stat URL            print "size mtime dev ino" from gass_stat
 *   gass_driver fstat URL           the same from fstat() of gass_open's descriptor (fixed up)
 *   gass_driver access URL MODE     MODE is a combination of r w x f
 *   gass_driver write URL TEXT      O_WRONLY|O_CREAT|O_TRUNC, write TEXT, close
 *   gass_driver open URL FLAGS [TEXT]  FLAGS: letters of r w R(dwr) c(reat) t(runc) a(ppend) x(cl)
 *   gass_driver dupwrite URL TEXT   write through a dup()ed descriptor after closing the first
 *   gass_driver fopen URL MODE [TEXT]  fopen/fwrite/fclose, or fopen/fread when no TEXT
 *   gass_driver freopen URL MODE TEXT  freopen(stdout) on the URL, print TEXT, fclose
 *   gass_driver exitwrite URL TEXT  write and exit() without closing: the exit handler uploads
 *   gass_driver exitinsignal URL TEXT URL2  write URL, then read URL2; a SIGALRM handler 1 s later
 *                                   does what the agent's _exit does (gass_exit_uploads, _exit):
 *                                   exit status 5 if it reported a failure, else 0
 *   gass_driver unlink URL
 *   gass_driver is_url STRING
 * On failure: prints "errno=NAME" and exits 3.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "gass.h"

static int fail(void)
{
    const char *name = strerrorname_np(errno);
    printf("errno=%s\n", name ? name : "?");
    fflush(stdout);
    return 3;
}

static int write_all(int fd, const char *text)
{
    size_t len = strlen(text);
    return write(fd, text, len) == (ssize_t)len ? 0 : -1;
}

static void print_stat(const struct stat *st)
{
    printf("%lld %lld %u:%u %llu\n", (long long)st->st_size, (long long)st->st_mtime,
           major(st->st_dev), minor(st->st_dev), (unsigned long long)st->st_ino);
}

static void exit_from_handler(int sig)
{
    (void)sig;
    int status = 0;
    gass_exit_uploads(&status);
    _exit(status == 0 ? 0 : 5);
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: see the source\n");
        return 2;
    }
    const char *cmd = argv[1], *url = argv[2];
    const char *arg = argc > 3 ? argv[3] : NULL;
    const char *text = argc > 4 ? argv[4] : NULL;
    int fd;

    if (strcmp(cmd, "is_url") == 0) {
        printf("%d\n", gass_is_url(url));
        return 0;
    }
    if (strcmp(cmd, "read") == 0) {
        if ((fd = gass_open(url, O_RDONLY, 0)) < 0)
            return fail();
        char buf[65536];
        ssize_t n;
        while ((n = read(fd, buf, sizeof buf)) > 0)
            fwrite(buf, 1, (size_t)n, stdout);
        return gass_close(fd) < 0 ? fail() : 0;
    }
    if (strcmp(cmd, "stat") == 0) {
        struct stat st;
        if (gass_stat(url, &st) < 0)
            return fail();
        print_stat(&st);
        return 0;
    }
    if (strcmp(cmd, "fstat") == 0) {
        struct stat st;
        if ((fd = gass_open(url, O_RDONLY, 0)) < 0 || fstat(fd, &st) < 0)
            return fail();
        gass_fstat_fixup(&st);
        print_stat(&st);
        return gass_close(fd) < 0 ? fail() : 0;
    }
    if (strcmp(cmd, "access") == 0 && arg) {
        int mode = 0;
        for (const char *p = arg; *p; p++)
            mode |= *p == 'r' ? R_OK : *p == 'w' ? W_OK : *p == 'x' ? X_OK : F_OK;
        if (gass_access(url, mode) < 0)
            return fail();
        puts("ok");
        return 0;
    }
    if ((strcmp(cmd, "write") == 0 || strcmp(cmd, "exitwrite") == 0) && arg) {
        if ((fd = gass_open(url, O_WRONLY | O_CREAT | O_TRUNC, 0644)) < 0 || write_all(fd, arg) < 0)
            return fail();
        if (strcmp(cmd, "exitwrite") == 0)
            exit(0);
        return gass_close(fd) < 0 ? fail() : 0;
    }
    if (strcmp(cmd, "exitinsignal") == 0 && arg && text) {
        if ((fd = gass_open(url, O_WRONLY | O_CREAT | O_TRUNC, 0644)) < 0 || write_all(fd, arg) < 0)
            return fail();
        signal(SIGALRM, exit_from_handler);
        alarm(1);
        gass_open(text, O_RDONLY, 0);
        return 4; /* the handler did not end the process */
    }
    if (strcmp(cmd, "open") == 0 && arg) {
        int flags = 0;
        for (const char *p = arg; *p; p++)
            flags |= *p == 'w' ? O_WRONLY : *p == 'R' ? O_RDWR : *p == 'c' ? O_CREAT
                   : *p == 't' ? O_TRUNC : *p == 'a' ? O_APPEND : *p == 'x' ? O_EXCL : 0;
        if ((fd = gass_open(url, flags, 0644)) < 0 || (text && write_all(fd, text) < 0))
            return fail();
        return gass_close(fd) < 0 ? fail() : 0;
    }
    if (strcmp(cmd, "dupwrite") == 0 && arg) {
        if ((fd = gass_open(url, O_WRONLY | O_CREAT | O_TRUNC, 0644)) < 0)
            return fail();
        int copy = dup(fd);
        /* Closing the first descriptor must not upload: the file is still open. */
        if (gass_close(fd) < 0 || write_all(copy, arg) < 0 || gass_close(copy) < 0)
            return fail();
        return 0;
    }
    if (strcmp(cmd, "fopen") == 0 && arg) {
        FILE *fp = gass_fopen(url, arg);
        if (fp == NULL)
            return fail();
        if (text)
            fputs(text, fp);
        else {
            char buf[4096];
            size_t n;
            while ((n = fread(buf, 1, sizeof buf, fp)) > 0)
                fwrite(buf, 1, n, stdout);
        }
        return gass_fclose(fp) == EOF ? fail() : 0;
    }
    if (strcmp(cmd, "freopen") == 0 && arg && text) {
        int real_stdout = dup(1);
        if (gass_freopen(url, arg, stdout) == NULL)
            return fail();
        fputs(text, stdout);
        if (gass_fclose(stdout) == EOF) {
            dup2(real_stdout, 1); /* stdout now went to the URL; report on the real one */
            FILE *out = fdopen(1, "w");
            fprintf(out, "errno=%s\n", strerrorname_np(errno));
            fclose(out);
            return 3;
        }
        return 0;
    }
    if (strcmp(cmd, "unlink") == 0) {
        if (gass_unlink(url) < 0)
            return fail();
        return 0;
    }
    fprintf(stderr, "unknown command %s\n", cmd);
    return 2;
}
