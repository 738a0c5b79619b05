/* The decision of a cycle: the list is in; log its oddities, sync the state
 * (the ages), ask decide() and turn its closes into jobs. Every later
 * question "may this close still go out?" (after a reload, after a
 * re-check saw a new status) is asked of decide() again, here: the cycle
 * holds no rule of its own. Calls only cycle-io.c. */
#include <errno.h>
#include <inttypes.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>

#include "cycle-internal.h"
#include "decide.h"
#include "gateway.h"
#include "policy.h"
#include "util.h"

/* A session no longer listed keeps its first-seen time for this many poll
 * intervals, so that a list that now and then comes back short or empty
 * resets no age. */
#define STATE_GRACE_INTERVALS 10
/* Entries never acted on are warned about one by one up to this many per
 * cycle; the rest are counted in one line, so that a hostile gateway
 * cannot fill the journal. */
#define MALFORMED_LOGGED_PER_CYCLE 20

/* The warn-once set holds a digest of each id, not the id: a hostile id can
 * be as long as the reply. */
static int id_key(const struct malformed_entry *m, char key[2 * 32 + 1]) {
        unsigned char md[EVP_MAX_MD_SIZE];
        char index[32];
        const char *id = m->raw_id;
        unsigned int n = 0;

        if (!id) {
                snprintf(index, sizeof index, "Sessions[%zu]", m->index);
                id = index;
        }
        if (!EVP_Digest(id, strlen(id), md, &n, EVP_sha256(), NULL) || n != 32)
                return -ENOMEM;
        for (unsigned i = 0; i < n; i++)
                snprintf(key + 2 * i, 3, "%02x", md[i]);
        return 0;
}

/* Entries never acted on: counted every cycle; each id warned about once
 * (again only after it has been gone for a cycle), escaped, at most
 * MALFORMED_LOGGED_PER_CYCLE a cycle, then one line with the count. */
static void report_malformed(struct cycle *c) {
        const struct session_list *l = c->list;
        struct idset *warned = c->env.malformed_logged;
        size_t logged = 0, unlogged = 0;

        c->res.malformed = l->n_malformed;
        for (size_t i = 0; i < l->n_malformed; i++) {
                const struct malformed_entry *m = &l->malformed[i];
                char key[2 * 32 + 1], id[GATEWAY_ID_MAX * 4 + 8];
                struct log_field f[] = { { "IVH_SESSION_ID", id }, { "IVH_REASON", m->reason } };
                bool keyed = warned && id_key(m, key) == 0;

                if (keyed && idset_keep(warned, key) > 0)
                        continue;
                if (logged == MALFORMED_LOGGED_PER_CYCLE) {
                        unlogged++;
                        continue;
                }
                if (keyed)
                        (void) idset_mark(warned, key);
                malformed_entry_id(m, id, sizeof id);
                logged++;
                cycle_log(
                        c, LOG_WARNING, NULL, f, ELEMENTSOF(f),
                        "Ignoring listed session \"%s\": %s; it is never acted on, and counts as live for the fuses",
                        id, m->reason);
        }
        if (unlogged > 0) {
                char count[24];
                struct log_field f[] = { { "IVH_MALFORMED", count } };

                snprintf(count, sizeof count, "%zu", unlogged);
                cycle_log(
                        c, LOG_WARNING, NULL, f, ELEMENTSOF(f),
                        "Ignoring %zu more listed session(s) whose entries cannot be acted on; at most %d a cycle are logged one by one; they count as live for the fuses",
                        unlogged, MALFORMED_LOGGED_PER_CYCLE);
        }
        if (warned)
                idset_round_end(warned);
}

/* Logs what the decide step held back, and why. */
static void log_decisions(struct cycle *c, const struct decide_result *r) {
        const struct config *cfg = c->in_force;

        if (r->fuse_tripped) {
                char f_due[24], f_live[24], f_share[24], f_min[24];
                struct log_field f[] = {
                        { "IVH_DUE_LIVE", f_due },
                        { "IVH_LIVE", f_live },
                        { "IVH_MAX_SHARE", f_share },
                        { "IVH_MIN_SESSIONS", f_min },
                };

                snprintf(f_due, sizeof f_due, "%zu", r->due_live);
                snprintf(f_live, sizeof f_live, "%zu", r->live);
                snprintf(f_share, sizeof f_share, "%g%%", cfg->fuse.max_share * 100);
                snprintf(f_min, sizeof f_min, "%u", cfg->fuse.min_sessions);
                cycle_log(
                        c, LOG_WARNING, MESSAGE_ID_SHARE_FUSE, f, ELEMENTSOF(f),
                        "Not closing any of %zu due live sessions: that is more than fuse.max_share (%s) of the %zu live sessions and more than fuse.min_sessions (%u); check the policies and the gateway",
                        r->due_live, f_share, r->live, cfg->fuse.min_sessions);
        }
        for (size_t i = 0; r->backing_off > 0 && i < c->list->n; i++)
                if (r->rows[i].outcome == DECIDE_BACKING_OFF)
                        cycle_log(c, LOG_DEBUG, NULL, NULL, 0,
                                  "Session %s is due but waits %" PRIu64 " ms after an earlier failure",
                                  c->list->items[i].session_id, r->rows[i].wait_ms);
        if (r->deferred > 0) {
                char due[32], limit[32];
                struct log_field f[2] = { { "IVH_DUE", due }, { "IVH_LIMIT", limit } };
                size_t ready = r->n_closes + r->deferred;

                snprintf(due, sizeof due, "%zu", ready);
                snprintf(limit, sizeof limit, "%u", cfg->max_closes_per_cycle);
                cycle_log(
                        c, LOG_WARNING, MESSAGE_ID_FUSE, f, 2,
                        "%zu sessions are due but max_closes_per_cycle is %u: closing the %u oldest, deferring %zu to later cycles",
                        ready, cfg->max_closes_per_cycle, cfg->max_closes_per_cycle, r->deferred);
        }
}

/* The fail-safe rule, said once per cycle: sessions a policy selects
 * (any kind, any age) that a protect list by project (asset) keeps because
 * the list does not say their project (asset). */
static void log_unknown_owners(struct cycle *c) {
        size_t projects = 0, assets = 0;

        for (size_t i = 0; i < c->list->n; i++) {
                unsigned rules = policy_owner_rule_keeps(c->in_force, &c->list->items[i]);

                projects += (rules & OWNER_RULE_PROJECT) != 0;
                assets += (rules & OWNER_RULE_ASSET) != 0;
        }
        if (projects > 0)
                cycle_log(
                        c, LOG_WARNING, NULL, NULL, 0,
                        "protect.project_ids is set but the list does not say the project of %zu sessions; they are kept",
                        projects);
        if (assets > 0)
                cycle_log(
                        c, LOG_WARNING, NULL, NULL, 0,
                        "protect.asset_vks is set but the list does not say the asset of %zu sessions; they are kept",
                        assets);
}

/* A new round of the events said once (notify_once()), then
 * notify.due_soon: each session a timer policy will close within the
 * window is announced once, with when. Only where closes happen (not a
 * standby), and never for a session a protect rule keeps. */
static void announce_due_soon(struct cycle *c) {
        uint64_t window = notifier_due_soon_ms(c->env.notify);
        int64_t now = now_wall_ms();

        notify_new_round(c->env.notify);
        if (window == 0 || (c->env.ha && ha_role(c->env.ha) != HA_LEADER))
                return;
        for (size_t i = 0; i < c->list->n; i++) {
                const struct decide_row *row = &c->decision.rows[i];
                const struct session *s = &c->list->items[i];
                uint64_t left;

                if (row->outcome != DECIDE_KEEP || !row->policy || row->by_capacity ||
                    row->policy->kind == POLICY_OVER_CAPACITY || row->age_ms >= row->policy->after_ms)
                        continue;
                left = row->policy->after_ms - row->age_ms;
                if (left > window)
                        continue;
                notify_once(c->env.notify, NOTIFY_DUE_SOON,
                            &(struct notify_session){
                                    .session_id = s->session_id,
                                    .user_id = s->user_id,
                                    .policy = row->policy->name,
                                    .policy_kind = policy_kind_to_string(row->policy->kind),
                                    .project_id = session_project(s),
                                    .asset_vk = session_asset(s),
                                    .age_sec = row->age_ms / 1000,
                                    .session_status = s->status,
                                    .dry_run = c->env.dry_run,
                                    .due_at_wall_ms = now + (int64_t) left,
                            });
        }
}

static int run_decide(struct cycle *c, struct decide_result *ret) {
        struct decide_input in = {
                .config = c->in_force,
                .list = c->list,
                .ages = c->ages,
                .retries = c->env.plan ? NULL : c->env.retries,
                .now_ms = c->decided_ms,
                .sent = c->sent,
                .dry_run = c->env.dry_run,
        };

        return decide(&in, ret);
}

/* The closes of the decision become jobs, in its order. */
static int make_jobs(struct cycle *c) {
        const struct decide_result *r = &c->decision;

        if (r->n_closes > 0 && !(c->jobs = calloc(r->n_closes, sizeof *c->jobs)))
                return -ENOMEM;
        for (size_t k = 0; k < r->n_closes; k++) {
                size_t i = r->closes[k];

                c->jobs[k] = (struct close_job){
                        .cycle = c,
                        .index = i,
                        .session = &c->list->items[i],
                        .policy = r->rows[i].policy,
                        .age_ms = r->rows[i].age_ms,
                        .state = JOB_QUEUED,
                };
        }
        c->n_jobs = r->n_closes;
        return 0;
}

int cycle_decide(struct cycle *c) {
        const struct session_list *l = c->list;
        size_t n = l->n > 0 ? l->n : 1;
        size_t anchored;
        int ret = 0;

        c->res.listed = l->n;
        metrics_listed(c->env.metrics, l);
        report_malformed(c);
        /* The gateway accepted our signature, so the wall clock is within its
         * window: ages from before a reboot can be trusted now. */
        anchored = state_anchor(c->env.state, now_wall_ms(), now_mono_ms());
        if (anchored > 0 && !c->env.plan) /* --plan restarted nothing */
                cycle_log(
                        c, LOG_INFO, NULL, NULL, 0,
                        "The gateway accepted our clock; %zu first-seen time(s) from before the restart now count from the wall clock",
                        anchored);
        if (l->n_duplicates > 0)
                cycle_log(
                        c, LOG_WARNING, NULL, NULL, 0,
                        "The session list named %zu session(s) more than once; using the first entry of each",
                        l->n_duplicates);

        c->ages = malloc(n * sizeof *c->ages);
        c->sent = calloc(n, sizeof *c->sent);
        if (!c->ages || !c->sent)
                return -ENOMEM;
        c->decided_ms = now_mono_ms();
        if (c->env.plan) {
                /* --plan records nothing: sessions it has not seen are new. */
                for (size_t i = 0; i < l->n; i++)
                        c->ages[i] = state_age_ms(c->env.state, l->items[i].session_id, c->decided_ms);
        } else {
                /* One state lookup per listed session: state_sync() hands
                 * back the ages that decide() needs. */
                ret = state_sync(c->env.state, l, c->decided_ms,
                                 c->env.config->poll_interval_ms * STATE_GRACE_INTERVALS, c->ages);
                if (ret < 0)
                        return ret;
                retry_prune(c->env.retries, l);
        }
        ret = run_decide(c, &c->decision);
        if (ret < 0)
                return ret;
        c->res.planned = c->decision.n_closes;
        if (c->env.plan)
                return 0;
        c->res.due = c->decision.due;
        c->res.protected_due += c->decision.protected_due;
        c->res.fused = c->decision.fused;
        c->res.backing_off += c->decision.backing_off;
        c->res.deferred += c->decision.deferred;
        log_decisions(c, &c->decision);
        log_unknown_owners(c);
        announce_due_soon(c);
        return make_jobs(c);
}

int cycle_redecide(struct cycle *c) {
        struct decide_result r;
        int ret = run_decide(c, &r);

        if (ret < 0)
                return ret;
        decide_result_done(&c->decision);
        c->decision = r;
        c->decision_stale = false;
        return 0;
}

const char *cycle_refusal(const struct cycle *c, const struct close_job *job, char *buf, size_t n) {
        const struct decide_row *row = &c->decision.rows[job->index];
        const struct session *s = job->session;

        if (c->decision.dry_run)
                return "the reloaded configuration is a dry run";
        if (row->outcome == DECIDE_CLOSE)
                return NULL;
        if (row->outcome == DECIDE_PROTECTED)
                return c->reloaded ? "the reloaded configuration protects it" : "a protect rule covers it";
        if (job->rechecked)
                snprintf(
                        buf, n,
                        "statsession now reports SessionStatus %d, IsSessionStarted %s: policy %s no longer applies (%s)",
                        s->status,
                        s->started == TRISTATE_TRUE    ? "true"
                        : s->started == TRISTATE_FALSE ? "false"
                                                       : "absent",
                        job->policy->name, decide_outcome_to_string(row->outcome));
        else
                snprintf(buf, n, "the reloaded configuration no longer selects it (%s)",
                         decide_outcome_to_string(row->outcome));
        return buf;
}
