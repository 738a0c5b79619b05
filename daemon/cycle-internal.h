/* What the two halves of a cycle share: cycle.c (the closes: dispatch,
 * re-checks, throttles, outcomes, the summary) and cycle-list.c (the list
 * calls, the state sync and the decide step). Not for other modules. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cycle.h"
#include "log.h"
#include "reply.h"

enum outcome {
        OUTCOME_CLOSED,
        OUTCOME_ALREADY_CLOSED,
        OUTCOME_FAILED,
        OUTCOME_DRY_RUN,
        OUTCOME_SKIPPED,
};

struct close_job {
        struct cycle *cycle;
        const struct session *session; /* borrowed from cycle->list */
        const struct policy *policy;   /* borrowed from the config */
        uint64_t age_ms;
        struct gateway_error close_err;
        bool dispatched; /* counted in cycle->in_flight until finished */
        bool finished;   /* its outcome is logged */
        unsigned requeues;
        int64_t sent_ms; /* when its last request went out */
        /* What a statsession reply said about the stream, for the log. */
        bool has_stream_error;
        int stream_error_code;
        char stream_error[256];
};

struct cycle {
        struct cycle_env env;
        cycle_phase_fn phase_fn;
        void *userdata;
        enum cycle_phase phase;
        int64_t last_progress_ms;
        /* A configuration reloaded while this cycle runs: closes not yet sent
         * must still be selected by it (see cycle_reconfigure()). */
        const struct config *reloaded;
        struct session_list *list;
        struct close_job *jobs;
        size_t n_jobs, next_job, in_flight;
        /* Closes refused as too frequent, to send again after the pause. */
        struct close_job **requeued;
        size_t n_requeued;
        int64_t last_reaction_ms; /* the account last slowed down (a throttle) */
        bool auth_logged;
        ev_timer resume_timer; /* dispatch paused by a Retry-After */
        bool stopping;
        bool gave_up; /* a pause outlasts poll_interval: the closes left wait for the next cycle */
        bool fenced;  /* ha: the lease was not confirmed in time; the rest is left to the leader */
        bool dispatching;
        struct cycle_result res;
        /* Listing per project and per asset (gateway.project_ids,
         * gateway.asset_vks): one request each. */
        struct project_list *projects;
        size_t n_projects, projects_pending;
        bool projects_failed;
        char projects_error[600];
        long projects_error_code, projects_retry_after_s;
};

struct project_list {
        struct cycle *cycle;
        const char *endpoint;   /* listsessionofprojectid or listsessionofassetvk */
        const char *what;       /* "project" or "asset" */
        const char *project_id; /* the project id or asset key, borrowed from the config */
        struct session_list *list;
};

/* log_struct() with the cycle's account added to the fields. */
void cycle_log(struct cycle *c, int priority, const char *message_id, const struct log_field *fields,
               size_t n, const char *fmt, ...) __attribute__((format(printf, 6, 7)));

/* A response (or a resume) arrived: the watchdog sees progress. */
void cycle_progress(struct cycle *c);

/* Sends one call (see cycle.c). Returns 0 or a negative errno. */
int cycle_post(struct cycle *c, const char *endpoint, const char *field, const char *value,
               http_done_fn done, void *userdata);

/* Counts one API call in the metrics and the account's pacing. */
void cycle_record_call(struct cycle *c, const char *endpoint, const struct http_response *resp, int parsed,
                       const struct gateway_error *err);

/* The account's credentials were refused: logged once per cycle. */
void cycle_auth_refused(struct cycle *c, const char *endpoint, const char *detail);

/* The reclaim entry of one job. */
void cycle_log_reclaim(struct close_job *job, enum outcome outcome, const char *detail);

/* Starts closes up to the window; ends the cycle when nothing is left. */
void cycle_dispatch(struct cycle *c);

/* Logs the summary and enters CYCLE_ENDED. */
void cycle_end(struct cycle *c);

/* Sends the list call(s). Returns 0 when at least one request is under way. */
int cycle_start_listing(struct cycle *c);
