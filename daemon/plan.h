/* --plan: the table that explains what the daemon would do with every
 * listed session, and why. */
#pragma once

#include <stdint.h>
#include <stdio.h>

#include "config.h"
#include "gateway.h"
#include "decide.h"
#include "state.h"

enum plan_format {
        PLAN_TABLE, /* a table for people, and a summary line */
        PLAN_JSON,  /* JSON Lines: one object per session, the journal's field names */
};

/* Prints one row per session of a finished decision (decide(), as a cycle
 * made it: the share fuse, backoffs and max_closes_per_cycle included): a
 * table with a closing summary line, or one JSON object per session.
 * Sessions unknown to the state are shown as first seen now. Returns how
 * many sessions a cycle would reclaim now (rows whose decision is a
 * policy, dry_run or not), or -ENOMEM. */
int plan_print(FILE *out, enum plan_format format, const struct config *c, const struct session_list *l,
               const struct state *st, const struct decide_result *r);
