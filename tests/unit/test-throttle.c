#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "throttle.h"

/* The window halves on a throttle, grows by one per unthrottled round. */
static void test_window(void **state) {
        struct throttle t;

        (void) state;
        throttle_init(&t, 32, 0, 0);
        assert_int_equal(t.window, 32);
        assert_int_equal(throttle_refused(&t, 0, 0), 1000);
        assert_int_equal(t.window, 16);
        assert_int_equal(throttle_refused(&t, 0, 0), 2000); /* a second one in a row: longer */
        assert_int_equal(t.window, 8);
        assert_int_equal(throttle_refused(&t, 3000, 0), 3000); /* the gateway's Retry-After wins */
        assert_int_equal(t.window, 4);
        for (int i = 0; i < 3; i++)
                throttle_ok(&t, 0);
        assert_int_equal(t.window, 4);
        throttle_ok(&t, 0); /* a whole round of 4 */
        assert_int_equal(t.window, 5);
        assert_int_equal(throttle_refused(&t, 0, 0), 1000); /* the run of throttles was broken */
        for (int i = 0; i < 10; i++)
                (void) throttle_refused(&t, 0, 0);
        assert_int_equal(t.window, 1);
        assert_int_equal(throttle_refused(&t, 0, 0), 16000); /* capped */
        for (int i = 0; i < 10000; i++)
                throttle_ok(&t, 0);
        assert_int_equal(t.window, 32); /* never above max_parallel */
        throttle_configure(&t, 8, 0, 0);
        assert_int_equal(t.window, 8);
}

/* gateway.max_rate: a token bucket with one second of burst. */
static void test_rate(void **state) {
        struct throttle t;
        int sent = 0;

        (void) state;
        throttle_init(&t, 16, 0, 0);
        assert_int_equal(throttle_ready(&t, 0), 0); /* unlimited */
        throttle_init(&t, 16, 10, 0);
        for (int i = 0; i < 10; i++) {
                assert_int_equal(throttle_ready(&t, 0), 0);
                throttle_take_anyway(&t, 0);
        }
        assert_true(throttle_ready(&t, 0) > 0);
        assert_true(throttle_ready(&t, 0) <= 101);
        assert_int_equal(throttle_ready(&t, 100), 0); /* 100 ms later: one token */
        /* Over 10 s from empty, at most 10 per second go out. */
        throttle_init(&t, 16, 10, 0);
        t.tokens = 0;
        for (int64_t now = 0; now <= 10000; now++)
                if (throttle_take(&t, now) == 0)
                        sent++;
        assert_true(sent >= 99 && sent <= 101);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_window),
                cmocka_unit_test(test_rate),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
