/* When the daemon first saw each listed session, kept across restarts in a
 * JSON file that is replaced atomically.
 *
 * Ages never grow faster than real time. In memory, first-seen times are on
 * the boot-time clock (CLOCK_BOOTTIME), which no wall-clock step moves. The
 * file records them as wall-clock times together with the boot id and the
 * wall-minus-boot-time offset used to write them:
 * - loaded in the same boot, the offset turns them back into boot-time
 *   values exactly, whatever the wall clock says now;
 * - loaded after a reboot, the wall clock is the only reference. Those
 *   entries stay unanchored (they have no age) until state_anchor() is
 *   called, which the runner does once the gateway has accepted a signed
 *   request: its 5-minute signature window bounds our clock's error. A file
 *   written while the wall clock was not so confirmed is not trusted across
 *   a reboot: its ages restart from zero, which only delays a reclaim. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "session.h"

struct state;

int state_new(const char *path, struct state **ret);
void state_free(struct state *s);

/* The boot id the state is kept under; "" when it could not be read. */
const char *state_boot_id(const struct state *s);

/* Tests only: pretend to run in another boot. */
void state_set_boot_id(struct state *s, const char *boot_id);

/* Takes an exclusive lock on PATH.lock, so that two daemons never act on
 * one state file. Returns 0, -EBUSY when another process holds it, or
 * another negative errno. The lock is released by state_free(). */
int state_lock(struct state *s);

/* Reads the file. A missing file is an empty state. A file that cannot be
 * parsed (in part or in whole) is renamed to PATH.corrupt-<time> (left alone
 * when read_only) and the state starts empty: ages then restart from zero,
 * which delays reclaims and never hastens one. Also removes temporary files
 * that a crash during a write left behind (".#NAME.XXXXXX"; nothing else).
 * Returns 0 (with a message to log in warning when something was set
 * aside) or a negative errno for an unreadable file: -EISDIR, -EBADFD (not
 * a regular file), or what open/read said. */
int state_load(struct state *s, int64_t now_wall_ms, int64_t now_mono_ms, bool read_only,
               struct error *warning);

/* The gateway has just accepted a signed request, so the wall clock is
 * within its signature window: entries loaded from another boot get their
 * ages from it now, and files written from here on are trusted across a
 * reboot. Returns the number of entries anchored. */
size_t state_anchor(struct state *s, int64_t now_wall_ms, int64_t now_mono_ms);

/* Notices a step of the wall clock (relative to the boot-time clock) of
 * more than 2 s since the last call, load or save. Then the file is due to
 * be written again (state_dirty() is true) and is no longer trusted across
 * a reboot until the next state_anchor(). Returns the step in ms (0: none). */
int64_t state_check_clock(struct state *s, int64_t now_wall_ms, int64_t now_mono_ms);

/* Whether the session is known and anchored; if so, *ret_first_seen_mono_ms
 * is when it was first seen on the boot-time clock (negative when before
 * this boot). */
bool state_first_seen(const struct state *s, const char *session_id, int64_t *ret_first_seen_mono_ms);

/* Records sessions seen for the first time at now_mono_ms. A session that is
 * no longer listed keeps its first-seen time for grace_ms after it was last
 * listed, so that a list that now and then comes back short or empty ages
 * and closes nothing it should not; then it is forgotten. When ret_ages is
 * not NULL it has room for l->n ages and gets each listed session's age at
 * now_mono_ms (what state_age_ms would return), found by the same lookup
 * that marks it. Returns 0, or -ENOMEM (the state is then unchanged in
 * meaning: at worst some new sessions are not yet recorded; ret_ages is
 * then not to be used). */
int state_sync(struct state *s, const struct session_list *l, int64_t now_mono_ms, uint64_t grace_ms,
               uint64_t *ret_ages);

/* Age of a listed session (after state_sync), 0 when unknown. */
uint64_t state_age_ms(const struct state *s, const char *session_id, int64_t now_mono_ms);

size_t state_size(const struct state *s);
bool state_dirty(const struct state *s);

/* Writes the file if anything changed since the last write or load. Not
 * while entries from another boot wait for state_anchor(): their wall-clock
 * times would be mixed with this boot's. */
int state_save(struct state *s, int64_t now_wall_ms, int64_t now_mono_ms);
