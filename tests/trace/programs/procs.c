/*
 * Threads and every way of starting a child, each child reading MARKER with an environment that
 * lacks LD_PRELOAD: the agent must follow anyway.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *marker;

static void *reader(void *arg)
{
    long id = (long)arg;
    char buf[64];
    for (int i = 0; i < 50; i++) {
        int fd = open(marker, O_RDONLY);
        if (fd < 0 || read(fd, buf, sizeof buf) <= 0 || close(fd) < 0) {
            fprintf(stderr, "thread %ld failed\n", id);
            return (void *)1;
        }
    }
    return NULL;
}

static int wait_ok(pid_t pid)
{
    int status;
    return waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

int main(int argc, char **argv)
{
    if (argc != 2)
        return 2;
    marker = argv[1];
    pthread_t threads[8];
    for (long i = 0; i < 8; i++)
        pthread_create(&threads[i], NULL, reader, (void *)i);
    for (int i = 0; i < 8; i++) {
        void *result;
        pthread_join(threads[i], &result);
        if (result)
            return 1;
    }

    char *empty_env[] = {"PATH=/usr/bin:/bin", NULL};
    char *cat_argv[] = {"cat", (char *)marker, NULL};

    pid_t pid = fork();                                   /* fork + execve, explicit env */
    if (pid == 0) {
        execve("/bin/cat", cat_argv, empty_env);
        _exit(127);
    }
    if (!wait_ok(pid))
        return 3;

    pid = vfork();                                        /* vfork + execve */
    if (pid == 0) {
        execve("/bin/cat", cat_argv, empty_env);
        _exit(127);
    }
    if (!wait_ok(pid))
        return 4;

    if (posix_spawn(&pid, "/bin/cat", NULL, NULL, cat_argv, empty_env) != 0 || !wait_ok(pid))
        return 5;
    if (posix_spawnp(&pid, "cat", NULL, NULL, cat_argv, empty_env) != 0 || !wait_ok(pid))
        return 6;

    char command[4096];
    snprintf(command, sizeof command, "env -i /bin/cat %s", marker);
    if (system(command) != 0)                              /* system → sh → env -i → cat */
        return 7;
    FILE *pipe = popen(command, "r");
    char line[256];
    if (!pipe || !fgets(line, sizeof line, pipe) || pclose(pipe) != 0)
        return 8;

    pid = fork();                                          /* execl / execlp */
    if (pid == 0) {
        execlp("cat", "cat", marker, (char *)NULL);
        _exit(127);
    }
    if (!wait_ok(pid))
        return 9;
    puts("done");
    return 0;
}
