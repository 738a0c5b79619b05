#include "notify.h"

#include <assert.h>
#include <curl/curl.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "duration.h"
#include "http.h"
#include "idset.h"
#include "log.h"
#include "notify-queue.h"
#include "retry.h"
#include "util.h"

#define BACKOFF_BASE_MS 1000
#define BACKOFF_CAP_MS  (5 * 60 * 1000)
/* A Retry-After longer than this is cut to it. */
#define RETRY_AFTER_CAP_MS (60 * 60 * 1000)
/* A receiver's reply is read up to this size; a 2xx status delivers the
 * batch whatever follows. */
#define REPLY_MAX (64 * 1024)
/* A receiver counts as failing after max(this, 10 polls). */
#define FAILING_MIN_MS (5 * 60 * 1000)
/* Drops are reported at most this often. */
#define DROP_REPORT_MS (60 * 1000)

struct notifier {
        struct ev_loop *loop;
        char *account;
        struct metrics *metrics;
        struct notify_queue q;

        /* Settings (notifier_configure()). */
        char *url, *ca_file, *secret;
        char shown[160]; /* the url as logs show it: scheme and host (a webhook's path may be its secret) */
        bool slack;
        bool wants[NOTIFY_TYPES];
        uint64_t due_soon_ms, timeout_ms, max_age_ms, failing_after_ms;
        unsigned max_queue;
        bool configured, active;

        /* Delivery. */
        struct http *http;         /* made for the settings in force; NULL until needed */
        char **batch_ids;          /* the request in flight: its events' ids, in order */
        size_t batch_n;            /* 0: no request in flight */
        ev_timer timer;            /* the next attempt (now, or after a backoff) */
        ev_timer failing_timer;    /* when the receiver will have failed for failing_after_ms */
        ev_prepare sync_watcher;   /* fdatasync of the queue file before the loop waits */
        unsigned failures;         /* consecutive failed deliveries */
        int64_t first_failure_ms;  /* monotonic; 0: the last delivery succeeded */
        char last_error[256];      /* the last failure, for STATUS= and the journal */
        bool failing_logged;       /* the "failing for ..." warning went out */
        size_t dropped_unreported; /* dropped since the last warning */
        int64_t drop_reported_ms;  /* monotonic */
        int write_warned;          /* the queue file's errno last warned about */

        /* notify_once(): "TYPE\nSESSION\nPOLICY" of the events said, one
         * round (a cycle's list) to the next. */
        struct idset *announced;

        char *stopped_reason; /* the reason reclaiming_stopped named; NULL: reclaiming */
};

static void arm(struct notifier *n, double delay);
static void failing_cb(struct ev_loop *loop, ev_timer *w, int revents);

static void nlog(const struct notifier *n, int priority, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));
static void nlog(const struct notifier *n, int priority, const char *fmt, ...) {
        struct log_field f[] = { { "IVH_ACCOUNT", n->account }, { "IVH_NOTIFY_URL", n->shown } };
        va_list ap;

        va_start(ap, fmt);
        log_structv(priority, NULL, f, ELEMENTSOF(f), fmt, ap);
        va_end(ap);
}

static void sync_cb(struct ev_loop *loop, ev_prepare *w, int revents) {
        struct notifier *n = w->data;

        (void) revents;
        ev_prepare_stop(loop, w);
        notify_queue_sync(&n->q);
}

static void warn_write(struct notifier *n) {
        if (n->q.write_error == 0 && n->write_warned) {
                n->write_warned = 0;
                nlog(n, LOG_NOTICE,
                     "The notification queue %s can be written again; it holds every event waiting",
                     n->q.path);
        }
        if (n->q.write_error == 0 || n->q.write_error == n->write_warned)
                return;
        n->write_warned = n->q.write_error;
        nlog(n, LOG_WARNING,
             "Cannot write the notification queue %s: %s; events are kept in memory only until it can be written",
             n->q.path, strerror(n->q.write_error));
}

/* At most once a minute; what is dropped meanwhile is in the next report. */
static void report_drops(struct notifier *n) {
        int64_t now = now_mono_ms();

        if (n->dropped_unreported == 0 ||
            (n->drop_reported_ms && now - n->drop_reported_ms < DROP_REPORT_MS))
                return;
        nlog(n, LOG_WARNING,
             "Dropped %zu notification event(s) that could not be delivered (notify.max_queue is %u; notify.max_age drops older ones); see ivh_notify_dropped_total",
             n->dropped_unreported, n->max_queue);
        n->dropped_unreported = 0;
        n->drop_reported_ms = now;
}

static void drop_front(struct notifier *n, size_t k) {
        if (k == 0)
                return;
        notify_queue_pop(&n->q, k);
        metrics_notify_dropped(n->metrics, k);
        n->dropped_unreported += k;
        warn_write(n);
        report_drops(n);
}

/* Events older than max_age go. */
static void drop_expired(struct notifier *n) {
        int64_t oldest = now_wall_ms() - (int64_t) n->max_age_ms;
        size_t k = 0;

        while (k < n->q.n && notify_queue_at(&n->q, k)->queued_wall_ms < oldest)
                k++;
        drop_front(n, k);
}

int notifier_new(struct ev_loop *loop, const char *account, const char *queue_path, struct metrics *metrics,
                 struct notifier **ret, struct error *err) {
        struct notifier *n = calloc(1, sizeof *n);
        int r;

        if (!n)
                return error_set(err, -ENOMEM, "out of memory");
        n->loop = loop;
        n->metrics = metrics;
        n->q.fd = -1;
        ev_init(&n->timer, NULL);
        ev_init(&n->failing_timer, failing_cb);
        n->failing_timer.data = n;
        ev_prepare_init(&n->sync_watcher, sync_cb);
        n->sync_watcher.data = n;
        if (!(n->account = strdup(account)) || idset_new(&n->announced) < 0) {
                notifier_free(n);
                return error_set(err, -ENOMEM, "out of memory");
        }
        r = notify_queue_open(&n->q, queue_path, err);
        if (r == -ENOMEM) {
                notifier_free(n);
                return r;
        }
        /* Notifications never stop reclaiming: without its file the queue
         * lives in memory (and a file that cannot be read is left as it is). */
        if (r < 0) {
                log_struct(LOG_WARNING, NULL, (struct log_field[]){ { "IVH_ACCOUNT", account } }, 1,
                           "%s; notification events are kept in memory only until the daemon restarts",
                           error_message(err));
                error_done(err);
                n->write_warned = -r;
        }
        if (r > 0)
                log_struct(LOG_WARNING, NULL, (struct log_field[]){ { "IVH_ACCOUNT", account } }, 1,
                           "Skipped %d unreadable line(s) of the notification queue %s%s%s", r, queue_path,
                           n->q.corrupt_copy ? "; the file as it was is kept as " : "",
                           n->q.corrupt_copy ? n->q.corrupt_copy : "");
        if (n->q.n > 0)
                log_struct(LOG_INFO, NULL, (struct log_field[]){ { "IVH_ACCOUNT", account } }, 1,
                           "%zu notification event(s) from before the restart are waiting to be delivered",
                           n->q.n);
        *ret = n;
        return 0;
}

static void batch_forget(struct notifier *n) {
        for (size_t i = 0; i < n->batch_n; i++)
                free(n->batch_ids[i]);
        free(n->batch_ids);
        n->batch_ids = NULL;
        n->batch_n = 0;
}

void notifier_free(struct notifier *n) {
        if (!n)
                return;
        ev_timer_stop(n->loop, &n->timer);
        ev_timer_stop(n->loop, &n->failing_timer);
        ev_prepare_stop(n->loop, &n->sync_watcher);
        http_free(n->http);
        batch_forget(n);
        notify_queue_close(&n->q);
        idset_free(n->announced);
        free(n->account);
        free(n->url);
        free(n->ca_file);
        if (n->secret) {
                explicit_bzero(n->secret, strlen(n->secret));
                free(n->secret);
        }
        free(n->stopped_reason);
        free(n);
}

/* scheme://host[:port], and "/..." when there is a path: Slack's and
 * others' webhook URLs carry their secret in the path. */
static void show_url(const char *url, char *buf, size_t len) {
        CURLU *u = curl_url();
        char *scheme = NULL, *host = NULL, *port = NULL, *path = NULL;

        if (u && curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK) {
                curl_url_get(u, CURLUPART_SCHEME, &scheme, 0);
                curl_url_get(u, CURLUPART_HOST, &host, 0);
                curl_url_get(u, CURLUPART_PORT, &port, 0);
                curl_url_get(u, CURLUPART_PATH, &path, 0);
        }
        snprintf(buf, len, "%s://%s%s%s%s", scheme ? scheme : "?", host ? host : "?", port ? ":" : "",
                 port ? port : "", path && strcmp(path, "/") != 0 ? "/..." : "");
        curl_free(scheme);
        curl_free(host);
        curl_free(port);
        curl_free(path);
        curl_url_cleanup(u);
}

static bool same(const char *a, const char *b) {
        return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

int notifier_configure(struct notifier *n, const struct notify_config *cfg, const char *secret,
                       uint64_t poll_interval_ms) {
        bool slack = cfg->format && strcmp(cfg->format, "slack") == 0;
        bool changed = !same(n->url, cfg->url) || !same(n->ca_file, cfg->ca_file) ||
                       !same(n->secret, slack ? NULL : secret) || n->slack != slack ||
                       n->timeout_ms != cfg->timeout_ms;
        char *url = NULL, *ca = NULL, *sec = NULL;

        assert(cfg->url);
        if (!(url = strdup(cfg->url)) || (cfg->ca_file && !(ca = strdup(cfg->ca_file))) ||
            (!slack && secret && !(sec = strdup(secret)))) {
                free(url);
                free(ca);
                free(sec);
                return -ENOMEM;
        }
        free(n->url);
        free(n->ca_file);
        if (n->secret) {
                explicit_bzero(n->secret, strlen(n->secret));
                free(n->secret);
        }
        n->url = url;
        show_url(url, n->shown, sizeof n->shown);
        n->ca_file = ca;
        n->secret = sec;
        n->slack = slack;
        for (int t = 0; t < NOTIFY_TYPES; t++)
                n->wants[t] = cfg->events.n == 0;
        for (size_t i = 0; i < cfg->events.n; i++) {
                int t = notify_type_from_string(cfg->events.items[i]);

                if (t >= 0)
                        n->wants[t] = true;
        }
        n->due_soon_ms = cfg->due_soon_ms;
        n->timeout_ms = cfg->timeout_ms;
        n->max_age_ms = cfg->max_age_ms;
        n->max_queue = cfg->max_queue;
        n->failing_after_ms =
                poll_interval_ms * 10 > FAILING_MIN_MS ? poll_interval_ms * 10 : FAILING_MIN_MS;
        if (changed && n->configured) {
                /* A new receiver: what was in flight goes to it, now. */
                http_free(n->http);
                n->http = NULL;
                batch_forget(n);
                ev_timer_stop(n->loop, &n->timer);
                n->failures = 0;
                n->first_failure_ms = 0;
                n->failing_logged = false;
                ev_timer_stop(n->loop, &n->failing_timer);
                nlog(n, LOG_INFO, "Notifications now go to %s, with the reloaded settings", n->shown);
        }
        n->configured = true;
        if (n->q.n > n->max_queue)
                drop_front(n, n->q.n - n->max_queue);
        arm(n, 0);
        return 0;
}

void notifier_set_active(struct notifier *n, bool active) {
        n->active = active;
        if (active)
                arm(n, 0);
}

bool notifier_wants(const struct notifier *n, enum notify_type t) {
        return n && n->configured && n->wants[t];
}

uint64_t notifier_due_soon_ms(const struct notifier *n) {
        return n && n->configured && n->wants[NOTIFY_DUE_SOON] ? n->due_soon_ms : 0;
}

/* stable: the event's id is derived from it and the account (the same
 * after a restart, so that a receiver de-duplicates a repeat); NULL: a
 * random id. */
static void queue_event(struct notifier *n, enum notify_type t, const struct notify_session *s,
                        const char *reason, const char *stable) {
        char id[NOTIFY_ID_LEN + 1];
        char *json = NULL;
        int64_t now = now_wall_ms();
        int r;

        if (!notifier_wants(n, t))
                return;
        r = stable ? notify_stable_id(n->account, stable, id) : notify_new_id(id);
        if (r >= 0)
                r = notify_event_render(t, id, now, n->account, s, reason, &json);
        if (r >= 0 && n->q.n >= n->max_queue)
                drop_front(n, n->q.n - n->max_queue + 1);
        if (r >= 0)
                r = notify_queue_push(&n->q, id, json, now);
        free(json);
        if (r < 0) {
                nlog(n, LOG_WARNING, "Cannot queue a %s notification event: %s", notify_type_to_string(t),
                     strerror(-r));
                return;
        }
        metrics_notify_event(n->metrics, t);
        warn_write(n);
        ev_prepare_start(n->loop, &n->sync_watcher);
        arm(n, 0);
}

void notify_session(struct notifier *n, enum notify_type t, const struct notify_session *s) {
        if (n)
                queue_event(n, t, s, NULL, NULL);
}

static char *once_key(enum notify_type t, const struct notify_session *s) {
        char *key;

        return asprintf(&key, "%d\n%s\n%s", (int) t, s->session_id, s->policy) < 0 ? NULL : key;
}

void notify_once(struct notifier *n, enum notify_type t, const struct notify_session *s) {
        char *key;

        if (!notifier_wants(n, t) || (t == NOTIFY_DUE_SOON && !n->due_soon_ms))
                return;
        key = once_key(t, s);
        if (!key)
                return;
        /* New to this round and the last: said now, once. */
        if (idset_mark(n->announced, key) == 1)
                queue_event(n, t, s, NULL, key);
        free(key);
}

void notify_new_round(struct notifier *n) {
        if (n)
                idset_round_end(n->announced);
}

void notify_reclaiming(struct notifier *n, const char *reason) {
        if (!n)
                return;
        if (reason && (!n->stopped_reason || strcmp(reason, n->stopped_reason) != 0)) {
                /* Stopped, or stopped now for another reason: STATUS=
                 * names a new one, and so does the event. */
                char *copy = strdup(reason);

                if (!copy)
                        return;
                free(n->stopped_reason);
                n->stopped_reason = copy;
                queue_event(n, NOTIFY_RECLAIMING_STOPPED, NULL, reason, NULL);
        } else if (!reason && n->stopped_reason) {
                queue_event(n, NOTIFY_RECLAIMING_RESUMED, NULL, n->stopped_reason, NULL);
                free(n->stopped_reason);
                n->stopped_reason = NULL;
        }
}

/* The receiver counts as failing once it has failed for failing_after_ms:
 * said at warning and in STATUS= then, not only at the next attempt (which
 * a backoff may put minutes later). Returns whether it said so now. */
static bool failing_check(struct notifier *n, const char *wait) {
        char failing[32];

        if (n->failing_logged || n->first_failure_ms == 0 ||
            now_mono_ms() - n->first_failure_ms < (int64_t) n->failing_after_ms)
                return false;
        n->failing_logged = true;
        duration_format((uint64_t) (now_mono_ms() - n->first_failure_ms) / 1000 * 1000, failing,
                        sizeof failing);
        nlog(n, LOG_WARNING,
             "Notifications to %s have failed for %s (%s); %zu event(s) wait in the queue; %s%s", n->shown,
             failing, n->last_error, n->q.n, wait ? "retrying in " : "the next attempt follows its backoff",
             wait ? wait : "");
        return true;
}

static void failing_cb(struct ev_loop *loop, ev_timer *w, int revents) {
        (void) loop;
        (void) revents;
        (void) failing_check(w->data, NULL);
}

static void arm_failing(struct notifier *n) {
        ev_timer_stop(n->loop, &n->failing_timer);
        ev_timer_set(&n->failing_timer, (double) n->failing_after_ms / 1000.0 + 0.001, 0.);
        ev_timer_start(n->loop, &n->failing_timer);
}

/* The delivery of the batch in flight ended. */
static void on_reply(const struct http_response *resp, void *userdata) {
        struct notifier *n = userdata;
        bool ok = resp->status >= 200 && resp->status < 300;
        enum metrics_delivery result = ok                 ? METRICS_DELIVERY_OK
                                       : resp->status > 0 ? METRICS_DELIVERY_HTTP_ERROR
                                                          : METRICS_DELIVERY_TRANSPORT_ERROR;
        uint32_t rnd = 0;
        uint64_t delay, retry_after = (uint64_t) resp->retry_after_s * 1000;
        char wait[32];

        metrics_notify_delivery(n->metrics, result);
        if (ok) {
                /* Events dropped while it was in flight left the front;
                 * the rest of the batch is the front now. */
                size_t k = 0;

                for (size_t j = 0; j < n->batch_n && k < n->q.n; j++)
                        if (strcmp(notify_queue_at(&n->q, k)->id, n->batch_ids[j]) == 0)
                                k++;
                batch_forget(n);
                notify_queue_pop(&n->q, k);
                warn_write(n);
                ev_prepare_start(n->loop, &n->sync_watcher);
                if (n->failures > 0)
                        nlog(n, n->failing_logged ? LOG_NOTICE : LOG_INFO,
                             "Notifications are delivered again, after %u failed attempt(s)", n->failures);
                n->failures = 0;
                n->first_failure_ms = 0;
                n->failing_logged = false;
                ev_timer_stop(n->loop, &n->failing_timer);
                arm(n, 0);
                return;
        }
        batch_forget(n);
        if (resp->status >= 300 && resp->status < 400)
                snprintf(n->last_error, sizeof n->last_error, "HTTP %ld (redirects are not followed)",
                         resp->status);
        else if (resp->status > 0)
                snprintf(n->last_error, sizeof n->last_error, "HTTP %ld", resp->status);
        else
                sanitize_printable(resp->error, n->last_error, sizeof n->last_error);
        n->failures++;
        if (n->first_failure_ms == 0)
                n->first_failure_ms = now_mono_ms();
        if (getrandom(&rnd, sizeof rnd, GRND_NONBLOCK) != (ssize_t) sizeof rnd)
                rnd = (uint32_t) now_mono_ms();
        if (retry_after > RETRY_AFTER_CAP_MS)
                retry_after = RETRY_AFTER_CAP_MS;
        /* The backoff, or the receiver's Retry-After (up to an hour) when
         * that is longer: retry_delay_ms() would cut it to the backoff's cap. */
        delay = retry_delay_ms(n->failures, BACKOFF_BASE_MS, BACKOFF_CAP_MS, 0, rnd);
        if (retry_after > delay)
                delay = retry_after;
        duration_format(delay - delay % 1000 + 1000 * (delay % 1000 >= 500), wait, sizeof wait);
        if (n->failures == 1)
                arm_failing(n);
        if (!failing_check(n, wait))
                nlog(n, n->failures == 1 ? LOG_WARNING : LOG_DEBUG,
                     "Failed to deliver notification events to %s: %s; %zu event(s) wait in the queue; retrying in %s",
                     n->shown, n->last_error, n->q.n, wait);
        arm(n, (double) delay / 1000.0);
}

static int make_http(struct notifier *n) {
        struct http_options o = {
                .ca_file = n->ca_file,
                .timeout_ms = (long) n->timeout_ms,
                .connect_timeout_ms = (long) n->timeout_ms,
                .max_response_size = REPLY_MAX,
                .max_connections = 1,
        };

        return n->http ? 0 : http_new(n->loop, &o, &n->http);
}

/* Sends the oldest events, at most NOTIFY_BATCH_MAX. */
static void send_batch(struct notifier *n) {
        size_t k;
        char **events = NULL, *body = NULL, stamp[24], sig[NOTIFY_SIGNATURE_LEN + 1], h_stamp[64],
             h_sig[128];
        const char *headers[4] = { "Content-Type: application/json", NULL };
        int r;

        drop_expired(n);
        report_drops(n);
        k = n->q.n < NOTIFY_BATCH_MAX ? n->q.n : NOTIFY_BATCH_MAX;
        if (k == 0)
                return;
        events = calloc(k, sizeof *events);
        n->batch_ids = calloc(k, sizeof *n->batch_ids);
        r = events && n->batch_ids ? 0 : -ENOMEM;
        for (size_t i = 0; r == 0 && i < k; i++) {
                events[i] = notify_queue_at(&n->q, i)->json;
                if (!(n->batch_ids[i] = strdup(notify_queue_at(&n->q, i)->id)))
                        r = -ENOMEM;
                else
                        n->batch_n = i + 1;
        }
        if (r == 0 && n->slack) {
                size_t used = k;

                r = notify_body_slack(events, k, &body, &used);
                /* What did not fit goes in the next request. */
                while (r == 0 && n->batch_n > used)
                        free(n->batch_ids[--n->batch_n]);
        } else if (r == 0)
                r = notify_body_json(events, k, &body);
        if (r == 0 && !n->slack) {
                snprintf(stamp, sizeof stamp, "%lld", (long long) time(NULL));
                r = notify_sign(n->secret ? n->secret : "", stamp, body, sig);
                snprintf(h_stamp, sizeof h_stamp, "X-Ivh-Reclaimd-Timestamp: %s", stamp);
                snprintf(h_sig, sizeof h_sig, "X-Ivh-Reclaimd-Signature: %s", sig);
                headers[1] = h_stamp;
                headers[2] = h_sig;
        }
        if (r == 0)
                r = make_http(n);
        if (r == 0)
                r = http_post(n->http, n->url, body, headers, on_reply, n);
        free(events);
        free(body);
        if (r < 0) {
                batch_forget(n);
                nlog(n, LOG_WARNING, "Cannot send notification events to %s: %s; retrying in 1 minute",
                     n->shown, strerror(-r));
                arm(n, 60.);
        }
}

static void timer_cb(struct ev_loop *loop, ev_timer *w, int revents) {
        struct notifier *n = w->data;

        (void) loop;
        (void) revents;
        if (!n->configured || n->batch_n > 0)
                return;
        if (!n->active) {
                drop_expired(n);
                return;
        }
        send_batch(n);
}

/* The next attempt: now (delay 0) unless one is in flight or a backoff
 * runs; after a failure, in delay seconds. */
static void arm(struct notifier *n, double delay) {
        if (!n->configured || !n->active || n->batch_n > 0 || n->q.n == 0)
                return;
        if (ev_is_active(&n->timer)) {
                if (delay == 0)
                        return; /* a backoff runs, or a send is already due */
                ev_timer_stop(n->loop, &n->timer);
        }
        ev_timer_init(&n->timer, timer_cb, delay, 0.);
        n->timer.data = n;
        ev_timer_start(n->loop, &n->timer);
}

const char *notifier_problem(const struct notifier *n, char *buf, size_t len) {
        char failing[32];

        if (!n || !n->failing_logged || n->first_failure_ms == 0)
                return NULL;
        duration_format((uint64_t) (now_mono_ms() - n->first_failure_ms) / 60000 * 60000, failing,
                        sizeof failing);
        snprintf(buf, len, "notifications to %s failing for %s: %s", n->shown, failing, n->last_error);
        return buf;
}

void notifier_update_metrics(struct notifier *n) {
        int64_t oldest = 0;

        if (!n)
                return;
        drop_expired(n);
        if (n->q.n > 0)
                oldest = now_wall_ms() - notify_queue_at(&n->q, 0)->queued_wall_ms;
        metrics_notify_queue(n->metrics, n->q.n, oldest > 0 ? (double) oldest / 1000.0 : 0.);
}
