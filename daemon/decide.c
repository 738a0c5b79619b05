#include "decide.h"

#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "policy.h"
#include "util.h"

const char *decide_outcome_to_string(enum decide_outcome o) {
        switch (o) {
        case DECIDE_KEEP:
                return "keep";
        case DECIDE_PROTECTED:
                return "protected";
        case DECIDE_CLOSE:
                return "close";
        case DECIDE_FUSED:
                return "fused";
        case DECIDE_BACKING_OFF:
                return "backing_off";
        case DECIDE_DEFERRED:
                return "deferred";
        case DECIDE_SENT:
                return "sent";
        case DECIDE_OUTCOMES:
                break;
        }
        return "?";
}

static bool has_capacity_policy(const struct config *cfg) {
        for (size_t i = 0; i < cfg->n_policies; i++)
                if (cfg->policies[i].kind == POLICY_OVER_CAPACITY)
                        return true;
        return false;
}

/* Step 2: the over_capacity policies pick among what the timer policies
 * left. */
static int take_capacity_victims(const struct decide_input *in, struct decide_result *r) {
        const struct session_list *l = in->list;
        struct capacity_victim *victims = malloc(l->n * sizeof *victims);
        bool *closing = calloc(l->n, sizeof *closing);
        size_t n_victims = 0;
        int ret = -ENOMEM;

        if (!victims || !closing)
                goto out;
        for (size_t k = 0; k < r->n_closes; k++)
                closing[r->closes[k]] = true;
        for (size_t i = 0; i < l->n; i++)
                closing[i] |= r->rows[i].outcome == DECIDE_SENT;
        ret = policy_capacity_victims(in->config, l, in->ages, closing, victims, &n_victims);
        for (size_t v = 0; ret >= 0 && v < n_victims; v++) {
                size_t i = victims[v].index;

                r->rows[i] = (struct decide_row){
                        .outcome = DECIDE_CLOSE,
                        .policy = victims[v].policy,
                        .by_capacity = true,
                        .age_ms = in->ages[i],
                };
                r->closes[r->n_closes++] = i;
        }
out:
        free(victims);
        free(closing);
        return ret;
}

/* Step 3: the share fuse. A gateway that suddenly reports every session as
 * unstarted must not empty the account. */
static void apply_share_fuse(const struct decide_input *in, struct decide_result *r) {
        const struct session_list *l = in->list;
        size_t kept = 0;

        /* Entries never acted on still hold a slot: those listed as live
         * count as live. Junk without a readable live status does not, or
         * it would dilute the fuse. */
        for (size_t i = 0; i < l->n_malformed; i++)
                r->live += l->malformed[i].live;
        for (size_t i = 0; i < l->n; i++)
                r->live += policy_session_is_live(&l->items[i]);
        for (size_t k = 0; k < r->n_closes; k++)
                r->due_live += policy_session_is_live(&l->items[r->closes[k]]);
        /* Closes already sent this cycle were due live sessions when the
         * cycle decided: a re-decision judges the same share. */
        for (size_t i = 0; r->sent > 0 && i < l->n; i++)
                r->due_live += r->rows[i].outcome == DECIDE_SENT && policy_session_is_live(&l->items[i]);
        r->fuse_tripped = policy_share_fuse_trips(&in->config->fuse, r->live, r->due_live);
        if (!r->fuse_tripped)
                return;
        for (size_t k = 0; k < r->n_closes; k++) {
                size_t i = r->closes[k];

                if (policy_session_is_live(&l->items[i])) {
                        r->rows[i].outcome = DECIDE_FUSED;
                        r->fused++;
                } else
                        r->closes[kept++] = i;
        }
        r->n_closes = kept;
}

/* Step 4: sessions that failed recently wait for their backoff to pass. */
static void apply_backoff(const struct decide_input *in, struct decide_result *r) {
        size_t kept = 0;

        for (size_t k = 0; k < r->n_closes; k++) {
                size_t i = r->closes[k];
                uint64_t wait_ms = 0;

                if (in->retries &&
                    retry_blocked(in->retries, in->list->items[i].session_id, in->now_ms, &wait_ms)) {
                        r->rows[i].outcome = DECIDE_BACKING_OFF;
                        r->rows[i].wait_ms = wait_ms;
                        r->backing_off++;
                } else
                        r->closes[kept++] = i;
        }
        r->n_closes = kept;
}

struct by_age {
        uint64_t age_ms;
        size_t index;
};

static int compare_age_desc(const void *a, const void *b) {
        const struct by_age *x = a, *y = b;

        if (x->age_ms != y->age_ms)
                return x->age_ms < y->age_ms ? 1 : -1;
        /* Stable: a re-decision keeps the same closes among equal ages. */
        return x->index < y->index ? -1 : x->index > y->index;
}

/* Step 5: max_closes_per_cycle closes the oldest first; the rest wait for
 * later cycles. Closes already sent this cycle count against it. */
static int apply_max_closes(const struct decide_input *in, struct decide_result *r) {
        size_t max = in->config->max_closes_per_cycle;
        struct by_age *sorted;

        max = r->sent < max ? max - r->sent : 0;
        if (r->n_closes <= max)
                return 0;
        sorted = malloc(r->n_closes * sizeof *sorted);
        if (!sorted)
                return -ENOMEM;
        for (size_t k = 0; k < r->n_closes; k++)
                sorted[k] = (struct by_age){ r->rows[r->closes[k]].age_ms, r->closes[k] };
        qsort(sorted, r->n_closes, sizeof *sorted, compare_age_desc);
        for (size_t k = 0; k < r->n_closes; k++) {
                r->closes[k] = sorted[k].index;
                if (k >= max) {
                        r->rows[sorted[k].index].outcome = DECIDE_DEFERRED;
                        r->deferred++;
                }
        }
        r->n_closes = max;
        free(sorted);
        return 0;
}

int decide(const struct decide_input *in, struct decide_result *ret) {
        const struct session_list *l;
        struct decide_result r = { 0 };
        size_t n;
        int e;

        assert(in && in->config && in->list && ret);
        assert(in->list->n == 0 || in->ages);
        l = in->list;
        n = l->n > 0 ? l->n : 1;
        *ret = (struct decide_result){ 0 };
        r.rows = calloc(n, sizeof *r.rows);
        r.closes = malloc(n * sizeof *r.closes);
        if (!r.rows || !r.closes) {
                decide_result_done(&r);
                return -ENOMEM;
        }

        r.dry_run = in->dry_run || in->config->dry_run;
        /* Step 1: the timer policies and the protect rules. */
        for (size_t i = 0; i < l->n; i++) {
                struct decision d;

                if (in->sent && in->sent[i]) {
                        r.rows[i] = (struct decide_row){ .outcome = DECIDE_SENT, .age_ms = in->ages[i] };
                        r.sent++;
                        continue;
                }
                policy_decide(in->config, &l->items[i], in->ages[i], &d);
                r.rows[i] = (struct decide_row){
                        .outcome = d.kind == DECISION_CLOSE       ? DECIDE_CLOSE
                                   : d.kind == DECISION_PROTECTED ? DECIDE_PROTECTED
                                                                  : DECIDE_KEEP,
                        .policy = d.policy,
                        .age_ms = d.age_ms,
                };
                if (d.kind == DECISION_PROTECTED && d.policy && d.age_ms >= d.policy->after_ms)
                        r.protected_due++;
                if (d.kind == DECISION_CLOSE)
                        r.closes[r.n_closes++] = i;
        }
        if (has_capacity_policy(in->config) && l->n > 0) {
                e = take_capacity_victims(in, &r);
                if (e < 0) {
                        decide_result_done(&r);
                        return e;
                }
        }
        r.due = r.n_closes;
        apply_share_fuse(in, &r);
        apply_backoff(in, &r);
        e = apply_max_closes(in, &r);
        if (e < 0) {
                decide_result_done(&r);
                return e;
        }
        *ret = r;
        return 0;
}

void decide_result_done(struct decide_result *r) {
        if (!r)
                return;
        free(r->rows);
        free(r->closes);
        *r = (struct decide_result){ 0 };
}
