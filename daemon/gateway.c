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

static int fail(struct gateway_error *err, enum gateway_failure kind, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));

static int fail(struct gateway_error *err, enum gateway_failure kind, const char *fmt, ...) {
        va_list ap;

        err->kind = kind;
        va_start(ap, fmt);
        vsnprintf(err->message, sizeof err->message, fmt, ap);
        va_end(ap);
        return -EPROTO;
}

cJSON *json_parse_exact(const char *text, size_t len) {
        const char *end = NULL;
        cJSON *root = cJSON_ParseWithLengthOpts(text, len, &end, false);

        /* Anything but white space after the value makes the text invalid. */
        for (const char *p = end; root && p && p < text + len; p++)
                if (!strchr(" \t\r\n", *p) || *p == '\0') {
                        cJSON_Delete(root);
                        return NULL;
                }
        return root;
}

/* Whether obj names the key name more than once: cJSON reads the first of
 * two equal keys, other JSON stacks the last, so the reply has no one
 * meaning. */
static bool key_repeats(const cJSON *obj, const char *name) {
        const cJSON *f;
        unsigned n = 0;

        cJSON_ArrayForEach(f, obj) {
                if (f->string && strcmp(f->string, name) == 0 && ++n > 1)
                        return true;
        }
        return false;
}

/* Checks the envelope. On Code 0 returns 0 and hands over the parsed tree. */
static int parse_envelope(const char *body, size_t len, cJSON **ret_root, struct gateway_error *err) {
        cJSON *root, *header, *code, *message;
        int r;

        memset(err, 0, sizeof *err);
        root = json_parse_exact(body, len);
        if (!root)
                return fail(err, GATEWAY_BAD_RESPONSE, "response is not valid JSON");
        header = cJSON_GetObjectItemCaseSensitive(root, "Header");
        if (!cJSON_IsObject(root) || !cJSON_IsObject(header)) {
                r = fail(err, GATEWAY_BAD_RESPONSE, "response has no Header object");
                goto bad;
        }
        if (key_repeats(root, "Header") || key_repeats(root, "Payload") || key_repeats(header, "Code") ||
            key_repeats(header, "Message")) {
                r = fail(err, GATEWAY_BAD_RESPONSE,
                         "the response gives Header, Payload or Header.Code twice");
                goto bad;
        }
        code = cJSON_GetObjectItemCaseSensitive(header, "Code");
        if (!cJSON_IsNumber(code) || !isfinite(code->valuedouble) ||
            code->valuedouble != floor(code->valuedouble)) {
                r = fail(err, GATEWAY_BAD_RESPONSE, "Header.Code is not an integer");
                goto bad;
        }
        if (code->valuedouble != 0) {
                message = cJSON_GetObjectItemCaseSensitive(header, "Message");
                r = fail(err, GATEWAY_API_ERROR, "%s", cJSON_IsString(message) ? message->valuestring : "");
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

static int get_int(const cJSON *v, int *ret) {
        if (cJSON_IsNumber(v) && isfinite(v->valuedouble) && v->valuedouble == floor(v->valuedouble) &&
            v->valuedouble >= -1e9 && v->valuedouble <= 1e9) {
                *ret = (int) v->valuedouble;
                return 0;
        }
        /* The documentation gives SessionStatus as an int: "4" is not 4. A
         * session the daemon cannot read exactly is never acted on. */
        return -EINVAL;
}

static int get_tristate(const cJSON *v, enum tristate *ret) {
        if (!v || cJSON_IsNull(v))
                *ret = TRISTATE_UNKNOWN;
        else if (cJSON_IsBool(v))
                *ret = cJSON_IsTrue(v) ? TRISTATE_TRUE : TRISTATE_FALSE;
        else
                return -EINVAL; /* documented as a bool: 0, "false" and the like are not read as one */
        return 0;
}

/* Length of the UTF-8 sequence at p (at most n bytes) and its code point,
 * or 0 when it is not valid UTF-8 (overlong forms, surrogates and values
 * above U+10FFFF included). */
static size_t utf8_decode(const unsigned char *p, size_t n, uint32_t *ret) {
        uint32_t cp, min;
        size_t len;

        if (p[0] < 0x80) {
                *ret = p[0];
                return 1;
        }
        if ((p[0] & 0xe0) == 0xc0)
                len = 2, cp = p[0] & 0x1f, min = 0x80;
        else if ((p[0] & 0xf0) == 0xe0)
                len = 3, cp = p[0] & 0x0f, min = 0x800;
        else if ((p[0] & 0xf8) == 0xf0)
                len = 4, cp = p[0] & 0x07, min = 0x10000;
        else
                return 0;
        if (len > n)
                return 0;
        for (size_t i = 1; i < len; i++) {
                if ((p[i] & 0xc0) != 0x80)
                        return 0;
                cp = cp << 6 | (p[i] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
                return 0;
        *ret = cp;
        return len;
}

/* The start of a string the list's pre-scan shortened (shorten_string()),
 * as escaped in the text and as parsed: two control characters, which no
 * id check accepts, the second saying why. */
#define SHORT_TOO_LONG      "\\u0001\\u0002"
#define SHORT_TOO_LONG_TEXT "\x01\x02"
#define SHORT_CONTROL       "\\u0001\\u0003"
#define SHORT_CONTROL_TEXT  "\x01\x03"

/* A control character as ids may not hold one: C0, DEL, C1, U+2028, U+2029. */
static bool is_control(uint32_t cp) {
        return cp < 0x20 || cp == 0x7f || (cp >= 0x80 && cp <= 0x9f) || cp == 0x2028 || cp == 0x2029;
}

const char *gateway_id_problem(const char *s, size_t len) {
        const unsigned char *p = (const unsigned char *) s;

        /* Shortened by the list's pre-scan (shorten_string()). */
        if (len >= 2 && memcmp(s, SHORT_TOO_LONG_TEXT, 2) == 0)
                return "longer than 256 bytes";
        if (len >= 2 && memcmp(s, SHORT_CONTROL_TEXT, 2) == 0)
                return "contains a control character";
        if (len > GATEWAY_ID_MAX)
                return "longer than 256 bytes";
        for (size_t i = 0; i < len;) {
                uint32_t cp;
                size_t n = utf8_decode(p + i, len - i, &cp);

                if (n == 0)
                        return "not valid UTF-8";
                if (is_control(cp))
                        return "contains a control character";
                i += n;
        }
        return NULL;
}

static bool status_is_live(int status) {
        return status == SESSION_IN_PROGRESS || status == SESSION_PREPARING;
}

/* Room for one more element in array (n of *cap used), doubling: returns
 * the array, moved or not, or NULL (array unchanged) when out of memory. */
static void *reserve_one(void *array, size_t *cap, size_t n, size_t size) {
        size_t c = *cap ? 2 * *cap : 16;
        void *p;

        if (n < *cap)
                return array;
        p = reallocarray(array, c, size);
        if (p)
                *cap = c;
        return p;
}

/* Takes id (owned, or NULL): escaped only if it is logged. */
static int add_malformed(struct session_list *l, char *id, size_t index, const char *reason, bool live) {
        struct malformed_entry *m = reserve_one(l->malformed, &l->malformed_cap, l->n_malformed, sizeof *m);

        if (!m)
                return -ENOMEM;
        l->malformed = m;
        l->malformed[l->n_malformed++] =
                (struct malformed_entry){ .raw_id = id, .index = index, .reason = reason, .live = live };
        return 0;
}

char *malformed_entry_id(const struct malformed_entry *m, char *buf, size_t n) {
        if (m->raw_id)
                return escape_bytes(m->raw_id, buf, n);
        snprintf(buf, n, "Sessions[%zu]", m->index);
        return buf;
}

/* The ids of an entry that has the documented shape: NULL when both may be
 * acted on, else why not. */
static const char *entry_id_problem(const struct session *s) {
        const char *why = gateway_id_problem(s->session_id, strlen(s->session_id));

        if (why)
                return why;
        why = gateway_id_problem(s->user_id, strlen(s->user_id));
        return why ? "UserId is not a usable id" : NULL;
}

/* Containers nested deeper than this are cut out of a list reply (cJSON
 * would refuse the whole reply past its own limit), and the entry that
 * held one is never acted on. */
#define JSON_DEPTH_MAX 100
/* What a cut-out container becomes: a string no gateway sends, found again
 * by has_cut_marker(). It fits in the span of a container opened
 * CUT_BACK levels above the one that went too deep. */
#define CUT_MARKER      "\\u001f\\u001e\\u001f"
#define CUT_MARKER_TEXT "\x1f\x1e\x1f"
#define CUT_BACK        10

static int hex4(const char *p) {
        int v = 0;

        for (int i = 0; i < 4; i++) {
                char ch = p[i];
                int d = ch >= '0' && ch <= '9'   ? ch - '0'
                        : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10
                        : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10
                                                 : -1;

                if (d < 0)
                        return -1;
                v = v * 16 + d;
        }
        return v;
}

/* The end (index of the closing bracket) of the container opening at
 * text[start], or len when it does not close. */
static size_t container_end(const char *text, size_t len, size_t start) {
        bool in_string = false;
        size_t depth = 0;

        for (size_t i = start; i < len; i++) {
                char ch = text[i];

                if (in_string) {
                        if (ch == '\\')
                                i++;
                        else if (ch == '"')
                                in_string = false;
                } else if (ch == '"')
                        in_string = true;
                else if (ch == '[' || ch == '{')
                        depth++;
                else if ((ch == ']' || ch == '}') && --depth == 0)
                        return i;
        }
        return len;
}

/* Copies up to n raw characters of a JSON string's text, leaving out
 * every escape sequence's backslash and the character after it, so that
 * the copy is plain string text. Returns how many were written. */
static size_t copy_plain(char *dst, const char *src, size_t len, size_t n) {
        size_t k = 0;

        for (size_t i = 0; i < len && k < n; i++) {
                if (src[i] == '\\') {
                        i++;
                        continue;
                }
                if (src[i] != '"') /* the second half of an escape cut in two */
                        dst[k++] = src[i];
        }
        return k;
}

/* Rewrites the string token text[start..end] (quotes included), too long
 * to be an id, as a short one that still tells which it was and that no id
 * check accepts: a marker of two control characters (SHORT_TOO_LONG or
 * SHORT_CONTROL, which gateway_id_problem() tells apart) and its first and
 * last characters, padded with spaces (white space between tokens). */
static void shorten_string(char *text, size_t start, size_t end, bool too_long) {
        enum { KEEP = 24 };
        char label[14 + 2 * KEEP + 2];
        size_t n = 0, body = end - start - 1;
        const char *tail = text + end - (body < KEEP ? body : KEEP);

        /* The marker says why, for gateway_id_problem(). */
        memcpy(label, too_long ? "\"" SHORT_TOO_LONG : "\"" SHORT_CONTROL, 13);
        n = 13;
        n += copy_plain(label + n, text + start + 1, body, KEEP);
        label[n++] = '.';
        label[n++] = '.';
        n += copy_plain(label + n, tail, (size_t) (text + end - tail), KEEP);
        label[n++] = '"';
        memset(text + start, ' ', end - start + 1);
        memcpy(text + start, label, n);
}

/* What scan_json() found. */
struct scan {
        size_t values;
        /* Where Payload.Sessions opens, if it is an array under keys written
         * without escapes (then cJSON would read the same): its entries are
         * parsed one at a time. */
        bool has_sessions;
        size_t sessions_at;
};

/* The first character at or after p that is not JSON white space. */
static const char *skip_space(const char *p, const char *end) {
        while (p < end && strchr(" \t\r\n", *p) && *p)
                p++;
        return p;
}

/* Whether the string token text[start..end] (quotes included) is the key
 * name, written plainly, and a key: followed by a colon. */
static bool is_key(const char *text, size_t len, size_t start, size_t end, const char *name) {
        size_t n = strlen(name);
        const char *p;

        if (end - start - 1 != n || memcmp(text + start + 1, name, n) != 0)
                return false;
        p = skip_space(text + end + 1, text + len);
        return p < text + len && *p == ':';
}

/* One pass over the raw text of a reply finds what cJSON would either
 * misread or refuse as a whole, when one entry alone is at fault:
 *  - NUL, raw or escaped ("\\u0000"): cJSON keeps strings NUL-terminated,
 *    so "victim\\u0000x" would read as "victim", another session;
 *  - a lone UTF-16 surrogate ("\\ud800" alone, "\\udc00" alone, a reversed
 *    pair, a high surrogate at the end of a string): valid JSON grammar,
 *    and what JavaScript emits for a string cut inside a pair, which cJSON
 *    refuses;
 *  - containers nested deeper than JSON_DEPTH_MAX;
 *  - inside an entry, a string longer than any id (GATEWAY_ID_MAX bytes),
 *    or a long one with a control character: it is no usable id, so the
 *    parser need not copy it whole;
 *  - inside an entry, a number with a fraction or an exponent, which is
 *    no JSON integer though it reads as one.
 * Each is rewritten in place, the text keeping its length: a NUL or a lone
 * surrogate becomes U+0001, a control character that gateway_id_problem()
 * refuses, and a container opened CUT_BACK levels above one that goes too
 * deep becomes CUT_MARKER padded with spaces, so that the entry is skipped
 * rather than read as another session or taken for a broken list; a string
 * that cannot be an id is shortened (shorten_string()); such a number
 * becomes the string "#". Also counts the values, an upper bound: commas
 * and opening brackets outside strings, plus one, and finds where
 * Payload.Sessions opens. */
static void scan_json(char *text, size_t len, struct scan *ret) {
        size_t opened_at[JSON_DEPTH_MAX + 1];
        bool in_string = false;
        size_t values = 1, depth = 0, str_start = 0, str_bytes = 0;
        bool str_control = false; /* the string holds a control character: no id */
        /* Payload's key was just read (at depth 1); Payload is open (depth 2);
         * Sessions' key was just read in it. */
        bool payload_key = false, in_payload = false, sessions_key = false;

        *ret = (struct scan){ 0 };

        for (size_t i = 0; i < len; i++) {
                char ch = text[i];

                if (ch == '\0') {
                        text[i] = '\x01';
                        str_bytes++;
                } else if (in_string) {
                        int v, w;

                        if (ch == '"') {
                                in_string = false;
                                if (depth == 1 && !ret->has_sessions)
                                        payload_key = is_key(text, len, str_start, i, "Payload");
                                else if (depth == 2 && in_payload && !ret->has_sessions)
                                        sessions_key = is_key(text, len, str_start, i, "Sessions");
                                /* Inside an entry (root, Payload, Sessions,
                                 * entry), a string longer than any id can
                                 * be is never used: keep the parser from
                                 * copying it. */
                                if (depth >= 4 &&
                                    (str_bytes > GATEWAY_ID_MAX || (str_control && i - str_start > 64)))
                                        shorten_string(text, str_start, i, str_bytes > GATEWAY_ID_MAX);
                                continue;
                        }
                        str_bytes++;
                        if (is_control((unsigned char) ch))
                                str_control = true;
                        if (ch != '\\')
                                continue;
                        if (i + 5 >= len || text[i + 1] != 'u' || (v = hex4(text + i + 2)) < 0) {
                                if (i + 1 < len && strchr("bfnrt", text[i + 1]))
                                        str_control = true;
                                i++;
                                continue;
                        }
                        if (is_control((uint32_t) v))
                                str_control = true;
                        /* A high surrogate with its low one: a pair, fine. */
                        if (v >= 0xd800 && v <= 0xdbff && i + 11 < len && text[i + 6] == '\\' &&
                            text[i + 7] == 'u' && (w = hex4(text + i + 8)) >= 0xdc00 && w <= 0xdfff) {
                                str_bytes += 3;
                                i += 11;
                                continue;
                        }
                        if (v == 0 || (v >= 0xd800 && v <= 0xdfff))
                                memcpy(text + i + 2, "0001", 4);
                        else
                                str_bytes += (v >= 0x80) + (v >= 0x800);
                        i += 5;
                } else if (ch == '"') {
                        in_string = true;
                        str_start = i;
                        str_bytes = 0;
                        str_control = false;
                } else if (ch == '[' || ch == '{') {
                        values++;
                        if (depth == 1)
                                in_payload = payload_key && ch == '{';
                        else if (depth == 2 && sessions_key && ch == '[') {
                                ret->has_sessions = true;
                                ret->sessions_at = i;
                        }
                        payload_key = sessions_key = false;
                        if (depth < JSON_DEPTH_MAX) {
                                opened_at[depth++] = i;
                                continue;
                        }
                        /* Too deep: cut out the container opened CUT_BACK
                         * levels up, whose span holds the marker. */
                        depth -= CUT_BACK;
                        {
                                size_t start = opened_at[depth], end = container_end(text, len, start);

                                if (end == len)
                                        break; /* never closes: cJSON refuses the text anyway */
                                memset(text + start, ' ', end - start + 1);
                                memcpy(text + start, "\"" CUT_MARKER "\"", strlen(CUT_MARKER) + 2);
                                i = end;
                        }
                } else if (ch == ']' || ch == '}') {
                        if (depth > 0)
                                depth--;
                        if (depth == 1)
                                in_payload = false;
                } else if (ch == ',')
                        values++;
                else if (ch == '-' || (ch >= '0' && ch <= '9')) {
                        /* Inside an entry, a number with a fraction or an
                         * exponent ("4.0", "4e0", "3.9999999999999999") is
                         * no JSON integer, though it reads as one: it
                         * becomes a string, which no integer field takes. */
                        size_t j = i;
                        bool fraction = false;

                        while (j < len && text[j] && strchr("+-0123456789.eE", text[j])) {
                                fraction |= text[j] == '.' || text[j] == 'e' || text[j] == 'E';
                                j++;
                        }
                        if (depth >= 4 && fraction && j - i >= 3) {
                                memset(text + i, ' ', j - i);
                                memcpy(text + i, "\"#\"", 3);
                        }
                        payload_key = sessions_key = false;
                        i = j - 1;
                } else if (!strchr(" \t\r\n:", ch))
                        payload_key = sessions_key = false; /* a scalar value */
        }
        ret->values = values;
}

/* Whether a value holds a container cut out by scan_json(). */
static bool has_cut_marker(const cJSON *v) {
        const cJSON *c;

        if (cJSON_IsString(v))
                return strcmp(v->valuestring, CUT_MARKER_TEXT) == 0;
        cJSON_ArrayForEach(c, v) {
                if (has_cut_marker(c))
                        return true;
        }
        return false;
}

static bool has_repeated_field(const cJSON *item) {
        static const char *const fields[] = { "SessionId", "UserId", "SessionStatus", "IsSessionStarted" };
        unsigned seen[ELEMENTSOF(fields)] = { 0 };
        const cJSON *f;

        cJSON_ArrayForEach(f, item) {
                for (size_t i = 0; f->string && i < ELEMENTSOF(fields); i++)
                        if (strcmp(f->string, fields[i]) == 0 && ++seen[i] > 1)
                                return true;
        }
        return false;
}

/* Reads one entry of Sessions[]. Returns NULL, or why the entry does not
 * have the documented shape (static text). */
static const char *parse_session(const cJSON *item, struct session *s) {
        const cJSON *id, *user, *status;

        if (!cJSON_IsObject(item))
                return "the entry is not an object";
        /* cJSON reads the first of two equal keys, other JSON stacks the
         * last: a field given twice has no one meaning. */
        if (has_repeated_field(item))
                return "a field is given twice";

        id = cJSON_GetObjectItemCaseSensitive(item, "SessionId");
        user = cJSON_GetObjectItemCaseSensitive(item, "UserId");
        status = cJSON_GetObjectItemCaseSensitive(item, "SessionStatus");
        if (!cJSON_IsString(id) || !id->valuestring[0])
                return "SessionId is not a non-empty string";
        /* Borrowed from the parsed document, which the list keeps. */
        s->session_id = id->valuestring;
        if (has_cut_marker(item))
                return "a field is nested more than 100 levels deep";
        if (!cJSON_IsString(user))
                return "UserId is not a string";
        s->user_id = user->valuestring;
        if (get_int(status, &s->status) < 0)
                return "SessionStatus is not an integer";
        if (get_tristate(cJSON_GetObjectItemCaseSensitive(item, "IsSessionStarted"), &s->started) < 0)
                return "IsSessionStarted is not a boolean";
        return NULL;
}

struct dedup_key {
        const char *id;
        size_t index; /* into l->items; l->n + j for l->malformed[j] */
};

static int compare_dedup(const void *a, const void *b) {
        const struct dedup_key *x = a, *y = b;
        int c = strcmp(x->id, y->id);

        return c ? c : (x->index > y->index) - (x->index < y->index);
}

static bool same_entry(const struct session *a, const struct session *b) {
        return strcmp(a->user_id, b->user_id) == 0 && a->status == b->status && a->started == b->started;
}

/* A SessionId listed more than once: identical entries are reduced to the
 * first. Entries that disagree (another user, status or start flag: one of
 * them may be protected, or not due), or that sit beside a hostile entry
 * with the same SessionId, make the session one that is never acted on.
 * One sort of the ids, then one pass over each run of equal ids. */
static int drop_duplicates(struct session_list *l) {
        size_t n_keys = l->n + l->n_malformed, n_malformed = l->n_malformed, kept = 0;
        struct dedup_key *keys;
        bool *drop;
        int r = 0;

        if (n_keys < 2)
                return 0;
        keys = malloc(n_keys * sizeof *keys);
        drop = calloc(l->n ? l->n : 1, sizeof *drop);
        if (!keys || !drop) {
                free(keys);
                free(drop);
                return -ENOMEM;
        }
        for (size_t i = 0; i < l->n; i++)
                keys[i] = (struct dedup_key){ l->items[i].session_id, i };
        n_keys = l->n;
        for (size_t j = 0; j < n_malformed; j++)
                if (l->malformed[j].raw_id) /* an entry without a SessionId hides nothing */
                        keys[n_keys++] = (struct dedup_key){ l->malformed[j].raw_id, l->n + j };
        qsort(keys, n_keys, sizeof *keys, compare_dedup);
        for (size_t a = 0, b; a < n_keys && r >= 0; a = b) {
                struct session *first = NULL;
                bool conflict = false, hostile = false;

                for (b = a; b < n_keys && strcmp(keys[b].id, keys[a].id) == 0; b++) {
                        if (keys[b].index >= l->n) {
                                /* One hostile id listed again and again
                                 * holds one slot: it counts as live once. */
                                if (hostile)
                                        l->malformed[keys[b].index - l->n].live = false;
                                hostile = true;
                        } else if (!first)
                                first = &l->items[keys[b].index];
                        else if (!same_entry(first, &l->items[keys[b].index]))
                                conflict = true;
                }
                if (b - a < 2 || !first)
                        continue;
                for (size_t k = a; k < b; k++)
                        if (keys[k].index < l->n &&
                            (hostile || conflict || &l->items[keys[k].index] != first))
                                drop[keys[k].index] = true;
                if (hostile)
                        continue; /* already counted as malformed */
                if (conflict) {
                        /* The malformed entry takes the first item's id. */
                        r = add_malformed(l, first->session_id, 0,
                                          "listed more than once with conflicting fields",
                                          status_is_live(first->status));
                        if (r >= 0)
                                first->session_id = NULL;
                } else
                        l->n_duplicates += b - a - 1;
        }
        for (size_t i = 0; i < l->n; i++)
                if (!drop[i])
                        l->items[kept++] = l->items[i];
                else {
                        free(l->items[i].session_id);
                        free(l->items[i].user_id);
                }
        l->n = kept;
        free(keys);
        free(drop);
        return r;
}

/* Adds one entry of Sessions[] to the list, with strings of its own: the
 * parsed entry is freed at once, so a large list never exists as a whole
 * tree. An entry without the documented shape, or whose ids are hostile, is
 * skipped into l->malformed: never acted on, counted and reported by the
 * caller. The rest of the list is decided. */
static int take_entry(struct session_list *l, const cJSON *item) {
        struct session s = { 0 };
        const char *why = parse_session(item, &s);
        size_t index = l->n + l->n_malformed;
        char *raw = NULL;
        int r;

        if (!why)
                why = entry_id_problem(&s);
        if (why && !s.session_id && cJSON_IsObject(item)) {
                /* A field given twice: every SessionId it names is never
                 * acted on, nor is a valid entry beside it with the same. */
                const cJSON *f;
                bool any = false;

                cJSON_ArrayForEach(f, item) {
                        if (!f->string || strcmp(f->string, "SessionId") != 0 || !cJSON_IsString(f) ||
                            !f->valuestring[0])
                                continue;
                        if (!(raw = strdup(f->valuestring)))
                                return -ENOMEM;
                        r = add_malformed(l, raw, index, why, false);
                        if (r < 0) {
                                free(raw);
                                return r;
                        }
                        any = true;
                }
                if (any)
                        return 0;
        }
        if (!why) {
                struct session *items = reserve_one(l->items, &l->items_cap, l->n, sizeof *items);

                if (!items)
                        return -ENOMEM;
                l->items = items;
                s.session_id = strdup(s.session_id);
                s.user_id = strdup(s.user_id);
                if (!s.session_id || !s.user_id) {
                        free(s.session_id);
                        free(s.user_id);
                        return -ENOMEM;
                }
                l->items[l->n++] = s;
                return 0;
        }
        if (s.session_id && !(raw = strdup(s.session_id)))
                return -ENOMEM;
        r = add_malformed(l, raw, index, why, status_is_live(s.status));
        if (r < 0)
                free(raw);
        return r;
}

/* Payload.Sessions at body[at] ('['): each entry is parsed by cJSON on its
 * own and taken; then the array becomes "[]" padded with spaces, so that
 * the envelope parses small. */
static int take_entries_at(struct session_list *l, char *body, size_t len, size_t at,
                           struct gateway_error *err) {
        const char *end = body + len, *p = skip_space(body + at + 1, end);
        int r;

        if (p < end && *p == ']')
                goto blank;
        for (;;) {
                const char *after = NULL;
                cJSON *item = cJSON_ParseWithLengthOpts(p, (size_t) (end - p), &after, false);

                if (!item)
                        return fail(err, GATEWAY_BAD_RESPONSE, "response is not valid JSON");
                r = take_entry(l, item);
                cJSON_Delete(item);
                if (r < 0)
                        return r;
                p = skip_space(after, end);
                if (p < end && *p == ']')
                        break;
                if (p >= end || *p != ',')
                        return fail(err, GATEWAY_BAD_RESPONSE, "response is not valid JSON");
                p = skip_space(p + 1, end);
        }
blank:
        memset(body + at, ' ', (size_t) (p - (body + at)) + 1);
        memcpy(body + at, "[]", 2);
        return 0;
}

/* Parses a list reply that scan_json() has made safe for cJSON. */
static int parse_list(char *body, size_t len, const struct scan *sc, struct session_list **ret_list,
                      struct gateway_error *err) {
        struct session_list *l = NULL;
        cJSON *root = NULL, *payload, *sessions, *item;
        int r;

        if (sc->values > GATEWAY_LIST_MAX_VALUES)
                return fail(err, GATEWAY_BAD_RESPONSE,
                            "the list has more than %d JSON values; refusing it unparsed",
                            GATEWAY_LIST_MAX_VALUES);
        l = calloc(1, sizeof *l);
        if (!l)
                return -ENOMEM;
        if (sc->has_sessions) {
                r = take_entries_at(l, body, len, sc->sessions_at, err);
                if (r < 0)
                        goto out;
        }
        r = parse_envelope(body, len, &root, err);
        if (r < 0)
                goto out;
        payload = cJSON_GetObjectItemCaseSensitive(root, "Payload");
        if (!cJSON_IsObject(payload)) {
                r = fail(err, GATEWAY_BAD_RESPONSE, "response has no Payload object");
                goto out;
        }
        sessions = cJSON_GetObjectItemCaseSensitive(payload, "Sessions");
        if (key_repeats(payload, "Sessions")) {
                r = fail(err, GATEWAY_BAD_RESPONSE, "the response gives Payload.Sessions twice");
                goto out;
        }
        if (sessions && !cJSON_IsNull(sessions) && !cJSON_IsArray(sessions)) {
                r = fail(err, GATEWAY_BAD_RESPONSE, "Payload.Sessions is not a list");
                goto out;
        }
        /* Entries the scan could not place (keys written with escapes):
         * taken from the whole tree. cJSON arrays are linked lists: walk
         * them, never index them. */
        cJSON_ArrayForEach(item, sessions) {
                r = take_entry(l, item);
                if (r < 0)
                        goto out;
        }
        r = drop_duplicates(l);
        if (r < 0)
                goto out;
        *ret_list = l;
        l = NULL;
out:
        session_list_free(l);
        cJSON_Delete(root);
        return r;
}

int gateway_parse_list_in_place(char *body, size_t len, struct session_list **ret_list,
                                struct gateway_error *err) {
        struct scan sc;

        memset(err, 0, sizeof *err);
        scan_json(body, len, &sc);
        return parse_list(body, len, &sc, ret_list, err);
}

int gateway_parse_list(const char *body, size_t len, struct session_list **ret_list,
                       struct gateway_error *err) {
        char *copy = malloc(len + 1);
        int r;

        memset(err, 0, sizeof *err);
        if (!copy)
                return -ENOMEM;
        memcpy(copy, body, len);
        copy[len] = '\0';
        r = gateway_parse_list_in_place(copy, len, ret_list, err);
        free(copy);
        return r;
}

int gateway_parse_ack(const char *body, size_t len, struct gateway_error *err) {
        cJSON *root = NULL;
        int r = parse_envelope(body, len, &root, err);

        cJSON_Delete(root);
        return r;
}

int gateway_parse_stat(const char *body, size_t len, struct stat_result *ret, struct gateway_error *err) {
        cJSON *root = NULL, *payload;
        struct stat_result res;
        int r;

        r = parse_envelope(body, len, &root, err);
        if (r < 0)
                return r;
        payload = cJSON_GetObjectItemCaseSensitive(root, "Payload");
        if (!cJSON_IsObject(payload))
                r = fail(err, GATEWAY_BAD_RESPONSE, "response has no Payload object");
        else if (get_int(cJSON_GetObjectItemCaseSensitive(payload, "SessionStatus"), &res.status) < 0)
                r = fail(err, GATEWAY_BAD_RESPONSE, "Payload.SessionStatus is not an integer");
        else if (get_tristate(cJSON_GetObjectItemCaseSensitive(payload, "IsSessionStarted"), &res.started) <
                 0)
                r = fail(err, GATEWAY_BAD_RESPONSE, "Payload.IsSessionStarted is not a boolean");
        else {
                /* What the gateway says about the stream: optional, only for logging. */
                const cJSON *code = cJSON_GetObjectItemCaseSensitive(payload, "ErrorCode");
                const cJSON *message = cJSON_GetObjectItemCaseSensitive(payload, "ErrorMessage");
                int ecode = 0;

                res.has_error = get_int(code, &ecode) == 0 && ecode != 0;
                res.error_code = ecode;
                res.error_message[0] = '\0';
                if (res.has_error && cJSON_IsString(message))
                        escape_bytes(message->valuestring, res.error_message, sizeof res.error_message);
                *ret = res;
        }
        cJSON_Delete(root);
        return r;
}

void session_list_free(struct session_list *l) {
        if (!l)
                return;
        for (size_t i = 0; i < l->n; i++) {
                free(l->items[i].session_id);
                free(l->items[i].user_id);
        }
        for (size_t i = 0; i < l->n_malformed; i++)
                free(l->malformed[i].raw_id);
        free(l->malformed);
        free(l->items);
        free(l);
}

int session_list_merge(struct session_list **lists, size_t n, struct session_list **ret) {
        struct session_list *m = calloc(1, sizeof *m);
        size_t items = 0, malformed = 0;
        int r = -ENOMEM;

        for (size_t i = 0; i < n; i++) {
                items += lists[i]->n;
                malformed += lists[i]->n_malformed;
        }
        if (!m || !(m->items = calloc(items ? items : 1, sizeof *m->items)) ||
            (malformed > 0 && !(m->malformed = calloc(malformed, sizeof *m->malformed))))
                goto out;
        m->items_cap = items ? items : 1;
        m->malformed_cap = malformed;
        for (size_t i = 0; i < n; i++) {
                if (lists[i]->n > 0)
                        memcpy(m->items + m->n, lists[i]->items, lists[i]->n * sizeof *m->items);
                m->n += lists[i]->n;
                m->n_duplicates += lists[i]->n_duplicates;
                if (lists[i]->n_malformed > 0)
                        memcpy(m->malformed + m->n_malformed, lists[i]->malformed,
                               lists[i]->n_malformed * sizeof *m->malformed);
                m->n_malformed += lists[i]->n_malformed;
                /* The merged list owns the strings now. */
                lists[i]->n = lists[i]->n_malformed = 0;
        }
        r = drop_duplicates(m);
        if (r < 0)
                goto out;
        *ret = m;
        m = NULL;
out:
        for (size_t i = 0; i < n; i++)
                session_list_free(lists[i]);
        session_list_free(m);
        return r;
}
