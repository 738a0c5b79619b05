/* Internal to the loop's owner, shared by its four files and nothing else:
 *
 *   reclaimer.c  wires it: creates the runners, starts and frees them, one
 *                handler per signal, the watchdog, the HA role's journal entry
 *   runner.c     one account's state machine: poll timer, cycle start and
 *                end, advance(), applying a reloaded file between cycles
 *   reload.c     SIGHUP: loads and checks the file, hands it to the runners
 *   status.c     renders what the runners know: STATUS= and the metrics file
 *
 * Each runner is a state machine (enum runner_state):
 *
 *     IDLE --poll timer--> CYCLING --cycle ends--> ENDED --advance()--> IDLE
 *                                                    |
 *                       SIGTERM, or --once/--plan:   +--advance()--> DONE
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
#pragma once

#include <ev.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "credentials.h"
#include "cycle.h"
#include "error.h"
#include "gateway.h"
#include "ha.h"
#include "http.h"
#include "notify.h"
#include "reclaimer.h"
#include "throttle.h"

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
        struct cycle *cycle;                       /* from CYCLING to ENDED */
        struct notifier *notify;                   /* notify: (runner-notify.c); NULL without */
        struct credentials *notify_secret;         /* its secret (format json); NULL: none */
        struct credentials *pending_notify_secret; /* with pending_config */
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
        struct ha *ha;                  /* ha: the etcd election; NULL without */
        bool releasing;                 /* ha: stopped; waiting for the lease's revoke */
        uint64_t ha_lease_ms;           /* ha: the lease, which bounds every gateway request (2/3 of it) */
        struct credentials *notify_env; /* $IVH_NOTIFY_SECRET, read once and wiped; NULL: not set */
};

/* Whether the account runs dry (--dry-run, or dry_run: in its file). */
static inline bool runner_dry_run(const struct runner *u) {
        return u->r->opt.force_dry_run || u->config->dry_run;
}

/* The account's name, as logs and STATUS= show it ("default" for the
 * single-gateway form). */
static inline const char *runner_account(const struct runner *u) {
        return config_account_name(u->config);
}

/* runner.c */
void runner_set_state(struct runner *u, enum runner_state to);
const char *runner_doing(const struct runner *u);
int runner_account_token(const struct config *a, const struct credentials *previous,
                         struct credentials **ret, struct error *err);
void runner_log(const struct runner *u, int priority, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));
void runner_schedule_next(struct runner *u, int64_t started_mono_ms, uint64_t retry_after_ms,
                          bool after_cycle);
void runner_apply_pending(struct runner *u);
void runner_kick(struct runner *u);
int64_t runner_sweep_earliest_ms(const struct runner *u);
int runner_init(struct reclaimer *r, struct runner *u, struct config *config, struct error *err);
void runner_done(struct runner *u);

/* runner-notify.c */
int runner_notify_secret(struct reclaimer *r, const struct config *a, struct credentials **ret,
                         struct error *err);
bool runner_notify_active(const struct reclaimer *r);
int runner_notify_start(struct runner *u, struct error *err);
void runner_notify_reconfigure(struct runner *u);
void runner_notify_cycle_ended(struct runner *u);

/* status.c */
void reclaimer_notify_status(struct reclaimer *r, struct runner *u);
void reclaimer_write_metrics(struct reclaimer *r);

/* reload.c */
void reclaimer_save_running(const struct config *top);
void reclaimer_reload(struct reclaimer *r);
