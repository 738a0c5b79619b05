/* When the loop counts as healthy, for the systemd watchdog. Health is
 * judged by progress, not by how long a cycle takes: a cycle that is working
 * through many closes, or that waits out a gateway's Retry-After, is
 * healthy; one in which nothing has finished for longer than a request may
 * take is stalled, and so is an idle runner with no poll scheduled. Pure. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "config.h"

struct health_input {
        int64_t now_ms;
        bool stopping;             /* shutdown is bounded by its own grace timer */
        bool done;                 /* --once/--plan finished: nothing more runs */
        bool cycle_running;        /* a cycle exists (listing, closing or ended) */
        int64_t last_progress_ms;  /* when cycle_running: a request finished, or the cycle started or resumed
                                    */
        bool paused;               /* when cycle_running: dispatch waits on a Retry-After timer */
        bool next_cycle_scheduled; /* when !cycle_running */
};

/* The longest a running cycle may go without progress: one request's
 * timeout (each request is bounded by it), plus slack. */
uint64_t health_progress_budget_ms(const struct config *c);

/* Returns true when healthy; otherwise *ret_reason says why. */
bool health_ok(const struct health_input *in, uint64_t progress_budget_ms, const char **ret_reason);
