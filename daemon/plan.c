#include "plan.h"

#include <cJSON.h>
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "decide.h"
#include "duration.h"
#include "policy.h"
#include "util.h"

#define COL_MAX 64

struct row {
        char id[COL_MAX], user[COL_MAX], status[24], started[8], age[32], decision[COL_MAX], note[160];
};

/* Why a due session is not closed this cycle, after "POLICY selects it". */
static void held_note(char *note, size_t n, const struct config *c, const struct decide_row *d) {
        char buf[32];

        switch (d->outcome) {
        case DECIDE_FUSED:
                snprintf(note, n, "%s selects it; held back by the share fuse", d->policy->name);
                break;
        case DECIDE_BACKING_OFF:
                snprintf(note, n, "%s selects it; backing off %s after a failed close", d->policy->name,
                         duration_format(d->wait_ms, buf, sizeof buf));
                break;
        case DECIDE_DEFERRED:
                snprintf(note, n, "%s selects it; deferred, max_closes_per_cycle is %u", d->policy->name,
                         c->max_closes_per_cycle);
                break;
        default:
                note[0] = '\0';
        }
}

/* The DECISION column: a session to close shows the policy that closes it. */
static const char *decision_word(const struct decide_row *d) {
        return d->outcome == DECIDE_CLOSE ? d->policy->name : decide_outcome_to_string(d->outcome);
}

/* The fail-safe rule, when it is what keeps the session (see policy.h). */
static const char *unknown_owner_note(const struct config *c, const struct session *s) {
        if (c->protect_project_ids.n > 0 && !session_project_known(s))
                return "the list does not say its project and protect.project_ids is set: kept";
        if (c->protect_asset_vks.n > 0 && !session_asset_known(s))
                return "the list does not say its asset and protect.asset_vks is set: kept";
        return NULL;
}

static void fill_row(struct row *row, const struct config *c, const struct session *s, bool known,
                     const struct decide_row *d) {
        const char *unknown_owner = d->outcome == DECIDE_PROTECTED ? unknown_owner_note(c, s) : NULL;
        char buf[32];

        sanitize_printable(s->session_id, row->id, sizeof row->id);
        sanitize_printable(s->user_id, row->user, sizeof row->user);
        if (row->user[0] == '\0')
                strcpy(row->user, "-");
        snprintf(row->status, sizeof row->status, "%d %s", s->status, session_status_to_string(s->status));
        strcpy(row->started, s->started == TRISTATE_TRUE    ? "yes"
                             : s->started == TRISTATE_FALSE ? "no"
                                                            : "?");
        if (known)
                duration_format(d->age_ms - d->age_ms % 1000, row->age, sizeof row->age);
        else
                strcpy(row->age, "new");
        sanitize_printable(decision_word(d), row->decision, sizeof row->decision);

        row->note[0] = '\0';
        if (s->status == SESSION_CLOSED)
                snprintf(row->note, sizeof row->note, "already closed");
        else if (unknown_owner)
                snprintf(row->note, sizeof row->note, "%s", unknown_owner);
        else if (!d->policy && d->outcome == DECIDE_PROTECTED)
                snprintf(row->note, sizeof row->note, "a protect rule matches (no policy selects it)");
        else if (!d->policy)
                snprintf(row->note, sizeof row->note, "no policy matches");
        else if (d->outcome != DECIDE_CLOSE && d->outcome != DECIDE_KEEP && d->outcome != DECIDE_PROTECTED)
                held_note(row->note, sizeof row->note, c, d);
        else if (d->by_capacity)
                snprintf(row->note, sizeof row->note, "over capacity: live sessions above %u - %u",
                         d->policy->capacity, d->policy->keep_free);
        else if (d->outcome == DECIDE_CLOSE)
                snprintf(row->note, sizeof row->note, "%s after %s", policy_kind_to_string(d->policy->kind),
                         duration_format(d->policy->after_ms, buf, sizeof buf));
        else if (d->outcome == DECIDE_PROTECTED)
                snprintf(row->note, sizeof row->note, "matches %s, but a protect rule wins",
                         d->policy->name);
        else
                /* Whole seconds, rounded up: what a person reads. */
                snprintf(row->note, sizeof row->note, "%s due in %s", d->policy->name,
                         duration_format((d->policy->after_ms - d->age_ms + 999) / 1000 * 1000, buf,
                                         sizeof buf));
}

static void print_row(FILE *out, const size_t *w, const char *const *cols) {
        fprintf(out, "%-*s  %-*s  %-*s  %-*s  %-*s  %-*s  %s\n", (int) w[0], cols[0], (int) w[1], cols[1],
                (int) w[2], cols[2], (int) w[3], cols[3], (int) w[4], cols[4], (int) w[5], cols[5], cols[6]);
}

static void print_summary(FILE *out, const struct config *c, const struct session_list *l,
                          const struct decide_result *r) {
        size_t n_protected = 0, n_kept = 0;

        for (size_t i = 0; i < l->n; i++) {
                n_protected += r->rows[i].outcome == DECIDE_PROTECTED;
                n_kept += r->rows[i].outcome == DECIDE_KEEP;
        }
        fprintf(out, "\n%zu sessions: %zu to reclaim, %zu protected, %zu kept", l->n, r->n_closes,
                n_protected, n_kept);
        if (r->fuse_tripped)
                fprintf(out,
                        "; the share fuse holds back all %zu due live ones (more than %g%% of %zu live)",
                        r->fused, c->fuse.max_share * 100, r->live);
        if (r->backing_off > 0)
                fprintf(out, "; %zu back off after a failed close", r->backing_off);
        if (r->deferred > 0)
                fprintf(out, "; max_closes_per_cycle=%u defers %zu to later cycles", c->max_closes_per_cycle,
                        r->deferred);
        if (c->dry_run)
                fprintf(out, "; dry_run is on: nothing would be closed");
        fputc('\n', out);
}

static void print_table(FILE *out, const struct config *c, const struct session_list *l,
                        const struct state *st, const struct decide_result *r) {
        static const char *const head[] = { "SESSION_ID", "USER_ID",  "STATUS", "STARTED",
                                            "AGE",        "DECISION", "NOTE" };
        size_t w[ELEMENTSOF(head)];
        struct row row;

        for (size_t i = 0; i < ELEMENTSOF(head); i++)
                w[i] = strlen(head[i]);
        /* Two passes: widths first, then the rows. */
        for (size_t pass = 0; pass < 2; pass++) {
                if (pass == 1)
                        print_row(out, w, head);
                for (size_t i = 0; i < l->n; i++) {
                        const char *cols[ELEMENTSOF(head)];

                        fill_row(&row, c, &l->items[i], state_first_seen(st, l->items[i].session_id, NULL),
                                 &r->rows[i]);
                        cols[0] = row.id, cols[1] = row.user, cols[2] = row.status, cols[3] = row.started;
                        cols[4] = row.age, cols[5] = row.decision, cols[6] = row.note;
                        if (pass == 1) {
                                print_row(out, w, cols);
                                continue;
                        }
                        for (size_t k = 0; k < ELEMENTSOF(head); k++)
                                if (strlen(cols[k]) > w[k])
                                        w[k] = strlen(cols[k]);
                }
        }
        print_summary(out, c, l, r);
}

static bool add_string_or_null(cJSON *o, const char *name, const char *value) {
        return value ? cJSON_AddStringToObject(o, name, value) != NULL
                     : cJSON_AddNullToObject(o, name) != NULL;
}

/* One JSON object per session and line, with the journal's field names.
 * cJSON does the encoding; the ids are printed as listed (they passed the
 * hostile-id checks), not shortened as in the table. */
static int print_json(FILE *out, const struct config *c, const struct session_list *l,
                      const struct state *st, const struct decide_result *r) {
        for (size_t i = 0; i < l->n; i++) {
                const struct session *s = &l->items[i];
                const struct decide_row *d = &r->rows[i];
                bool known = state_first_seen(st, s->session_id, NULL);
                cJSON *o = cJSON_CreateObject();
                struct row row;
                char *text;
                bool ok;

                fill_row(&row, c, s, known, d);
                ok = o && cJSON_AddStringToObject(o, "IVH_ACCOUNT", config_account_name(c)) &&
                     cJSON_AddStringToObject(o, "IVH_SESSION_ID", s->session_id) &&
                     cJSON_AddStringToObject(o, "IVH_USER_ID", s->user_id ? s->user_id : "") &&
                     cJSON_AddNumberToObject(o, "IVH_SESSION_STATUS", s->status) &&
                     (s->started == TRISTATE_UNKNOWN
                              ? cJSON_AddNullToObject(o, "IVH_SESSION_STARTED") != NULL
                              : cJSON_AddBoolToObject(o, "IVH_SESSION_STARTED",
                                                      s->started == TRISTATE_TRUE) != NULL) &&
                     (known ? cJSON_AddNumberToObject(o, "IVH_AGE_SEC", (double) (d->age_ms / 1000)) != NULL
                            : cJSON_AddNullToObject(o, "IVH_AGE_SEC") != NULL) &&
                     (d->policy ? cJSON_AddStringToObject(o, "IVH_POLICY", d->policy->name) != NULL &&
                                          cJSON_AddStringToObject(o, "IVH_POLICY_KIND",
                                                                  policy_kind_to_string(d->policy->kind)) !=
                                                  NULL
                                : cJSON_AddNullToObject(o, "IVH_POLICY") != NULL &&
                                          cJSON_AddNullToObject(o, "IVH_POLICY_KIND") != NULL) &&
                     add_string_or_null(o, "IVH_PROJECT_ID", session_project(s)) &&
                     add_string_or_null(o, "IVH_ASSET_VK", session_asset(s)) &&
                     (s->create_type >= 0
                              ? cJSON_AddNumberToObject(o, "IVH_CREATE_TYPE", s->create_type) != NULL
                              : cJSON_AddNullToObject(o, "IVH_CREATE_TYPE") != NULL) &&
                     cJSON_AddStringToObject(o, "IVH_DECISION", decision_word(d)) &&
                     cJSON_AddStringToObject(o, "IVH_REASON", row.note);
                text = ok ? cJSON_PrintUnformatted(o) : NULL;
                cJSON_Delete(o);
                if (!text)
                        return -ENOMEM;
                fprintf(out, "%s\n", text);
                cJSON_free(text);
        }
        return 0;
}

int plan_print(FILE *out, enum plan_format format, const struct config *c, const struct session_list *l,
               const struct state *st, const struct decide_result *r) {
        int ret = 0;

        if (format == PLAN_JSON)
                ret = print_json(out, c, l, st, r);
        else
                print_table(out, c, l, st, r);
        if (ret >= 0)
                ret = r->n_closes > INT_MAX ? INT_MAX : (int) r->n_closes;
        return ret;
}
