/* When the daemon first saw each listed session, kept across restarts in a
 * JSON file that is replaced atomically. In memory, times are kept on the
 * boot-time clock so that a wall-clock step cannot age sessions; the file
 * holds wall-clock times so that they survive a restart. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gateway.h"

struct state;

int state_new(const char *path, struct state **ret);
void state_free(struct state *s);

/* Reads the file. A missing file is an empty state. A file that cannot be
 * parsed is renamed to PATH.corrupt-<time> (left alone when read_only) and
 * the state starts empty: ages then restart from zero, which delays reclaims
 * and never hastens one.
 * Returns 0 (with *ret_warning set to a message to log when the file was set
 * aside, freed by the caller) or a negative errno for an unreadable file. */
int state_load(struct state *s, int64_t now_wall_ms, int64_t now_mono_ms, bool read_only,
               char **ret_warning);

/* Whether the session is known; if so, *ret_first_seen_mono_ms is when it was
 * first seen on the boot-time clock (negative when before this boot). */
bool state_first_seen(const struct state *s, const char *session_id, int64_t *ret_first_seen_mono_ms);

/* Records sessions seen for the first time at now_mono_ms and forgets the
 * ones no longer listed. When ret_ages is not NULL it has room for l->n
 * ages and gets each listed session's age at now_mono_ms (what state_age_ms
 * would return), found by the same lookup that marks it. Returns 0, or
 * -ENOMEM (the state is then unchanged in meaning: at worst some new
 * sessions are not yet recorded; ret_ages is then not to be used). */
int state_sync(struct state *s, const struct session_list *l, int64_t now_mono_ms, uint64_t *ret_ages);

/* Age of a listed session (after state_sync), 0 when unknown. */
uint64_t state_age_ms(const struct state *s, const char *session_id, int64_t now_mono_ms);

size_t state_size(const struct state *s);
bool state_dirty(const struct state *s);

/* Writes the file if anything changed since the last write or load. */
int state_save(struct state *s, int64_t now_wall_ms, int64_t now_mono_ms);
