/* --plan: the table that explains what the daemon would do with every
 * listed session, and why. */
#pragma once

#include <stdint.h>
#include <stdio.h>

#include "config.h"
#include "gateway.h"
#include "state.h"

/* Prints one row per session and a closing summary line. Sessions unknown to
 * the state count as first seen now. */
void plan_print(FILE *out, const struct config *c, const struct session_list *l, const struct state *st,
                int64_t now_mono_ms);
