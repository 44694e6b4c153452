/*
 * memory.c — can the agent read what the program handed it?
 *
 * The kernel answers EFAULT for a path or buffer it cannot read; an agent that reads the same
 * pointer in user space would crash the program instead.  bypass_bad_pointer() (the header)
 * catches NULL and the kernel's half without a system call; a page that is mapped but not
 * readable (PROT_NONE, a guard page) needs the kernel's word.  One system call per page, and the
 * answer is remembered: paths live in a few pages (stack, a heap buffer, a tree walk's
 * entries), so the cost after the first call is a compare.
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
#include <signal.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

/* Pages found readable, one process-wide table (readability is the address space's, not a
 * thread's): a tree walk (find, tar) hands names from a few dozen heap pages and comes back to
 * them (a directory's entries, then its subdirectories'), which 8 slots per thread kept asking
 * again: 260 system calls for one find of 2,000 files, 56 with 64 slots.  Slots are written
 * and read whole (relaxed atomics); a torn race only costs a question asked again. */
#define OK_PAGES 64
static uintptr_t ok_pages[OK_PAGES] BYPASS_HOT;
static unsigned page_shift BYPASS_HOT;       /* log2 of the page size, found at the first check */

static inline unsigned shift(void)
{
    if (__builtin_expect(!page_shift, 0))
        page_shift = (unsigned)__builtin_ctzl((unsigned long)sysconf(_SC_PAGESIZE));
    return page_shift;
}

/* rt_sigprocmask with a `how` it does not know copies the new set from user memory before it
 * looks at `how`: EFAULT for a page that cannot be read, else EINVAL with nothing changed.  One
 * cheap system call, without the pid and the page-table walk of process_vm_readv.  Trusted once
 * the kernel has answered EFAULT for its own half of the address space (an unexpected set size
 * would answer EINVAL for every page alike): 1 yes, -1 no, 0 not yet known. */
static int sigmask_probe_ok BYPASS_HOT;
#define KERNEL_SIGSET_BYTES ((_NSIG - 1) / 8)

/* The probe's answer, or -errno.  Made by the instruction itself on x86-64: the C library's
 * syscall() and errno are two more pages of its code for a fork child to fault in before its
 * exec (the exec check probes the program's path). */
static long sigmask_probe(uintptr_t page)
{
#if defined(__x86_64__)
    register long r10 __asm__("r10") = KERNEL_SIGSET_BYTES;
    long ret;
    __asm__ volatile("syscall" : "=a"(ret) : "a"((long)SYS_rt_sigprocmask), "D"(-1L), "S"(page), "d"(0L), "r"(r10)
                     : "rcx", "r11", "memory");
    return ret;
#else
    int saved = errno;
    long ret = syscall(SYS_rt_sigprocmask, -1, (void *)page, NULL, KERNEL_SIGSET_BYTES);
    if (ret < 0)
        ret = -errno;
    errno = saved;
    return ret;
#endif
}

static int ask_kernel(uintptr_t page, uintptr_t *slot)
{
    int ok = 1;
    int trusted = __atomic_load_n(&sigmask_probe_ok, __ATOMIC_RELAXED);
    if (__builtin_expect(trusted == 0, 0)) {
        trusted = sigmask_probe((uintptr_t)0 - 4096) == -EFAULT ? 1 : -1;
        __atomic_store_n(&sigmask_probe_ok, trusted, __ATOMIC_RELAXED);
    }
    long rc = trusted > 0 ? sigmask_probe(page) : 0;
    if (trusted > 0 && (rc == -EINVAL || rc == -EFAULT)) {
        ok = rc == -EINVAL;
    } else {
        int saved = errno;
        /* Reading one byte of the page through the kernel tells mapped and readable (PROT_NONE
         * included) without faulting; mincore, where that is refused (seccomp, YAMA), tells
         * mapped. */
        unsigned char byte;
        struct iovec here = { &byte, 1 }, there = { (void *)page, 1 };
        ssize_t got = process_vm_readv(getpid(), &here, 1, &there, 1, 0);
        if (got < 0 && errno != EPERM && errno != ENOSYS)
            ok = 0;
        else if (got < 0 && mincore((void *)page, 1, &byte) < 0)
            ok = 0;
        errno = saved;
    }
    if (ok)
        __atomic_store_n(slot, page, __ATOMIC_RELAXED);
    return ok;
}

static inline int page_ok(uintptr_t at, unsigned sh)
{
    uintptr_t page = at >> sh << sh;
    uintptr_t *slot = &ok_pages[(at >> sh) % OK_PAGES];
    return __atomic_load_n(slot, __ATOMIC_RELAXED) == page || ask_kernel(page, slot);
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
