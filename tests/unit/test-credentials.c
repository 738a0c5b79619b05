#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "config.h"
#include "credentials.h"
#include "util.h"

#define SECRET "s3cr3t-T0ken-value"

static char dir[64];

/* stat(), interposed: this definition in the test binary takes the place of
 * libc's. When armed, it lets the real stat() run on the armed path and then
 * swaps what the path points to, as an attacker racing the daemon between a
 * check by path and a later open would. */
static char swap_path[128], swap_to[128];

int stat(const char *restrict path, struct stat *restrict st) {
        int r = fstatat(AT_FDCWD, path, st, 0);

        if (swap_path[0] && strcmp(path, swap_path) == 0) {
                char tmp[160];

                snprintf(tmp, sizeof tmp, "%s.new", swap_path);
                if (symlink(swap_to, tmp) < 0 || rename(tmp, swap_path) < 0)
                        abort();
                swap_path[0] = '\0';
        }
        return r;
}

static int setup(void **state) {
        (void) state;
        strcpy(dir, "/tmp/ivh-test-cred-XXXXXX");
        if (!mkdtemp(dir))
                return -1;
        unsetenv("CREDENTIALS_DIRECTORY");
        unsetenv("IVH_ACCESS_TOKEN");
        swap_path[0] = '\0';
        /* A FIFO opened by mistake would block forever: fail instead. */
        alarm(20);
        return 0;
}

static int teardown(void **state) {
        char cmd[128];

        (void) state;
        alarm(0);
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        return system(cmd) == 0 ? 0 : -1;
}

static void write_file(const char *path, const char *data, size_t len, mode_t mode) {
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

        assert_true(fd >= 0);
        assert_int_equal(write(fd, data, len), (ssize_t) len);
        assert_int_equal(fchmod(fd, mode), 0);
        assert_int_equal(close(fd), 0);
}

static size_t count_fds(void) {
        DIR *d = opendir("/proc/self/fd");
        size_t n = 0;

        assert_non_null(d);
        while (readdir(d))
                n++;
        closedir(d);
        return n;
}

/* Loads from gateway.accesstoken_file = path. */
static int load(const char *path, struct credentials **c, char *errbuf, size_t errlen) {
        struct gateway_config g = { .accesstoken_file = (char *) (uintptr_t) path };
        struct error err = { 0 };
        int r;

        *c = NULL;
        r = credentials_load(&g, NULL, NULL, c, &err);
        snprintf(errbuf, errlen, "%s", error_message(&err));
        error_done(&err);
        return r;
}

static void test_regular_file(void **state) {
        char path[128], err[512], src[160];
        struct credentials *c;

        (void) state;
        snprintf(path, sizeof path, "%s/accesstoken", dir);
        write_file(path, "  " SECRET "\n", strlen(SECRET) + 3, 0600);
        assert_int_equal(load(path, &c, err, sizeof err), 0);
        assert_non_null(c);
        assert_string_equal(c->token, SECRET);
        snprintf(src, sizeof src, "file %s", path);
        assert_string_equal(c->source, src);
        assert_false(c->from_env);
        credentials_free(c);
}

/* Issue 10, items 12 and 14: a FIFO at the token path used to block start-up
 * forever (stat() was fine with it, then a blocking open and read). */
static void test_fifo_refused(void **state) {
        char path[128], err[512];
        struct credentials *c;
        size_t fds = count_fds();

        (void) state;
        snprintf(path, sizeof path, "%s/accesstoken", dir);
        assert_int_equal(mkfifo(path, 0600), 0);
        assert_true(load(path, &c, err, sizeof err) < 0);
        assert_null(c);
        assert_non_null(strstr(err, path));
        assert_non_null(strstr(err, "is not a regular file"));
        assert_int_equal(count_fds(), fds);
}

/* The same through $CREDENTIALS_DIRECTORY. */
static void test_fifo_credential_refused(void **state) {
        struct gateway_config g = { 0 };
        char path[128];
        struct credentials *c = NULL;
        struct error err = { 0 };

        (void) state;
        snprintf(path, sizeof path, "%s/accesstoken", dir);
        assert_int_equal(mkfifo(path, 0600), 0);
        assert_int_equal(setenv("CREDENTIALS_DIRECTORY", dir, 1), 0);
        assert_true(credentials_load(&g, NULL, NULL, &c, &err) < 0);
        assert_null(c);
        assert_non_null(strstr(error_message(&err), "is not a regular file"));
        error_done(&err);
        unsetenv("CREDENTIALS_DIRECTORY");
}

static void test_directory_refused(void **state) {
        char path[128], err[512];
        struct credentials *c;

        (void) state;
        snprintf(path, sizeof path, "%s/accesstoken", dir);
        assert_int_equal(mkdir(path, 0700), 0);
        assert_true(load(path, &c, err, sizeof err) < 0);
        assert_non_null(strstr(err, "is not a regular file"));
}

static void test_readable_by_others_refused(void **state) {
        char path[128], err[512];
        struct credentials *c;

        (void) state;
        snprintf(path, sizeof path, "%s/accesstoken", dir);
        write_file(path, SECRET "\n", strlen(SECRET) + 1, 0644);
        assert_int_equal(load(path, &c, err, sizeof err), -EPERM);
        assert_null(c);
        assert_non_null(strstr(err, "is readable by others (mode 0644)"));
        assert_non_null(strstr(err, "chmod o-r"));
        assert_null(strstr(err, SECRET));
}

/* Issue 10, item 14: the file was checked by path, then opened by path. A
 * file swapped in between (here: right after stat() returns) was read
 * without its mode ever being checked, so a token others could read was
 * accepted. Now the one file opened is the one checked and read. */
static void test_swap_after_check(void **state) {
        char good[128], bad[128], link[128], err[512];
        struct credentials *c;
        int r;

        (void) state;
        snprintf(good, sizeof good, "%s/checked", dir);
        snprintf(bad, sizeof bad, "%s/world-readable", dir);
        snprintf(link, sizeof link, "%s/accesstoken", dir);
        write_file(good, "checked-token\n", 14, 0600);
        write_file(bad, SECRET "\n", strlen(SECRET) + 1, 0644);
        assert_int_equal(symlink(good, link), 0);
        snprintf(swap_path, sizeof swap_path, "%s", link);
        snprintf(swap_to, sizeof swap_to, "%s", bad);

        r = load(link, &c, err, sizeof err);
        swap_path[0] = '\0';
        if (r == 0) {
                assert_string_equal(c->token, "checked-token");
                credentials_free(c);
        } else {
                assert_int_equal(r, -EPERM);
                assert_null(strstr(err, SECRET));
        }
}

/* Whatever is wrong with the file, the message never carries its content. */
static void test_errors_never_show_token(void **state) {
        static const struct {
                const char *data;
                size_t len;
                const char *expect;
        } cases[] = {
                { "", 0, "is empty" },
                { " \n\t\n", 4, "is empty" },
                { SECRET " " SECRET "\n", 2 * strlen(SECRET) + 2, "contains white space" },
                { SECRET "\x01\n", strlen(SECRET) + 2, "non-printable" },
                /* A NUL would silently end the token early. */
                { SECRET "\0" SECRET "\n", 2 * strlen(SECRET) + 2, "non-printable" },
        };
        char path[128], err[512], *big;
        struct credentials *c;
        size_t fds = count_fds();

        (void) state;
        snprintf(path, sizeof path, "%s/accesstoken", dir);
        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                write_file(path, cases[i].data, cases[i].len, 0600);
                assert_true(load(path, &c, err, sizeof err) < 0);
                assert_null(c);
                assert_non_null(strstr(err, cases[i].expect));
                assert_null(strstr(err, "s3cr3t"));
        }

        big = malloc(5000);
        assert_non_null(big);
        for (size_t i = 0; i < 5000; i++)
                big[i] = SECRET[i % strlen(SECRET)];
        write_file(path, big, 5000, 0600);
        assert_true(load(path, &c, err, sizeof err) < 0);
        assert_non_null(strstr(err, "larger than 4 KiB"));
        assert_null(strstr(err, "s3cr3t"));
        free(big);

        /* Exactly 4 KiB is fine. */
        big = malloc(4096);
        assert_non_null(big);
        memset(big, 'k', 4096);
        write_file(path, big, 4096, 0600);
        assert_int_equal(load(path, &c, err, sizeof err), 0);
        assert_int_equal(strlen(c->token), 4096);
        credentials_free(c);
        free(big);

        assert_int_equal(count_fds(), fds);
}

static void test_missing_file(void **state) {
        char path[128], err[512];
        struct credentials *c;

        (void) state;
        snprintf(path, sizeof path, "%s/nope", dir);
        assert_int_equal(load(path, &c, err, sizeof err), -ENOENT);
        assert_non_null(strstr(err, path));
        assert_non_null(strstr(err, "No such file"));
}

static void test_environment_wiped(void **state) {
        struct gateway_config g = { 0 };
        struct credentials *c = NULL, *again = NULL;
        struct error err = { 0 };

        (void) state;
        assert_int_equal(setenv("IVH_ACCESS_TOKEN", SECRET, 1), 0);
        assert_int_equal(credentials_load(&g, NULL, NULL, &c, &err), 0);
        assert_string_equal(c->token, SECRET);
        assert_true(c->from_env);
        assert_null(getenv("IVH_ACCESS_TOKEN"));
        /* A reload carries it over. */
        assert_int_equal(credentials_load(&g, c, NULL, &again, &err), 0);
        assert_null(err.message);
        assert_string_equal(again->token, SECRET);
        credentials_free(again);
        credentials_free(c);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_regular_file, setup, teardown),
                cmocka_unit_test_setup_teardown(test_fifo_refused, setup, teardown),
                cmocka_unit_test_setup_teardown(test_fifo_credential_refused, setup, teardown),
                cmocka_unit_test_setup_teardown(test_directory_refused, setup, teardown),
                cmocka_unit_test_setup_teardown(test_readable_by_others_refused, setup, teardown),
                cmocka_unit_test_setup_teardown(test_swap_after_check, setup, teardown),
                cmocka_unit_test_setup_teardown(test_errors_never_show_token, setup, teardown),
                cmocka_unit_test_setup_teardown(test_missing_file, setup, teardown),
                cmocka_unit_test_setup_teardown(test_environment_wiped, setup, teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
