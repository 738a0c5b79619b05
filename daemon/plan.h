/* --plan: the table that explains what the daemon would do with every
 * listed session, and why. */
#pragma once

#include <stdint.h>
#include <stdio.h>

#include "config.h"
#include "gateway.h"
#include "retry.h"
#include "state.h"

/* Prints one row per session, as decide() decides it (the share fuse,
 * backoffs and max_closes_per_cycle included), and a closing summary line.
 * Sessions unknown to the state count as first seen now. */
void plan_print(FILE *out, const struct config *c, const struct session_list *l, const struct state *st,
                const struct retry_table *retries, int64_t now_mono_ms);
