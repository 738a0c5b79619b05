#include "reply.h"

#include <errno.h>
#include <stdio.h>

#include "util.h"

#define RETRY_AFTER_CAP_MS (5 * 60 * 1000)

uint64_t reply_retry_after_cap_ms(uint64_t poll_interval_ms) {
        return poll_interval_ms > RETRY_AFTER_CAP_MS ? poll_interval_ms : RETRY_AFTER_CAP_MS;
}

bool reply_transport_failed(const struct http_response *resp, char *buf, size_t n) {
        if (resp->result != CURLE_OK) {
                snprintf(buf, n, "%s", resp->error);
                return true;
        }
        if (resp->status != 200) {
                if (resp->retry_after_s > 0)
                        snprintf(buf, n, "HTTP status %ld (Retry-After %lds)", resp->status,
                                 resp->retry_after_s);
                else
                        snprintf(buf, n, "HTTP status %ld", resp->status);
                return true;
        }
        return false;
}

const char *reply_code_name(long code) {
        /* The published codes (Tencent's "Error Code Description" page,
         * product 1211 page 62122, product 1240 page 100406), as listed
         * there: matched exactly, sign included. */
        static const struct {
                long code;
                const char *name;
        } names[] = {
                { 100001, "request parameter error" },
                { 100005, "unauthorized operation" },
                { 100008, "concurrency limit exceeded" },
                { 100012, "request too frequent" },
                { 100014, "concurrency quota insufficient or expired" },
                { 100015, "avatar expired" },
                { 110013, "session already closed" },
                { 110014, "session not ready" },
                { 110015, "drive command sent at the wrong time" },
                { 110016, "drive command on a session that has not started" },
                { 110018, "session does not exist" },
                { 110021, "TRTC account in arrears" },
                { 110022, "session closed because another was created with the same UserId" },
                { -101000, "internal system error" },
                { -101001, "digital human compute resources insufficient" },
                { -101002, "image download failed" },
        };

        for (size_t i = 0; i < ELEMENTSOF(names); i++)
                if (names[i].code == code)
                        return names[i].name;
        return NULL;
}

void reply_describe_parse_error(int r, const struct gateway_error *err, char *buf, size_t n) {
        const char *name;

        if (r == -ENOMEM)
                snprintf(buf, n, "out of memory while parsing the session list");
        else if (err->kind != GATEWAY_API_ERROR)
                snprintf(buf, n, "malformed response: %s", err->message);
        else if ((name = reply_code_name(err->code)))
                snprintf(buf, n, "API error: %s (code %ld: %s)", err->message, err->code, name);
        else
                snprintf(buf, n, "API error: %s (code %ld)", err->message, err->code);
}

enum verdict reply_http_verdict(const struct http_response *resp) {
        if (resp->result != CURLE_OK)
                return VERDICT_FAILED;
        if (resp->status == 401 || resp->status == 403)
                return VERDICT_AUTH;
        if (resp->status == 429 || resp->status == 503)
                return VERDICT_THROTTLED;
        return resp->status == 200 ? VERDICT_OK : VERDICT_FAILED;
}

bool reply_teaches_pace(const struct http_response *resp) {
        return resp->status != 503;
}

enum verdict reply_api_verdict(int parsed, const struct gateway_error *err) {
        if (parsed >= 0)
                return VERDICT_OK;
        if (parsed == -ENOMEM || err->kind != GATEWAY_API_ERROR)
                return VERDICT_FAILED;
        switch (err->code) {
        case CODE_TOO_FREQUENT:
                return VERDICT_THROTTLED;
        case CODE_UNAUTHORIZED:
                return VERDICT_AUTH;
        case CODE_ALREADY_CLOSED:
        case CODE_NO_SESSION:
        case CODE_REPLACED:
                return VERDICT_GONE;
        default:
                return VERDICT_FAILED;
        }
}
