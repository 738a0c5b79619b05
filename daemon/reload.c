/* SIGHUP: the file is loaded and checked again; a valid one is handed to
 * the runners, an invalid one changes nothing. */
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-daemon.h>

#include "reclaimer-internal.h"

#include "log.h"
#include "preflight.h"
#include "util.h"

/* Keeps the running policy for the unit's reload check (preflight.h). */
void reclaimer_save_running(const struct config *top) {
        int ret = preflight_save_running(top);

        if (ret < 0)
                log_warning(
                        "Failed to keep a copy of the running policy in $STATE_DIRECTORY: %s; a reload that needs a restart is then reported by the daemon only",
                        strerror(-ret));
}

static void log_lines(int priority, const char *text) {
        while (text && *text) {
                const char *eol = strchr(text, '\n');
                int len = eol ? (int) (eol - text) : (int) strlen(text);

                log_full(priority, "%.*s", len, text);
                text += len + (eol ? 1 : 0);
        }
}

/* SIGHUP: load the file again. A valid file takes effect from each account's
 * next cycle; on any error the running configuration stays, untouched. */
void reclaimer_reload(struct reclaimer *r) {
        struct config *top = NULL;
        struct credentials **creds = NULL, **secrets = NULL;
        struct error err = { 0 };
        char *metrics_file = NULL;
        const char *what;
        bool loaded = false;
        size_t n;
        int ret;

        sd_notify(0, "RELOADING=1");
        log_info("Reloading %s", r->top->path);
        ret = config_load(r->top->path, &top, &err);
        if (ret < 0) {
                log_lines(LOG_ERR, error_message(&err));
                log_error("Reload failed: %s is not valid; the previous configuration stays in effect",
                          r->top->path);
                goto done;
        }
        /* The top level's own keys that need a restart (ha:), against the
         * top level loaded at the start: r->top stays that one, since a
         * reload that would change what it holds is refused. */
        what = config_restart_needed(top, r->top);
        if (what && strcmp(what, "ha") == 0) {
                log_error(
                        "Reload failed: the ha: section changed, which needs a restart; the previous configuration stays in effect");
                goto done;
        }
        n = top->n_accounts;
        if (n != r->n_runners) {
                log_error(
                        "Reload failed: the number of accounts changed, which needs a restart; the previous configuration stays in effect");
                goto done;
        }
        for (size_t i = 0; i < n; i++) {
                /* The keys flagged as needing a restart (state_file, an
                 * account's name, ha). */
                what = config_restart_needed(top->accounts[i], r->runners[i].config);
                if (what) {
                        log_error(
                                "Reload failed: %s changed (account %s), which needs a restart; the previous configuration stays in effect",
                                what, config_account_name(r->runners[i].config));
                        goto done;
                }
        }
        creds = calloc(n, sizeof *creds);
        secrets = calloc(n, sizeof *secrets);
        if (!creds || !secrets || (top->metrics_file && !(metrics_file = strdup(top->metrics_file)))) {
                log_error("Reload failed: out of memory; the previous configuration stays in effect");
                goto done;
        }
        for (size_t i = 0; i < n; i++) {
                ret = runner_account_token(top->accounts[i], r->runners[i].creds, &creds[i], &err);
                if (ret >= 0)
                        ret = runner_notify_secret(r, top->accounts[i], &secrets[i], &err);
                if (ret < 0) {
                        log_error("Reload failed: %s; the previous configuration stays in effect",
                                  error_message(&err));
                        goto done;
                }
        }

        /* Valid. The unit's reload check compares with this copy. */
        reclaimer_save_running(top);
        /* Hand each account its new configuration. */
        for (size_t i = 0; i < n; i++) {
                struct runner *u = &r->runners[i];
                struct config *old_pending = u->pending_config, **retired;
                struct credentials *old_creds = u->pending_creds, *old_secret = u->pending_notify_secret;

                u->pending_notify_secret = secrets[i];
                secrets[i] = NULL;
                u->pending_config = top->accounts[i];
                top->accounts[i] = NULL;
                u->pending_creds = creds[i];
                creds[i] = NULL;
                if (u->cycle) {
                        /* The running cycle checks its unsent closes against
                         * the new file now; the rest waits for its end. The
                         * cycle is told before the older pending file goes. */
                        cycle_reconfigure(u->cycle, u->pending_config);
                        runner_log(
                                u, LOG_INFO,
                                "Reloaded; closes not yet sent are checked against the new file now, the rest takes effect when the running cycle ends");
                } else if (u->run_state == RUNNER_IDLE) {
                        runner_apply_pending(u);
                        /* A new poll_interval counts from the start of the last cycle. */
                        if (ev_is_active(&u->poll_timer))
                                runner_schedule_next(u, u->last_cycle_started_ms, 0, false);
                }
                /* A running cycle may still point into the older pending
                 * file: it is freed with the cycle. */
                if (u->cycle && old_pending) {
                        retired = reallocarray(u->retired, u->n_retired + 1, sizeof *retired);
                        if (retired) {
                                u->retired = retired;
                                u->retired[u->n_retired++] = old_pending;
                        } else
                                runner_log(
                                        u, LOG_WARNING,
                                        "Out of memory keeping the previous reloaded file for the running cycle; it is kept for the life of the process");
                        old_pending = NULL;
                }
                config_free(old_pending);
                credentials_free(old_creds);
                credentials_free(old_secret);
        }
        free(r->metrics_file);
        r->metrics_file = metrics_file;
        metrics_file = NULL;
        loaded = true;
done:
        r->reload_failed = !loaded;
        if (loaded)
                r->loaded_wall_ms = now_wall_ms();
        /* The reload gauges and STATUS= are current at once, not only after
         * the next cycle. */
        reclaimer_write_metrics(r);
        if (r->cycles > 0 && r->opt.mode == RECLAIMER_DAEMON)
                reclaimer_notify_status(r, &r->runners[0]);
        for (size_t i = 0; creds && i < r->n_runners; i++)
                credentials_free(creds[i]);
        for (size_t i = 0; secrets && i < r->n_runners; i++)
                credentials_free(secrets[i]);
        free(creds);
        free(secrets);
        free(metrics_file);
        config_free(top);
        error_done(&err);
        sd_notify(0, "READY=1");
}
