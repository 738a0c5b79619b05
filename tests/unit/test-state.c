#include <errno.h>
#include <glob.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "state.h"
#include "util.h"

static char dir[64], path[128];

static int setup(void **st) {
        (void) st;
        strcpy(dir, "/tmp/ivh-test-state-XXXXXX");
        if (!mkdtemp(dir))
                return -1;
        snprintf(path, sizeof path, "%s/state.json", dir);
        return 0;
}

static int teardown(void **st) {
        char cmd[128];

        (void) st;
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        return system(cmd) == 0 ? 0 : -1;
}

static struct session_list *list_of(const char *const *ids, size_t n) {
        struct session_list *l = calloc(1, sizeof *l);

        l->items = calloc(n ? n : 1, sizeof *l->items);
        for (size_t i = 0; i < n; i++) {
                l->items[i].session_id = strdup(ids[i]);
                l->items[i].user_id = strdup("u");
        }
        l->n = n;
        return l;
}

static void write_text(const char *text) {
        FILE *f = fopen(path, "w");
        assert_non_null(f);
        fputs(text, f);
        fclose(f);
}

static void test_sync_and_ages(void **st) {
        static const char *const first[] = { "a", "b", "c" }, *const second[] = { "b", "c", "d" };
        struct session_list *l1 = list_of(first, 3), *l2 = list_of(second, 3);
        int64_t seen;
        uint64_t ages[3];
        struct state *s = NULL;
        char *warning = NULL;

        (void) st;
        assert_int_equal(state_new(path, &s), 0);
        assert_int_equal(state_load(s, 1000000, 500, false, &warning), 0); /* no file: empty */
        assert_null(warning);
        assert_int_equal(state_size(s), 0);
        assert_false(state_dirty(s));

        memset(ages, 0xff, sizeof ages);
        assert_int_equal(state_sync(s, l1, 1000, ages), 0);
        assert_true(state_dirty(s));
        for (size_t i = 0; i < 3; i++)
                assert_int_equal(ages[i], 0); /* first seen now */
        assert_int_equal(state_size(s), 3);
        assert_int_equal(state_age_ms(s, "a", 61000), 60000);

        assert_int_equal(state_save(s, 2000000, 2000), 0);
        assert_false(state_dirty(s));
        /* The same list again changes nothing and writes nothing. */
        assert_int_equal(state_sync(s, l1, 3000, NULL), 0);
        assert_false(state_dirty(s));

        /* a is gone, d is new, b and c keep their first sight. */
        assert_int_equal(state_sync(s, l2, 5000, ages), 0);
        assert_true(state_dirty(s));
        /* The ages come in list order (b, c, d) and agree with state_age_ms(). */
        assert_int_equal(ages[0], 4000);
        assert_int_equal(ages[1], 4000);
        assert_int_equal(ages[2], 0);
        assert_int_equal(state_age_ms(s, "b", 5000), ages[0]);
        assert_false(state_first_seen(s, "a", &seen));
        assert_true(state_first_seen(s, "b", &seen));
        assert_int_equal(seen, 1000);
        assert_true(state_first_seen(s, "d", &seen));
        assert_int_equal(seen, 5000);
        assert_int_equal(state_age_ms(s, "unknown", 5000), 0);
        state_free(s);
        session_list_free(l1);
        session_list_free(l2);
}

static void test_restart_keeps_ages(void **st) {
        static const char *const ids[] = { "x", "y" };
        struct session_list *l = list_of(ids, 2);
        uint64_t ages[2];
        struct state *s = NULL;
        char *warning = NULL;
        struct stat sb;

        (void) st;
        assert_int_equal(state_new(path, &s), 0);
        assert_int_equal(state_load(s, 0, 0, false, &warning), 0);
        /* wall 10,000,000 = mono 100: x and y are first seen at wall 10,000,000 */
        assert_int_equal(state_sync(s, l, 100, NULL), 0);
        assert_int_equal(state_save(s, 10000000, 100), 0);
        assert_int_equal(stat(path, &sb), 0);
        assert_int_equal(sb.st_mode & 0777, 0600);
        state_free(s);

        /* After a restart (the boot clock restarted too), an hour later by the wall clock. */
        assert_int_equal(state_new(path, &s), 0);
        assert_int_equal(state_load(s, 10000000 + 3600000, 7, false, &warning), 0);
        assert_null(warning);
        assert_int_equal(state_size(s), 2);
        assert_int_equal(state_age_ms(s, "x", 7), 3600000);
        assert_false(state_dirty(s));
        /* Sessions first seen before this boot: state_sync() gives the same age. */
        assert_int_equal(state_sync(s, l, 7, ages), 0);
        assert_int_equal(ages[0], 3600000);
        assert_false(state_dirty(s));
        state_free(s);

        /* The wall clock went back: the sessions count as seen now, never older. */
        assert_int_equal(state_new(path, &s), 0);
        assert_int_equal(state_load(s, 5000000, 7, false, &warning), 0);
        assert_int_equal(state_age_ms(s, "y", 7), 0);
        state_free(s);
        session_list_free(l);
}

static void test_corrupt_is_set_aside(void **st) {
        static const char *const bad[] = {
                "",
                "{",
                "[]",
                "{\"version\":2,\"first_seen\":{}}",
                "{\"version\":1}",
                "{\"version\":1,\"first_seen\":{\"a\":\"x\"}}",
                "{\"version\":1,\"first_seen\":{\"a\":-5}}",
                "{\"version\":1,\"first_seen\":{\"\":5}}",
                "{\"version\":1,\"first_seen\":{}} junk",
        };

        (void) st;
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                struct state *s = NULL;
                char *warning = NULL, pattern[160];
                glob_t g;

                write_text(bad[i]);
                assert_int_equal(state_new(path, &s), 0);
                /* read-only (--plan): warn, leave the file alone */
                assert_int_equal(state_load(s, 1000, 0, true, &warning), 0);
                assert_non_null(warning);
                free(warning);
                assert_int_equal(access(path, F_OK), 0);

                assert_int_equal(state_load(s, 1000, 0, false, &warning), 0);
                assert_non_null(warning);
                assert_non_null(strstr(warning, "corrupt-"));
                free(warning);
                assert_int_equal(state_size(s), 0);
                assert_int_equal(access(path, F_OK), -1);
                snprintf(pattern, sizeof pattern, "%s.corrupt-*", path);
                assert_int_equal(glob(pattern, 0, NULL, &g), 0);
                assert_int_equal(g.gl_pathc, 1);
                unlink(g.gl_pathv[0]);
                globfree(&g);
                state_free(s);
        }
}

static void test_unwritable_dir(void **st) {
        static const char *const ids[] = { "x" };
        struct session_list *l = list_of(ids, 1);
        struct state *s = NULL;
        char *warning = NULL;

        (void) st;
        assert_int_equal(state_new("/nonexistent-dir/state.json", &s), 0);
        assert_int_equal(state_load(s, 0, 0, false, &warning), 0);
        assert_int_equal(state_sync(s, l, 1, NULL), 0);
        assert_int_equal(state_save(s, 1, 1), -ENOENT);
        assert_true(state_dirty(s)); /* retried next time */
        state_free(s);
        session_list_free(l);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_sync_and_ages, setup, teardown),
                cmocka_unit_test_setup_teardown(test_restart_keeps_ages, setup, teardown),
                cmocka_unit_test_setup_teardown(test_corrupt_is_set_aside, setup, teardown),
                cmocka_unit_test(test_unwritable_dir),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
