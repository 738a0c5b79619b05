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

#include "gateway.h"
#include "state.h"
#include "util.h"

/* A plausible wall-clock time (2027): first-seen times before 2020 are refused. */
#define W 1800000000000LL

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
        struct error warning = { 0 };

        (void) st;
        assert_int_equal(state_new(path, &s), 0);
        assert_int_equal(state_load(s, W + (1000000), 500, false, &warning), 0); /* no file: empty */
        assert_null(warning.message);
        assert_int_equal(state_size(s), 0);
        assert_false(state_dirty(s));

        memset(ages, 0xff, sizeof ages);
        assert_int_equal(state_sync(s, l1, 1000, 0, ages), 0);
        assert_true(state_dirty(s));
        for (size_t i = 0; i < 3; i++)
                assert_int_equal(ages[i], 0); /* first seen now */
        assert_int_equal(state_size(s), 3);
        assert_int_equal(state_age_ms(s, "a", 61000), 60000);

        assert_int_equal(state_save(s, W + (2000000), 2000), 0);
        assert_false(state_dirty(s));
        /* The same list again changes nothing and writes nothing. */
        assert_int_equal(state_sync(s, l1, 3000, 0, NULL), 0);
        assert_false(state_dirty(s));

        /* a is gone (no grace period here), d is new, b and c keep their first sight. */
        assert_int_equal(state_sync(s, l2, 5000, 0, ages), 0);
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
        struct error warning = { 0 };
        struct stat sb;

        (void) st;
        assert_int_equal(state_new(path, &s), 0);
        state_set_boot_id(s, "11111111-1111-1111-1111-111111111111");
        assert_int_equal(state_load(s, W + (0), 0, false, &warning), 0);
        /* wall 10,000,000 = mono 100: x and y are first seen at wall 10,000,000 */
        assert_int_equal(state_sync(s, l, 100, 0, NULL), 0);
        assert_int_equal(state_anchor(s, W + (10000000), 100), 0); /* the gateway accepted our clock */
        assert_int_equal(state_save(s, W + (10000000), 100), 0);
        assert_int_equal(stat(path, &sb), 0);
        assert_int_equal(sb.st_mode & 0777, 0600);
        state_free(s);

        /* After a reboot (the boot clock restarted too), an hour later by the wall clock. */
        assert_int_equal(state_new(path, &s), 0);
        state_set_boot_id(s, "22222222-2222-2222-2222-222222222222");
        assert_int_equal(state_load(s, W + (10000000 + 3600000), 7, false, &warning), 0);
        assert_null(warning.message);
        assert_int_equal(state_size(s), 2);
        /* No age until the gateway has accepted a signed request. */
        assert_false(state_first_seen(s, "x", NULL));
        assert_int_equal(state_age_ms(s, "x", 7), 0);
        assert_int_equal(state_save(s, W + (10000000 + 3600000), 7), 0); /* nothing written meanwhile */
        assert_int_equal(state_anchor(s, W + (10000000 + 3600000), 7), 2);
        assert_int_equal(state_age_ms(s, "x", 7), 3600000);
        /* Sessions first seen before this boot: state_sync() gives the same age. */
        assert_int_equal(state_sync(s, l, 7, 0, ages), 0);
        assert_int_equal(ages[0], 3600000);
        assert_int_equal(state_save(s, W + (10000000 + 3600000), 7), 0);
        state_free(s);

        /* After another reboot the wall clock went back: the sessions count as seen now, never older. */
        assert_int_equal(state_new(path, &s), 0);
        state_set_boot_id(s, "33333333-3333-3333-3333-333333333333");
        assert_int_equal(state_load(s, W + (5000000), 7, false, &warning), 0);
        state_anchor(s, W + (5000000), 7);
        assert_int_equal(state_age_ms(s, "y", 7), 0);
        state_free(s);
        session_list_free(l);
}

/* Item 3 of issue 10: a wall clock 8 h ahead at start-up, in the same boot,
 * must not age anything; nor may a skew during a save. */
static void test_same_boot_ignores_wall_clock(void **st) {
        static const char *const ids[] = { "x" };
        struct session_list *l = list_of(ids, 1);
        const int64_t hour = 3600000;
        uint64_t ages[1];
        struct state *s = NULL;
        struct error warning = { 0 };

        (void) st;
        assert_int_equal(state_new(path, &s), 0);
        state_set_boot_id(s, "11111111-1111-1111-1111-111111111111");
        assert_int_equal(state_load(s, W + (100 * hour), 1000, false, &warning), 0);
        assert_int_equal(state_sync(s, l, 1000, 0, NULL), 0); /* first seen at boot time 1 s */
        /* Saved while the wall clock was 4 minutes behind. */
        assert_int_equal(state_save(s, W + (100 * hour + 5000 - 240000), 5000), 0);
        state_free(s);

        /* Restarted 7 s later in the same boot, the wall clock now 8 h ahead. */
        assert_int_equal(state_new(path, &s), 0);
        state_set_boot_id(s, "11111111-1111-1111-1111-111111111111");
        assert_int_equal(state_load(s, W + (108 * hour + 8000), 8000, false, &warning), 0);
        assert_null(warning.message);
        assert_true(state_first_seen(s, "x", NULL));
        assert_int_equal(state_age_ms(s, "x", 8000), 7000);
        /* Neither the gateway's confirmation nor the sync changes a same-boot age. */
        state_anchor(s, W + (108 * hour + 8000), 8000);
        assert_int_equal(state_sync(s, l, 8000, 0, ages), 0);
        assert_int_equal(ages[0], 7000);
        state_free(s);
        session_list_free(l);
}

/* A file written while the wall clock was not confirmed by the gateway is
 * not trusted across a reboot: ages restart from zero. */
static void test_untrusted_file_after_reboot(void **st) {
        static const char *const ids[] = { "x" };
        struct session_list *l = list_of(ids, 1);
        struct state *s = NULL;
        struct error warning = { 0 };

        (void) st;
        assert_int_equal(state_new(path, &s), 0);
        state_set_boot_id(s, "11111111-1111-1111-1111-111111111111");
        assert_int_equal(state_load(s, W + (10000000), 100, false, &warning), 0);
        assert_int_equal(state_sync(s, l, 100, 0, NULL), 0);
        assert_int_equal(state_save(s, W + (10000000), 100), 0); /* never anchored: untrusted */
        state_free(s);

        assert_int_equal(state_new(path, &s), 0);
        state_set_boot_id(s, "22222222-2222-2222-2222-222222222222");
        assert_int_equal(state_load(s, W + (10000000 + 3600000), 7, false, &warning), 0);
        assert_non_null(warning.message);
        assert_non_null(strstr(warning.message, "restart from zero"));
        error_done(&warning);
        assert_int_equal(state_size(s), 0);
        state_free(s);
        session_list_free(l);
}

/* A step of the wall clock is noticed and makes the file due again. */
static void test_clock_step(void **st) {
        struct state *s = NULL;
        struct error warning = { 0 };

        (void) st;
        assert_int_equal(state_new(path, &s), 0);
        assert_int_equal(state_load(s, W + (1000000), 500, false, &warning), 0);
        assert_false(state_dirty(s));
        assert_int_equal(state_check_clock(s, W + (1001000), 1500), 0); /* in step */
        assert_int_equal(state_check_clock(s, W + (1002500), 2000), 0); /* 1 s drift: tolerated */
        assert_false(state_dirty(s));
        assert_int_equal(state_check_clock(s, W + (1002500 + 3600000), 2000),
                         3600000); /* drift is not a step */
        assert_true(state_dirty(s));
        assert_int_equal(state_check_clock(s, W + (1002500 + 3600000), 2000), 0);
        /* A step just before the gateway accepted a list, or before a save,
         * is still noticed by the next check (a race the CI run found). */
        state_anchor(s, W + (1002500 + 7200000), 3000);
        assert_int_equal(state_save(s, W + (1002500 + 7200000), 3000), 0);
        assert_int_equal(state_check_clock(s, W + (1002500 + 7200000), 3000), 3599000);
        state_free(s);
}

/* Sessions that drop out of the list keep their first sight for the grace period. */
static void test_grace_period(void **st) {
        static const char *const ids[] = { "a", "b" };
        struct session_list *both = list_of(ids, 2), *none = list_of(ids, 0);
        uint64_t ages[2];
        struct state *s = NULL;
        struct error warning = { 0 };

        (void) st;
        assert_int_equal(state_new(path, &s), 0);
        assert_int_equal(state_load(s, W + (1000000), 0, false, &warning), 0);
        assert_int_equal(state_sync(s, both, 1000, 10000, NULL), 0);
        /* An empty list now and then forgets nothing within the grace period. */
        assert_int_equal(state_sync(s, none, 5000, 10000, NULL), 0);
        assert_int_equal(state_size(s), 2);
        assert_int_equal(state_sync(s, both, 9000, 10000, ages), 0);
        assert_int_equal(ages[0], 8000);
        assert_int_equal(ages[1], 8000);
        /* Gone for longer than the grace period: forgotten. */
        assert_int_equal(state_sync(s, none, 19001, 10000, NULL), 0);
        assert_int_equal(state_size(s), 0);
        state_free(s);
        session_list_free(both);
        session_list_free(none);
}

/* Only ".#state.json.XXXXXX" files are temporaries; the operator's own files stay. */
static void test_temporaries(void **st) {
        static const char *const keep[] = { "state.json.backup", "state.json.before", "state.json.old001",
                                            ".#state.json.backup1", ".#other.json.abc123" };
        char p[256];
        struct state *s = NULL;
        struct error warning = { 0 };

        (void) st;
        for (size_t i = 0; i < ELEMENTSOF(keep); i++) {
                snprintf(p, sizeof p, "%s/%s", dir, keep[i]);
                write_text("{}");
                assert_int_equal(rename(path, p), 0);
        }
        snprintf(p, sizeof p, "%s/.#state.json.Ab12Z9", dir);
        write_text("{}");
        assert_int_equal(rename(path, p), 0);
        assert_int_equal(state_new(path, &s), 0);
        assert_int_equal(state_load(s, W + (0), 0, false, &warning), 0);
        state_free(s);
        assert_int_equal(access(p, F_OK), -1);
        for (size_t i = 0; i < ELEMENTSOF(keep); i++) {
                snprintf(p, sizeof p, "%s/%s", dir, keep[i]);
                assert_int_equal(access(p, F_OK), 0);
        }
}

/* A state path that is a symbolic link is written through to its target. */
static void test_symlink_written_through(void **st) {
        static const char *const ids[] = { "x" };
        struct session_list *l = list_of(ids, 1);
        char target[256];
        struct state *s = NULL;
        struct error warning = { 0 };
        struct stat sb;

        (void) st;
        snprintf(target, sizeof target, "%s/real.json", dir);
        assert_int_equal(symlink("real.json", path), 0); /* relative, dangling at first */
        assert_int_equal(state_new(path, &s), 0);
        assert_int_equal(state_load(s, W + (0), 0, false, &warning), 0);
        assert_int_equal(state_sync(s, l, 1, 0, NULL), 0);
        assert_int_equal(state_save(s, W + (1), 1), 0);
        assert_int_equal(lstat(path, &sb), 0);
        assert_true(S_ISLNK(sb.st_mode));
        assert_int_equal(stat(target, &sb), 0);
        assert_true(S_ISREG(sb.st_mode));
        assert_int_equal(state_sync(s, l, 2, 0, NULL), 0);
        assert_int_equal(state_check_clock(s, W + (100000), 2), 99998);
        assert_int_equal(state_save(s, W + (100000), 2), 0); /* again, over the existing target */
        assert_int_equal(lstat(path, &sb), 0);
        assert_true(S_ISLNK(sb.st_mode));
        state_free(s);
        session_list_free(l);
}

/* Two daemons never share a state file. */
static void test_lock(void **st) {
        struct state *a = NULL, *b = NULL;

        (void) st;
        assert_int_equal(state_new(path, &a), 0);
        assert_int_equal(state_new(path, &b), 0);
        assert_int_equal(state_lock(a), 0);
        assert_int_equal(state_lock(b), -EBUSY);
        state_free(a);
        assert_int_equal(state_lock(b), 0);
        state_free(b);

        /* Through a symbolic link to the same file (red team, issue 10). */
        {
                char link[256];

                snprintf(link, sizeof link, "%s/link.json", dir);
                write_text("{}");
                assert_int_equal(symlink("state.json", link), 0);
                assert_int_equal(state_new(path, &a), 0);
                assert_int_equal(state_new(link, &b), 0);
                assert_int_equal(state_lock(a), 0);
                assert_int_equal(state_lock(b), -EBUSY);
                state_free(a);
                state_free(b);
                /* A link loop is an error, not a lock beside the link. */
                unlink(link);
                assert_int_equal(symlink("link.json", link), 0);
                assert_int_equal(state_new(link, &b), 0);
                assert_int_equal(state_lock(b), -ELOOP);
                state_free(b);
        }
}

/* A directory or a FIFO at the state path is an error, at once. */
static void test_not_regular(void **st) {
        struct state *s = NULL;
        struct error warning = { 0 };

        (void) st;
        assert_int_equal(mkdir(path, 0700), 0);
        assert_int_equal(state_new(path, &s), 0);
        assert_int_equal(state_load(s, W + (0), 0, false, &warning), -EISDIR);
        assert_int_equal(rmdir(path), 0);
        assert_int_equal(mkfifo(path, 0600), 0);
        assert_int_equal(state_load(s, W + (0), 0, false, &warning), -EBADFD); /* does not block */
        state_free(s);
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
                /* a valid first entry and a bad later one */
                "{\"version\":1,\"first_seen\":{\"a\":1800000000000,\"b\":\"x\"}}",
                "{\"version\":1,\"first_seen\":{\"a\":1800000000000,\"b\":-1}}",
                "{\"version\":2,\"boot_id\":\"x\",\"offset_ms\":0,\"wall_trusted\":true,\"saved_ms\":"
                "1800000000000,"
                "\"first_seen\":{\"a\":1800000000000,\"\":1800000000000}}",
                /* times that cannot be true (red team, issue 10): before 2020, after the save */
                "{\"version\":1,\"first_seen\":{\"a\":1800000000000,\"b\":0}}",
                "{\"version\":2,\"boot_id\":\"x\",\"offset_ms\":0,\"wall_trusted\":true,\"saved_ms\":"
                "1800000000000,"
                "\"first_seen\":{\"a\":1800000100000}}",
                "{\"version\":2,\"boot_id\":\"x\",\"offset_ms\":0,\"wall_trusted\":true,"
                "\"first_seen\":{\"a\":1800000000000}}",
        };

        (void) st;
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                struct state *s = NULL;
                struct error warning = { 0 };
                char pattern[160];
                glob_t g;

                write_text(bad[i]);
                assert_int_equal(state_new(path, &s), 0);
                /* read-only (--plan): warn, leave the file alone */
                assert_int_equal(state_load(s, W + (1000), 0, true, &warning), 0);
                assert_non_null(warning.message);
                error_done(&warning);
                assert_int_equal(access(path, F_OK), 0);

                assert_int_equal(state_load(s, W + (1000), 0, false, &warning), 0);
                assert_non_null(warning.message);
                assert_non_null(strstr(warning.message, "corrupt-"));
                error_done(&warning);
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
        struct error warning = { 0 };

        (void) st;
        assert_int_equal(state_new("/nonexistent-dir/state.json", &s), 0);
        assert_int_equal(state_load(s, W + (0), 0, false, &warning), 0);
        assert_int_equal(state_sync(s, l, 1, 0, NULL), 0);
        assert_int_equal(state_save(s, W + (1), 1), -ENOENT);
        assert_true(state_dirty(s)); /* retried next time */
        state_free(s);
        session_list_free(l);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_sync_and_ages, setup, teardown),
                cmocka_unit_test_setup_teardown(test_restart_keeps_ages, setup, teardown),
                cmocka_unit_test_setup_teardown(test_same_boot_ignores_wall_clock, setup, teardown),
                cmocka_unit_test_setup_teardown(test_untrusted_file_after_reboot, setup, teardown),
                cmocka_unit_test_setup_teardown(test_clock_step, setup, teardown),
                cmocka_unit_test_setup_teardown(test_grace_period, setup, teardown),
                cmocka_unit_test_setup_teardown(test_temporaries, setup, teardown),
                cmocka_unit_test_setup_teardown(test_symlink_written_through, setup, teardown),
                cmocka_unit_test_setup_teardown(test_lock, setup, teardown),
                cmocka_unit_test_setup_teardown(test_not_regular, setup, teardown),
                cmocka_unit_test_setup_teardown(test_corrupt_is_set_aside, setup, teardown),
                cmocka_unit_test(test_unwritable_dir),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
