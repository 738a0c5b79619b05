#include "reclaimer.h"

#include <errno.h>
#include <stdarg.h>
#include <inttypes.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-daemon.h>
#include <time.h>

#include "cycle.h"
#include "duration.h"
#include "health.h"
#include "http.h"
#include "log.h"
#include "metrics.h"
#include "retry.h"
#include "state.h"
#include "util.h"

#define MAX_RESPONSE_SIZE      (16u * 1024 * 1024)
#define SHUTDOWN_GRACE_EXTRA_S 1.0

struct reclaimer;

/* One account: its own connections, state, timer and cycle, so that a
 * gateway that hangs stalls only its own account. */
struct runner {
        struct reclaimer *r;
        struct config *config; /* the account's configuration (owned) */
        struct credentials *creds;
        struct gateway_signer signer; /* derived from creds: reset when they change */
        /* A reloaded configuration waiting for this account's cycle to end. */
        struct config *pending_config;
        struct credentials *pending_creds;
        struct http *http;
        struct state *state;
        struct retry_table *retries;
        struct metrics *metrics;
        struct cycle *cycle; /* NULL between cycles */
        int64_t last_cycle_started_ms;
        ev_timer poll_timer;
        bool sweep_requested; /* SIGUSR1 during a cycle: run another one right after */
        bool cycled;          /* --once/--plan: its one cycle has ended */
        struct cycle_result last;
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
        ev_signal sig_term, sig_int, sig_hup, sig_usr1;
        bool stopping;
        bool any_list_failed;
        bool unhealthy_logged;
        unsigned long cycles;
        size_t total_reclaimed;
};

static struct http_options http_options_for(const struct config *c) {
        return (struct http_options){
                .ca_file = c->gateway.ca_file,
                .timeout_ms = (long) c->gateway.timeout_ms,
                .connect_timeout_ms = (long) c->gateway.timeout_ms,
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

/* The next cycle starts poll_interval after the previous one started (or
 * after the gateway's Retry-After, if later), and never before it ended. */
static void schedule_next(struct runner *u, int64_t started_mono_ms, uint64_t retry_after_ms,
                          bool after_cycle) {
        int64_t now = now_mono_ms(), next = started_mono_ms + (int64_t) u->config->poll_interval_ms;
        double delay;

        if (retry_after_ms > 0 && now + (int64_t) retry_after_ms > next)
                next = now + (int64_t) retry_after_ms;
        if (next <= now && after_cycle)
                ulog(u, LOG_WARNING,
                     "The cycle took longer than poll_interval (%" PRIu64 " ms); starting the next one now",
                     u->config->poll_interval_ms);
        delay = next > now ? (double) (next - now) / 1000.0 : 0.;
        ev_timer_stop(u->r->loop, &u->poll_timer);
        ev_timer_set(&u->poll_timer, delay, 0.);
        ev_timer_start(u->r->loop, &u->poll_timer);
}

/* STATUS= for `systemctl status`: one line about the last cycles. */
static void notify_status(struct reclaimer *r, struct runner *u) {
        char every[32], when[32];
        time_t t = time(NULL) + (time_t) (ev_timer_remaining(r->loop, &u->poll_timer) + 0.5);
        size_t listed = 0, reclaimed = 0, failed = 0, list_failed = 0;
        struct tm tm;

        localtime_r(&t, &tm);
        strftime(when, sizeof when, "%H:%M:%S", &tm);
        duration_format(u->config->poll_interval_ms, every, sizeof every);
        for (size_t i = 0; i < r->n_runners; i++) {
                const struct cycle_result *res = &r->runners[i].last;

                listed += res->listed;
                reclaimed += res->closed + res->already_closed;
                failed += res->failed;
                list_failed += res->list_failed;
        }
        if (r->n_runners > 1)
                sd_notifyf(
                        0,
                        "STATUS=%zu accounts (%zu failing to list): %zu sessions listed, %zu reclaimed, %zu "
                        "failed in the last cycles",
                        r->n_runners, list_failed, listed, reclaimed, failed);
        else if (list_failed)
                sd_notifyf(0,
                           "STATUS=Last poll failed (see journal); %zu reclaimed in total, next poll at %s",
                           r->total_reclaimed, when);
        else
                sd_notifyf(0,
                           "STATUS=%zu sessions listed, %zu reclaimed, %zu failed%s; next poll at %s (every "
                           "%s)",
                           listed, reclaimed, failed, dry_run(u) ? " (dry run)" : "", when, every);
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
                ret = metrics_write(ms, names, r->n_runners, r->metrics_file);
        }
        free(ms);
        free(names);
        if (ret < 0)
                log_warning("Failed to write metrics file %s: %s; retrying after the next cycle",
                            r->metrics_file, strerror(-ret));
}

/* Swaps in a reloaded configuration; only between cycles, so that a cycle
 * runs from start to end with one configuration. */
static void apply_pending(struct runner *u) {
        struct http_options old_opt, new_opt;
        struct http *http = NULL;
        int ret;

        if (!u->pending_config || u->cycle)
                return;
        old_opt = http_options_for(u->config);
        new_opt = http_options_for(u->pending_config);
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
        u->pending_config = NULL;
        u->pending_creds = NULL;
        gateway_signer_reset(&u->signer);
        ulog(u, LOG_INFO,
             "The reloaded configuration is now in effect: %zu policies, polling every %" PRIu64 " ms%s",
             u->config->n_policies, u->config->poll_interval_ms, dry_run(u) ? ", dry run" : "");
}

static bool all_cycled(const struct reclaimer *r) {
        for (size_t i = 0; i < r->n_runners; i++)
                if (!r->runners[i].cycled)
                        return false;
        return true;
}

static bool any_cycle(const struct reclaimer *r) {
        for (size_t i = 0; i < r->n_runners; i++)
                if (r->runners[i].cycle)
                        return true;
        return false;
}

/* An account's cycle ended in --once or --plan mode, or while stopping.
 * --plan runs the accounts one after the other so that their tables do not
 * interleave; the loop ends when no cycle is left to run. */
static void one_shot_done(struct reclaimer *r, struct runner *u) {
        if (r->opt.mode == RECLAIMER_PLAN && !r->stopping && u + 1 < r->runners + r->n_runners) {
                ev_timer_set(&u[1].poll_timer, 0., 0.);
                ev_timer_start(r->loop, &u[1].poll_timer);
                return;
        }
        if (!any_cycle(r) && (r->stopping || all_cycled(r)))
                ev_break(r->loop, EVBREAK_ALL);
}

static void cycle_done(struct cycle *c, const struct cycle_result *res, void *userdata) {
        struct runner *u = userdata;
        struct reclaimer *r = u->r;

        u->last = *res;
        r->cycles++;
        r->total_reclaimed += res->closed + res->already_closed;
        if (res->list_failed)
                r->any_list_failed = true;
        if (r->stopping && res->deferred > 0)
                ulog(u, LOG_WARNING,
                     "Stopping: %zu due session(s) were not closed; they will be closed after restart",
                     res->deferred);
        if (r->opt.mode != RECLAIMER_PLAN)
                metrics_cycle(u->metrics, !res->list_failed, now_wall_ms());
        if (!res->list_failed)
                save_state(u);
        write_metrics(r);
        u->cycle = NULL;
        u->cycled = true;
        cycle_free(c); /* res points into c: use u->last from here on */

        if (r->stopping || r->opt.mode != RECLAIMER_DAEMON) {
                one_shot_done(r, u);
                return;
        }
        apply_pending(u);
        if (u->sweep_requested) {
                u->sweep_requested = false;
                schedule_next(u, u->last.started_ms - (int64_t) u->config->poll_interval_ms,
                              u->last.retry_after_ms, false);
        } else
                schedule_next(u, u->last.started_ms, u->last.retry_after_ms, true);
        notify_status(r, u);
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
                .plan_out = r->opt.mode == RECLAIMER_PLAN ? r->opt.plan_out : NULL,
        };
        int ret;

        if (u->cycle) {
                ulog(u, LOG_WARNING, "The previous cycle is still running; skipping this tick");
                return;
        }
        if (env.plan_out && r->n_runners > 1)
                fprintf(env.plan_out, "%s== account %s\n", u == r->runners ? "" : "\n", account(u));
        u->last_cycle_started_ms = now_mono_ms();
        ret = cycle_start(&env, cycle_done, u, &u->cycle);
        if (ret < 0) {
                /* Already logged as a failed cycle. */
                u->cycle = NULL;
                u->cycled = true;
                r->cycles++;
                r->any_list_failed = true;
                if (r->opt.mode != RECLAIMER_DAEMON)
                        one_shot_done(r, u);
                else
                        schedule_next(u, u->last_cycle_started_ms, 0, false);
        }
}

static void poll_cb(struct ev_loop *loop, ev_timer *w, int revents) {
        struct runner *u = w->data;

        (void) loop;
        (void) revents;
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
        char *errors = NULL, errbuf[512], *metrics_file = NULL;
        size_t n;
        int ret;

        sd_notify(0, "RELOADING=1");
        log_info("Reloading %s", r->runners[0].config->path);
        ret = config_load(r->runners[0].config->path, &top, &errors);
        if (ret < 0) {
                log_lines(LOG_ERR, errors);
                log_error("Reload failed: %s is not valid; the previous configuration stays in effect",
                          r->runners[0].config->path);
                free(errors);
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

                if (strcmp(config_account_name(a), account(&r->runners[i])) != 0 ||
                    strcmp(a->state_file, r->runners[i].config->state_file) != 0) {
                        log_error("Reload failed: account names or state_file changed, which needs a "
                                  "restart; the "
                                  "previous configuration stays in effect");
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

                ret = credentials_load(&a->gateway, r->runners[i].creds, a->account, &creds[i], errbuf,
                                       sizeof errbuf);
                if (ret < 0) {
                        log_error("Reload failed: %s; the previous configuration stays in effect", errbuf);
                        goto done;
                }
        }

        /* Valid: hand each account its new configuration. */
        for (size_t i = 0; i < n; i++) {
                struct runner *u = &r->runners[i];

                config_free(u->pending_config);
                credentials_free(u->pending_creds);
                if (accounts) {
                        u->pending_config = accounts[i];
                        accounts[i] = NULL;
                } else {
                        u->pending_config = top;
                        top = NULL;
                }
                u->pending_creds = creds[i];
                creds[i] = NULL;
                if (u->cycle)
                        ulog(u, LOG_INFO, "Reloaded; it takes effect when the running cycle ends");
                else {
                        apply_pending(u);
                        /* A new poll_interval counts from the start of the last cycle. */
                        if (ev_is_active(&u->poll_timer))
                                schedule_next(u, u->last_cycle_started_ms, 0, false);
                }
        }
        free(r->metrics_file);
        r->metrics_file = metrics_file;
        metrics_file = NULL;
done:
        for (size_t i = 0; creds && i < r->n_runners; i++)
                credentials_free(creds[i]);
        free(creds);
        free(metrics_file);
        config_free(top);
        sd_notify(0, "READY=1");
}

/* Pings the systemd watchdog, but only while every account keeps cycling. */
static void watchdog_cb(struct ev_loop *loop, ev_timer *w, int revents) {
        struct reclaimer *r = w->data;
        const char *reason = NULL;
        const struct runner *stalled = NULL;

        (void) loop;
        (void) revents;
        for (size_t i = 0; i < r->n_runners && !stalled; i++) {
                struct runner *u = &r->runners[i];
                struct health_input in = {
                        .now_ms = now_mono_ms(),
                        .stopping = r->stopping,
                        .cycle_running = u->cycle != NULL,
                        .cycle_started_ms = u->cycle ? cycle_started_ms(u->cycle) : 0,
                        .next_cycle_scheduled = ev_is_active(&u->poll_timer),
                };

                if (!health_ok(&in, health_cycle_budget_ms(u->config), &reason))
                        stalled = u;
        }
        if (!stalled) {
                sd_notify(0, "WATCHDOG=1");
                r->unhealthy_logged = false;
        } else if (!r->unhealthy_logged) {
                ulog(stalled, LOG_ERR,
                     "Reclaiming has stalled: %s; withholding the watchdog ping so that systemd restarts "
                     "the "
                     "service",
                     reason);
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

        (void) revents;
        if (w->signum == SIGHUP) {
                if (!r->stopping)
                        reload(r);
                return;
        }
        if (w->signum == SIGUSR1) {
                /* An application that just hit its concurrency limit asks for
                 * slots back now rather than at the next tick. */
                if (r->stopping)
                        return;
                for (size_t i = 0; i < r->n_runners; i++) {
                        struct runner *u = &r->runners[i];

                        if (u->cycle) {
                                ulog(u, LOG_INFO,
                                     "Sweep requested (SIGUSR1); starting another cycle when the running "
                                     "one ends");
                                u->sweep_requested = true;
                        } else {
                                ulog(u, LOG_INFO, "Sweep requested (SIGUSR1); starting a cycle now");
                                ev_timer_stop(loop, &u->poll_timer);
                                start_cycle(u);
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
                double g = (double) r->runners[i].config->gateway.timeout_ms / 1000.0;

                ev_timer_stop(loop, &r->runners[i].poll_timer);
                if (g > grace)
                        grace = g;
        }
        if (!any_cycle(r)) {
                ev_break(loop, EVBREAK_ALL);
                return;
        }
        /* Let in-flight closes finish, but not for longer than one request may take. */
        ev_timer_set(&r->grace_timer, grace + SHUTDOWN_GRACE_EXTRA_S, 0.);
        ev_timer_start(loop, &r->grace_timer);
        for (size_t i = 0; i < r->n_runners; i++)
                if (r->runners[i].cycle)
                        cycle_stop(r->runners[i].cycle); /* may end the cycle, and break the loop, at once */
}

static int runner_init(struct reclaimer *r, struct runner *u, struct config *config, char *errbuf,
                       size_t errlen) {
        struct http_options hopt = http_options_for(config);
        int ret;

        u->r = r;
        u->config = config;
        gateway_signer_reset(&u->signer);
        ev_init(&u->poll_timer, poll_cb);
        u->poll_timer.data = u;
        ret = credentials_load(&config->gateway, NULL, config->account, &u->creds, errbuf, errlen);
        if (ret < 0)
                return ret;
        ret = http_new(r->loop, &hopt, &u->http);
        if (ret >= 0)
                ret = state_new(config->state_file, &u->state);
        if (ret >= 0)
                ret = retry_table_new(&u->retries);
        if (ret >= 0)
                ret = metrics_new(&u->metrics);
        if (ret < 0)
                snprintf(errbuf, errlen, "%s", strerror(-ret));
        return ret;
}

static void runner_done(struct runner *u) {
        if (!u->r)
                return;
        ev_timer_stop(u->r->loop, &u->poll_timer);
        /* Cancels what is still in flight (the grace period ran out); no callback runs. */
        http_free(u->http);
        cycle_free(u->cycle);
        if (u->state)
                save_state(u);
        state_free(u->state);
        retry_table_free(u->retries);
        metrics_free(u->metrics);
        config_free(u->config);
        credentials_free(u->creds);
        config_free(u->pending_config);
        credentials_free(u->pending_creds);
        gateway_signer_reset(&u->signer);
}

int reclaimer_new(struct ev_loop *loop, struct config *config, const struct reclaimer_options *opt,
                  struct reclaimer **ret, char *errbuf, size_t errlen) {
        struct reclaimer *r = calloc(1, sizeof *r);
        struct config **accounts;
        int ret_code = 0;

        if (!r) {
                config_free(config);
                snprintf(errbuf, errlen, "out of memory");
                return -ENOMEM;
        }
        r->loop = loop;
        r->opt = *opt;
        if (!r->opt.plan_out)
                r->opt.plan_out = stdout;
        if (config->metrics_file && !(r->metrics_file = strdup(config->metrics_file)))
                ret_code = -ENOMEM;

        r->n_runners = accounts_of(config, &accounts);
        r->runners = calloc(r->n_runners, sizeof *r->runners);
        if (!r->runners || ret_code < 0) {
                config_free(config);
                free(r->metrics_file);
                free(r->runners);
                free(r);
                snprintf(errbuf, errlen, "out of memory");
                return -ENOMEM;
        }
        /* Each runner owns its account's configuration from here on. */
        for (size_t i = 0; i < r->n_runners; i++) {
                struct config *a = accounts ? accounts[i] : config;

                if (accounts)
                        accounts[i] = NULL;
                ret_code = runner_init(r, &r->runners[i], a, errbuf, errlen);
                if (ret_code < 0)
                        break;
        }
        if (accounts)
                r->top = config; /* keeps the emptied account list until the end */
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
        ev_init(&r->watchdog_timer, watchdog_cb);
        r->watchdog_timer.data = r;
        *ret = r;
        return 0;
}

int reclaimer_start(struct reclaimer *r) {
        for (size_t i = 0; i < r->n_runners; i++) {
                struct runner *u = &r->runners[i];
                char *warning = NULL;
                int ret;

                ret = state_load(u->state, now_wall_ms(), now_mono_ms(), r->opt.mode == RECLAIMER_PLAN,
                                 &warning);
                if (ret < 0) {
                        ulog(u, LOG_ERR, "Failed to read state file %s: %s", u->config->state_file,
                             strerror(-ret));
                        return ret;
                }
                if (warning) {
                        ulog(u, LOG_WARNING, "%s", warning);
                        free(warning);
                }
        }
        /* SIGTERM and SIGINT stop gracefully in every mode. */
        ev_signal_start(r->loop, &r->sig_term);
        ev_signal_start(r->loop, &r->sig_int);
        if (r->opt.mode == RECLAIMER_DAEMON) {
                uint64_t usec = 0;

                ev_signal_start(r->loop, &r->sig_hup);
                ev_signal_start(r->loop, &r->sig_usr1);
                if (sd_watchdog_enabled(0, &usec) > 0 && usec > 0) {
                        /* Ping at twice the rate systemd expects. */
                        ev_timer_set(&r->watchdog_timer, 0., (double) usec / 2e6);
                        ev_timer_again(r->loop, &r->watchdog_timer);
                        log_debug("Watchdog enabled: pinging every %.3f s", (double) usec / 2e6);
                }
                for (size_t i = 0; i < r->n_runners; i++) {
                        struct runner *u = &r->runners[i];

                        ulog(u, LOG_INFO,
                             "Started: polling %s every %" PRIu64
                             " ms with %zu policies, %zu known sessions, token "
                             "from %s%s",
                             u->config->gateway.url, u->config->poll_interval_ms, u->config->n_policies,
                             state_size(u->state), u->creds->source, dry_run(u) ? ", dry run" : "");
                        if (u->config->n_policies == 0)
                                ulog(u, LOG_WARNING,
                                     "No policies are configured: nothing will be reclaimed");
                }
        }
        /* --plan starts with the first account; one_shot_done() moves on. */
        for (size_t i = 0; i < (r->opt.mode == RECLAIMER_PLAN ? 1 : r->n_runners); i++) {
                ev_timer_set(&r->runners[i].poll_timer, 0., 0.);
                ev_timer_start(r->loop, &r->runners[i].poll_timer);
        }
        return 0;
}

int reclaimer_exit_status(const struct reclaimer *r) {
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
        for (size_t i = 0; i < r->n_runners; i++)
                runner_done(&r->runners[i]);
        free(r->runners);
        config_free(r->top);
        free(r->metrics_file);
        free(r);
}
