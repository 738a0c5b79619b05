#include "throttle.h"

#include <assert.h>

#define PAUSE_BASE_MS 1000
#define PAUSE_MAX_MS  16000

void throttle_init(struct throttle *t, unsigned max_parallel, double max_rate, int64_t now_ms) {
        assert(t && max_parallel > 0);
        *t = (struct throttle){
                .max_window = max_parallel,
                .window = max_parallel,
                .max_rate = max_rate > 0 ? max_rate : 0,
                .rate = max_rate > 0 ? max_rate : 0,
                .tokens = max_rate > 1 ? max_rate : 1,
                .refilled_ms = now_ms,
        };
}

void throttle_configure(struct throttle *t, unsigned max_parallel, double max_rate, int64_t now_ms) {
        unsigned window = t->window;

        assert(max_parallel > 0);
        if (t->max_rate != max_rate) {
                t->max_rate = max_rate > 0 ? max_rate : 0;
                t->rate = t->max_rate;
                t->tokens = t->rate > 1 ? t->rate : 1;
                t->refilled_ms = now_ms;
        }
        t->max_window = max_parallel;
        t->window = window < max_parallel ? window : max_parallel;
}

uint64_t throttle_refused(struct throttle *t, uint64_t retry_after_ms, int64_t now_ms) {
        uint64_t pause = PAUSE_BASE_MS;

        (void) now_ms;
        t->window = t->window > 1 ? t->window / 2 : 1;
        t->ok_in_round = 0;
        if (t->consecutive < 16)
                t->consecutive++;
        for (unsigned i = 1; i < t->consecutive && pause < PAUSE_MAX_MS; i++)
                pause *= 2;
        if (pause > PAUSE_MAX_MS)
                pause = PAUSE_MAX_MS;
        return retry_after_ms > 0 ? retry_after_ms : pause;
}

void throttle_ok(struct throttle *t, int64_t now_ms) {
        t->consecutive = 0;
        (void) now_ms;
        if (t->window >= t->max_window)
                return;
        if (++t->ok_in_round >= t->window) {
                t->window++;
                t->ok_in_round = 0;
        }
}

static void refill(struct throttle *t, int64_t now_ms) {
        double burst = t->rate > 1 ? t->rate : 1; /* one second's worth */

        if (now_ms > t->refilled_ms) {
                t->tokens += (double) (now_ms - t->refilled_ms) * t->rate / 1000.0;
                if (t->tokens > burst)
                        t->tokens = burst;
                t->refilled_ms = now_ms;
        }
}

uint64_t throttle_take(struct throttle *t, int64_t now_ms) {
        if (t->rate <= 0)
                return 0;
        refill(t, now_ms);
        if (t->tokens >= 1.0) {
                t->tokens -= 1.0;
                return 0;
        }
        return (uint64_t) ((1.0 - t->tokens) * 1000.0 / t->rate) + 1;
}

uint64_t throttle_ready(struct throttle *t, int64_t now_ms) {
        if (t->rate <= 0)
                return 0;
        refill(t, now_ms);
        if (t->tokens >= 1.0)
                return 0;
        return (uint64_t) ((1.0 - t->tokens) * 1000.0 / t->rate) + 1;
}

void throttle_take_anyway(struct throttle *t, int64_t now_ms) {
        if (t->rate <= 0)
                return;
        refill(t, now_ms);
        t->tokens -= 1.0;
}
