/* One account's runner: its poll timer, the start and the end of its
 * cycles, and advance(), the one place that moves it on (see the rule in
 * reclaimer-internal.h). */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <malloc.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "reclaimer-internal.h"

#include "duration.h"
#include "idset.h"
#include "log.h"
#include "metrics.h"
#include "preflight.h"
#include "reply.h"
#include "retry.h"
#include "state.h"
#include "util.h"

#define MAX_RESPONSE_SIZE (16u * 1024 * 1024)
/* SIGUSR1 never starts cycles closer together than this (or poll_interval,
 * if shorter), and never before a list Retry-After has passed. */
#define SWEEP_MIN_GAP_MS 1000
/* After a cycle whose list replies were this large, free memory is handed
 * back to the kernel. */
#define TRIM_AFTER_LIST_BYTES (1024 * 1024)

void runner_set_state(struct runner *u, enum runner_state to) {
        static const bool allowed[][RUNNER_DONE + 1] = {
                [RUNNER_IDLE] = { [RUNNER_CYCLING] = true, [RUNNER_DONE] = true },
                [RUNNER_CYCLING] = { [RUNNER_ENDED] = true },
                [RUNNER_ENDED] = { [RUNNER_IDLE] = true, [RUNNER_DONE] = true },
                [RUNNER_DONE] = { false },
        };

        if (!allowed[u->run_state][to]) {
                /* A bug: better a restart by systemd than a runner whose
                 * state nobody can reason about. */
                log_error("Internal error: runner state %d -> %d", (int) u->run_state, (int) to);
                abort();
        }
        u->run_state = to;
}

/* What the runner is doing, for the log and STATUS=. */
const char *runner_doing(const struct runner *u) {
        switch (u->run_state) {
        case RUNNER_IDLE:
                return "idle";
        case RUNNER_CYCLING:
                if (u->r->stopping)
                        return "stopping";
                return cycle_phase(u->cycle) == CYCLE_LISTING ? "listing" : "closing";
        case RUNNER_ENDED:
                return "ended";
        case RUNNER_DONE:
                return "done";
        }
        return "?";
}

/* An account's token, by one lookup for every command: under the unit,
 * preflight's judgement of the file LoadCredential= copies (missing, or
 * readable by others) first; then credentials_load(); run by hand (no
 * $CREDENTIALS_DIRECTORY), also the file the shipped unit would hand over,
 * where --check-config finds it. */
int runner_account_token(const struct config *a, const struct credentials *previous,
                         struct credentials **ret, struct error *err) {
        char *path;
        int r = preflight_unit_credential(a, err);

        if (r < 0)
                return r;
        r = credentials_load(&a->gateway, previous, a->account, ret, err);
        if (r != -ENOKEY || getenv("CREDENTIALS_DIRECTORY"))
                return r;
        path = preflight_unit_credential_path(a);
        if (!path)
                return -ENOMEM;
        if (access(path, F_OK) == 0) {
                struct gateway_config g = a->gateway;

                g.accesstoken_file = path;
                error_done(err);
                r = credentials_load(&g, previous, a->account, ret, err);
        }
        free(path);
        return r;
}

/* ha_lease_ms (0 without ha:) caps every request at 2/3 of the lease: a
 * close sent while the lease is fresh (less than lease/3 after the last
 * confirmed keepalive) is over, answered or abandoned, before the lease can
 * expire and a standby take over. */
static struct http_options runner_http_options(const struct config *c, uint64_t ha_lease_ms) {
        uint64_t timeout = c->gateway.timeout_ms;

        if (ha_lease_ms > 0 && timeout > ha_lease_ms * 2 / 3)
                timeout = ha_lease_ms * 2 / 3;
        return (struct http_options){
                .ca_file = c->gateway.ca_file,
                .timeout_ms = (long) timeout,
                .connect_timeout_ms = (long) timeout,
                .max_response_size = MAX_RESPONSE_SIZE,
                /* closes in flight, the list calls and a spare */
                .max_connections = (long) c->gateway.max_parallel + 2 + (long) c->gateway.project_ids.n,
        };
}

void runner_log(const struct runner *u, int priority, const char *fmt, ...) {
        struct log_field f[] = { { "IVH_ACCOUNT", runner_account(u) } };
        va_list ap;

        va_start(ap, fmt);
        log_structv(priority, NULL, f, 1, fmt, ap);
        va_end(ap);
}

/* The next cycle starts poll_interval after the previous one started, and
 * never before it ended. A Retry-After from the list call can push it later,
 * by at most reply_retry_after_cap_ms() (max(poll_interval, 5 min)), and the real time
 * of the next poll is then logged. */
void runner_schedule_next(struct runner *u, int64_t started_mono_ms, uint64_t retry_after_ms,
                          bool after_cycle) {
        int64_t now = now_mono_ms(), next = started_mono_ms + (int64_t) u->config->poll_interval_ms;
        uint64_t cap = reply_retry_after_cap_ms(u->config->poll_interval_ms);
        uint64_t wait = retry_after_ms > cap ? cap : retry_after_ms;
        double delay;

        if (next <= now && after_cycle)
                runner_log(u, LOG_WARNING,
                           "The cycle took longer than poll_interval (%" PRIu64
                           " ms); starting the next one now",
                           u->config->poll_interval_ms);
        /* Every list Retry-After, also one shorter than poll_interval, holds
         * back a sweep (SIGUSR1) and a reload's new schedule. */
        if (wait > 0 && now + (int64_t) wait > u->not_before_ms)
                u->not_before_ms = now + (int64_t) wait;
        if (retry_after_ms > 0 && now + (int64_t) retry_after_ms > next) {
                char when[32], asked[32], waiting[32];
                time_t t = time(NULL) + (time_t) ((wait + 999) / 1000);
                struct tm tm;

                next = now + (int64_t) wait;
                localtime_r(&t, &tm);
                strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S", &tm);
                duration_format(retry_after_ms, asked, sizeof asked);
                duration_format(wait, waiting, sizeof waiting);
                runner_log(
                        u, LOG_WARNING,
                        "The gateway asked to wait %s (Retry-After) before listing again%s; next poll at %s, in %s",
                        asked, wait < retry_after_ms ? ", more than the daemon allows" : "", when, waiting);
        }
        if (next < u->not_before_ms)
                next = u->not_before_ms; /* a reload or a sweep does not cut a Retry-After short */
        delay = next > now ? (double) (next - now) / 1000.0 : 0.;
        u->next_poll_wall_s = (int64_t) time(NULL) + (int64_t) (delay + 0.5);
        ev_timer_stop(u->r->loop, &u->poll_timer);
        ev_timer_set(&u->poll_timer, delay, 0.);
        ev_timer_start(u->r->loop, &u->poll_timer);
}

static void runner_save_state(struct runner *u) {
        bool dirty;
        int ret;

        if (u->r->opt.mode == RECLAIMER_PLAN)
                return;
        dirty = state_dirty(u->state);
        ret = state_save(u->state, now_wall_ms(), now_mono_ms());
        if (dirty)
                metrics_state_write(u->metrics, ret >= 0);
        if (ret < 0)
                runner_log(
                        u, LOG_ERR,
                        "Failed to write state file %s: %s; first-seen times are kept in memory, retrying after the next cycle",
                        u->config->state_file, strerror(-ret));
}

/* ha_release()'s revoke was answered: nothing is left to do. */
static void ha_released(void *userdata) {
        struct reclaimer *r = userdata;

        ev_break(r->loop, EVBREAK_ALL);
}

/* Swaps in a reloaded configuration; only between cycles (IDLE or from
 * advance()), never from a callback of the HTTP handle it may replace. */
void runner_apply_pending(struct runner *u) {
        struct http_options old_opt, new_opt;
        struct http *http = NULL;
        char every[32];
        int ret;

        assert(!u->cycle);
        if (!u->pending_config)
                return;
        old_opt = runner_http_options(u->config, u->r->ha_lease_ms);
        new_opt = runner_http_options(u->pending_config, u->r->ha_lease_ms);
        if (old_opt.timeout_ms != new_opt.timeout_ms || old_opt.max_connections != new_opt.max_connections ||
            !!old_opt.ca_file != !!new_opt.ca_file ||
            (old_opt.ca_file && strcmp(old_opt.ca_file, new_opt.ca_file) != 0)) {
                ret = http_new(u->r->loop, &new_opt, &http);
                if (ret < 0) {
                        runner_log(
                                u, LOG_ERR,
                                "Failed to apply the reloaded configuration: %s; keeping the previous one",
                                strerror(-ret));
                        config_free(u->pending_config);
                        credentials_free(u->pending_creds);
                        credentials_free(u->pending_notify_secret);
                        u->pending_config = NULL;
                        u->pending_creds = NULL;
                        u->pending_notify_secret = NULL;
                        return;
                }
                http_free(u->http); /* nothing is in flight between cycles */
                u->http = http;
        }
        config_free(u->config);
        credentials_free(u->creds);
        credentials_free(u->notify_secret);
        u->config = u->pending_config;
        u->creds = u->pending_creds;
        u->notify_secret = u->pending_notify_secret;
        u->pending_notify_secret = NULL;
        runner_notify_reconfigure(u);
        throttle_configure(&u->throttle, u->config->gateway.max_parallel, u->config->gateway.max_rate,
                           now_mono_ms());
        u->pending_config = NULL;
        u->pending_creds = NULL;
        u->last_comparable = false; /* the first cycle under the new file logs its summary */
        gateway_signer_reset(&u->signer);
        duration_format(u->config->poll_interval_ms, every, sizeof every);
        runner_log(u, LOG_INFO,
                   "The reloaded configuration is now in effect: %zu policies, polling every %s%s",
                   u->config->n_policies, every, runner_dry_run(u) ? ", dry run" : "");
}

/* Arms the runner's advance watcher: advance() runs before the loop next
 * waits, outside every callback. */
void runner_kick(struct runner *u) {
        ev_prepare_start(u->r->loop, &u->advance_watcher);
}

/* The cycle's phase function: a callback from inside the cycle (and so from
 * inside curl's completion handling). It records, and arms advance(). */
static void cycle_phase_changed(struct cycle *c, enum cycle_phase phase, void *userdata) {
        struct runner *u = userdata;

        (void) c;
        if (phase == CYCLE_ENDED)
                runner_set_state(u, RUNNER_ENDED);
        runner_kick(u);
}

/* A wall-clock step is harmless to ages (they run on CLOCK_BOOTTIME) but
 * makes the wall-clock times in the state file stale: write it again. */
static void check_clock(struct runner *u) {
        int64_t step = state_check_clock(u->state, now_wall_ms(), now_mono_ms());
        char amount[32];
        uint64_t size;

        if (step == 0)
                return;
        /* The two clocks are read one after the other: the milliseconds are
         * noise (a step of 1h could read as 59m59.99s). Steps are over 2 s:
         * tell them in whole seconds. */
        size = (uint64_t) (step < 0 ? -step : step);
        duration_format((size + 500) / 1000 * 1000, amount, sizeof amount);
        runner_log(
                u, LOG_WARNING,
                "The wall clock stepped %s by %s; session ages are kept on the boot-time clock and do not change; writing the state file again",
                step < 0 ? "back" : "forward", amount);
        runner_save_state(u);
}

static void start_cycle(struct runner *u) {
        struct reclaimer *r = u->r;
        struct cycle_env env = {
                .loop = r->loop,
                .account = runner_account(u),
                .config = u->config,
                .creds = u->creds,
                .signer = &u->signer,
                .http = u->http,
                .state = u->state,
                .retries = u->retries,
                .metrics = u->metrics,
                .dry_run = runner_dry_run(u),
                .next_cycle = r->opt.mode == RECLAIMER_DAEMON,
                .malformed_logged = u->malformed_logged,
                .throttle = &u->throttle,
                .plan = r->opt.mode == RECLAIMER_PLAN,
                .ha = r->ha,
                .notify = r->opt.mode == RECLAIMER_PLAN ? NULL : u->notify,
                .previous = u->last_comparable ? &u->last : NULL,
        };
        int ret;

        assert(u->run_state == RUNNER_IDLE && !u->cycle);
        if (r->opt.mode != RECLAIMER_PLAN)
                check_clock(u);
        u->last_cycle_started_ms = now_mono_ms();
        throttle_new_cycle(&u->throttle, now_mono_ms());
        ret = cycle_start(&env, cycle_phase_changed, u, &u->cycle);
        if (ret >= 0)
                runner_set_state(u, RUNNER_CYCLING);
        else {
                /* Already logged as a failed cycle. */
                u->cycle = NULL;
                r->cycles++;
                r->any_list_failed = true;
                u->last =
                        (struct cycle_result){ .list_failed = true, .started_ms = u->last_cycle_started_ms };
                u->last_comparable = true;
                if (r->opt.mode != RECLAIMER_DAEMON) {
                        runner_set_state(u, RUNNER_DONE);
                        runner_kick(u);
                } else {
                        runner_schedule_next(u, u->last_cycle_started_ms, 0, false);
                        reclaimer_notify_status(r, u);
                }
        }
}

/* The earliest a sweep (SIGUSR1) may start the next cycle: not sooner than
 * SWEEP_MIN_GAP_MS after the last one started, so that a storm of signals
 * cannot hammer the gateway, and never inside a list Retry-After. */
int64_t runner_sweep_earliest_ms(const struct runner *u) {
        int64_t gap = u->config->poll_interval_ms < SWEEP_MIN_GAP_MS ? (int64_t) u->config->poll_interval_ms
                                                                     : SWEEP_MIN_GAP_MS;
        int64_t t = u->last_cycle_started_ms + gap;

        return t > u->not_before_ms ? t : u->not_before_ms;
}

/* The files reloads handed the cycle just freed (see struct runner). */
static void free_retired(struct runner *u) {
        for (size_t i = 0; i < u->n_retired; i++)
                config_free(u->retired[i]);
        free(u->retired);
        u->retired = NULL;
        u->n_retired = 0;
}

/* --plan: plan.c renders the decision the cycle handed over. */
static void render_plan(struct runner *u) {
        struct reclaimer *r = u->r;
        const struct session_list *list = NULL;
        const struct config *cfg = NULL;
        const struct decide_result *d = cycle_decision(u->cycle, &list, &cfg);

        if (!d)
                return;
        if (r->opt.plan_format == PLAN_TABLE && r->n_runners > 1)
                fprintf(r->opt.plan_out, "%s== account %s\n", u == r->runners ? "" : "\n",
                        runner_account(u));
        if (plan_print(r->opt.plan_out, r->opt.plan_format, cfg, list, u->state, d) < 0)
                u->last.list_failed = true;
}

/* The cycle has ended: record it, free it, write state and metrics. */
static void finish_cycle(struct runner *u) {
        struct reclaimer *r = u->r;

        u->last = *cycle_result(u->cycle);
        u->last_comparable = true;
        if (r->opt.mode == RECLAIMER_PLAN)
                render_plan(u);
        cycle_free(u->cycle);
        u->cycle = NULL;
        free_retired(u);
        r->cycles++;
        r->total_reclaimed += u->last.closed + u->last.already_closed;
        r->planned += u->last.planned;
        if (u->last.list_failed)
                r->any_list_failed = true;
        if (u->last.list_failed && u->last.auth_failed)
                r->list_auth_failed = true;
        if (r->stopping && u->last.deferred > 0)
                runner_log(u, LOG_WARNING,
                           "Stopping: %zu due session(s) were not closed; they will be closed after restart",
                           u->last.deferred);
        if (r->opt.mode != RECLAIMER_PLAN)
                metrics_cycle(u->metrics, !u->last.list_failed, now_wall_ms());
        if (r->opt.mode != RECLAIMER_PLAN && !u->last.list_failed)
                metrics_held(u->metrics, u->last.fused, u->last.deferred);
        if (r->opt.mode != RECLAIMER_PLAN)
                metrics_pace(u->metrics, throttle_rate(&u->throttle), u->throttle.cuts, u->throttle.undone);
        if (r->opt.mode != RECLAIMER_PLAN)
                check_clock(u);
        if (!u->last.list_failed)
                runner_save_state(u);
        runner_notify_cycle_ended(u);
        reclaimer_write_metrics(r);
        /* A large list leaves many small freed blocks in the heap: give the
         * memory back rather than keep the peak for the life of the daemon. */
        if (u->last.list_bytes >= TRIM_AFTER_LIST_BYTES)
                malloc_trim(0);
}

/* The one place that moves a runner on after a cycle, called from the loop
 * (the advance watcher), never from inside a callback of the cycle or its
 * HTTP handle. */
static void advance(struct runner *u) {
        struct reclaimer *r = u->r;

        if (u->run_state == RUNNER_ENDED) {
                finish_cycle(u);
                if (r->stopping || r->opt.mode != RECLAIMER_DAEMON) {
                        runner_set_state(u, RUNNER_DONE);
                        /* --plan runs the accounts one after the other, so that
                         * their tables do not interleave. */
                        if (r->opt.mode == RECLAIMER_PLAN && !r->stopping &&
                            u + 1 < r->runners + r->n_runners) {
                                ev_timer_set(&u[1].poll_timer, 0., 0.);
                                ev_timer_start(r->loop, &u[1].poll_timer);
                        }
                } else {
                        /* The next list waits for the account's pause too
                         * (a Retry-After on a close). */
                        uint64_t paused = throttle_held_ms(&u->throttle, now_mono_ms());
                        uint64_t wait = paused > u->last.retry_after_ms ? paused : u->last.retry_after_ms;

                        runner_set_state(u, RUNNER_IDLE);
                        runner_apply_pending(u);
                        if (u->sweep_requested) {
                                u->sweep_requested = false;
                                runner_schedule_next(u,
                                                     runner_sweep_earliest_ms(u) -
                                                             (int64_t) u->config->poll_interval_ms,
                                                     wait, false);
                        } else
                                runner_schedule_next(u, u->last.started_ms, wait, true);
                        reclaimer_notify_status(r, u);
                }
        }
        if (u->run_state == RUNNER_DONE) {
                for (size_t i = 0; i < r->n_runners; i++)
                        if (r->runners[i].run_state != RUNNER_DONE)
                                return;
                /* ha: the lease was kept while closes were in flight; now
                 * that none is, it is given back, and the loop ends once
                 * etcd has answered (within lease/3). */
                if (r->releasing)
                        return;
                if (ha_release(r->ha, ha_released, r)) {
                        r->releasing = true;
                        return;
                }
                ev_break(r->loop, EVBREAK_ALL);
        }
}

static void advance_cb(struct ev_loop *loop, ev_prepare *w, int revents) {
        (void) revents;
        ev_prepare_stop(loop, w);
        advance(w->data);
}

static void poll_cb(struct ev_loop *loop, ev_timer *w, int revents) {
        struct runner *u = w->data;

        (void) loop;
        (void) revents;
        if (u->run_state != RUNNER_IDLE || u->r->stopping) {
                runner_log(u, LOG_WARNING, "The previous cycle is still %s; skipping this tick",
                           runner_doing(u));
                return;
        }
        start_cycle(u);
}

int runner_init(struct reclaimer *r, struct runner *u, struct config *config, struct error *err) {
        struct http_options hopt = runner_http_options(config, r->ha_lease_ms);
        int ret;

        u->r = r;
        u->config = config;
        gateway_signer_reset(&u->signer);
        u->run_state = RUNNER_IDLE;
        throttle_init(&u->throttle, config->gateway.max_parallel, config->gateway.max_rate, now_mono_ms());
        ev_init(&u->poll_timer, poll_cb);
        u->poll_timer.data = u;
        ev_prepare_init(&u->advance_watcher, advance_cb);
        u->advance_watcher.data = u;
        ret = runner_account_token(config, NULL, &u->creds, err);
        if (ret >= 0 && r->opt.mode != RECLAIMER_PLAN)
                ret = runner_notify_secret(r, config, &u->notify_secret, err);
        if (ret < 0)
                return ret;
        ret = http_new(r->loop, &hopt, &u->http);
        if (ret >= 0)
                ret = state_new(config->state_file, &u->state);
        if (ret >= 0)
                ret = retry_table_new(&u->retries);
        if (ret >= 0)
                ret = metrics_new(&u->metrics);
        if (ret >= 0)
                ret = idset_new(&u->malformed_logged);
        if (ret < 0)
                (void) error_set(err, 0, "%s", strerror(-ret));
        return ret;
}

void runner_done(struct runner *u) {
        if (!u->r)
                return;
        ev_timer_stop(u->r->loop, &u->poll_timer);
        ev_prepare_stop(u->r->loop, &u->advance_watcher);
        /* Cancels what is still in flight (the grace period ran out); no callback runs. */
        http_free(u->http);
        cycle_free(u->cycle);
        free_retired(u);
        notifier_free(u->notify);
        credentials_free(u->notify_secret);
        credentials_free(u->pending_notify_secret);
        if (u->state)
                runner_save_state(u);
        state_free(u->state);
        retry_table_free(u->retries);
        metrics_free(u->metrics);
        idset_free(u->malformed_logged);
        config_free(u->config);
        credentials_free(u->creds);
        config_free(u->pending_config);
        credentials_free(u->pending_creds);
        gateway_signer_reset(&u->signer);
}
