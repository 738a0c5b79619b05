#include "cycle.h"

#include <assert.h>
#include <errno.h>
#include <stdarg.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "duration.h"
#include "gateway.h"
#include "log.h"
#include "plan.h"
#include "policy.h"
#include "throttle.h"
#include "util.h"

/* Failed closes back off from one poll interval up to this many. */
#define RETRY_CAP_INTERVALS 64
#define RETRY_CAP_MAX_MS    (3600 * 1000)
/* A session no longer listed keeps its first-seen time for this many poll
 * intervals, so that a list that now and then comes back short or empty
 * resets no age. */
#define STATE_GRACE_INTERVALS 10
/* A close refused as too frequent is tried again in the same cycle, after a
 * pause, at most this many times; then it waits for the next cycle. */
#define MAX_REQUEUES 8

/* The published Header.Code values the daemon acts on (see README). */
#define CODE_UNAUTHORIZED   100005
#define CODE_TOO_FREQUENT   100012
#define CODE_ALREADY_CLOSED 110013
#define CODE_NO_SESSION     110018

enum outcome {
        OUTCOME_CLOSED,
        OUTCOME_ALREADY_CLOSED,
        OUTCOME_FAILED,
        OUTCOME_DRY_RUN,
        OUTCOME_SKIPPED,
};

static const char *const outcome_names[] = {
        [OUTCOME_CLOSED] = "closed",   [OUTCOME_ALREADY_CLOSED] = "already_closed",
        [OUTCOME_FAILED] = "failed",   [OUTCOME_DRY_RUN] = "dry_run",
        [OUTCOME_SKIPPED] = "skipped",
};

struct close_job {
        struct cycle *cycle;
        const struct session *session; /* borrowed from cycle->list */
        const struct policy *policy;   /* borrowed from the config */
        uint64_t age_ms;
        struct gateway_error close_err;
        bool dispatched; /* counted in cycle->in_flight until finished */
        bool finished;   /* its outcome is logged */
        unsigned requeues;
        int64_t sent_ms; /* when its last request went out */
        /* What a statsession reply said about the stream, for the log. */
        bool has_stream_error;
        int stream_error_code;
        char stream_error[256];
};

struct cycle {
        struct cycle_env env;
        cycle_phase_fn phase_fn;
        void *userdata;
        enum cycle_phase phase;
        int64_t last_progress_ms;
        /* A configuration reloaded while this cycle runs: closes not yet sent
         * must still be selected by it (see cycle_reconfigure()). */
        const struct config *reloaded;
        struct session_list *list;
        struct close_job *jobs;
        size_t n_jobs, next_job, in_flight;
        /* Closes refused as too frequent, to send again after the pause. */
        struct close_job **requeued;
        size_t n_requeued;
        int64_t last_reaction_ms; /* the account last slowed down (a throttle) */
        bool auth_logged;
        ev_timer resume_timer; /* dispatch paused by a Retry-After */
        bool stopping;
        bool dispatching;
        struct cycle_result res;
        /* Listing per project and per asset (gateway.project_ids,
         * gateway.asset_vks): one request each. */
        struct project_list *projects;
        size_t n_projects, projects_pending;
        bool projects_failed;
        char projects_error[600];
        long projects_error_code, projects_retry_after_s;
};

struct project_list {
        struct cycle *cycle;
        const char *endpoint;   /* listsessionofprojectid or listsessionofassetvk */
        const char *what;       /* "project" or "asset" */
        const char *project_id; /* the project id or asset key, borrowed from the config */
        struct session_list *list;
};

static void dispatch(struct cycle *c);
static void job_done(struct close_job *job, enum outcome outcome, const char *detail, long retry_after_s);
static void job_throttled(struct close_job *job, const struct http_response *resp);
static void job_auth(struct close_job *job, const char *endpoint, const char *detail);

/* A response (or a resume) arrived: the cycle is making progress. */
static void progress(struct cycle *c) {
        c->last_progress_ms = now_mono_ms();
}

/* A job that will not be sent after all, because the cycle is stopping. */
static void job_deferred(struct close_job *job) {
        struct cycle *c = job->cycle;

        job->finished = true;
        c->res.deferred++;
        if (job->dispatched)
                c->in_flight--;
        dispatch(c);
}

/* Why the reloaded configuration, if any, no longer lets this job close its
 * session; NULL when it does. */
static const char *reloaded_refuses(const struct cycle *c, const struct close_job *job) {
        const struct config *cfg = c->reloaded;
        struct decision d;

        if (!cfg)
                return NULL;
        policy_decide(cfg, job->session, job->age_ms, &d);
        if (d.kind == DECISION_PROTECTED)
                return "the reloaded configuration protects it";
        if (cfg->dry_run)
                return "the reloaded configuration is a dry run";
        if (job->policy->kind == POLICY_OVER_CAPACITY) {
                for (size_t i = 0; i < cfg->n_policies; i++)
                        if (cfg->policies[i].kind == POLICY_OVER_CAPACITY &&
                            strcmp(cfg->policies[i].name, job->policy->name) == 0 &&
                            policy_selects_user(&cfg->policies[i], job->session->user_id))
                                return NULL;
                return "the reloaded configuration no longer selects it";
        }
        if (d.kind != DECISION_CLOSE || strcmp(d.policy->name, job->policy->name) != 0)
                return "the reloaded configuration no longer selects it";
        return NULL;
}

/* Just before a request for the job goes out: not after a stop, and after a
 * reload only while the new configuration still selects the session.
 * Otherwise the job is finished here and false is returned. */
static bool job_may_send(struct close_job *job) {
        const char *why;

        if (job->cycle->stopping) {
                job_deferred(job);
                return false;
        }
        why = reloaded_refuses(job->cycle, job);
        if (why) {
                job_done(job, OUTCOME_SKIPPED, why, 0);
                return false;
        }
        return true;
}

/* log_struct() with the cycle's account added to the fields. */
static void cycle_log(struct cycle *c, int priority, const char *message_id, const struct log_field *fields,
                      size_t n, const char *fmt, ...) __attribute__((format(printf, 6, 7)));

static void cycle_log(struct cycle *c, int priority, const char *message_id, const struct log_field *fields,
                      size_t n, const char *fmt, ...) {
        struct log_field all[16];
        va_list ap;

        if (n > ELEMENTSOF(all) - 1)
                n = ELEMENTSOF(all) - 1;
        for (size_t i = 0; i < n; i++)
                all[i] = fields[i];
        all[n++] = (struct log_field){ "IVH_ACCOUNT", c->env.account };
        va_start(ap, fmt);
        log_structv(priority, message_id, all, n, fmt, ap);
        va_end(ap);
}

/* Sends one call. field/value: the Payload field besides ReqId ("SessionId",
 * "VirtualmanProjectId", "AssetVirtualmanKey"), or NULL. Every call takes a
 * token of the account's max_rate bucket; dispatch() waits for one before
 * sending a new close, follow-up calls go at once and leave a debt. */
static int post(struct cycle *c, const char *endpoint, const char *field, const char *value,
                http_done_fn done, void *userdata) {
        const struct config *cfg = c->env.config;
        char reqid[GATEWAY_REQID_LEN + 1];
        char *url = NULL, *body = NULL;
        int ret;

        ret = gateway_new_reqid(reqid);
        if (ret >= 0)
                ret = gateway_build_url(cfg->gateway.url, endpoint, cfg->gateway.appkey, c->env.creds->token,
                                        time(NULL), c->env.signer, &url);
        if (ret >= 0)
                ret = gateway_build_body(reqid, field, value, &body);
        if (ret >= 0)
                ret = http_post_json(c->env.http, url, body, done, userdata);
        if (ret >= 0 && c->env.throttle)
                throttle_take(c->env.throttle, now_mono_ms());
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
                if (resp->retry_after_s > 0)
                        snprintf(buf, n, "HTTP status %ld (Retry-After %lds)", resp->status,
                                 resp->retry_after_s);
                else
                        snprintf(buf, n, "HTTP status %ld", resp->status);
                return true;
        }
        return false;
}

/* Describes what a gateway_parse_*() failure r means. */
static void describe_parse_error(int r, const struct gateway_error *err, char *buf, size_t n) {
        if (r == -ENOMEM)
                snprintf(buf, n, "out of memory while parsing the session list");
        else
                snprintf(buf, n, "%s%s",
                         err->kind == GATEWAY_API_ERROR ? "API error: " : "malformed response: ",
                         err->message);
}

/* What a reply means, by the published codes (README, "Gateway codes"). */
enum verdict {
        VERDICT_OK,
        VERDICT_GONE,      /* 110013 already closed, 110018 does not exist */
        VERDICT_THROTTLED, /* 100012, HTTP 429 or 503: slow down, account-wide */
        VERDICT_AUTH,      /* 100005, HTTP 401 or 403: an account problem */
        VERDICT_FAILED,    /* anything else */
};

/* The verdict from the transport alone: VERDICT_OK when a 200 arrived and
 * the body is to be parsed. */
static enum verdict http_verdict(const struct http_response *resp) {
        if (resp->result != CURLE_OK)
                return VERDICT_FAILED;
        if (resp->status == 401 || resp->status == 403)
                return VERDICT_AUTH;
        if (resp->status == 429 || resp->status == 503)
                return VERDICT_THROTTLED;
        return resp->status == 200 ? VERDICT_OK : VERDICT_FAILED;
}

/* A throttled reply: 100012 and HTTP 429 say that the account calls too
 * often, which teaches the pace; HTTP 503 that the gateway is overloaded. */
static bool teaches_pace(const struct http_response *resp) {
        return resp->status != 503;
}

static enum verdict api_verdict(int parsed, const struct gateway_error *err) {
        if (parsed >= 0)
                return VERDICT_OK;
        if (parsed == -ENOMEM || err->kind != GATEWAY_API_ERROR)
                return VERDICT_FAILED;
        switch (err->code) {
        case CODE_TOO_FREQUENT:
                return VERDICT_THROTTLED;
        case CODE_UNAUTHORIZED:
                return VERDICT_AUTH;
        case CODE_ALREADY_CLOSED:
        case CODE_NO_SESSION:
                return VERDICT_GONE;
        default:
                return VERDICT_FAILED;
        }
}

/* Counts one API call in the metrics. parsed: the gateway_parse_*() result
 * (ignored when the transport failed). */
static void record_call(struct cycle *c, const char *endpoint, const struct http_response *resp, int parsed,
                        const struct gateway_error *err) {
        enum verdict v = http_verdict(resp);
        enum metrics_result result;

        if (v == VERDICT_OK)
                v = api_verdict(parsed, err);
        if (v == VERDICT_THROTTLED)
                result = METRICS_THROTTLED;
        else if (v == VERDICT_AUTH)
                result = METRICS_AUTH_ERROR;
        else if (resp->result != CURLE_OK)
                result = METRICS_TRANSPORT_ERROR;
        else if (resp->status != 200)
                result = METRICS_HTTP_ERROR;
        else if (parsed >= 0)
                result = METRICS_OK;
        else
                result = err->kind == GATEWAY_API_ERROR ? METRICS_API_ERROR : METRICS_BAD_RESPONSE;
        metrics_api_call(c->env.metrics, endpoint, result, resp->total_s);
        if (c->env.throttle && v != VERDICT_THROTTLED && v != VERDICT_AUTH && resp->result == CURLE_OK)
                throttle_ok(c->env.throttle, now_mono_ms());
}

/* The account's credentials were refused: logged once per cycle with its
 * own MESSAGE_ID, and nothing more is sent this cycle. */
static void auth_refused(struct cycle *c, const char *endpoint, const char *detail) {
        struct log_field f[] = { { "IVH_ENDPOINT", endpoint }, { "IVH_ERROR", detail } };

        c->res.auth_failed = true;
        if (c->auth_logged)
                return;
        c->auth_logged = true;
        cycle_log(
                c, LOG_ERR, MESSAGE_ID_AUTH, f, ELEMENTSOF(f),
                "The gateway refused our credentials on %s (%s): check the appkey, the access token and the "
                "system clock; nothing is closed until it accepts them",
                endpoint, detail);
}

static uint32_t random_u32(void) {
        uint32_t v = 0;

        if (getrandom(&v, sizeof v, GRND_NONBLOCK) != (ssize_t) sizeof v)
                v = (uint32_t) now_mono_ms() * 2654435761u; /* jitter only; no secret */
        return v;
}

static void log_reclaim(struct close_job *job, enum outcome outcome, const char *detail) {
        struct cycle *c = job->cycle;
        const struct session *s = job->session;
        char age[32], status[16], age_h[32], code[32], id[96], user[96], scode[32];
        struct log_field f[12];
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
                f[n++] = (struct log_field){ outcome == OUTCOME_SKIPPED ? "IVH_REASON" : "IVH_ERROR",
                                             detail };
        if (job->close_err.kind == GATEWAY_API_ERROR) {
                snprintf(code, sizeof code, "%ld", job->close_err.code);
                f[n++] = (struct log_field){ "IVH_API_CODE", code };
        }
        if (job->has_stream_error) {
                snprintf(scode, sizeof scode, "%d", job->stream_error_code);
                f[n++] = (struct log_field){ "IVH_STREAM_ERROR_CODE", scode };
                f[n++] = (struct log_field){ "IVH_STREAM_ERROR", job->stream_error };
        }
        sanitize_printable(s->session_id, id, sizeof id);
        sanitize_printable(s->user_id, user, sizeof user);
        if (metrics_reclaim(c->env.metrics, job->policy->name, outcome_names[outcome]) < 0)
                cycle_log(c, LOG_WARNING, NULL, NULL, 0, "Out of memory counting a reclaim in the metrics");

        switch (outcome) {
        case OUTCOME_CLOSED:
                cycle_log(c, LOG_NOTICE, MESSAGE_ID_RECLAIM, f, n,
                          "Reclaimed session %s of user '%s' (policy %s, first seen %s ago)", id, user,
                          job->policy->name, age_h);
                break;
        case OUTCOME_ALREADY_CLOSED:
                cycle_log(c, LOG_INFO, MESSAGE_ID_RECLAIM, f, n,
                          "Session %s of user '%s' was already gone when policy %s closed it", id, user,
                          job->policy->name);
                break;
        case OUTCOME_DRY_RUN:
                cycle_log(c, LOG_NOTICE, MESSAGE_ID_RECLAIM, f, n,
                          "Would reclaim session %s of user '%s' (policy %s, first seen %s ago); dry run",
                          id, user, job->policy->name, age_h);
                break;
        case OUTCOME_SKIPPED:
                cycle_log(c, LOG_INFO, MESSAGE_ID_RECLAIM, f, n,
                          "Not reclaiming session %s of user '%s' after all: %s", id, user, detail);
                break;
        case OUTCOME_FAILED:
                cycle_log(c, LOG_WARNING, MESSAGE_ID_RECLAIM, f, n,
                          "Failed to reclaim session %s of user '%s' (policy %s): %s; will retry", id, user,
                          job->policy->name, detail ? detail : "unknown error");
                break;
        }
}

static void cycle_end(struct cycle *c) {
        const struct cycle_result *res = &c->res;
        char f_listed[24], f_due[24], f_closed[24], f_already[24], f_failed[24], f_deferred[24],
                f_protected[24], f_dry[24], f_dur[24], f_skipped[24], f_backoff[24], f_fused[24],
                f_malformed[24], f_throttled[24];
        struct log_field f[] = {
                { "IVH_LISTED", f_listed },       { "IVH_DUE", f_due },
                { "IVH_CLOSED", f_closed },       { "IVH_ALREADY_CLOSED", f_already },
                { "IVH_FAILED", f_failed },       { "IVH_DEFERRED", f_deferred },
                { "IVH_PROTECTED", f_protected }, { "IVH_DRY_RUN", f_dry },
                { "IVH_DURATION_MS", f_dur },     { "IVH_SKIPPED", f_skipped },
                { "IVH_BACKING_OFF", f_backoff }, { "IVH_FUSED", f_fused },
                { "IVH_MALFORMED", f_malformed }, { "IVH_THROTTLED", f_throttled },
        };

        if (c->phase == CYCLE_ENDED)
                return;
        ev_timer_stop(c->env.loop, &c->resume_timer);
        c->res.duration_ms = now_mono_ms() - c->res.started_ms;
        snprintf(f_listed, sizeof f_listed, "%zu", res->listed);
        snprintf(f_due, sizeof f_due, "%zu", res->due);
        snprintf(f_closed, sizeof f_closed, "%zu", res->closed);
        snprintf(f_already, sizeof f_already, "%zu", res->already_closed);
        snprintf(f_failed, sizeof f_failed, "%zu", res->failed);
        snprintf(f_deferred, sizeof f_deferred, "%zu", res->deferred);
        snprintf(f_protected, sizeof f_protected, "%zu", res->protected_due);
        snprintf(f_dry, sizeof f_dry, "%zu", res->dry_run);
        snprintf(f_dur, sizeof f_dur, "%" PRId64, res->duration_ms);
        snprintf(f_skipped, sizeof f_skipped, "%zu", res->skipped);
        snprintf(f_backoff, sizeof f_backoff, "%zu", res->backing_off);
        snprintf(f_fused, sizeof f_fused, "%zu", res->fused);
        snprintf(f_malformed, sizeof f_malformed, "%zu", res->malformed);
        snprintf(f_throttled, sizeof f_throttled, "%zu", res->throttled);
        if (!c->env.plan_out)
                cycle_log(c, res->list_failed ? LOG_WARNING : LOG_INFO, MESSAGE_ID_CYCLE, f, ELEMENTSOF(f),
                          "Cycle %s: listed=%s due=%s closed=%s already_closed=%s failed=%s skipped=%s "
                          "deferred=%s backing_off=%s fused=%s protected=%s malformed=%s throttled=%s "
                          "dry_run=%s duration=%sms",
                          res->list_failed ? "failed" : "done", f_listed, f_due, f_closed, f_already,
                          f_failed, f_skipped, f_deferred, f_backoff, f_fused, f_protected, f_malformed,
                          f_throttled, f_dry, f_dur);
        /* The runner frees the cycle from its advance step, not from here. */
        c->phase = CYCLE_ENDED;
        c->phase_fn(c, CYCLE_ENDED, c->userdata);
}

/* Leaves every close not yet sent to a later cycle. */
static void defer_queued(struct cycle *c) {
        for (size_t i = 0; i < c->n_requeued; i++)
                if (!c->requeued[i]->finished) {
                        c->requeued[i]->finished = true;
                        c->res.deferred++;
                }
        c->n_requeued = 0;
        for (; c->next_job < c->n_jobs; c->next_job++)
                if (!c->jobs[c->next_job].finished) {
                        c->jobs[c->next_job].finished = true;
                        c->res.deferred++;
                }
}

static void job_done(struct close_job *job, enum outcome outcome, const char *detail, long retry_after_s) {
        struct cycle *c = job->cycle;
        const struct config *cfg = c->env.config;
        const char *id = job->session->session_id;

        job->finished = true;
        log_reclaim(job, outcome, detail);
        switch (outcome) {
        case OUTCOME_CLOSED:
                c->res.closed++;
                retry_forget(c->env.retries, id);
                break;
        case OUTCOME_ALREADY_CLOSED:
                c->res.already_closed++;
                retry_forget(c->env.retries, id);
                break;
        case OUTCOME_FAILED: {
                uint64_t cap = cfg->poll_interval_ms * RETRY_CAP_INTERVALS;

                c->res.failed++;
                if (cap > RETRY_CAP_MAX_MS)
                        cap = RETRY_CAP_MAX_MS > cfg->poll_interval_ms ? RETRY_CAP_MAX_MS
                                                                       : cfg->poll_interval_ms;
                if (retry_after_s >= 0 &&
                    retry_failed(c->env.retries, id, now_mono_ms(), cfg->poll_interval_ms, cap,
                                 (uint64_t) retry_after_s * 1000, random_u32()) < 0)
                        cycle_log(c, LOG_WARNING, NULL, NULL, 0,
                                  "Out of memory recording a retry; the session is tried again next cycle");
                break;
        }
        case OUTCOME_SKIPPED:
                c->res.skipped++;
                break;
        case OUTCOME_DRY_RUN:
                c->res.dry_run++;
                break;
        }
        if (job->dispatched)
                c->in_flight--;
        /* The gateway asked us to slow down: hold back the remaining closes. */
        if (retry_after_s > 0 && c->next_job < c->n_jobs && !c->stopping) {
                uint64_t pause_ms = (uint64_t) retry_after_s * 1000;

                if (pause_ms < cfg->poll_interval_ms && !ev_is_active(&c->resume_timer)) {
                        cycle_log(c, LOG_INFO, NULL, NULL, 0,
                                  "The gateway asked for a pause of %lds; holding the remaining %zu closes",
                                  retry_after_s, c->n_jobs - c->next_job);
                        ev_timer_set(&c->resume_timer, (double) retry_after_s, 0.);
                        ev_timer_start(c->env.loop, &c->resume_timer);
                } else if (pause_ms >= cfg->poll_interval_ms) {
                        cycle_log(
                                c, LOG_INFO, NULL, NULL, 0,
                                "The gateway asked for a pause of %lds; deferring the remaining %zu closes "
                                "to a "
                                "later cycle",
                                retry_after_s, c->n_jobs - c->next_job);
                        defer_queued(c);
                }
        }
        dispatch(c);
}

static void close_failed(struct close_job *job, const char *what, const char *detail, long retry_after_s) {
        char msg[640];

        snprintf(msg, sizeof msg, "%s: %s", what, detail);
        job_done(job, OUTCOME_FAILED, msg, retry_after_s);
}

/* Holds back dispatch for pause_ms (keeping a longer pause already
 * running). A pause as long as poll_interval leaves what is left to the
 * next cycle. */
static void pause_dispatch(struct cycle *c, uint64_t pause_ms, const char *why) {
        const struct config *cfg = c->env.config;

        if (pause_ms >= cfg->poll_interval_ms) {
                cycle_log(c, LOG_WARNING, NULL, NULL, 0,
                          "%s: pausing %" PRIu64
                          " ms, longer than poll_interval; the closes left wait for the "
                          "next cycle",
                          why, pause_ms);
                defer_queued(c);
                return;
        }
        if (ev_is_active(&c->resume_timer) &&
            ev_timer_remaining(c->env.loop, &c->resume_timer) * 1000.0 >= (double) pause_ms)
                return;
        cycle_log(c, LOG_INFO, NULL, NULL, 0, "%s: pausing %" PRIu64 " ms before sending more", why,
                  pause_ms);
        ev_timer_stop(c->env.loop, &c->resume_timer);
        ev_timer_set(&c->resume_timer, (double) pause_ms / 1000.0, 0.);
        ev_timer_start(c->env.loop, &c->resume_timer);
}

/* The gateway said "too frequent" (100012, HTTP 429 or 503) to this close
 * or its re-check: the account slows down (a smaller window, a pause) and
 * the close is sent again after the pause, in this cycle. It is no failure
 * of the session: no backoff, no reclaim entry. */
static void job_throttled(struct close_job *job, const struct http_response *resp) {
        struct cycle *c = job->cycle;
        const struct config *cfg = c->env.config;
        int64_t now = now_mono_ms();
        /* Replies to calls sent before the account last slowed down come in
         * a burst: the account reacts once to them, not once per reply. The
         * gateway's Retry-After is honoured either way. Dispatch stops at a
         * reaction, so a call sent in its millisecond went out before it. */
        bool stale = c->last_reaction_ms > 0 && job->sent_ms <= c->last_reaction_ms;
        uint64_t pause_ms = (uint64_t) (resp->retry_after_s > 0 ? resp->retry_after_s : 0) * 1000;
        char why[200];

        if (!stale) {
                c->last_reaction_ms = now;
                pause_ms = c->env.throttle
                                   ? throttle_refused(c->env.throttle, teaches_pace(resp), pause_ms, now)
                                   : (pause_ms > 0 ? pause_ms : 1000);
        }
        c->res.throttled++;
        if (job->dispatched)
                c->in_flight--;
        job->dispatched = false;
        if (c->stopping || ++job->requeues > MAX_REQUEUES) {
                /* Deferred to a later cycle, still without a backoff. */
                job->finished = true;
                c->res.deferred++;
                if (!c->stopping)
                        cycle_log(
                                c, LOG_WARNING, NULL, NULL, 0,
                                "Session %s was refused as too frequent %u times in a row; it waits for the "
                                "next cycle",
                                job->session->session_id, MAX_REQUEUES + 1);
        } else
                c->requeued[c->n_requeued++] = job;
        {
                const char *what = teaches_pace(resp) ? "The gateway says the account calls too often"
                                                      : "The gateway is overloaded (HTTP 503)";
                unsigned window = c->env.throttle ? c->env.throttle->window : cfg->gateway.max_parallel;

                if (c->env.throttle && throttle_rate(c->env.throttle) > 0)
                        snprintf(why, sizeof why, "%s (now %u in flight and %.1f calls/s at most)", what,
                                 window, throttle_rate(c->env.throttle));
                else
                        snprintf(why, sizeof why, "%s (now %u in flight at most)", what, window);
        }
        /* A cycle never waits on throttles past poll_interval in all: what
         * is left then goes to the next cycle, with a warning. */
        if (!c->stopping && pause_ms > 0 &&
            now + (int64_t) pause_ms - c->res.started_ms >= (int64_t) cfg->poll_interval_ms)
                pause_ms = cfg->poll_interval_ms;
        if (!c->stopping && pause_ms > 0)
                pause_dispatch(c, pause_ms, why);
        dispatch(c);
}

/* The gateway refused our credentials on a call of this job: the close
 * fails without a backoff (it is not the session's fault), and nothing
 * more is sent this cycle. */
static void job_auth(struct close_job *job, const char *endpoint, const char *detail) {
        struct cycle *c = job->cycle;
        char msg[640];

        auth_refused(c, endpoint, detail);
        defer_queued(c);
        snprintf(msg, sizeof msg, "%s: unauthorized (%s)", endpoint, detail);
        job_done(job, OUTCOME_FAILED, msg, -1);
}

/* A call of the job was throttled or refused for auth: a problem of the
 * account, handled as such. */
static void job_account_problem(struct close_job *job, const char *endpoint, enum verdict v,
                                const struct http_response *resp, int parsed,
                                const struct gateway_error *err) {
        char buf[512];

        if (v == VERDICT_THROTTLED) {
                job_throttled(job, resp);
                return;
        }
        if (parsed < 0 && err->kind == GATEWAY_API_ERROR)
                snprintf(buf, sizeof buf, "Code %ld", err->code);
        else
                transport_failed(resp, buf, sizeof buf);
        job_auth(job, endpoint, buf);
}

/* Keeps what a statsession reply said about the stream, for the log. */
static void note_stream(struct close_job *job, const struct stat_result *st) {
        job->has_stream_error = st->has_error;
        if (st->has_error) {
                job->stream_error_code = st->error_code;
                snprintf(job->stream_error, sizeof job->stream_error, "%s", st->error_message);
        }
}

/* closesession answered an API error the daemon does not know: statsession
 * says whether the session is gone after all. Only status 2 or 110018
 * confirms it; anything else leaves the close failed. */
static void postcheck_done(const struct http_response *resp, void *userdata) {
        struct close_job *job = userdata;
        struct gateway_error err;
        struct stat_result st;
        char buf[512];
        int r;

        progress(job->cycle);
        memset(&err, 0, sizeof err);
        if (http_verdict(resp) == VERDICT_OK) {
                r = gateway_parse_stat(resp->body, resp->body_len, &st, &err);
                record_call(job->cycle, "statsession", resp, r, &err);
                if (r >= 0)
                        note_stream(job, &st);
                if ((r >= 0 && st.status == SESSION_CLOSED) ||
                    (r < 0 && err.kind == GATEWAY_API_ERROR && err.code == CODE_NO_SESSION)) {
                        job_done(job, OUTCOME_ALREADY_CLOSED, NULL, 0);
                        return;
                }
        } else
                record_call(job->cycle, "statsession", resp, -1, &err);
        snprintf(buf, sizeof buf, "API error %ld: %s", job->close_err.code, job->close_err.message);
        close_failed(job, "closesession", buf, 0);
}

static void close_done(const struct http_response *resp, void *userdata) {
        struct close_job *job = userdata;
        enum verdict v = http_verdict(resp);
        char buf[512];
        int parsed = -1;

        progress(job->cycle);
        memset(&job->close_err, 0, sizeof job->close_err);
        if (v == VERDICT_OK) {
                parsed = gateway_parse_ack(resp->body, resp->body_len, &job->close_err);
                v = api_verdict(parsed, &job->close_err);
        }
        record_call(job->cycle, "closesession", resp, parsed, &job->close_err);
        switch (v) {
        case VERDICT_OK:
                job_done(job, OUTCOME_CLOSED, NULL, 0);
                return;
        case VERDICT_GONE: /* 110013 or 110018: nothing left to close */
                job_done(job, OUTCOME_ALREADY_CLOSED, NULL, 0);
                return;
        case VERDICT_THROTTLED:
        case VERDICT_AUTH:
                job_account_problem(job, "closesession", v, resp, parsed, &job->close_err);
                return;
        case VERDICT_FAILED:
                break;
        }
        if (transport_failed(resp, buf, sizeof buf)) {
                close_failed(job, "closesession", buf, resp->retry_after_s);
                return;
        }
        if (job->close_err.kind == GATEWAY_API_ERROR && !job->cycle->stopping) {
                /* An error the daemon does not know: maybe the session went
                 * away between the list and now. statsession says. */
                if (post(job->cycle, "statsession", "SessionId", job->session->session_id, postcheck_done,
                         job) >= 0)
                        return;
        }
        describe_parse_error(parsed, &job->close_err, buf, sizeof buf);
        close_failed(job, "closesession", buf, 0);
}

static void start_close(struct close_job *job) {
        int ret;

        if (!job_may_send(job))
                return;
        job->sent_ms = now_mono_ms();
        ret = post(job->cycle, "closesession", "SessionId", job->session->session_id, close_done, job);
        if (ret < 0)
                close_failed(job, "closesession", strerror(-ret), 0);
}

/* The list can be a poll interval old: confirm that the session still
 * qualifies before closing it. */
static void precheck_done(const struct http_response *resp, void *userdata) {
        struct close_job *job = userdata;
        struct cycle *c = job->cycle;
        struct session now;
        struct gateway_error err;
        struct stat_result st;
        struct decision d;
        enum verdict v;
        char buf[512];
        int parsed;

        progress(c);
        memset(&err, 0, sizeof err);
        parsed = -1;
        v = http_verdict(resp);
        if (v == VERDICT_OK) {
                parsed = gateway_parse_stat(resp->body, resp->body_len, &st, &err);
                v = api_verdict(parsed, &err);
        }
        record_call(c, "statsession", resp, parsed, &err);
        switch (v) {
        case VERDICT_OK:
                break;
        case VERDICT_GONE: /* 110018: the session does not exist any more */
                job_done(job, OUTCOME_ALREADY_CLOSED, NULL, 0);
                return;
        case VERDICT_THROTTLED:
        case VERDICT_AUTH:
                job_account_problem(job, "statsession", v, resp, parsed, &err);
                return;
        case VERDICT_FAILED:
                if (!transport_failed(resp, buf, sizeof buf))
                        describe_parse_error(parsed, &err, buf, sizeof buf);
                close_failed(job, "statsession before closing", buf, resp->retry_after_s);
                return;
        }
        note_stream(job, &st);
        if (st.status == SESSION_CLOSED) {
                job_done(job, OUTCOME_ALREADY_CLOSED, NULL, 0);
                return;
        }
        now = *job->session;
        now.status = st.status;
        now.started = st.started;
        policy_decide(c->env.config, &now, job->age_ms, &d);
        if (d.kind != DECISION_CLOSE || d.policy != job->policy) {
                snprintf(buf, sizeof buf,
                         "statsession now reports SessionStatus %d, IsSessionStarted %s: policy %s no "
                         "longer applies",
                         st.status,
                         st.started == TRISTATE_TRUE    ? "true"
                         : st.started == TRISTATE_FALSE ? "false"
                                                        : "absent",
                         job->policy->name);
                job_done(job, OUTCOME_SKIPPED, buf, 0);
                return;
        }
        start_close(job);
}

static bool needs_precheck(const struct cycle *c, const struct close_job *job) {
        return c->env.config->recheck_before_close &&
               (job->policy->kind == POLICY_NOT_STARTED || job->policy->kind == POLICY_MAX_AGE);
}

/* Starts jobs up to max_parallel. Never recursive: a job that fails at once
 * calls job_done(), whose dispatch() returns here at once, and this loop
 * carries on. Ends the cycle when nothing is left. */
static bool jobs_left(const struct cycle *c) {
        return c->n_requeued > 0 || c->next_job < c->n_jobs;
}

/* Starts jobs up to the account's window (gateway.max_parallel, narrowed
 * while the gateway throttles) and as its max_rate allows. Never recursive:
 * a job that fails at once calls job_done(), whose dispatch() returns here
 * at once, and this loop carries on. Ends the cycle when nothing is left. */
static void dispatch(struct cycle *c) {
        size_t window = c->env.config->gateway.max_parallel;

        if (c->dispatching || c->phase == CYCLE_ENDED)
                return;
        c->dispatching = true;
        if (c->env.throttle && c->env.throttle->window < window)
                window = c->env.throttle->window;
        while (!c->stopping && !ev_is_active(&c->resume_timer) && jobs_left(c) && c->in_flight < window) {
                struct close_job *job;
                uint64_t wait = c->env.throttle ? throttle_ready(c->env.throttle, now_mono_ms()) : 0;

                if (wait > 0) {
                        /* gateway.max_rate: wait for the next token. */
                        ev_timer_set(&c->resume_timer, (double) wait / 1000.0, 0.);
                        ev_timer_start(c->env.loop, &c->resume_timer);
                        break;
                }
                job = c->n_requeued > 0 ? c->requeued[--c->n_requeued] : &c->jobs[c->next_job++];
                if (job->finished)
                        continue; /* skipped after a reload */
                job->dispatched = true;
                c->in_flight++;
                if (!needs_precheck(c, job))
                        start_close(job);
                else if (job_may_send(job)) {
                        int ret;

                        job->sent_ms = now_mono_ms();
                        ret = post(c, "statsession", "SessionId", job->session->session_id, precheck_done,
                                   job);
                        if (ret < 0)
                                close_failed(job, "statsession before closing", strerror(-ret), 0);
                }
        }
        if (c->stopping)
                defer_queued(c);
        c->dispatching = false;
        if (c->in_flight == 0 && !jobs_left(c))
                cycle_end(c);
}

static void resume_cb(struct ev_loop *loop, ev_timer *w, int revents) {
        (void) loop;
        (void) revents;
        progress(w->data);
        dispatch(w->data);
}

static int compare_job_age_desc(const void *a, const void *b) {
        const struct close_job *x = a, *y = b;

        return x->age_ms < y->age_ms ? 1 : x->age_ms > y->age_ms ? -1 : 0;
}

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

/* The share fuse: a cycle that would close too large a share of the live
 * sessions acts on none of them. A gateway that suddenly reports every
 * session as unstarted must not empty the account. */
static size_t apply_share_fuse(struct cycle *c, size_t n_due) {
        const struct config *cfg = c->env.config;
        size_t live = 0, due_live = 0, kept = 0;
        char f_due[24], f_live[24], f_share[24], f_min[24];
        struct log_field f[] = {
                { "IVH_DUE_LIVE", f_due },
                { "IVH_LIVE", f_live },
                { "IVH_MAX_SHARE", f_share },
                { "IVH_MIN_SESSIONS", f_min },
        };

        /* Entries never acted on still hold a slot: those listed as live
         * count as live. Junk without a readable live status does not, or
         * it would dilute the fuse. */
        for (size_t i = 0; i < c->list->n_malformed; i++)
                live += c->list->malformed[i].live;
        for (size_t i = 0; i < c->list->n; i++)
                live += policy_session_is_live(&c->list->items[i]);
        for (size_t i = 0; i < n_due; i++)
                due_live += policy_session_is_live(c->jobs[i].session);
        if (!policy_share_fuse_trips(&cfg->fuse, live, due_live))
                return n_due;

        for (size_t i = 0; i < n_due; i++)
                if (!policy_session_is_live(c->jobs[i].session))
                        c->jobs[kept++] = c->jobs[i];
        c->res.fused = due_live;
        snprintf(f_due, sizeof f_due, "%zu", due_live);
        snprintf(f_live, sizeof f_live, "%zu", live);
        snprintf(f_share, sizeof f_share, "%g%%", cfg->fuse.max_share * 100);
        snprintf(f_min, sizeof f_min, "%u", cfg->fuse.min_sessions);
        cycle_log(
                c, LOG_WARNING, MESSAGE_ID_SHARE_FUSE, f, ELEMENTSOF(f),
                "Not closing any of %zu due live sessions: that is more than fuse.max_share (%s) of the %zu "
                "live sessions and more than fuse.min_sessions (%u); check the policies and the gateway",
                due_live, f_share, live, cfg->fuse.min_sessions);
        return kept;
}

/* Appends a job; room is made only for what is due (usually nothing, not
 * the whole list). */
static int push_job(struct cycle *c, size_t *n, size_t *cap, const struct session *s,
                    const struct policy *pol, uint64_t age_ms) {
        if (*n == *cap) {
                size_t ncap = *cap ? *cap * 2 : 16;
                struct close_job *jobs = realloc(c->jobs, ncap * sizeof *jobs);

                if (!jobs)
                        return -ENOMEM;
                c->jobs = jobs;
                *cap = ncap;
        }
        c->jobs[(*n)++] = (struct close_job){
                .cycle = c,
                .session = s,
                .policy = pol,
                .age_ms = age_ms,
        };
        return 0;
}

static bool has_capacity_policy(const struct config *cfg) {
        for (size_t i = 0; i < cfg->n_policies; i++)
                if (cfg->policies[i].kind == POLICY_OVER_CAPACITY)
                        return true;
        return false;
}

/* The over_capacity policies pick their victims among what the timer
 * policies left. */
static int decide_capacity(struct cycle *c, const uint64_t *ages, size_t *n_due, size_t *cap) {
        const struct session_list *l = c->list;
        struct capacity_victim *victims = malloc(l->n * sizeof *victims);
        bool *closing = calloc(l->n, sizeof *closing);
        size_t n_victims = 0;
        int r = -ENOMEM;

        if (!victims || !closing)
                goto out;
        for (size_t j = 0; j < *n_due; j++)
                closing[c->jobs[j].session - l->items] = true;
        r = policy_capacity_victims(c->env.config, l, ages, closing, victims, &n_victims);
        for (size_t v = 0; r >= 0 && v < n_victims; v++)
                r = push_job(c, n_due, cap, &l->items[victims[v].index], victims[v].policy,
                             ages[victims[v].index]);
out:
        free(victims);
        free(closing);
        return r;
}

/* ages[i] is the age of c->list->items[i], from state_sync().
 * Returns 0, or -ENOMEM (nothing is then closed). */
static int decide(struct cycle *c, const uint64_t *ages) {
        const struct config *cfg = c->env.config;
        int64_t now = now_mono_ms();
        size_t n_due = 0, n_ready = 0, cap = 0;
        int r;

        for (size_t i = 0; i < c->list->n; i++) {
                const struct session *s = &c->list->items[i];
                struct decision d;

                policy_decide(cfg, s, ages[i], &d);
                if (d.kind == DECISION_PROTECTED && d.policy && d.age_ms >= d.policy->after_ms)
                        c->res.protected_due++;
                if (d.kind != DECISION_CLOSE)
                        continue;
                if (push_job(c, &n_due, &cap, s, d.policy, d.age_ms) < 0)
                        return -ENOMEM;
        }
        if (has_capacity_policy(cfg) && c->list->n > 0) {
                r = decide_capacity(c, ages, &n_due, &cap);
                if (r < 0)
                        return r;
        }
        c->res.due = n_due;
        n_due = apply_share_fuse(c, n_due);

        /* Sessions that failed recently wait for their backoff to pass. */
        for (size_t i = 0; i < n_due; i++) {
                uint64_t wait_ms = 0;

                if (retry_blocked(c->env.retries, c->jobs[i].session->session_id, now, &wait_ms)) {
                        c->res.backing_off++;
                        cycle_log(c, LOG_DEBUG, NULL, NULL, 0,
                                  "Session %s is due but waits %" PRIu64 " ms after an earlier failure",
                                  c->jobs[i].session->session_id, wait_ms);
                        continue;
                }
                c->jobs[n_ready++] = c->jobs[i];
        }
        c->n_jobs = n_ready;

        /* The fuse: close the oldest first, leave the rest for later cycles. */
        if (n_ready > cfg->max_closes_per_cycle) {
                char due[32], limit[32];
                struct log_field f[2] = { { "IVH_DUE", due }, { "IVH_LIMIT", limit } };

                qsort(c->jobs, n_ready, sizeof c->jobs[0], compare_job_age_desc);
                c->n_jobs = cfg->max_closes_per_cycle;
                c->res.deferred += n_ready - c->n_jobs;
                snprintf(due, sizeof due, "%zu", n_ready);
                snprintf(limit, sizeof limit, "%u", cfg->max_closes_per_cycle);
                cycle_log(c, LOG_WARNING, MESSAGE_ID_FUSE, f, 2,
                          "%zu sessions are due but max_closes_per_cycle is %u: closing the %u oldest, "
                          "deferring %zu to later cycles",
                          n_ready, cfg->max_closes_per_cycle, cfg->max_closes_per_cycle,
                          n_ready - c->n_jobs);
        }
        return 0;
}

static void after_list(struct cycle *c);

/* Reads one list reply into *ret. Returns 0, or <0 with buf saying why,
 * *ret_code the API code (0 when none); a throttle or an auth refusal is
 * recorded for the account. */
static int read_list(struct cycle *c, const char *endpoint, const struct http_response *resp,
                     struct session_list **ret, char *buf, size_t n, long *ret_code) {
        struct gateway_error err;
        enum verdict v = http_verdict(resp);
        int r = -EIO;

        progress(c);
        c->res.list_bytes += resp->body_len;
        memset(&err, 0, sizeof err);
        *ret_code = 0;
        if (v == VERDICT_OK) {
                r = gateway_parse_list(resp->body, resp->body_len, ret, &err);
                v = api_verdict(r, &err);
        }
        record_call(c, endpoint, resp, r, &err);
        if (r >= 0)
                return 0;
        if (!transport_failed(resp, buf, n))
                describe_parse_error(r, &err, buf, n);
        if (r != -ENOMEM && err.kind == GATEWAY_API_ERROR)
                *ret_code = err.code;
        if (v == VERDICT_THROTTLED) {
                c->res.throttled++;
                if (c->env.throttle)
                        (void) throttle_refused(c->env.throttle, false,
                                                (uint64_t) resp->retry_after_s * 1000, now_mono_ms());
        } else if (v == VERDICT_AUTH)
                auth_refused(c, endpoint, buf);
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
                plan_print(c->env.plan_out, c->env.config, c->list, c->env.state, now_mono_ms());
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
                ret = decide(c, ages);
        }
        free(ages);
        if (ret < 0) {
                /* Nothing was closed: a cycle with half a decision is no cycle. */
                list_failed(c, "out of memory while deciding", 0, 0);
                c->n_jobs = 0;
                cycle_end(c);
                return;
        }

        if (c->env.dry_run) {
                for (size_t i = 0; i < c->n_jobs; i++) {
                        log_reclaim(&c->jobs[i], OUTCOME_DRY_RUN, NULL);
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
        dispatch(c);
}

/* Sends listsessionofuin, or one listsessionofprojectid per configured
 * project. Returns 0 when at least one request is under way. */
static int start_listing(struct cycle *c) {
        const struct glob_list *projects = &c->env.config->gateway.project_ids;
        const struct glob_list *assets = &c->env.config->gateway.asset_vks;
        size_t n = projects->n + assets->n;
        int r = 0;

        if (n == 0)
                return post(c, "listsessionofuin", NULL, NULL, list_done, c);
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
                r = post(c, pl->endpoint, asset ? "AssetVirtualmanKey" : "VirtualmanProjectId",
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

int cycle_start(const struct cycle_env *env, cycle_phase_fn phase, void *userdata, struct cycle **ret) {
        struct cycle *c = calloc(1, sizeof *c);
        int r;

        if (!c) {
                struct log_field f[] = { { "IVH_ACCOUNT", env->account } };

                log_struct(LOG_ERR, MESSAGE_ID_CYCLE_FAILED, f, 1,
                           "Failed to start a cycle: out of memory; retrying next cycle");
                return -ENOMEM;
        }
        c->env = *env;
        c->phase_fn = phase;
        c->userdata = userdata;
        c->phase = CYCLE_LISTING;
        c->res.started_ms = c->last_progress_ms = now_mono_ms();
        ev_init(&c->resume_timer, resume_cb);
        c->resume_timer.data = c;
        r = start_listing(c);
        if (r < 0) {
                char buf[128];
                struct log_field f[] = { { "IVH_ERROR", buf } };

                snprintf(buf, sizeof buf, "cannot start request: %s", strerror(-r));
                cycle_log(c, LOG_ERR, MESSAGE_ID_CYCLE_FAILED, f, 1,
                          "Failed to list sessions: %s; retrying next cycle", buf);
                free(c->projects);
                free(c);
                return r;
        }
        *ret = c;
        return 0;
}

void cycle_stop(struct cycle *c) {
        assert(c);
        if (c->phase == CYCLE_ENDED)
                return;
        c->stopping = true;
        if (ev_is_active(&c->resume_timer))
                ev_timer_stop(c->env.loop, &c->resume_timer);
        if (c->phase == CYCLE_CLOSING)
                dispatch(c); /* counts what was held back, and ends the cycle if idle */
}

void cycle_reconfigure(struct cycle *c, const struct config *cfg) {
        assert(c && cfg);
        c->reloaded = cfg;
        if (c->phase != CYCLE_CLOSING)
                return; /* still listing: decide() will use the old file, job_may_send() the new */
        /* Check every close not yet sent now, not only when its turn comes:
         * an operator who protects a user as an emergency brake sees the
         * effect at once. dispatch() is held off until all are checked. */
        c->dispatching = true;
        for (size_t i = c->next_job; i < c->n_jobs; i++) {
                struct close_job *job = &c->jobs[i];
                const char *why;

                if (job->finished)
                        continue;
                why = reloaded_refuses(c, job);
                if (why)
                        job_done(job, OUTCOME_SKIPPED, why, 0);
        }
        c->dispatching = false;
        dispatch(c);
}

enum cycle_phase cycle_phase(const struct cycle *c) {
        return c->phase;
}

const struct cycle_result *cycle_result(const struct cycle *c) {
        return &c->res;
}

void cycle_get_progress(struct cycle *c, struct cycle_progress *ret) {
        *ret = (struct cycle_progress){
                .last_progress_ms = c->last_progress_ms,
                /* Pending counts too: the timer has fired, its callback comes in this loop iteration. */
                .paused = ev_is_active(&c->resume_timer) || ev_is_pending(&c->resume_timer),
                .in_flight = c->in_flight,
        };
}

void cycle_free(struct cycle *c) {
        if (!c)
                return;
        ev_timer_stop(c->env.loop, &c->resume_timer);
        for (size_t i = 0; i < c->n_projects; i++)
                session_list_free(c->projects[i].list);
        free(c->projects);
        session_list_free(c->list);
        free(c->jobs);
        free(c->requeued);
        free(c);
}
