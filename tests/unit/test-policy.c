#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "policy.h"
#include "util.h"

#define MIN  (60 * 1000ULL)
#define HOUR (60 * MIN)

/* What a decision reads as in the table below: the closing policy's name,
 * "protected" or "keep". */
static const char *decision_to_string(const struct decision *d) {
        switch (d->kind) {
        case DECISION_CLOSE:
                return d->policy->name;
        case DECISION_PROTECTED:
                return "protected";
        default:
                return "keep";
        }
}

static char *vip[] = { "vip-*" }, *pinned[] = { "pinned-?" }, *booth[] = { "booth-*" },
            *kiosk[] = { "kiosk-*" };

/* The example policy file, plus an exception that comes first. */
static struct policy policies[] = {
        { .name = "kiosk-slow",
          .kind = POLICY_NOT_STARTED,
          .after_ms = 24 * HOUR,
          .user_ids = { kiosk, 1 } },
        { .name = "failed-streams", .kind = POLICY_FAILED, .after_ms = 1 * MIN },
        { .name = "never-started", .kind = POLICY_NOT_STARTED, .after_ms = 10 * MIN },
        { .name = "booth-max-age", .kind = POLICY_MAX_AGE, .after_ms = 2 * HOUR, .user_ids = { booth, 1 } },
};

static const struct config cfg = {
        .protect_user_ids = { vip, 1 },
        .protect_session_ids = { pinned, 1 },
        .policies = policies,
        .n_policies = ELEMENTSOF(policies),
        .max_closes_per_cycle = 100,
};

static void test_table(void **state) {
        static const struct {
                const char *id, *user;
                int status;
                enum tristate started;
                uint64_t age_ms;
                const char *expect; /* policy name, "keep" or "protected" */
        } cases[] = {
                /* failed: status 4 only, after its delay */
                { "s1", "u", 4, TRISTATE_TRUE, 1 * MIN, "failed-streams" },
                { "s2", "u", 4, TRISTATE_TRUE, 1 * MIN - 1, "keep" },
                { "s3", "u", 4, TRISTATE_FALSE, 2 * MIN, "failed-streams" },
                /* not_started: started false, status 1 or 3 */
                { "s4", "u", 1, TRISTATE_FALSE, 10 * MIN, "never-started" },
                { "s5", "u", 3, TRISTATE_FALSE, 10 * MIN, "never-started" },
                { "s6", "u", 1, TRISTATE_TRUE, 10 * MIN, "keep" },
                { "s7", "u", 1, TRISTATE_UNKNOWN, 99 * HOUR, "keep" }, /* absent flag is not "false" */
                { "s8", "u", 3, TRISTATE_FALSE, 9 * MIN, "keep" },
                /* max_age with a selector */
                { "s9", "booth-7", 1, TRISTATE_TRUE, 2 * HOUR, "booth-max-age" },
                { "s10", "booth-7", 3, TRISTATE_TRUE, 2 * HOUR - 1, "keep" },
                { "s11", "kiosk-7", 1, TRISTATE_TRUE, 99 * HOUR, "keep" },
                { "s12", "xbooth-7", 1, TRISTATE_TRUE, 99 * HOUR, "keep" },
                /* status 2 is never closed, whatever matches */
                { "s13", "booth-1", 2, TRISTATE_FALSE, 99 * HOUR, "keep" },
                /* unknown statuses are never acted on */
                { "s14", "booth-1", 7, TRISTATE_FALSE, 99 * HOUR, "keep" },
                { "s15", "booth-1", 0, TRISTATE_FALSE, 99 * HOUR, "keep" },
                /* protect wins over every policy */
                { "s16", "vip-1", 4, TRISTATE_FALSE, 99 * HOUR, "protected" },
                { "pinned-1", "u", 4, TRISTATE_FALSE, 99 * HOUR, "protected" },
                { "pinned-12", "u", 4, TRISTATE_FALSE, 99 * HOUR, "failed-streams" },
                /* first match wins: the kiosk exception owns kiosk sessions that never
                 * started, so the shorter never-started policy does not close them */
                { "s17", "kiosk-1", 1, TRISTATE_FALSE, 23 * HOUR, "keep" },
                { "s18", "kiosk-1", 1, TRISTATE_FALSE, 24 * HOUR, "kiosk-slow" },
                /* ...but a failed kiosk stream is not "not started with status 1/3" */
                { "s19", "kiosk-1", 4, TRISTATE_FALSE, 1 * MIN, "failed-streams" },
                /* a booth session that never started is owned by never-started */
                { "s20", "booth-2", 1, TRISTATE_FALSE, 10 * MIN, "never-started" },
        };

        (void) state;
        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                struct session s = {
                        .session_id = (char *) (uintptr_t) cases[i].id,
                        .user_id = (char *) (uintptr_t) cases[i].user,
                        .status = cases[i].status,
                        .started = cases[i].started,
                };
                struct decision d;

                policy_decide(&cfg, &s, cases[i].age_ms, &d);
                if (strcmp(decision_to_string(&d), cases[i].expect) != 0)
                        fail_msg("case %zu (%s): got %s, expected %s", i, cases[i].id,
                                 decision_to_string(&d), cases[i].expect);
                assert_int_equal(d.age_ms, cases[i].age_ms);
        }
}

static void test_no_policies(void **state) {
        const struct config empty = { .max_closes_per_cycle = 1 };
        struct session s = { .session_id = "a", .user_id = "b", .status = 4, .started = TRISTATE_FALSE };
        struct decision d;

        (void) state;
        policy_decide(&empty, &s, 1000 * HOUR, &d);
        assert_int_equal(d.kind, DECISION_KEEP);
        assert_null(d.policy);
}

static void test_capacity_victims(void **state) {
        static char *kiosks[] = { "kiosk-*" };
        struct policy pols[] = {
                { .name = "never-started", .kind = POLICY_NOT_STARTED, .after_ms = 10 * MIN },
                { .name = "overflow",
                  .kind = POLICY_OVER_CAPACITY,
                  .capacity = 10,
                  .keep_free = 2,
                  .user_ids = { kiosks, 1 } },
        };
        struct config c = { .protect_user_ids = { vip, 1 }, .policies = pols, .n_policies = 2 };
        /* 12 live sessions: limit 10 - 2 = 8, so 4 must go. */
        struct session items[] = {
                { .session_id = "a",
                  .user_id = "kiosk-1",
                  .status = 1,
                  .started = TRISTATE_TRUE }, /* 0: live, 1h old */
                { .session_id = "b",
                  .user_id = "kiosk-2",
                  .status = 1,
                  .started = TRISTATE_TRUE }, /* 1: live, 5h: the oldest started */
                { .session_id = "c",
                  .user_id = "kiosk-3",
                  .status = 3,
                  .started = TRISTATE_FALSE }, /* 2: never started, 1m (not yet due by never-started) */
                { .session_id = "d",
                  .user_id = "kiosk-4",
                  .status = 4,
                  .started = TRISTATE_FALSE }, /* 3: failed: first, does not count as live */
                { .session_id = "e",
                  .user_id = "vip-1",
                  .status = 1,
                  .started = TRISTATE_TRUE }, /* 4: protected, 9h */
                { .session_id = "f",
                  .user_id = "desk-1",
                  .status = 1,
                  .started = TRISTATE_TRUE }, /* 5: not selected, 9h */
                { .session_id = "g",
                  .user_id = "kiosk-5",
                  .status = 1,
                  .started = TRISTATE_FALSE }, /* 6: never started, 20m: due by never-started */
                { .session_id = "h",
                  .user_id = "kiosk-6",
                  .status = 1,
                  .started = TRISTATE_TRUE }, /* 7: live, 3h */
                { .session_id = "i",
                  .user_id = "kiosk-7",
                  .status = 1,
                  .started = TRISTATE_TRUE }, /* 8: live, 2h */
                { .session_id = "j",
                  .user_id = "kiosk-8",
                  .status = 1,
                  .started = TRISTATE_TRUE }, /* 9: live, 4m */
                { .session_id = "k",
                  .user_id = "kiosk-9",
                  .status = 1,
                  .started = TRISTATE_TRUE }, /* 10: live, 3m */
                { .session_id = "l",
                  .user_id = "desk-2",
                  .status = 1,
                  .started = TRISTATE_TRUE }, /* 11: not selected */
                { .session_id = "m",
                  .user_id = "desk-3",
                  .status = 3,
                  .started = TRISTATE_TRUE }, /* 12: not selected */
                { .session_id = "n",
                  .user_id = "kiosk-10",
                  .status = 2,
                  .started = TRISTATE_FALSE }, /* 13: closed: never */
        };
        uint64_t ages[] = { 1 * HOUR, 5 * HOUR, 1 * MIN, 1 * MIN, 9 * HOUR, 9 * HOUR, 20 * MIN,
                            3 * HOUR, 2 * HOUR, 4 * MIN, 3 * MIN, 1 * MIN,  1 * MIN,  9 * HOUR };
        struct session_list l = { .items = items, .n = ELEMENTSOF(items) };
        bool closing[ELEMENTSOF(items)] = { false };
        struct capacity_victim v[ELEMENTSOF(items)];
        size_t n = 0;

        (void) state;
        closing[6] = true; /* the timer policy closes g this cycle */
        /* live and not closing: a b c e f h i j k l m = 11; 11 - 8 = 3 to go */
        assert_int_equal(policy_capacity_victims(&c, &l, ages, closing, v, &n), 0);
        assert_int_equal(n, 4);
        assert_int_equal(v[0].index, 3); /* failed first */
        assert_int_equal(v[1].index, 2); /* then never started */
        assert_int_equal(v[2].index, 1); /* then the oldest: b (5h) */
        assert_int_equal(v[3].index, 7); /* h (3h) */
        for (size_t k = 0; k < n; k++) {
                assert_ptr_equal(v[k].policy, &pols[1]);
                assert_true(closing[v[k].index]);
        }
        assert_false(closing[4]); /* protected */
        assert_false(closing[5]); /* not selected */

        /* Below the limit: nothing, not even failed streams. */
        memset(closing, 0, sizeof closing);
        pols[1].capacity = 20;
        assert_int_equal(policy_capacity_victims(&c, &l, ages, closing, v, &n), 0);
        assert_int_equal(n, 0);

        /* `after` protects young sessions. */
        pols[1].capacity = 10;
        pols[1].after_ms = 2 * HOUR;
        assert_int_equal(policy_capacity_victims(&c, &l, ages, closing, v, &n), 0);
        assert_int_equal(n, 3); /* 12 live - 8 = 4 wanted, only b, h, i are old enough */
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_table),
                cmocka_unit_test(test_no_policies),
                cmocka_unit_test(test_capacity_victims),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
