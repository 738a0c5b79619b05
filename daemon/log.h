/* Logging: structured journald entries, or one logfmt line per entry on
 * stderr. Nothing secret is ever passed in here.
 *
 * Long values are cut, never dropped: every field of an entry is always
 * sent. A cut value ends in "…" (U+2026). In the journal, each field value
 * is cut at LOG_FIELD_VALUE_MAX bytes. On the console, a line is at most
 * 8 KiB with its newline; when the values do not fit, msg is shortened
 * first, then the longest field values, so that every key still appears. */
#pragma once

#include <stdarg.h>
#include <stddef.h>
#include <syslog.h>

/* Every reclaim decision (whatever its outcome) carries this MESSAGE_ID. */
#define MESSAGE_ID_RECLAIM "99f9654f605e424185666fe382c90fb6"
/* The summary that ends every cycle. */
#define MESSAGE_ID_CYCLE "e28e9acd311d441a9e1e0a1a36189eb0"
/* A cycle whose session list could not be fetched or parsed. */
#define MESSAGE_ID_CYCLE_FAILED "f8e2aad76f6749b7a1433345838414f1"
/* max_closes_per_cycle held back sessions that were due. */
#define MESSAGE_ID_FUSE "7790a43c50c9428f9d94329cc7e5e131"
/* The share fuse (fuse.max_share, fuse.min_sessions) held back every due live session. */
#define MESSAGE_ID_SHARE_FUSE "fdd69b80db994344b2f08dde98cb05ea"
/* The gateway refused our credentials (Code 100005, HTTP 401 or 403): an
 * account problem (appkey, token, clock), not a per-session failure. */
#define MESSAGE_ID_AUTH "d1f0b64d5da24960a3fff63a226ec244"
/* The instance's role in its etcd election changed (ha:). */
#define MESSAGE_ID_HA_ROLE "744e34992be84570b0e60a79de095343"

enum log_target {
        LOG_TARGET_AUTO,
        LOG_TARGET_JOURNAL,
        LOG_TARGET_CONSOLE,
};

/* The longest field value (in bytes) sent to the journal; longer ones are cut. */
#define LOG_FIELD_VALUE_MAX 8192

struct log_field {
        const char *name; /* journal field name, e.g. "IVH_SESSION_ID" */
        const char *value;
};

/* Returns 0 or -EINVAL for an unknown name. */
int log_target_from_string(const char *s, enum log_target *ret);

/* Resolves "auto": the journal when stderr is connected to it
 * ($JOURNAL_STREAM), the console otherwise. */
void log_open(enum log_target target);
enum log_target log_get_target(void);
void log_set_max_level(int priority);

void log_struct(int priority, const char *message_id, const struct log_field *fields, size_t n_fields,
                const char *fmt, ...) __attribute__((format(printf, 5, 6)));

void log_structv(int priority, const char *message_id, const struct log_field *fields, size_t n_fields,
                 const char *fmt, va_list ap) __attribute__((format(printf, 5, 0)));

#define log_full(prio, ...) log_struct((prio), NULL, NULL, 0, __VA_ARGS__)
#define log_debug(...)      log_full(LOG_DEBUG, __VA_ARGS__)
#define log_info(...)       log_full(LOG_INFO, __VA_ARGS__)
#define log_notice(...)     log_full(LOG_NOTICE, __VA_ARGS__)
#define log_warning(...)    log_full(LOG_WARNING, __VA_ARGS__)
#define log_error(...)      log_full(LOG_ERR, __VA_ARGS__)

/* Appends `key=value` to buf in logfmt, quoting and escaping as needed.
 * Exposed for the tests. */
void logfmt_append(char *buf, size_t size, size_t *off, const char *key, const char *value);

/* Renders one console line (without its newline) into buf: ts, level, msg,
 * message_id (if not NULL), then the fields. Whatever the values, the line
 * fits in size (including the NUL) and carries every key, with long values
 * cut as described above; only keys that cannot fit even with every value at
 * its shortest are lost. Returns the length written. Exposed for the tests. */
size_t logfmt_line(char *buf, size_t size, const char *ts, int priority, const char *message_id,
                   const struct log_field *fields, size_t n_fields, const char *message);
