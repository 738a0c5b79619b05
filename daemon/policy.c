#include "policy.h"

#include <assert.h>
#include <stdbool.h>
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>

static bool is_live(int status) {
        return status == SESSION_IN_PROGRESS || status == SESSION_PREPARING;
}

/* A selector that is given: the value must be known and match one glob.
 * A session whose list entry does not say its project is never selected
 * by project_ids (likewise asset_vks). */
static bool selector_matches(const struct glob_list *l, const char *value) {
        return l->n == 0 || (value && glob_list_match(l, value));
}

/* Whether every selector of the policy given matches the session. */
static bool policy_selects(const struct policy *p, const struct session *s) {
        return selector_matches(&p->user_ids, s->user_id) &&
               selector_matches(&p->project_ids, session_project(s)) &&
               selector_matches(&p->asset_vks, session_asset(s));
}

/* A protect list by project (asset) keeps the sessions it names, and,
 * fail safe, every session whose project (asset) the list does not say:
 * nobody can prove it is not in the protected project. */
static bool owner_protected(const struct glob_list *l, const char *value, bool known) {
        return l->n > 0 && (!known || (value && glob_list_match(l, value)));
}

static bool is_protected(const struct config *c, const struct session *s) {
        return glob_list_match(&c->protect_session_ids, s->session_id) ||
               glob_list_match(&c->protect_user_ids, s->user_id) ||
               owner_protected(&c->protect_project_ids, session_project(s), session_project_known(s)) ||
               owner_protected(&c->protect_asset_vks, session_asset(s), session_asset_known(s));
}

/* Whether the policy's kind and selectors describe the session, whatever its age. */
static bool policy_matches(const struct policy *p, const struct session *s) {
        if (!policy_selects(p, s))
                return false;
        switch (p->kind) {
        case POLICY_FAILED:
                return s->status == SESSION_STREAM_FAILED;
        case POLICY_NOT_STARTED:
                /* An absent IsSessionStarted is not taken to mean false. */
                return s->started == TRISTATE_FALSE && is_live(s->status);
        case POLICY_MAX_AGE:
                return is_live(s->status);
        case POLICY_OVER_CAPACITY:
                return false; /* not a timer: see policy_capacity_victims() */
        }
        return false;
}

/* Whether the policy could ever take the session, whatever its age: a timer
 * policy whose kind and selectors fit, or an over_capacity policy whose
 * selectors fit a live session or a failed stream. */
static bool could_take(const struct policy *p, const struct session *s) {
        if (p->kind != POLICY_OVER_CAPACITY)
                return policy_matches(p, s);
        return policy_selects(p, s) && (is_live(s->status) || s->status == SESSION_STREAM_FAILED);
}

unsigned policy_owner_rule_keeps(const struct config *c, const struct session *s) {
        unsigned rules = 0;
        bool selected = false;

        if (s->status == SESSION_CLOSED)
                return 0;
        if (c->protect_project_ids.n > 0 && !session_project_known(s))
                rules |= OWNER_RULE_PROJECT;
        if (c->protect_asset_vks.n > 0 && !session_asset_known(s))
                rules |= OWNER_RULE_ASSET;
        for (size_t i = 0; rules && !selected && i < c->n_policies; i++)
                selected = could_take(&c->policies[i], s);
        return selected ? rules : 0;
}

void policy_decide(const struct config *c, const struct session *s, uint64_t age_ms, struct decision *ret) {
        struct decision d = { .kind = DECISION_KEEP, .age_ms = age_ms };

        assert(c && s && ret);
        /* "First match wins": the first policy whose kind and selector fit owns
         * the session, and only its `after` decides when it is due. A later,
         * shorter policy cannot overrule an earlier exception. */
        if (s->status != SESSION_CLOSED)
                for (size_t i = 0; i < c->n_policies; i++)
                        if (policy_matches(&c->policies[i], s)) {
                                d.policy = &c->policies[i];
                                break;
                        }

        if (is_protected(c, s))
                d.kind = DECISION_PROTECTED;
        else if (d.policy && age_ms >= d.policy->after_ms)
                d.kind = DECISION_CLOSE;
        *ret = d;
}

bool policy_session_is_live(const struct session *s) {
        assert(s);
        return is_live(s->status);
}

bool policy_share_fuse_trips(const struct fuse_config *fuse, size_t live_total, size_t due_live) {
        assert(fuse);
        return due_live > fuse->min_sessions && (double) due_live > fuse->max_share * (double) live_total;
}

struct candidate {
        size_t index;
        int rank; /* 0 failed stream, 1 never started, 2 any other live session */
        uint64_t age_ms;
};

static int compare_candidates(const void *a, const void *b) {
        const struct candidate *x = a, *y = b;

        if (x->rank != y->rank)
                return x->rank < y->rank ? -1 : 1;
        if (x->age_ms != y->age_ms)
                return x->age_ms > y->age_ms ? -1 : 1; /* oldest first */
        return x->index < y->index ? -1 : x->index > y->index;
}

int policy_capacity_victims(const struct config *c, const struct session_list *l, const uint64_t *ages,
                            bool *closing, struct capacity_victim *ret, size_t *ret_n) {
        struct candidate *cand = NULL;
        size_t n_victims = 0;

        for (size_t p = 0; p < c->n_policies; p++) {
                const struct policy *pol = &c->policies[p];
                /* Entries never acted on (l->n_malformed) are not counted:
                 * what they are is unknown, and counting them could only
                 * make this policy take more sessions. */
                size_t live = 0, excess, n_cand = 0;

                if (pol->kind != POLICY_OVER_CAPACITY)
                        continue;
                for (size_t i = 0; i < l->n; i++)
                        live += is_live(l->items[i].status) && !closing[i];
                if (live <= pol->capacity - pol->keep_free)
                        continue;
                excess = live - (pol->capacity - pol->keep_free);

                if (!cand) {
                        cand = malloc(l->n * sizeof *cand);
                        if (!cand)
                                return -ENOMEM;
                }
                for (size_t i = 0; i < l->n; i++) {
                        const struct session *s = &l->items[i];

                        if (closing[i] || (!is_live(s->status) && s->status != SESSION_STREAM_FAILED) ||
                            ages[i] < pol->after_ms || is_protected(c, s) || !policy_selects(pol, s))
                                continue;
                        cand[n_cand++] = (struct candidate){
                                .index = i,
                                .rank = s->status == SESSION_STREAM_FAILED ? 0
                                        : s->started == TRISTATE_FALSE     ? 1
                                                                           : 2,
                                .age_ms = ages[i],
                        };
                }
                qsort(cand, n_cand, sizeof *cand, compare_candidates);
                /* Every failed stream goes (it holds a slot and serves no one);
                 * live sessions go only until the excess is gone. */
                for (size_t k = 0; k < n_cand; k++) {
                        if (cand[k].rank > 0) {
                                if (excess == 0)
                                        break;
                                excess--;
                        }
                        closing[cand[k].index] = true;
                        ret[n_victims++] = (struct capacity_victim){ cand[k].index, pol };
                }
        }
        free(cand);
        *ret_n = n_victims;
        return 0;
}
