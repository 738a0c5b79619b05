#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "health.h"

static void test_budget(void **state) {
        struct config c = { .gateway = { .timeout_ms = 10000, .max_parallel = 16 },
                            .max_closes_per_cycle = 100 };

        (void) state;
        /* one request's timeout + 5 s slack, whatever the number of closes */
        assert_int_equal(health_progress_budget_ms(&c), 10000 + 5000);
        c.max_closes_per_cycle = 100000;
        assert_int_equal(health_progress_budget_ms(&c), 10000 + 5000);
}

static void test_rules(void **state) {
        const char *reason = NULL;
        struct health_input idle = { .now_ms = 1000000, .next_cycle_scheduled = true };
        struct health_input stuck_idle = { .now_ms = 1000000 };
        /* A cycle that started long ago but keeps finishing requests is healthy. */
        struct health_input long_busy = { .now_ms = 1000000,
                                          .cycle_running = true,
                                          .last_progress_ms = 999000 };
        struct health_input stalled = { .now_ms = 1000000,
                                        .cycle_running = true,
                                        .last_progress_ms = 900000 };
        /* Waiting out a Retry-After (250 s with a 5 min poll interval) is healthy. */
        struct health_input paused = stalled;
        struct health_input stopping = stalled;
        struct health_input done = stuck_idle;

        (void) state;
        paused.paused = true;
        stopping.stopping = true;
        done.done = true;
        assert_true(health_ok(&idle, 15000, &reason));
        assert_true(health_ok(&long_busy, 15000, &reason));
        assert_true(health_ok(&paused, 15000, &reason));
        assert_true(health_ok(&stopping, 15000, &reason));
        assert_true(health_ok(&done, 15000, &reason));
        assert_false(health_ok(&stuck_idle, 15000, &reason));
        assert_string_equal(reason, "no cycle is running and none is scheduled");
        assert_false(health_ok(&stalled, 15000, &reason));
        assert_string_equal(
                reason, "no request of the running cycle has finished for longer than a request may take");
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_budget),
                cmocka_unit_test(test_rules),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
