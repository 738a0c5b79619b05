#include "metrics.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fileio.h"
#include "util.h"

/* The endpoints the daemon calls; anything else is counted as "other". */
static const char *const endpoints[] = {
        "listsessionofuin",     "listsessionofprojectid",
        "listsessionofassetvk", "closesession",
        "statsession",          "other",
};
#define N_ENDPOINTS ELEMENTSOF(endpoints)

static const char *const result_names[_METRICS_RESULT_MAX] = {
        [METRICS_OK] = "ok",
        [METRICS_API_ERROR] = "api_error",
        [METRICS_HTTP_ERROR] = "http_error",
        [METRICS_TRANSPORT_ERROR] = "transport_error",
        [METRICS_BAD_RESPONSE] = "bad_response",
        [METRICS_THROTTLED] = "throttled",
        [METRICS_AUTH_ERROR] = "auth_error",
};

/* Upper bounds of the latency histogram, in seconds. */
static const double buckets[] = { 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10 };
#define N_BUCKETS ELEMENTSOF(buckets)

/* Session statuses listed; other values are counted as "other". */
static const char *const status_names[] = { "other", "1", "2", "3", "4" };

struct reclaim_counter {
        char *policy;
        char outcome[16];
        uint64_t count;
};

struct metrics {
        uint64_t calls[N_ENDPOINTS][_METRICS_RESULT_MAX];
        uint64_t latency_buckets[N_ENDPOINTS][N_BUCKETS]; /* cumulative at render time */
        uint64_t latency_count[N_ENDPOINTS];
        double latency_sum[N_ENDPOINTS];
        struct reclaim_counter *reclaims;
        size_t n_reclaims, cap_reclaims;
        uint64_t listed[ELEMENTSOF(status_names)];
        uint64_t malformed; /* entries of the last list never acted on */
        bool listed_known;
        uint64_t cycles_ok, cycles_failed;
        double last_success_s; /* 0 when none yet */
        uint64_t state_writes_ok, state_writes_failed;
        uint64_t fused, deferred; /* in the last cycle */
        bool held_known;
        bool pace_known;
        double pace;
        uint64_t pace_cuts, pace_undone;
        /* notify: (rendered once the account has a notifier) */
        bool notify_known;
        uint64_t notify_events[NOTIFY_TYPES];
        uint64_t notify_deliveries[_METRICS_DELIVERY_MAX];
        uint64_t notify_dropped;
        uint64_t notify_queue;
        double notify_oldest_s;
};

int metrics_new(struct metrics **ret) {
        struct metrics *m = calloc(1, sizeof *m);

        if (!m)
                return -ENOMEM;
        *ret = m;
        return 0;
}

void metrics_free(struct metrics *m) {
        if (!m)
                return;
        for (size_t i = 0; i < m->n_reclaims; i++)
                free(m->reclaims[i].policy);
        free(m->reclaims);
        free(m);
}

static size_t endpoint_index(const char *endpoint) {
        for (size_t i = 0; i + 1 < N_ENDPOINTS; i++)
                if (strcmp(endpoints[i], endpoint) == 0)
                        return i;
        return N_ENDPOINTS - 1;
}

void metrics_api_call(struct metrics *m, const char *endpoint, enum metrics_result result, double seconds) {
        size_t e = endpoint_index(endpoint);

        if (!m || (unsigned) result >= _METRICS_RESULT_MAX)
                return;
        m->calls[e][result]++;
        if (result == METRICS_TRANSPORT_ERROR)
                return; /* no response: no latency */
        for (size_t b = 0; b < N_BUCKETS; b++)
                if (seconds <= buckets[b]) {
                        m->latency_buckets[e][b]++;
                        break;
                }
        m->latency_count[e]++;
        m->latency_sum[e] += seconds;
}

int metrics_reclaim(struct metrics *m, const char *policy, const char *outcome) {
        struct reclaim_counter *c;

        if (!m)
                return 0;
        for (size_t i = 0; i < m->n_reclaims; i++)
                if (strcmp(m->reclaims[i].policy, policy) == 0 &&
                    strcmp(m->reclaims[i].outcome, outcome) == 0) {
                        m->reclaims[i].count++;
                        return 0;
                }
        if (m->n_reclaims == m->cap_reclaims) {
                size_t cap = m->cap_reclaims ? m->cap_reclaims * 2 : 8;
                struct reclaim_counter *n = realloc(m->reclaims, cap * sizeof *n);

                if (!n)
                        return -ENOMEM;
                m->reclaims = n;
                m->cap_reclaims = cap;
        }
        c = &m->reclaims[m->n_reclaims];
        c->policy = strdup(policy);
        if (!c->policy)
                return -ENOMEM;
        snprintf(c->outcome, sizeof c->outcome, "%s", outcome);
        c->count = 1;
        m->n_reclaims++;
        return 0;
}

void metrics_listed(struct metrics *m, const struct session_list *l) {
        if (!m)
                return;
        memset(m->listed, 0, sizeof m->listed);
        for (size_t i = 0; i < l->n; i++) {
                int st = l->items[i].status;
                m->listed[st >= 1 && st <= 4 ? st : 0]++;
        }
        m->malformed = l->n_malformed;
        m->listed_known = true;
}

void metrics_cycle(struct metrics *m, bool list_ok, int64_t now_wall_ms) {
        if (!m)
                return;
        if (list_ok) {
                m->cycles_ok++;
                m->last_success_s = (double) now_wall_ms / 1000.0;
        } else
                m->cycles_failed++;
}

void metrics_held(struct metrics *m, size_t fused, size_t deferred) {
        if (!m)
                return;
        m->fused = fused;
        m->deferred = deferred;
        m->held_known = true;
}

void metrics_pace(struct metrics *m, double rate, unsigned long cuts, unsigned long undone) {
        if (!m)
                return;
        m->pace_known = true;
        m->pace = rate;
        m->pace_cuts = cuts;
        m->pace_undone = undone;
}

/* A family with one sample per account whose flag at known_off is set: the
 * uint64_t field at off, or with decimals >= 0 the double there. */
static void render_per_account(FILE *f, const char *name, const char *type, const char *help,
                               const struct metrics *const *ms, const char *const *accounts, size_t n,
                               size_t known_off, size_t off, int decimals) {
        fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
        for (size_t a = 0; a < n; a++) {
                const char *base = (const char *) ms[a];

                if (!*(const bool *) (base + known_off))
                        continue;
                fprintf(f, "%s{account=\"%s\"} ", name, accounts[a]);
                if (decimals >= 0)
                        fprintf(f, "%.*f", decimals, *(const double *) (base + off));
                else
                        fprintf(f, "%llu", (unsigned long long) *(const uint64_t *) (base + off));
                fputc('\n', f);
        }
}

/* The pace's families, once an account has ended a cycle. */
static void render_pace(FILE *f, const struct metrics *const *ms, const char *const *accounts, size_t n) {
        size_t known = offsetof(struct metrics, pace_known);

        render_per_account(
                f, "ivh_pace_calls_per_second", "gauge",
                "The account's pace of closes at the end of the last cycle, learnt or gateway.max_rate; 0 when none limits.",
                ms, accounts, n, known, offsetof(struct metrics, pace), 1);
        render_per_account(f, "ivh_pace_cuts_total", "counter",
                           "Times the gateway's \"too frequent\" answers cut the account's pace.", ms,
                           accounts, n, known, offsetof(struct metrics, pace_cuts), -1);
        render_per_account(f, "ivh_pace_cuts_undone_total", "counter",
                           "Cuts undone because the refusals stayed as frequent: taken as noise.", ms,
                           accounts, n, known, offsetof(struct metrics, pace_undone), -1);
}

void metrics_state_write(struct metrics *m, bool ok) {
        if (!m)
                return;
        if (ok)
                m->state_writes_ok++;
        else
                m->state_writes_failed++;
}

void metrics_notify_event(struct metrics *m, enum notify_type t) {
        if (m && t < NOTIFY_TYPES)
                m->notify_events[t]++;
}

void metrics_notify_delivery(struct metrics *m, enum metrics_delivery result) {
        if (m && result < _METRICS_DELIVERY_MAX)
                m->notify_deliveries[result]++;
}

void metrics_notify_dropped(struct metrics *m, size_t n) {
        if (m)
                m->notify_dropped += n;
}

void metrics_notify_queue(struct metrics *m, size_t events, double oldest_age_s) {
        if (!m)
                return;
        m->notify_known = true;
        m->notify_queue = events;
        m->notify_oldest_s = oldest_age_s;
}

/* notify: the families of the accounts that have a notifier. */
static void render_notify(FILE *f, const struct metrics *const *ms, const char *const *accounts, size_t n) {
        static const char *const delivery_names[_METRICS_DELIVERY_MAX] = { "ok", "http_error",
                                                                           "transport_error" };
        bool any = false;

        for (size_t a = 0; a < n; a++)
                any |= ms[a]->notify_known;
        if (!any)
                return;
        fprintf(f, "# HELP ivh_notify_events_total Webhook events queued, by type.\n"
                   "# TYPE ivh_notify_events_total counter\n");
        for (size_t a = 0; a < n; a++)
                for (int t = 0; ms[a]->notify_known && t < NOTIFY_TYPES; t++)
                        fprintf(f, "ivh_notify_events_total{account=\"%s\",type=\"%s\"} %llu\n", accounts[a],
                                notify_type_names[t], (unsigned long long) ms[a]->notify_events[t]);
        fprintf(f, "# HELP ivh_notify_deliveries_total Webhook requests, by result.\n"
                   "# TYPE ivh_notify_deliveries_total counter\n");
        for (size_t a = 0; a < n; a++)
                for (int r = 0; ms[a]->notify_known && r < _METRICS_DELIVERY_MAX; r++)
                        fprintf(f, "ivh_notify_deliveries_total{account=\"%s\",result=\"%s\"} %llu\n",
                                accounts[a], delivery_names[r],
                                (unsigned long long) ms[a]->notify_deliveries[r]);
        render_per_account(f, "ivh_notify_queue_events", "gauge", "Webhook events waiting to be delivered.",
                           ms, accounts, n, offsetof(struct metrics, notify_known),
                           offsetof(struct metrics, notify_queue), -1);
        render_per_account(f, "ivh_notify_oldest_event_age_seconds", "gauge",
                           "Age of the oldest webhook event waiting; 0 when none waits.", ms, accounts, n,
                           offsetof(struct metrics, notify_known), offsetof(struct metrics, notify_oldest_s),
                           3);
        render_per_account(f, "ivh_notify_dropped_total", "counter",
                           "Webhook events dropped undelivered (notify.max_queue, notify.max_age).", ms,
                           accounts, n, offsetof(struct metrics, notify_known),
                           offsetof(struct metrics, notify_dropped), -1);
}

/* The two samples of a counter split by result="ok" / result=failed_label. */
static void render_ok_failed(FILE *f, const char *name, const char *account, const char *failed_label,
                             uint64_t ok, uint64_t failed) {
        fprintf(f, "%s{account=\"%s\",result=\"ok\"} %llu\n", name, account, (unsigned long long) ok);
        fprintf(f, "%s{account=\"%s\",result=\"%s\"} %llu\n", name, account, failed_label,
                (unsigned long long) failed);
}

/* The process's own families: build, and loads of the policy file. */
static void render_process(FILE *f, const struct metrics_process *proc) {
        /* The version comes from the build ([0-9.] and letters): nothing to escape. */
        fprintf(f,
                "# HELP ivh_reclaimd_build_info The running ivh-reclaimd's version; always 1.\n"
                "# TYPE ivh_reclaimd_build_info gauge\n"
                "ivh_reclaimd_build_info{version=\"%s\"} 1\n",
                proc->version);
        fprintf(f,
                "# HELP ivh_config_last_reload_successful Whether the last load of the policy file (at start or on reload) succeeded.\n"
                "# TYPE ivh_config_last_reload_successful gauge\n"
                "ivh_config_last_reload_successful %d\n",
                proc->reload_ok ? 1 : 0);
        fprintf(f,
                "# HELP ivh_config_last_reload_success_timestamp_seconds When the policy file was last loaded successfully, Unix time.\n"
                "# TYPE ivh_config_last_reload_success_timestamp_seconds gauge\n"
                "ivh_config_last_reload_success_timestamp_seconds %.3f\n",
                proc->reload_success_s);
}

int metrics_render(const struct metrics_process *proc, const struct metrics *const *ms,
                   const char *const *accounts, size_t n, char **ret_text) {
        char *text = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&text, &len);

        if (!f)
                return -ENOMEM;
        if (proc)
                render_process(f, proc);
        if (proc && proc->leader >= 0) {
                fprintf(f,
                        "# HELP ivh_leader Whether this instance is its etcd group's leader (ha:), the only one that closes sessions.\n"
                        "# TYPE ivh_leader gauge\n");
                for (size_t a = 0; a < n; a++)
                        fprintf(f, "ivh_leader{account=\"%s\"} %d\n", accounts[a], proc->leader);
        }

        /* Each family once, with the samples of every account under it.
         * Account and policy names are restricted to [A-Za-z0-9._-]: nothing
         * to escape. */
        fprintf(f, "# HELP ivh_sessions_listed Sessions in the last successful list, by SessionStatus.\n"
                   "# TYPE ivh_sessions_listed gauge\n");
        for (size_t a = 0; a < n; a++)
                if (ms[a]->listed_known)
                        for (size_t s = 0; s < ELEMENTSOF(status_names); s++)
                                fprintf(f, "ivh_sessions_listed{account=\"%s\",status=\"%s\"} %llu\n",
                                        accounts[a], status_names[s], (unsigned long long) ms[a]->listed[s]);

        fprintf(f,
                "# HELP ivh_sessions_malformed Entries of the last successful list that are never acted on (hostile ids, wrong shape, conflicting duplicates).\n"
                "# TYPE ivh_sessions_malformed gauge\n");
        for (size_t a = 0; a < n; a++)
                if (ms[a]->listed_known)
                        fprintf(f, "ivh_sessions_malformed{account=\"%s\"} %llu\n", accounts[a],
                                (unsigned long long) ms[a]->malformed);

        render_per_account(f, "ivh_sessions_fused", "gauge",
                           "Due live sessions the share fuse held back in the last cycle.", ms, accounts, n,
                           offsetof(struct metrics, held_known), offsetof(struct metrics, fused), -1);
        render_per_account(
                f, "ivh_sessions_deferred", "gauge",
                "Due sessions the last cycle left for later cycles (max_closes_per_cycle, a Retry-After, a stop).",
                ms, accounts, n, offsetof(struct metrics, held_known), offsetof(struct metrics, deferred),
                -1);

        render_pace(f, ms, accounts, n);

        fprintf(f, "# HELP ivh_reclaims_total Reclaim decisions, by policy and outcome.\n"
                   "# TYPE ivh_reclaims_total counter\n");
        for (size_t a = 0; a < n; a++)
                for (size_t i = 0; i < ms[a]->n_reclaims; i++)
                        fprintf(f, "ivh_reclaims_total{account=\"%s\",policy=\"%s\",outcome=\"%s\"} %llu\n",
                                accounts[a], ms[a]->reclaims[i].policy, ms[a]->reclaims[i].outcome,
                                (unsigned long long) ms[a]->reclaims[i].count);

        fprintf(f, "# HELP ivh_api_calls_total Calls to the IVH gateway, by endpoint and result.\n"
                   "# TYPE ivh_api_calls_total counter\n");
        for (size_t a = 0; a < n; a++)
                for (size_t e = 0; e < N_ENDPOINTS; e++)
                        for (size_t r = 0; r < _METRICS_RESULT_MAX; r++)
                                if (ms[a]->calls[e][r])
                                        fprintf(f,
                                                "ivh_api_calls_total{account=\"%s\",endpoint=\"%s\",result=\"%s\"} %llu\n",
                                                accounts[a], endpoints[e], result_names[r],
                                                (unsigned long long) ms[a]->calls[e][r]);

        fprintf(f, "# HELP ivh_api_latency_seconds Time from request to complete response.\n"
                   "# TYPE ivh_api_latency_seconds histogram\n");
        for (size_t a = 0; a < n; a++)
                for (size_t e = 0; e < N_ENDPOINTS; e++) {
                        const struct metrics *m = ms[a];
                        uint64_t cumulative = 0;

                        if (!m->latency_count[e])
                                continue;
                        for (size_t b = 0; b < N_BUCKETS; b++) {
                                cumulative += m->latency_buckets[e][b];
                                fprintf(f,
                                        "ivh_api_latency_seconds_bucket{account=\"%s\",endpoint=\"%s\",le=\"%g\"} %llu\n",
                                        accounts[a], endpoints[e], buckets[b],
                                        (unsigned long long) cumulative);
                        }
                        fprintf(f,
                                "ivh_api_latency_seconds_bucket{account=\"%s\",endpoint=\"%s\",le=\"+Inf\"} %llu\n",
                                accounts[a], endpoints[e], (unsigned long long) m->latency_count[e]);
                        fprintf(f, "ivh_api_latency_seconds_sum{account=\"%s\",endpoint=\"%s\"} %.6f\n",
                                accounts[a], endpoints[e], m->latency_sum[e]);
                        fprintf(f, "ivh_api_latency_seconds_count{account=\"%s\",endpoint=\"%s\"} %llu\n",
                                accounts[a], endpoints[e], (unsigned long long) m->latency_count[e]);
                }

        fprintf(f, "# HELP ivh_cycles_total Poll cycles, by whether the session list was fetched.\n"
                   "# TYPE ivh_cycles_total counter\n");
        for (size_t a = 0; a < n; a++)
                render_ok_failed(f, "ivh_cycles_total", accounts[a], "list_failed", ms[a]->cycles_ok,
                                 ms[a]->cycles_failed);
        fprintf(f,
                "# HELP ivh_last_successful_poll_timestamp_seconds When the session list was last fetched, Unix time; 0 before the first success.\n"
                "# TYPE ivh_last_successful_poll_timestamp_seconds gauge\n");
        for (size_t a = 0; a < n; a++)
                fprintf(f, "ivh_last_successful_poll_timestamp_seconds{account=\"%s\"} %.3f\n", accounts[a],
                        ms[a]->last_success_s);
        fprintf(f, "# HELP ivh_state_file_writes_total Writes of the state file, by result.\n"
                   "# TYPE ivh_state_file_writes_total counter\n");
        for (size_t a = 0; a < n; a++)
                render_ok_failed(f, "ivh_state_file_writes_total", accounts[a], "failed",
                                 ms[a]->state_writes_ok, ms[a]->state_writes_failed);
        render_notify(f, ms, accounts, n);

        if (fclose(f) != 0 || !text) {
                free(text);
                return -ENOMEM;
        }
        *ret_text = text;
        return 0;
}

int metrics_write(const struct metrics_process *proc, const struct metrics *const *ms,
                  const char *const *accounts, size_t n, const char *path) {
        char *text = NULL;
        int r = metrics_render(proc, ms, accounts, n, &text);

        if (r < 0)
                return r;
        r = write_file_atomic(path, text, strlen(text), 0644);
        free(text);
        return r;
}
