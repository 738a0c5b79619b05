#include "session.h"

#include <stdlib.h>
#include <string.h>

const char *session_status_to_string(int status) {
        switch (status) {
        case SESSION_IN_PROGRESS:
                return "in_progress";
        case SESSION_CLOSED:
                return "closed";
        case SESSION_PREPARING:
                return "preparing";
        case SESSION_STREAM_FAILED:
                return "stream_failed";
        default:
                return "unknown";
        }
}

void session_done(struct session *s) {
        free(s->session_id);
        free(s->user_id);
        free(s->virtualman_type);
        free(s->virtualman_key);
        free(s->asset_vk);
        free(s->project_id);
}

/* What the entry and the list call say of one owner: NULL when neither
 * says, or when they disagree (then *conflict is set). */
static const char *owner(const char *entry, const char *call, bool *conflict) {
        *conflict = entry && call && strcmp(entry, call) != 0;
        if (*conflict)
                return NULL;
        return entry ? entry : call;
}

const char *session_project(const struct session *s) {
        bool conflict;

        return owner(s->project_id, s->listed_project_id, &conflict);
}

const char *session_asset(const struct session *s) {
        bool conflict;

        return owner(s->asset_vk, s->listed_asset_vk, &conflict);
}

/* A session listed per asset, or made from one (CreateType 1), is in no
 * project; one whose entry and list call disagree is in no known one. */
bool session_project_known(const struct session *s) {
        bool conflict;

        if (owner(s->project_id, s->listed_project_id, &conflict))
                return true;
        return !conflict && !s->project_id &&
               (s->create_type == 1 || (s->listed_asset_vk && s->create_type != 0));
}

bool session_asset_known(const struct session *s) {
        bool conflict;

        if (owner(s->asset_vk, s->listed_asset_vk, &conflict))
                return true;
        return !conflict && !s->asset_vk &&
               (s->create_type == 0 || (s->listed_project_id && s->create_type != 1));
}
