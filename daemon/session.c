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
