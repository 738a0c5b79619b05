/* The operator's policy file: YAML -> struct config, with every error
 * reported as FILE:LINE:COLUMN and the whole file refused on any error. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "globlist.h"

#define CONFIG_DEFAULT_PATH       "/etc/ivh-reclaimd/policy.yaml"
#define CONFIG_DEFAULT_URL        "https://gw-sg.tvs.qq.com"
#define CONFIG_DEFAULT_STATE_FILE "/var/lib/ivh-reclaimd/state.json"
/* A policy file larger than this is refused. */
#define CONFIG_MAX_SIZE (1024 * 1024)
/* The daemon's copy of the policy it runs with, in $STATE_DIRECTORY, for
 * the unit's reload check (preflight.h); no state or metrics file may take
 * this name. */
#define RUNNING_POLICY_NAME "running-policy.yaml"
/* The appkey of the signature example in Tencent's documentation. */
#define CONFIG_SAMPLE_APPKEY "e38267c0e86411ebb02aed82acb0ed99"

enum policy_kind {
        POLICY_FAILED,        /* SessionStatus 4 */
        POLICY_NOT_STARTED,   /* IsSessionStarted false, status 1 or 3 */
        POLICY_MAX_AGE,       /* status 1 or 3 */
        POLICY_OVER_CAPACITY, /* live sessions above capacity - keep_free */
};

struct policy {
        char *name;
        enum policy_kind kind;
        uint64_t after_ms;         /* over_capacity: the minimum age of a victim (default 0) */
        struct glob_list user_ids; /* empty: every user (user_ids omitted; an empty list is refused) */
        /* Empty: any project or asset. Given: the session's project (asset)
         * must be known and match (struct session's project_id, asset_vk). */
        struct glob_list project_ids, asset_vks;
        unsigned capacity;  /* over_capacity only: purchased concurrency */
        unsigned keep_free; /* over_capacity only: slots to keep free */
};

struct gateway_config {
        char *url; /* no trailing slash */
        char *appkey;
        unsigned appkey_line, appkey_column; /* where the file sets it, for messages; 0: unknown */
        char *accesstoken_file;              /* NULL: credentials directory, then environment */
        char *ca_file;                       /* NULL: the system trust store */
        uint64_t timeout_ms;
        unsigned max_parallel;
        struct glob_list project_ids; /* listsessionofprojectid per id */
        struct glob_list asset_vks;   /* listsessionofassetvk per key; both empty: listsessionofuin */
        double max_rate;              /* calls per second to this gateway; 0: unlimited */
};

/* ha: active/standby instances elected through etcd (ha.h). */
struct ha_config {
        bool enabled;               /* the file has an `ha:` section */
        struct glob_list endpoints; /* etcd client URLs, tried in turn */
        char *ca_file, *cert_file, *key_file;
        char *name;        /* this instance; default: the host name */
        uint64_t lease_ms; /* the leader's etcd lease */
        char *key_prefix;  /* the election key is key_prefix + "leader" */
};

/* notify: webhook events (notify.h). Enabled when url is set. */
struct notify_config {
        char *url;
        char *secret_file;       /* NULL: the credential notify-secret, then $IVH_NOTIFY_SECRET */
        char *ca_file;           /* NULL: the system trust store */
        char *format;            /* "json" or "slack" */
        struct glob_list events; /* event names; empty: all */
        uint64_t due_soon_ms;    /* 0: no due_soon events */
        uint64_t timeout_ms;
        unsigned max_queue;
        uint64_t max_age_ms;
};

struct fuse_config {
        double max_share;      /* of the live sessions, 0 < x <= 1 */
        unsigned min_sessions; /* the fuse trips only above this many */
};

struct config {
        char *path;
        char *text; /* the top level: the file's bytes as loaded */
        size_t text_len;
        char *account; /* the account's name; NULL for the single-gateway form's one account */
        struct gateway_config gateway;
        uint64_t poll_interval_ms;
        char *state_file;
        char *metrics_file; /* NULL: no metrics file */
        bool dry_run;
        bool recheck_before_close; /* statsession before not_started/max_age closes */
        unsigned max_closes_per_cycle;
        struct fuse_config fuse;
        struct glob_list protect_user_ids;
        struct glob_list protect_session_ids;
        /* A session whose project (asset) is unknown is protected too while
         * this list is not empty: nobody can prove it is outside. */
        struct glob_list protect_project_ids;
        struct glob_list protect_asset_vks;
        struct policy *policies;
        size_t n_policies;
        struct notify_config notify;
        struct ha_config ha; /* top level only; accounts share the process's role */
        /* Always at least one: one complete configuration per account (its
         * own gateway, token source, policies, protect lists and state file;
         * the rest inherited from the top level). The single-gateway form is
         * loaded as one account named "default" (its `account` is NULL);
         * with `accounts:`, one per entry. The top level has no policies,
         * appkey or token file of its own: code past config_load() reads
         * them from an account. An account the file does not name (the
         * single form's) has a NULL `account`, which only picks its
         * credential's name and the wording of messages.
         * Each entry is owned here until taken. */
        struct config **accounts;
        size_t n_accounts;
};

/* Loads and validates path. On success returns 0 and *ret_config. On a
 * configuration error returns -EINVAL, and err holds one line
 * "FILE:LINE:COLUMN: message" per problem. Other negative errnos: the file
 * could not be read (also described in err) or memory ran out. */
int config_load(const char *path, struct config **ret_config, struct error *err);

void config_free(struct config *c);

/* The first key that a reload cannot change (state_file, an account's name)
 * and that differs between a and b, or NULL. */
const char *config_restart_needed(const struct config *a, const struct config *b);

const char *policy_kind_to_string(enum policy_kind k);

/* Whether s is a word --plan prints in place of a policy name (its
 * DECISION column: keep, protected, fused, backing_off, deferred): such a
 * word cannot name a policy. */
bool config_is_plan_word(const char *s);

/* The account's name for logs and metrics: "default" for the single form. */
const char *config_account_name(const struct config *c);

/* Whether host names the local machine: localhost, 127.0.0.0/8 or ::1. */
bool config_host_is_loopback(const char *host);
