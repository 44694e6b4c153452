/* The trace agent's log: one line per trapped call, appended to $BYPASS_TRACE. */
#ifndef TRACE_LOG_H
#define TRACE_LOG_H

/* Non-zero when BYPASS_TRACE names a log; without it the agent is a pure pass-through. */
int trace_enabled(void);

/* `name(args) = result [ERRNO] <entry>`; err is 0 for a call that did not fail. */
void trace_write(const char *name, const char *entry, const char *args, const char *result, int err);

/* For calls that do not return when they succeed (exec): `name(args) ... <entry>`. */
void trace_write_start(const char *name, const char *entry, const char *args);

#endif
