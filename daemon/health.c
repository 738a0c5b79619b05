#include "health.h"

#include <assert.h>

#define HEALTH_SLACK_MS 5000

uint64_t health_progress_budget_ms(const struct config *c) {
        assert(c);
        return c->gateway.timeout_ms + HEALTH_SLACK_MS;
}

bool health_ok(const struct health_input *in, uint64_t progress_budget_ms, const char **ret_reason) {
        const char *reason = NULL;

        assert(in);
        if (in->stopping || in->done)
                return true;
        if (in->cycle_running) {
                if (!in->paused && in->now_ms - in->last_progress_ms > (int64_t) progress_budget_ms)
                        reason =
                                "no request of the running cycle has finished for longer than a request may take";
        } else if (!in->next_cycle_scheduled) {
                reason = "no cycle is running and none is scheduled";
        }
        if (reason && ret_reason)
                *ret_reason = reason;
        return reason == NULL;
}
