/* The loop's owner, wired: one runner per account (runner.c), one handler
 * per signal, the watchdog, and the HA role's journal entry. How the
 * runners move, and the rule for callbacks, are in reclaimer-internal.h. */
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-daemon.h>

#include "reclaimer-internal.h"

#include "duration.h"
#include "fileio.h"
#include "health.h"
#include "log.h"
#include "state.h"
#include "util.h"

#define SHUTDOWN_GRACE_EXTRA_S 1.0

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
                log_struct(
                        old == HA_LEADER ? LOG_WARNING : LOG_NOTICE, MESSAGE_ID_HA_ROLE, f, ELEMENTSOF(f),
                        "HA: %s is now a standby (was %s; leader: %s); it lists and keeps ages, and closes nothing",
                        ha_name(h), ha_role_to_string(old), *leader ? leader : "unknown");
        else
                log_struct(
                        LOG_WARNING, MESSAGE_ID_HA_ROLE, f, ELEMENTSOF(f),
                        "HA: etcd cannot be reached by %s (was %s); nobody here closes anything until it answers",
                        ha_name(h), ha_role_to_string(old));
        for (size_t i = 0; i < r->n_runners; i++)
                if (r->runners[i].notify)
                        notifier_set_active(r->runners[i].notify, runner_notify_active(r));
        reclaimer_write_metrics(r);
        if (r->cycles > 0)
                reclaimer_notify_status(r, &r->runners[0]);
}

/* Pings the systemd watchdog, but only while every account makes progress. */
static void watchdog_cb(struct ev_loop *loop, ev_timer *w, int revents) {
        struct reclaimer *r = w->data;
        const char *reason = NULL;
        struct runner *stalled = NULL;

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
                if (runner_notify_active(r))
                        notify_reclaiming(stalled->notify, "stalled");
                runner_log(
                        stalled, LOG_ERR,
                        "Reclaiming has stalled (%s): %s; withholding the watchdog ping so that systemd restarts the service",
                        runner_doing(stalled), reason);
                if (r->n_runners > 1)
                        sd_notifyf(0, "STATUS=Stalled (%s, account %s): %s", runner_doing(stalled),
                                   runner_account(stalled), reason);
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
        log_warning(
                "Stopping with %zu request(s) still in flight after the grace period; their outcome is unknown",
                in_flight);
        ev_break(loop, EVBREAK_ALL);
}

/* SIGHUP: load the file again (reload.c). */
static void on_sighup(struct ev_loop *loop, ev_signal *w, int revents) {
        struct reclaimer *r = w->data;

        (void) loop;
        (void) revents;
        if (!r->stopping)
                reclaimer_reload(r);
}

/* SIGUSR2: the unit's ExecReload= ran --check-config, which refused the
 * file, so no SIGHUP follows: a reload failed all the same. */
static void on_sigusr2(struct ev_loop *loop, ev_signal *w, int revents) {
        struct reclaimer *r = w->data;

        (void) loop;
        (void) revents;
        log_error(
                "Reload failed: --check-config refused %s (its errors are in the journal); the previous configuration stays in effect",
                r->top->path);
        r->reload_failed = true;
        reclaimer_write_metrics(r);
        if (r->cycles > 0)
                reclaimer_notify_status(r, &r->runners[0]);
}

/* SIGUSR1 for one idle runner: its poll timer starts the sweep, from the
 * loop, as soon as the sweep rules allow. */
static void sweep_idle(struct ev_loop *loop, struct runner *u) {
        int64_t now = now_mono_ms(), at = runner_sweep_earliest_ms(u);
        double delay = at > now ? (double) (at - now) / 1000.0 : 0.;

        if (delay >= ev_timer_remaining(loop, &u->poll_timer)) {
                runner_log(u, LOG_INFO, "Sweep requested (SIGUSR1); the next cycle is already due in %.1f s",
                           ev_timer_remaining(loop, &u->poll_timer));
                return;
        }
        if (at > now && u->not_before_ms > now)
                runner_log(
                        u, LOG_NOTICE,
                        "Sweep requested (SIGUSR1); starting in %.1f s, when the gateway's Retry-After has passed",
                        delay);
        else
                runner_log(u, LOG_INFO, "Sweep requested (SIGUSR1); starting a cycle%s",
                           delay > 0 ? " in under a second" : " now");
        ev_timer_stop(loop, &u->poll_timer);
        ev_timer_set(&u->poll_timer, delay, 0.);
        ev_timer_start(loop, &u->poll_timer);
}

/* SIGUSR1: an application that just hit its concurrency limit asks for
 * slots back now rather than at the next tick. */
static void on_sigusr1(struct ev_loop *loop, ev_signal *w, int revents) {
        struct reclaimer *r = w->data;

        (void) revents;
        if (r->stopping)
                return;
        for (size_t i = 0; i < r->n_runners; i++) {
                struct runner *u = &r->runners[i];

                if (u->run_state == RUNNER_IDLE) {
                        sweep_idle(loop, u);
                        continue;
                }
                runner_log(u, LOG_INFO,
                           "Sweep requested (SIGUSR1); starting another cycle when the running one ends");
                u->sweep_requested = true;
        }
}

/* SIGTERM and SIGINT: every runner heads for DONE; cycles in flight get
 * the longest gateway timeout, and a second, to finish. */
static void on_sigterm(struct ev_loop *loop, ev_signal *w, int revents) {
        struct reclaimer *r = w->data;
        double grace = 0;
        bool waiting = false;

        (void) revents;
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
                runner_kick(u);
        }
        if (waiting) {
                /* Let in-flight requests finish, but not for longer than one may take. */
                ev_timer_set(&r->grace_timer, grace + SHUTDOWN_GRACE_EXTRA_S, 0.);
                ev_timer_start(loop, &r->grace_timer);
        }
}

int reclaimer_new(struct ev_loop *loop, struct config *config, const struct reclaimer_options *opt,
                  struct reclaimer **ret, struct error *err) {
        struct reclaimer *r = calloc(1, sizeof *r);
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
        r->n_runners = config->n_accounts;
        r->runners = calloc(r->n_runners, sizeof *r->runners);
        if (!r->runners || ret_code < 0) {
                config_free(config);
                free(r->metrics_file);
                free(r->runners);
                free(r);
                (void) error_set(err, 0, "out of memory");
                return -ENOMEM;
        }
        /* Each runner owns its account's configuration from here on; the
         * top level keeps the emptied list until the end. */
        r->top = config;
        for (size_t i = 0; i < r->n_runners; i++) {
                struct config *a = config->accounts[i];

                config->accounts[i] = NULL;
                ret_code = runner_init(r, &r->runners[i], a, err);
                if (ret_code < 0)
                        break;
        }
        if (ret_code >= 0 && config->ha.enabled && r->opt.mode == RECLAIMER_ONCE) {
                /* --once would close beside the group's leader. */
                ret_code = error_set(
                        err, -EINVAL,
                        "--once cannot run with ha: it would close sessions beside the leader of the etcd group; use --plan, or SIGUSR1 on the leader");
        } else if (ret_code >= 0 && config->ha.enabled && r->opt.mode == RECLAIMER_DAEMON)
                ret_code = ha_new(loop, &config->ha, ha_role_changed, r, &r->ha, err);
        if (ret_code < 0) {
                /* Accounts not yet handed over are freed with the top level. */
                reclaimer_free(r);
                return ret_code;
        }

        ev_init(&r->grace_timer, grace_cb);
        r->grace_timer.data = r;
        ev_signal_init(&r->sig_term, on_sigterm, SIGTERM);
        r->sig_term.data = r;
        ev_signal_init(&r->sig_int, on_sigterm, SIGINT);
        r->sig_int.data = r;
        ev_signal_init(&r->sig_hup, on_sighup, SIGHUP);
        r->sig_hup.data = r;
        ev_signal_init(&r->sig_usr1, on_sigusr1, SIGUSR1);
        r->sig_usr1.data = r;
        ev_signal_init(&r->sig_usr2, on_sigusr2, SIGUSR2);
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
                                runner_log(
                                        u, LOG_ERR,
                                        "Another ivh-reclaimd is already running with state file %s (it holds %s.lock); refusing to start a second one",
                                        u->config->state_file, u->config->state_file);
                                return ret;
                        }
                        if (ret < 0) {
                                runner_log(u, LOG_ERR, "Failed to lock state file %s.lock: %s",
                                           u->config->state_file, strerror(-ret));
                                return ret;
                        }
                }
                ret = state_load(u->state, now_wall_ms(), now_mono_ms(), r->opt.mode == RECLAIMER_PLAN,
                                 &warning);
                if (ret < 0) {
                        runner_log(u, LOG_ERR, "Failed to read state file %s: %s%s", u->config->state_file,
                                   file_strerror(ret),
                                   ret == -EISDIR || ret == -EBADFD ? "; state_file must name a regular file"
                                                                    : "");
                        return ret;
                }
                if (warning.message)
                        runner_log(u, LOG_WARNING, "%s", warning.message);
                error_done(&warning);
                /* The queue file is the state directory's too: opened
                 * under the state file's lock. */
                ret = runner_notify_start(u, &warning);
                if (ret < 0) {
                        runner_log(u, LOG_ERR, "Cannot start notifications: %s", error_message(&warning));
                        error_done(&warning);
                        return ret;
                }
                if (i == 0 && r->opt.mode != RECLAIMER_PLAN && !*state_boot_id(u->state))
                        log_warning(
                                "Cannot read the boot id (/proc/sys/kernel/random/boot_id, nor $IVH_BOOT_ID): after a restart, first-seen times count from the wall clock once the gateway has accepted it, not from the boot-time clock");
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
                reclaimer_save_running(r->top);
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
                        runner_log(
                                u, LOG_INFO,
                                "Started: polling %s every %s with %zu policies, %zu known sessions, token from %s%s",
                                u->config->gateway.url, every, u->config->n_policies, state_size(u->state),
                                u->creds->source, runner_dry_run(u) ? ", dry run" : "");
                        if (u->config->n_policies == 0)
                                runner_log(u, LOG_WARNING,
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
        credentials_free(r->notify_env);
        free(r->runners);
        config_free(r->top);
        free(r->metrics_file);
        free(r);
}
