/* The IVH session-manager API: request signing, request bodies and response
 * parsing. No I/O and no loop code lives here. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "session.h"

#define GATEWAY_PATH_PREFIX   "/v2/ivh/sessionmanager/sessionmanagerservice/"
#define GATEWAY_REQID_LEN     32
#define GATEWAY_SIGNATURE_LEN 44 /* base64 of a 32-byte HMAC-SHA256 */

/* The longest SessionId or UserId acted on, in bytes. The documentation
 * shows 32-character hex session ids; anything this long is not an id. */
#define GATEWAY_ID_MAX 256

/* A list reply with more JSON values than this is refused before it is
 * parsed: every value costs a cJSON node (about 80 bytes), so this bounds
 * the memory one reply can take (about 20 MB) whatever its shape. A real
 * session entry has fewer than 12 values, so this is about 20,000 sessions
 * per list call. */
#define GATEWAY_LIST_MAX_VALUES 250000

/* What a response said when it was not a success. */
enum gateway_failure {
        GATEWAY_OK = 0,
        GATEWAY_API_ERROR,    /* well-formed, Header.Code != 0 */
        GATEWAY_BAD_RESPONSE, /* not the documented shape */
};

struct gateway_error {
        enum gateway_failure kind;
        long code;         /* Header.Code for GATEWAY_API_ERROR */
        char message[256]; /* Header.Message, or what was wrong with the shape */
};

struct stat_result {
        int status;
        enum tristate started;
        bool has_error; /* a non-zero ErrorCode: why the stream failed or closed */
        int error_code;
        char error_message[256]; /* ErrorMessage, escaped */
};

/* base64(HMAC-SHA256(token, "appkey=<appkey>&timestamp=<timestamp>")).
 * Returns 0 or -EIO. */
int gateway_signature(const char *appkey, const char *token, const char *timestamp,
                      char ret_signature[GATEWAY_SIGNATURE_LEN + 1]);

/* The signature depends only on appkey, token and the second: requests made
 * in the same second share it. A signer caches the signed query string of
 * the current second; reset it whenever the appkey or token changes. */
struct gateway_signer {
        time_t timestamp; /* of query; -1 when empty */
        char query[384];  /* appkey=..&timestamp=..&signature=<url-escaped> */
};

void gateway_signer_reset(struct gateway_signer *s);

/* <base><prefix><endpoint>?appkey=..&timestamp=..&signature=<url-escaped>.
 * signer may be NULL (no caching). */
int gateway_build_url(const char *base, const char *endpoint, const char *appkey, const char *token,
                      time_t now, struct gateway_signer *signer, char **ret_url);

/* A fresh request id: 32 lowercase hex digits from getrandom(). */
int gateway_new_reqid(char ret[GATEWAY_REQID_LEN + 1]);

/* {"Header":{},"Payload":{"ReqId":..., FIELD: VALUE}}, FIELD being "SessionId",
 * "VirtualmanProjectId" or "AssetVirtualmanKey"; both NULL: ReqId only. */
int gateway_build_body(const char *reqid, const char *field, const char *value, char **ret_body);

/* NULL when s (len bytes) may be acted on as a SessionId or UserId;
 * otherwise why not: it contains NUL or another control character (C0, DEL,
 * C1, U+2028, U+2029), is not valid UTF-8, or is longer than
 * GATEWAY_ID_MAX bytes. An empty UserId is allowed. */
const char *gateway_id_problem(const char *s, size_t len);

/* Parses a list reply (any of the three list calls). Returns 0 with
 * *ret_list, -EPROTO with err filled in for an API error or a reply whose
 * envelope is wrong (not an object, no integer Header.Code, no Payload
 * object, Sessions not a list), or -ENOMEM. Entries that do not have the
 * documented shape, or whose ids are hostile, are skipped into
 * l->malformed and never acted on. */
int gateway_parse_list(const char *body, size_t len, struct session_list **ret_list,
                       struct gateway_error *err);

/* The same, rewriting body in place (its length unchanged) where the text
 * must be made safe for the parser, rather than working on a copy: a 16 MiB
 * reply then costs no second 16 MiB. */
int gateway_parse_list_in_place(char *body, size_t len, struct session_list **ret_list,
                                struct gateway_error *err);

/* Parses a closesession (or any payload-less) reply: 0 on Code 0, -EPROTO otherwise. */
int gateway_parse_ack(const char *body, size_t len, struct gateway_error *err);

/* Parses a statsession reply. */
int gateway_parse_stat(const char *body, size_t len, struct stat_result *ret, struct gateway_error *err);

void session_list_free(struct session_list *l);

/* Moves the sessions of n lists (one per project) into one, dropping
 * SessionIds that appear more than once. The inputs are consumed, also on
 * failure. Returns 0 or -ENOMEM. */
int session_list_merge(struct session_list **lists, size_t n, struct session_list **ret);
