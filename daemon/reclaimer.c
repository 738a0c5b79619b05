#include "reclaimer.h"

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-daemon.h>
#include <time.h>

#include "duration.h"
#include "gateway.h"
#include "health.h"
#include "http.h"
#include "log.h"
#include "plan.h"
#include "policy.h"
#include "state.h"
#include "util.h"

#define MAX_RESPONSE_SIZE      (64u * 1024 * 1024)
#define SHUTDOWN_GRACE_EXTRA_S 1.0

enum outcome {
        OUTCOME_CLOSED,
        OUTCOME_ALREADY_CLOSED,
        OUTCOME_FAILED,
        OUTCOME_DRY_RUN,
};

static const char *const outcome_names[] = {
        [OUTCOME_CLOSED] = "closed",
        [OUTCOME_ALREADY_CLOSED] = "already_closed",
        [OUTCOME_FAILED] = "failed",
        [OUTCOME_DRY_RUN] = "dry_run",
};

struct cycle;

struct close_job {
        struct cycle *cycle;
        const struct session *session; /* borrowed from cycle->list */
        const struct policy *policy;   /* borrowed from cycle->config */
        uint64_t age_ms;
        bool statting; /* closesession failed; confirming with statsession */
        struct gateway_error close_err;
};

struct cycle {
        struct reclaimer *r;
        const struct config *config; /* the config the cycle started with */
        int64_t started_mono_ms;
        struct session_list *list;
        struct close_job *jobs;
        size_t n_jobs, next_job, in_flight;
        size_t n_protected, n_deferred, n_closed, n_already, n_failed, n_dry_run, n_not_started;
        bool list_failed;
};

struct reclaimer {
        struct ev_loop *loop;
        struct config *config;
        struct credentials *creds;
        /* A reloaded configuration waiting for the running cycle to end. */
        struct config *pending_config;
        struct credentials *pending_creds;
        struct reclaimer_options opt;
        struct http *http;
        struct state *state;
        struct cycle *cycle; /* NULL between cycles */
        int64_t last_cycle_started_ms;
        ev_timer poll_timer;
        ev_timer grace_timer;
        ev_timer watchdog_timer;
        ev_signal sig_term, sig_int, sig_hup;
        bool stopping;
        bool any_list_failed;
        bool unhealthy_logged;
        unsigned long cycles;
        size_t total_reclaimed;
};

static void cycle_finish(struct cycle *c);
static void dispatch(struct cycle *c);
static void apply_pending(struct reclaimer *r);

static struct http_options http_options_for(const struct config *c) {
        return (struct http_options){
                .ca_file = c->gateway.ca_file,
                .timeout_ms = (long) c->gateway.timeout_ms,
                .connect_timeout_ms = (long) c->gateway.timeout_ms,
                .max_response_size = MAX_RESPONSE_SIZE,
                /* closes in flight, plus the list call and a spare */
                .max_connections = (long) c->gateway.max_parallel + 2,
        };
}

static bool dry_run(const struct reclaimer *r) {
        return r->opt.force_dry_run || r->config->dry_run;
}

static int post(struct reclaimer *r, const char *endpoint, const char *session_id, http_done_fn done,
                void *userdata) {
        char reqid[GATEWAY_REQID_LEN + 1];
        char *url = NULL, *body = NULL;
        int ret;

        ret = gateway_new_reqid(reqid);
        if (ret >= 0)
                ret = gateway_build_url(r->config->gateway.url, endpoint, r->config->gateway.appkey,
                                        r->creds->token, time(NULL), &url);
        if (ret >= 0)
                ret = gateway_build_body(reqid, session_id, &body);
        if (ret >= 0)
                ret = http_post_json(r->http, url, body, done, userdata);
        /* The URL carries a signature derived from the token: wipe it. */
        if (url)
                explicit_bzero(url, strlen(url));
        free(url);
        free(body);
        return ret;
}

/* Describes a transport-level failure; returns false when resp is a 200. */
static bool transport_failed(const struct http_response *resp, char *buf, size_t n) {
        if (resp->result != CURLE_OK) {
                snprintf(buf, n, "%s", resp->error);
                return true;
        }
        if (resp->status != 200) {
                snprintf(buf, n, "HTTP status %ld", resp->status);
                return true;
        }
        return false;
}

static void log_reclaim(struct close_job *job, enum outcome outcome, const char *detail) {
        const struct session *s = job->session;
        char age[32], status[16], age_h[32], code[32], id[96], user[96];
        struct log_field f[9];
        size_t n = 0;

        snprintf(age, sizeof age, "%" PRIu64, job->age_ms / 1000);
        snprintf(status, sizeof status, "%d", s->status);
        duration_format(job->age_ms - job->age_ms % 1000, age_h, sizeof age_h);
        f[n++] = (struct log_field){ "IVH_SESSION_ID", s->session_id };
        f[n++] = (struct log_field){ "IVH_USER_ID", s->user_id };
        f[n++] = (struct log_field){ "IVH_POLICY", job->policy->name };
        f[n++] = (struct log_field){ "IVH_POLICY_KIND", policy_kind_to_string(job->policy->kind) };
        f[n++] = (struct log_field){ "IVH_AGE_SEC", age };
        f[n++] = (struct log_field){ "IVH_SESSION_STATUS", status };
        f[n++] = (struct log_field){ "IVH_OUTCOME", outcome_names[outcome] };
        if (detail && *detail)
                f[n++] = (struct log_field){ "IVH_ERROR", detail };
        if (job->close_err.kind == GATEWAY_API_ERROR) {
                snprintf(code, sizeof code, "%ld", job->close_err.code);
                f[n++] = (struct log_field){ "IVH_API_CODE", code };
        }
        sanitize_printable(s->session_id, id, sizeof id);
        sanitize_printable(s->user_id, user, sizeof user);

        switch (outcome) {
        case OUTCOME_CLOSED:
                log_struct(LOG_NOTICE, MESSAGE_ID_RECLAIM, f, n,
                           "Reclaimed session %s of user '%s' (policy %s, first seen %s ago)", id, user,
                           job->policy->name, age_h);
                break;
        case OUTCOME_ALREADY_CLOSED:
                log_struct(LOG_INFO, MESSAGE_ID_RECLAIM, f, n,
                           "Session %s of user '%s' was already gone when policy %s closed it", id, user,
                           job->policy->name);
                break;
        case OUTCOME_DRY_RUN:
                log_struct(LOG_NOTICE, MESSAGE_ID_RECLAIM, f, n,
                           "Would reclaim session %s of user '%s' (policy %s, first seen %s ago); dry run",
                           id, user, job->policy->name, age_h);
                break;
        case OUTCOME_FAILED:
                log_struct(
                        LOG_WARNING, MESSAGE_ID_RECLAIM, f, n,
                        "Failed to reclaim session %s of user '%s' (policy %s): %s; will retry next cycle",
                        id, user, job->policy->name, detail ? detail : "unknown error");
                break;
        }
}

static void job_done(struct close_job *job, enum outcome outcome, const char *detail) {
        struct cycle *c = job->cycle;

        log_reclaim(job, outcome, detail);
        switch (outcome) {
        case OUTCOME_CLOSED:
                c->n_closed++;
                break;
        case OUTCOME_ALREADY_CLOSED:
                c->n_already++;
                break;
        case OUTCOME_FAILED:
                c->n_failed++;
                break;
        case OUTCOME_DRY_RUN:
                c->n_dry_run++;
                break;
        }
        c->in_flight--;
        dispatch(c);
}

static void stat_done(const struct http_response *resp, void *userdata) {
        struct close_job *job = userdata;
        struct gateway_error err;
        struct stat_result st;
        char buf[512];
        int r;

        if (!transport_failed(resp, buf, sizeof buf)) {
                r = gateway_parse_stat(resp->body, resp->body_len, &st, &err);
                /* Gone if the gateway says the session is closed, or if it
                 * answers statsession with the very error closesession gave:
                 * both calls then agree that it does not know the session. */
                if ((r >= 0 && st.status == SESSION_CLOSED) ||
                    (r < 0 && err.kind == GATEWAY_API_ERROR && err.code == job->close_err.code)) {
                        job_done(job, OUTCOME_ALREADY_CLOSED, NULL);
                        return;
                }
        }
        snprintf(buf, sizeof buf, "closesession: API error %ld: %s", job->close_err.code,
                 job->close_err.message);
        job_done(job, OUTCOME_FAILED, buf);
}

static void close_done(const struct http_response *resp, void *userdata) {
        struct close_job *job = userdata;
        struct reclaimer *r = job->cycle->r;
        char buf[512];
        int ret;

        if (transport_failed(resp, buf, sizeof buf)) {
                char msg[600];
                snprintf(msg, sizeof msg, "closesession: %s", buf);
                job_done(job, OUTCOME_FAILED, msg);
                return;
        }
        ret = gateway_parse_ack(resp->body, resp->body_len, &job->close_err);
        if (ret >= 0) {
                job_done(job, OUTCOME_CLOSED, NULL);
                return;
        }
        if (job->close_err.kind == GATEWAY_API_ERROR) {
                /* Maybe the session went away between the list and now. */
                ret = post(r, "statsession", job->session->session_id, stat_done, job);
                if (ret >= 0) {
                        job->statting = true;
                        return;
                }
        }
        snprintf(buf, sizeof buf, "closesession: %s", job->close_err.message);
        job_done(job, OUTCOME_FAILED, buf);
}

static void dispatch(struct cycle *c) {
        struct reclaimer *r = c->r;

        while (!r->stopping && c->next_job < c->n_jobs && c->in_flight < c->config->gateway.max_parallel) {
                struct close_job *job = &c->jobs[c->next_job++];
                int ret;

                c->in_flight++;
                ret = post(r, "closesession", job->session->session_id, close_done, job);
                if (ret < 0) {
                        char buf[128];
                        snprintf(buf, sizeof buf, "cannot start request: %s", strerror(-ret));
                        job_done(job, OUTCOME_FAILED, buf);
                        return; /* job_done() dispatched again */
                }
        }
        if (r->stopping && c->next_job < c->n_jobs) {
                c->n_not_started += c->n_jobs - c->next_job;
                c->next_job = c->n_jobs;
        }
        if (c->in_flight == 0 && c->next_job == c->n_jobs)
                cycle_finish(c);
}

static int compare_job_age_desc(const void *a, const void *b) {
        const struct close_job *x = a, *y = b;

        return x->age_ms < y->age_ms ? 1 : x->age_ms > y->age_ms ? -1 : 0;
}

static void list_failed(struct cycle *c, const char *what, long code) {
        struct log_field f[2];
        char codebuf[32];
        size_t n = 0;

        f[n++] = (struct log_field){ "IVH_ERROR", what };
        if (code) {
                snprintf(codebuf, sizeof codebuf, "%ld", code);
                f[n++] = (struct log_field){ "IVH_API_CODE", codebuf };
        }
        log_struct(LOG_ERR, MESSAGE_ID_CYCLE_FAILED, f, n,
                   "Failed to list sessions: %s; no session is closed this cycle, retrying next cycle",
                   what);
        c->list_failed = true;
        cycle_finish(c);
}

static void decide(struct cycle *c) {
        struct reclaimer *r = c->r;
        const struct config *cfg = c->config;
        int64_t now = now_mono_ms();
        size_t n_due = 0;

        for (size_t i = 0; i < c->list->n; i++) {
                const struct session *s = &c->list->items[i];
                struct decision d;

                policy_decide(cfg, s, state_age_ms(r->state, s->session_id, now), &d);
                if (d.kind == DECISION_PROTECTED && d.policy && d.age_ms >= d.policy->after_ms &&
                    s->status != SESSION_CLOSED)
                        c->n_protected++;
                if (d.kind != DECISION_CLOSE)
                        continue;
                c->jobs[n_due++] = (struct close_job){
                        .cycle = c,
                        .session = s,
                        .policy = d.policy,
                        .age_ms = d.age_ms,
                };
        }
        c->n_jobs = n_due;

        /* The fuse: close the oldest first, leave the rest for later cycles. */
        if (n_due > cfg->max_closes_per_cycle) {
                char due[32], limit[32];
                struct log_field f[2] = { { "IVH_DUE", due }, { "IVH_LIMIT", limit } };

                qsort(c->jobs, n_due, sizeof c->jobs[0], compare_job_age_desc);
                c->n_jobs = cfg->max_closes_per_cycle;
                c->n_deferred = n_due - c->n_jobs;
                snprintf(due, sizeof due, "%zu", n_due);
                snprintf(limit, sizeof limit, "%u", cfg->max_closes_per_cycle);
                log_struct(LOG_WARNING, MESSAGE_ID_FUSE, f, 2,
                           "%zu sessions are due but max_closes_per_cycle is %u: closing the %u oldest, "
                           "deferring %zu to later cycles",
                           n_due, cfg->max_closes_per_cycle, cfg->max_closes_per_cycle, c->n_deferred);
        }
}

static void list_done(const struct http_response *resp, void *userdata) {
        struct cycle *c = userdata;
        struct reclaimer *r = c->r;
        struct gateway_error err;
        char buf[512];
        int ret;

        if (transport_failed(resp, buf, sizeof buf)) {
                list_failed(c, buf, 0);
                return;
        }
        ret = gateway_parse_list(resp->body, resp->body_len, &c->list, &err);
        if (ret == -ENOMEM) {
                list_failed(c, "out of memory while parsing the session list", 0);
                return;
        }
        if (ret < 0) {
                snprintf(
                        buf, sizeof buf, "%s%s",
                        err.kind == GATEWAY_API_ERROR ? "API error: " : "malformed response: ", err.message);
                list_failed(c, buf, err.kind == GATEWAY_API_ERROR ? err.code : 0);
                return;
        }
        if (c->list->n_duplicates > 0)
                log_warning("The session list named %zu session(s) more than once; using the first entry of "
                            "each",
                            c->list->n_duplicates);

        if (r->opt.mode == RECLAIMER_PLAN) {
                plan_print(r->opt.plan_out, c->config, c->list, r->state, now_mono_ms());
                cycle_finish(c);
                return;
        }

        ret = state_sync(r->state, c->list, now_mono_ms());
        if (ret >= 0 && c->list->n > 0) {
                c->jobs = calloc(c->list->n, sizeof *c->jobs);
                if (!c->jobs)
                        ret = -ENOMEM;
        }
        if (ret < 0) {
                list_failed(c, "out of memory while recording sessions", 0);
                return;
        }
        decide(c);

        if (dry_run(r)) {
                for (size_t i = 0; i < c->n_jobs; i++) {
                        log_reclaim(&c->jobs[i], OUTCOME_DRY_RUN, NULL);
                        c->n_dry_run++;
                }
                c->next_job = c->n_jobs;
        }
        dispatch(c);
}

static void schedule_next(struct reclaimer *r, int64_t started_mono_ms, bool after_cycle) {
        int64_t now = now_mono_ms(), next = started_mono_ms + (int64_t) r->config->poll_interval_ms;
        double delay = next > now ? (double) (next - now) / 1000.0 : 0.;

        if (next <= now && after_cycle)
                log_warning("The cycle took longer than poll_interval (%" PRIu64
                            " ms); starting the next one now",
                            r->config->poll_interval_ms);
        ev_timer_stop(r->loop, &r->poll_timer);
        ev_timer_set(&r->poll_timer, delay, 0.);
        ev_timer_start(r->loop, &r->poll_timer);
}

/* STATUS= for `systemctl status`: one line about the last cycle. */
static void notify_status(struct reclaimer *r, size_t listed, size_t reclaimed, size_t failed,
                          bool list_failed) {
        char next[32], when[32];
        time_t t = time(NULL) + (time_t) (ev_timer_remaining(r->loop, &r->poll_timer) + 0.5);
        struct tm tm;

        localtime_r(&t, &tm);
        strftime(when, sizeof when, "%H:%M:%S", &tm);
        duration_format(r->config->poll_interval_ms, next, sizeof next);
        if (list_failed)
                sd_notifyf(0,
                           "STATUS=Last poll failed (see journal); %zu reclaimed in total, next poll at %s",
                           r->total_reclaimed, when);
        else
                sd_notifyf(0,
                           "STATUS=%zu sessions listed, %zu reclaimed, %zu failed%s; next poll at %s (every "
                           "%s)",
                           listed, reclaimed, failed, dry_run(r) ? " (dry run)" : "", when, next);
}

static void save_state(struct reclaimer *r) {
        int ret;

        if (r->opt.mode == RECLAIMER_PLAN)
                return;
        ret = state_save(r->state, now_wall_ms(), now_mono_ms());
        if (ret < 0)
                log_error("Failed to write state file %s: %s; first-seen times are kept in memory, retrying "
                          "after the next cycle",
                          r->config->state_file, strerror(-ret));
}

static void cycle_finish(struct cycle *c) {
        struct reclaimer *r = c->r;
        int64_t started = c->started_mono_ms, duration = now_mono_ms() - started;
        size_t closed_total, failed_total;
        bool list_failed_now;
        size_t listed = c->list ? c->list->n : 0;
        char f_listed[24], f_due[24], f_closed[24], f_already[24], f_failed[24], f_deferred[24],
                f_protected[24], f_dry[24], f_dur[24];
        struct log_field f[] = {
                { "IVH_LISTED", f_listed },       { "IVH_DUE", f_due },
                { "IVH_CLOSED", f_closed },       { "IVH_ALREADY_CLOSED", f_already },
                { "IVH_FAILED", f_failed },       { "IVH_DEFERRED", f_deferred },
                { "IVH_PROTECTED", f_protected }, { "IVH_DRY_RUN", f_dry },
                { "IVH_DURATION_MS", f_dur },
        };

        snprintf(f_listed, sizeof f_listed, "%zu", listed);
        snprintf(f_due, sizeof f_due, "%zu", c->n_jobs + c->n_deferred);
        snprintf(f_closed, sizeof f_closed, "%zu", c->n_closed);
        snprintf(f_already, sizeof f_already, "%zu", c->n_already);
        snprintf(f_failed, sizeof f_failed, "%zu", c->n_failed);
        snprintf(f_deferred, sizeof f_deferred, "%zu", c->n_deferred + c->n_not_started);
        snprintf(f_protected, sizeof f_protected, "%zu", c->n_protected);
        snprintf(f_dry, sizeof f_dry, "%zu", c->n_dry_run);
        snprintf(f_dur, sizeof f_dur, "%" PRId64, duration);

        r->cycles++;
        r->total_reclaimed += c->n_closed + c->n_already;
        if (c->list_failed)
                r->any_list_failed = true;
        if (r->opt.mode != RECLAIMER_PLAN) {
                log_struct(c->list_failed ? LOG_WARNING : LOG_INFO, MESSAGE_ID_CYCLE, f, ELEMENTSOF(f),
                           "Cycle %s: listed=%s due=%s closed=%s already_closed=%s failed=%s deferred=%s "
                           "protected=%s dry_run=%s duration=%sms",
                           c->list_failed ? "failed" : "done", f_listed, f_due, f_closed, f_already,
                           f_failed, f_deferred, f_protected, f_dry, f_dur);
        }
        if (c->n_not_started > 0)
                log_warning(
                        "Stopping: %zu due session(s) were not closed; they will be closed after restart",
                        c->n_not_started);
        if (!c->list_failed)
                save_state(r);

        closed_total = c->n_closed + c->n_already;
        failed_total = c->n_failed;
        list_failed_now = c->list_failed;
        r->cycle = NULL;
        session_list_free(c->list);
        free(c->jobs);
        free(c);

        if (r->stopping || r->opt.mode != RECLAIMER_DAEMON) {
                ev_break(r->loop, EVBREAK_ALL);
                return;
        }
        apply_pending(r);
        schedule_next(r, started, true);
        notify_status(r, listed, closed_total, failed_total, list_failed_now);
}

static void cycle_start(struct reclaimer *r) {
        struct cycle *c;
        int ret;

        if (r->cycle) {
                log_warning("The previous cycle is still running; skipping this tick");
                return;
        }
        c = calloc(1, sizeof *c);
        if (!c) {
                log_error("Out of memory starting a cycle; retrying next cycle");
                schedule_next(r, now_mono_ms(), false);
                return;
        }
        c->r = r;
        c->config = r->config;
        c->started_mono_ms = now_mono_ms();
        r->last_cycle_started_ms = c->started_mono_ms;
        r->cycle = c;
        ret = post(r, "listsessionofuin", NULL, list_done, c);
        if (ret < 0) {
                char buf[128];
                snprintf(buf, sizeof buf, "cannot start request: %s", strerror(-ret));
                list_failed(c, buf, 0);
        }
}

static void poll_cb(struct ev_loop *loop, ev_timer *w, int revents) {
        (void) loop;
        (void) revents;
        cycle_start(w->data);
}

/* Swaps in a reloaded configuration; only between cycles, so that a cycle
 * runs from start to end with one configuration. */
static void apply_pending(struct reclaimer *r) {
        struct http_options old_opt, new_opt;
        struct http *http = NULL;
        int ret;

        if (!r->pending_config || r->cycle)
                return;
        old_opt = http_options_for(r->config);
        new_opt = http_options_for(r->pending_config);
        if (old_opt.timeout_ms != new_opt.timeout_ms || old_opt.max_connections != new_opt.max_connections ||
            !!old_opt.ca_file != !!new_opt.ca_file ||
            (old_opt.ca_file && strcmp(old_opt.ca_file, new_opt.ca_file) != 0)) {
                ret = http_new(r->loop, &new_opt, &http);
                if (ret < 0) {
                        log_error("Failed to apply the reloaded configuration: %s; keeping the previous one",
                                  strerror(-ret));
                        config_free(r->pending_config);
                        credentials_free(r->pending_creds);
                        r->pending_config = NULL;
                        r->pending_creds = NULL;
                        return;
                }
                http_free(r->http); /* nothing is in flight between cycles */
                r->http = http;
        }
        config_free(r->config);
        credentials_free(r->creds);
        r->config = r->pending_config;
        r->creds = r->pending_creds;
        r->pending_config = NULL;
        r->pending_creds = NULL;
        log_info("The reloaded configuration is now in effect: %zu policies, polling every %" PRIu64 " ms%s",
                 r->config->n_policies, r->config->poll_interval_ms, dry_run(r) ? ", dry run" : "");
}

static void log_lines(int priority, const char *text) {
        while (text && *text) {
                const char *eol = strchr(text, '\n');
                int len = eol ? (int) (eol - text) : (int) strlen(text);

                log_full(priority, "%.*s", len, text);
                text += len + (eol ? 1 : 0);
        }
}

/* SIGHUP: load the file again. A valid file takes effect from the next cycle;
 * on any error the running configuration stays, untouched. */
static void reload(struct reclaimer *r) {
        struct config *c = NULL;
        struct credentials *creds = NULL;
        char *errors = NULL, errbuf[512];
        int ret;

        sd_notify(0, "RELOADING=1");
        log_info("Reloading %s", r->config->path);
        ret = config_load(r->config->path, &c, &errors);
        if (ret < 0) {
                log_lines(LOG_ERR, errors);
                log_error("Reload failed: %s is not valid; the previous configuration stays in effect",
                          r->config->path);
                free(errors);
                goto done;
        }
        if (strcmp(c->state_file, r->config->state_file) != 0) {
                log_error("Reload failed: state_file changed from %s to %s, which needs a restart; the "
                          "previous "
                          "configuration stays in effect",
                          r->config->state_file, c->state_file);
                config_free(c);
                goto done;
        }
        ret = credentials_load(&c->gateway, r->creds, &creds, errbuf, sizeof errbuf);
        if (ret < 0) {
                log_error("Reload failed: %s; the previous configuration stays in effect", errbuf);
                config_free(c);
                goto done;
        }
        config_free(r->pending_config);
        credentials_free(r->pending_creds);
        r->pending_config = c;
        r->pending_creds = creds;
        if (r->cycle)
                log_info("Reloaded %s; it takes effect when the running cycle ends", r->config->path);
        else {
                apply_pending(r);
                /* A new poll_interval counts from the start of the last cycle. */
                if (ev_is_active(&r->poll_timer))
                        schedule_next(r, r->last_cycle_started_ms, false);
        }
done:
        sd_notify(0, "READY=1");
}

/* Pings the systemd watchdog, but only while cycles keep happening. */
static void watchdog_cb(struct ev_loop *loop, ev_timer *w, int revents) {
        struct reclaimer *r = w->data;
        struct health_input in = {
                .now_ms = now_mono_ms(),
                .stopping = r->stopping,
                .cycle_running = r->cycle != NULL,
                .cycle_started_ms = r->cycle ? r->cycle->started_mono_ms : 0,
                .next_cycle_scheduled = ev_is_active(&r->poll_timer),
        };
        const char *reason = NULL;

        (void) loop;
        (void) revents;
        if (health_ok(&in, health_cycle_budget_ms(r->config), &reason)) {
                sd_notify(0, "WATCHDOG=1");
                r->unhealthy_logged = false;
        } else if (!r->unhealthy_logged) {
                log_error("Reclaiming has stalled: %s; withholding the watchdog ping so that systemd "
                          "restarts the "
                          "service",
                          reason);
                r->unhealthy_logged = true;
        }
}

static void grace_cb(struct ev_loop *loop, ev_timer *w, int revents) {
        struct reclaimer *r = w->data;

        (void) revents;
        log_warning("Stopping with %zu request(s) still in flight after the grace period; their outcome is "
                    "unknown",
                    http_in_flight(r->http));
        ev_break(loop, EVBREAK_ALL);
}

static void signal_cb(struct ev_loop *loop, ev_signal *w, int revents) {
        struct reclaimer *r = w->data;

        (void) revents;
        if (w->signum == SIGHUP) {
                if (!r->stopping)
                        reload(r);
                return;
        }
        if (r->stopping)
                return;
        r->stopping = true;
        sd_notify(0, "STOPPING=1");
        log_info("Received %s, stopping", strsignal(w->signum));
        ev_timer_stop(loop, &r->poll_timer);
        if (!r->cycle) {
                ev_break(loop, EVBREAK_ALL);
                return;
        }
        /* Let in-flight closes finish, but not for longer than one request may take. */
        ev_timer_set(&r->grace_timer,
                     (double) r->config->gateway.timeout_ms / 1000.0 + SHUTDOWN_GRACE_EXTRA_S, 0.);
        ev_timer_start(loop, &r->grace_timer);
}

int reclaimer_new(struct ev_loop *loop, struct config *config, struct credentials *creds,
                  const struct reclaimer_options *opt, struct reclaimer **ret) {
        struct reclaimer *r = calloc(1, sizeof *r);
        struct http_options hopt;
        int ret_code;

        if (!r) {
                config_free(config);
                credentials_free(creds);
                return -ENOMEM;
        }
        r->loop = loop;
        r->config = config;
        r->creds = creds;
        r->opt = *opt;
        if (!r->opt.plan_out)
                r->opt.plan_out = stdout;

        hopt = (struct http_options){
                .ca_file = config->gateway.ca_file,
                .timeout_ms = (long) config->gateway.timeout_ms,
                .connect_timeout_ms = (long) config->gateway.timeout_ms,
                .max_response_size = MAX_RESPONSE_SIZE,
                /* closes in flight, plus the list call and a spare */
                .max_connections = (long) config->gateway.max_parallel + 2,
        };
        ret_code = http_new(loop, &hopt, &r->http);
        if (ret_code >= 0)
                ret_code = state_new(config->state_file, &r->state);
        if (ret_code < 0) {
                reclaimer_free(r);
                return ret_code;
        }
        ev_init(&r->poll_timer, poll_cb);
        r->poll_timer.data = r;
        ev_init(&r->grace_timer, grace_cb);
        r->grace_timer.data = r;
        ev_signal_init(&r->sig_term, signal_cb, SIGTERM);
        r->sig_term.data = r;
        ev_signal_init(&r->sig_int, signal_cb, SIGINT);
        r->sig_int.data = r;
        ev_signal_init(&r->sig_hup, signal_cb, SIGHUP);
        r->sig_hup.data = r;
        ev_init(&r->watchdog_timer, watchdog_cb);
        r->watchdog_timer.data = r;
        *ret = r;
        return 0;
}

int reclaimer_start(struct reclaimer *r) {
        char *warning = NULL;
        int ret;

        ret = state_load(r->state, now_wall_ms(), now_mono_ms(), r->opt.mode == RECLAIMER_PLAN, &warning);
        if (ret < 0)
                return log_error_errno(ret, "Failed to read state file %s: %s", r->config->state_file,
                                       strerror(-ret));
        if (warning) {
                log_warning("%s", warning);
                free(warning);
        }
        /* SIGTERM and SIGINT stop gracefully in every mode. */
        ev_signal_start(r->loop, &r->sig_term);
        ev_signal_start(r->loop, &r->sig_int);
        if (r->opt.mode == RECLAIMER_DAEMON) {
                uint64_t usec = 0;

                ev_signal_start(r->loop, &r->sig_hup);
                if (sd_watchdog_enabled(0, &usec) > 0 && usec > 0) {
                        /* Ping at twice the rate systemd expects. */
                        ev_timer_set(&r->watchdog_timer, 0., (double) usec / 2e6);
                        ev_timer_again(r->loop, &r->watchdog_timer);
                        log_debug("Watchdog enabled: pinging every %.3f s", (double) usec / 2e6);
                }
                log_info("Started: polling %s every %" PRIu64
                         " ms with %zu policies, %zu known sessions, token from %s%s",
                         r->config->gateway.url, r->config->poll_interval_ms, r->config->n_policies,
                         state_size(r->state), r->creds->source, dry_run(r) ? ", dry run" : "");
                if (r->config->n_policies == 0)
                        log_warning("No policies are configured: nothing will be reclaimed");
        }
        ev_timer_set(&r->poll_timer, 0., 0.);
        ev_timer_start(r->loop, &r->poll_timer);
        return 0;
}

int reclaimer_exit_status(const struct reclaimer *r) {
        return r->any_list_failed || r->cycles == 0 ? 1 : 0;
}

void reclaimer_free(struct reclaimer *r) {
        if (!r)
                return;
        if (r->state && r->opt.mode != RECLAIMER_PLAN && !r->cycle)
                save_state(r);
        ev_timer_stop(r->loop, &r->poll_timer);
        ev_timer_stop(r->loop, &r->grace_timer);
        ev_timer_stop(r->loop, &r->watchdog_timer);
        ev_signal_stop(r->loop, &r->sig_term);
        ev_signal_stop(r->loop, &r->sig_int);
        ev_signal_stop(r->loop, &r->sig_hup);
        /* Cancels what is still in flight; no callback runs. */
        http_free(r->http);
        if (r->cycle) {
                if (!r->cycle->list_failed && r->cycle->list)
                        save_state(r);
                session_list_free(r->cycle->list);
                free(r->cycle->jobs);
                free(r->cycle);
        }
        state_free(r->state);
        config_free(r->config);
        credentials_free(r->creds);
        config_free(r->pending_config);
        credentials_free(r->pending_creds);
        free(r);
}
