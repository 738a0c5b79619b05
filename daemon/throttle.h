/* Account-wide pacing of gateway calls. Three limits act together:
 *  - a window of calls in flight, which halves when the gateway says "too
 *    frequent" (or is overloaded) and grows back by one per round that was
 *    not throttled;
 *  - a pace in calls per second, learnt from the gateway. It starts at 10
 *    calls/s (when the daemon starts, and again after 10 s without a call)
 *    and doubles every 500 ms until the gateway first objects or it no
 *    longer limits. When a close or its re-check is answered "too frequent"
 *    (100012 or HTTP 429), the pace is cut to what the gateway accepted in
 *    the last second: half of it the first time (it may include a burst the
 *    gateway had saved up), 90 % of it later, and never more than that share
 *    of the pace refused. It then grows by one call per second for each
 *    second's worth of accepted calls (1/pace per call). HTTP
 *    503 (overloaded) pauses the account and shrinks the window but
 *    teaches no pace: it says nothing about the rate of the account's
 *    closes. A throttled list call does not touch the pace either: it
 *    fails its cycle, and the next list waits for its Retry-After;
 *  - gateway.max_rate, a ceiling for operators who know their limit; the
 *    pace starts there, without the gentle start.
 * The account shares its limit with the operator's own application, so the
 * pace is a guess that is kept up to date, not a constant. Pure: the caller
 * passes the time. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#define THROTTLE_START_RATE 10.0   /* calls/s at a gentle start */
#define THROTTLE_MIN_RATE   1.0    /* the pace never goes below this */
#define THROTTLE_FREE_RATE  1000.0 /* a pace grown past this no longer limits */
#define THROTTLE_IDLE_MS    10000  /* no call for this long: start gently again */
#define THROTTLE_SLOTS      10     /* accepted calls are counted per 100 ms */

struct throttle {
        unsigned max_window; /* gateway.max_parallel */
        unsigned window;     /* calls allowed in flight now, 1..max_window */
        unsigned ok_in_round;
        unsigned consecutive;    /* throttles without a success between them */
        double max_rate;         /* gateway.max_rate; 0: none */
        double pace;             /* learnt; 0: none */
        bool slow_start;         /* no "too frequent" yet: the pace doubles */
        int64_t grown_ms;        /* when the pace last doubled */
        int64_t last_call_ms;    /* when a call last went out; 0: never */
        int64_t paused_until_ms; /* no close before this (a pause, a Retry-After) */
        int64_t held_until_ms;   /* the gateway's Retry-After: the next list waits for it too */
        /* token bucket at the lower of max_rate and pace; rate 0 = unlimited */
        double rate, tokens;
        int64_t refilled_ms;
        /* calls accepted per 100 ms slot, over the last second */
        unsigned accepted[THROTTLE_SLOTS];
        int64_t slot_of[THROTTLE_SLOTS];
};

void throttle_init(struct throttle *t, unsigned max_parallel, double max_rate, int64_t now_ms);

/* The configuration changed (reload): keeps the window where it fits; a new
 * max_rate starts the pace over. */
void throttle_configure(struct throttle *t, unsigned max_parallel, double max_rate, int64_t now_ms);

/* A call was refused as too frequent, or the gateway was overloaded.
 * Halves the window and returns how long to pause dispatch: the gateway's
 * Retry-After when it gave one, else 250 ms, doubling for each throttle in a
 * row, up to 16 s. The pause never shortens one already running, and no
 * tokens pile up during it. With `learn` (a close
 * or re-check answered 100012 or HTTP 429), the pace is cut too. */
uint64_t throttle_refused(struct throttle *t, bool learn, uint64_t retry_after_ms, int64_t now_ms);

/* A call completed without being throttled: it counts as accepted, raises a
 * pace that was cut by 1/pace calls/s, and after a whole window of them in a
 * row the window grows by one, up to max_window. */
void throttle_ok(struct throttle *t, int64_t now_ms);

/* How many ms until a call may go (0: now): the pause after a refusal, then
 * a token. Takes nothing. */
uint64_t throttle_ready(struct throttle *t, int64_t now_ms);

/* The gateway asked for a pause (a Retry-After on a reply that teaches
 * nothing else): no call goes for ms from now, unless a longer pause runs. */
void throttle_hold(struct throttle *t, uint64_t ms, int64_t now_ms);

/* A cycle begins: a pause of the daemon's own (after a refusal without a
 * Retry-After) ends here; the gateway's Retry-After does not. */
void throttle_new_cycle(struct throttle *t);

/* How many ms the account's pause still runs (0: none). */
uint64_t throttle_paused_ms(const struct throttle *t, int64_t now_ms);

/* How many ms the gateway's last Retry-After still runs (0: none). A cycle
 * that ends before it does not cut it short: the next one waits for it. */
uint64_t throttle_held_ms(const struct throttle *t, int64_t now_ms);

/* A call goes now: takes a token, even when none is left (the list call of a
 * cycle must go). */
void throttle_take(struct throttle *t, int64_t now_ms);

/* Calls the gateway accepted in the last second. */
unsigned throttle_accepted_last_second(const struct throttle *t, int64_t now_ms);

/* The pace in force in calls/s (0: unlimited). */
double throttle_rate(const struct throttle *t);
