/* The parts of one cycle and the object they share. Calls go one way only:
 *
 *   cycle.c         the lifecycle (start, stop, reload, end), dispatch and
 *                   the outcome of each close
 *     -> cycle-list.c    the list call(s); reports back through the function
 *                        cycle_list_start() is given, never by name
 *     -> cycle-decide.c  the decision: state sync, decide(), the jobs, and
 *                        every later question "may this close still go out?"
 *     -> cycle-io.c      sending a call, counting it, the log entries
 *
 * Not for other modules: they use cycle.h. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cycle.h"
#include "decide.h"
#include "log.h"
#include "reply.h"

enum outcome {
        OUTCOME_CLOSED,
        OUTCOME_ALREADY_CLOSED,
        OUTCOME_FAILED,
        OUTCOME_DRY_RUN,
        OUTCOME_SKIPPED,
};

/* A job moves QUEUED -> IN_FLIGHT -> DONE, and back from IN_FLIGHT to
 * QUEUED when the gateway throttles it. DONE is final. Only
 * job_set_state() (cycle.c) changes it, and keeps cycle->in_flight equal
 * to the number of jobs IN_FLIGHT. */
enum job_state {
        JOB_QUEUED,    /* waiting for its turn (again, after a throttle) */
        JOB_IN_FLIGHT, /* a statsession or closesession of it is under way */
        JOB_DONE,      /* counted in the result; nothing more is sent for it */
};

struct close_job {
        struct cycle *cycle;
        size_t index;                  /* of its session in cycle->list */
        const struct session *session; /* &cycle->list->items[index] */
        /* The policy that selects it in the latest decision; it belongs to a
         * configuration the runner keeps until the cycle is freed. */
        const struct policy *policy;
        uint64_t age_ms;
        enum job_state state;
        bool rechecked; /* a statsession re-check changed its status in the list */
        struct gateway_error close_err;
        unsigned requeues;
        int64_t sent_ms; /* when its last request went out */
        uint64_t seq;    /* the account's pace numbered it (throttle_take()) */
        /* What a statsession reply said about the stream, for the log. */
        bool has_stream_error;
        int stream_error_code;
        char stream_error[256];
};

/* Why a cycle sends nothing more; a stronger reason replaces a weaker one,
 * never the other way round. */
enum cycle_halt {
        HALT_NONE,
        HALT_GAVE_UP,  /* a pause outlasts poll_interval: the closes left wait for the next
                          cycle; the follow-up of a close in flight may still go */
        HALT_FENCED,   /* ha: the lease is not confirmed; the rest is left to the leader */
        HALT_STOPPING, /* cycle_stop(): not a single request more */
};

/* Told by cycle-list.c when the list call(s) have ended: c->list is set,
 * or c->res.list_failed (already logged). */
typedef void (*cycle_listed_fn)(struct cycle *c);

struct project_list {
        struct cycle *cycle;
        const char *endpoint;   /* listsessionofprojectid or listsessionofassetvk */
        const char *what;       /* "project" or "asset" */
        bool asset;             /* listsessionofassetvk: project_id is an asset key */
        const char *project_id; /* the project id or asset key, borrowed from the config */
        struct session_list *list;
};

struct cycle {
        struct cycle_env env;
        cycle_phase_fn phase_fn;
        void *userdata;
        enum cycle_phase phase;
        enum cycle_halt halt;
        int64_t last_progress_ms;

        /* The file whose policies decide: env.config, or the one reloaded
         * while the cycle runs (cycle_reconfigure()). */
        const struct config *in_force;
        bool reloaded;

        /* Listing (cycle-list.c). Per project and per asset
         * (gateway.project_ids, gateway.asset_vks): one request each. */
        cycle_listed_fn listed;
        struct project_list *projects;
        size_t n_projects, projects_pending;
        bool projects_failed;
        char projects_error[600];
        long projects_error_code, projects_retry_after_s;

        /* The decision (cycle-decide.c). The list is the cycle's knowledge:
         * a re-check's newer status replaces the listed one. */
        struct session_list *list;
        uint64_t *ages;                /* ages[i]: of list->items[i] */
        bool *sent;                    /* sent[i]: its closesession went out */
        int64_t decided_ms;            /* the retry table's clock for every decision */
        struct decide_result decision; /* the latest answer of decide() */
        bool decision_stale;           /* the list changed since: ask again before sending */

        /* The closes (cycle.c). */
        struct close_job *jobs;
        size_t n_jobs, next_job, in_flight;
        struct close_job **requeued; /* refused as too frequent: sent again after the pause */
        size_t n_requeued;
        unsigned long pace_changes; /* the throttle's cuts and undos already logged */
        bool auth_logged;
        ev_timer resume_timer; /* dispatch paused (a Retry-After, the pace) */
        bool round_wait;       /* ... or only waiting for a round trip's replies, at most until it fires */
        bool dispatching;
        struct cycle_result res;
};

/* cycle-io.c */

/* log_struct() with the cycle's account added to the fields. */
void cycle_log(struct cycle *c, int priority, const char *message_id, const struct log_field *fields,
               size_t n, const char *fmt, ...) __attribute__((format(printf, 6, 7)));

/* A response (or a resume) arrived: the watchdog sees progress. */
void cycle_note_progress(struct cycle *c);

/* Sends one call. Returns 0 or a negative errno. */
int cycle_post(struct cycle *c, const char *endpoint, const char *field, const char *value,
               http_done_fn done, void *userdata);

/* Sends a call about the job's session (closesession, statsession): paced,
 * numbered by the account's throttle, its time noted. Returns 0 or a
 * negative errno. */
int cycle_post_job(struct close_job *job, const char *endpoint, http_done_fn done);

/* Counts one API call in the metrics and, for a job's call (job not NULL),
 * its reply in the account's pace, unless it was throttled: job_throttled()
 * tells the pace that. */
void cycle_record_call(struct cycle *c, struct close_job *job, const char *endpoint,
                       const struct http_response *resp, int parsed, const struct gateway_error *err);

/* The account's credentials were refused: logged once per cycle. */
void cycle_auth_refused(struct cycle *c, const char *endpoint, const char *detail);

/* The reclaim entry of one job. */
void cycle_log_reclaim(struct close_job *job, enum outcome outcome, const char *detail);

/* The summary entry of the cycle (not for --plan). */
void cycle_log_summary(struct cycle *c);

/* A failed list (or a decision that could not be made): logged, and the
 * cycle decides nothing. */
void cycle_list_failed(struct cycle *c, const char *what, long code, long retry_after_s);

/* cycle-list.c */

/* Sends the list call(s); done is called once they have all ended. Returns
 * 0 when at least one request is under way (done comes later), or a
 * negative errno (done is never called). */
int cycle_list_start(struct cycle *c, cycle_listed_fn done);

/* cycle-decide.c */

/* The list is in: log its oddities, sync the state, decide, and make the
 * jobs (or, for --plan, keep the decision for plan.c). Returns 0 or
 * -ENOMEM (nothing is then closed). */
int cycle_decide(struct cycle *c);

/* Asks decide() again, with the file in force, the list as now known and
 * the closes already sent. Returns 0 or -ENOMEM (c->decision is then
 * unchanged and stale). */
int cycle_redecide(struct cycle *c);

/* Why the latest decision does not let the job's close go out; NULL when
 * it does. buf holds the text when one is made up. */
const char *cycle_refusal(const struct cycle *c, const struct close_job *job, char *buf, size_t n);
