/* The reclaim decision: (config, session, first sight, now) -> decision.
 * Pure: no I/O, no clock, no allocation. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "session.h"

enum decision_kind {
        DECISION_KEEP,
        DECISION_PROTECTED, /* a protect rule matches; no policy may touch it */
        DECISION_CLOSE,
};

struct decision {
        enum decision_kind kind;
        /* The first policy, in file order, whose kind and selector match the
         * session: the one that owns it. NULL when none does. For
         * DECISION_KEEP with an owner, the session becomes due at
         * owner->after_ms. */
        const struct policy *policy;
        uint64_t age_ms;
};

/* age_ms is the time since the daemon first saw the session. */
void policy_decide(const struct config *c, const struct session *s, uint64_t age_ms, struct decision *ret);

/* The fail-safe rule, for the cycle's warning: a session that is not
 * closed, that some policy could take (a timer policy whose kind and
 * selectors fit, an over_capacity policy whose selectors fit a live
 * session or a failed stream; whatever its age), and that protect.project_ids (protect.asset_vks) keeps
 * because the list does not say its project (asset). Returns the rules
 * that keep it, OWNER_RULE_PROJECT | OWNER_RULE_ASSET, or 0. */
enum { OWNER_RULE_PROJECT = 1, OWNER_RULE_ASSET = 2 };
unsigned policy_owner_rule_keeps(const struct config *c, const struct session *s);

/* Whether a session counts as live for the share fuse: status 1 or 3. */
bool policy_session_is_live(const struct session *s);

/* The share fuse: true when closing due_live of live_total live sessions is
 * more than fuse->max_share of them and more than fuse->min_sessions. */
bool policy_share_fuse_trips(const struct fuse_config *fuse, size_t live_total, size_t due_live);

struct capacity_victim {
        size_t index; /* into the session list */
        const struct policy *policy;
};

/* The over_capacity policies, in file order. For each one whose account has
 * more live sessions (status 1 or 3, not already closing) than
 * capacity - keep_free, picks sessions matching its selector that are not
 * protected, not closing, and at least `after` old: every failed stream
 * (status 4) first, then never-started live sessions, then the oldest live
 * ones, until the live count is back to capacity - keep_free.
 * ages[i] is the age of list item i; closing[i] says it is already to be
 * closed this cycle, and is set for every victim. ret has room for l->n.
 * Returns 0 or -ENOMEM. */
int policy_capacity_victims(const struct config *c, const struct session_list *l, const uint64_t *ages,
                            bool *closing, struct capacity_victim *ret, size_t *ret_n);
