/*
 * kernel_probe.c - path shapes whose meaning belongs to the kernel.  Each case
 * makes its tree in the current directory, runs its calls and prints one line
 * per call (return value and errno name).  test_kernel_semantics.py runs every
 * case natively and under the sandbox agent and compares the lines and trees.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *ename(int e)
{
    static const struct { int e; const char *n; } t[] = {
        {0, "0"}, {EACCES, "EACCES"}, {EBUSY, "EBUSY"}, {EEXIST, "EEXIST"}, {EFAULT, "EFAULT"},
        {EINVAL, "EINVAL"}, {EISDIR, "EISDIR"}, {ELOOP, "ELOOP"}, {ENAMETOOLONG, "ENAMETOOLONG"},
        {ENOENT, "ENOENT"}, {ENOTDIR, "ENOTDIR"}, {ENOTEMPTY, "ENOTEMPTY"}, {ENOTSUP, "ENOTSUP"},
        {EPERM, "EPERM"}, {EROFS, "EROFS"}, {EXDEV, "EXDEV"}, {EBADF, "EBADF"},
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
        if (t[i].e == e)
            return t[i].n;
    return "E?";
}

/* fd numbers differ with the agent's own descriptors: print success as 0 */
#define SHOW(what, expr)                                                                 \
    do {                                                                                 \
        errno = 0;                                                                       \
        long rc_ = (long)(expr);                                                         \
        int e_ = errno;                                                                  \
        printf("%s: %s %s\n", what, rc_ < 0 ? "-1" : "ok", rc_ < 0 ? ename(e_) : "");    \
    } while (0)

static const char *bad = (const char *)-1;

static int nftw_cb(const char *p, const struct stat *st, int flag, struct FTW *f)
{
    (void)st; (void)flag; (void)f;
    printf("nftw %s\n", p);
    return 0;
}

/* a name of n characters */
static char *name(int n, char c)
{
    char *s = malloc((size_t)n + 1);
    memset(s, c, (size_t)n);
    s[n] = '\0';
    return s;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IONBF, 0);
    const char *c = argc > 1 ? argv[1] : "";
    struct stat st;
    char buf[PATH_MAX];
    if (!strcmp(c, "dots")) {
        mkdir("a", 0755); mkdir("a/b", 0755); mkdir("d", 0755); mkdir("d/sub", 0755);
        mkdir("c", 0755); mkdir("e", 0755); mkdir("e/f", 0755);
        SHOW("rmdir a/b/.", rmdir("a/b/."));
        SHOW("rmdir a/b/..", rmdir("a/b/.."));
        SHOW("rmdir a/b/", rmdir("e/f/"));
        SHOW("rename d/sub/. x", rename("d/sub/.", "x"));
        SHOW("rename d/sub x/.", rename("d/sub", "x/."));
        SHOW("unlink a/.", unlink("a/."));
        SHOW("mkdir a/.", mkdir("a/.", 0755));
        SHOW("mkdir a/b/../n/", mkdir("a/b/../n/", 0755));
        SHOW("chdir c", chdir("c"));
        SHOW("rmdir .", rmdir("."));
        SHOW("rmdir ..", rmdir(".."));
        SHOW("stat ''", stat("", &st));
        SHOW("open ''", open("", O_RDONLY));
        SHOW("chdir ..", chdir(".."));
    } else if (!strcmp(c, "efault")) {
        SHOW("access", access(bad, F_OK));
        SHOW("open", open(bad, O_RDONLY));
        SHOW("openat", openat(AT_FDCWD, bad, O_RDONLY));
        SHOW("stat", stat(bad, &st));
        SHOW("lstat", lstat(bad, &st));
        SHOW("fstatat", fstatat(AT_FDCWD, bad, &st, 0));
        SHOW("mkdir", mkdir(bad, 0755));
        SHOW("unlink", unlink(bad));
        SHOW("rename", rename(bad, "x"));
        SHOW("chdir", chdir(bad));
        SHOW("chmod", chmod(bad, 0644));
        SHOW("truncate", truncate(bad, 0));
        SHOW("readlink", readlink(bad, buf, sizeof buf));
        char *none[] = {NULL};
        char *args[] = {"x", "y", NULL};
        SHOW("execve", execve(bad, none, none));
        SHOW("execve argv", execve(bad, args, none));
        SHOW("execve bad argv", execve("/bin/true", (char **)bad, none));
    } else if (!strcmp(c, "long")) {
        /* a cwd ~2000 characters deep, then relative paths of ~3000: together past
         * PATH_MAX, which the kernel does not mind (it walks from the cwd) */
        char *n = name(200, 'd');
        for (int i = 0; i < 10; i++) {
            if (mkdir(n, 0755) || chdir(n)) {
                printf("setup failed: %s\n", ename(errno));
                return 1;
            }
        }
        char rel[PATH_MAX] = "";
        char *m = name(250, 'r');
        for (int i = 0; i < 12; i++) {
            if (i)
                strcat(rel, "/");
            strcat(rel, m);
            SHOW("mkdir rel", mkdir(rel, 0755));
        }
        strcat(rel, "/f");
        SHOW("creat rel", open(rel, O_CREAT | O_WRONLY, 0644));
        SHOW("stat rel", stat(rel, &st));
        SHOW("unlink rel", unlink(rel));
        strcat(rel, "/");
        strcat(rel, name(PATH_MAX - (int)strlen(rel) - 1, 'x'));
        SHOW("open too long", open(rel, O_RDONLY));
        SHOW("getcwd", getcwd(buf, sizeof buf) ? 0 : -1);
    } else if (!strcmp(c, "nftw")) {
        mkdir("nt", 0755); mkdir("nt/a", 0755); close(creat("nt/a/f", 0644));
        SHOW("nftw ./nt", nftw("./nt", nftw_cb, 8, FTW_PHYS));
        SHOW("nftw nt/", nftw("nt/", nftw_cb, 8, FTW_PHYS | FTW_DEPTH));
    } else if (!strcmp(c, "names")) {
        close(creat("file", 0644));
        mkdir("tgt", 0755); symlink("tgt", "lnk"); symlink("file", "flink");
        SHOW("realpath file/", realpath("file/", buf) ? 0 : -1);
        SHOW("realpath lnk/", realpath("lnk/", buf) ? 0 : -1);
        SHOW("realpath missing", realpath("missing", buf) ? 0 : -1);
        SHOW("stat file/", stat("file/", &st));
        SHOW("open file/", open("file/", O_RDONLY));
        SHOW("truncate /missing", truncate("/missing-bypass-probe", 0));
        SHOW("truncate missing", truncate("missing", 0));
        int dfd = open(".", O_RDONLY | O_DIRECTORY);
        SHOW("openat dfd lnk O_DIRECTORY", openat(dfd, "lnk", O_RDONLY | O_DIRECTORY));
        SHOW("openat dfd lnk/", openat(dfd, "lnk/", O_RDONLY));
        SHOW("openat dfd flink O_DIRECTORY", openat(dfd, "flink", O_RDONLY | O_DIRECTORY));
        int pf = open("flink", O_PATH | O_NOFOLLOW);
        char p[64];
        snprintf(p, sizeof p, "/proc/self/fd/%d", pf);
        SHOW("chmod /proc/self/fd/N (O_PATH symlink)", chmod(p, 0600));
        SHOW("stat file", stat("file", &st));
        printf("file mode %o\n", st.st_mode & 0777);
    } else if (!strcmp(c, "shapes")) {
        mkdir("d", 0755); close(creat("f", 0644)); symlink("loop2", "loop1"); symlink("loop1", "loop2");
        symlink("d", "ld"); symlink("missing", "dangling"); symlink("/", "root");
        SHOW("mkdir n/", mkdir("n/", 0755));
        SHOW("mkdir n//m//", mkdir("n//m//", 0755));
        SHOW("rename n/ o", rename("n/", "o"));
        SHOW("rename f/ g", rename("f/", "g"));
        SHOW("rename f g/", rename("f", "g/"));
        SHOW("link f h/", link("f", "h/"));
        SHOW("unlink d", unlink("d"));
        SHOW("rmdir f", rmdir("f"));
        SHOW("access f/", access("f/", F_OK));
        SHOW("stat loop1", stat("loop1", &st));
        SHOW("lstat loop1", lstat("loop1", &st));
        SHOW("open loop1/x", open("loop1/x", O_RDONLY));
        SHOW("stat dangling", stat("dangling", &st));
        SHOW("creat dangling", open("dangling", O_CREAT | O_WRONLY, 0644));
        SHOW("open ld/ O_DIRECTORY", open("ld/", O_RDONLY | O_DIRECTORY));
        SHOW("rmdir ld/", rmdir("ld/"));
        SHOW("unlink ld/", unlink("ld/"));
        SHOW("unlink ld", unlink("ld"));
        SHOW("stat root/..", stat("root/..", &st));
        SHOW("stat d/../../..", stat("d/../../..", &st));
        int dfd = open("d", O_RDONLY | O_DIRECTORY);
        SHOW("openat d ..", openat(dfd, "..", O_RDONLY | O_DIRECTORY));
        SHOW("mkdirat d x", mkdirat(dfd, "x", 0755));
        SHOW("fstatat d '' EMPTY", fstatat(dfd, "", &st, AT_EMPTY_PATH));
        SHOW("fstatat d ''", fstatat(dfd, "", &st, 0));
        SHOW("unlinkat d x REMOVEDIR", unlinkat(dfd, "x", AT_REMOVEDIR));
        SHOW("openat badfd", openat(9999, "x", O_RDONLY));
        SHOW("openat badfd abs", openat(9999, "/", O_RDONLY));
        SHOW("openat file-fd rel", openat(open("f", O_RDONLY), "x", O_RDONLY));
        SHOW("readlink dangling", readlink("dangling", buf, sizeof buf));
        SHOW("readlink f", readlink("f", buf, sizeof buf));
        SHOW("readlink ld/", readlink("ld/", buf, sizeof buf));
        SHOW("symlink x ''", symlink("x", ""));
        /* where the program started has another name in each run: compare with it */
        char start[PATH_MAX], other[PATH_MAX + 8];
        if (!getcwd(start, sizeof start))
            return 1;
        symlink("d", "ld2");
        SHOW("chdir f", chdir("f"));
        SHOW("chdir ld2", chdir("ld2"));
        SHOW("getcwd", getcwd(buf, sizeof buf) ? 0 : -1);
        snprintf(other, sizeof other, "%s/d", start);
        printf("cwd is start/d: %d\n", strcmp(buf, other) == 0);
        SHOW("chdir ..", chdir(".."));
        SHOW("realpath ld2/..", realpath("ld2/..", buf) ? 0 : -1);
        printf("realpath is start: %d\n", strcmp(buf, start) == 0);
        SHOW("realpath ld2/.", realpath("ld2/.", buf) ? 0 : -1);
        printf("realpath is start/d: %d\n", strcmp(buf, other) == 0);
    } else if (!strcmp(c, "order")) {
        /* what the kernel checks first decides the errno; flags are the program's own */
        char lng[PATH_MAX + 200], buf[64];
        const char *volatile nothing = NULL;        /* NULL the compiler cannot see */
        memset(lng, 0, sizeof lng);
        for (size_t i = 0; i + 2 < sizeof lng - 8; i += 2)
            memcpy(lng + i, "./", 2);
        strcat(lng, "f");
        close(open("f", O_CREAT | O_WRONLY, 0644));
        symlink("loop", "loop");
        int fd = open("n", O_WRONLY | O_CREAT | O_EXCL, 0644);
        printf("F_GETFL excl: %o\n", fcntl(fd, F_GETFL));
        close(fd);
        fd = open("f", O_RDONLY | O_NONBLOCK);
        printf("F_GETFL plain: %o\n", fcntl(fd, F_GETFL));
        SHOW("openat bad fd, O_CREAT|O_DIRECTORY", openat(9999, "x", O_RDWR | O_CREAT | O_DIRECTORY, 0));
        SHOW("openat file fd", openat(fd, "x", O_RDONLY));
        close(fd);
        SHOW("readlink NULL, 0", readlink(nothing, buf, 0));
        SHOW("readlinkat \"\"", readlinkat(AT_FDCWD, "", buf, sizeof buf));
        SHOW("readlink f/..", readlink("f/..", buf, sizeof buf));
        SHOW("renameat2 bad flags, bad fd", renameat2(-1, "f", 9999, "g", RENAME_EXCHANGE | RENAME_NOREPLACE));
        SHOW("renameat2 bad name first", renameat2(-1, (const char *)-1, 3, "g", RENAME_WHITEOUT));
        SHOW("link missing, long", link("missing", lng));
        SHOW("rename loop/ .", rename("loop/", "."));
        SHOW("linkat NULL", linkat(-1, nothing, 9999, "g", 0));
        SHOW("open loop// O_CREAT", open("loop//", O_WRONLY | O_CREAT, 0644));
        SHOW("mkdir loop/", mkdir("loop/", 0755));
        SHOW("pathconf f/.", pathconf("f/.", _PC_PATH_MAX));
        struct timespec omit[2] = {{0, UTIME_OMIT}, {0, UTIME_OMIT}};
        SHOW("utimensat omit, missing", utimensat(AT_FDCWD, "missing/..", omit, 0));
        SHOW("futimens omit, bad fd", futimens(9999, omit));
        char *args[] = {"cat", NULL};
        SHOW("fexecve -1", fexecve(-1, args, environ));
        posix_spawn_file_actions_t fa;
        posix_spawn_file_actions_init(&fa);
        printf("addopen loop: %d\n", posix_spawn_file_actions_addopen(&fa, 0, "loop", O_RDONLY, 0));
        pid_t pid;
        int e = posix_spawn(&pid, "/bin/cat", &fa, NULL, args, environ);
        printf("posix_spawn: %s\n", ename(e));
        if (e == 0)
            waitpid(pid, NULL, 0);
        posix_spawn_file_actions_destroy(&fa);
    } else if (!strcmp(c, "unsearchable") || !strcmp(c, "unsearchable-links")) {
        /* the cwd lies below a directory the process may not search: relative paths
         * still work, the kernel walks them from the cwd */
        mkdir("lock", 0700); mkdir("lock/in", 0777); mkdir("lock/in/d", 0777);
        chmod("lock/in", 0777); chmod("lock/in/d", 0777);        /* whatever the umask */
        symlink("..", "lock/in/up");
        symlink("d", "lock/in/lk");
        SHOW("chdir", chdir("lock/in"));
        if (setgid(65534) || setuid(65534)) {
            printf("setuid failed: %s\n", ename(errno));
            return 1;
        }
        SHOW("mkdir d/e", mkdir("d/e", 0777));
        SHOW("stat d/e", stat("d/e", &st));
        SHOW("creat d/e/f", open("d/e/f", O_CREAT | O_WRONLY, 0644));
        SHOW("stat d/e/f", stat("d/e/f", &st));
        SHOW("rename", rename("d/e/f", "d/g"));
        SHOW("unlink d/g", unlink("d/g"));
        SHOW("access ..", access("..", F_OK));
        SHOW("stat ../../lock", stat("../../lock/in", &st));
        if (!strcmp(c, "unsearchable-links")) {
            /* links read below "lock": the kernel reads them walking from the cwd */
            SHOW("open up/.", open("up/.", O_RDONLY));
            SHOW("open lk/e", open("lk/e", O_RDONLY));
            SHOW("open lk/missing", open("lk/missing", O_RDONLY));
        }
    } else {
        fprintf(stderr, "unknown case %s\n", c);
        return 2;
    }
    return 0;
}
