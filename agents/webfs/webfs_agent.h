/*
 * webfs_agent.h -- the shape every action in webfs.bypass shares: map the path argument
 * (EROFS for a write into a tree, the skeleton path for a read), then call the next layer.
 */
#ifndef BYPASS_WEBFS_AGENT_H
#define BYPASS_WEBFS_AGENT_H

#include "bypass_runtime.h"
#include "webfs.h"

#include <errno.h>
#include <fcntl.h>

#define WF_MAP(op, dirfd, var, failval)                                        \
    struct wf_path wf_##var;                                                   \
    do {                                                                       \
        int wf_e_ = wf_map((op), (dirfd), (var), &wf_##var);                  \
        if (wf_e_) {                                                           \
            errno = wf_e_;                                                     \
            return failval;                                                    \
        }                                                                      \
        (var) = wf_##var.use;                                                  \
    } while (0)

/* Refusal only, the path is left as given: for templates the library writes back into. */
#define WF_CHECK(op, dirfd, var, failval)                                      \
    do {                                                                       \
        struct wf_path wf_r_;                                                  \
        int wf_e_ = wf_map((op), (dirfd), (var), &wf_r_);                      \
        if (wf_e_) {                                                           \
            errno = wf_e_;                                                     \
            return failval;                                                    \
        }                                                                      \
    } while (0)

/* Without mounts every action is a pass-through. */
#define WF_PASS_IF_INACTIVE()                                                  \
    do {                                                                       \
        if (!wf_active())                                                      \
            return BYPASS_NEXT();                                              \
    } while (0)

static inline int wf_open_op(int flags)
{
    if ((flags & O_TMPFILE) == O_TMPFILE || (flags & (O_CREAT | O_TRUNC)) || (flags & O_ACCMODE) != O_RDONLY)
        return WF_WRITE;
    return (flags & O_PATH) ? WF_LOOK : WF_OPEN;
}

static inline int wf_fopen_op(const char *mode)
{
    if (!mode || bypass_bad_pointer(mode))
        return WF_OPEN;
    for (const char *m = mode; *m && *m != ','; m++)
        if (*m == 'w' || *m == 'a' || *m == '+')
            return WF_WRITE;
    return WF_OPEN;
}

/* A descriptor just opened: if it is a placeholder, fetch it; on failure close it. */
#define WF_OPENED(fd, flags, dirfd, var)                                       \
    do {                                                                       \
        if ((fd) >= 0) {                                                       \
            int wf_e_ = wf_after_open((fd), (flags), (dirfd), &wf_##var);      \
            if (wf_e_) {                                                       \
                close(fd);                                                     \
                errno = wf_e_;                                                 \
                return -1;                                                     \
            }                                                                  \
        }                                                                      \
    } while (0)

/* After WF_MAP of an exec's path (r) and wf_before_exec: a script in a tree is run through
 * its interpreter here.  Declares storage in the action's scope. */
#define WF_SCRIPT(r, asked, pathvar, argvvar, fail)                            \
    size_t wf_argc_ = 0;                                                       \
    while ((argvvar) && (argvvar)[wf_argc_])                                   \
        wf_argc_++;                                                            \
    char *wf_argv_[wf_argc_ + 4];                                              \
    char wf_line_[512];                                                        \
    struct wf_path wf_interp_;                                                 \
    do {                                                                       \
        int wf_k_ = wf_script(&(r), (asked), (argvvar), wf_argv_, wf_argc_ + 4, \
                              wf_line_, sizeof wf_line_, &wf_interp_);         \
        if (wf_k_ < 0) {                                                       \
            fail;                                                              \
        }                                                                      \
        if (wf_k_ > 0) {                                                       \
            (pathvar) = wf_interp_.use;                                        \
            (argvvar) = wf_argv_;                                              \
        }                                                                      \
    } while (0)

#endif
