/* Account-wide pacing of gateway calls: how many may be in flight (a window
 * that halves when the gateway says "too frequent" and grows back by one per
 * round that was not throttled), how long to pause after a throttle, and an
 * optional token bucket (gateway.max_rate) for operators who know their
 * limit. Pure: the caller passes the time. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

struct throttle {
        unsigned max_window; /* gateway.max_parallel */
        unsigned window;     /* calls allowed in flight now, 1..max_window */
        unsigned ok_in_round;
        unsigned consecutive; /* throttles without a success between them */
        /* token bucket; rate 0 = unlimited */
        double max_rate; /* gateway.max_rate; 0: none */
        double rate, tokens;
        int64_t refilled_ms;
};

void throttle_init(struct throttle *t, unsigned max_parallel, double max_rate, int64_t now_ms);

/* The configuration changed (reload): keeps what was learnt where it fits. */
void throttle_configure(struct throttle *t, unsigned max_parallel, double max_rate, int64_t now_ms);

/* A call was refused as too frequent. Halves the window and returns how long
 * to pause dispatch: the gateway's Retry-After when it gave one, else 1 s,
 * doubling for each throttle in a row, up to 16 s. */
uint64_t throttle_refused(struct throttle *t, uint64_t retry_after_ms, int64_t now_ms);

/* A call completed without being throttled: after a whole window of them in
 * a row, the window grows by one, up to max_window. */
void throttle_ok(struct throttle *t, int64_t now_ms);

/* Takes a token for one call. Returns 0 when the call may go now, else how
 * many ms until a token is there (nothing is taken then). */
uint64_t throttle_take(struct throttle *t, int64_t now_ms);

/* How many ms until a token is there (0: one is there now); takes nothing. */
uint64_t throttle_ready(struct throttle *t, int64_t now_ms);

/* Takes a token even when none is left (the list call of a cycle must go). */
void throttle_take_anyway(struct throttle *t, int64_t now_ms);
