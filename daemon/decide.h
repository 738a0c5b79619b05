/* The decide step of a cycle, shared by the daemon and --plan: (the listed
 * sessions, their ages, the config, the retry table, now) -> one decision
 * per session and the closes of this cycle, in order. Pure: no I/O, no
 * clock, no logging; it allocates its result only.
 *
 * The order, which decides what the fuses see:
 *  1. policy_decide() for each session: protected, keep, or due under the
 *     first policy that selects it (timer policies);
 *  2. the over_capacity policies pick their victims among the rest;
 *  3. the share fuse: when the due live sessions are too large a share of
 *     the live ones, none of them is closed (due sessions not live are);
 *  4. sessions that failed recently wait for their backoff;
 *  5. max_closes_per_cycle: the oldest are closed, the rest deferred.
 *
 * A running cycle asks again whenever something it decided on may have
 * changed (a reload, a re-check that saw a new status): with `sent` set, the
 * sessions whose close already went out count as they should (not closed
 * twice, not live for over_capacity, spent against max_closes_per_cycle,
 * due live sessions for the share fuse), so that the answer for the closes
 * not yet sent is what this function says of the file in force. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "session.h"
#include "retry.h"

enum decide_outcome {
        DECIDE_KEEP,        /* no policy selects it (yet) */
        DECIDE_PROTECTED,   /* a protect rule wins */
        DECIDE_CLOSE,       /* to be closed this cycle */
        DECIDE_FUSED,       /* due, held back by the share fuse */
        DECIDE_BACKING_OFF, /* due, waits after an earlier failure */
        DECIDE_DEFERRED,    /* due, beyond max_closes_per_cycle */
        DECIDE_SENT,        /* a re-decision: its close already went out this cycle */
        DECIDE_OUTCOMES     /* the number of outcomes; keep last */
};

struct decide_row {
        enum decide_outcome outcome;
        /* The policy that owns the session (policy_decide()), or the
         * over_capacity policy that took it; NULL when none. */
        const struct policy *policy;
        bool by_capacity; /* taken by an over_capacity policy */
        uint64_t age_ms;
        uint64_t wait_ms; /* DECIDE_BACKING_OFF: how much longer */
};

struct decide_input {
        const struct config *config;
        const struct session_list *list;
        const uint64_t *ages;              /* ages[i]: age of list->items[i] */
        const struct retry_table *retries; /* may be NULL: nobody backs off */
        int64_t now_ms;                    /* the retry table's clock */
        const bool *sent; /* sent[i]: a close of list item i went out this cycle; NULL: none did */
        bool dry_run;     /* --dry-run: due sessions are only logged */
};

struct decide_result {
        struct decide_row *rows; /* one per list item, in list order */
        size_t *closes;          /* indices into rows: the closes of this cycle, in order */
        size_t n_closes;
        size_t due;            /* selected by a policy (steps 1 and 2) */
        size_t protected_due;  /* would be due but for a protect rule */
        size_t live, due_live; /* for the share fuse (malformed live entries count as live) */
        bool fuse_tripped;
        size_t fused, backing_off, deferred;
        size_t sent;  /* rows DECIDE_SENT */
        bool dry_run; /* the file's dry_run or --dry-run: the closes are only logged */
};

/* Returns 0, or -ENOMEM (ret is then empty). Free with decide_result_done(). */
int decide(const struct decide_input *in, struct decide_result *ret);

void decide_result_done(struct decide_result *r);

const char *decide_outcome_to_string(enum decide_outcome o);
