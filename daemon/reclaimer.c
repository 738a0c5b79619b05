/* The loop's owner: one runner per account, signals, the watchdog.
 *
 * Each runner is a state machine (enum runner_state):
 *
 *     IDLE --poll timer--> LISTING --list in--> CLOSING --all done--> ENDED
 *       ^                     |                                        |
 *       +---------------------+------------- advance() ----------------+
 *                                                  |
 *                      SIGTERM: LISTING/CLOSING -> STOPPING -> ENDED -> DONE
 *                      --once/--plan: ENDED -> DONE
 *
 * The rule: callbacks of a cycle or of the HTTP layer (request completions,
 * the cycle's phase function) only record what happened and arm the
 * runner's advance watcher (an ev_prepare, run by the loop before it next
 * waits). They never free anything, never end, start or schedule a cycle,
 * and never swap a configuration or an HTTP handle. Only advance() does
 * that, from the loop, when no callback of the objects it frees is on the
 * stack. Signal watchers and the poll timer are the loop's own callbacks:
 * they may start a cycle or apply a reload when no cycle is running, and
 * otherwise only mark the runner and let advance() act. */
#include "reclaimer.h"

#include <assert.h>
#include <errno.h>
#include <stdarg.h>
#include <inttypes.h>
#include <malloc.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-daemon.h>
#include <time.h>
#include <unistd.h>

#include "cycle.h"
#include "duration.h"
#include "fileio.h"
#include "health.h"
#include "http.h"
#include "idset.h"
#include "log.h"
#include "metrics.h"
#include "preflight.h"
#include "reply.h"
#include "retry.h"
#include "state.h"
#include "util.h"

#define MAX_RESPONSE_SIZE      (16u * 1024 * 1024)
#define SHUTDOWN_GRACE_EXTRA_S 1.0
/* SIGUSR1 never starts cycles closer together than this (or poll_interval,
 * if shorter), and never before a list Retry-After has passed. */
#define SWEEP_MIN_GAP_MS 1000
/* After a cycle whose list replies were this large, free memory is handed
 * back to the kernel. */
#define TRIM_AFTER_LIST_BYTES (1024 * 1024)

struct reclaimer;

/* IDLE -> CYCLING -> ENDED -> IDLE ..., and from IDLE or ENDED to DONE.
 * What a running cycle is doing (listing, closing) is the cycle's phase;
 * whether the daemon is stopping is r->stopping. Only runner_set_state()
 * changes it. */
enum runner_state {
        RUNNER_IDLE,    /* between cycles: the poll timer is armed */
        RUNNER_CYCLING, /* u->cycle runs */
        RUNNER_ENDED,   /* the cycle has ended; advance() wraps it up */
        RUNNER_DONE,    /* nothing more runs (stopped, or --once/--plan finished) */
};

/* One account: its own connections, state, timer and cycle, so that a
 * gateway that hangs stalls only its own account. */
struct runner {
        struct reclaimer *r;
        enum runner_state run_state;
        struct config *config; /* the account's configuration (owned) */
        struct credentials *creds;
        struct gateway_signer signer; /* derived from creds: reset when they change */
        /* A reloaded configuration, waiting for the running cycle to end
         * (that cycle already checks its unsent closes against it). */
        struct config *pending_config;
        struct credentials *pending_creds;
        bool sweep_requested; /* SIGUSR1 during a cycle: run another one right after */
        struct http *http;
        struct state *state;
        struct retry_table *retries;
        struct metrics *metrics;
        struct idset *malformed_logged;
        struct throttle throttle;
        struct cycle *cycle; /* from CYCLING to ENDED */
        /* Files a running cycle was handed by reloads (cycle_reconfigure())
         * and that a newer reload replaced: its jobs may point into them, so
         * they are freed with the cycle. */
        struct config **retired;
        size_t n_retired;
        int64_t last_cycle_started_ms;
        int64_t not_before_ms;    /* boot-time ms: the gateway's list Retry-After runs until then */
        int64_t next_poll_wall_s; /* for STATUS= */
        ev_timer poll_timer;
        ev_prepare advance_watcher;
        struct cycle_result last;
        bool last_comparable; /* last is a cycle under the file in force (not the first one) */
};

struct reclaimer {
        struct ev_loop *loop;
        struct config *top; /* the file as loaded; its accounts were moved into the runners */
        struct runner *runners;
        size_t n_runners;
        char *metrics_file;
        struct reclaimer_options opt;
        ev_timer grace_timer;
        ev_timer watchdog_timer;
        ev_signal sig_term, sig_int, sig_hup, sig_usr1, sig_usr2;
        bool stopping; /* SIGTERM/SIGINT received: every runner heads for DONE */
        bool any_list_failed;
        size_t planned;         /* --plan: sessions that would be reclaimed, all accounts */
        bool reload_failed;     /* the last SIGHUP's file was refused; the previous one runs */
        int metrics_error;      /* the last write of metrics_file failed with this errno; 0: it did not */
        int64_t loaded_wall_ms; /* when the running configuration was loaded (start or reload) */
        bool list_auth_failed;  /* a list call was refused for auth: --once/--plan exit 77 */
        bool unhealthy_logged;
        unsigned long cycles;
        size_t total_reclaimed;
        struct ha *ha;        /* ha: the etcd election; NULL without */
        bool releasing;       /* ha: stopped; waiting for the lease's revoke */
        uint64_t ha_lease_ms; /* ha: the lease, which bounds every gateway request (2/3 of it) */
};

static void runner_set_state(struct runner *u, enum runner_state to) {
        static const bool allowed[][4] = {
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
static const char *runner_doing(const struct runner *u) {
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
static int account_token(const struct config *a, const struct credentials *previous,
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
static struct http_options http_options_for(const struct config *c, uint64_t ha_lease_ms) {
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

static bool dry_run(const struct runner *u) {
        return u->r->opt.force_dry_run || u->config->dry_run;
}

static const char *account(const struct runner *u) {
        return config_account_name(u->config);
}

static void ulog(const struct runner *u, int priority, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));

static void ulog(const struct runner *u, int priority, const char *fmt, ...) {
        struct log_field f[] = { { "IVH_ACCOUNT", account(u) } };
        va_list ap;

        va_start(ap, fmt);
        log_structv(priority, NULL, f, 1, fmt, ap);
        va_end(ap);
}

/* The next cycle starts poll_interval after the previous one started, and
 * never before it ended. A Retry-After from the list call can push it later,
 * by at most reply_retry_after_cap_ms() (max(poll_interval, 5 min)), and the real time
 * of the next poll is then logged. */
static void schedule_next(struct runner *u, int64_t started_mono_ms, uint64_t retry_after_ms,
                          bool after_cycle) {
        int64_t now = now_mono_ms(), next = started_mono_ms + (int64_t) u->config->poll_interval_ms;
        uint64_t cap = reply_retry_after_cap_ms(u->config->poll_interval_ms);
        uint64_t wait = retry_after_ms > cap ? cap : retry_after_ms;
        double delay;

        if (next <= now && after_cycle)
                ulog(u, LOG_WARNING,
                     "The cycle took longer than poll_interval (%" PRIu64 " ms); starting the next one now",
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
                ulog(u, LOG_WARNING,
                     "The gateway asked to wait %s (Retry-After) before listing again%s; next poll at %s, "
                     "in "
                     "%s",
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

/* ", NAME" for each account whose last cycle matches, into buf. */
static const char *accounts_where(const struct reclaimer *r, bool (*pred)(const struct cycle_result *),
                                  char *buf, size_t n) {
        size_t len = 0;

        buf[0] = '\0';
        for (size_t i = 0; i < r->n_runners && len < n; i++)
                if (pred(&r->runners[i].last)) {
                        int k = snprintf(buf + len, n - len, "%s%s", len ? ", " : "",
                                         account(&r->runners[i]));

                        len += k > 0 ? (size_t) k : 0;
                }
        return buf;
}

static bool list_failed(const struct cycle_result *res) {
        return res->list_failed;
}

static bool fuse_tripped(const struct cycle_result *res) {
        return !res->list_failed && res->fused > 0;
}

static bool auth_refused(const struct cycle_result *res) {
        return res->auth_failed;
}

/* With several accounts: "; credentials refused: A; throttled: B (N
 * calls); paused by the gateway's Retry-After: C", for every account that
 * cannot reclaim for a reason other than failing to list or a tripped
 * fuse (those have their own words). */
static void account_problems(const struct reclaimer *r, char *buf, size_t n) {
        char names[256];
        size_t len = 0, k = 0;
        int64_t now = now_mono_ms();

        buf[0] = '\0';
        if (*accounts_where(r, auth_refused, names, sizeof names))
                len += (size_t) snprintf(buf + len, n - len, "; credentials refused: %s", names);
        for (size_t i = 0; i < r->n_runners && len < n; i++) {
                const struct runner *u = &r->runners[i];

                if (u->last.throttled == 0)
                        continue;
                len += (size_t) snprintf(buf + len, n - len, "%s%s (%zu calls)",
                                         k++ ? ", " : "; throttled: ", account(u), u->last.throttled);
        }
        k = 0;
        for (size_t i = 0; i < r->n_runners && len < n; i++) {
                const struct runner *u = &r->runners[i];

                if (u->not_before_ms <= now && throttle_held_ms(&u->throttle, now) == 0)
                        continue;
                len += (size_t) snprintf(buf + len, n - len, "%s%s",
                                         k++ ? ", " : "; paused by the gateway's Retry-After: ", account(u));
        }
}

/* STATUS= for `systemctl status`: one line about the last cycles, naming a
 * tripped share fuse, the accounts that fail to list, that are refused,
 * throttled or paused, and a failed reload. */
static void notify_status(struct reclaimer *r, struct runner *u) {
        char every[32], when[32], failing[256], fused[256], extra[640], body[2048], role[192] = "",
                                                                                    problems[768];
        time_t t = (time_t) u->next_poll_wall_s;
        size_t listed = 0, reclaimed = 0, failed = 0, n_fused = 0, n_list_failed = 0;
        struct tm tm;

        localtime_r(&t, &tm);
        strftime(when, sizeof when, "%H:%M:%S", &tm);
        duration_format(u->config->poll_interval_ms, every, sizeof every);
        for (size_t i = 0; i < r->n_runners; i++) {
                const struct cycle_result *res = &r->runners[i].last;

                listed += res->listed;
                reclaimed += res->closed + res->already_closed;
                failed += res->failed;
                n_list_failed += res->list_failed;
                n_fused += fuse_tripped(res) ? res->fused : 0;
        }
        accounts_where(r, list_failed, failing, sizeof failing);
        accounts_where(r, fuse_tripped, fused, sizeof fused);
        snprintf(extra, sizeof extra, "%s%s%s%s%s%s%s", n_fused ? "; share fuse tripped: " : "",
                 n_fused ? fused : "",
                 r->reload_failed ? "; the last reload failed, the previous policy runs" : "",
                 r->metrics_error ? "; cannot write the metrics file " : "",
                 r->metrics_error ? r->metrics_file : "", r->metrics_error ? ": " : "",
                 r->metrics_error ? strerror(r->metrics_error) : "");
        if (r->n_runners > 1) {
                account_problems(r, problems, sizeof problems);
                snprintf(body, sizeof body,
                         "%zu accounts: %zu sessions listed, %zu reclaimed, %zu failed in the last "
                         "cycles%s%s%s%s",
                         r->n_runners, listed, reclaimed, failed, n_list_failed ? "; failing to list: " : "",
                         n_list_failed ? failing : "", problems, extra);
        } else if (u->last.auth_failed)
                snprintf(body, sizeof body,
                         "The gateway refuses our credentials: check appkey, token and clock; %zu "
                         "reclaimed in total, next poll at %s%s",
                         r->total_reclaimed, when, extra);
        else if (n_list_failed)
                snprintf(body, sizeof body,
                         "Last poll failed: listing the sessions of account %s (see journal); %zu "
                         "reclaimed in total, next poll at %s%s",
                         failing, r->total_reclaimed, when, extra);
        else if (u->last.throttled > 0)
                snprintf(body, sizeof body,
                         "%zu sessions listed, %zu reclaimed, %zu failed, %zu deferred; the gateway "
                         "throttled %zu calls; next poll at %s (every %s)%s",
                         listed, reclaimed, failed, u->last.deferred, u->last.throttled, when, every, extra);
        else if (n_fused)
                snprintf(body, sizeof body,
                         "Share fuse tripped: %zu due sessions held back (more than %g%% of the live "
                         "ones); %zu sessions listed, %zu reclaimed; next poll at %s (every %s)%s",
                         n_fused, u->config->fuse.max_share * 100, listed, reclaimed, when, every,
                         r->reload_failed ? "; the last reload failed, the previous policy runs" : "");
        else
                snprintf(body, sizeof body,
                         "%zu sessions listed, %zu reclaimed, %zu failed%s; next poll at %s (every "
                         "%s)%s",
                         listed, reclaimed, failed, dry_run(u) ? " (dry run)" : "", when, every, extra);
        if (r->ha) {
                const char *leader = ha_leader(r->ha);

                /* Only the leader closes: say first which this is. */
                if (ha_role(r->ha) == HA_LEADER)
                        snprintf(role, sizeof role, "Leader (%s): ", ha_name(r->ha));
                else if (ha_role(r->ha) == HA_STANDBY)
                        snprintf(role, sizeof role,
                                 "Standby (%s; leader: %s), closing nothing: ", ha_name(r->ha),
                                 *leader ? leader : "unknown");
                else
                        snprintf(role, sizeof role,
                                 "etcd unreachable (%s), closing nothing until the election answers: ",
                                 ha_name(r->ha));
        }
        sd_notifyf(0, "STATUS=%s%s", role, body);
}

static void save_state(struct runner *u) {
        bool dirty;
        int ret;

        if (u->r->opt.mode == RECLAIMER_PLAN)
                return;
        dirty = state_dirty(u->state);
        ret = state_save(u->state, now_wall_ms(), now_mono_ms());
        if (dirty)
                metrics_state_write(u->metrics, ret >= 0);
        if (ret < 0)
                ulog(u, LOG_ERR,
                     "Failed to write state file %s: %s; first-seen times are kept in memory, retrying "
                     "after the "
                     "next cycle",
                     u->config->state_file, strerror(-ret));
}

static void write_metrics(struct reclaimer *r) {
        const struct metrics **ms;
        const char **names;
        int ret = -ENOMEM;

        if (!r->metrics_file || r->opt.mode == RECLAIMER_PLAN)
                return;
        ms = calloc(r->n_runners, sizeof *ms);
        names = calloc(r->n_runners, sizeof *names);
        if (ms && names) {
                for (size_t i = 0; i < r->n_runners; i++) {
                        ms[i] = r->runners[i].metrics;
                        names[i] = account(&r->runners[i]);
                }
                struct metrics_process proc = { .version = IVH_VERSION,
                                                .reload_ok = !r->reload_failed,
                                                .reload_success_s = (double) r->loaded_wall_ms / 1000.0,
                                                .leader = !r->ha ? -1 : ha_role(r->ha) == HA_LEADER };

                ret = metrics_write(&proc, ms, names, r->n_runners, r->metrics_file);
        }
        free(ms);
        free(names);
        if (ret < 0)
                log_warning("Failed to write metrics file %s: %s; retrying after the next cycle",
                            r->metrics_file, strerror(-ret));
        r->metrics_error = ret < 0 ? -ret : 0;
}

/* ha_release()'s revoke was answered: nothing is left to do. */
static void ha_released(void *userdata) {
        struct reclaimer *r = userdata;

        ev_break(r->loop, EVBREAK_ALL);
}

/* Keeps the running policy for the unit's reload check (preflight.h). */
static void save_running(const struct config *top) {
        int ret = preflight_save_running(top);

        if (ret < 0)
                log_warning(
                        "Failed to keep a copy of the running policy in $STATE_DIRECTORY: %s; a reload that "
                        "needs a restart is then reported by the daemon only",
                        strerror(-ret));
}

/* Swaps in a reloaded configuration; only between cycles (IDLE or from
 * advance()), never from a callback of the HTTP handle it may replace. */
static void apply_pending(struct runner *u) {
        struct http_options old_opt, new_opt;
        struct http *http = NULL;
        char every[32];
        int ret;

        assert(!u->cycle);
        if (!u->pending_config)
                return;
        old_opt = http_options_for(u->config, u->r->ha_lease_ms);
        new_opt = http_options_for(u->pending_config, u->r->ha_lease_ms);
        if (old_opt.timeout_ms != new_opt.timeout_ms || old_opt.max_connections != new_opt.max_connections ||
            !!old_opt.ca_file != !!new_opt.ca_file ||
            (old_opt.ca_file && strcmp(old_opt.ca_file, new_opt.ca_file) != 0)) {
                ret = http_new(u->r->loop, &new_opt, &http);
                if (ret < 0) {
                        ulog(u, LOG_ERR,
                             "Failed to apply the reloaded configuration: %s; keeping the previous one",
                             strerror(-ret));
                        config_free(u->pending_config);
                        credentials_free(u->pending_creds);
                        u->pending_config = NULL;
                        u->pending_creds = NULL;
                        return;
                }
                http_free(u->http); /* nothing is in flight between cycles */
                u->http = http;
        }
        config_free(u->config);
        credentials_free(u->creds);
        u->config = u->pending_config;
        u->creds = u->pending_creds;
        throttle_configure(&u->throttle, u->config->gateway.max_parallel, u->config->gateway.max_rate,
                           now_mono_ms());
        u->pending_config = NULL;
        u->pending_creds = NULL;
        u->last_comparable = false; /* the first cycle under the new file logs its summary */
        gateway_signer_reset(&u->signer);
        duration_format(u->config->poll_interval_ms, every, sizeof every);
        ulog(u, LOG_INFO, "The reloaded configuration is now in effect: %zu policies, polling every %s%s",
             u->config->n_policies, every, dry_run(u) ? ", dry run" : "");
}

/* Arms the runner's advance watcher: advance() runs before the loop next
 * waits, outside every callback. */
static void kick(struct runner *u) {
        ev_prepare_start(u->r->loop, &u->advance_watcher);
}

/* The cycle's phase function: a callback from inside the cycle (and so from
 * inside curl's completion handling). It records, and arms advance(). */
static void cycle_phase_changed(struct cycle *c, enum cycle_phase phase, void *userdata) {
        struct runner *u = userdata;

        (void) c;
        if (phase == CYCLE_ENDED)
                runner_set_state(u, RUNNER_ENDED);
        kick(u);
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
        ulog(u, LOG_WARNING,
             "The wall clock stepped %s by %s; session ages are kept on the boot-time clock and do not "
             "change; writing the state file again",
             step < 0 ? "back" : "forward", amount);
        save_state(u);
}

static void start_cycle(struct runner *u) {
        struct reclaimer *r = u->r;
        struct cycle_env env = {
                .loop = r->loop,
                .account = account(u),
                .config = u->config,
                .creds = u->creds,
                .signer = &u->signer,
                .http = u->http,
                .state = u->state,
                .retries = u->retries,
                .metrics = u->metrics,
                .dry_run = dry_run(u),
                .next_cycle = r->opt.mode == RECLAIMER_DAEMON,
                .malformed_logged = u->malformed_logged,
                .throttle = &u->throttle,
                .plan = r->opt.mode == RECLAIMER_PLAN,
                .ha = r->ha,
                .previous = u->last_comparable ? &u->last : NULL,
        };
        int ret;

        assert(u->run_state == RUNNER_IDLE && !u->cycle);
        if (r->opt.mode != RECLAIMER_PLAN)
                check_clock(u);
        u->last_cycle_started_ms = now_mono_ms();
        throttle_new_cycle(&u->throttle);
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
                        kick(u);
                } else {
                        schedule_next(u, u->last_cycle_started_ms, 0, false);
                        notify_status(r, u);
                }
        }
}

/* The earliest a sweep (SIGUSR1) may start the next cycle: not sooner than
 * SWEEP_MIN_GAP_MS after the last one started, so that a storm of signals
 * cannot hammer the gateway, and never inside a list Retry-After. */
static int64_t sweep_earliest_ms(const struct runner *u) {
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
                fprintf(r->opt.plan_out, "%s== account %s\n", u == r->runners ? "" : "\n", account(u));
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
                ulog(u, LOG_WARNING,
                     "Stopping: %zu due session(s) were not closed; they will be closed after restart",
                     u->last.deferred);
        if (r->opt.mode != RECLAIMER_PLAN)
                metrics_cycle(u->metrics, !u->last.list_failed, now_wall_ms());
        if (r->opt.mode != RECLAIMER_PLAN && !u->last.list_failed)
                metrics_held(u->metrics, u->last.fused, u->last.deferred);
        if (r->opt.mode != RECLAIMER_PLAN)
                check_clock(u);
        if (!u->last.list_failed)
                save_state(u);
        write_metrics(r);
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
                        apply_pending(u);
                        if (u->sweep_requested) {
                                u->sweep_requested = false;
                                schedule_next(u,
                                              sweep_earliest_ms(u) - (int64_t) u->config->poll_interval_ms,
                                              wait, false);
                        } else
                                schedule_next(u, u->last.started_ms, wait, true);
                        notify_status(r, u);
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
                ulog(u, LOG_WARNING, "The previous cycle is still %s; skipping this tick", runner_doing(u));
                return;
        }
        start_cycle(u);
}

static void log_lines(int priority, const char *text) {
        while (text && *text) {
                const char *eol = strchr(text, '\n');
                int len = eol ? (int) (eol - text) : (int) strlen(text);

                log_full(priority, "%.*s", len, text);
                text += len + (eol ? 1 : 0);
        }
}

/* The accounts of a configuration, in file order: its `accounts:`, or the
 * configuration itself for the single-gateway form. */
static size_t accounts_of(struct config *c, struct config ***ret) {
        if (c->n_accounts > 0) {
                *ret = c->accounts;
                return c->n_accounts;
        }
        *ret = NULL;
        return 1;
}

/* SIGHUP: load the file again. A valid file takes effect from each account's
 * next cycle; on any error the running configuration stays, untouched. */
static void reload(struct reclaimer *r) {
        struct config *top = NULL, **accounts;
        struct credentials **creds = NULL;
        struct error err = { 0 };
        char *metrics_file = NULL;
        const char *what;
        bool loaded = false;
        size_t n;
        int ret;

        sd_notify(0, "RELOADING=1");
        log_info("Reloading %s", r->runners[0].config->path);
        ret = config_load(r->runners[0].config->path, &top, &err);
        if (ret < 0) {
                log_lines(LOG_ERR, error_message(&err));
                log_error("Reload failed: %s is not valid; the previous configuration stays in effect",
                          r->runners[0].config->path);
                goto done;
        }
        /* The top level's own keys that need a restart (ha:), against the
         * file it runs with: with accounts, the top level kept from the start. */
        what = config_restart_needed(top, r->top ? r->top : r->runners[0].config);
        if (what && strcmp(what, "ha") == 0) {
                log_error("Reload failed: the ha: section changed, which needs a restart; the previous "
                          "configuration stays in effect");
                goto done;
        }
        n = accounts_of(top, &accounts);
        if (n != r->n_runners) {
                log_error(
                        "Reload failed: the number of accounts changed, which needs a restart; the previous "
                        "configuration stays in effect");
                goto done;
        }
        for (size_t i = 0; i < n; i++) {
                const struct config *a = accounts ? accounts[i] : top;
                /* The keys flagged as needing a restart (state_file, an
                 * account's name, ha). */
                what = config_restart_needed(a, r->runners[i].config);
                if (what) {
                        log_error("Reload failed: %s changed (account %s), which needs a restart; the "
                                  "previous "
                                  "configuration stays in effect",
                                  what, config_account_name(r->runners[i].config));
                        goto done;
                }
        }
        creds = calloc(n, sizeof *creds);
        if (!creds || (top->metrics_file && !(metrics_file = strdup(top->metrics_file)))) {
                log_error("Reload failed: out of memory; the previous configuration stays in effect");
                goto done;
        }
        for (size_t i = 0; i < n; i++) {
                const struct config *a = accounts ? accounts[i] : top;

                ret = account_token(a, r->runners[i].creds, &creds[i], &err);
                if (ret < 0) {
                        log_error("Reload failed: %s; the previous configuration stays in effect",
                                  error_message(&err));
                        goto done;
                }
        }

        /* Valid. The unit's reload check compares with this copy. */
        save_running(top);
        /* Hand each account its new configuration. */
        for (size_t i = 0; i < n; i++) {
                struct runner *u = &r->runners[i];
                struct config *old_pending = u->pending_config, **retired;
                struct credentials *old_creds = u->pending_creds;

                if (accounts) {
                        u->pending_config = accounts[i];
                        accounts[i] = NULL;
                } else {
                        u->pending_config = top;
                        top = NULL;
                }
                u->pending_creds = creds[i];
                creds[i] = NULL;
                if (u->cycle) {
                        /* The running cycle checks its unsent closes against
                         * the new file now; the rest waits for its end. The
                         * cycle is told before the older pending file goes. */
                        cycle_reconfigure(u->cycle, u->pending_config);
                        ulog(u, LOG_INFO,
                             "Reloaded; closes not yet sent are checked against the new file now, the rest "
                             "takes effect when the running cycle ends");
                } else if (u->run_state == RUNNER_IDLE) {
                        apply_pending(u);
                        /* A new poll_interval counts from the start of the last cycle. */
                        if (ev_is_active(&u->poll_timer))
                                schedule_next(u, u->last_cycle_started_ms, 0, false);
                }
                /* A running cycle may still point into the older pending
                 * file: it is freed with the cycle. */
                if (u->cycle && old_pending) {
                        retired = reallocarray(u->retired, u->n_retired + 1, sizeof *retired);
                        if (retired) {
                                u->retired = retired;
                                u->retired[u->n_retired++] = old_pending;
                        } else
                                ulog(u, LOG_WARNING,
                                     "Out of memory keeping the previous reloaded file for the running "
                                     "cycle; it is kept for the life of the process");
                        old_pending = NULL;
                }
                config_free(old_pending);
                credentials_free(old_creds);
        }
        free(r->metrics_file);
        r->metrics_file = metrics_file;
        metrics_file = NULL;
        loaded = true;
done:
        r->reload_failed = !loaded;
        if (loaded)
                r->loaded_wall_ms = now_wall_ms();
        /* The reload gauges and STATUS= are current at once, not only after
         * the next cycle. */
        write_metrics(r);
        if (r->cycles > 0 && r->opt.mode == RECLAIMER_DAEMON)
                notify_status(r, &r->runners[0]);
        for (size_t i = 0; creds && i < r->n_runners; i++)
                credentials_free(creds[i]);
        free(creds);
        free(metrics_file);
        config_free(top);
        error_done(&err);
        sd_notify(0, "READY=1");
}

/* The election's role changed: a journal entry, the metric and STATUS=. Runs
 * inside the ha's own request callback: it records and logs only. */
static void ha_role_changed(struct ha *h, enum ha_role old, void *userdata) {
        struct reclaimer *r = userdata;
        enum ha_role now = ha_role(h);
        const char *leader = ha_leader(h);
        struct log_field f[] = {
                { "IVH_HA_ROLE", ha_role_to_string(now) },
                { "IVH_HA_PREVIOUS_ROLE", ha_role_to_string(old) },
                { "IVH_HA_NAME", ha_name(h) },
                { "IVH_HA_LEADER", *leader ? leader : "" },
        };

        if (now == HA_LEADER)
                log_struct(LOG_NOTICE, MESSAGE_ID_HA_ROLE, f, ELEMENTSOF(f),
                           "HA: %s is now the leader (was %s); it closes what is due from the next cycle",
                           ha_name(h), ha_role_to_string(old));
        else if (now == HA_STANDBY)
                log_struct(old == HA_LEADER ? LOG_WARNING : LOG_NOTICE, MESSAGE_ID_HA_ROLE, f, ELEMENTSOF(f),
                           "HA: %s is now a standby (was %s; leader: %s); it lists and keeps ages, and "
                           "closes nothing",
                           ha_name(h), ha_role_to_string(old), *leader ? leader : "unknown");
        else
                log_struct(LOG_WARNING, MESSAGE_ID_HA_ROLE, f, ELEMENTSOF(f),
                           "HA: etcd cannot be reached by %s (was %s); nobody here closes anything until it "
                           "answers",
                           ha_name(h), ha_role_to_string(old));
        write_metrics(r);
        if (r->cycles > 0)
                notify_status(r, &r->runners[0]);
}

/* Pings the systemd watchdog, but only while every account makes progress. */
static void watchdog_cb(struct ev_loop *loop, ev_timer *w, int revents) {
        struct reclaimer *r = w->data;
        const char *reason = NULL;
        const struct runner *stalled = NULL;

        (void) loop;
        (void) revents;
        for (size_t i = 0; i < r->n_runners && !stalled; i++) {
                struct runner *u = &r->runners[i];
                struct cycle_activity p = { 0 };
                struct health_input in = {
                        .now_ms = now_mono_ms(),
                        .stopping = r->stopping,
                        .done = u->run_state == RUNNER_DONE,
                        .cycle_running = u->cycle != NULL,
                        .next_cycle_scheduled =
                                ev_is_active(&u->poll_timer) || ev_is_pending(&u->poll_timer),
                };

                if (u->cycle) {
                        cycle_get_activity(u->cycle, &p);
                        in.last_progress_ms = p.last_progress_ms;
                        in.paused = p.paused;
                }
                if (!health_ok(&in, health_progress_budget_ms(u->config), &reason))
                        stalled = u;
        }
        if (!stalled) {
                sd_notify(0, "WATCHDOG=1");
                r->unhealthy_logged = false;
        } else if (!r->unhealthy_logged) {
                ulog(stalled, LOG_ERR,
                     "Reclaiming has stalled (%s): %s; withholding the watchdog ping so that systemd "
                     "restarts the service",
                     runner_doing(stalled), reason);
                if (r->n_runners > 1)
                        sd_notifyf(0, "STATUS=Stalled (%s, account %s): %s", runner_doing(stalled),
                                   account(stalled), reason);
                else
                        sd_notifyf(0, "STATUS=Stalled (%s): %s", runner_doing(stalled), reason);
                r->unhealthy_logged = true;
        }
}

static void grace_cb(struct ev_loop *loop, ev_timer *w, int revents) {
        struct reclaimer *r = w->data;
        size_t in_flight = 0;

        (void) revents;
        for (size_t i = 0; i < r->n_runners; i++)
                in_flight += http_in_flight(r->runners[i].http);
        log_warning("Stopping with %zu request(s) still in flight after the grace period; their outcome is "
                    "unknown",
                    in_flight);
        ev_break(loop, EVBREAK_ALL);
}

static void signal_cb(struct ev_loop *loop, ev_signal *w, int revents) {
        struct reclaimer *r = w->data;
        double grace = 0;
        bool waiting = false;

        (void) revents;
        if (w->signum == SIGHUP) {
                if (!r->stopping)
                        reload(r);
                return;
        }
        if (w->signum == SIGUSR2) {
                /* The unit's ExecReload= ran --check-config, which refused the
                 * file, so no SIGHUP follows: a reload failed all the same. */
                log_error("Reload failed: --check-config refused %s (its errors are in the journal); the "
                          "previous configuration stays in effect",
                          r->runners[0].config->path);
                r->reload_failed = true;
                write_metrics(r);
                if (r->cycles > 0)
                        notify_status(r, &r->runners[0]);
                return;
        }
        if (w->signum == SIGUSR1) {
                /* An application that just hit its concurrency limit asks for
                 * slots back now rather than at the next tick. */
                if (r->stopping)
                        return;
                for (size_t i = 0; i < r->n_runners; i++) {
                        struct runner *u = &r->runners[i];

                        if (u->run_state != RUNNER_IDLE) {
                                ulog(u, LOG_INFO,
                                     "Sweep requested (SIGUSR1); starting another cycle when the running "
                                     "one ends");
                                u->sweep_requested = true;
                        } else {
                                /* The poll timer starts it, from the loop. */
                                int64_t now = now_mono_ms(), at = sweep_earliest_ms(u);
                                double delay = at > now ? (double) (at - now) / 1000.0 : 0.;

                                if (delay >= ev_timer_remaining(loop, &u->poll_timer)) {
                                        ulog(u, LOG_INFO,
                                             "Sweep requested (SIGUSR1); the next cycle is already due in "
                                             "%.1f s",
                                             ev_timer_remaining(loop, &u->poll_timer));
                                        continue;
                                }
                                if (at > now && u->not_before_ms > now)
                                        ulog(u, LOG_NOTICE,
                                             "Sweep requested (SIGUSR1); starting in %.1f s, when the "
                                             "gateway's "
                                             "Retry-After has passed",
                                             delay);
                                else
                                        ulog(u, LOG_INFO, "Sweep requested (SIGUSR1); starting a cycle%s",
                                             delay > 0 ? " in under a second" : " now");
                                ev_timer_stop(loop, &u->poll_timer);
                                ev_timer_set(&u->poll_timer, delay, 0.);
                                ev_timer_start(loop, &u->poll_timer);
                        }
                }
                return;
        }
        if (r->stopping)
                return;
        r->stopping = true;
        sd_notify(0, "STOPPING=1");
        log_info("Received %s, stopping", strsignal(w->signum));
        for (size_t i = 0; i < r->n_runners; i++) {
                struct runner *u = &r->runners[i];
                double g = (double) u->config->gateway.timeout_ms / 1000.0;

                ev_timer_stop(loop, &u->poll_timer);
                if (g > grace)
                        grace = g;
                switch (u->run_state) {
                case RUNNER_IDLE:
                        runner_set_state(u, RUNNER_DONE);
                        break;
                case RUNNER_CYCLING:
                        waiting = true;
                        cycle_stop(u->cycle); /* may end it at once: then the state is ENDED */
                        break;
                case RUNNER_ENDED:
                case RUNNER_DONE:
                        break;
                }
                kick(u);
        }
        if (waiting) {
                /* Let in-flight requests finish, but not for longer than one may take. */
                ev_timer_set(&r->grace_timer, grace + SHUTDOWN_GRACE_EXTRA_S, 0.);
                ev_timer_start(loop, &r->grace_timer);
        }
}

static int runner_init(struct reclaimer *r, struct runner *u, struct config *config, struct error *err) {
        struct http_options hopt = http_options_for(config, r->ha_lease_ms);
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
        ret = account_token(config, NULL, &u->creds, err);
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

static void runner_done(struct runner *u) {
        if (!u->r)
                return;
        ev_timer_stop(u->r->loop, &u->poll_timer);
        ev_prepare_stop(u->r->loop, &u->advance_watcher);
        /* Cancels what is still in flight (the grace period ran out); no callback runs. */
        http_free(u->http);
        cycle_free(u->cycle);
        free_retired(u);
        if (u->state)
                save_state(u);
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

int reclaimer_new(struct ev_loop *loop, struct config *config, const struct reclaimer_options *opt,
                  struct reclaimer **ret, struct error *err) {
        struct reclaimer *r = calloc(1, sizeof *r);
        struct config **accounts;
        int ret_code = 0;

        if (!r) {
                config_free(config);
                (void) error_set(err, 0, "out of memory");
                return -ENOMEM;
        }
        r->loop = loop;
        r->opt = *opt;
        r->loaded_wall_ms = now_wall_ms();
        if (!r->opt.plan_out)
                r->opt.plan_out = stdout;
        if (config->metrics_file && !(r->metrics_file = strdup(config->metrics_file)))
                ret_code = -ENOMEM;

        if (config->ha.enabled && opt->mode == RECLAIMER_DAEMON)
                r->ha_lease_ms = config->ha.lease_ms;
        r->n_runners = accounts_of(config, &accounts);
        r->runners = calloc(r->n_runners, sizeof *r->runners);
        if (!r->runners || ret_code < 0) {
                config_free(config);
                free(r->metrics_file);
                free(r->runners);
                free(r);
                (void) error_set(err, 0, "out of memory");
                return -ENOMEM;
        }
        /* Each runner owns its account's configuration from here on. */
        for (size_t i = 0; i < r->n_runners; i++) {
                struct config *a = accounts ? accounts[i] : config;

                if (accounts)
                        accounts[i] = NULL;
                ret_code = runner_init(r, &r->runners[i], a, err);
                if (ret_code < 0)
                        break;
        }
        if (accounts)
                r->top = config; /* keeps the emptied account list until the end */
        if (ret_code >= 0 && config->ha.enabled && r->opt.mode == RECLAIMER_ONCE) {
                /* --once would close beside the group's leader. */
                ret_code =
                        error_set(err, -EINVAL,
                                  "--once cannot run with ha: it would close sessions beside the leader of "
                                  "the etcd group; use --plan, or SIGUSR1 on the leader");
        } else if (ret_code >= 0 && config->ha.enabled && r->opt.mode == RECLAIMER_DAEMON)
                ret_code = ha_new(loop, &config->ha, ha_role_changed, r, &r->ha, err);
        if (ret_code < 0) {
                /* Accounts not yet handed over are freed with the top level. */
                reclaimer_free(r);
                return ret_code;
        }

        ev_init(&r->grace_timer, grace_cb);
        r->grace_timer.data = r;
        ev_signal_init(&r->sig_term, signal_cb, SIGTERM);
        r->sig_term.data = r;
        ev_signal_init(&r->sig_int, signal_cb, SIGINT);
        r->sig_int.data = r;
        ev_signal_init(&r->sig_hup, signal_cb, SIGHUP);
        r->sig_hup.data = r;
        ev_signal_init(&r->sig_usr1, signal_cb, SIGUSR1);
        r->sig_usr1.data = r;
        ev_signal_init(&r->sig_usr2, signal_cb, SIGUSR2);
        r->sig_usr2.data = r;
        ev_init(&r->watchdog_timer, watchdog_cb);
        r->watchdog_timer.data = r;
        *ret = r;
        return 0;
}

int reclaimer_start(struct reclaimer *r) {
        for (size_t i = 0; i < r->n_runners; i++) {
                struct runner *u = &r->runners[i];
                struct error warning = { 0 };
                int ret;

                /* Two daemons acting on one account from one state file would
                 * both close, and each overwrite the other's ages. --plan
                 * only reads, and needs no lock. */
                if (r->opt.mode != RECLAIMER_PLAN) {
                        ret = state_lock(u->state);
                        if (ret == -EBUSY) {
                                ulog(u, LOG_ERR,
                                     "Another ivh-reclaimd is already running with state file %s (it holds "
                                     "%s.lock); refusing to start a second one",
                                     u->config->state_file, u->config->state_file);
                                return ret;
                        }
                        if (ret < 0) {
                                ulog(u, LOG_ERR, "Failed to lock state file %s.lock: %s",
                                     u->config->state_file, strerror(-ret));
                                return ret;
                        }
                }
                ret = state_load(u->state, now_wall_ms(), now_mono_ms(), r->opt.mode == RECLAIMER_PLAN,
                                 &warning);
                if (ret < 0) {
                        ulog(u, LOG_ERR, "Failed to read state file %s: %s%s", u->config->state_file,
                             file_strerror(ret),
                             ret == -EISDIR || ret == -EBADFD ? "; state_file must name a regular file"
                                                              : "");
                        return ret;
                }
                if (warning.message)
                        ulog(u, LOG_WARNING, "%s", warning.message);
                error_done(&warning);
                if (i == 0 && r->opt.mode != RECLAIMER_PLAN && !*state_boot_id(u->state))
                        log_warning("Cannot read the boot id (/proc/sys/kernel/random/boot_id, nor "
                                    "$IVH_BOOT_ID): after a restart, first-seen times count from the wall "
                                    "clock once the gateway has accepted it, not from the boot-time clock");
        }
        /* SIGTERM and SIGINT stop gracefully in every mode. */
        ev_signal_start(r->loop, &r->sig_term);
        ev_signal_start(r->loop, &r->sig_int);
        if (r->opt.mode == RECLAIMER_DAEMON) {
                uint64_t usec = 0;

                ev_signal_start(r->loop, &r->sig_hup);
                ev_signal_start(r->loop, &r->sig_usr1);
                ev_signal_start(r->loop, &r->sig_usr2);
                if (r->ha)
                        ha_start(r->ha);
                save_running(r->top ? r->top : r->runners[0].config);
                if (sd_watchdog_enabled(0, &usec) > 0 && usec > 0) {
                        /* Ping at twice the rate systemd expects. */
                        ev_timer_set(&r->watchdog_timer, 0., (double) usec / 2e6);
                        ev_timer_again(r->loop, &r->watchdog_timer);
                        log_debug("Watchdog enabled: pinging every %.3f s", (double) usec / 2e6);
                }
                for (size_t i = 0; i < r->n_runners; i++) {
                        struct runner *u = &r->runners[i];
                        char every[32];

                        duration_format(u->config->poll_interval_ms, every, sizeof every);
                        ulog(u, LOG_INFO,
                             "Started: polling %s every %s with %zu policies, %zu known sessions, token "
                             "from %s%s",
                             u->config->gateway.url, every, u->config->n_policies, state_size(u->state),
                             u->creds->source, dry_run(u) ? ", dry run" : "");
                        if (u->config->n_policies == 0)
                                ulog(u, LOG_WARNING,
                                     "No policies are configured: nothing will be reclaimed");
                }
        }
        /* --plan starts with the first account; advance() moves on. */
        for (size_t i = 0; i < (r->opt.mode == RECLAIMER_PLAN ? 1 : r->n_runners); i++) {
                ev_timer_set(&r->runners[i].poll_timer, 0., 0.);
                ev_timer_start(r->loop, &r->runners[i].poll_timer);
        }
        return 0;
}

size_t reclaimer_planned(const struct reclaimer *r) {
        return r->planned;
}

int reclaimer_exit_status(const struct reclaimer *r) {
        if (r->list_auth_failed)
                return 77; /* EX_NOPERM: the gateway refused our credentials */
        return r->any_list_failed || r->cycles == 0 ? 1 : 0;
}

void reclaimer_free(struct reclaimer *r) {
        if (!r)
                return;
        ev_timer_stop(r->loop, &r->grace_timer);
        ev_timer_stop(r->loop, &r->watchdog_timer);
        ev_signal_stop(r->loop, &r->sig_term);
        ev_signal_stop(r->loop, &r->sig_int);
        ev_signal_stop(r->loop, &r->sig_hup);
        ev_signal_stop(r->loop, &r->sig_usr1);
        ev_signal_stop(r->loop, &r->sig_usr2);
        for (size_t i = 0; i < r->n_runners; i++)
                runner_done(&r->runners[i]);
        ha_free(r->ha);
        free(r->runners);
        config_free(r->top);
        free(r->metrics_file);
        free(r);
}
