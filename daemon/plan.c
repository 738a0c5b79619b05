#include "plan.h"

#include <stdlib.h>
#include <string.h>

#include "duration.h"
#include "policy.h"
#include "util.h"

#define COL_MAX 64

struct row {
        char id[COL_MAX], user[COL_MAX], status[24], started[8], age[32], decision[COL_MAX], note[128];
};

/* victim: the over_capacity policy that picked this session, or NULL. */
static enum decision_kind fill_row(struct row *row, const struct config *c, const struct session *s,
                                   const struct state *st, int64_t now_mono_ms,
                                   const struct policy *victim) {
        bool known = state_first_seen(st, s->session_id, NULL);
        uint64_t age = state_age_ms(st, s->session_id, now_mono_ms);
        struct decision d;
        char buf[32];

        policy_decide(c, s, age, &d);
        if (victim)
                d = (struct decision){ .kind = DECISION_CLOSE, .policy = victim, .age_ms = age };
        sanitize_printable(s->session_id, row->id, sizeof row->id);
        sanitize_printable(s->user_id, row->user, sizeof row->user);
        if (row->user[0] == '\0')
                strcpy(row->user, "-");
        snprintf(row->status, sizeof row->status, "%d %s", s->status, session_status_to_string(s->status));
        strcpy(row->started, s->started == TRISTATE_TRUE    ? "yes"
                             : s->started == TRISTATE_FALSE ? "no"
                                                            : "?");
        if (known)
                duration_format(age - age % 1000, row->age, sizeof row->age);
        else
                strcpy(row->age, "new");
        sanitize_printable(decision_to_string(&d), row->decision, sizeof row->decision);

        row->note[0] = '\0';
        if (s->status == SESSION_CLOSED)
                snprintf(row->note, sizeof row->note, "already closed");
        else if (!d.policy)
                snprintf(row->note, sizeof row->note, "no policy matches");
        else if (victim)
                snprintf(row->note, sizeof row->note, "over capacity: live sessions above %u - %u",
                         victim->capacity, victim->keep_free);
        else if (d.kind == DECISION_CLOSE)
                snprintf(row->note, sizeof row->note, "%s after %s", policy_kind_to_string(d.policy->kind),
                         duration_format(d.policy->after_ms, buf, sizeof buf));
        else if (d.kind == DECISION_PROTECTED)
                snprintf(row->note, sizeof row->note, "matches %s, but a protect rule wins", d.policy->name);
        else
                snprintf(row->note, sizeof row->note, "%s due in %s", d.policy->name,
                         duration_format(d.policy->after_ms - age, buf, sizeof buf));
        return d.kind;
}

/* For each session, the over_capacity policy that would pick it (or NULL),
 * after the timer policies, exactly as a cycle decides. NULL on ENOMEM. */
static const struct policy **capacity_victims(const struct config *c, const struct session_list *l,
                                              const struct state *st, int64_t now_mono_ms) {
        const struct policy **by_index = calloc(l->n ? l->n : 1, sizeof *by_index);
        uint64_t *ages = malloc((l->n ? l->n : 1) * sizeof *ages);
        bool *closing = calloc(l->n ? l->n : 1, sizeof *closing);
        struct capacity_victim *v = malloc((l->n ? l->n : 1) * sizeof *v);
        size_t n = 0;

        if (!by_index || !ages || !closing || !v)
                goto fail;
        for (size_t i = 0; i < l->n; i++) {
                struct decision d;

                ages[i] = state_age_ms(st, l->items[i].session_id, now_mono_ms);
                policy_decide(c, &l->items[i], ages[i], &d);
                closing[i] = d.kind == DECISION_CLOSE;
        }
        if (policy_capacity_victims(c, l, ages, closing, v, &n) < 0)
                goto fail;
        for (size_t k = 0; k < n; k++)
                by_index[v[k].index] = v[k].policy;
        free(ages);
        free(closing);
        free(v);
        return by_index;
fail:
        free(by_index);
        free(ages);
        free(closing);
        free(v);
        return NULL;
}

void plan_print(FILE *out, const struct config *c, const struct session_list *l, const struct state *st,
                int64_t now_mono_ms) {
        static const char *const head[] = { "SESSION_ID", "USER_ID",  "STATUS", "STARTED",
                                            "AGE",        "DECISION", "NOTE" };
        size_t w[ELEMENTSOF(head)], n_close = 0, n_protected = 0, n_live = 0, n_due_live = 0;
        const struct policy **victims = capacity_victims(c, l, st, now_mono_ms);
        struct row row;

        if (!victims) {
                fprintf(out, "out of memory while planning\n");
                return;
        }

        for (size_t i = 0; i < ELEMENTSOF(head); i++)
                w[i] = strlen(head[i]);
        /* Two passes: widths first, then the rows. */
        for (size_t pass = 0; pass < 2; pass++) {
                if (pass == 1)
                        fprintf(out, "%-*s  %-*s  %-*s  %-*s  %-*s  %-*s  %s\n", (int) w[0], head[0],
                                (int) w[1], head[1], (int) w[2], head[2], (int) w[3], head[3], (int) w[4],
                                head[4], (int) w[5], head[5], head[6]);
                for (size_t i = 0; i < l->n; i++) {
                        const char *cols[ELEMENTSOF(head)];
                        enum decision_kind kind =
                                fill_row(&row, c, &l->items[i], st, now_mono_ms, victims[i]);
                        cols[0] = row.id, cols[1] = row.user, cols[2] = row.status, cols[3] = row.started;
                        cols[4] = row.age, cols[5] = row.decision, cols[6] = row.note;
                        if (pass == 0) {
                                for (size_t k = 0; k < ELEMENTSOF(head); k++)
                                        if (strlen(cols[k]) > w[k])
                                                w[k] = strlen(cols[k]);
                                continue;
                        }
                        n_close += kind == DECISION_CLOSE;
                        n_protected += kind == DECISION_PROTECTED;
                        n_live += policy_session_is_live(&l->items[i]);
                        n_due_live += kind == DECISION_CLOSE && policy_session_is_live(&l->items[i]);
                        fprintf(out, "%-*s  %-*s  %-*s  %-*s  %-*s  %-*s  %s\n", (int) w[0], cols[0],
                                (int) w[1], cols[1], (int) w[2], cols[2], (int) w[3], cols[3], (int) w[4],
                                cols[4], (int) w[5], cols[5], cols[6]);
                }
        }
        fprintf(out, "\n%zu sessions: %zu to reclaim, %zu protected, %zu kept", l->n, n_close, n_protected,
                l->n - n_close - n_protected);
        if (policy_share_fuse_trips(&c->fuse, n_live, n_due_live)) {
                fprintf(out,
                        "; the share fuse would hold back all %zu live ones (more than %g%% of %zu live)",
                        n_due_live, c->fuse.max_share * 100, n_live);
                n_close -= n_due_live;
        }
        if (n_close > c->max_closes_per_cycle)
                fprintf(out, "; max_closes_per_cycle=%u would close the %u oldest this cycle",
                        c->max_closes_per_cycle, c->max_closes_per_cycle);
        if (c->dry_run)
                fprintf(out, "; dry_run is on: nothing would be closed");
        fputc('\n', out);
        free(victims);
}
