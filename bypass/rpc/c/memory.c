/*
 * memory.c — can the agent read what the program handed it?
 *
 * The kernel answers EFAULT for a path or buffer it cannot read; an agent that reads the same
 * pointer in user space would crash the program instead.  bypass_bad_pointer() (the header)
 * catches NULL and the kernel's half without a system call; a page that is mapped but not
 * readable (PROT_NONE, a guard page) needs the kernel's word.  One system call per page, and the
 * answer is remembered per thread: paths live in a few pages (stack, a heap buffer, a tree
 * walk's entries), so the cost after the first call is a compare.
 */
#define _GNU_SOURCE
#include "bypass_runtime.h"

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>

#define OK_PAGES 8
static __thread uintptr_t ok_pages[OK_PAGES];

static uintptr_t page_size(void)
{
    static uintptr_t size;
    if (!size)
        size = (uintptr_t)sysconf(_SC_PAGESIZE);
    return size;
}

int bypass_page_readable(const void *p)
{
    uintptr_t ps = page_size(), page = (uintptr_t)p & ~(ps - 1);
    unsigned slot = (unsigned)(page / ps) % OK_PAGES;
    if (bypass_bad_pointer(p))
        return 0;
    if (ok_pages[slot] == page)
        return 1;
    /* Reading one byte of the page through the kernel tells mapped and readable (PROT_NONE
     * included) without faulting; mincore, where that is refused (seccomp, YAMA), tells mapped. */
    unsigned char byte;
    struct iovec here = { &byte, 1 }, there = { (void *)page, 1 };
    int saved = errno;
    ssize_t got = process_vm_readv(getpid(), &here, 1, &there, 1, 0);
    if (got < 0 && errno != EPERM && errno != ENOSYS) {
        errno = saved;
        return 0;
    }
    if (got < 0 && mincore((void *)page, 1, &byte) < 0) {
        errno = saved;
        return 0;
    }
    errno = saved;
    ok_pages[slot] = page;
    return 1;
}

int bypass_string_readable(const char *s)
{
    uintptr_t ps = page_size(), at = (uintptr_t)s;
    for (;;) {
        if (!bypass_page_readable((const void *)at))
            return 0;
        size_t room = ps - (at & (ps - 1));
        if (memchr((const void *)at, 0, room))
            return 1;
        at += room;
    }
}
