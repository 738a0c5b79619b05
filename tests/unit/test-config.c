#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "config.h"
#include "decide.h"
#include "util.h"

static char path[64];

static int setup(void **state) {
        int fd;

        (void) state;
        strcpy(path, "/tmp/ivh-test-config-XXXXXX");
        fd = mkstemp(path);
        if (fd < 0)
                return -1;
        close(fd);
        return 0;
}

static int teardown(void **state) {
        (void) state;
        unlink(path);
        return 0;
}

/* Loads text; returns the error text (caller frees) or NULL on success. */
static char *load(const char *text, struct config **ret) {
        struct config *c = NULL;
        struct error err = { 0 };
        FILE *f = fopen(path, "w");
        int r;

        assert_non_null(f);
        fputs(text, f);
        fclose(f);
        r = config_load(path, &c, &err);
        if (r < 0) {
                assert_int_equal(r, -EINVAL);
                assert_null(c);
                assert_non_null(err.message);
                return err.message; /* the caller frees it */
        }
        assert_null(err.message);
        if (ret)
                *ret = c;
        else
                config_free(c);
        return NULL;
}

/* Asserts that errors holds "PATH:LINE:COL: ...needle..." */
static void assert_error_at(const char *errors, unsigned line, unsigned col, const char *needle) {
        char prefix[128];

        if (!errors)
                fail_msg("expected an error at %u:%u with '%s', but the file was accepted", line, col,
                         needle);
        snprintf(prefix, sizeof prefix, "%s:%u:%u: ", path, line, col);
        for (const char *p = errors; *p;) {
                const char *eol = strchr(p, '\n'), *hit;
                size_t len = eol ? (size_t) (eol - p) : strlen(p);

                hit = strstr(p, needle);
                if (strncmp(p, prefix, strlen(prefix)) == 0 && hit && hit < p + len)
                        return;
                p += len + (eol ? 1 : 0);
        }
        fail_msg("expected '%s...%s' in:\n%s", prefix, needle, errors);
}

static size_t count_lines(const char *s) {
        size_t n = 0;
        for (; *s; s++)
                n += *s == '\n';
        return n;
}

/* The one account of the single-gateway form, where its gateway.appkey,
 * token file and policies are. */
static const struct config *one(const struct config *c) {
        assert_int_equal(c->n_accounts, 1);
        assert_null(c->accounts[0]->account);
        return c->accounts[0];
}

static void test_example_file_loads(void **state) {
        struct config *c = NULL;
        struct error err = { 0 };

        (void) state;
        assert_int_equal(config_load(IVH_SOURCE_DIR "/config/policy.yaml", &c, &err), 0);
        assert_null(err.message);
        assert_string_equal(c->gateway.url, "https://gw-sg.tvs.qq.com");
        assert_string_equal(one(c)->gateway.appkey, "e38267c0e86411ebb02aed82acb0ed99");
        assert_int_equal(c->gateway.timeout_ms, 10000);
        assert_int_equal(c->gateway.max_parallel, 16);
        assert_int_equal(c->poll_interval_ms, 30000);
        assert_true(c->dry_run); /* the shipped file starts in dry-run mode */
        assert_int_equal(c->max_closes_per_cycle, 100);
        assert_int_equal(c->protect_user_ids.n, 1);
        assert_string_equal(c->protect_user_ids.items[0], "vip-*");
        assert_int_equal(one(c)->n_policies, 3);
        assert_string_equal(one(c)->policies[0].name, "failed-streams");
        assert_int_equal(one(c)->policies[0].kind, POLICY_FAILED);
        assert_int_equal(one(c)->policies[0].after_ms, 60000);
        assert_int_equal(one(c)->policies[1].kind, POLICY_NOT_STARTED);
        assert_int_equal(one(c)->policies[2].kind, POLICY_MAX_AGE);
        assert_int_equal(one(c)->policies[2].after_ms, 7200000);
        assert_string_equal(one(c)->policies[2].user_ids.items[0], "booth-*");
        config_free(c);
}

static void test_minimal_defaults(void **state) {
        struct config *c = NULL;

        (void) state;
        assert_null(load("gateway:\n  appkey: k\npolicies: []\n", &c));
        assert_string_equal(c->gateway.url, CONFIG_DEFAULT_URL);
        assert_string_equal(c->state_file, CONFIG_DEFAULT_STATE_FILE);
        assert_null(one(c)->gateway.accesstoken_file);
        assert_null(c->gateway.ca_file);
        assert_int_equal(one(c)->n_policies, 0);
        config_free(c);

        assert_null(load("gateway: {appkey: k, url: 'http://127.0.0.1:8080/', ca_file: ~}\n"
                         "poll_interval: 1h30m\ndry_run: yes\nprotect:\npolicies:\n"
                         "  - {name: a, kind: failed, after: 0s}\n",
                         &c));
        assert_string_equal(c->gateway.url, "http://127.0.0.1:8080");
        assert_int_equal(c->poll_interval_ms, 5400000);
        assert_true(c->dry_run);
        config_free(c);
}

static void test_syntax_error_position(void **state) {
        char *e;

        (void) state;
        e = load("gateway:\n  appkey: k\npolicies:\n  - name: a\n   kind: failed\n", NULL);
        assert_error_at(e, 5, 4, "YAML syntax error: did not find expected '-' indicator");
        free(e);

        e = load("gateway: {appkey: k\n", NULL);
        assert_non_null(strstr(e, "YAML syntax error"));
        free(e);
}

static void test_unknown_key_suggestion(void **state) {
        char *e;

        (void) state;
        e = load("gateway:\n  appkey: k\n  max_paralel: 4\npoll_intervall: 30s\npolicies:\n"
                 "  - name: a\n    kind: failed\n    afterr: 1m\n    user_id: [x]\n",
                 NULL);
        assert_error_at(e, 3, 3, "unknown key 'max_paralel', did you mean 'max_parallel'?");
        assert_error_at(e, 4, 1, "unknown key 'poll_intervall', did you mean 'poll_interval'?");
        assert_error_at(e, 8, 5, "did you mean 'after'?");
        assert_error_at(e, 9, 5, "did you mean 'user_ids'?");
        /* after is then missing, reported at the policy's mapping */
        assert_error_at(e, 6, 5, "missing required key 'after'");
        free(e);

        e = load("gateway:\n  appkey: k\nzzzzzz: 1\npolicies: []\n", NULL);
        assert_error_at(e, 3, 1, "unknown key 'zzzzzz' (valid keys: gateway, poll_interval");
        free(e);
}

static void test_wrong_types(void **state) {
        char *e;

        (void) state;
        e = load("gateway:\n"
                 "  appkey: [k]\n"
                 "  timeout: 10\n"
                 "  max_parallel: '16'\n"
                 "poll_interval: soon\n"
                 "dry_run: maybe\n"
                 "max_closes_per_cycle: -1\n"
                 "protect:\n"
                 "  user_ids: vip-*\n"
                 "policies:\n"
                 "  - name: a\n"
                 "    kind: forever\n"
                 "    after: 1m\n"
                 "  - just a string\n",
                 NULL);
        assert_error_at(e, 2, 11, "gateway.appkey: expected a string, got a list");
        assert_error_at(e, 3, 12, "gateway.timeout: invalid duration '10': missing unit");
        assert_error_at(e, 4, 17, "gateway.max_parallel: expected a whole number, got a quoted string");
        assert_error_at(e, 5, 16, "poll_interval: invalid duration 'soon'");
        assert_error_at(e, 6, 10, "dry_run: expected true or false, got 'maybe'");
        assert_error_at(e, 7, 23,
                        "max_closes_per_cycle: expected a whole number from 1 to 1000000, got '-1'");
        assert_error_at(e, 9, 13, "protect.user_ids: expected a list of glob patterns");
        assert_error_at(e, 12, 11,
                        "policies[0].kind: expected one of failed, not_started, max_age, over_capacity, got "
                        "'forever'");
        assert_error_at(e, 14, 5, "policies[1]: expected a mapping, got a scalar");
        /* Every error is collected, one per line. */
        assert_int_equal(count_lines(e), 9);
        free(e);
}

static void test_rules(void **state) {
        char *e;

        (void) state;
        e = load("gateway:\n  url: http://gw.example.com\n  appkey: k\n  max_parallel: 0\n"
                 "poll_interval: 5ms\npolicies:\n"
                 "  - {name: a, kind: failed, after: 1m}\n"
                 "  - {name: a, kind: max_age, after: 1m}\n"
                 "  - {name: keep, kind: max_age, after: 1m}\n"
                 "  - {name: 'a b', kind: max_age, after: 1m}\n",
                 NULL);
        assert_error_at(e, 2, 8, "plain http is refused for non-loopback host 'gw.example.com'");
        assert_error_at(e, 4, 17, "must be from 1 to 256, got 0");
        assert_error_at(e, 5, 16, "poll_interval: must be at least 10ms");
        assert_error_at(e, 8, 5, "policy name 'a' is already used by policies[0]");
        assert_error_at(e, 9, 12, "'keep' is reserved");
        assert_error_at(e, 10, 12, "may contain only letters");
        free(e);

        e = load("gateway:\n  appkey: k\n  appkey: j\npolicies: []\n", NULL);
        assert_error_at(e, 3, 3, "duplicate key 'appkey'");
        free(e);

        e = load("gateway:\n  url: ftp://127.0.0.1\n  appkey: k\npolicies: []\n", NULL);
        assert_error_at(e, 2, 8, "scheme must be https");
        free(e);
}

static void test_over_capacity(void **state) {
        struct config *c = NULL;
        char *e;

        (void) state;
        assert_null(load("gateway: {appkey: k}\npolicies:\n"
                         "  - {name: kiosks, kind: over_capacity, capacity: 20, keep_free: 2, user_ids: "
                         "[\"kiosk-*\"]}\n",
                         &c));
        assert_int_equal(one(c)->policies[0].kind, POLICY_OVER_CAPACITY);
        assert_int_equal(one(c)->policies[0].capacity, 20);
        assert_int_equal(one(c)->policies[0].keep_free, 2);
        assert_int_equal(one(c)->policies[0].after_ms, 0); /* optional for this kind */
        config_free(c);

        e = load("gateway: {appkey: k}\npolicies:\n"
                 "  - {name: a, kind: over_capacity, keep_free: 2}\n"
                 "  - {name: b, kind: over_capacity, capacity: 5, keep_free: 5}\n"
                 "  - {name: c, kind: failed, after: 1m, capacity: 5}\n",
                 NULL);
        assert_error_at(e, 3, 5, "policies[0]: missing required key 'capacity'");
        assert_error_at(e, 4, 5, "keep_free (5) must be less than capacity (5)");
        assert_error_at(e, 5, 5, "capacity and keep_free apply only to kind over_capacity");
        free(e);
}

static void test_accounts(void **state) {
        struct config *c = NULL;
        char *e;

        (void) state;
        assert_null(load("gateway: {timeout: 5s, url: 'http://127.0.0.1:1'}\npoll_interval: 1m\n"
                         "state_file: /var/lib/x/state.json\nprotect: {user_ids: [vip-*]}\naccounts:\n"
                         "  - name: prod\n    appkey: k1\n    project_ids: [p1]\n"
                         "    protect: {session_ids: [pinned]}\n"
                         "    policies: [{name: a, kind: failed, after: 0s}]\n"
                         "  - name: staging\n    appkey: k2\n    url: 'http://127.0.0.2:2'\n"
                         "    policies: []\n",
                         &c));
        assert_int_equal(c->n_accounts, 2);
        assert_int_equal(c->n_policies, 0);
        assert_string_equal(c->accounts[0]->account, "prod");
        assert_string_equal(config_account_name(c->accounts[1]), "staging");
        assert_string_equal(config_account_name(c), "default");
        assert_string_equal(c->accounts[0]->gateway.appkey, "k1");
        assert_string_equal(c->accounts[0]->gateway.url, "http://127.0.0.1:1"); /* inherited */
        assert_string_equal(c->accounts[1]->gateway.url, "http://127.0.0.2:2");
        assert_int_equal(c->accounts[0]->gateway.timeout_ms, 5000);
        assert_int_equal(c->accounts[1]->poll_interval_ms, 60000);
        assert_string_equal(c->accounts[0]->state_file, "/var/lib/x/state.prod.json");
        assert_int_equal(c->accounts[0]->protect_user_ids.n, 1);    /* global ... */
        assert_int_equal(c->accounts[0]->protect_session_ids.n, 1); /* ... and its own */
        assert_int_equal(c->accounts[1]->protect_session_ids.n, 0);
        assert_int_equal(c->accounts[0]->gateway.project_ids.n, 1);
        assert_int_equal(c->accounts[0]->n_policies, 1);
        config_free(c);

        e = load("gateway: {appkey: k}\npolicies: []\naccounts:\n"
                 "  - {name: a, appkey: k, policies: []}\n"
                 "  - {name: a, policies: []}\n"
                 "  - {name: 'b c', appkey: k, policies: [], colour: red}\n",
                 NULL);
        assert_error_at(e, 1, 1, "'policies' belongs in each account");
        assert_error_at(e, 1, 19, "gateway.appkey: belongs in each account");
        assert_error_at(e, 5, 5, "account name 'a' is already used by accounts[0]");
        assert_error_at(e, 5, 5, "missing required key 'appkey'");
        assert_error_at(e, 6, 12, "may contain only letters, digits, '-' and '_'");
        assert_error_at(e, 6, 44, "unknown key 'colour'");
        free(e);

        e = load("accounts: []\n", NULL);
        assert_error_at(e, 1, 11, "accounts: expected at least one account");
        free(e);
}

static void test_missing_and_empty(void **state) {
        char *e;

        (void) state;
        e = load("", NULL);
        assert_error_at(e, 1, 1, "the file is empty");
        free(e);

        e = load("poll_interval: 30s\n", NULL);
        assert_error_at(e, 1, 1, "missing required key 'gateway'");
        assert_error_at(e, 1, 1, "missing required key 'policies'");
        free(e);

        e = load("gateway:\n  url: https://x\npolicies: []\n", NULL);
        assert_error_at(e, 2, 3, "gateway: missing required key 'appkey'");
        free(e);

        e = load("- a\n- b\n", NULL);
        assert_error_at(e, 1, 1, "top level: expected a mapping, got a list");
        free(e);

        e = load("gateway:\n  appkey: k\npolicies: []\n---\nfoo: 1\n", NULL);
        assert_error_at(e, 5, 1, "only one YAML document");
        free(e);
}

static void test_unreadable(void **state) {
        struct config *c = NULL;
        struct error err = { 0 };

        (void) state;
        assert_int_equal(config_load("/nonexistent/policy.yaml", &c, &err), -ENOENT);
        assert_non_null(strstr(error_message(&err), "/nonexistent/policy.yaml: cannot read configuration"));
        error_done(&err);
}

static void test_junk(void **state) {
        /* Nothing here may crash or leak; each must be refused. */
        static const char *const junk[] = {
                "\x00\x01\x02",
                "{{{{",
                "[",
                "&a [*a]",
                "gateway: *x",
                "!!binary AAAA",
                "gateway:\n  appkey: !!int k\npolicies: [ {name: [], kind: {}, after: []} ]\n",
                "gateway: &g {appkey: k}\npolicies: [*g]\n",
                "\xef\xbb\xbf:\n",
                "? [a]\n: b\n",
                "gateway:\n  appkey: \"\\xff\"\npolicies: 7\n",
        };

        (void) state;
        for (size_t i = 0; i < ELEMENTSOF(junk); i++) {
                char *e = load(junk[i], NULL);
                if (!e)
                        fail_msg("accepted junk case %zu", i);
                free(e);
        }
}

/* Globs that would not mean what they seem (red team, issue 10). */
static void test_doubtful_globs(void **state) {
        char *e;

        (void) state;
        e = load("gateway: {appkey: k}\nprotect: {user_ids: [\"vip-[abc\"]}\npolicies: []\n", NULL);
        assert_non_null(e);
        assert_error_at(e, 2, 22, "protect.user_ids: pattern \"vip-[abc\" has a '[' without a matching ']'");
        free(e);
        e = load("gateway: {appkey: k}\nprotect: {user_ids: [\"vip-\\0*\"]}\npolicies: []\n", NULL);
        assert_non_null(e);
        assert_error_at(e, 2, 22, "protect.user_ids: a pattern may not contain a NUL character");
        free(e);
        /* Balanced and escaped brackets are fine. */
        e = load("gateway: {appkey: k}\nprotect: {user_ids: [\"vip-[abc]*\", \"[[]x\", \"a\\\\[\", "
                 "\"[]]\"]}\n"
                 "policies: []\n",
                 NULL);
        assert_null(e);
}

static void test_empty_selector(void **state) {
        static const char *const empty[] = { "[]", "", "~", "null" };
        struct config *c = NULL;
        char text[512], *e;

        (void) state;
        for (size_t i = 0; i < ELEMENTSOF(empty); i++) {
                snprintf(text, sizeof text,
                         "gateway: {appkey: k}\npolicies:\n"
                         "  - name: booth\n    kind: max_age\n    after: 2h\n    user_ids: %s\n"
                         "  - {name: kiosks, kind: over_capacity, capacity: 9, user_ids: %s}\n",
                         empty[i], empty[i]);
                e = load(text, NULL);
                assert_non_null(e);
                assert_error_at(e, 6, *empty[i] ? 15 : 14, "policies[0].user_ids: is ");
                assert_error_at(e, 6, *empty[i] ? 15 : 14, "omit user_ids to match every user");
                assert_error_at(e, 7, 64, "policies[1].user_ids: ");
                assert_error_at(e, 7, 64, "omit user_ids to match every user");
                assert_int_equal(count_lines(e), 2);
                free(e);
        }

        e = load("gateway: {url: 'http://127.0.0.1:1'}\naccounts:\n"
                 "  - {name: a, appkey: k, policies: [{name: p, kind: failed, after: 1m, user_ids: []}]}\n",
                 NULL);
        assert_error_at(
                e, 3, 82,
                "policies[0].user_ids: is an empty list, which would select every user; omit user_ids to "
                "match every user");
        free(e);

        /* Empty protect lists protect nothing, which is safe. */
        assert_null(load("gateway: {appkey: k}\nprotect: {user_ids: [], session_ids: ~}\n"
                         "policies: [{name: a, kind: failed, after: 1m, user_ids: [x]}]\n",
                         &c));
        assert_int_equal(c->protect_user_ids.n, 0);
        assert_int_equal(one(c)->policies[0].user_ids.n, 1);
        config_free(c);
}

/* Builds a string with printf-like pieces; the caller frees it. */
static char *build(size_t cap) {
        char *s = malloc(cap);
        assert_non_null(s);
        s[0] = '\0';
        return s;
}

/* Each must be refused quickly, with the bound named at FILE:LINE:COL. */
static void test_hostile_sizes(void **state) {
        size_t n, off;
        char *text, *e;

        (void) state;
        /* 150,000 nested '[': libyaml's scanner is quadratic in flow nesting. */
        n = 150000;
        text = build(2 * n + 64);
        off = (size_t) sprintf(text, "gateway: {appkey: k}\npolicies: ");
        memset(text + off, '[', n);
        memset(text + off + n, ']', n);
        strcpy(text + off + 2 * n, "\n");
        e = load(text, NULL);
        assert_error_at(e, 2, 42, "nesting deeper than 32 levels");
        assert_int_equal(count_lines(e), 1);
        free(e);
        free(text);

        /* 90,000 keys: the duplicate-key check compared every pair. */
        text = build(1024 * 1024);
        off = (size_t) sprintf(text, "gateway: {appkey: k}\npolicies: []\n");
        for (size_t i = 0; i < 90000; i++)
                off += (size_t) sprintf(text + off, "k%zu: 1\n", i);
        e = load(text, NULL);
        assert_error_at(e, 24999, 9, "more than 50000 nodes");
        assert_int_equal(count_lines(e), 1);
        free(e);

        /* 20,000 keys, under the node limit: each is an error, but the report
         * stops after 100 of them. */
        off = (size_t) sprintf(text, "gateway: {appkey: k}\npolicies: []\n");
        for (size_t i = 0; i < 20000; i++)
                off += (size_t) sprintf(text + off, "k%zu: 1\n", i % 10000);
        e = load(text, NULL);
        assert_error_at(e, 3, 1, "top level: unknown key 'k0' (valid keys: gateway");
        assert_error_at(e, 103, 1, "more than 100 errors; the rest are not reported");
        assert_int_equal(count_lines(e), 101);
        free(e);

        /* 4,000 aliases of a policy with a wide selector (1 GB before). */
        off = (size_t) sprintf(text,
                               "gateway: {appkey: k}\nx: &p {name: a, kind: failed, after: 1m, user_ids: [");
        for (size_t i = 0; i < 200; i++)
                off += (size_t) sprintf(text + off, "%su%zu", i ? ", " : "", i);
        off += (size_t) sprintf(text + off, "]}\npolicies: [");
        for (size_t i = 0; i < 4000; i++)
                off += (size_t) sprintf(text + off, "%s*p", i ? ", " : "");
        strcpy(text + off, "]\n");
        e = load(text, NULL);
        assert_error_at(e, 3, 412, "more than 100 aliases");
        free(e);

        /* Billion laughs: ten references to the level before, eleven times. */
        off = (size_t) sprintf(
                text, "gateway: {appkey: k}\nl0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
        for (size_t i = 1; i <= 11; i++) {
                off += (size_t) sprintf(text + off, "l%zu: &l%zu [", i, i);
                for (size_t j = 0; j < 10; j++)
                        off += (size_t) sprintf(text + off, "%s*l%zu", j ? ", " : "", i - 1);
                off += (size_t) sprintf(text + off, "]\n");
        }
        strcpy(text + off, "policies: [{name: a, kind: failed, after: 1m, user_ids: *l11}]\n");
        e = load(text, NULL);
        assert_error_at(e, 13, 12, "more than 100 aliases");
        free(e);

        /* Under the alias limit, 30 accounts share one list of 30 policies
         * that share one selector of 2,000 patterns: 1.8 million copies. */
        off = (size_t) sprintf(
                text, "gateway: {timeout: 5s}\naccounts:\n  - {name: a0, appkey: k, policies: &p [");
        for (size_t i = 0; i < 30; i++) {
                off += (size_t) sprintf(
                        text + off, "%s{name: p%zu, kind: failed, after: 1m, user_ids: ", i ? ", " : "", i);
                if (i == 0) {
                        off += (size_t) sprintf(text + off, "&u [");
                        for (size_t j = 0; j < 2000; j++)
                                off += (size_t) sprintf(text + off, "%su%zu", j ? ", " : "", j);
                        off += (size_t) sprintf(text + off, "]}");
                } else
                        off += (size_t) sprintf(text + off, "*u}");
        }
        off += (size_t) sprintf(text + off, "]}\n");
        for (size_t i = 1; i < 30; i++)
                off += (size_t) sprintf(text + off, "  - {name: a%zu, appkey: k, policies: *p}\n", i);
        e = load(text, NULL);
        assert_non_null(strstr(e, "more than 100000 nodes after expanding aliases"));
        assert_int_equal(count_lines(e), 1);
        free(e);

        /* A global protect list copied into every one of 1,000 accounts. */
        off = (size_t) sprintf(text, "gateway: {timeout: 5s}\nprotect:\n  session_ids: [");
        for (size_t i = 0; i < 20000; i++)
                off += (size_t) sprintf(text + off, "%ss%zu", i ? "," : "", i);
        off += (size_t) sprintf(text + off, "]\naccounts:\n");
        for (size_t i = 0; i < 1000; i++)
                off += (size_t) sprintf(text + off, "  - {name: a%zu, appkey: k, policies: []}\n", i);
        e = load(text, NULL);
        assert_non_null(strstr(e, "copying protect lists into accounts"));
        assert_int_equal(count_lines(e), 1);
        free(e);

        /* Anchors: libyaml compares each new one with all earlier ones. */
        off = (size_t) sprintf(text, "gateway: {appkey: k}\npolicies: []\nprotect: {session_ids: [");
        for (size_t i = 0; i < 60000; i++)
                off += (size_t) sprintf(text + off, "%s&a%zu s", i ? "," : "", i);
        strcpy(text + off, "]}\n");
        e = load(text, NULL);
        assert_error_at(e, 3, 715, "more than 100 anchors");
        free(e);

        /* Directives, likewise, before the document even starts. */
        off = 0;
        for (size_t i = 0; i < 60000; i++)
                off += (size_t) sprintf(text + off, "%%TAG !%zu! t:\n", i);
        strcpy(text + off, "---\ngateway: {appkey: k}\npolicies: []\n");
        e = load(text, NULL);
        assert_error_at(e, 17, 1, "more than 16 directives");
        free(e);

        /* One project id 40,000 times: one error per earlier copy, so the
         * report is cut at 100 (it was 800 million lines). */
        off = (size_t) sprintf(text, "gateway: {appkey: k, project_ids: [");
        for (size_t i = 0; i < 40000; i++)
                off += (size_t) sprintf(text + off, "%sp", i ? "," : "");
        strcpy(text + off, "]}\npolicies: []\n");
        e = load(text, NULL);
        assert_error_at(e, 1, 35, "gateway.project_ids: 'p' is listed twice");
        assert_error_at(e, 1, 35, "more than 100 errors");
        assert_int_equal(count_lines(e), 101);
        free(e);

        /* 7,000 policies of one name: each pair was an error (8 s, 2 GB). */
        off = (size_t) sprintf(text, "gateway: {appkey: k}\npolicies:\n");
        for (size_t i = 0; i < 7000; i++)
                off += (size_t) sprintf(text + off, "  - {name: a, kind: failed, after: 1m}\n");
        e = load(text, NULL);
        assert_error_at(e, 4, 5, "policies[1]: policy name 'a' is already used by policies[0]");
        assert_non_null(strstr(e, "more than 100 errors"));
        assert_int_equal(count_lines(e), 101);
        free(e);
        free(text);
}

/* Within the bounds, duplicates are reported exactly as before: one error
 * for each earlier copy, in order. */
static void test_duplicates(void **state) {
        char *e;

        (void) state;
        e = load("gateway: {appkey: k, project_ids: [a, b, a, a]}\npolicies:\n"
                 "  - {name: x, kind: failed, after: 1m}\n"
                 "  - {name: x, kind: failed, after: 1m}\n"
                 "  - {name: y, kind: failed, after: 1m}\n"
                 "  - {name: x, kind: failed, after: 1m}\n"
                 "dry_run: true\ndry_run: false\n",
                 NULL);
        assert_string_equal(strchr(e, ' '), strstr(e, " gateway.project_ids: 'a' is listed twice"));
        assert_error_at(e, 4, 5, "policies[1]: policy name 'x' is already used by policies[0]");
        assert_error_at(e, 6, 5, "policies[3]: policy name 'x' is already used by policies[0]");
        assert_error_at(e, 6, 5, "policies[3]: policy name 'x' is already used by policies[1]");
        assert_error_at(e, 8, 1, "top level: duplicate key 'dry_run'");
        assert_int_equal(count_lines(e), 7); /* three for the project ids */
        free(e);
}

/* In the accounts: form, state_file names each account's file and is
 * checked itself, as in the single form. */
static void test_accounts_state_file_is_checked(void **state) {
        char text[1024], *e;

        (void) state;
        snprintf(text, sizeof text,
                 "gateway: {url: 'http://127.0.0.1:1'}\nstate_file: %s\n"
                 "accounts:\n  - {name: a, appkey: k, policies: []}\n",
                 path);
        e = load(text, NULL);
        assert_error_at(e, 2, 1, "state_file: '");
        assert_error_at(e, 2, 1, "is the same file as the policy file");
        free(e);
}

static void test_metrics_file(void **state) {
        struct config *c = NULL;
        char text[1024], dir[] = "/tmp/ivh-test-metrics-XXXXXX", *e;

        (void) state;
        assert_non_null(mkdtemp(dir));

        /* The state file, written another way (it need not exist). */
        snprintf(text, sizeof text,
                 "gateway: {appkey: k}\npolicies: []\nstate_file: %s/state.json\nmetrics_file: "
                 "%s/./state.json\n",
                 dir, dir);
        e = load(text, NULL);
        assert_error_at(e, 4, 1, "metrics_file: ");
        assert_error_at(e, 4, 1, "is the same file as state_file");
        free(e);

        /* The policy file itself. */
        snprintf(text, sizeof text, "gateway: {appkey: k}\nmetrics_file: %s\npolicies: []\n", path);
        e = load(text, NULL);
        assert_error_at(e, 2, 1, "is the same file as the policy file");
        free(e);

        /* The state file of an account. */
        snprintf(text, sizeof text,
                 "gateway: {url: 'http://127.0.0.1:1'}\nstate_file: %s/state.json\nmetrics_file: "
                 "%s/state.b.json\n"
                 "accounts:\n  - {name: a, appkey: k, policies: []}\n  - {name: b, appkey: k, policies: "
                 "[]}\n",
                 dir, dir);
        e = load(text, NULL);
        assert_error_at(e, 3, 1, "is the same file as the state file of accounts[1]");
        assert_int_equal(count_lines(e), 1);
        free(e);

        snprintf(text, sizeof text,
                 "gateway: {appkey: k}\npolicies: []\nstate_file: %s/state.json\nmetrics_file: %s/m.prom\n",
                 dir, dir);
        assert_null(load(text, &c));
        config_free(c);
        rmdir(dir);
}

/* The words --plan prints in its DECISION column cannot be policy names; a
 * name refused for a NUL is still checked up to it (as it always was); the
 * restart check knows an account by its shown name. */
static void test_plan_words_nul_prefixes_and_restart(void **state) {
        struct config *a = NULL, *b = NULL;
        char *e;

        (void) state;
        e = load("gateway: {url: 'http://127.0.0.1:9', appkey: \"a b\\0c\"}\npolicies:\n"
                 "  - {name: fused, kind: failed, after: 1m}\n"
                 "  - {name: deferred, kind: failed, after: 1m}\n"
                 "  - {name: backing_off, kind: failed, after: 1m}\n"
                 "  - {name: \"keep\\0x\", kind: failed, after: 1m}\n",
                 NULL);
        assert_error_at(e, 1, 46, "gateway.appkey: must not contain a NUL character");
        assert_error_at(e, 1, 46, "gateway.appkey: may contain only letters");
        assert_error_at(e, 3, 12, "'fused' is reserved");
        assert_error_at(e, 4, 12, "'deferred' is reserved");
        assert_error_at(e, 5, 12, "'backing_off' is reserved");
        assert_error_at(e, 6, 12, "must not contain a NUL character");
        assert_error_at(e, 6, 12, "'keep' is reserved");
        free(e);

        assert_null(load("gateway: {url: 'http://127.0.0.1:9', appkey: k}\nstate_file: /tmp/s.default.json\n"
                         "policies: [{name: f, kind: failed, after: 1m}]\n",
                         &a));
        assert_null(load(
                "gateway: {url: 'http://127.0.0.1:9'}\nstate_file: /tmp/s.json\n"
                "accounts: [{name: default, appkey: k, policies: [{name: f, kind: failed, after: 1m}]}]\n",
                &b));
        assert_int_equal(b->n_accounts, 1);
        assert_null(config_restart_needed(a, b->accounts[0]));
        assert_string_equal(b->accounts[0]->state_file, "/tmp/s.default.json");
        free(b->accounts[0]->account);
        b->accounts[0]->account = strdup("prod");
        assert_string_equal(config_restart_needed(a, b->accounts[0]), "name");
        config_free(a);
        config_free(b);
}

/* The words config.c reserves are the outcomes --plan prints (decide.c):
 * every outcome but close and sent, so a new outcome is caught here. */
static void test_plan_words_are_decide_outcomes(void **state) {
        (void) state;
        for (int o = 0; o < DECIDE_OUTCOMES; o++)
                assert_int_equal(config_is_plan_word(decide_outcome_to_string((enum decide_outcome) o)),
                                 o != DECIDE_CLOSE && o != DECIDE_SENT);
        assert_false(config_is_plan_word("failed-streams"));
}

static void test_loopback_hosts(void **state) {
        (void) state;
        assert_true(config_host_is_loopback("localhost"));
        assert_true(config_host_is_loopback("127.0.0.1"));
        assert_true(config_host_is_loopback("127.3.2.1"));
        assert_true(config_host_is_loopback("[::1]"));
        assert_false(config_host_is_loopback("128.0.0.1"));
        assert_false(config_host_is_loopback("127.0.0.1.example.com"));
        assert_false(config_host_is_loopback("[::2]"));
        assert_false(config_host_is_loopback(NULL));
}

/* A misspelt kind gets a "did you mean", as a misspelt key does. */
static void test_kind_did_you_mean(void **state) {
        char *e;

        (void) state;
        e = load("gateway: {appkey: k}\n"
                 "policies:\n"
                 "  - {name: oops, kind: faild, after: 5m}\n",
                 NULL);
        assert_error_at(e, 3, 24,
                        "policies[0].kind: expected one of failed, not_started, max_age, over_capacity, got "
                        "'faild', did you mean 'failed'?");
        free(e);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_example_file_loads),
                cmocka_unit_test_setup_teardown(test_kind_did_you_mean, setup, teardown),
                cmocka_unit_test_setup_teardown(test_minimal_defaults, setup, teardown),
                cmocka_unit_test_setup_teardown(test_syntax_error_position, setup, teardown),
                cmocka_unit_test_setup_teardown(test_unknown_key_suggestion, setup, teardown),
                cmocka_unit_test_setup_teardown(test_wrong_types, setup, teardown),
                cmocka_unit_test_setup_teardown(test_rules, setup, teardown),
                cmocka_unit_test_setup_teardown(test_over_capacity, setup, teardown),
                cmocka_unit_test_setup_teardown(test_accounts, setup, teardown),
                cmocka_unit_test_setup_teardown(test_missing_and_empty, setup, teardown),
                cmocka_unit_test(test_unreadable),
                cmocka_unit_test_setup_teardown(test_junk, setup, teardown),
                cmocka_unit_test_setup_teardown(test_empty_selector, setup, teardown),
                cmocka_unit_test_setup_teardown(test_doubtful_globs, setup, teardown),
                cmocka_unit_test_setup_teardown(test_hostile_sizes, setup, teardown),
                cmocka_unit_test_setup_teardown(test_duplicates, setup, teardown),
                cmocka_unit_test_setup_teardown(test_metrics_file, setup, teardown),
                cmocka_unit_test_setup_teardown(test_accounts_state_file_is_checked, setup, teardown),
                cmocka_unit_test_setup_teardown(test_plan_words_nul_prefixes_and_restart, setup, teardown),
                cmocka_unit_test(test_plan_words_are_decide_outcomes),
                cmocka_unit_test(test_loopback_hosts),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
