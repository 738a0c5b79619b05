#include "health.h"

#define HEALTH_SLACK_MS 5000

uint64_t health_cycle_budget_ms(const struct config *c) {
        uint64_t rounds = (c->max_closes_per_cycle + c->gateway.max_parallel - 1) / c->gateway.max_parallel;

        /* list + rounds × (close + statsession) */
        return c->gateway.timeout_ms * (1 + 2 * rounds) + HEALTH_SLACK_MS;
}

bool health_ok(const struct health_input *in, uint64_t cycle_budget_ms, const char **ret_reason) {
        const char *reason = NULL;

        if (in->stopping)
                return true; /* shutdown is bounded by its own grace timer */
        if (in->cycle_running) {
                if (in->now_ms - in->cycle_started_ms > (int64_t) cycle_budget_ms)
                        reason = "the current cycle has run for longer than its time budget";
        } else if (!in->next_cycle_scheduled) {
                reason = "no cycle is running and none is scheduled";
        }
        if (reason && ret_reason)
                *ret_reason = reason;
        return reason == NULL;
}
