/* JSON helpers shared by the gateway replies and the state file. */
#pragma once

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>

/* cJSON_ParseWithLength(), but NULL when anything other than white space
 * follows the value (a NUL included). */
cJSON *json_parse_exact(const char *text, size_t len);

/* Whether obj names the key name more than once: cJSON reads the first of
 * two equal keys, other JSON stacks the last, so the text has no one
 * meaning. */
bool json_key_repeats(const cJSON *obj, const char *name);

/* The first character at or after p (before end) that is not JSON white
 * space; end if there is none. */
const char *json_skip_space(const char *p, const char *end);
