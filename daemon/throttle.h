/* Account-wide pacing of gateway calls: how many closes (and their
 * re-checks) go out, and how fast. It grows with the replies the gateway
 * accepts, per round trip, not with the clock; it cuts once per round trip
 * of refusals, to what the gateway was measured to accept; and it lives with
 * a low, steady share of refusals instead of collapsing on it. The rules,
 * with their figures, are in ivh-reclaimd(8), "Throttling is account-wide":
 *
 *  - Starting: round trips. The first sends 6 calls; the next goes when its
 *    replies are back, each accepted reply adding half a call (x1.5 per
 *    round trip). A whole round at max_parallel without a refusal ends the
 *    start: calls then go as replies come back, with no pace.
 *  - Checking: a round trip with refusals is followed by 4 calls, whose
 *    replies set the first pace (not judged: a guess).
 *  - Pacing: round trips of at least one smoothed reply time and 8 replies
 *    (32 once noise is known; the first refusal ends one while none is).
 *    A share of refusals above the noise cuts the pace once, to 90 % of
 *    what the gateway accepted, never below 1 call/s. The 64 replies after
 *    a cut judge it: refusals about as frequent as before say noise, and
 *    the cut is undone (to at most twice it) and the pace probes upwards,
 *    doubling per round trip; otherwise it grows by 1/pace per accepted
 *    reply (one call/s more per second's worth of calls).
 *  - HTTP 503 teaches no pace: it halves the window of calls in flight and
 *    pauses, 250 ms doubling while they keep coming, up to 16 s. The
 *    gateway's Retry-After pauses the account, whatever it came with.
 *  - gateway.max_rate is a ceiling; with it there is no gentle start.
 *  - After 10 s without a call the pace starts over.
 *
 * Pure: the caller passes the time. Every paced call gets a sequence number
 * from throttle_take() and reports its reply with it exactly once; replies
 * to calls sent before the last cut teach nothing. tests/unit/test-throttle.c
 * drives it in simulated time against scripted gateways. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#define THROTTLE_START_WINDOW 6      /* calls in the first round trip */
#define THROTTLE_CHECK_CALLS  4      /* calls in the round trip after the first refused one */
#define THROTTLE_MIN_RATE     1.0    /* the pace never goes below this */
#define THROTTLE_FREE_RATE    1000.0 /* a pace grown past this no longer limits */
#define THROTTLE_IDLE_MS      10000  /* no call for this long: start gently again */
#define THROTTLE_SLOTS        10     /* accepted calls are counted per 100 ms */

enum throttle_phase {
        THROTTLE_STARTING, /* round trips of growing size */
        THROTTLE_CHECKING, /* one small round trip after the first refused one */
        THROTTLE_PACING,   /* calls go as the pace (if any) and the window allow */
};

/* Calls sent from sequence number `first` on, and what came back for them. */
struct throttle_round {
        uint64_t first;
        int64_t started_ms;
        unsigned quota; /* starting or checking: calls it may send */
        unsigned sent, replied, accepted, refused;
        int64_t first_sent_ms, last_sent_ms; /* of the calls that replied; 0: none */
};

struct throttle {
        unsigned max_window; /* gateway.max_parallel */
        unsigned window;     /* calls allowed in flight now, 1..max_window */
        unsigned ok_in_window;
        unsigned overloaded;   /* 503s without an accepted call between them, once per round trip */
        uint64_t overload_seq; /* calls before this one went before the last 503 was acted on */
        double max_rate;       /* gateway.max_rate; 0: none */
        enum throttle_phase phase;
        double start_size; /* starting: calls in this round trip */
        double pace;       /* learnt calls/s; 0: none */
        double noise;      /* a share of refusals learnt to be noise */
        bool judging;      /* the round trip after a cut shows whether it helped */
        bool probing;      /* a cut was undone: the pace doubles per round trip */
        double undo_pace;  /* the pace before the last cut */
        double cut_share;  /* the share of refusals in the last 32 replies before it */
        uint32_t recent;   /* the last 32 replies: a bit set for each refused */
        unsigned n_recent;
        unsigned long cuts;   /* the pace was cut (counted for the log) */
        unsigned long undone; /* a cut was undone */
        bool last_undone;     /* the last change of the pace was an undo */
        uint64_t next_seq;    /* of the next call; starts at 1 */
        uint64_t cut_seq;     /* calls before this one went before the last cut */
        struct throttle_round round;
        /* the previous round trip, kept while checking */
        double refused_round_rate;
        int64_t srtt_ms;         /* smoothed reply time; 0: none yet */
        int64_t started_ms;      /* the pace started (over) */
        int64_t last_call_ms;    /* when a call last went out; 0: never */
        int64_t paused_until_ms; /* no close before this (a pause, a Retry-After) */
        int64_t held_until_ms;   /* the gateway's Retry-After: the next list waits for it too */
        /* token bucket at the lower of max_rate and the pace; rate 0 = unlimited */
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

/* A paced call goes now: returns its sequence number, which its reply
 * reports. Takes a token, even when none is left. */
uint64_t throttle_take(struct throttle *t, int64_t now_ms);

/* The gateway accepted call seq (any reply but a throttle or an
 * authentication refusal), rtt_ms after it went. */
void throttle_ok(struct throttle *t, uint64_t seq, int64_t rtt_ms, int64_t now_ms);

/* Call seq came back neither accepted nor refused as too frequent (the
 * transport failed, the credentials were refused). */
void throttle_other(struct throttle *t, uint64_t seq, int64_t now_ms);

/* Call seq was refused as too frequent (learn: 100012 or HTTP 429), or the
 * gateway was overloaded (!learn: HTTP 503), rtt_ms after it went. Returns
 * how long to pause dispatch (0: none): the gateway's Retry-After when it
 * gave one; after a 503 also 250 ms, doubling for each 503 in a row, up to
 * 16 s. A pause never shortens one already running. */
uint64_t throttle_refused(struct throttle *t, uint64_t seq, bool learn, uint64_t retry_after_ms,
                          int64_t rtt_ms, int64_t now_ms);

/* How many ms until a call may go (0: now): a pause, the end of a round
 * trip (see throttle_awaits_replies()), then a token. Takes nothing. */
uint64_t throttle_ready(struct throttle *t, int64_t now_ms);

/* Whether the next call waits for the replies of this round trip rather
 * than for the clock (throttle_ready() then gives how long it waits at
 * most, should they never come). */
bool throttle_awaits_replies(const struct throttle *t, int64_t now_ms);

/* The gateway asked for a pause (a Retry-After on a reply that teaches
 * nothing else): no call goes for ms from now, unless a longer pause runs. */
void throttle_hold(struct throttle *t, uint64_t ms, int64_t now_ms);

/* A cycle begins: a pause of the daemon's own (after a 503) ends here; the
 * gateway's Retry-After does not. A round trip cut short by the last cycle
 * is forgotten. */
void throttle_new_cycle(struct throttle *t, int64_t now_ms);

/* How many ms the account's pause still runs (0: none). */
uint64_t throttle_paused_ms(const struct throttle *t, int64_t now_ms);

/* How many ms the gateway's last Retry-After still runs (0: none). A cycle
 * that ends before it does not cut it short: the next one waits for it. */
uint64_t throttle_held_ms(const struct throttle *t, int64_t now_ms);

/* Calls the gateway accepted in the last second. */
unsigned throttle_accepted_last_second(const struct throttle *t, int64_t now_ms);

/* The pace in force in calls/s (0: unlimited, or still starting). */
double throttle_rate(const struct throttle *t);
