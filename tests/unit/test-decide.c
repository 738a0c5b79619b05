/* The decide step: one decision per session, and the order in which the
 * fuses see them. Table-driven: each case is a list, a configuration and the
 * outcome expected for every session. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "decide.h"
#include "util.h"

#define MIN (60 * 1000ULL)

static char *vip[] = { "vip-*" };

static struct policy timer_policies[] = {
        { .name = "failed", .kind = POLICY_FAILED, .after_ms = 1 * MIN },
        { .name = "never-started", .kind = POLICY_NOT_STARTED, .after_ms = 10 * MIN },
};

static struct policy with_capacity[] = {
        { .name = "failed", .kind = POLICY_FAILED, .after_ms = 1 * MIN },
        { .name = "cap", .kind = POLICY_OVER_CAPACITY, .capacity = 4, .keep_free = 0 },
};

struct entry {
        const char *id, *user;
        int status;
        enum tristate started;
        uint64_t age_ms;
        enum decide_outcome expect;
        const char *policy; /* the policy named in the row, or NULL */
};

struct scenario {
        const char *name;
        struct policy *policies;
        size_t n_policies;
        double max_share;
        unsigned min_sessions, max_closes;
        const char *backing_off; /* a session id that failed a moment ago, or NULL */
        const struct entry *entries;
        size_t n_entries;
        const char *const *closes; /* the closes of the cycle, in order */
        size_t n_closes;
};

/* Arrays and their lengths, counted by the compiler. */
#define POLICIES(a) .policies = (a), .n_policies = ELEMENTSOF(a)
#define ENTRIES(...)                                      \
        .entries = (const struct entry[]){ __VA_ARGS__ }, \
        .n_entries = ELEMENTSOF(((const struct entry[]){ __VA_ARGS__ }))
#define CLOSES(...)                                     \
        .closes = (const char *const[]){ __VA_ARGS__ }, \
        .n_closes = ELEMENTSOF(((const char *const[]){ __VA_ARGS__ }))

static const struct scenario scenarios[] = {
        { .name = "timer policies, protect wins, young sessions kept",
          POLICIES(timer_policies),
          .max_share = 0.5,
          .min_sessions = 10,
          .max_closes = 100,
          ENTRIES({ .id = "a",
                    .user = "u1",
                    .status = 4,
                    .started = TRISTATE_TRUE,
                    .age_ms = 2 * MIN,
                    .expect = DECIDE_CLOSE,
                    .policy = "failed" },
                  { .id = "b",
                    .user = "vip-1",
                    .status = 4,
                    .started = TRISTATE_TRUE,
                    .age_ms = 2 * MIN,
                    .expect = DECIDE_PROTECTED,
                    .policy = "failed" },
                  { .id = "c",
                    .user = "u2",
                    .status = 1,
                    .started = TRISTATE_FALSE,
                    .age_ms = 1 * MIN,
                    .expect = DECIDE_KEEP,
                    .policy = "never-started" },
                  { .id = "d",
                    .user = "u3",
                    .status = 1,
                    .started = TRISTATE_TRUE,
                    .age_ms = 99 * MIN,
                    .expect = DECIDE_KEEP }),
          CLOSES("a") },
        /* Over the share: no due live session is closed; a failed stream
         * (status 4, not live) still is. */
        { .name = "the share fuse holds the live ones only",
          POLICIES(timer_policies),
          .max_share = 0.5,
          .max_closes = 100,
          ENTRIES({ .id = "f",
                    .user = "u",
                    .status = 4,
                    .started = TRISTATE_TRUE,
                    .age_ms = 2 * MIN,
                    .expect = DECIDE_CLOSE,
                    .policy = "failed" },
                  { .id = "n1",
                    .user = "u",
                    .status = 1,
                    .started = TRISTATE_FALSE,
                    .age_ms = 11 * MIN,
                    .expect = DECIDE_FUSED,
                    .policy = "never-started" },
                  { .id = "n2",
                    .user = "u",
                    .status = 3,
                    .started = TRISTATE_FALSE,
                    .age_ms = 11 * MIN,
                    .expect = DECIDE_FUSED,
                    .policy = "never-started" },
                  { .id = "live",
                    .user = "u",
                    .status = 1,
                    .started = TRISTATE_TRUE,
                    .age_ms = 1 * MIN,
                    .expect = DECIDE_KEEP }),
          CLOSES("f") },
        /* The fuse comes before the backoff: a session backing off still
         * counts as due for the share. */
        { .name = "the fuse sees sessions that back off",
          POLICIES(timer_policies),
          .max_share = 0.5,
          .max_closes = 100,
          .backing_off = "n1",
          ENTRIES({ .id = "n1",
                    .user = "u",
                    .status = 1,
                    .started = TRISTATE_FALSE,
                    .age_ms = 11 * MIN,
                    .expect = DECIDE_FUSED,
                    .policy = "never-started" },
                  { .id = "n2",
                    .user = "u",
                    .status = 1,
                    .started = TRISTATE_FALSE,
                    .age_ms = 11 * MIN,
                    .expect = DECIDE_FUSED,
                    .policy = "never-started" },
                  { .id = "live",
                    .user = "u",
                    .status = 1,
                    .started = TRISTATE_TRUE,
                    .age_ms = 1 * MIN,
                    .expect = DECIDE_KEEP }) },
        /* The backoff comes before max_closes_per_cycle: a session backing
         * off takes no place among the oldest. */
        { .name = "backoff before max_closes_per_cycle",
          POLICIES(timer_policies),
          .max_share = 1.0,
          .max_closes = 2,
          .backing_off = "old",
          ENTRIES({ .id = "old",
                    .user = "u",
                    .status = 4,
                    .started = TRISTATE_TRUE,
                    .age_ms = 50 * MIN,
                    .expect = DECIDE_BACKING_OFF,
                    .policy = "failed" },
                  { .id = "mid",
                    .user = "u",
                    .status = 4,
                    .started = TRISTATE_TRUE,
                    .age_ms = 40 * MIN,
                    .expect = DECIDE_CLOSE,
                    .policy = "failed" },
                  { .id = "young",
                    .user = "u",
                    .status = 4,
                    .started = TRISTATE_TRUE,
                    .age_ms = 2 * MIN,
                    .expect = DECIDE_DEFERRED,
                    .policy = "failed" },
                  { .id = "older",
                    .user = "u",
                    .status = 4,
                    .started = TRISTATE_TRUE,
                    .age_ms = 45 * MIN,
                    .expect = DECIDE_CLOSE,
                    .policy = "failed" }),
          CLOSES("older", "mid") },
        /* over_capacity picks among what the timer policies left, and its
         * victims then meet the share fuse like any due session. */
        { .name = "over_capacity after the timer policies, before the fuse",
          POLICIES(with_capacity),
          .max_share = 1.0,
          .max_closes = 100,
          ENTRIES({ .id = "f",
                    .user = "u",
                    .status = 4,
                    .started = TRISTATE_TRUE,
                    .age_ms = 2 * MIN,
                    .expect = DECIDE_CLOSE,
                    .policy = "failed" },
                  { .id = "l1",
                    .user = "u",
                    .status = 1,
                    .started = TRISTATE_TRUE,
                    .age_ms = 30 * MIN,
                    .expect = DECIDE_CLOSE,
                    .policy = "cap" },
                  { .id = "l2",
                    .user = "u",
                    .status = 1,
                    .started = TRISTATE_TRUE,
                    .age_ms = 20 * MIN,
                    .expect = DECIDE_KEEP },
                  { .id = "l3",
                    .user = "u",
                    .status = 1,
                    .started = TRISTATE_TRUE,
                    .age_ms = 10 * MIN,
                    .expect = DECIDE_KEEP },
                  { .id = "l4",
                    .user = "u",
                    .status = 1,
                    .started = TRISTATE_TRUE,
                    .age_ms = 5 * MIN,
                    .expect = DECIDE_KEEP },
                  { .id = "l5",
                    .user = "u",
                    .status = 1,
                    .started = TRISTATE_TRUE,
                    .age_ms = 1 * MIN,
                    .expect = DECIDE_KEEP }),
          CLOSES("f", "l1") },
        { .name = "over_capacity victims are fused too",
          POLICIES(with_capacity),
          .max_share = 0.1,
          .max_closes = 100,
          ENTRIES({ .id = "l1",
                    .user = "u",
                    .status = 1,
                    .started = TRISTATE_TRUE,
                    .age_ms = 30 * MIN,
                    .expect = DECIDE_FUSED,
                    .policy = "cap" },
                  { .id = "l2",
                    .user = "u",
                    .status = 1,
                    .started = TRISTATE_TRUE,
                    .age_ms = 20 * MIN,
                    .expect = DECIDE_KEEP },
                  { .id = "l3",
                    .user = "u",
                    .status = 1,
                    .started = TRISTATE_TRUE,
                    .age_ms = 10 * MIN,
                    .expect = DECIDE_KEEP },
                  { .id = "l4",
                    .user = "u",
                    .status = 1,
                    .started = TRISTATE_TRUE,
                    .age_ms = 5 * MIN,
                    .expect = DECIDE_KEEP },
                  { .id = "l5",
                    .user = "u",
                    .status = 1,
                    .started = TRISTATE_TRUE,
                    .age_ms = 1 * MIN,
                    .expect = DECIDE_KEEP }) },
        /* Deferred sessions do not free places for the fuse: the share is
         * judged on everything due. */
        { .name = "the fuse before max_closes_per_cycle",
          POLICIES(timer_policies),
          .max_share = 0.5,
          .max_closes = 1,
          ENTRIES({ .id = "n1",
                    .user = "u",
                    .status = 1,
                    .started = TRISTATE_FALSE,
                    .age_ms = 11 * MIN,
                    .expect = DECIDE_FUSED,
                    .policy = "never-started" },
                  { .id = "n2",
                    .user = "u",
                    .status = 1,
                    .started = TRISTATE_FALSE,
                    .age_ms = 12 * MIN,
                    .expect = DECIDE_FUSED,
                    .policy = "never-started" },
                  { .id = "f1",
                    .user = "u",
                    .status = 4,
                    .started = TRISTATE_TRUE,
                    .age_ms = 2 * MIN,
                    .expect = DECIDE_DEFERRED,
                    .policy = "failed" },
                  { .id = "f2",
                    .user = "u",
                    .status = 4,
                    .started = TRISTATE_TRUE,
                    .age_ms = 3 * MIN,
                    .expect = DECIDE_CLOSE,
                    .policy = "failed" },
                  { .id = "live",
                    .user = "u",
                    .status = 1,
                    .started = TRISTATE_TRUE,
                    .age_ms = 1 * MIN,
                    .expect = DECIDE_KEEP }),
          CLOSES("f2") },
};

/* A scenario's entries as a session list and its ages. */
struct listed {
        struct session items[8];
        char ids[8][16], users[8][16];
        uint64_t ages[8];
};

static void listed_fill(struct listed *ls, const struct scenario *sc) {
        assert_true(sc->n_entries <= ELEMENTSOF(ls->items));
        for (size_t i = 0; i < sc->n_entries; i++) {
                const struct entry *e = &sc->entries[i];

                snprintf(ls->ids[i], sizeof ls->ids[i], "%s", e->id);
                snprintf(ls->users[i], sizeof ls->users[i], "%s", e->user);
                ls->items[i] = (struct session){ .session_id = ls->ids[i],
                                                 .user_id = ls->users[i],
                                                 .status = e->status,
                                                 .started = e->started,
                                                 .create_type = -1 };
                ls->ages[i] = e->age_ms;
        }
}

static void run_scenario(const struct scenario *sc) {
        struct config cfg = {
                .protect_user_ids = { .items = vip, .n = ELEMENTSOF(vip) },
                .policies = sc->policies,
                .n_policies = sc->n_policies,
                .max_closes_per_cycle = sc->max_closes,
                .fuse = { .max_share = sc->max_share, .min_sessions = sc->min_sessions },
        };
        struct listed ls;
        struct session_list l = { .items = ls.items, .n = sc->n_entries };
        struct retry_table *retries = NULL;
        struct decide_result r;

        print_message("%s\n", sc->name);
        listed_fill(&ls, sc);
        assert_int_equal(retry_table_new(&retries), 0);
        if (sc->backing_off)
                assert_true(retry_failed(retries, sc->backing_off, 1000, MIN, 60 * MIN, 0, 0) > 0);
        assert_int_equal(decide(&(struct decide_input){ .config = &cfg,
                                                        .list = &l,
                                                        .ages = ls.ages,
                                                        .retries = retries,
                                                        .now_ms = 1000 },
                                &r),
                         0);
        for (size_t i = 0; i < sc->n_entries; i++) {
                const struct entry *e = &sc->entries[i];

                if (r.rows[i].outcome != e->expect)
                        fail_msg("%s: session %s is %s, expected %s", sc->name, e->id,
                                 decide_outcome_to_string(r.rows[i].outcome),
                                 decide_outcome_to_string(e->expect));
                if (e->policy)
                        assert_string_equal(r.rows[i].policy->name, e->policy);
                else
                        assert_null(r.rows[i].policy);
        }
        assert_int_equal(r.n_closes, sc->n_closes);
        for (size_t k = 0; k < sc->n_closes; k++)
                assert_string_equal(ls.items[r.closes[k]].session_id, sc->closes[k]);
        decide_result_done(&r);
        retry_table_free(retries);
}

static void test_scenarios(void **state) {
        (void) state;
        for (size_t i = 0; i < ELEMENTSOF(scenarios); i++)
                run_scenario(&scenarios[i]);
}

static const struct scenario *scenario_named(const char *name) {
        for (size_t i = 0; i < ELEMENTSOF(scenarios); i++)
                if (strcmp(scenarios[i].name, name) == 0)
                        return &scenarios[i];
        fail_msg("no scenario named \"%s\"", name);
        return NULL;
}

/* The counts a cycle summary and --plan report. */
static void test_counts(void **state) {
        const struct scenario *sc = scenario_named("the fuse before max_closes_per_cycle");
        struct config cfg = {
                .policies = sc->policies,
                .n_policies = sc->n_policies,
                .max_closes_per_cycle = sc->max_closes,
                .fuse = { .max_share = 0.4, .min_sessions = sc->min_sessions },
        };
        struct listed ls;
        /* A live entry never acted on counts as live: 2 due of 4 live. */
        struct malformed_entry junk = { .raw_id = "x", .reason = "test", .live = true };
        struct session_list l = {
                .items = ls.items, .n = sc->n_entries, .malformed = &junk, .n_malformed = 1
        };
        struct decide_result r;

        (void) state;
        listed_fill(&ls, sc);
        assert_int_equal(decide(&(struct decide_input){ .config = &cfg, .list = &l, .ages = ls.ages }, &r),
                         0);
        assert_int_equal(r.due, 4);
        assert_int_equal(r.live, 4); /* n1, n2, live and the malformed live entry */
        assert_int_equal(r.due_live, 2);
        assert_true(r.fuse_tripped);
        assert_int_equal(r.fused, 2);
        assert_int_equal(r.backing_off, 0);
        assert_int_equal(r.deferred, 1);
        assert_int_equal(r.n_closes, 1);
        decide_result_done(&r);

        /* An empty list decides nothing, and needs no ages. */
        l = (struct session_list){ 0 };
        assert_int_equal(decide(&(struct decide_input){ .config = &cfg, .list = &l }, &r), 0);
        assert_int_equal(r.n_closes, 0);
        assert_false(r.fuse_tripped);
        decide_result_done(&r);
}

/* A re-decision in a running cycle (issue 19): the closes already sent
 * are not closed twice, do not count as live for over_capacity, spend
 * max_closes_per_cycle and count as due live sessions for the share fuse,
 * so that the closes not yet sent are what the file in force selects. */
static void test_redecision_counts_what_was_sent(void **state) {
        enum { N = 30 };
        struct policy cap[] = { { .name = "cap", .kind = POLICY_OVER_CAPACITY, .capacity = 10 } };
        struct config cfg = {
                .policies = cap,
                .n_policies = 1,
                .max_closes_per_cycle = 100,
                .fuse = { .max_share = 1.0, .min_sessions = 1000 },
        };
        struct session items[N];
        char ids[N][8];
        uint64_t ages[N];
        bool sent[N] = { false };
        struct session_list l = { .items = items, .n = N };
        struct decide_input in = { .config = &cfg, .list = &l, .ages = ages, .sent = sent };
        struct decide_result first, again;

        (void) state;
        for (size_t i = 0; i < N; i++) {
                snprintf(ids[i], sizeof ids[i], "s%02zu", i);
                items[i] = (struct session){
                        .session_id = ids[i], .user_id = "u", .status = 1, .started = TRISTATE_TRUE
                };
                ages[i] = (uint64_t) (60 + i) * MIN; /* s29 is the oldest */
        }
        assert_int_equal(decide(&in, &first), 0);
        assert_int_equal(first.n_closes, 20);

        /* 8 of the 20 went out: the same 12 are left, whatever the order. */
        for (size_t k = 0; k < 8; k++)
                sent[first.closes[k]] = true;
        assert_int_equal(decide(&in, &again), 0);
        assert_int_equal(again.sent, 8);
        assert_int_equal(again.n_closes, 12);
        for (size_t k = 0; k < again.n_closes; k++) {
                assert_false(sent[again.closes[k]]);
                assert_int_equal(first.rows[again.closes[k]].outcome, DECIDE_CLOSE);
        }
        decide_result_done(&again);

        /* The file now says capacity 24: 22 are live, nothing more goes. */
        cap[0].capacity = 24;
        assert_int_equal(decide(&in, &again), 0);
        assert_int_equal(again.n_closes, 0);
        decide_result_done(&again);

        /* max_closes_per_cycle 10: 8 were sent, 2 more may go. */
        cap[0].capacity = 10;
        cfg.max_closes_per_cycle = 10;
        assert_int_equal(decide(&in, &again), 0);
        assert_int_equal(again.n_closes, 2);
        assert_int_equal(again.deferred, 10);
        decide_result_done(&again);

        /* A share fuse of 50%: 20 due of 30 live trips it, sent or not. */
        cfg.max_closes_per_cycle = 100;
        cfg.fuse = (struct fuse_config){ .max_share = 0.5, .min_sessions = 1 };
        assert_int_equal(decide(&in, &again), 0);
        assert_true(again.fuse_tripped);
        assert_int_equal(again.n_closes, 0);
        decide_result_done(&again);

        /* A dry run, from the file or --dry-run, is in the result. */
        cfg.fuse = (struct fuse_config){ .max_share = 1.0, .min_sessions = 1000 };
        cfg.dry_run = true;
        assert_int_equal(decide(&in, &again), 0);
        assert_true(again.dry_run);
        decide_result_done(&again);
        decide_result_done(&first);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_scenarios),
                cmocka_unit_test(test_counts),
                cmocka_unit_test(test_redecision_counts_what_was_sent),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
