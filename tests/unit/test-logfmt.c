#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "log.h"
#include "util.h"

static void test_quoting(void **state) {
        static const struct {
                const char *value, *expect;
        } cases[] = {
                { "plain", "k=plain" },
                { "", "k=\"\"" },
                { "two words", "k=\"two words\"" },
                { "a=b", "k=\"a=b\"" },
                { "say \"hi\"", "k=\"say \\\"hi\\\"\"" },
                { "back\\slash", "k=\"back\\\\slash\"" },
                /* a user id cannot forge a second log line or a field */
                { "x\nlevel=error msg=forged", "k=\"x\\nlevel=error msg=forged\"" },
                { "\x1b[31m", "k=\"\\x1b[31m\"" },
        };

        (void) state;
        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                char buf[128];
                size_t off = 0;

                logfmt_append(buf, sizeof buf, &off, "k", cases[i].value);
                assert_string_equal(buf, cases[i].expect);
                assert_int_equal(off, strlen(buf));
        }
}

static void test_truncation(void **state) {
        char buf[16];
        size_t off = 0;

        (void) state;
        logfmt_append(buf, sizeof buf, &off, "key", "a value that is far too long for the buffer");
        assert_true(off < sizeof buf);
        assert_int_equal(strlen(buf), off);
        logfmt_append(buf, sizeof buf, &off, "more", "x");
        assert_true(off < sizeof buf);
}

static void test_targets(void **state) {
        enum log_target t;

        (void) state;
        assert_int_equal(log_target_from_string("auto", &t), 0);
        assert_int_equal(t, LOG_TARGET_AUTO);
        assert_int_equal(log_target_from_string("journal", &t), 0);
        assert_int_equal(t, LOG_TARGET_JOURNAL);
        assert_int_equal(log_target_from_string("console", &t), 0);
        assert_int_equal(t, LOG_TARGET_CONSOLE);
        assert_true(log_target_from_string("syslog", &t) < 0);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_quoting),
                cmocka_unit_test(test_truncation),
                cmocka_unit_test(test_targets),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
