/*
 * sandbox_init.c - start-up of the sandbox agent: install the mount list
 * named by $BYPASS_MOUNTS before the program's main() runs.  A bad list
 * stops the program with "file:line: error: ..." and exit status 2.
 */
#define _GNU_SOURCE
#include "bypass_runtime.h"
#include "sandbox_agent.h"

#include <limits.h>
#include <string.h>
#include <unistd.h>

/* After the runtime's own constructor (priority 101). */
__attribute__((constructor(102))) void sb_agent_init(void)
{
    bypass_guard_enter();
    /* static, and written only on failure: a buffer this size on the stack would deepen every
     * process's start by a page */
    static char err[PATH_MAX + 256] SB_LARGE;
    if (sb_init_from_env(err, sizeof err) < 0) {
        size_t n = strlen(err);
        if (n < sizeof err - 1)
            err[n++] = '\n';
        ssize_t w = write(2, err, n);
        (void)w;
        _exit(2);
    }
    bypass_guard_leave();
}
