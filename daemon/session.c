#include "session.h"

#include <stdlib.h>

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

const char *session_project(const struct session *s) {
        return s->project_id ? s->project_id : s->listed_project_id;
}

const char *session_asset(const struct session *s) {
        return s->asset_vk ? s->asset_vk : s->listed_asset_vk;
}

bool session_project_known(const struct session *s) {
        return session_project(s) || s->create_type == 1;
}

bool session_asset_known(const struct session *s) {
        return session_asset(s) || s->create_type == 0;
}
