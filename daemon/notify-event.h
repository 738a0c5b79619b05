/* The webhook events of `notify:`: their types, one event rendered as JSON,
 * a batch rendered as the body of one request (json or slack), and the
 * request's signature. Pure: no I/O, no clock (the caller passes times). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum notify_type {
        NOTIFY_RECLAIMED,          /* a close succeeded, or found the session already gone */
        NOTIFY_WOULD_RECLAIM,      /* the same decision under dry_run */
        NOTIFY_DUE_SOON,           /* a timer policy will close the session at due_at */
        NOTIFY_CLOSE_FAILED,       /* a close given up for this cycle */
        NOTIFY_RECLAIMING_STOPPED, /* STATUS= names a reason the account cannot reclaim */
        NOTIFY_RECLAIMING_RESUMED, /* ... and that reason has cleared */
        NOTIFY_TYPES,              /* the number of types; keep last */
};

/* At most this many events go in one request. */
#define NOTIFY_BATCH_MAX 100
/* An event id: a random UUID, 36 characters. */
#define NOTIFY_ID_LEN 36

const char *notify_type_to_string(enum notify_type t);
/* The type named s, or -1. */
int notify_type_from_string(const char *s);
/* Every type's name, for messages and suggestions. */
extern const char *const notify_type_names[NOTIFY_TYPES];

/* What a session event says about its session; NULL strings are left out. */
struct notify_session {
        const char *session_id, *user_id, *policy, *policy_kind;
        const char *outcome; /* as IVH_OUTCOME; NULL for due_soon */
        const char *project_id, *asset_vk;
        uint64_t age_sec;
        int session_status;
        bool dry_run;
        int64_t due_at_wall_ms; /* due_soon: when the policy will close it */
};

/* A new random event id (NOTIFY_ID_LEN characters and a NUL). */
int notify_new_id(char ret[NOTIFY_ID_LEN + 1]);

/* An id derived from the account and key (SHA-256, in a UUID's shape): the
 * same for the same event after a restart. */
int notify_stable_id(const char *account, const char *key, char ret[NOTIFY_ID_LEN + 1]);

/* One event as compact JSON: id, type, time (RFC 3339, UTC), account, and
 * either the session's fields (s) or a reason (reclaiming_*). The caller
 * frees *ret. 0 or -ENOMEM. */
int notify_event_render(enum notify_type t, const char *id, int64_t wall_ms, const char *account,
                        const struct notify_session *s, const char *reason, char **ret);

/* The body of one request for events[0..n), each as rendered above:
 * {"events": [...]} for format json, {"text": "..."} for slack (one line
 * per event, with Slack's control characters escaped; only as many events
 * as fit in NOTIFY_SLACK_TEXT_MAX characters, at least one: *ret_used says
 * how many). The caller frees *ret. 0, -EINVAL for an event that is not
 * valid JSON, or -ENOMEM. */
int notify_body_json(char *const *events, size_t n, char **ret);
#define NOTIFY_SLACK_TEXT_MAX 35000 /* Slack cuts a message at 40,000 characters */
int notify_body_slack(char *const *events, size_t n, char **ret, size_t *ret_used);

/* "sha256=" and the lowercase hex HMAC-SHA256 of timestamp + "." + body
 * keyed with secret: the X-Ivh-Reclaimd-Signature header's value. */
#define NOTIFY_SIGNATURE_LEN (7 + 64)
int notify_sign(const char *secret, const char *timestamp, const char *body,
                char ret[NOTIFY_SIGNATURE_LEN + 1]);

/* RFC 3339 in UTC with milliseconds: 2026-12-05T13:00:40.123Z. */
void notify_format_time(int64_t wall_ms, char buf[32]);
