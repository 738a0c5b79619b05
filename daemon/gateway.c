#include "gateway.h"

#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "gateway-internal.h"
#include "json.h"
#include "util.h"

int gateway_signature(const char *appkey, const char *token, const char *timestamp,
                      char ret_signature[GATEWAY_SIGNATURE_LEN + 1]) {
        unsigned char md[EVP_MAX_MD_SIZE];
        unsigned int md_len = 0;
        char msg[512];
        int n;

        /* The signed string is every query parameter but the signature, sorted
         * by name: appkey < timestamp. */
        n = snprintf(msg, sizeof msg, "appkey=%s&timestamp=%s", appkey, timestamp);
        if (n < 0 || (size_t) n >= sizeof msg)
                return -EINVAL;
        if (!HMAC(EVP_sha256(), token, (int) strlen(token), (const unsigned char *) msg, (size_t) n, md,
                  &md_len) ||
            md_len != 32)
                return -EIO;
        if (EVP_EncodeBlock((unsigned char *) ret_signature, md, (int) md_len) != GATEWAY_SIGNATURE_LEN)
                return -EIO;
        explicit_bzero(md, sizeof md);
        return 0;
}

void gateway_signer_reset(struct gateway_signer *s) {
        explicit_bzero(s, sizeof *s);
        s->timestamp = -1;
}

static int sign_query(const char *appkey, const char *token, time_t now, char *buf, size_t size) {
        char ts[32], sig[GATEWAY_SIGNATURE_LEN + 1];
        char *escaped;
        int r, n;

        snprintf(ts, sizeof ts, "%lld", (long long) now);
        r = gateway_signature(appkey, token, ts, sig);
        if (r < 0)
                return r;
        escaped = curl_easy_escape(NULL, sig, 0);
        if (!escaped)
                return -ENOMEM;
        n = snprintf(buf, size, "appkey=%s&timestamp=%s&signature=%s", appkey, ts, escaped);
        curl_free(escaped);
        return n < 0 || (size_t) n >= size ? -ENAMETOOLONG : 0;
}

int gateway_build_url(const char *base, const char *endpoint, const char *appkey, const char *token,
                      time_t now, struct gateway_signer *signer, char **ret_url) {
        struct gateway_signer local;
        char *url = NULL;
        int r;

        if (!signer) {
                gateway_signer_reset(&local);
                signer = &local;
        }
        if (signer->timestamp != now) {
                r = sign_query(appkey, token, now, signer->query, sizeof signer->query);
                if (r < 0) {
                        gateway_signer_reset(signer);
                        return r;
                }
                signer->timestamp = now;
        }
        if (asprintf(&url, "%s" GATEWAY_PATH_PREFIX "%s?%s", base, endpoint, signer->query) < 0)
                url = NULL;
        if (signer == &local)
                gateway_signer_reset(&local);
        if (!url)
                return -ENOMEM;
        *ret_url = url;
        return 0;
}

int gateway_new_reqid(char ret[GATEWAY_REQID_LEN + 1]) {
        static const char hex[] = "0123456789abcdef";
        /* One getrandom() call serves 256 request ids. */
        static unsigned char pool[4096];
        static size_t pool_left;
        const unsigned char *raw;

        if (pool_left < GATEWAY_REQID_LEN / 2) {
                size_t got = 0;

                while (got < sizeof pool) {
                        ssize_t n = getrandom(pool + got, sizeof pool - got, 0);
                        if (n < 0) {
                                if (errno == EINTR)
                                        continue;
                                return -errno;
                        }
                        got += (size_t) n;
                }
                pool_left = sizeof pool;
        }
        raw = pool + sizeof pool - pool_left;
        pool_left -= GATEWAY_REQID_LEN / 2;
        for (size_t i = 0; i < GATEWAY_REQID_LEN / 2; i++) {
                ret[2 * i] = hex[raw[i] >> 4];
                ret[2 * i + 1] = hex[raw[i] & 0xf];
        }
        ret[GATEWAY_REQID_LEN] = '\0';
        return 0;
}

int gateway_build_body(const char *reqid, const char *field, const char *value, char **ret_body) {
        cJSON *root = cJSON_CreateObject(), *payload;
        char *body = NULL;

        if (!root)
                return -ENOMEM;
        if (!cJSON_AddObjectToObject(root, "Header"))
                goto out;
        payload = cJSON_AddObjectToObject(root, "Payload");
        if (!payload || !cJSON_AddStringToObject(payload, "ReqId", reqid))
                goto out;
        if (field && value && !cJSON_AddStringToObject(payload, field, value))
                goto out;
        body = cJSON_PrintUnformatted(root);
out:
        cJSON_Delete(root);
        if (!body)
                return -ENOMEM;
        *ret_body = body;
        return 0;
}

int gateway_fail(struct gateway_error *err, enum gateway_failure kind, const char *fmt, ...) {
        va_list ap;

        err->kind = kind;
        va_start(ap, fmt);
        vsnprintf(err->message, sizeof err->message, fmt, ap);
        va_end(ap);
        return -EPROTO;
}

/* Checks the envelope. On Code 0 returns 0 and hands over the parsed tree. */
int gateway_parse_envelope(const char *body, size_t len, cJSON **ret_root, struct gateway_error *err) {
        cJSON *root, *header, *code, *message;
        int r;

        memset(err, 0, sizeof *err);
        root = json_parse_exact(body, len);
        if (!root)
                return gateway_fail(err, GATEWAY_BAD_RESPONSE, "response is not valid JSON");
        header = cJSON_GetObjectItemCaseSensitive(root, "Header");
        if (!cJSON_IsObject(root) || !cJSON_IsObject(header)) {
                r = gateway_fail(err, GATEWAY_BAD_RESPONSE, "response has no Header object");
                goto bad;
        }
        if (json_key_repeats(root, "Header") || json_key_repeats(root, "Payload") ||
            json_key_repeats(header, "Code") || json_key_repeats(header, "Message")) {
                r = gateway_fail(err, GATEWAY_BAD_RESPONSE,
                                 "the response gives Header, Payload or Header.Code twice");
                goto bad;
        }
        code = cJSON_GetObjectItemCaseSensitive(header, "Code");
        if (!cJSON_IsNumber(code) || !isfinite(code->valuedouble) ||
            code->valuedouble != floor(code->valuedouble)) {
                r = gateway_fail(err, GATEWAY_BAD_RESPONSE, "Header.Code is not an integer");
                goto bad;
        }
        if (code->valuedouble != 0) {
                message = cJSON_GetObjectItemCaseSensitive(header, "Message");
                r = gateway_fail(err, GATEWAY_API_ERROR, "%s",
                                 cJSON_IsString(message) ? message->valuestring : "");
                err->code = code->valuedouble > (double) LONG_MAX   ? LONG_MAX
                            : code->valuedouble < (double) LONG_MIN ? LONG_MIN
                                                                    : (long) code->valuedouble;
                goto bad;
        }
        *ret_root = root;
        return 0;
bad:
        cJSON_Delete(root);
        return r;
}

int gateway_get_int(const cJSON *v, int *ret) {
        if (cJSON_IsNumber(v) && isfinite(v->valuedouble) && v->valuedouble == floor(v->valuedouble) &&
            v->valuedouble >= -1e9 && v->valuedouble <= 1e9) {
                *ret = (int) v->valuedouble;
                return 0;
        }
        /* The documentation gives SessionStatus as an int: "4" is not 4. A
         * session the daemon cannot read exactly is never acted on. */
        return -EINVAL;
}

int gateway_get_tristate(const cJSON *v, enum tristate *ret) {
        if (!v || cJSON_IsNull(v))
                *ret = TRISTATE_UNKNOWN;
        else if (cJSON_IsBool(v))
                *ret = cJSON_IsTrue(v) ? TRISTATE_TRUE : TRISTATE_FALSE;
        else
                return -EINVAL; /* documented as a bool: 0, "false" and the like are not read as one */
        return 0;
}

int gateway_parse_ack(const char *body, size_t len, struct gateway_error *err) {
        cJSON *root = NULL;
        int r = gateway_parse_envelope(body, len, &root, err);

        cJSON_Delete(root);
        return r;
}

int gateway_parse_stat(const char *body, size_t len, struct stat_result *ret, struct gateway_error *err) {
        cJSON *root = NULL, *payload;
        struct stat_result res;
        int r;

        r = gateway_parse_envelope(body, len, &root, err);
        if (r < 0)
                return r;
        payload = cJSON_GetObjectItemCaseSensitive(root, "Payload");
        if (!cJSON_IsObject(payload))
                r = gateway_fail(err, GATEWAY_BAD_RESPONSE, "response has no Payload object");
        else if (gateway_get_int(cJSON_GetObjectItemCaseSensitive(payload, "SessionStatus"), &res.status) <
                 0)
                r = gateway_fail(err, GATEWAY_BAD_RESPONSE, "Payload.SessionStatus is not an integer");
        else if (gateway_get_tristate(cJSON_GetObjectItemCaseSensitive(payload, "IsSessionStarted"),
                                      &res.started) < 0)
                r = gateway_fail(err, GATEWAY_BAD_RESPONSE, "Payload.IsSessionStarted is not a boolean");
        else {
                /* What the gateway says about the stream: optional, only for logging. */
                const cJSON *code = cJSON_GetObjectItemCaseSensitive(payload, "ErrorCode");
                const cJSON *message = cJSON_GetObjectItemCaseSensitive(payload, "ErrorMessage");
                int ecode = 0;

                res.has_error = gateway_get_int(code, &ecode) == 0 && ecode != 0;
                res.error_code = ecode;
                res.error_message[0] = '\0';
                if (res.has_error && cJSON_IsString(message))
                        escape_bytes(message->valuestring, res.error_message, sizeof res.error_message);
                *ret = res;
        }
        cJSON_Delete(root);
        return r;
}
