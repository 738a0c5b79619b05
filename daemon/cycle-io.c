/* What a cycle sends and logs: one call to the gateway, its count in the
 * metrics and the pace, and the journal entries of a reclaim, a failed list
 * and the cycle's summary. Calls nothing else of the cycle. */
#include "cycle-internal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "duration.h"
#include "gateway.h"
#include "log.h"
#include "metrics.h"
#include "policy.h"
#include "reply.h"
#include "throttle.h"
#include "util.h"

static const char *const outcome_names[] = {
        [OUTCOME_CLOSED] = "closed",   [OUTCOME_ALREADY_CLOSED] = "already_closed",
        [OUTCOME_FAILED] = "failed",   [OUTCOME_DRY_RUN] = "dry_run",
        [OUTCOME_SKIPPED] = "skipped",
};

/* A response (or a resume) arrived: the cycle is making progress. */
void cycle_note_progress(struct cycle *c) {
        c->last_progress_ms = now_mono_ms();
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
 * "VirtualmanProjectId", "AssetVirtualmanKey"), or NULL. Not paced: list
 * calls are paced by poll_interval (see cycle_post_job()). */
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
        /* The URL carries a signature derived from the token: wipe it. */
        if (url)
                explicit_bzero(url, strlen(url));
        free(url);
        free(body);
        return ret;
}

/* Closes and their re-checks take a token of the account's pace;
 * cycle_dispatch() waits for one before sending a new close, follow-up calls
 * go at once and leave a debt. The list calls never wait for a token (or
 * starve the closes of one when poll_interval is short). */
int cycle_post_job(struct close_job *job, const char *endpoint, http_done_fn done) {
        struct cycle *c = job->cycle;
        int ret;

        job->sent_ms = now_mono_ms();
        ret = cycle_post(c, endpoint, "SessionId", job->session->session_id, done, job);
        if (ret >= 0 && c->env.throttle)
                job->seq = throttle_take(c->env.throttle, job->sent_ms);
        return ret;
}

/* Counts one API call in the metrics. parsed: the gateway_parse_*() result
 * (ignored when the transport failed). */
void cycle_record_call(struct cycle *c, struct close_job *job, const char *endpoint,
                       const struct http_response *resp, int parsed, const struct gateway_error *err) {
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
        if (job && c->env.throttle && v != VERDICT_THROTTLED) {
                int64_t now = now_mono_ms();

                /* Any answer but a throttle passed the gateway's limit. */
                if (v != VERDICT_AUTH && resp->result == CURLE_OK)
                        throttle_ok(c->env.throttle, job->seq, now - job->sent_ms, now);
                else
                        throttle_other(c->env.throttle, job->seq, now);
        }
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
                "The gateway refused our credentials on %s (%s): check the appkey, the access token and the system clock; nothing is closed until it accepts them",
                endpoint, detail);
}

/* The webhook event of a reclaim's outcome: reclaimed, would_reclaim or
 * close_failed (a close given up for this cycle); a skipped close says
 * nothing. */
static void notify_reclaim(struct cycle *c, const struct close_job *job, enum outcome outcome) {
        const struct session *s = job->session;
        enum notify_type t;

        switch (outcome) {
        case OUTCOME_CLOSED:
        case OUTCOME_ALREADY_CLOSED:
                t = NOTIFY_RECLAIMED;
                break;
        case OUTCOME_DRY_RUN:
                t = NOTIFY_WOULD_RECLAIM;
                break;
        case OUTCOME_FAILED:
                t = NOTIFY_CLOSE_FAILED;
                break;
        default:
                return;
        }
        /* A dry run decides the same every cycle: said once while the
         * session stays listed, as due_soon is. */
        (t == NOTIFY_WOULD_RECLAIM ? notify_once : notify_session)(
                c->env.notify, t,
                &(struct notify_session){
                        .session_id = s->session_id,
                        .user_id = s->user_id,
                        .policy = job->policy->name,
                        .policy_kind = policy_kind_to_string(job->policy->kind),
                        .outcome = outcome_names[outcome],
                        .project_id = session_project(s),
                        .asset_vk = session_asset(s),
                        .age_sec = job->age_ms / 1000,
                        .session_status = s->status,
                        .dry_run = outcome == OUTCOME_DRY_RUN,
                });
}

void cycle_log_reclaim(struct close_job *job, enum outcome outcome, const char *detail) {
        struct cycle *c = job->cycle;
        const struct session *s = job->session;
        char age[32], status[16], age_h[32], code[32], id[96], user[96], scode[32], ctype[16];
        struct log_field f[15];
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
        /* Which project or asset the session belongs to, when known. */
        if (session_project(s))
                f[n++] = (struct log_field){ "IVH_PROJECT_ID", session_project(s) };
        if (session_asset(s))
                f[n++] = (struct log_field){ "IVH_ASSET_VK", session_asset(s) };
        if (s->create_type >= 0) {
                snprintf(ctype, sizeof ctype, "%d", s->create_type);
                f[n++] = (struct log_field){ "IVH_CREATE_TYPE", ctype };
        }
        if (detail && *detail)
                f[n++] = (struct log_field){ outcome == OUTCOME_SKIPPED ? "IVH_REASON" : "IVH_ERROR",
                                             detail };
        /* The code that made the outcome: a failure's, or the one that said
         * the session was gone (not a throttle's the job went on from). */
        if (job->close_err.kind == GATEWAY_API_ERROR &&
            (outcome == OUTCOME_FAILED || (outcome == OUTCOME_ALREADY_CLOSED &&
                                           reply_api_verdict(-EPROTO, &job->close_err) == VERDICT_GONE))) {
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
        /* The webhook's queue has the event before the journal has the
         * entry: a crash between the two loses nothing that was logged. */
        notify_reclaim(c, job, outcome);
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

/* Whether a summary says something a person reading the journal needs:
 * anything acted on or refused, or a count that differs from the previous
 * cycle's (the listed count alone is traffic, not news). */
static bool summary_is_news(const struct cycle_result *res, const struct cycle_result *before) {
        if (!before || res->list_failed || before->list_failed)
                return true;
        if (res->closed || res->already_closed || res->failed || res->skipped || res->dry_run ||
            res->deferred || res->throttled)
                return true;
        return res->due != before->due || res->backing_off != before->backing_off ||
               res->fused != before->fused || res->protected_due != before->protected_due ||
               res->malformed != before->malformed || res->standby != before->standby;
}

void cycle_log_summary(struct cycle *c) {
        const struct cycle_result *res = &c->res;
        int level = res->list_failed                        ? LOG_WARNING
                    : summary_is_news(res, c->env.previous) ? LOG_INFO
                                                            : LOG_DEBUG;
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
        cycle_log(
                c, level, MESSAGE_ID_CYCLE, f, ELEMENTSOF(f) - (c->env.ha ? 0 : 1),
                "Cycle %s: listed=%s due=%s closed=%s already_closed=%s failed=%s skipped=%s deferred=%s backing_off=%s fused=%s protected=%s malformed=%s throttled=%s dry_run=%s duration=%sms%s%s",
                res->list_failed ? "failed" : "done", f_listed, f_due, f_closed, f_already, f_failed,
                f_skipped, f_deferred, f_backoff, f_fused, f_protected, f_malformed, f_throttled, f_dry,
                f_dur, c->env.ha ? " standby=" : "", c->env.ha ? f_standby : "");
}

void cycle_list_failed(struct cycle *c, const char *what, long code, long retry_after_s) {
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
