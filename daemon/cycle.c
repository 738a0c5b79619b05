/* One poll cycle, as one object with one state: LISTING (cycle-list.c) ->
 * the decision (cycle-decide.c) -> CLOSING (the jobs, here) -> ENDED. This
 * file owns the lifecycle: start, stop, reload, dispatch, the outcome of
 * every close, the end. See cycle-internal.h for how the parts call one
 * another. */
#include "cycle-internal.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "decide.h"
#include "gateway.h"
#include "log.h"
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

static void cycle_dispatch(struct cycle *c);
static void cycle_end(struct cycle *c);
static void job_finish(struct close_job *job, enum outcome outcome, const char *detail, long retry_after_s);

/* The one place a job's state changes: keeps c->in_flight right. */
static void job_set_state(struct close_job *job, enum job_state to) {
        struct cycle *c = job->cycle;

        assert(job->state != JOB_DONE);
        assert(to != job->state);
        if (job->state == JOB_IN_FLIGHT)
                c->in_flight--;
        if (to == JOB_IN_FLIGHT)
                c->in_flight++;
        job->state = to;
}

/* The one place the cycle's halt reason changes: only ever to a stronger
 * one. Returns whether it changed. */
static bool set_halt(struct cycle *c, enum cycle_halt why) {
        if (why <= c->halt)
                return false;
        c->halt = why;
        return true;
}

/* Finishes every close not yet sent; returns how many. */
static size_t finish_queued(struct cycle *c) {
        size_t n = 0;

        for (size_t i = 0; i < c->n_jobs; i++)
                if (c->jobs[i].state == JOB_QUEUED) {
                        job_set_state(&c->jobs[i], JOB_DONE);
                        n++;
                }
        c->n_requeued = 0;
        c->next_job = c->n_jobs;
        return n;
}

/* ha: checks that this instance may still send a request (a leader whose
 * lease etcd confirmed within lease/3). The first time it may not, in a
 * cycle, everything not yet sent is left to the leader, with a warning,
 * and nothing more is sent in this cycle. held is the number of closes the
 * caller holds back besides the queued ones (the one it was about to send),
 * for the warning. Returns whether it is fenced. */
static bool check_fence(struct cycle *c, size_t held) {
        size_t left;

        if (c->halt == HALT_FENCED)
                return true;
        if (!c->env.ha || ha_may_dispatch(c->env.ha, now_mono_ms()))
                return false;
        if (!set_halt(c, HALT_FENCED))
                return true; /* already stopping: nothing is sent anyway */
        left = finish_queued(c);
        c->res.standby += left;
        cycle_log(
                c, LOG_WARNING, NULL, NULL, 0,
                "HA: this instance (role %s) no longer holds a confirmed etcd lease; %zu close(s) not sent are left to the leader",
                ha_role_to_string(ha_role(c->env.ha)), left + held);
        return true;
}

/* A job that will not be sent after all, counted in *count: deferred (the
 * cycle is stopping) or left to the leader (ha: fenced). */
static void job_left(struct close_job *job, size_t *count) {
        job_set_state(job, JOB_DONE);
        (*count)++;
        cycle_dispatch(job->cycle);
}

/* Finishes every queued job that the latest decision no longer lets out.
 * Dispatch is held off until all are checked. */
static void skip_refused(struct cycle *c) {
        bool was_dispatching = c->dispatching;

        c->dispatching = true;
        for (size_t i = 0; i < c->n_jobs; i++) {
                struct close_job *job = &c->jobs[i];
                char buf[400];
                const char *why;

                if (job->state != JOB_QUEUED)
                        continue;
                why = cycle_refusal(c, job, buf, sizeof buf);
                if (why)
                        job_finish(job, OUTCOME_SKIPPED, why, 0);
                else
                        job->policy = c->decision.rows[job->index].policy;
        }
        c->dispatching = was_dispatching;
        if (!was_dispatching)
                cycle_dispatch(c);
}

/* Just before a request for the job goes out: it may go, and true is
 * returned, only if no stop or fence came and decide() (asked again if the
 * file or the list changed) still closes its session. Otherwise the job is
 * finished here (left, or skipped and logged) and false is returned. */
static bool job_prepare_send(struct close_job *job) {
        struct cycle *c = job->cycle;
        char buf[400];
        const char *why;

        if (c->halt == HALT_STOPPING) {
                job_left(job, &c->res.deferred);
                return false;
        }
        if (check_fence(c, 1)) {
                job_left(job, &c->res.standby);
                return false;
        }
        if (c->decision_stale) {
                if (cycle_redecide(c) < 0) {
                        job_finish(job, OUTCOME_SKIPPED, "out of memory while checking the decision", 0);
                        return false;
                }
                skip_refused(c);
        }
        why = cycle_refusal(c, job, buf, sizeof buf);
        if (why) {
                job_finish(job, OUTCOME_SKIPPED, why, 0);
                return false;
        }
        job->policy = c->decision.rows[job->index].policy;
        return true;
}

static uint32_t random_u32(void) {
        uint32_t v = 0;

        if (getrandom(&v, sizeof v, GRND_NONBLOCK) != (ssize_t) sizeof v)
                v = (uint32_t) now_mono_ms() * 2654435761u; /* jitter only; no secret */
        return v;
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

/* Whether a job is still to be sent: queued, or requeued after a throttle. */
static bool jobs_left(const struct cycle *c) {
        return c->n_requeued > 0 || c->next_job < c->n_jobs;
}

/* The closes left wait for the next cycle, and nothing more is sent in this
 * one (replies still to come are deferred too: see job_throttled()). */
static void give_up(struct cycle *c) {
        if (set_halt(c, HALT_GAVE_UP))
                c->res.deferred += finish_queued(c);
}

/* Holds back dispatch for pause_ms (keeping a longer pause already
 * running). A pause that would carry the cycle past poll_interval leaves what
 * is left to the next cycle, which starts only once the pause is over (the
 * account's throttle remembers it). */
static void pause_dispatch(struct cycle *c, uint64_t pause_ms, const char *why) {
        if (c->halt != HALT_NONE)
                return;
        if (outlasts_cycle(c, pause_ms)) {
                cycle_log(
                        c, LOG_WARNING, NULL, NULL, 0,
                        "%s: pausing %" PRIu64
                        " ms, longer than poll_interval; the closes left wait for the next cycle, after the pause",
                        why, pause_ms);
                give_up(c);
                return;
        }
        if (ev_is_active(&c->resume_timer) && !c->round_wait &&
            ev_timer_remaining(c->env.loop, &c->resume_timer) * 1000.0 >= (double) pause_ms)
                return;
        c->round_wait = false;
        cycle_log(c, LOG_INFO, NULL, NULL, 0, "%s: pausing %" PRIu64 " ms before sending more", why,
                  pause_ms);
        ev_timer_stop(c->env.loop, &c->resume_timer);
        ev_timer_set(&c->resume_timer, (double) pause_ms / 1000.0, 0.);
        ev_timer_start(c->env.loop, &c->resume_timer);
}

static void job_finish(struct close_job *job, enum outcome outcome, const char *detail, long retry_after_s) {
        struct cycle *c = job->cycle;
        const struct config *cfg = c->env.config;
        const char *id = job->session->session_id;

        job_set_state(job, JOB_DONE);
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
        /* A failed close came with a Retry-After: hold back the remaining
         * closes of this cycle (the session itself waits in its backoff). */
        if (retry_after_s > 0 && c->halt == HALT_NONE && jobs_left(c))
                pause_dispatch(c, account_pause_ms(c, retry_after_s),
                               "The gateway asked for a pause (Retry-After)");
        cycle_dispatch(c);
}

static void close_failed(struct close_job *job, const char *what, const char *detail, long retry_after_s) {
        char msg[640];

        snprintf(msg, sizeof msg, "%s: %s", what, detail);
        job_finish(job, OUTCOME_FAILED, msg, retry_after_s);
}

/* The gateway said "too frequent" (100012, HTTP 429 or 503) to this close
 * or its re-check: the account's pace learns from it (throttle.h: once per
 * round trip, however many replies say so), and the close is sent again in
 * this cycle, after the gateway's Retry-After or a 503's pause. It is no
 * failure of the session: no backoff, no reclaim entry. */
static void job_throttled(struct close_job *job, const struct http_response *resp) {
        struct cycle *c = job->cycle;
        const struct config *cfg = c->env.config;
        int64_t now = now_mono_ms();
        uint64_t pause_ms = account_pause_ms(c, resp->retry_after_s);
        /* A refusal of a call sent after the pace last changed: the pace
         * was wrong for it. Only these count towards giving the session up
         * for the cycle; a burst sent at the old pace does not. */
        bool fresh = !c->env.throttle || job->seq >= c->env.throttle->cut_seq;
        char why[200];

        if (c->env.throttle)
                pause_ms = throttle_refused(c->env.throttle, job->seq, reply_teaches_pace(resp), pause_ms,
                                            now - job->sent_ms, now);
        else if (pause_ms == 0)
                pause_ms = 1000;
        c->res.throttled++;
        /* The gateway refused the close: the session is not going after all. */
        if (c->sent[job->index]) {
                c->sent[job->index] = false;
                c->decision_stale |= c->decision.rows[job->index].outcome == DECIDE_SENT;
        }
        job_set_state(job, JOB_QUEUED);
        if (c->halt == HALT_FENCED) {
                job_set_state(job, JOB_DONE); /* left to the leader */
                c->res.standby++;
        } else if (c->halt != HALT_NONE || (fresh && ++job->requeues > MAX_REQUEUES)) {
                /* Deferred to a later cycle, still without a backoff. */
                job_set_state(job, JOB_DONE);
                c->res.deferred++;
                if (c->halt == HALT_NONE)
                        cycle_log(
                                c, LOG_WARNING, NULL, NULL, 0,
                                "Session %s was refused as too frequent %u times in a row; it waits for the next cycle",
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
        if (c->halt != HALT_STOPPING && pause_ms > 0)
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
        c->res.deferred += finish_queued(c);
        snprintf(msg, sizeof msg, "%s: unauthorized (%s)", endpoint, detail);
        job_finish(job, OUTCOME_FAILED, msg, -1);
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
static void on_postcheck_reply(const struct http_response *resp, void *userdata) {
        struct close_job *job = userdata;
        enum verdict v = reply_http_verdict(resp);
        struct gateway_error err;
        struct stat_result st;
        char buf[512];
        int r = -1;

        cycle_note_progress(job->cycle);
        memset(&err, 0, sizeof err);
        if (v == VERDICT_OK) {
                r = gateway_parse_stat(resp->body, resp->body_len, &st, &err);
                v = reply_api_verdict(r, &err);
        }
        cycle_record_call(job->cycle, job, "statsession", resp, r, &err);
        if (r >= 0)
                note_stream(job, &st);
        /* Throttled or unauthorized: a problem of the account, as on any
         * call; the close is sent again after the pause. */
        if (v == VERDICT_THROTTLED || v == VERDICT_AUTH) {
                job_account_problem(job, "statsession", v, resp, r, &err);
                return;
        }
        /* Closed, or a code that says the session is gone (110013, 110018,
         * 110022): the close has nothing left to do. */
        if ((r >= 0 && st.status == SESSION_CLOSED) || (r < 0 && v == VERDICT_GONE)) {
                job_finish(job, OUTCOME_ALREADY_CLOSED, NULL, 0);
                return;
        }
        if (reply_code_name(job->close_err.code))
                snprintf(buf, sizeof buf, "API error %ld (%s): %s", job->close_err.code,
                         reply_code_name(job->close_err.code), job->close_err.message);
        else
                snprintf(buf, sizeof buf, "API error %ld: %s", job->close_err.code, job->close_err.message);
        close_failed(job, "closesession", buf, 0);
}

static void on_close_reply(const struct http_response *resp, void *userdata) {
        struct close_job *job = userdata;
        struct cycle *c = job->cycle;
        enum verdict v = reply_http_verdict(resp);
        char buf[512];
        int parsed = -1;

        cycle_note_progress(c);
        memset(&job->close_err, 0, sizeof job->close_err);
        if (v == VERDICT_OK) {
                parsed = gateway_parse_ack(resp->body, resp->body_len, &job->close_err);
                v = reply_api_verdict(parsed, &job->close_err);
        }
        cycle_record_call(c, job, "closesession", resp, parsed, &job->close_err);
        switch (v) {
        case VERDICT_OK:
                job_finish(job, OUTCOME_CLOSED, NULL, 0);
                return;
        case VERDICT_GONE: /* 110013, 110018 or 110022: nothing left to close */
                job_finish(job, OUTCOME_ALREADY_CLOSED, NULL, 0);
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
        if (job->close_err.kind == GATEWAY_API_ERROR && c->halt != HALT_STOPPING) {
                /* ha: no statsession without a fresh lease, not even this one. */
                if (check_fence(c, 0)) {
                        close_failed(job, "closesession",
                                     "not confirmed: this instance no longer holds a confirmed etcd lease",
                                     0);
                        return;
                }
                /* An error the daemon does not know: maybe the session went
                 * away between the list and now. statsession says. */
                if (cycle_post_job(job, "statsession", on_postcheck_reply) >= 0)
                        return;
        }
        reply_describe_parse_error(parsed, &job->close_err, buf, sizeof buf);
        close_failed(job, "closesession", buf, 0);
}

static void start_close(struct close_job *job) {
        struct cycle *c = job->cycle;
        int ret;

        if (!job_prepare_send(job))
                return;
        ret = cycle_post_job(job, "closesession", on_close_reply);
        if (ret < 0) {
                close_failed(job, "closesession", strerror(-ret), 0);
                return;
        }
        c->sent[job->index] = true;
}

/* The list can be a poll interval old: statsession says what the session
 * is now, the list learns it, and decide() is asked again. */
static void on_precheck_reply(const struct http_response *resp, void *userdata) {
        struct close_job *job = userdata;
        struct cycle *c = job->cycle;
        struct session *s = &c->list->items[job->index];
        struct gateway_error err;
        struct stat_result st;
        enum verdict v;
        char buf[512];
        int parsed;

        cycle_note_progress(c);
        memset(&err, 0, sizeof err);
        parsed = -1;
        v = reply_http_verdict(resp);
        if (v == VERDICT_OK) {
                parsed = gateway_parse_stat(resp->body, resp->body_len, &st, &err);
                v = reply_api_verdict(parsed, &err);
        }
        cycle_record_call(c, job, "statsession", resp, parsed, &err);
        switch (v) {
        case VERDICT_OK:
                break;
        case VERDICT_GONE: /* 110018: the session does not exist any more */
                job_finish(job, OUTCOME_ALREADY_CLOSED, NULL, 0);
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
                job_finish(job, OUTCOME_ALREADY_CLOSED, NULL, 0);
                return;
        }
        if (s->status != st.status || s->started != st.started) {
                s->status = st.status;
                s->started = st.started;
                job->rechecked = true;
                c->decision_stale = true;
        }
        start_close(job);
}

/* Logs a change of the account's pace (a cut, or a cut undone). */
static void note_pace(struct cycle *c) {
        const struct throttle *t = c->env.throttle;

        if (!t || t->cuts + t->undone == c->pace_changes)
                return;
        c->pace_changes = t->cuts + t->undone;
        if (!t->last_undone)
                cycle_log(
                        c, LOG_INFO, NULL, NULL, 0,
                        "The gateway says the account calls too often (%.0f %% of the last %u replies refused): the pace is now %.1f calls/s",
                        100 * t->cut_share, t->n_recent, throttle_rate(t));
        else if (throttle_rate(t) > 0)
                cycle_log(
                        c, LOG_INFO, NULL, NULL, 0,
                        "Refusals as too frequent stayed at about %.0f %% of calls after the pace was cut: taken as noise, the pace is back to %.1f calls/s",
                        100 * t->noise, throttle_rate(t));
        else
                cycle_log(
                        c, LOG_INFO, NULL, NULL, 0,
                        "Refusals as too frequent stayed at about %.0f %% of calls after the pace was cut: taken as noise, the pace no longer limits",
                        100 * t->noise);
}

static bool needs_precheck(const struct cycle *c, const struct close_job *job) {
        return c->in_force->recheck_before_close &&
               (job->policy->kind == POLICY_NOT_STARTED || job->policy->kind == POLICY_MAX_AGE);
}

/* Starts jobs up to the account's window (gateway.max_parallel, narrowed
 * while the gateway throttles) and as its pace allows. Never recursive: a
 * job that fails at once calls job_finish(), whose cycle_dispatch() returns
 * at once, and this loop carries on. Ends the cycle when nothing is left. */
static void cycle_dispatch(struct cycle *c) {
        size_t window = c->env.config->gateway.max_parallel;

        if (c->dispatching || c->phase != CYCLE_CLOSING)
                return;
        c->dispatching = true;
        note_pace(c);
        if (c->env.throttle && c->env.throttle->window < window)
                window = c->env.throttle->window;
        while (c->halt == HALT_NONE && (!ev_is_active(&c->resume_timer) || c->round_wait) && jobs_left(c) &&
               c->in_flight < window) {
                struct close_job *job;
                uint64_t wait = c->env.throttle ? throttle_ready(c->env.throttle, now_mono_ms()) : 0;

                /* The gentle start sends a round trip's calls, then waits
                 * for their replies, each of which comes back here; a
                 * reply that never comes ends the round trip on the timer
                 * (a wait that replies do not hold up). */
                if (wait > 0 && c->in_flight > 0 &&
                    throttle_awaits_replies(c->env.throttle, now_mono_ms())) {
                        if (!ev_is_active(&c->resume_timer)) {
                                ev_timer_set(&c->resume_timer, (double) wait / 1000.0, 0.);
                                ev_timer_start(c->env.loop, &c->resume_timer);
                                c->round_wait = true;
                        }
                        break;
                }
                if (wait > 0) {
                        /* The account's pace (learnt, or gateway.max_rate)
                         * holds the next close back. In the daemon, not past
                         * poll_interval: then the closes left wait for the
                         * next cycle. --once has no next cycle: it waits. */
                        if (c->env.next_cycle && outlasts_cycle(c, wait)) {
                                cycle_log(
                                        c, LOG_WARNING, NULL, NULL, 0,
                                        "The account's pace (%.1f calls/s) leaves closes for longer than poll_interval; the closes left wait for the next cycle",
                                        throttle_rate(c->env.throttle));
                                give_up(c);
                                break;
                        }
                        ev_timer_stop(c->env.loop, &c->resume_timer);
                        ev_timer_set(&c->resume_timer, (double) wait / 1000.0, 0.);
                        ev_timer_start(c->env.loop, &c->resume_timer);
                        c->round_wait = false;
                        break;
                }
                if (c->n_requeued > 0) { /* the one refused longest ago first */
                        job = c->requeued[0];
                        memmove(c->requeued, c->requeued + 1, --c->n_requeued * sizeof *c->requeued);
                } else
                        job = &c->jobs[c->next_job++];
                if (job->state == JOB_DONE)
                        continue; /* skipped after a reload */
                job_set_state(job, JOB_IN_FLIGHT);
                if (!needs_precheck(c, job))
                        start_close(job);
                else if (job_prepare_send(job)) {
                        int ret;

                        ret = cycle_post_job(job, "statsession", on_precheck_reply);
                        if (ret < 0)
                                close_failed(job, "statsession before closing", strerror(-ret), 0);
                }
        }
        if (c->halt == HALT_STOPPING)
                c->res.deferred += finish_queued(c);
        c->dispatching = false;
        if (c->in_flight == 0 && !jobs_left(c))
                cycle_end(c);
}

static void resume_cb(struct ev_loop *loop, ev_timer *w, int revents) {
        struct cycle *c = w->data;

        (void) loop;
        (void) revents;
        c->round_wait = false;
        cycle_note_progress(w->data);
        cycle_dispatch(w->data);
}

/* The one place the phase changes: forward only, and the owner is told. */
static void set_phase(struct cycle *c, enum cycle_phase to) {
        assert(to > c->phase);
        c->phase = to;
        c->phase_fn(c, to, c->userdata);
}

/* Logs the summary and enters CYCLE_ENDED. */
static void cycle_end(struct cycle *c) {
        if (c->phase == CYCLE_ENDED)
                return;
        ev_timer_stop(c->env.loop, &c->resume_timer);
        c->res.duration_ms = now_mono_ms() - c->res.started_ms;
        if (!c->env.plan)
                cycle_log_summary(c);
        /* The runner frees the cycle from its advance step, not from here. */
        set_phase(c, CYCLE_ENDED);
}

/* The jobs of a decision that sends nothing: a standby's, or a dry run's. */
static void finish_unsent(struct cycle *c) {
        if (c->env.ha && ha_role(c->env.ha) != HA_LEADER) {
                /* A standby (or an instance cut off from etcd) lists and keeps
                 * its ages for a failover, but closes and re-checks nothing,
                 * and logs no per-session entry. */
                c->res.standby = finish_queued(c);
        } else if (c->decision.dry_run) {
                for (size_t i = 0; i < c->n_jobs; i++) {
                        job_set_state(&c->jobs[i], JOB_DONE);
                        cycle_log_reclaim(&c->jobs[i], OUTCOME_DRY_RUN, NULL);
                        c->res.dry_run++;
                }
                c->next_job = c->n_jobs;
        }
}

/* cycle-list.c is done: decide, then close (or, for --plan, end). */
static void on_listed(struct cycle *c) {
        if (c->res.list_failed || c->halt == HALT_STOPPING) {
                cycle_end(c);
                return;
        }
        if (cycle_decide(c) < 0 ||
            (c->n_jobs > 0 && !(c->requeued = calloc(c->n_jobs, sizeof *c->requeued)))) {
                /* Nothing was closed: a cycle with half a decision is no cycle. */
                cycle_list_failed(c, "out of memory while deciding", 0, 0);
                c->n_jobs = 0;
                cycle_end(c);
                return;
        }
        if (c->env.plan) {
                cycle_end(c);
                return;
        }
        finish_unsent(c);
        set_phase(c, CYCLE_CLOSING);
        cycle_dispatch(c);
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
        c->in_force = env->config;
        c->phase_fn = phase;
        c->userdata = userdata;
        c->phase = CYCLE_LISTING;
        c->res.started_ms = c->last_progress_ms = now_mono_ms();
        if (env->throttle)
                c->pace_changes = env->throttle->cuts + env->throttle->undone;
        ev_init(&c->resume_timer, resume_cb);
        c->resume_timer.data = c;
        r = cycle_list_start(c, on_listed);
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
        set_halt(c, HALT_STOPPING);
        if (ev_is_active(&c->resume_timer))
                ev_timer_stop(c->env.loop, &c->resume_timer);
        if (c->phase == CYCLE_CLOSING)
                cycle_dispatch(c); /* counts what was held back, and ends the cycle if idle */
}

void cycle_reconfigure(struct cycle *c, const struct config *cfg) {
        assert(c && cfg);
        c->in_force = cfg;
        c->reloaded = true;
        if (c->phase != CYCLE_CLOSING)
                return; /* still listing: the decision will be made with cfg */
        /* Every close not yet sent is checked now, not only when its turn
         * comes: an operator who protects a user as an emergency brake sees
         * the effect at once. */
        if (cycle_redecide(c) < 0) {
                c->decision_stale = true; /* asked again before each send */
                return;
        }
        skip_refused(c);
}

enum cycle_phase cycle_phase(const struct cycle *c) {
        return c->phase;
}

const struct cycle_result *cycle_result(const struct cycle *c) {
        return &c->res;
}

const struct decide_result *cycle_decision(const struct cycle *c, const struct session_list **list,
                                           const struct config **config) {
        if (c->res.list_failed || !c->list || !c->decision.rows)
                return NULL;
        *list = c->list;
        *config = c->in_force;
        return &c->decision;
}

void cycle_get_activity(struct cycle *c, struct cycle_activity *ret) {
        *ret = (struct cycle_activity){
                .last_progress_ms = c->last_progress_ms,
                /* Pending counts too: the timer has fired, its callback comes in this loop iteration. */
                .paused = (ev_is_active(&c->resume_timer) || ev_is_pending(&c->resume_timer)) &&
                          !c->round_wait,
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
        decide_result_done(&c->decision);
        free(c->ages);
        free(c->sent);
        free(c->jobs);
        free(c->requeued);
        free(c);
}
