#include "throttle.h"

#include <assert.h>

#define PAUSE_BASE_MS 250
#define PAUSE_MAX_MS  16000
#define SLOT_MS       100
#define DOUBLE_MS     500 /* slow start: the pace doubles this often */
#define CUT           0.9
#define FIRST_CUT     0.5

/* The lower of max_rate and the pace, 0 when neither limits. */
static void set_rate(struct throttle *t) {
        double r = t->max_rate;

        if (t->pace > 0 && (r <= 0 || t->pace < r))
                r = t->pace;
        t->rate = r;
}

/* The pace starts over: at max_rate when there is one, else gently. */
static void restart(struct throttle *t, int64_t now_ms) {
        t->pace = t->max_rate > 0 ? 0 : THROTTLE_START_RATE;
        t->slow_start = t->pace > 0;
        t->grown_ms = now_ms;
        set_rate(t);
        t->tokens = t->rate > 1 ? t->rate : 1; /* one second's worth */
        t->refilled_ms = now_ms;
}

void throttle_init(struct throttle *t, unsigned max_parallel, double max_rate, int64_t now_ms) {
        assert(t && max_parallel > 0);
        *t = (struct throttle){
                .max_window = max_parallel,
                .window = max_parallel,
                .max_rate = max_rate > 0 ? max_rate : 0,
        };
        restart(t, now_ms);
}

void throttle_configure(struct throttle *t, unsigned max_parallel, double max_rate, int64_t now_ms) {
        assert(t && max_parallel > 0);
        t->max_window = max_parallel;
        if (t->window > max_parallel)
                t->window = max_parallel;
        if (t->max_rate != (max_rate > 0 ? max_rate : 0)) {
                t->max_rate = max_rate > 0 ? max_rate : 0;
                restart(t, now_ms);
        }
}

static void raise_pace(struct throttle *t, double factor) {
        t->pace *= factor;
        if (t->pace > THROTTLE_FREE_RATE)
                t->pace = 0;
        set_rate(t);
}

/* A pause never cuts a longer one short. */
static void extend(int64_t *until_ms, int64_t to_ms) {
        if (to_ms > *until_ms)
                *until_ms = to_ms;
}

/* A call about to go after 10 s without one: the pace starts over. */
static void restart_if_idle(struct throttle *t, int64_t now_ms) {
        if (t->last_call_ms > 0 && now_ms - t->last_call_ms >= THROTTLE_IDLE_MS)
                restart(t, now_ms);
}

static void refill(struct throttle *t, int64_t now_ms) {
        double burst;

        while (t->slow_start && t->pace > 0 && now_ms - t->grown_ms >= DOUBLE_MS) {
                t->grown_ms += DOUBLE_MS;
                raise_pace(t, 2.0);
        }
        burst = t->rate > 1 ? t->rate : 1; /* one second's worth */
        if (t->refilled_ms < t->paused_until_ms)
                t->refilled_ms = t->paused_until_ms < now_ms ? t->paused_until_ms : now_ms;
        if (now_ms > t->refilled_ms) {
                if (t->rate > 0)
                        t->tokens += (double) (now_ms - t->refilled_ms) * t->rate / 1000.0;
                if (t->tokens > burst)
                        t->tokens = burst;
                t->refilled_ms = now_ms;
        }
}

unsigned throttle_accepted_last_second(const struct throttle *t, int64_t now_ms) {
        int64_t slot = now_ms / SLOT_MS;
        unsigned n = 0;

        assert(t);
        for (unsigned i = 0; i < THROTTLE_SLOTS; i++)
                if (t->slot_of[i] > slot - THROTTLE_SLOTS && t->slot_of[i] <= slot)
                        n += t->accepted[i];
        return n;
}

uint64_t throttle_refused(struct throttle *t, bool learn, uint64_t retry_after_ms, int64_t now_ms) {
        uint64_t pause = PAUSE_BASE_MS;

        assert(t);
        refill(t, now_ms);
        if (learn) {
                /* While the pace was doubling, what got through may include
                 * a burst the gateway had saved up: half of it. Later, 90 %
                 * of it. Never more than the pace refused. */
                double got = (double) throttle_accepted_last_second(t, now_ms);
                double cut =
                        (t->slow_start ? FIRST_CUT : CUT) * (t->rate > 0 && got > t->rate ? t->rate : got);

                t->pace = cut > THROTTLE_MIN_RATE ? cut : THROTTLE_MIN_RATE;
                t->slow_start = false;
                set_rate(t);
        }
        t->window = t->window > 1 ? t->window / 2 : 1;
        t->ok_in_round = 0;
        if (t->consecutive < 16)
                t->consecutive++;
        for (unsigned i = 1; i < t->consecutive && pause < PAUSE_MAX_MS; i++)
                pause *= 2;
        if (pause > PAUSE_MAX_MS)
                pause = PAUSE_MAX_MS;
        if (retry_after_ms > 0)
                throttle_hold(t, retry_after_ms, now_ms); /* the gateway's pause */
        else
                extend(&t->paused_until_ms, now_ms + (int64_t) pause);
        /* No burst after a refusal: tokens do not pile up during the pause
         * (refill() skips it), and the doubling starts its count again. */
        if (t->tokens > 1)
                t->tokens = 1;
        t->refilled_ms = now_ms;
        t->grown_ms = now_ms;
        return (uint64_t) (t->paused_until_ms - now_ms);
}

void throttle_ok(struct throttle *t, int64_t now_ms) {
        int64_t slot = now_ms / SLOT_MS;
        unsigned i = (unsigned) (slot % THROTTLE_SLOTS);

        assert(t);
        if (t->slot_of[i] != slot) {
                t->slot_of[i] = slot;
                t->accepted[i] = 0;
        }
        t->accepted[i]++;
        t->consecutive = 0;
        /* After a cut: one call per second more for each second's worth
         * of calls accepted (an additive increase, as TCP's congestion
         * avoidance does per round trip). */
        if (!t->slow_start && t->pace > 0)
                raise_pace(t, 1.0 + 1.0 / (t->pace * t->pace));
        if (t->window >= t->max_window)
                return;
        if (++t->ok_in_round >= t->window) {
                t->window++;
                t->ok_in_round = 0;
        }
}

void throttle_hold(struct throttle *t, uint64_t ms, int64_t now_ms) {
        assert(t);
        extend(&t->paused_until_ms, now_ms + (int64_t) ms);
        extend(&t->held_until_ms, now_ms + (int64_t) ms);
}

void throttle_new_cycle(struct throttle *t) {
        assert(t);
        if (t->paused_until_ms > t->held_until_ms)
                t->paused_until_ms = t->held_until_ms;
}

uint64_t throttle_held_ms(const struct throttle *t, int64_t now_ms) {
        assert(t);
        return t->held_until_ms > now_ms ? (uint64_t) (t->held_until_ms - now_ms) : 0;
}

uint64_t throttle_paused_ms(const struct throttle *t, int64_t now_ms) {
        assert(t);
        return t->paused_until_ms > now_ms ? (uint64_t) (t->paused_until_ms - now_ms) : 0;
}

uint64_t throttle_ready(struct throttle *t, int64_t now_ms) {
        assert(t);
        if (t->paused_until_ms > now_ms)
                return (uint64_t) (t->paused_until_ms - now_ms);
        restart_if_idle(t, now_ms);
        refill(t, now_ms);
        if (t->rate <= 0 || t->tokens >= 1.0)
                return 0;
        return (uint64_t) ((1.0 - t->tokens) * 1000.0 / t->rate) + 1;
}

void throttle_take(struct throttle *t, int64_t now_ms) {
        assert(t);
        restart_if_idle(t, now_ms);
        refill(t, now_ms);
        if (t->rate > 0)
                t->tokens -= 1.0;
        t->last_call_ms = now_ms > 0 ? now_ms : 1;
}

double throttle_rate(const struct throttle *t) {
        assert(t);
        return t->rate;
}
