#include "session.h"

#include <stdlib.h>
#include <string.h>

#include "util.h"

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
        char **owned[] = SESSION_OWNED_STRINGS(s);

        for (size_t i = 0; i < ELEMENTSOF(owned); i++)
                free(*owned[i]);
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

/* Whether the list says the owner of one kind (this_type: the CreateType
 * of a session made that way, 0 project, 1 asset): the entry and the call
 * agree on one, or the session was made the other way, as CreateType or a
 * listing of the other kind says (unless CreateType says this kind). Entry
 * and call that disagree say nothing. */
static bool owner_known(const char *entry, const char *call, const char *other_call, int create_type,
                        int this_type) {
        bool conflict;

        if (owner(entry, call, &conflict))
                return true;
        return !conflict && (create_type == 1 - this_type || (other_call && create_type != this_type));
}

bool session_project_known(const struct session *s) {
        return owner_known(s->project_id, s->listed_project_id, s->listed_asset_vk, s->create_type, 0);
}

bool session_asset_known(const struct session *s) {
        return owner_known(s->asset_vk, s->listed_asset_vk, s->listed_project_id, s->create_type, 1);
}
