#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <systemd/sd-journal.h>
#include <unistd.h>

#include <cmocka.h>

#include "log.h"
#include "util.h"

#define LINE_MAX_BYTES 8192 /* LOG_LINE_MAX in log.c */
#define MARK           "\xe2\x80\xa6"

/* The journal, faked: this definition in the test binary takes the place of
 * libsystemd's (sd_journal_sendv() is a macro that calls it), so the entries
 * log_struct() sends can be inspected. */
static char *sent[64];
static size_t n_sent;

static void journal_reset(void) {
        for (size_t i = 0; i < n_sent; i++)
                free(sent[i]);
        n_sent = 0;
}

int sd_journal_sendv_with_location(const char *file, const char *line, const char *func,
                                   const struct iovec *iov, int n) {
        (void) file;
        (void) line;
        (void) func;
        journal_reset();
        for (int i = 0; i < n && n_sent < ELEMENTSOF(sent); i++) {
                char *s = malloc(iov[i].iov_len + 1);

                assert_non_null(s);
                memcpy(s, iov[i].iov_base, iov[i].iov_len);
                s[iov[i].iov_len] = '\0';
                sent[n_sent++] = s;
        }
        return 0;
}

static const char *journal_get(const char *name) {
        size_t l = strlen(name);

        for (size_t i = 0; i < n_sent; i++)
                if (strncmp(sent[i], name, l) == 0 && sent[i][l] == '=')
                        return sent[i] + l + 1;
        return NULL;
}

/* A logfmt parser as strict as a consumer would be: key=value pairs
 * separated by one space; a value is bare, or quoted with the escapes \" \\
 * \n and \xNN only. */
struct kv {
        char key[64];
        char *val; /* decoded */
        bool quoted;
};

static size_t parse_line(const char *line, struct kv *out, size_t max) {
        size_t n = 0;
        const char *p = line;

        while (*p) {
                size_t k = 0, v = 0;
                char *val = malloc(strlen(p) + 1);

                assert_non_null(val);
                assert_true(n < max);
                while (*p && *p != '=') {
                        assert_true((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_');
                        assert_true(k + 1 < sizeof out[n].key);
                        out[n].key[k++] = *p++;
                }
                out[n].key[k] = '\0';
                assert_true(k > 0);
                assert_int_equal(*p++, '=');
                out[n].quoted = *p == '"';
                if (*p == '"') {
                        for (p++; *p != '"'; p++) {
                                assert_true(*p != '\0' && *p != '\n');
                                if (*p != '\\') {
                                        val[v++] = *p;
                                        continue;
                                }
                                p++;
                                if (*p == '"' || *p == '\\')
                                        val[v++] = *p;
                                else if (*p == 'n')
                                        val[v++] = '\n';
                                else {
                                        unsigned x;

                                        assert_int_equal(*p, 'x');
                                        assert_int_equal(sscanf(p + 1, "%2x", &x), 1);
                                        val[v++] = (char) x;
                                        p += 2;
                                }
                        }
                        p++;
                } else {
                        for (; *p && *p != ' '; p++) {
                                assert_true(*p > ' ' && *p != '"' && *p != '=' && *p != '\\');
                                val[v++] = *p;
                        }
                }
                val[v] = '\0';
                out[n++].val = val;
                if (*p)
                        assert_int_equal(*p++, ' ');
        }
        return n;
}

static void kv_free(struct kv *kv, size_t n) {
        for (size_t i = 0; i < n; i++)
                free(kv[i].val);
}

static bool ends_with(const char *s, const char *suffix) {
        size_t a = strlen(s), b = strlen(suffix);
        return a >= b && memcmp(s + a - b, suffix, b) == 0;
}

/* Runs log_struct() on the console target with the message prefix and arg,
 * and returns what reached stderr. */
static char *console_capture(int priority, const char *message_id, const struct log_field *f, size_t n,
                             const char *prefix, const char *arg) {
        FILE *tmp = tmpfile();
        char *out;
        long len;
        int saved;

        assert_non_null(tmp);
        log_open(LOG_TARGET_CONSOLE);
        fflush(stderr);
        saved = dup(STDERR_FILENO);
        assert_true(saved >= 0);
        assert_true(dup2(fileno(tmp), STDERR_FILENO) >= 0);
        log_struct(priority, message_id, f, n, "%s%s", prefix, arg);
        fflush(stderr);
        assert_true(dup2(saved, STDERR_FILENO) >= 0);
        close(saved);
        len = ftell(tmp);
        assert_true(len > 0);
        out = calloc(1, (size_t) len + 1);
        assert_non_null(out);
        rewind(tmp);
        assert_int_equal(fread(out, 1, (size_t) len, tmp), (size_t) len);
        fclose(tmp);
        return out;
}

static char *repeat(const char *unit, size_t times) {
        size_t l = strlen(unit);
        char *s = malloc(l * times + 1);

        assert_non_null(s);
        for (size_t i = 0; i < times; i++)
                memcpy(s + i * l, unit, l);
        s[l * times] = '\0';
        return s;
}

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

/* Issue 10, item 14: a hostile session id and user id (long, full of bytes
 * that need escaping) used to push outcome and the fields after it past the
 * 8 KiB cut of a console line. */
static void test_console_keeps_outcome(void **state) {
        static const char *const keys[] = { "ts",         "level",          "msg",     "message_id",
                                            "session_id", "user_id",        "policy",  "policy_kind",
                                            "age_sec",    "session_status", "outcome", "error" };
        char *sid = repeat("S", 6000), *uid = repeat("\"\n\x01", 3000);
        struct log_field f[] = {
                { "IVH_SESSION_ID", sid },        { "IVH_USER_ID", uid },    { "IVH_POLICY", "p" },
                { "IVH_POLICY_KIND", "max_age" }, { "IVH_AGE_SEC", "7200" }, { "IVH_SESSION_STATUS", "1" },
                { "IVH_OUTCOME", "closed" },      { "IVH_ERROR", "x y" },
        };
        struct kv kv[32];
        char *out, *nl;
        size_t n;

        (void) state;
        out = console_capture(LOG_NOTICE, MESSAGE_ID_RECLAIM, f, ELEMENTSOF(f), "Reclaimed session ", sid);
        /* One line, below the limit with its newline. */
        nl = strchr(out, '\n');
        assert_non_null(nl);
        assert_int_equal(nl[1], '\0');
        assert_true(strlen(out) <= LINE_MAX_BYTES);
        *nl = '\0';

        n = parse_line(out, kv, ELEMENTSOF(kv));
        assert_int_equal(n, ELEMENTSOF(keys));
        for (size_t i = 0; i < n; i++)
                assert_string_equal(kv[i].key, keys[i]);
        assert_string_equal(kv[2].val + strlen(kv[2].val) - strlen(MARK), MARK); /* msg: cut */
        assert_string_equal(kv[3].val, MESSAGE_ID_RECLAIM);
        assert_true(ends_with(kv[4].val, MARK));
        assert_true(ends_with(kv[5].val, MARK));
        assert_int_equal(strncmp(kv[4].val, "SSSS", 4), 0);
        assert_int_equal(strncmp(kv[5].val, "\"\n\x01\"\n\x01", 6), 0);
        /* The short fields are untouched. */
        assert_string_equal(kv[6].val, "p");
        assert_string_equal(kv[7].val, "max_age");
        assert_string_equal(kv[8].val, "7200");
        assert_string_equal(kv[9].val, "1");
        assert_string_equal(kv[10].val, "closed");
        assert_false(kv[10].quoted);
        assert_string_equal(kv[11].val, "x y");
        /* The room goes to the values, not lost: the line is close to full. */
        assert_true(strlen(out) > LINE_MAX_BYTES - 64);
        kv_free(kv, n);
        free(out);
        free(sid);
        free(uid);
}

/* A long msg gives way before any field value is cut. */
static void test_console_msg_cut_first(void **state) {
        char *big = repeat("m", 7000), *uid = repeat("u", 2000);
        struct log_field f[] = { { "IVH_USER_ID", uid }, { "IVH_OUTCOME", "failed" } };
        struct kv kv[8];
        char *out;
        size_t n;

        (void) state;
        out = console_capture(LOG_WARNING, NULL, f, ELEMENTSOF(f), "Closing failed: ", big);
        assert_true(strlen(out) <= LINE_MAX_BYTES);
        out[strlen(out) - 1] = '\0';
        n = parse_line(out, kv, ELEMENTSOF(kv));
        assert_int_equal(n, 5);
        assert_string_equal(kv[2].key, "msg");
        assert_true(ends_with(kv[2].val, MARK));
        assert_int_equal(strncmp(kv[2].val, "Closing failed: mmm", 19), 0);
        assert_string_equal(kv[3].key, "user_id");
        assert_string_equal(kv[3].val, uid); /* whole */
        assert_string_equal(kv[4].key, "outcome");
        assert_string_equal(kv[4].val, "failed");
        kv_free(kv, n);
        free(out);
        free(big);
        free(uid);
}

/* A line that fits is written exactly as before. */
static void test_console_short_line_unchanged(void **state) {
        struct log_field f[] = { { "IVH_USER_ID", "app-crash-1" }, { "IVH_OUTCOME", "closed" } };
        char buf[256];
        size_t n;

        (void) state;
        n = logfmt_line(buf, sizeof buf, "2026-11-21T23:39:15.659Z", LOG_NOTICE, MESSAGE_ID_RECLAIM, f,
                        ELEMENTSOF(f), "Reclaimed it");
        assert_string_equal(buf, "ts=2026-11-21T23:39:15.659Z level=notice msg=\"Reclaimed it\" "
                                 "message_id=99f9654f605e424185666fe382c90fb6 user_id=app-crash-1 "
                                 "outcome=closed");
        assert_int_equal(n, strlen(buf));
}

/* Whatever the sizes and bytes, every key appears, the line fits, values
 * parse back, and a cut value is a prefix of the original that does not end
 * inside a UTF-8 sequence. */
static void test_line_any_size(void **state) {
        static const char *const units[] = {
                "a", "\xc3\xa9", "\"", "\\", "\n", "\x01", "\xe2\x82\xac", "a b"
        };
        static const char *const keys[] = {
                "ts", "level", "msg", "session_id", "user_id", "error", "outcome"
        };
        uint32_t seed = 12345;

        (void) state;
        for (size_t size = 160; size <= 2048; size += 37)
                for (int round = 0; round < 8; round++) {
                        char *vals[4], *buf = malloc(size);
                        struct log_field f[4];
                        struct kv kv[16];
                        size_t n, len;

                        assert_non_null(buf);
                        for (size_t i = 0; i < ELEMENTSOF(vals); i++) {
                                seed = seed * 1103515245u + 12345u;
                                vals[i] = repeat(units[(seed >> 8) % ELEMENTSOF(units)], (seed >> 16) % 900);
                        }
                        f[0] = (struct log_field){ "IVH_SESSION_ID", vals[1] };
                        f[1] = (struct log_field){ "IVH_USER_ID", vals[2] };
                        f[2] = (struct log_field){ "IVH_ERROR", vals[3] };
                        f[3] = (struct log_field){ "IVH_OUTCOME", "closed" };
                        len = logfmt_line(buf, size, "2026-11-21T23:39:15.659Z", LOG_INFO, NULL, f, 4,
                                          vals[0]);
                        assert_true(len < size);
                        assert_int_equal(len, strlen(buf));
                        n = parse_line(buf, kv, ELEMENTSOF(kv));
                        assert_int_equal(n, ELEMENTSOF(keys));
                        for (size_t i = 0; i < n; i++)
                                assert_string_equal(kv[i].key, keys[i]);
                        assert_string_equal(kv[6].val, "closed");
                        for (size_t i = 2; i < 6; i++) {
                                const char *orig = vals[i - 2];
                                size_t l = strlen(kv[i].val);

                                if (strcmp(kv[i].val, orig) == 0)
                                        continue;
                                assert_true(ends_with(kv[i].val, MARK));
                                l -= strlen(MARK);
                                assert_true(l < strlen(orig));
                                assert_memory_equal(kv[i].val, orig, l);
                                /* not inside a UTF-8 sequence */
                                assert_true(((unsigned char) orig[l] & 0xc0) != 0x80);
                        }
                        kv_free(kv, n);
                        for (size_t i = 0; i < ELEMENTSOF(vals); i++)
                                free(vals[i]);
                        free(buf);
                }
}

/* The journal gets every field, however many, each value cut at
 * LOG_FIELD_VALUE_MAX, and a cut MESSAGE says so. */
static void test_journal_keeps_every_field(void **state) {
        char names[40][32], vals[40][16], *big = repeat("\xc3\xa9", 50000);
        struct log_field f[40];
        const char *v;

        (void) state;
        for (size_t i = 0; i < ELEMENTSOF(f); i++) {
                snprintf(names[i], sizeof names[i], "IVH_F%zu", i);
                snprintf(vals[i], sizeof vals[i], "v%zu", i);
                f[i] = (struct log_field){ names[i], vals[i] };
        }
        f[1].value = big;
        f[39] = (struct log_field){ "IVH_OUTCOME", "closed" };

        log_open(LOG_TARGET_JOURNAL);
        log_struct(LOG_NOTICE, MESSAGE_ID_RECLAIM, f, ELEMENTSOF(f), "Session %s", big);
        log_open(LOG_TARGET_CONSOLE);

        assert_int_equal(n_sent, 4 + ELEMENTSOF(f));
        assert_string_equal(journal_get("MESSAGE_ID"), MESSAGE_ID_RECLAIM);
        assert_string_equal(journal_get("PRIORITY"), "5");
        assert_string_equal(journal_get("SYSLOG_IDENTIFIER"), "ivh-reclaimd");
        for (size_t i = 0; i < ELEMENTSOF(f); i++)
                if (i != 1)
                        assert_string_equal(journal_get(f[i].name), f[i].value);
        assert_string_equal(journal_get("IVH_OUTCOME"), "closed");

        v = journal_get("IVH_F1");
        assert_non_null(v);
        assert_true(strlen(v) <= LOG_FIELD_VALUE_MAX);
        assert_true(strlen(v) > LOG_FIELD_VALUE_MAX - 8);
        assert_true(ends_with(v, MARK));
        assert_memory_equal(v, big, strlen(v) - strlen(MARK));
        assert_int_equal(strlen(v) % 2, 1); /* whole "é"s, then the 3-byte mark */

        v = journal_get("MESSAGE");
        assert_non_null(v);
        assert_true(strlen(v) < LINE_MAX_BYTES);
        assert_true(ends_with(v, MARK));
        assert_int_equal(strncmp(v, "Session \xc3\xa9", 10), 0);
        assert_int_equal((strlen(v) - strlen("Session ") - strlen(MARK)) % 2, 0);
        journal_reset();
        free(big);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_quoting),
                cmocka_unit_test(test_truncation),
                cmocka_unit_test(test_targets),
                cmocka_unit_test(test_console_keeps_outcome),
                cmocka_unit_test(test_console_msg_cut_first),
                cmocka_unit_test(test_console_short_line_unchanged),
                cmocka_unit_test(test_line_any_size),
                cmocka_unit_test(test_journal_keeps_every_field),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
