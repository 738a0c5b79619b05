/* A runner's webhook (notify.h): its secret, its notifier, and what the
 * runner tells it: whether the account can reclaim, and the HA role. */
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "reclaimer-internal.h"

#include "log.h"
#include "notify-queue.h"
#include "notify.h"
#include "throttle.h"
#include "util.h"

/* ulog() without calling back into runner.c (one way only). */
static void ulog(const struct runner *u, int priority, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));
static void ulog(const struct runner *u, int priority, const char *fmt, ...) {
        struct log_field f[] = { { "IVH_ACCOUNT", runner_account(u) } };
        va_list ap;

        va_start(ap, fmt);
        log_structv(priority, NULL, f, ELEMENTSOF(f), fmt, ap);
        va_end(ap);
}

static bool wants_secret(const struct config *a) {
        return a->notify.url && strcmp(a->notify.format, "json") == 0;
}

int runner_notify_secret(struct reclaimer *r, const struct config *a, struct credentials **ret,
                         struct error *err) {
        struct error why = { 0 };
        int ret_code;

        *ret = NULL;
        if (!wants_secret(a))
                return 0;
        ret_code = credentials_load_notify_secret(&a->notify, &r->notify_env, ret, &why);
        if (ret_code < 0 && a->account)
                (void) error_set(err, ret_code, "%s (account %s)", error_message(&why), a->account);
        else if (ret_code < 0)
                (void) error_set(err, ret_code, "%s", error_message(&why));
        error_done(&why);
        return ret_code;
}

bool runner_notify_active(const struct reclaimer *r) {
        return r->opt.mode != RECLAIMER_PLAN && (!r->ha || ha_role(r->ha) == HA_LEADER);
}

static int configure(struct runner *u) {
        return notifier_configure(u->notify, &u->config->notify,
                                  u->notify_secret ? u->notify_secret->token : NULL,
                                  u->config->poll_interval_ms);
}

int runner_notify_start(struct runner *u, struct error *err) {
        char *path;
        int ret;

        if (u->r->opt.mode == RECLAIMER_PLAN || !u->config->notify.url || u->notify)
                return 0;
        path = notify_queue_path(u->config->state_file);
        if (!path)
                return error_set(err, -ENOMEM, "out of memory");
        ret = notifier_new(u->r->loop, runner_account(u), path, u->metrics, &u->notify, err);
        free(path);
        if (ret >= 0)
                ret = configure(u);
        if (ret < 0)
                return ret == -ENOMEM ? error_set(err, ret, "out of memory") : ret;
        notifier_set_active(u->notify, runner_notify_active(u->r));
        return 0;
}

void runner_notify_reconfigure(struct runner *u) {
        struct error err = { 0 };

        if (!u->config->notify.url) {
                if (u->notify)
                        ulog(u, LOG_INFO,
                             "notify: is gone from the file; no more events are sent (those queued stay in the queue file)");
                notifier_free(u->notify);
                u->notify = NULL;
                return;
        }
        if (!u->notify) {
                if (runner_notify_start(u, &err) < 0)
                        ulog(u, LOG_ERR, "Cannot start notifications: %s", error_message(&err));
                error_done(&err);
                return;
        }
        if (configure(u) < 0)
                ulog(u, LOG_ERR,
                     "Out of memory applying the reloaded notify: section; keeping the previous one");
}

/* The words STATUS= uses for why the account cannot reclaim, or NULL. */
static const char *stop_reason(const struct runner *u) {
        int64_t now = now_mono_ms();

        if (u->last.auth_failed)
                return "credentials refused";
        if (u->last.list_failed)
                return "failing to list";
        if (u->last.fused > 0)
                return "share fuse tripped";
        if (u->not_before_ms > now || throttle_held_ms(&u->throttle, now) > 0)
                return "paused by the gateway's Retry-After";
        return NULL;
}

void runner_notify_cycle_ended(struct runner *u) {
        if (u->notify && u->r->opt.mode == RECLAIMER_DAEMON && runner_notify_active(u->r))
                notify_reclaiming(u->notify, stop_reason(u));
}
