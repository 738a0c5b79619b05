#include "session.h"

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
