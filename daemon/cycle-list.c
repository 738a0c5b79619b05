/* The list half of a cycle: listsessionofuin, or one list call per
 * configured project and asset, merged into one list. Tells the cycle
 * through the function it was given, and calls only cycle-io.c. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "cycle-internal.h"
#include "util.h"

/* Reads one list reply into *ret. Returns 0, or <0 with buf saying why,
 * *ret_code the API code (0 when none); a throttle or an auth refusal is
 * recorded for the account. */
static int read_list(struct cycle *c, const char *endpoint, const struct http_response *resp,
                     struct session_list **ret, char *buf, size_t n, long *ret_code) {
        struct gateway_error err;
        enum verdict v = reply_http_verdict(resp);
        int r = -EIO;

        cycle_note_progress(c);
        c->res.list_bytes += resp->body_len;
        memset(&err, 0, sizeof err);
        *ret_code = 0;
        if (v == VERDICT_OK) {
                r = gateway_parse_list_in_place(resp->body, resp->body_len, ret, &err);
                v = reply_api_verdict(r, &err);
                /* The list has strings of its own: the reply goes now, not
                 * after the cycle has decided. */
                http_response_drop_body(resp);
        }
        cycle_record_call(c, NULL, endpoint, resp, r, &err);
        if (r >= 0)
                return 0;
        if (!reply_transport_failed(resp, buf, n))
                reply_describe_parse_error(r, &err, buf, n);
        if (r != -ENOMEM && err.kind == GATEWAY_API_ERROR)
                *ret_code = err.code;
        /* A throttled list fails the cycle; the next poll waits for its
         * Retry-After (see the reclaimer). It teaches the closes nothing: a
         * list that then succeeds shows the gateway accepts calls again. */
        if (v == VERDICT_THROTTLED)
                c->res.throttled++;
        else if (v == VERDICT_AUTH)
                cycle_auth_refused(c, endpoint, buf);
        return r < 0 ? r : -EIO;
}

static void on_list_reply(const struct http_response *resp, void *userdata) {
        struct cycle *c = userdata;
        char buf[512];
        long code;

        if (read_list(c, "listsessionofuin", resp, &c->list, buf, sizeof buf, &code) < 0)
                cycle_list_failed(c, buf, code, resp->retry_after_s);
        c->listed(c);
}

/* One project's list arrived. The cycle goes on once all have; if any
 * failed, it decides nothing, like a failed listsessionofuin. */
static void on_project_list_reply(const struct http_response *resp, void *userdata) {
        struct project_list *pl = userdata;
        struct cycle *c = pl->cycle;
        char buf[512];
        long code;
        int ret;

        ret = read_list(c, pl->endpoint, resp, &pl->list, buf, sizeof buf, &code);
        /* The project (asset) of every session this call listed is known
         * from the call, whatever its entry says or omits. */
        for (size_t i = 0; ret >= 0 && i < pl->list->n; i++) {
                if (pl->asset)
                        pl->list->items[i].listed_asset_vk = pl->project_id;
                else
                        pl->list->items[i].listed_project_id = pl->project_id;
        }
        if (ret < 0 && !c->projects_failed) {
                c->projects_failed = true;
                snprintf(c->projects_error, sizeof c->projects_error, "%s %s: %s", pl->what, pl->project_id,
                         buf);
                c->projects_error_code = code;
                c->projects_retry_after_s = resp->retry_after_s;
        }
        if (--c->projects_pending > 0)
                return;
        if (!c->projects_failed) {
                struct session_list **lists = malloc(c->n_projects * sizeof *lists);

                if (lists) {
                        for (size_t i = 0; i < c->n_projects; i++) {
                                lists[i] = c->projects[i].list;
                                c->projects[i].list = NULL;
                        }
                        ret = session_list_merge(lists, c->n_projects, &c->list);
                        free(lists);
                } else
                        ret = -ENOMEM;
                if (ret < 0) {
                        c->projects_failed = true;
                        snprintf(c->projects_error, sizeof c->projects_error,
                                 "out of memory while merging the project lists");
                }
        }
        if (c->projects_failed)
                cycle_list_failed(c, c->projects_error, c->projects_error_code, c->projects_retry_after_s);
        c->listed(c);
}

int cycle_list_start(struct cycle *c, cycle_listed_fn done) {
        const struct glob_list *projects = &c->env.config->gateway.project_ids;
        const struct glob_list *assets = &c->env.config->gateway.asset_vks;
        size_t n = projects->n + assets->n;
        int r = 0;

        c->listed = done;
        if (n == 0)
                return cycle_post(c, "listsessionofuin", NULL, NULL, on_list_reply, c);
        c->projects = calloc(n, sizeof *c->projects);
        if (!c->projects)
                return -ENOMEM;
        c->n_projects = n;
        for (size_t i = 0; i < n; i++) {
                bool asset = i >= projects->n;
                struct project_list *pl = &c->projects[i];

                *pl = (struct project_list){
                        .cycle = c,
                        .endpoint = asset ? "listsessionofassetvk" : "listsessionofprojectid",
                        .what = asset ? "asset" : "project",
                        .asset = asset,
                        .project_id = asset ? assets->items[i - projects->n] : projects->items[i],
                };
                r = cycle_post(c, pl->endpoint, asset ? "AssetVirtualmanKey" : "VirtualmanProjectId",
                               pl->project_id, on_project_list_reply, pl);
                if (r < 0)
                        break;
                c->projects_pending++;
        }
        if (r < 0 && c->projects_pending > 0) {
                /* Some are under way: let them end, then fail the cycle. */
                c->projects_failed = true;
                snprintf(c->projects_error, sizeof c->projects_error, "cannot start request: %s",
                         strerror(-r));
                return 0;
        }
        return r;
}
