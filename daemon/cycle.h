/* One poll cycle: list -> decide -> (recheck) -> close -> log. The reclaimer
 * starts one at a time and is told when it has ended. */
#pragma once

#include <ev.h>
#include <stdbool.h>
#include <stdint.h>

#include "config.h"
#include "credentials.h"
#include "decide.h"
#include "gateway.h"
#include "ha.h"
#include "http.h"
#include "idset.h"
#include "metrics.h"
#include "notify.h"
#include "retry.h"
#include "state.h"
#include "throttle.h"

/* Everything a cycle borrows from its owner for as long as it runs. */
struct cycle_env {
        struct ev_loop *loop;
        const char *account; /* for IVH_ACCOUNT in every log entry */
        const struct config *config;
        const struct credentials *creds;
        struct gateway_signer *signer; /* caches the signature of the current second */
        struct http *http;
        struct state *state;
        struct retry_table *retries;
        struct metrics *metrics;   /* may be NULL */
        struct throttle *throttle; /* the account's pacing (window, max_rate); may be NULL */
        bool dry_run;
        bool next_cycle; /* another cycle follows (the daemon, not --once): what the pace holds back
                            past poll_interval may wait for it */
        struct idset *malformed_logged; /* ids already warned about (owned by the runner) */
        bool plan;                      /* --plan: decide, then end; close nothing, record nothing */
        struct notifier *notify;        /* notify: told of every reclaim after the fact; may be NULL */
        const struct ha *ha; /* ha: a standby closes nothing; a leader only while its lease is fresh */
        /* The result of the account's previous cycle under the same file, or
         * NULL (the first cycle after a start or a reload): a summary that
         * says nothing new against it is logged at debug, not info. */
        const struct cycle_result *previous;
};

struct cycle_result {
        bool list_failed;
        size_t listed, due, closed, already_closed, failed, skipped, dry_run;
        size_t deferred;         /* due, left for later cycles (max_closes_per_cycle, Retry-After, stop) */
        size_t backing_off;      /* due, but waiting after an earlier failure */
        size_t fused;            /* due live sessions held back by the share fuse */
        size_t protected_due;    /* would be due but for a protect rule */
        size_t malformed;        /* listed entries never acted on (hostile ids, wrong shape, conflicts) */
        size_t throttled;        /* calls refused as too frequent (100012, HTTP 429/503) */
        bool auth_failed;        /* a call was refused as unauthorized (100005, HTTP 401/403) */
        uint64_t retry_after_ms; /* the list call's Retry-After, 0 if none */
        size_t list_bytes;       /* size of the list reply (or replies) */
        int64_t started_ms, duration_ms;
        size_t planned; /* --plan: sessions a cycle would reclaim now */
        size_t standby; /* due sessions left to the leader (ha: standby, or fenced) */
};

/* Where a cycle is. It only ever moves forward. */
enum cycle_phase {
        CYCLE_LISTING, /* list call(s) in flight */
        CYCLE_CLOSING, /* deciding is done; statsession/closesession calls go out */
        CYCLE_ENDED,   /* summary logged; nothing in flight; waiting to be freed */
};

struct cycle;

/* Told when the cycle enters a new phase. It runs inside the cycle's own
 * request callbacks, so it may only record the change and arm a watcher: it
 * must not free the cycle, nor end or start one. */
typedef void (*cycle_phase_fn)(struct cycle *c, enum cycle_phase phase, void *userdata);

/* Sends the list call(s). Returns 0, or a negative errno (already logged as a
 * failed cycle) when not even that could be started. */
int cycle_start(const struct cycle_env *env, cycle_phase_fn phase, void *userdata, struct cycle **ret);

/* Starts no further request of any kind; the cycle ends once those in flight
 * have. May enter CYCLE_ENDED (and call the phase function) before returning. */
void cycle_stop(struct cycle *c);

/* A reloaded configuration arrived while the cycle runs. From now on its
 * policies decide: decide() is asked at once with it, the cycle's list and
 * the closes already sent, and every close not yet sent that it does not
 * select is skipped (protected, no longer due, beyond a capacity, held by a
 * fuse, a dry run: whatever decide() says). cfg must outlive the cycle (the
 * runner keeps every file it hands a cycle until that cycle is freed); call
 * again with the newer one if another reload comes. */
void cycle_reconfigure(struct cycle *c, const struct config *cfg);

enum cycle_phase cycle_phase(const struct cycle *c);
const struct cycle_result *cycle_result(const struct cycle *c);

/* For the watchdog: when a request last finished (or the cycle started or
 * resumed), and whether dispatch is paused by a Retry-After timer. */
struct cycle_activity {
        int64_t last_progress_ms;
        bool paused;
        size_t in_flight;
};
void cycle_get_activity(struct cycle *c, struct cycle_activity *ret);

/* --plan, once the cycle has ended: the decision on the listed sessions
 * (*list and the file that decided, *config, set), or NULL when there is
 * none (the list failed). */
const struct decide_result *cycle_decision(const struct cycle *c, const struct session_list **list,
                                           const struct config **config);

/* Frees a cycle that has ended, or whose requests were cancelled. Never from
 * inside the cycle's own callbacks. */
void cycle_free(struct cycle *c);
