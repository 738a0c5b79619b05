/* What the runners know, rendered: the STATUS= line `systemctl status`
 * shows, and the metrics file. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-daemon.h>
#include <time.h>

#include "reclaimer-internal.h"

#include "duration.h"
#include "log.h"
#include "metrics.h"
#include "notify.h"
#include "throttle.h"
#include "util.h"

/* ", NAME" for each account whose last cycle matches, into buf. */
static const char *accounts_where(const struct reclaimer *r, bool (*pred)(const struct cycle_result *),
                                  char *buf, size_t n) {
        size_t len = 0;

        buf[0] = '\0';
        for (size_t i = 0; i < r->n_runners && len < n; i++)
                if (pred(&r->runners[i].last)) {
                        int k = snprintf(buf + len, n - len, "%s%s", len ? ", " : "",
                                         runner_account(&r->runners[i]));

                        len += k > 0 ? (size_t) k : 0;
                }
        return buf;
}

static bool list_failed(const struct cycle_result *res) {
        return res->list_failed;
}

static bool fuse_tripped(const struct cycle_result *res) {
        return !res->list_failed && res->fused > 0;
}

static bool auth_refused(const struct cycle_result *res) {
        return res->auth_failed;
}

/* With several accounts: "; credentials refused: A; throttled: B (N
 * calls); paused by the gateway's Retry-After: C", for every account that
 * cannot reclaim for a reason other than failing to list or a tripped
 * fuse (those have their own words). */
static void account_problems(const struct reclaimer *r, char *buf, size_t n) {
        char names[256];
        size_t len = 0, k = 0;
        int64_t now = now_mono_ms();

        buf[0] = '\0';
        if (*accounts_where(r, auth_refused, names, sizeof names))
                len += (size_t) snprintf(buf + len, n - len, "; credentials refused: %s", names);
        for (size_t i = 0; i < r->n_runners && len < n; i++) {
                const struct runner *u = &r->runners[i];

                if (u->last.throttled == 0)
                        continue;
                len += (size_t) snprintf(buf + len, n - len, "%s%s (%zu calls)",
                                         k++ ? ", " : "; throttled: ", runner_account(u), u->last.throttled);
        }
        k = 0;
        for (size_t i = 0; i < r->n_runners && len < n; i++) {
                const struct runner *u = &r->runners[i];

                if (u->not_before_ms <= now && throttle_held_ms(&u->throttle, now) == 0)
                        continue;
                len += (size_t) snprintf(
                        buf + len, n - len, "%s%s",
                        k++ ? ", " : "; paused by the gateway's Retry-After: ", runner_account(u));
        }
}

/* "; notifications to URL failing for 7m: HTTP 500" for each account
 * whose receiver has failed for longer than max(5 min, 10 polls). */
static const char *notify_problems(const struct reclaimer *r, char *buf, size_t n) {
        size_t len = 0;

        buf[0] = '\0';
        for (size_t i = 0; i < r->n_runners && len < n; i++) {
                char one[320];
                const char *p = notifier_problem(r->runners[i].notify, one, sizeof one);
                int k;

                if (!p)
                        continue;
                k = snprintf(buf + len, n - len, "; %s%s%s",
                             r->n_runners > 1 ? runner_account(&r->runners[i]) : "",
                             r->n_runners > 1 ? ": " : "", p);
                len += k > 0 ? (size_t) k : 0;
        }
        return buf;
}

/* STATUS= for `systemctl status`: one line about the last cycles, naming a
 * tripped share fuse, the accounts that fail to list, that are refused,
 * throttled or paused, and a failed reload. */
void reclaimer_notify_status(struct reclaimer *r, struct runner *u) {
        char every[32], when[32], failing[256], fused[256], extra[1024], body[3072], notes[384],
                role[192] = "", problems[768];
        time_t t = (time_t) u->next_poll_wall_s;
        size_t listed = 0, reclaimed = 0, failed = 0, n_fused = 0, n_list_failed = 0;
        struct tm tm;

        localtime_r(&t, &tm);
        strftime(when, sizeof when, "%H:%M:%S", &tm);
        duration_format(u->config->poll_interval_ms, every, sizeof every);
        for (size_t i = 0; i < r->n_runners; i++) {
                const struct cycle_result *res = &r->runners[i].last;

                listed += res->listed;
                reclaimed += res->closed + res->already_closed;
                failed += res->failed;
                n_list_failed += res->list_failed;
                n_fused += fuse_tripped(res) ? res->fused : 0;
        }
        accounts_where(r, list_failed, failing, sizeof failing);
        accounts_where(r, fuse_tripped, fused, sizeof fused);
        snprintf(extra, sizeof extra, "%s%s%s%s%s%s%s%s", n_fused ? "; share fuse tripped: " : "",
                 n_fused ? fused : "",
                 r->reload_failed ? "; the last reload failed, the previous policy runs" : "",
                 r->metrics_error ? "; cannot write the metrics file " : "",
                 r->metrics_error ? r->metrics_file : "", r->metrics_error ? ": " : "",
                 r->metrics_error ? strerror(r->metrics_error) : "",
                 notify_problems(r, notes, sizeof notes));
        if (r->n_runners > 1) {
                account_problems(r, problems, sizeof problems);
                snprintf(
                        body, sizeof body,
                        "%zu accounts: %zu sessions listed, %zu reclaimed, %zu failed in the last cycles%s%s%s%s",
                        r->n_runners, listed, reclaimed, failed, n_list_failed ? "; failing to list: " : "",
                        n_list_failed ? failing : "", problems, extra);
        } else if (u->last.auth_failed)
                snprintf(
                        body, sizeof body,
                        "The gateway refuses our credentials: check appkey, token and clock; %zu reclaimed in total, next poll at %s%s",
                        r->total_reclaimed, when, extra);
        else if (n_list_failed)
                snprintf(
                        body, sizeof body,
                        "Last poll failed: listing the sessions of account %s (see journal); %zu reclaimed in total, next poll at %s%s",
                        failing, r->total_reclaimed, when, extra);
        else if (u->last.throttled > 0)
                snprintf(
                        body, sizeof body,
                        "%zu sessions listed, %zu reclaimed, %zu failed, %zu deferred; the gateway throttled %zu calls; next poll at %s (every %s)%s",
                        listed, reclaimed, failed, u->last.deferred, u->last.throttled, when, every, extra);
        else if (n_fused)
                snprintf(
                        body, sizeof body,
                        "Share fuse tripped: %zu due sessions held back (more than %g%% of the live ones); %zu sessions listed, %zu reclaimed; next poll at %s (every %s)%s",
                        n_fused, u->config->fuse.max_share * 100, listed, reclaimed, when, every,
                        r->reload_failed ? "; the last reload failed, the previous policy runs" : "");
        else
                snprintf(body, sizeof body,
                         "%zu sessions listed, %zu reclaimed, %zu failed%s; next poll at %s (every %s)%s",
                         listed, reclaimed, failed, runner_dry_run(u) ? " (dry run)" : "", when, every,
                         extra);
        if (r->ha) {
                const char *leader = ha_leader(r->ha);

                /* Only the leader closes: say first which this is. */
                if (ha_role(r->ha) == HA_LEADER)
                        snprintf(role, sizeof role, "Leader (%s): ", ha_name(r->ha));
                else if (ha_role(r->ha) == HA_STANDBY)
                        snprintf(role, sizeof role,
                                 "Standby (%s; leader: %s), closing nothing: ", ha_name(r->ha),
                                 *leader ? leader : "unknown");
                else
                        snprintf(role, sizeof role,
                                 "etcd unreachable (%s), closing nothing until the election answers: ",
                                 ha_name(r->ha));
        }
        sd_notifyf(0, "STATUS=%s%s", role, body);
}

void reclaimer_write_metrics(struct reclaimer *r) {
        const struct metrics **ms;
        const char **names;
        int ret = -ENOMEM;

        if (!r->metrics_file || r->opt.mode == RECLAIMER_PLAN)
                return;
        ms = calloc(r->n_runners, sizeof *ms);
        names = calloc(r->n_runners, sizeof *names);
        if (ms && names) {
                for (size_t i = 0; i < r->n_runners; i++) {
                        notifier_update_metrics(r->runners[i].notify);
                        ms[i] = r->runners[i].metrics;
                        names[i] = runner_account(&r->runners[i]);
                }
                struct metrics_process proc = { .version = IVH_VERSION,
                                                .reload_ok = !r->reload_failed,
                                                .reload_success_s = (double) r->loaded_wall_ms / 1000.0,
                                                .leader = !r->ha ? -1 : ha_role(r->ha) == HA_LEADER };

                ret = metrics_write(&proc, ms, names, r->n_runners, r->metrics_file);
        }
        free(ms);
        free(names);
        if (ret < 0)
                log_warning("Failed to write metrics file %s: %s; retrying after the next cycle",
                            r->metrics_file, strerror(-ret));
        r->metrics_error = ret < 0 ? -ret : 0;
}
