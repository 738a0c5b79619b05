/* The raw text of a list reply, made safe for cJSON before it is parsed,
 * in place and in one pass (scan_json()), and the id check that reads what
 * the pass left (gateway_id_problem()). */
#include "listscan.h"

#include <stdint.h>
#include <string.h>

#include "gateway.h"
#include "json.h"

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

/* Containers nested deeper than this are cut out of a list reply (cJSON
 * would refuse the whole reply past its own limit), and the entry that
 * held one is never acted on. */
#define JSON_DEPTH_MAX 100
/* What a cut-out container becomes: a string no gateway sends, found again
 * by scan_has_cut_marker(). It fits in the span of a container opened
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

/* Whether the string token text[start..end] (quotes included) is the key
 * name, written plainly, and a key: followed by a colon. */
static bool is_key(const char *text, size_t len, size_t start, size_t end, const char *name) {
        size_t n = strlen(name);
        const char *p;

        if (end - start - 1 != n || memcmp(text + start + 1, name, n) != 0)
                return false;
        p = json_skip_space(text + end + 1, text + len);
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
void scan_json(char *text, size_t len, struct scan *ret) {
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
bool scan_has_cut_marker(const cJSON *v) {
        const cJSON *c;

        if (cJSON_IsString(v))
                return strcmp(v->valuestring, CUT_MARKER_TEXT) == 0;
        cJSON_ArrayForEach(c, v) {
                if (scan_has_cut_marker(c))
                        return true;
        }
        return false;
}
