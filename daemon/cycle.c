#include "cycle-internal.h"

#include <assert.h>
#include <errno.h>
#include <stdarg.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "decide.h"
#include "duration.h"
#include "gateway.h"
#include "log.h"
#include "plan.h"
#include "policy.h"
#include "reply.h"
#include "throttle.h"
#include "util.h"

/* Failed closes back off from one poll interval up to this many. */
#define RETRY_CAP_INTERVALS 64
#define RETRY_CAP_MAX_MS    (3600 * 1000)
/* A close refused as too frequent is tried again in the same cycle, after a
 * pause, at most this many times; then it waits for the next cycle. */
#define MAX_REQUEUES 8

static const char *const outcome_names[] = {
        [OUTCOME_CLOSED] = "closed",   [OUTCOME_ALREADY_CLOSED] = "already_closed",
        [OUTCOME_FAILED] = "failed",   [OUTCOME_DRY_RUN] = "dry_run",
        [OUTCOME_SKIPPED] = "skipped",
};

static void job_done(struct close_job *job, enum outcome outcome, const char *detail, long retry_after_s);
static void job_throttled(struct close_job *job, const struct http_response *resp);
static void job_auth(struct close_job *job, const char *endpoint, const char *detail);
static uint64_t account_pause_ms(const struct cycle *c, long retry_after_s);
static void pause_dispatch(struct cycle *c, uint64_t pause_ms, const char *why);

/* A response (or a resume) arrived: the cycle is making progress. */
void cycle_progress(struct cycle *c) {
        c->last_progress_ms = now_mono_ms();
}

/* Finishes every close not yet sent; returns how many. */
static size_t finish_queued(struct cycle *c) {
        size_t n = 0;

        for (size_t i = 0; i < c->n_requeued; i++)
                if (!c->requeued[i]->finished) {
                        c->requeued[i]->finished = true;
                        n++;
                }
        c->n_requeued = 0;
        for (; c->next_job < c->n_jobs; c->next_job++)
                if (!c->jobs[c->next_job].finished) {
                        c->jobs[c->next_job].finished = true;
                        n++;
                }
        return n;
}

/* ha: whether this instance may not send a request now (a standby, or a
 * leader whose lease etcd has not confirmed within lease/3). The first time
 * in a cycle, everything not yet sent is left to the leader, with a
 * warning: nothing more is sent in this cycle. */
static bool fenced(struct cycle *c) {
        size_t left = 0;

        if (!c->env.ha || ha_may_dispatch(c->env.ha, now_mono_ms()))
                return false;
        if (c->fenced)
                return true;
        c->fenced = true;
        left = finish_queued(c);
        c->res.standby += left;
        cycle_log(
                c, LOG_WARNING, NULL, NULL, 0,
                "HA: this instance (role %s) no longer holds a confirmed etcd lease; %zu close(s) not sent "
                "are left to the leader",
                ha_role_to_string(ha_role(c->env.ha)), left);
        return true;
}

/* A job that will not be sent after all, counted in *count: deferred (the
 * cycle is stopping) or left to the leader (ha: fenced). */
static void job_left(struct close_job *job, size_t *count) {
        struct cycle *c = job->cycle;

        job->finished = true;
        (*count)++;
        if (job->dispatched)
                c->in_flight--;
        cycle_dispatch(c);
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
                job_left(job, &job->cycle->res.deferred);
                return false;
        }
        if (fenced(job->cycle)) {
                job_left(job, &job->cycle->res.standby);
                return false;
        }
        why = reloaded_refuses(job->cycle, job);
        if (why) {
                job_done(job, OUTCOME_SKIPPED, why, 0);
                return false;
        }
        return true;
}

void cycle_log(struct cycle *c, int priority, const char *message_id, const struct log_field *fields,
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
 * "VirtualmanProjectId", "AssetVirtualmanKey"), or NULL. Every call about a
 * session takes a token of the account's pace; cycle_dispatch() waits for one
 * before sending a new close, follow-up calls go at once and leave a debt. */
int cycle_post(struct cycle *c, const char *endpoint, const char *field, const char *value,
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
        /* Closes and their re-checks are paced; the list calls are paced by
         * poll_interval, and never wait for a token (or starve the closes of
         * one when poll_interval is short). */
        if (ret >= 0 && c->env.throttle && field && strcmp(field, "SessionId") == 0)
                throttle_take(c->env.throttle, now_mono_ms());
        /* The URL carries a signature derived from the token: wipe it. */
        if (url)
                explicit_bzero(url, strlen(url));
        free(url);
        free(body);
        return ret;
}

/* Counts one API call in the metrics. parsed: the gateway_parse_*() result
 * (ignored when the transport failed). */
void cycle_record_call(struct cycle *c, const char *endpoint, const struct http_response *resp, int parsed,
                       const struct gateway_error *err) {
        enum verdict v = reply_http_verdict(resp);
        enum metrics_result result;

        if (v == VERDICT_OK)
                v = reply_api_verdict(parsed, err);
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
void cycle_auth_refused(struct cycle *c, const char *endpoint, const char *detail) {
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

void cycle_log_reclaim(struct close_job *job, enum outcome outcome, const char *detail) {
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

void cycle_end(struct cycle *c) {
        const struct cycle_result *res = &c->res;
        char f_listed[24], f_due[24], f_closed[24], f_already[24], f_failed[24], f_deferred[24],
                f_protected[24], f_dry[24], f_dur[24], f_skipped[24], f_backoff[24], f_fused[24],
                f_malformed[24], f_throttled[24], f_standby[24];
        struct log_field f[] = {
                { "IVH_LISTED", f_listed },       { "IVH_DUE", f_due },
                { "IVH_CLOSED", f_closed },       { "IVH_ALREADY_CLOSED", f_already },
                { "IVH_FAILED", f_failed },       { "IVH_DEFERRED", f_deferred },
                { "IVH_PROTECTED", f_protected }, { "IVH_DRY_RUN", f_dry },
                { "IVH_DURATION_MS", f_dur },     { "IVH_SKIPPED", f_skipped },
                { "IVH_BACKING_OFF", f_backoff }, { "IVH_FUSED", f_fused },
                { "IVH_MALFORMED", f_malformed }, { "IVH_THROTTLED", f_throttled },
                { "IVH_STANDBY", f_standby }, /* only with ha: (the last field) */
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
        snprintf(f_standby, sizeof f_standby, "%zu", res->standby);
        if (!c->env.plan_out)
                cycle_log(c, res->list_failed ? LOG_WARNING : LOG_INFO, MESSAGE_ID_CYCLE, f,
                          ELEMENTSOF(f) - (c->env.ha ? 0 : 1),
                          "Cycle %s: listed=%s due=%s closed=%s already_closed=%s failed=%s skipped=%s "
                          "deferred=%s backing_off=%s fused=%s protected=%s malformed=%s throttled=%s "
                          "dry_run=%s duration=%sms%s%s",
                          res->list_failed ? "failed" : "done", f_listed, f_due, f_closed, f_already,
                          f_failed, f_skipped, f_deferred, f_backoff, f_fused, f_protected, f_malformed,
                          f_throttled, f_dry, f_dur, c->env.ha ? " standby=" : "",
                          c->env.ha ? f_standby : "");
        /* The runner frees the cycle from its advance step, not from here. */
        c->phase = CYCLE_ENDED;
        c->phase_fn(c, CYCLE_ENDED, c->userdata);
}

/* Leaves every close not yet sent to a later cycle. */
static void defer_queued(struct cycle *c) {
        c->res.deferred += finish_queued(c);
}

static void job_done(struct close_job *job, enum outcome outcome, const char *detail, long retry_after_s) {
        struct cycle *c = job->cycle;
        const struct config *cfg = c->env.config;
        const char *id = job->session->session_id;

        job->finished = true;
        cycle_log_reclaim(job, outcome, detail);
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
        /* A failed close came with a Retry-After: hold back the remaining
         * closes of this cycle (the session itself waits in its backoff). */
        if (retry_after_s > 0 && !c->stopping) {
                uint64_t pause_ms = account_pause_ms(c, retry_after_s);

                if (c->next_job < c->n_jobs || c->n_requeued > 0)
                        pause_dispatch(c, pause_ms, "The gateway asked for a pause (Retry-After)");
        }
        cycle_dispatch(c);
}

static void close_failed(struct close_job *job, const char *what, const char *detail, long retry_after_s) {
        char msg[640];

        snprintf(msg, sizeof msg, "%s: %s", what, detail);
        job_done(job, OUTCOME_FAILED, msg, retry_after_s);
}

/* A Retry-After as a pause of the account, capped as the list's is. */
static uint64_t account_pause_ms(const struct cycle *c, long retry_after_s) {
        uint64_t cap = reply_retry_after_cap_ms(c->env.config->poll_interval_ms);
        uint64_t ms = retry_after_s > 0 ? (uint64_t) retry_after_s * 1000 : 0;

        return ms > cap ? cap : ms;
}

/* Whether waiting wait_ms from now would carry the cycle past
 * poll_interval: a cycle never waits that long. */
static bool outlasts_cycle(const struct cycle *c, uint64_t wait_ms) {
        return now_mono_ms() + (int64_t) wait_ms - c->res.started_ms >=
               (int64_t) c->env.config->poll_interval_ms;
}

/* The closes left wait for the next cycle, and nothing more is sent in this
 * one (replies still to come are deferred too: see job_throttled()). */
static void give_up(struct cycle *c) {
        c->gave_up = true;
        defer_queued(c);
}

/* Holds back dispatch for pause_ms (keeping a longer pause already
 * running). A pause as long as poll_interval leaves what is left to the
 * next cycle. */
/* Holds back dispatch for pause_ms (keeping a longer pause already
 * running). A pause that would carry the cycle past poll_interval leaves what
 * is left to the next cycle, which starts only once the pause is over (the
 * account's throttle remembers it). */
static void pause_dispatch(struct cycle *c, uint64_t pause_ms, const char *why) {
        if (c->gave_up)
                return;
        if (outlasts_cycle(c, pause_ms)) {
                cycle_log(c, LOG_WARNING, NULL, NULL, 0,
                          "%s: pausing %" PRIu64
                          " ms, longer than poll_interval; the closes left wait for the next cycle, "
                          "after the pause",
                          why, pause_ms);
                give_up(c);
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
        uint64_t pause_ms = account_pause_ms(c, resp->retry_after_s);
        char why[200];

        if (!stale) {
                c->last_reaction_ms = now;
                pause_ms = c->env.throttle ? throttle_refused(c->env.throttle, reply_teaches_pace(resp),
                                                              pause_ms, now)
                                           : (pause_ms > 0 ? pause_ms : 1000);
        } else if (pause_ms > 0 && c->env.throttle)
                throttle_hold(c->env.throttle, pause_ms, now);
        if (c->env.throttle)
                pause_ms = throttle_paused_ms(c->env.throttle, now);
        c->res.throttled++;
        if (job->dispatched)
                c->in_flight--;
        job->dispatched = false;
        if (c->stopping || c->gave_up || ++job->requeues > MAX_REQUEUES) {
                /* Deferred to a later cycle, still without a backoff. */
                job->finished = true;
                c->res.deferred++;
                if (!c->stopping && !c->gave_up)
                        cycle_log(
                                c, LOG_WARNING, NULL, NULL, 0,
                                "Session %s was refused as too frequent %u times in a row; it waits for the "
                                "next cycle",
                                job->session->session_id, MAX_REQUEUES + 1);
        } else
                c->requeued[c->n_requeued++] = job;
        {
                const char *what = reply_teaches_pace(resp) ? "The gateway says the account calls too often"
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
        if (!c->stopping && pause_ms > 0)
                pause_dispatch(c, pause_ms, why);
        cycle_dispatch(c);
}

/* The gateway refused our credentials on a call of this job: the close
 * fails without a backoff (it is not the session's fault), and nothing
 * more is sent this cycle. */
static void job_auth(struct close_job *job, const char *endpoint, const char *detail) {
        struct cycle *c = job->cycle;
        char msg[640];

        cycle_auth_refused(c, endpoint, detail);
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
                reply_transport_failed(resp, buf, sizeof buf);
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
        enum verdict v = reply_http_verdict(resp);
        struct gateway_error err;
        struct stat_result st;
        char buf[512];
        int r = -1;

        cycle_progress(job->cycle);
        memset(&err, 0, sizeof err);
        if (v == VERDICT_OK) {
                r = gateway_parse_stat(resp->body, resp->body_len, &st, &err);
                v = reply_api_verdict(r, &err);
        }
        cycle_record_call(job->cycle, "statsession", resp, r, &err);
        if (r >= 0)
                note_stream(job, &st);
        /* Throttled or unauthorized: a problem of the account, as on any
         * call; the close is sent again after the pause. */
        if (v == VERDICT_THROTTLED || v == VERDICT_AUTH) {
                job_account_problem(job, "statsession", v, resp, r, &err);
                return;
        }
        if ((r >= 0 && st.status == SESSION_CLOSED) ||
            (r < 0 && err.kind == GATEWAY_API_ERROR && err.code == CODE_NO_SESSION)) {
                job_done(job, OUTCOME_ALREADY_CLOSED, NULL, 0);
                return;
        }
        snprintf(buf, sizeof buf, "API error %ld: %s", job->close_err.code, job->close_err.message);
        close_failed(job, "closesession", buf, 0);
}

static void close_done(const struct http_response *resp, void *userdata) {
        struct close_job *job = userdata;
        enum verdict v = reply_http_verdict(resp);
        char buf[512];
        int parsed = -1;

        cycle_progress(job->cycle);
        memset(&job->close_err, 0, sizeof job->close_err);
        if (v == VERDICT_OK) {
                parsed = gateway_parse_ack(resp->body, resp->body_len, &job->close_err);
                v = reply_api_verdict(parsed, &job->close_err);
        }
        cycle_record_call(job->cycle, "closesession", resp, parsed, &job->close_err);
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
        if (reply_transport_failed(resp, buf, sizeof buf)) {
                close_failed(job, "closesession", buf, resp->retry_after_s);
                return;
        }
        if (job->close_err.kind == GATEWAY_API_ERROR && !job->cycle->stopping) {
                /* ha: no statsession without a fresh lease, not even this one. */
                if (fenced(job->cycle)) {
                        close_failed(job, "closesession",
                                     "not confirmed: this instance no longer holds a confirmed etcd lease",
                                     0);
                        return;
                }
                /* An error the daemon does not know: maybe the session went
                 * away between the list and now. statsession says. */
                if (cycle_post(job->cycle, "statsession", "SessionId", job->session->session_id,
                               postcheck_done, job) >= 0)
                        return;
        }
        reply_describe_parse_error(parsed, &job->close_err, buf, sizeof buf);
        close_failed(job, "closesession", buf, 0);
}

static void start_close(struct close_job *job) {
        int ret;

        if (!job_may_send(job))
                return;
        job->sent_ms = now_mono_ms();
        ret = cycle_post(job->cycle, "closesession", "SessionId", job->session->session_id, close_done, job);
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

        cycle_progress(c);
        memset(&err, 0, sizeof err);
        parsed = -1;
        v = reply_http_verdict(resp);
        if (v == VERDICT_OK) {
                parsed = gateway_parse_stat(resp->body, resp->body_len, &st, &err);
                v = reply_api_verdict(parsed, &err);
        }
        cycle_record_call(c, "statsession", resp, parsed, &err);
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
                if (!reply_transport_failed(resp, buf, sizeof buf))
                        reply_describe_parse_error(parsed, &err, buf, sizeof buf);
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
 * calls job_done(), whose cycle_dispatch() returns here at once, and this loop
 * carries on. Ends the cycle when nothing is left. */
static bool jobs_left(const struct cycle *c) {
        return c->n_requeued > 0 || c->next_job < c->n_jobs;
}

/* Starts jobs up to the account's window (gateway.max_parallel, narrowed
 * while the gateway throttles) and as its max_rate allows. Never recursive:
 * a job that fails at once calls job_done(), whose cycle_dispatch() returns here
 * at once, and this loop carries on. Ends the cycle when nothing is left. */
void cycle_dispatch(struct cycle *c) {
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
                        /* The account's pace (learnt, or gateway.max_rate)
                         * holds the next close back. In the daemon, not past
                         * poll_interval: then the closes left wait for the
                         * next cycle. --once has no next cycle: it waits. */
                        if (c->env.next_cycle && outlasts_cycle(c, wait)) {
                                cycle_log(c, LOG_WARNING, NULL, NULL, 0,
                                          "The account's pace (%.1f calls/s) leaves closes for longer than "
                                          "poll_interval; the closes left wait for the next cycle",
                                          throttle_rate(c->env.throttle));
                                give_up(c);
                                break;
                        }
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
                        ret = cycle_post(c, "statsession", "SessionId", job->session->session_id,
                                         precheck_done, job);
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
        cycle_progress(w->data);
        cycle_dispatch(w->data);
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
        r = cycle_start_listing(c);
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
                cycle_dispatch(c); /* counts what was held back, and ends the cycle if idle */
}

void cycle_reconfigure(struct cycle *c, const struct config *cfg) {
        assert(c && cfg);
        c->reloaded = cfg;
        if (c->phase != CYCLE_CLOSING)
                return; /* still listing: decide() will use the old file, job_may_send() the new */
        /* Check every close not yet sent now, not only when its turn comes:
         * an operator who protects a user as an emergency brake sees the
         * effect at once. cycle_dispatch() is held off until all are checked. */
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
        cycle_dispatch(c);
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
