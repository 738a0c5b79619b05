/* When the loop counts as healthy, for the systemd watchdog: the daemon pings
 * only while cycles keep starting and finishing within their bounds, so a
 * stalled reclaimer is restarted instead of silently doing nothing. Pure. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "config.h"

struct health_input {
        int64_t now_ms;
        bool stopping;
        bool cycle_running;
        int64_t cycle_started_ms;  /* when cycle_running */
        bool next_cycle_scheduled; /* when !cycle_running */
};

/* The longest a cycle may take: the list call, then every close (and its
 * statsession check) in rounds of max_parallel, each bounded by the
 * request timeout, plus slack. */
uint64_t health_cycle_budget_ms(const struct config *c);

/* Returns true when healthy; otherwise *ret_reason says why. */
bool health_ok(const struct health_input *in, uint64_t cycle_budget_ms, const char **ret_reason);
