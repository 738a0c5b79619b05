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

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_table),
                cmocka_unit_test(test_no_policies),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
