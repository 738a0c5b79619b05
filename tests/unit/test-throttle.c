#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "throttle.h"

/* The window halves on a throttle, grows by one per unthrottled round. */
static void test_window(void **state) {
        struct throttle t;

        (void) state;
        throttle_init(&t, 32, 0, 0);
        assert_int_equal(t.window, 32);
        assert_int_equal(throttle_refused(&t, true, 0, 0), 250);
        assert_int_equal(t.window, 16);
        assert_int_equal(throttle_refused(&t, true, 0, 0), 500); /* a second one in a row: longer */
        assert_int_equal(t.window, 8);
        assert_int_equal(throttle_refused(&t, true, 3000, 0), 3000); /* the gateway's Retry-After wins */
        assert_int_equal(t.window, 4);
        for (int i = 0; i < 3; i++)
                throttle_ok(&t, 0);
        assert_int_equal(t.window, 4);
        throttle_ok(&t, 0); /* a whole round of 4 */
        assert_int_equal(t.window, 5);
        /* (Each later pause is asked for after the earlier ones ran out:
         * the value returned is the longest pause still running.) */
        assert_int_equal(throttle_refused(&t, true, 0, 10000), 250); /* the run of throttles was broken */
        for (int i = 0; i < 10; i++)
                (void) throttle_refused(&t, true, 0, 10000);
        assert_int_equal(t.window, 1);
        assert_int_equal(throttle_refused(&t, true, 0, 30000), 16000); /* capped */
        for (int i = 0; i < 10000; i++)
                throttle_ok(&t, 0);
        assert_int_equal(t.window, 32); /* never above max_parallel */
        throttle_configure(&t, 8, 0, 0);
        assert_int_equal(t.window, 8);
}

/* Sends as fast as the throttle lets it (at most one call a millisecond)
 * for `ms`, from `from`; returns how many calls went. Every call is
 * accepted. */
static int drive(struct throttle *t, int64_t from, int64_t ms) {
        int sent = 0;

        for (int64_t now = from; now < from + ms; now++)
                if (throttle_ready(t, now) == 0) {
                        throttle_take(t, now);
                        throttle_ok(t, now);
                        sent++;
                }
        return sent;
}

/* gateway.max_rate: a token bucket with one second of burst, from the
 * first call of a cycle on. */
static void test_max_rate(void **state) {
        struct throttle t;

        (void) state;
        throttle_init(&t, 16, 10, 0);
        for (int i = 0; i < 10; i++) {
                assert_int_equal(throttle_ready(&t, 0), 0);
                throttle_take(&t, 0);
        }
        assert_true(throttle_ready(&t, 0) > 0);
        assert_true(throttle_ready(&t, 0) <= 101);
        assert_int_equal(throttle_ready(&t, 100), 0); /* 100 ms later: one token */
        /* Over 10 s from empty, at most 10 per second go out. */
        throttle_init(&t, 16, 10, 0);
        t.tokens = 0;
        {
                int sent = drive(&t, 0, 10001);

                assert_true(sent >= 99 && sent <= 101);
        }
}

/* Without max_rate the pace starts at 10 calls/s (with one second of burst)
 * and doubles every 500 ms while the gateway does not object, until it no
 * longer limits; after 10 s without a call it starts gently again. */
static void test_slow_start(void **state) {
        struct throttle t;
        int first, second, third;

        (void) state;
        throttle_init(&t, 32, 0, 0);
        assert_true(throttle_rate(&t) == THROTTLE_START_RATE);
        first = drive(&t, 0, 500);
        second = drive(&t, 500, 500);
        third = drive(&t, 1000, 500);
        assert_in_range(first, 14, 16); /* 10 at once, then 10/s */
        assert_in_range(second, 9, 11); /* 20/s */
        assert_in_range(third, 19, 21); /* 40/s */
        (void) drive(&t, 1500, 3000);
        assert_true(throttle_rate(&t) == 0); /* past 1000/s: unlimited */
        assert_int_equal(throttle_ready(&t, 4500), 0);
        /* Idle for 10 s: gently again. */
        assert_int_equal(throttle_ready(&t, 4499 + THROTTLE_IDLE_MS), 0);
        assert_true(throttle_rate(&t) == THROTTLE_START_RATE);
}

/* "Too frequent" cuts the pace to what the gateway accepted in the last
 * second: half of it the first time, 90 % later, never above that share of
 * the pace refused; then it grows by about one call/s per second. */
static void test_refusal_learns(void **state) {
        struct throttle t;
        double before;

        (void) state;
        throttle_init(&t, 32, 0, 0);
        (void) drive(&t, 0, 2000);
        (void) throttle_ready(&t, 2000); /* slow start: now 160/s */
        assert_true(throttle_rate(&t) == 160);
        /* The gateway took 80 in the last second (a saved-up burst and
         * 40/s); all more was refused. */
        memset(t.accepted, 0, sizeof t.accepted);
        for (int i = 0; i < 80; i++)
                throttle_ok(&t, 2000 + i * 5);
        assert_int_equal(throttle_refused(&t, true, 0, 2500), 250);
        assert_true(throttle_rate(&t) == 40);
        /* No burst after a refusal: no tokens pile up during the pause. */
        assert_int_equal(t.tokens, 1);
        assert_int_equal(throttle_ready(&t, 2750), 0);
        throttle_take(&t, 2750);
        assert_true(throttle_ready(&t, 2750) > 0);
        assert_true(throttle_ready(&t, 10000) == 0);
        assert_true(throttle_rate(&t) == 40); /* time alone does not raise it */
        /* 40 accepted calls (a second's worth) add about one call/s. */
        before = throttle_rate(&t);
        for (int i = 0; i < 40; i++)
                throttle_ok(&t, 10000 + i * 25);
        assert_true(throttle_rate(&t) > before + 0.95 && throttle_rate(&t) < before + 1.05);
        /* Later: 90 % of the pace refused at most, even when more got
         * through in the last second (60 calls now). */
        for (int i = 0; i < 20; i++)
                throttle_ok(&t, 10500 + i);
        before = throttle_rate(&t);
        (void) throttle_refused(&t, true, 0, 10900);
        assert_true(throttle_rate(&t) > 0.9 * before - 0.01 && throttle_rate(&t) < 0.9 * before + 0.01);
        /* ... and 90 % of what got through, when that is less. */
        for (int i = 0; i < 10; i++)
                throttle_ok(&t, 70000 + i);
        (void) throttle_refused(&t, true, 0, 70500);
        assert_true(throttle_rate(&t) > 8.9 && throttle_rate(&t) < 9.1);
        /* Never below 1/s, whatever was accepted. */
        for (int i = 0; i < 20; i++)
                (void) throttle_refused(&t, true, 0, 80000 + i);
        assert_true(throttle_rate(&t) == THROTTLE_MIN_RATE);
        /* An overloaded gateway (HTTP 503) or a throttled list teaches no
         * pace: the window and the pause only. */
        throttle_init(&t, 32, 0, 0);
        for (int i = 0; i < 5; i++)
                throttle_ok(&t, i);
        assert_int_equal(throttle_refused(&t, false, 0, 100), 250);
        assert_int_equal(t.window, 16);
        assert_true(throttle_rate(&t) == THROTTLE_START_RATE);
        assert_true(t.slow_start);
        /* max_rate stays the ceiling of a learnt pace, and starts whole. */
        throttle_init(&t, 32, 5, 0);
        assert_true(throttle_rate(&t) == 5);
        for (int i = 0; i < 50; i++)
                throttle_ok(&t, i);
        (void) throttle_refused(&t, true, 0, 100);
        assert_true(throttle_rate(&t) == 4.5); /* 90 % of max_rate: no doubling to end */
        for (int i = 0; i < 1000; i++)
                throttle_ok(&t, 1000 + i);
        assert_true(throttle_rate(&t) == 5);
}

/* A pause is never cut short: not by a shorter one, not by the restart
 * after 10 s without a call. A Retry-After also holds the next list. */
static void test_pause_holds(void **state) {
        struct throttle t;

        (void) state;
        throttle_init(&t, 8, 0, 0);
        throttle_take(&t, 1000);
        assert_int_equal(throttle_refused(&t, true, 120000, 1000), 120000);
        assert_int_equal(throttle_held_ms(&t, 1000), 120000);
        /* A later refusal asking for 1 s: the 120 s stand. */
        assert_int_equal(throttle_refused(&t, true, 1000, 2000), 119000);
        /* 10 s and more without a call: the pace starts over, the pause stays. */
        assert_int_equal(throttle_ready(&t, 30000), 91000);
        assert_int_equal(throttle_paused_ms(&t, 30000), 91000);
        assert_int_equal(throttle_ready(&t, 121000), 0);
        assert_int_equal(throttle_held_ms(&t, 121000), 0);
        /* A pause of our own (no Retry-After) holds the closes, not the list. */
        throttle_ok(&t, 199000);
        assert_int_equal(throttle_refused(&t, false, 0, 200000), 250);
        assert_int_equal(throttle_paused_ms(&t, 200000), 250);
        assert_int_equal(throttle_held_ms(&t, 200000), 0);
        throttle_new_cycle(&t); /* ... and ends with the cycle */
        assert_int_equal(throttle_paused_ms(&t, 200000), 0);
        /* throttle_hold(): a Retry-After on a reply that teaches nothing else. */
        throttle_hold(&t, 5000, 300000);
        assert_int_equal(throttle_held_ms(&t, 300000), 5000);
        assert_int_equal(throttle_ready(&t, 300000), 5000);
        throttle_hold(&t, 1000, 301000); /* shorter: no change */
        assert_int_equal(throttle_held_ms(&t, 301000), 4000);
        throttle_new_cycle(&t); /* the gateway's pause outlives the cycle */
        assert_int_equal(throttle_ready(&t, 301000), 4000);
}

/* Accepted calls are counted over the last second only. */
static void test_accepted_window(void **state) {
        struct throttle t;

        (void) state;
        throttle_init(&t, 8, 0, 0);
        for (int i = 0; i < 30; i++)
                throttle_ok(&t, 1000 + i * 10);
        assert_int_equal(throttle_accepted_last_second(&t, 1300), 30);
        assert_int_equal(throttle_accepted_last_second(&t, 1999), 30);
        assert_int_equal(throttle_accepted_last_second(&t, 2050), 20); /* in 100 ms slots */
        assert_int_equal(throttle_accepted_last_second(&t, 2150), 10);
        assert_int_equal(throttle_accepted_last_second(&t, 2400), 0);
        assert_int_equal(throttle_accepted_last_second(&t, 90000), 0);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_window),          cmocka_unit_test(test_max_rate),
                cmocka_unit_test(test_slow_start),      cmocka_unit_test(test_refusal_learns),
                cmocka_unit_test(test_accepted_window), cmocka_unit_test(test_pause_holds),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
