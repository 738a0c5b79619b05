/* One poll cycle: list -> decide -> (recheck) -> close -> log. The reclaimer
 * starts one at a time and is told when it has ended. */
#pragma once

#include <ev.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "config.h"
#include "credentials.h"
#include "gateway.h"
#include "http.h"
#include "metrics.h"
#include "retry.h"
#include "state.h"

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
        struct metrics *metrics; /* may be NULL */
        bool dry_run;
        FILE *plan_out; /* non-NULL for --plan: print the plan, close nothing, record nothing */
};

struct cycle_result {
        bool list_failed;
        size_t listed, due, closed, already_closed, failed, skipped, dry_run;
        size_t deferred;         /* due, left for later cycles (max_closes_per_cycle, Retry-After, stop) */
        size_t backing_off;      /* due, but waiting after an earlier failure */
        size_t fused;            /* due live sessions held back by the share fuse */
        size_t protected_due;    /* would be due but for a protect rule */
        uint64_t retry_after_ms; /* the list call's Retry-After, 0 if none */
        int64_t started_ms, duration_ms;
};

struct cycle;

/* Called once when the cycle has ended, as the cycle's last action; the
 * callee frees the cycle. */
typedef void (*cycle_done_fn)(struct cycle *c, const struct cycle_result *res, void *userdata);

/* Sends the list call. Returns 0, or a negative errno (already logged as a
 * failed cycle) when not even that could be started. */
int cycle_start(const struct cycle_env *env, cycle_done_fn done, void *userdata, struct cycle **ret);

/* Starts no further request; the cycle ends once those in flight have.
 * May end it (and call done) before returning. */
void cycle_stop(struct cycle *c);

int64_t cycle_started_ms(const struct cycle *c);

/* Frees a cycle that has ended, or whose requests were cancelled. */
void cycle_free(struct cycle *c);
