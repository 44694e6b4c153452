/*
 * policy.h — the agent's side of Condor's "policy in the shadow, mechanism in the agent" (see
 * policy.c and bypass/rpc/policy.py): at open the shadow says where a file is and how to read
 * it; the agent obeys, and counts what the program did with it for the I/O report.
 */
#ifndef REMOTE_POLICY_H
#define REMOTE_POLICY_H

#include <sys/types.h>

struct pol;     /* one open remote file's buffering and counters (struct rfile's) */

/* Before a remote open of (dslot, rpath): -2 means open it remotely (*choice is then filled
 * for pol_new); otherwise the answer of the open (a local descriptor for a local: or URL
 * remap, or -1 with errno). */
struct pol_choice {
    int kind;
    long size, block;
    char where[2 * 4096];
};
int pol_choose(int *dslot, const char **rpath, int flags, mode_t mode, struct pol_choice *choice);
/* For every call that takes a name: 1 when the absolute remote name rpath (dslot -1) is
 * remapped to local: or a URL, rpath then holding the local path to use instead. */
int pol_redirect(int dslot, char *rpath, size_t cap);

/* A file just opened remotely (choice NULL: an inherited placeholder, counted but not
 * buffered); NULL when out of memory (the file is then neither buffered nor counted). */
struct pol *pol_new(const struct pol_choice *choice, int flags, int fd);
void pol_free(struct pol *p);

/* Whether reads, writes and seeks of the file go through its buffer (flags: the open file's
 * flags now: an O_APPEND file is written directly). */
int pol_buffered(const struct pol *p, int flags, int writing);
ssize_t pol_read(int fd, struct pol *p, void *buf, size_t n);
ssize_t pol_write(int fd, struct pol *p, const void *buf, size_t n);
off_t pol_lseek(int fd, struct pol *p, off_t off, int whence);
/* Before the shadow's offset or bytes are used directly: write back, move the shadow's offset
 * to the program's (what give_back does for read-ahead). */
int pol_settle(int fd, struct pol *p);
/* fsync: write back, and the error of a write that failed after it was reported done. */
int pol_sync(struct pol *p);
/* what the program did: 0 read, 1 write (n bytes, or -1 for a failed call), 2 seek */
void pol_count(int fd, struct pol *p, int what, ssize_t n);
/* close of fd (last: the file's last descriptor here): writes back, sends the counts and
 * closes the shadow's slot in one call; returns like close. */
int pol_close(int fd, struct pol *p, int last);
/* fork (in_child 0/1) and exec/spawn (-1): the offsets are shared from now on, so the files
 * open now go direct; counts are sent (exec) or start again (the child's). */
void pol_shared(int how);
/* exec in a vfork child (the parent waits, its memory is ours): write the parent's held
 * writes back and move the shared offsets to the parent's, which goes direct from then on */
void pol_settle_for_vfork_child(void);

/* from remote.c */
unsigned rmt_write_gen(void);
void rmt_wrote(void);
int rmt_in_vfork(void);

#endif
