/* Counters and gauges in the Prometheus text format, written atomically to a
 * file for node_exporter's textfile collector. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "notify-event.h"
#include "session.h"

struct metrics;

/* The result of one API call, for ivh_api_calls_total{result=...}. */
enum metrics_result {
        METRICS_OK,
        METRICS_API_ERROR,       /* Header.Code != 0 */
        METRICS_HTTP_ERROR,      /* a status other than 200 */
        METRICS_TRANSPORT_ERROR, /* connect, reset, timeout, TLS, size cap */
        METRICS_BAD_RESPONSE,    /* not the documented shape */
        METRICS_THROTTLED,       /* Code 100012, HTTP 429 or 503: "too frequent" */
        METRICS_AUTH_ERROR,      /* Code 100005, HTTP 401 or 403 */
        _METRICS_RESULT_MAX,
};

int metrics_new(struct metrics **ret);
void metrics_free(struct metrics *m);

void metrics_api_call(struct metrics *m, const char *endpoint, enum metrics_result result, double seconds);
/* Returns -ENOMEM when a new policy/outcome pair cannot be recorded. */
int metrics_reclaim(struct metrics *m, const char *policy, const char *outcome);
void metrics_listed(struct metrics *m, const struct session_list *l);
void metrics_cycle(struct metrics *m, bool list_ok, int64_t now_wall_ms);
/* Due sessions the last cycle held back: by the share fuse, and left for
 * later cycles (max_closes_per_cycle, a Retry-After, a stop). */
void metrics_held(struct metrics *m, size_t fused, size_t deferred);
/* The account's pace at the end of a cycle (calls/s, 0: none), and how
 * often it was cut and a cut undone since the daemon started. */
void metrics_pace(struct metrics *m, double rate, unsigned long cuts, unsigned long undone);

/* notify: one event queued (by type), one delivery attempt (by result),
 * events dropped undelivered, and the queue as it stands. */
enum metrics_delivery {
        METRICS_DELIVERY_OK,              /* a 2xx answer */
        METRICS_DELIVERY_HTTP_ERROR,      /* any other status (a redirect included) */
        METRICS_DELIVERY_TRANSPORT_ERROR, /* no answer: refused, timed out, TLS */
        _METRICS_DELIVERY_MAX,
};
void metrics_notify_event(struct metrics *m, enum notify_type t);
void metrics_notify_delivery(struct metrics *m, enum metrics_delivery result);
void metrics_notify_dropped(struct metrics *m, size_t n);
void metrics_notify_queue(struct metrics *m, size_t events, double oldest_age_s);

/* What belongs to the process, not to an account. */
struct metrics_process {
        const char *version;
        bool reload_ok;          /* the last load of the policy file (start or reload) succeeded */
        double reload_success_s; /* Unix time of the last successful load */
        int leader;              /* ha: 1 leader, 0 not; -1 without ha (no ivh_leader) */
};
void metrics_state_write(struct metrics *m, bool ok);

/* Renders the metrics of n accounts, each sample labelled account="NAME";
 * the caller frees *ret_text. */
int metrics_render(const struct metrics_process *proc, const struct metrics *const *ms,
                   const char *const *accounts, size_t n, char **ret_text);

/* Renders and writes path atomically (mode 0644). */
int metrics_write(const struct metrics_process *proc, const struct metrics *const *ms,
                  const char *const *accounts, size_t n, const char *path);
