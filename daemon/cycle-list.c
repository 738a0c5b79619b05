/* The list half of a cycle: the list call(s), merging them, the state sync,
 * the decide step and handing its closes to cycle.c. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "cycle-internal.h"
#include "decide.h"
#include "plan.h"
#include "util.h"

/* A session no longer listed keeps its first-seen time for this many poll
 * intervals, so that a list that now and then comes back short or empty
 * resets no age. */
#define STATE_GRACE_INTERVALS 10

static void list_failed(struct cycle *c, const char *what, long code, long retry_after_s) {
        struct log_field f[2];
        char codebuf[32];
        size_t n = 0;

        f[n++] = (struct log_field){ "IVH_ERROR", what };
        if (code) {
                snprintf(codebuf, sizeof codebuf, "%ld", code);
                f[n++] = (struct log_field){ "IVH_API_CODE", codebuf };
        }
        cycle_log(c, LOG_ERR, MESSAGE_ID_CYCLE_FAILED, f, n,
                  "Failed to list sessions: %s; no session is closed this cycle, retrying next cycle", what);
        c->res.list_failed = true;
        c->res.retry_after_ms = (uint64_t) retry_after_s * 1000;
}

/* Logs what the decide step held back, and why. */
static void log_decisions(struct cycle *c, const struct decide_result *r) {
        const struct config *cfg = c->env.config;

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
                        "Not closing any of %zu due live sessions: that is more than fuse.max_share (%s) of "
                        "the %zu live sessions and more than fuse.min_sessions (%u); check the policies and "
                        "the gateway",
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
                cycle_log(c, LOG_WARNING, MESSAGE_ID_FUSE, f, 2,
                          "%zu sessions are due but max_closes_per_cycle is %u: closing the %u oldest, "
                          "deferring %zu to later cycles",
                          ready, cfg->max_closes_per_cycle, cfg->max_closes_per_cycle, r->deferred);
        }
}

/* ages[i] is the age of c->list->items[i], from state_sync(). Runs the
 * decide step and turns its closes into jobs. Returns 0, or -ENOMEM
 * (nothing is then closed). */
static int plan_closes(struct cycle *c, const uint64_t *ages) {
        struct decide_input in = {
                .config = c->env.config,
                .list = c->list,
                .ages = ages,
                .retries = c->env.retries,
                .now_ms = now_mono_ms(),
        };
        struct decide_result r;
        int ret = decide(&in, &r);

        if (ret < 0)
                return ret;
        if (r.n_closes > 0 && !(c->jobs = calloc(r.n_closes, sizeof *c->jobs))) {
                decide_result_done(&r);
                return -ENOMEM;
        }
        for (size_t k = 0; k < r.n_closes; k++) {
                size_t i = r.closes[k];

                c->jobs[k] = (struct close_job){
                        .cycle = c,
                        .session = &c->list->items[i],
                        .policy = r.rows[i].policy,
                        .age_ms = r.rows[i].age_ms,
                };
        }
        c->n_jobs = r.n_closes;
        c->res.due = r.due;
        c->res.protected_due += r.protected_due;
        c->res.fused = r.fused;
        c->res.backing_off += r.backing_off;
        c->res.deferred += r.deferred;
        log_decisions(c, &r);
        decide_result_done(&r);
        return 0;
}

static void after_list(struct cycle *c);

/* Reads one list reply into *ret. Returns 0, or <0 with buf saying why,
 * *ret_code the API code (0 when none); a throttle or an auth refusal is
 * recorded for the account. */
static int read_list(struct cycle *c, const char *endpoint, const struct http_response *resp,
                     struct session_list **ret, char *buf, size_t n, long *ret_code) {
        struct gateway_error err;
        enum verdict v = reply_http_verdict(resp);
        int r = -EIO;

        cycle_progress(c);
        c->res.list_bytes += resp->body_len;
        memset(&err, 0, sizeof err);
        *ret_code = 0;
        if (v == VERDICT_OK) {
                r = gateway_parse_list(resp->body, resp->body_len, ret, &err);
                v = reply_api_verdict(r, &err);
        }
        cycle_record_call(c, endpoint, resp, r, &err);
        if (r >= 0)
                return 0;
        if (!reply_transport_failed(resp, buf, n))
                reply_describe_parse_error(r, &err, buf, n);
        if (r != -ENOMEM && err.kind == GATEWAY_API_ERROR)
                *ret_code = err.code;
        /* A throttled list fails the cycle; the next poll waits for its
         * Retry-After (see the reclaimer). It teaches the closes nothing: a
         * list that then succeeds shows the gateway accepts calls again. */
        if (v == VERDICT_THROTTLED)
                c->res.throttled++;
        else if (v == VERDICT_AUTH)
                cycle_auth_refused(c, endpoint, buf);
        return r < 0 ? r : -EIO;
}

static void list_done(const struct http_response *resp, void *userdata) {
        struct cycle *c = userdata;
        char buf[512];
        long code;

        if (read_list(c, "listsessionofuin", resp, &c->list, buf, sizeof buf, &code) < 0) {
                list_failed(c, buf, code, resp->retry_after_s);
                cycle_end(c);
                return;
        }
        after_list(c);
}

/* One project's list arrived. The cycle goes on once all have; if any
 * failed, it decides nothing, like a failed listsessionofuin. */
static void project_list_done(const struct http_response *resp, void *userdata) {
        struct project_list *pl = userdata;
        struct cycle *c = pl->cycle;
        char buf[512];
        long code;
        int ret;

        ret = read_list(c, pl->endpoint, resp, &pl->list, buf, sizeof buf, &code);
        if (ret < 0 && !c->projects_failed) {
                c->projects_failed = true;
                snprintf(c->projects_error, sizeof c->projects_error, "%s %s: %s", pl->what, pl->project_id,
                         buf);
                c->projects_error_code = code;
                c->projects_retry_after_s = resp->retry_after_s;
        }
        if (--c->projects_pending > 0)
                return;
        if (!c->projects_failed) {
                struct session_list **lists = malloc(c->n_projects * sizeof *lists);

                if (lists) {
                        for (size_t i = 0; i < c->n_projects; i++) {
                                lists[i] = c->projects[i].list;
                                c->projects[i].list = NULL;
                        }
                        ret = session_list_merge(lists, c->n_projects, &c->list);
                        free(lists);
                } else
                        ret = -ENOMEM;
                if (ret < 0) {
                        c->projects_failed = true;
                        snprintf(c->projects_error, sizeof c->projects_error,
                                 "out of memory while merging the project lists");
                }
        }
        if (c->projects_failed) {
                list_failed(c, c->projects_error, c->projects_error_code, c->projects_retry_after_s);
                cycle_end(c);
                return;
        }
        after_list(c);
}

/* Entries never acted on: counted every cycle, each id warned about once
 * (again only after it has been gone for a cycle), escaped. */
static void report_malformed(struct cycle *c) {
        const struct session_list *l = c->list;

        c->res.malformed = l->n_malformed;
        for (size_t i = 0; i < l->n_malformed; i++) {
                struct log_field f[] = { { "IVH_SESSION_ID", l->malformed[i].id },
                                         { "IVH_REASON", l->malformed[i].reason } };
                int r = c->env.malformed_logged ? idset_mark(c->env.malformed_logged, l->malformed[i].id)
                                                : 1;

                if (r == 0)
                        continue;
                cycle_log(c, LOG_WARNING, NULL, f, ELEMENTSOF(f),
                          "Ignoring listed session \"%s\": %s; it is never acted on, and counts as live for "
                          "the fuses",
                          l->malformed[i].id, l->malformed[i].reason);
        }
        if (c->env.malformed_logged)
                idset_round_end(c->env.malformed_logged);
}

/* The list is in: record it, decide, close. */
static void after_list(struct cycle *c) {
        const struct config *cfg = c->env.config;
        uint64_t *ages, grace;
        size_t anchored;
        int ret;

        c->res.listed = c->list->n;
        metrics_listed(c->env.metrics, c->list);
        report_malformed(c);
        /* The gateway accepted our signature, so the wall clock is within its
         * window: ages from before a reboot can be trusted now. */
        anchored = state_anchor(c->env.state, now_wall_ms(), now_mono_ms());
        if (anchored > 0)
                cycle_log(c, LOG_INFO, NULL, NULL, 0,
                          "The gateway accepted our clock; %zu first-seen time(s) from before the restart "
                          "now count from the wall clock",
                          anchored);
        if (c->list->n_duplicates > 0)
                cycle_log(c, LOG_WARNING, NULL, NULL, 0,
                          "The session list named %zu session(s) more than once; using the first entry of "
                          "each",
                          c->list->n_duplicates);

        if (c->env.plan_out) {
                int n = plan_print(c->env.plan_out, c->env.plan_format, c->env.config, c->list, c->env.state,
                                   c->env.retries, now_mono_ms());

                if (n < 0)
                        c->res.list_failed = true;
                else
                        c->res.planned = (size_t) n;
                cycle_end(c);
                return;
        }
        if (c->stopping) {
                cycle_end(c);
                return;
        }

        /* One state lookup per listed session: state_sync() hands back the
         * ages that decide() needs. */
        ages = malloc((c->list->n > 0 ? c->list->n : 1) * sizeof *ages);
        grace = cfg->poll_interval_ms * STATE_GRACE_INTERVALS;
        ret = ages ? state_sync(c->env.state, c->list, now_mono_ms(), grace, ages) : -ENOMEM;
        if (ret >= 0) {
                retry_prune(c->env.retries, c->list);
                ret = plan_closes(c, ages);
        }
        free(ages);
        if (ret < 0) {
                /* Nothing was closed: a cycle with half a decision is no cycle. */
                list_failed(c, "out of memory while deciding", 0, 0);
                c->n_jobs = 0;
                cycle_end(c);
                return;
        }

        if (c->env.ha && ha_role(c->env.ha) != HA_LEADER) {
                /* A standby (or an instance cut off from etcd) lists and keeps
                 * its ages for a failover, but closes and re-checks nothing,
                 * and logs no per-session entry. */
                for (size_t i = 0; i < c->n_jobs; i++)
                        c->jobs[i].finished = true;
                c->res.standby = c->n_jobs;
                c->next_job = c->n_jobs;
        } else if (c->env.dry_run) {
                for (size_t i = 0; i < c->n_jobs; i++) {
                        cycle_log_reclaim(&c->jobs[i], OUTCOME_DRY_RUN, NULL);
                        c->jobs[i].finished = true;
                        c->res.dry_run++;
                }
                c->next_job = c->n_jobs;
        }
        if (c->n_jobs > 0 && !(c->requeued = calloc(c->n_jobs, sizeof *c->requeued))) {
                list_failed(c, "out of memory while deciding", 0, 0);
                c->n_jobs = 0;
        }
        c->phase = CYCLE_CLOSING;
        c->phase_fn(c, CYCLE_CLOSING, c->userdata);
        cycle_dispatch(c);
}

/* Sends listsessionofuin, or one listsessionofprojectid per configured
 * project. Returns 0 when at least one request is under way. */
int cycle_start_listing(struct cycle *c) {
        const struct glob_list *projects = &c->env.config->gateway.project_ids;
        const struct glob_list *assets = &c->env.config->gateway.asset_vks;
        size_t n = projects->n + assets->n;
        int r = 0;

        if (n == 0)
                return cycle_post(c, "listsessionofuin", NULL, NULL, list_done, c);
        c->projects = calloc(n, sizeof *c->projects);
        if (!c->projects)
                return -ENOMEM;
        c->n_projects = n;
        for (size_t i = 0; i < n; i++) {
                bool asset = i >= projects->n;
                struct project_list *pl = &c->projects[i];

                *pl = (struct project_list){
                        .cycle = c,
                        .endpoint = asset ? "listsessionofassetvk" : "listsessionofprojectid",
                        .what = asset ? "asset" : "project",
                        .project_id = asset ? assets->items[i - projects->n] : projects->items[i],
                };
                r = cycle_post(c, pl->endpoint, asset ? "AssetVirtualmanKey" : "VirtualmanProjectId",
                               pl->project_id, project_list_done, pl);
                if (r < 0)
                        break;
                c->projects_pending++;
        }
        if (r < 0 && c->projects_pending > 0) {
                /* Some are under way: let them end, then fail the cycle. */
                c->projects_failed = true;
                snprintf(c->projects_error, sizeof c->projects_error, "cannot start request: %s",
                         strerror(-r));
                return 0;
        }
        return r;
}
