/* The pre-scan of a list reply's raw text (listscan.c), used by the list
 * parser (gateway-list.c) only. */
#pragma once

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>

/* What scan_json() found. */
struct scan {
        size_t values;
        /* Where Payload.Sessions opens, if it is an array under keys written
         * without escapes (then cJSON would read the same): its entries are
         * parsed one at a time. */
        bool has_sessions;
        size_t sessions_at;
};

/* One pass over the raw text of a reply: rewrites in place what cJSON would
 * refuse the whole reply for, or what no id may hold, so that it costs one
 * entry (see listscan.c), and finds Payload.Sessions. */
void scan_json(char *text, size_t len, struct scan *ret);

/* Whether a value holds a container cut out by scan_json(). */
bool scan_has_cut_marker(const cJSON *v);
