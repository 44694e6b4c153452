/*
 * memory.c — can the agent read what the program handed it?
 *
 * The kernel answers EFAULT for a path or buffer it cannot read; an agent that reads the same
 * pointer in user space would crash the program instead.  bypass_bad_pointer() (the header)
 * catches NULL and the kernel's half without a system call; a page that is mapped but not
 * readable (PROT_NONE, a guard page) needs the kernel's word.  One system call per page, and the
 * answer is remembered per thread: paths live in a few pages (stack, a heap buffer, a tree
 * walk's entries), so the cost after the first call is a compare.
 *
 * Known limit: the answer is not taken back when the program later unmaps a remembered page or
 * makes it PROT_NONE (that would need a hook on every munmap/mprotect, glibc's internal ones
 * included); a path pointer into such a page, a use after unmap, still faults in the agent.
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
/* initial-exec: an agent is loaded with the program (LD_PRELOAD), so its thread-local data sits
 * in the static TLS block and a hit costs a compare, not a __tls_get_addr call per path */
static __thread uintptr_t ok_pages[OK_PAGES] __attribute__((tls_model("initial-exec")));
static unsigned page_shift;       /* log2 of the page size, found at the first check */

static inline unsigned shift(void)
{
    if (__builtin_expect(!page_shift, 0))
        page_shift = (unsigned)__builtin_ctzl((unsigned long)sysconf(_SC_PAGESIZE));
    return page_shift;
}

static int ask_kernel(uintptr_t page, uintptr_t *slot)
{
    /* Reading one byte of the page through the kernel tells mapped and readable (PROT_NONE
     * included) without faulting; mincore, where that is refused (seccomp, YAMA), tells mapped. */
    unsigned char byte;
    struct iovec here = { &byte, 1 }, there = { (void *)page, 1 };
    int saved = errno, ok = 1;
    ssize_t got = process_vm_readv(getpid(), &here, 1, &there, 1, 0);
    if (got < 0 && errno != EPERM && errno != ENOSYS)
        ok = 0;
    else if (got < 0 && mincore((void *)page, 1, &byte) < 0)
        ok = 0;
    errno = saved;
    if (ok)
        *slot = page;
    return ok;
}

static inline int page_ok(uintptr_t at, unsigned sh)
{
    uintptr_t page = at >> sh << sh;
    uintptr_t *slot = &ok_pages[(at >> sh) % OK_PAGES];
    return *slot == page || ask_kernel(page, slot);
}

int bypass_page_readable(const void *p)
{
    return !bypass_bad_pointer(p) && page_ok((uintptr_t)p, shift());
}

int bypass_string_readable(const char *s)
{
    if (bypass_bad_pointer(s))
        return 0;
    unsigned sh = shift();
    uintptr_t at = (uintptr_t)s;
    for (;;) {
        if (!page_ok(at, sh))
            return 0;
        size_t room = ((uintptr_t)1 << sh) - (at & (((uintptr_t)1 << sh) - 1));
        if (memchr((const void *)at, 0, room))
            return 1;
        at += room;
        if (bypass_bad_pointer((const void *)at))
            return 0;                   /* ran into the kernel's half */
    }
}
