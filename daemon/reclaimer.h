/* The loop's owner: the poll timer, signals, and one cycle at a time:
 * list -> decide -> close -> log -> state. */
#pragma once

#include <ev.h>
#include <stdbool.h>
#include <stdio.h>

#include "config.h"
#include "error.h"
#include "plan.h"

enum reclaimer_mode {
        RECLAIMER_DAEMON, /* cycle every poll_interval until SIGTERM/SIGINT */
        RECLAIMER_ONCE,   /* one cycle, wait for its closes, stop */
        RECLAIMER_PLAN,   /* one list call, print the plan, touch nothing */
};

struct reclaimer_options {
        enum reclaimer_mode mode;
        bool force_dry_run; /* --dry-run: overrides dry_run: false in the file */
        FILE *plan_out;
        enum plan_format plan_format; /* --plan --output */
};

struct reclaimer;

/* Takes ownership of config, also on failure. Loads each account's access
 * token. Returns 0, -ENOMEM, or another negative errno when a token cannot be
 * had (a configuration error); err then says why, never with the token. */
int reclaimer_new(struct ev_loop *loop, struct config *config, const struct reclaimer_options *opt,
                  struct reclaimer **ret, struct error *err);

/* Loads the state, installs signal watchers and schedules the first cycle
 * at once. Returns 0 or a negative errno (already logged). */
int reclaimer_start(struct reclaimer *r);

/* After the loop returns: 0 when every list call of the run succeeded, 77
 * when one was refused as unauthorized, 1 otherwise (only meaningful for
 * --once and --plan). */
int reclaimer_exit_status(const struct reclaimer *r);

/* --plan: how many sessions a cycle would reclaim now, over all accounts. */
size_t reclaimer_planned(const struct reclaimer *r);

/* Saves the state if it changed, cancels what is in flight. */
void reclaimer_free(struct reclaimer *r);
