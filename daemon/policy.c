#include "policy.h"

#include <fnmatch.h>
#include <stdbool.h>
#include <stddef.h>

static bool glob_match_any(const struct glob_list *l, const char *s) {
        for (size_t i = 0; i < l->n; i++)
                if (fnmatch(l->items[i], s, 0) == 0)
                        return true;
        return false;
}

static bool is_live(int status) {
        return status == SESSION_IN_PROGRESS || status == SESSION_PREPARING;
}

/* Whether the policy's kind and selector describe the session, whatever its age. */
static bool policy_matches(const struct policy *p, const struct session *s) {
        if (p->user_ids.n > 0 && !glob_match_any(&p->user_ids, s->user_id))
                return false;
        switch (p->kind) {
        case POLICY_FAILED:
                return s->status == SESSION_STREAM_FAILED;
        case POLICY_NOT_STARTED:
                /* An absent IsSessionStarted is not taken to mean false. */
                return s->started == TRISTATE_FALSE && is_live(s->status);
        case POLICY_MAX_AGE:
                return is_live(s->status);
        }
        return false;
}

void policy_decide(const struct config *c, const struct session *s, uint64_t age_ms, struct decision *ret) {
        struct decision d = { .kind = DECISION_KEEP, .age_ms = age_ms };

        /* "First match wins": the first policy whose kind and selector fit owns
         * the session, and only its `after` decides when it is due. A later,
         * shorter policy cannot overrule an earlier exception. */
        if (s->status != SESSION_CLOSED)
                for (size_t i = 0; i < c->n_policies; i++)
                        if (policy_matches(&c->policies[i], s)) {
                                d.policy = &c->policies[i];
                                break;
                        }

        if (glob_match_any(&c->protect_session_ids, s->session_id) ||
            glob_match_any(&c->protect_user_ids, s->user_id))
                d.kind = DECISION_PROTECTED;
        else if (d.policy && age_ms >= d.policy->after_ms)
                d.kind = DECISION_CLOSE;
        *ret = d;
}

bool policy_session_is_live(const struct session *s) {
        return is_live(s->status);
}

bool policy_share_fuse_trips(const struct fuse_config *fuse, size_t live_total, size_t due_live) {
        return due_live > fuse->min_sessions && (double) due_live > fuse->max_share * (double) live_total;
}

const char *decision_to_string(const struct decision *d) {
        switch (d->kind) {
        case DECISION_CLOSE:
                return d->policy->name;
        case DECISION_PROTECTED:
                return "protected";
        default:
                return "keep";
        }
}
