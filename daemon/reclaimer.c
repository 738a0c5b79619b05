#include "reclaimer.h"

#include <errno.h>
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

struct reclaimer {
        struct ev_loop *loop;
        struct config *config;
        struct credentials *creds;
        struct gateway_signer signer; /* derived from creds: reset when they change */
        /* A reloaded configuration waiting for the running cycle to end. */
        struct config *pending_config;
        struct credentials *pending_creds;
        struct reclaimer_options opt;
        struct http *http;
        struct state *state;
        struct retry_table *retries;
        struct metrics *metrics;
        struct cycle *cycle; /* NULL between cycles */
        int64_t last_cycle_started_ms;
        ev_timer poll_timer;
        ev_timer grace_timer;
        ev_timer watchdog_timer;
        ev_signal sig_term, sig_int, sig_hup, sig_usr1;
        bool stopping;
        bool sweep_requested; /* SIGUSR1 during a cycle: run another one right after */
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
                /* closes in flight, plus the list call and a spare */
                .max_connections = (long) c->gateway.max_parallel + 2,
        };
}

static bool dry_run(const struct reclaimer *r) {
        return r->opt.force_dry_run || r->config->dry_run;
}

/* The next cycle starts poll_interval after the previous one started (or
 * after the gateway's Retry-After, if later), and never before it ended. */
static void schedule_next(struct reclaimer *r, int64_t started_mono_ms, uint64_t retry_after_ms,
                          bool after_cycle) {
        int64_t now = now_mono_ms(), next = started_mono_ms + (int64_t) r->config->poll_interval_ms;
        double delay;

        if (retry_after_ms > 0 && now + (int64_t) retry_after_ms > next)
                next = now + (int64_t) retry_after_ms;
        if (next <= now && after_cycle)
                log_warning("The cycle took longer than poll_interval (%" PRIu64
                            " ms); starting the next one now",
                            r->config->poll_interval_ms);
        delay = next > now ? (double) (next - now) / 1000.0 : 0.;
        ev_timer_stop(r->loop, &r->poll_timer);
        ev_timer_set(&r->poll_timer, delay, 0.);
        ev_timer_start(r->loop, &r->poll_timer);
}

/* STATUS= for `systemctl status`: one line about the last cycle. */
static void notify_status(struct reclaimer *r, const struct cycle_result *res) {
        char every[32], when[32];
        time_t t = time(NULL) + (time_t) (ev_timer_remaining(r->loop, &r->poll_timer) + 0.5);
        struct tm tm;

        localtime_r(&t, &tm);
        strftime(when, sizeof when, "%H:%M:%S", &tm);
        duration_format(r->config->poll_interval_ms, every, sizeof every);
        if (res->list_failed)
                sd_notifyf(0,
                           "STATUS=Last poll failed (see journal); %zu reclaimed in total, next poll at %s",
                           r->total_reclaimed, when);
        else
                sd_notifyf(0,
                           "STATUS=%zu sessions listed, %zu reclaimed, %zu failed%s; next poll at %s (every "
                           "%s)",
                           res->listed, res->closed + res->already_closed, res->failed,
                           dry_run(r) ? " (dry run)" : "", when, every);
}

static void save_state(struct reclaimer *r) {
        bool dirty;
        int ret;

        if (r->opt.mode == RECLAIMER_PLAN)
                return;
        dirty = state_dirty(r->state);
        ret = state_save(r->state, now_wall_ms(), now_mono_ms());
        if (dirty)
                metrics_state_write(r->metrics, ret >= 0);
        if (ret < 0)
                log_error("Failed to write state file %s: %s; first-seen times are kept in memory, retrying "
                          "after "
                          "the next cycle",
                          r->config->state_file, strerror(-ret));
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
        gateway_signer_reset(&r->signer);
        r->pending_config = NULL;
        r->pending_creds = NULL;
        log_info("The reloaded configuration is now in effect: %zu policies, polling every %" PRIu64 " ms%s",
                 r->config->n_policies, r->config->poll_interval_ms, dry_run(r) ? ", dry run" : "");
}

static void write_metrics(struct reclaimer *r, const struct cycle_result *res) {
        int ret;

        if (r->opt.mode == RECLAIMER_PLAN)
                return;
        metrics_cycle(r->metrics, !res->list_failed, now_wall_ms());
        if (!r->config->metrics_file)
                return;
        ret = metrics_write(r->metrics, r->config->metrics_file);
        if (ret < 0)
                log_warning("Failed to write metrics file %s: %s; retrying after the next cycle",
                            r->config->metrics_file, strerror(-ret));
}

static void cycle_done(struct cycle *c, const struct cycle_result *res, void *userdata) {
        struct reclaimer *r = userdata;
        struct cycle_result copy = *res;

        r->cycles++;
        r->total_reclaimed += res->closed + res->already_closed;
        if (res->list_failed)
                r->any_list_failed = true;
        if (r->stopping && res->deferred > 0)
                log_warning(
                        "Stopping: %zu due session(s) were not closed; they will be closed after restart",
                        res->deferred);
        if (!res->list_failed)
                save_state(r);
        write_metrics(r, res);
        r->cycle = NULL;
        cycle_free(c); /* res points into c: use copy from here on */

        if (r->stopping || r->opt.mode != RECLAIMER_DAEMON) {
                ev_break(r->loop, EVBREAK_ALL);
                return;
        }
        apply_pending(r);
        if (r->sweep_requested) {
                r->sweep_requested = false;
                schedule_next(r, copy.started_ms - (int64_t) r->config->poll_interval_ms,
                              copy.retry_after_ms, false);
        } else
                schedule_next(r, copy.started_ms, copy.retry_after_ms, true);
        notify_status(r, &copy);
}

static void start_cycle(struct reclaimer *r) {
        struct cycle_env env = {
                .loop = r->loop,
                .config = r->config,
                .creds = r->creds,
                .signer = &r->signer,
                .http = r->http,
                .state = r->state,
                .retries = r->retries,
                .metrics = r->metrics,
                .dry_run = dry_run(r),
                .plan_out = r->opt.mode == RECLAIMER_PLAN ? r->opt.plan_out : NULL,
        };
        int ret;

        if (r->cycle) {
                log_warning("The previous cycle is still running; skipping this tick");
                return;
        }
        r->last_cycle_started_ms = now_mono_ms();
        ret = cycle_start(&env, cycle_done, r, &r->cycle);
        if (ret < 0) {
                /* Already logged as a failed cycle. */
                r->cycle = NULL;
                r->cycles++;
                r->any_list_failed = true;
                if (r->opt.mode != RECLAIMER_DAEMON)
                        ev_break(r->loop, EVBREAK_ALL);
                else
                        schedule_next(r, r->last_cycle_started_ms, 0, false);
        }
}

static void poll_cb(struct ev_loop *loop, ev_timer *w, int revents) {
        (void) loop;
        (void) revents;
        start_cycle(w->data);
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
                        schedule_next(r, r->last_cycle_started_ms, 0, false);
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
                .cycle_started_ms = r->cycle ? cycle_started_ms(r->cycle) : 0,
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
        if (w->signum == SIGUSR1) {
                /* An application that just hit its concurrency limit asks for
                 * slots back now rather than at the next tick. */
                if (r->stopping)
                        return;
                if (r->cycle) {
                        log_info("Sweep requested (SIGUSR1); starting another cycle when the running one "
                                 "ends");
                        r->sweep_requested = true;
                } else {
                        log_info("Sweep requested (SIGUSR1); starting a cycle now");
                        ev_timer_stop(loop, &r->poll_timer);
                        start_cycle(r);
                }
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
        cycle_stop(r->cycle); /* may end the cycle, and break the loop, at once */
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
        gateway_signer_reset(&r->signer);
        if (!r->opt.plan_out)
                r->opt.plan_out = stdout;

        hopt = http_options_for(config);
        ret_code = http_new(loop, &hopt, &r->http);
        if (ret_code >= 0)
                ret_code = state_new(config->state_file, &r->state);
        if (ret_code >= 0)
                ret_code = retry_table_new(&r->retries);
        if (ret_code >= 0)
                ret_code = metrics_new(&r->metrics);
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
        ev_signal_init(&r->sig_usr1, signal_cb, SIGUSR1);
        r->sig_usr1.data = r;
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
                ev_signal_start(r->loop, &r->sig_usr1);
                if (sd_watchdog_enabled(0, &usec) > 0 && usec > 0) {
                        /* Ping at twice the rate systemd expects. */
                        ev_timer_set(&r->watchdog_timer, 0., (double) usec / 2e6);
                        ev_timer_again(r->loop, &r->watchdog_timer);
                        log_debug("Watchdog enabled: pinging every %.3f s", (double) usec / 2e6);
                }
                log_info("Started: polling %s every %" PRIu64
                         " ms with %zu policies, %zu known sessions, token "
                         "from %s%s",
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
        ev_timer_stop(r->loop, &r->poll_timer);
        ev_timer_stop(r->loop, &r->grace_timer);
        ev_timer_stop(r->loop, &r->watchdog_timer);
        ev_signal_stop(r->loop, &r->sig_term);
        ev_signal_stop(r->loop, &r->sig_int);
        ev_signal_stop(r->loop, &r->sig_hup);
        ev_signal_stop(r->loop, &r->sig_usr1);
        /* Cancels what is still in flight (the grace period ran out); no callback runs. */
        http_free(r->http);
        cycle_free(r->cycle);
        if (r->state)
                save_state(r);
        state_free(r->state);
        retry_table_free(r->retries);
        metrics_free(r->metrics);
        config_free(r->config);
        credentials_free(r->creds);
        config_free(r->pending_config);
        credentials_free(r->pending_creds);
        gateway_signer_reset(&r->signer);
        free(r);
}
