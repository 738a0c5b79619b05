/* The data model: a listed session and a list of them. No I/O here; the
 * gateway module fills these in and frees them. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

struct cJSON;

enum session_status {
        SESSION_IN_PROGRESS = 1,
        SESSION_CLOSED = 2,
        SESSION_PREPARING = 3,
        SESSION_STREAM_FAILED = 4,
};

enum tristate { TRISTATE_UNKNOWN = -1, TRISTATE_FALSE = 0, TRISTATE_TRUE = 1 };

struct session {
        char *session_id;
        char *user_id;
        int status;            /* SessionStatus as sent; other values are kept and never acted on */
        enum tristate started; /* IsSessionStarted; unknown when absent */
        /* The five fields of the Chinese listsessionofuin page (product 1240,
         * page 100393), each optional: NULL (or -1) when the entry does not
         * carry it. A session listed by listsessionofprojectid has the
         * project of the call when its entry does not say. */
        char *virtualman_type; /* VirtualmanType */
        int create_type;       /* CreateType: 0 made from a project, 1 from a personal asset; -1 unknown */
        char *virtualman_key;  /* VirtualmanKey */
        char *asset_vk;        /* AssetVirtualmanKey */
        char *project_id;      /* VirtualmanProjectId */
        /* The project or asset of the list call that listed the session
         * (gateway.project_ids, gateway.asset_vks): borrowed from the
         * configuration the cycle runs with; NULL for listsessionofuin. */
        const char *listed_project_id, *listed_asset_vk;
};

/* The session's project: as its entry says, else as the list call that
 * listed it says; NULL when unknown, or when the two disagree. */
const char *session_project(const struct session *s);

/* The session's personal asset (AssetVirtualmanKey), likewise. */
const char *session_asset(const struct session *s);

/* Whether the list says which project the session is in: it names one
 * (and the list call does not name another), or CreateType 1 or a listing
 * per asset says the session was made from a personal asset, which is in
 * none. */
bool session_project_known(const struct session *s);

/* Whether the list says which asset the session was made from: it names
 * one (and the list call does not name another), or CreateType 0 or a
 * listing per project says it was made from a project. */
bool session_asset_known(const struct session *s);

/* The addresses of the strings a session owns (each NULL when absent), as
 * an array initializer: the one list that copying and freeing share. */
#define SESSION_OWNED_STRINGS(s)                                                              \
        {                                                                                     \
                &(s)->session_id, &(s)->user_id, &(s)->virtualman_type, &(s)->virtualman_key, \
                        &(s)->asset_vk, &(s)->project_id                                      \
        }

/* Frees what the session owns (its strings), not the session itself. */
void session_done(struct session *s);

/* A listed entry that is never acted on: its SessionId or UserId is not a
 * usable id (see gateway_id_problem()). */
struct malformed_entry {
        char *raw_id;       /* the SessionId as parsed (owned by the list), or NULL */
        size_t index;       /* its place in Sessions[], for an entry without a SessionId */
        const char *reason; /* static text */
        bool live;          /* listed with SessionStatus 1 or 3: it holds a slot */
};

/* A list owns its strings: the items' ids and the malformed entries'
 * raw ids (session_list_free() frees them). */
struct session_list {
        struct session *items;
        size_t n, items_cap;
        size_t n_duplicates; /* identical entries dropped because their SessionId came twice */
        /* Entries never acted on: an id is hostile, or one SessionId is
         * listed with conflicting fields (or beside a hostile entry). They
         * hold a slot on the account, so they count as live for the share
         * fuse. */
        struct malformed_entry *malformed;
        size_t n_malformed, malformed_cap;
};

const char *session_status_to_string(int status);

/* The entry's SessionId as it can be logged: escaped (\xNN) and cut to
 * fit buf, or "Sessions[N]" when it has none. Returns buf. */
char *malformed_entry_id(const struct malformed_entry *m, char *buf, size_t n);
