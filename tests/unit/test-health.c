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
        /* list + 7 rounds of (close + stat) at 10 s each, + 5 s slack */
        assert_int_equal(health_cycle_budget_ms(&c), 10000 * (1 + 2 * 7) + 5000);
        c.gateway.max_parallel = 100;
        assert_int_equal(health_cycle_budget_ms(&c), 10000 * 3 + 5000);
}

static void test_rules(void **state) {
        const char *reason = NULL;
        struct health_input idle = { .now_ms = 1000000, .next_cycle_scheduled = true };
        struct health_input stuck_idle = { .now_ms = 1000000 };
        struct health_input running = { .now_ms = 1000000,
                                        .cycle_running = true,
                                        .cycle_started_ms = 990000 };
        struct health_input overrun = { .now_ms = 1000000,
                                        .cycle_running = true,
                                        .cycle_started_ms = 900000 };
        struct health_input stopping = overrun;

        (void) state;
        stopping.stopping = true;
        assert_true(health_ok(&idle, 20000, &reason));
        assert_true(health_ok(&running, 20000, &reason));
        assert_true(health_ok(&stopping, 20000, &reason));
        assert_false(health_ok(&stuck_idle, 20000, &reason));
        assert_string_equal(reason, "no cycle is running and none is scheduled");
        assert_false(health_ok(&overrun, 20000, &reason));
        assert_string_equal(reason, "the current cycle has run for longer than its time budget");
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_budget),
                cmocka_unit_test(test_rules),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
