#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "duration.h"
#include "util.h"

static void test_parse_valid(void **state) {
        static const struct {
                const char *in;
                uint64_t ms;
        } cases[] = {
                { "0s", 0 },          { "500ms", 500 },
                { "30s", 30000 },     { "10m", 600000 },
                { "2h", 7200000 },    { "1d", 86400000 },
                { "1h30m", 5400000 }, { "1m500ms", 60500 },
                { "007s", 7000 },     { "36500d", UINT64_C(36500) * 86400000 },
        };

        (void) state;
        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                uint64_t ms = 12345;
                const char *problem = NULL;

                assert_int_equal(duration_parse(cases[i].in, &ms, &problem), 0);
                assert_int_equal(ms, cases[i].ms);
        }
}

static void test_parse_invalid(void **state) {
        static const char *const bad[] = {
                "",     "30",     "s",  "10x", "-5s",   "1.5h", " 30s", "30s ",
                "30 s", "1h 30m", "ms", "1hh", "0x10s", "\xff", "30S",  "1e3s",
        };

        (void) state;
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                uint64_t ms = 42;
                const char *problem = NULL;

                assert_int_equal(duration_parse(bad[i], &ms, &problem), -EINVAL);
                assert_non_null(problem);
                assert_int_equal(ms, 42); /* untouched on failure */
        }
}

static void test_parse_overflow(void **state) {
        const char *problem = NULL;
        uint64_t ms = 0;

        (void) state;
        assert_int_equal(duration_parse("36501d", &ms, &problem), -ERANGE);
        assert_int_equal(duration_parse("99999999999999999999999s", &ms, &problem), -ERANGE);
        assert_int_equal(duration_parse("36500d1d", &ms, &problem), -ERANGE);
}

static void test_format(void **state) {
        static const struct {
                uint64_t ms;
                const char *out;
        } cases[] = {
                { 0, "0s" },
                { 500, "500ms" },
                { 30000, "30s" },
                { 5400000, "1h30m" },
                { 90061001, "1d1h1m1s1ms" },
        };
        char buf[64];

        (void) state;
        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                uint64_t back = 0;

                assert_string_equal(duration_format(cases[i].ms, buf, sizeof buf), cases[i].out);
                assert_int_equal(duration_parse(buf, &back, NULL), 0);
                assert_int_equal(back, cases[i].ms);
        }
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_parse_valid),
                cmocka_unit_test(test_parse_invalid),
                cmocka_unit_test(test_parse_overflow),
                cmocka_unit_test(test_format),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
