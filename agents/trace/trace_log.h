/* The trace agent's log: one line per trapped call, appended to $BYPASS_TRACE. */
#ifndef TRACE_LOG_H
#define TRACE_LOG_H

/* 0 until the first call looks at BYPASS_TRACE, then TRACE_OFF or TRACE_ON. */
enum { TRACE_UNKNOWN = 0, TRACE_OFF, TRACE_ON };
extern int trace_state;
int trace_start(void);

/* Non-zero when BYPASS_TRACE names a log; without it the agent is a pure pass-through.
 * Inline because every trapped call asks. */
static inline int trace_enabled(void)
{
    int state = __atomic_load_n(&trace_state, __ATOMIC_ACQUIRE);
    return state != TRACE_UNKNOWN ? state == TRACE_ON : trace_start();
}

/* `name(args) = result [ERRNO] <entry>`; err is 0 for a call that did not fail. */
void trace_write(const char *name, const char *entry, const char *args, const char *result, int err);

/* For calls that do not return when they succeed (exec): `name(args) ... <entry>`. */
void trace_write_start(const char *name, const char *entry, const char *args);

#endif
