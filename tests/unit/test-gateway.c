#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "gateway.h"

/* The escaped id of a malformed entry, for the assertions. */
static char idbuf[1100];
#include "reply.h"
#include "util.h"

/* The known-answer vector from the API documentation. */
#define KAT_APPKEY    "e38267c0e86411ebb02aed82acb0ed99"
#define KAT_TOKEN     "f68f2d10ae9e4604b76fb05cf46bccec"
#define KAT_TIMESTAMP 1646636485

static void test_signature_vector(void **state) {
        char sig[GATEWAY_SIGNATURE_LEN + 1];

        (void) state;
        assert_int_equal(gateway_signature(KAT_APPKEY, KAT_TOKEN, "1646636485", sig), 0);
        assert_string_equal(sig, "BfWuaC9kmaicCggXc693uK+sZQ8qe88O4HVQNTdwZuo=");
}

/* The second published vector (product 1240, page 107197). */
static void test_signature_second_vector(void **state) {
        char sig[GATEWAY_SIGNATURE_LEN + 1], *url = NULL;

        (void) state;
        assert_int_equal(gateway_signature("example_appkey", "example_accesstoken", "1717639699", sig), 0);
        assert_string_equal(sig, "aCNWYzZdplxWVo+JsqzZc9+J9XrwWWITfX3eQpsLVno=");
        assert_int_equal(gateway_build_url("https://gw.example", "listsessionofuin", "example_appkey",
                                           "example_accesstoken", 1717639699, NULL, &url),
                         0);
        assert_string_equal(url, "https://gw.example/v2/ivh/sessionmanager/sessionmanagerservice/"
                                 "listsessionofuin?appkey=example_appkey&timestamp=1717639699"
                                 "&signature=aCNWYzZdplxWVo%2BJsqzZc9%2BJ9XrwWWITfX3eQpsLVno%3D");
        free(url);
}

/* Each published code has its name, sign included; others have none. */
static void test_code_names(void **state) {
        (void) state;
        assert_string_equal(reply_code_name(100015), "avatar expired");
        assert_string_equal(reply_code_name(110015), "drive command sent at the wrong time");
        assert_string_equal(reply_code_name(110016), "drive command on a session that has not started");
        assert_string_equal(reply_code_name(110021), "TRTC account in arrears");
        assert_string_equal(reply_code_name(-101002), "image download failed");
        assert_string_equal(reply_code_name(100014), "concurrency quota insufficient or expired");
        assert_null(reply_code_name(101002)); /* the published one is negative */
        assert_null(reply_code_name(0));
        assert_null(reply_code_name(123456));
}

static void test_build_url(void **state) {
        char *url = NULL;

        (void) state;
        assert_int_equal(gateway_build_url("https://gw-sg.tvs.qq.com", "listsessionofuin", KAT_APPKEY,
                                           KAT_TOKEN, KAT_TIMESTAMP, NULL, &url),
                         0);
        assert_string_equal(url, "https://gw-sg.tvs.qq.com/v2/ivh/sessionmanager/sessionmanagerservice/"
                                 "listsessionofuin?appkey=" KAT_APPKEY "&timestamp=1646636485"
                                 "&signature=BfWuaC9kmaicCggXc693uK%2BsZQ8qe88O4HVQNTdwZuo%3D");
        /* The token itself never appears in the URL. */
        assert_null(strstr(url, KAT_TOKEN));
        free(url);
}

static void test_signer_cache(void **state) {
        struct gateway_signer signer;
        char *a = NULL, *b = NULL, *c = NULL;

        (void) state;
        gateway_signer_reset(&signer);
        assert_int_equal(gateway_build_url("http://x", "closesession", KAT_APPKEY, KAT_TOKEN, KAT_TIMESTAMP,
                                           &signer, &a),
                         0);
        assert_int_equal(signer.timestamp, KAT_TIMESTAMP);
        assert_int_equal(gateway_build_url("http://x", "statsession", KAT_APPKEY, KAT_TOKEN, KAT_TIMESTAMP,
                                           &signer, &b),
                         0);
        assert_string_equal(strchr(a, '?'), strchr(b, '?'));
        assert_non_null(strstr(a, "signature=BfWuaC9kmaicCggXc693uK%2BsZQ8qe88O4HVQNTdwZuo%3D"));
        /* The next second is signed anew. */
        assert_int_equal(gateway_build_url("http://x", "closesession", KAT_APPKEY, KAT_TOKEN,
                                           KAT_TIMESTAMP + 1, &signer, &c),
                         0);
        assert_non_null(strstr(c, "timestamp=1646636486&"));
        assert_null(strstr(c, "BfWuaC9kmaicCggXc693uK"));
        free(a);
        free(b);
        free(c);
}

static void test_reqid(void **state) {
        char a[GATEWAY_REQID_LEN + 1], b[GATEWAY_REQID_LEN + 1];

        (void) state;
        assert_int_equal(gateway_new_reqid(a), 0);
        /* Across several refills of the random pool: well-formed and distinct. */
        for (int i = 0; i < 1000; i++) {
                assert_int_equal(gateway_new_reqid(b), 0);
                assert_int_equal(strlen(b), 32);
                assert_int_equal(strspn(b, "0123456789abcdef"), 32);
                assert_string_not_equal(a, b);
        }
}

static void test_build_body(void **state) {
        char *body = NULL;

        (void) state;
        assert_int_equal(gateway_build_body("d7aa08da33dd4a662ad5be508c5b77cf", NULL, NULL, &body), 0);
        assert_string_equal(body,
                            "{\"Header\":{},\"Payload\":{\"ReqId\":\"d7aa08da33dd4a662ad5be508c5b77cf\"}}");
        free(body);
        assert_int_equal(gateway_build_body("d7aa08da33dd4a662ad5be508c5b77cf", "VirtualmanProjectId",
                                            "proj-1", &body),
                         0);
        assert_string_equal(body,
                            "{\"Header\":{},\"Payload\":{\"ReqId\":\"d7aa08da33dd4a662ad5be508c5b77cf\","
                            "\"VirtualmanProjectId\":\"proj-1\"}}");
        free(body);
        assert_int_equal(gateway_build_body("d7aa08da33dd4a662ad5be508c5b77cf", "SessionId", "m\"1", &body),
                         0);
        assert_string_equal(body,
                            "{\"Header\":{},\"Payload\":{\"ReqId\":\"d7aa08da33dd4a662ad5be508c5b77cf\","
                            "\"SessionId\":\"m\\\"1\"}}");
        free(body);
}

static struct session_list *parse_ok(const char *json) {
        struct session_list *l = NULL;
        struct gateway_error err;

        assert_int_equal(gateway_parse_list(json, strlen(json), &l, &err), 0);
        assert_non_null(l);
        return l;
}

static void test_parse_list_sample(void **state) {
        /* The documented sample, minus the documentation's trailing commas,
         * plus an unknown field that must be ignored. */
        struct session_list *l =
                parse_ok("{\"Header\":{\"Code\":0,\"Message\":\"\",\"RequestID\":\"123\"},"
                         "\"Payload\":{\"ReqId\":\"d7aa08da33dd4a662ad5be508c5b77cf\",\"Sessions\":["
                         "{\"UserId\":\"abc\",\"SessionId\":\"m123\",\"SessionStatus\":1,"
                         "\"PlayStreamAddr\":\"rtmp://live.qq.com/live/m789\",\"DriverType\":1,"
                         "\"IsSessionStarted\":true,\"NewField\":{\"x\":[1,2]}},"
                         "{\"UserId\":\"\",\"SessionId\":\"m124\",\"SessionStatus\":3,\"DriverType\":\"3\","
                         "\"IsSessionStarted\":false}]}}");

        (void) state;
        assert_int_equal(l->n, 2);
        assert_string_equal(l->items[0].session_id, "m123");
        assert_string_equal(l->items[0].user_id, "abc");
        assert_int_equal(l->items[0].status, 1);
        assert_int_equal(l->items[0].started, TRISTATE_TRUE);
        assert_string_equal(l->items[1].user_id, "");
        assert_int_equal(l->items[1].status, 3);
        assert_int_equal(l->items[1].started, TRISTATE_FALSE);
        session_list_free(l);
}

static void test_parse_list_empty_forms(void **state) {
        static const char *const cases[] = {
                "{\"Header\":{\"Code\":0},\"Payload\":{\"ReqId\":\"x\"}}",
                "{\"Header\":{\"Code\":0},\"Payload\":{\"Sessions\":null}}",
                "{\"Header\":{\"Code\":0},\"Payload\":{\"Sessions\":[]}}",
        };

        (void) state;
        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                struct session_list *l = parse_ok(cases[i]);
                assert_int_equal(l->n, 0);
                session_list_free(l);
        }
}

static void test_parse_list_duplicates_and_unknown_started(void **state) {
        struct session_list *l = parse_ok(
                "{\"Header\":{\"Code\":0},\"Payload\":{\"Sessions\":["
                "{\"UserId\":\"a\",\"SessionId\":\"x\",\"SessionStatus\":1,\"IsSessionStarted\":true},"
                "{\"UserId\":\"b\",\"SessionId\":\"y\",\"SessionStatus\":4},"
                "{\"UserId\":\"c\",\"SessionId\":\"x\",\"SessionStatus\":4,\"IsSessionStarted\":false},"
                "{\"UserId\":\"e\",\"SessionId\":\"w\",\"SessionStatus\":1,\"IsSessionStarted\":true},"
                "{\"UserId\":\"e\",\"SessionId\":\"w\",\"SessionStatus\":1,\"IsSessionStarted\":true}]}}");

        (void) state;
        /* "x" twice with other fields: one of them might be protected, or not
         * due; it is never acted on. "w" twice, identical: the first stays. */
        assert_int_equal(l->n, 2);
        assert_int_equal(l->n_duplicates, 1);
        assert_int_equal(l->n_malformed, 1);
        assert_string_equal(malformed_entry_id(&l->malformed[0], idbuf, sizeof idbuf), "x");
        assert_string_equal(l->items[0].session_id, "y");
        assert_int_equal(l->items[0].started, TRISTATE_UNKNOWN);
        assert_int_equal(l->items[0].status, 4);
        assert_string_equal(l->items[1].session_id, "w");
        session_list_free(l);

        /* A hostile entry first, a clean one with the same SessionId second:
         * the session is not acted on (red team, issue 10). */
        l = parse_ok("{\"Header\":{\"Code\":0},\"Payload\":{\"Sessions\":["
                     "{\"UserId\":\"bad\\u0001\",\"SessionId\":\"victim\",\"SessionStatus\":4},"
                     "{\"UserId\":\"app\",\"SessionId\":\"victim\",\"SessionStatus\":4}]}}");
        assert_int_equal(l->n, 0);
        assert_int_equal(l->n_malformed, 1);
        session_list_free(l);
}

static void test_parse_list_api_error(void **state) {
        const char *json =
                "{\"Header\":{\"Code\":100005,\"Message\":\"unauthorized operation\"},\"Payload\":{}}";
        struct session_list *l = NULL;
        struct gateway_error err;

        (void) state;
        assert_int_equal(gateway_parse_list(json, strlen(json), &l, &err), -EPROTO);
        assert_null(l);
        assert_int_equal(err.kind, GATEWAY_API_ERROR);
        assert_int_equal(err.code, 100005);
        assert_string_equal(err.message, "unauthorized operation");
}

static void test_parse_list_junk(void **state) {
        static const char *const junk[] = {
                "",
                "null",
                "[]",
                "\"Header\"",
                "{",
                "{\"Header\":{\"Code\":0,},\"Payload\":{}}", /* the documentation's trailing comma */
                "{\"Header\":{},\"Payload\":{}}",
                "{\"Header\":{\"Code\":\"0\"},\"Payload\":{}}",
                "{\"Header\":{\"Code\":0.5},\"Payload\":{}}",
                "{\"Header\":{\"Code\":0}}",
                "{\"Header\":{\"Code\":0},\"Payload\":[]}",
                "{\"Header\":{\"Code\":0},\"Payload\":{\"Sessions\":{}}}",
                "{\"Header\":{\"Code\":0},\"Payload\":{\"Sessions\":[]}} trailing",
        };

        (void) state;
        for (size_t i = 0; i < ELEMENTSOF(junk); i++) {
                struct session_list *l = NULL;
                struct gateway_error err;

                assert_int_equal(gateway_parse_list(junk[i], strlen(junk[i]), &l, &err), -EPROTO);
                assert_null(l);
                assert_int_equal(err.kind, GATEWAY_BAD_RESPONSE);
                assert_true(err.message[0] != '\0');
        }
}

/* Issue 11: an entry that does not have the documented shape is skipped and
 * never acted on; the rest of the list is decided. */
static void test_parse_list_bad_entries_skipped(void **state) {
        static const char *const bad[] = {
                /* documented types only (red team, issue 11) */
                "{\"Header\":{\"Code\":0},\"Payload\":{\"Sessions\":[{\"SessionId\":\"x\",\"UserId\":\"a\","
                "\"SessionStatus\":\"4\"}]}}",
                "{\"Header\":{\"Code\":0},\"Payload\":{\"Sessions\":[{\"SessionId\":\"x\",\"UserId\":\"a\","
                "\"SessionStatus\":1,\"IsSessionStarted\":\"false\"}]}}",
                "{\"Header\":{\"Code\":0},\"Payload\":{\"Sessions\":[{\"SessionId\":\"x\",\"UserId\":\"a\","
                "\"SessionStatus\":1,\"IsSessionStarted\":0}]}}",
                "{\"Header\":{\"Code\":0},\"Payload\":{\"Sessions\":[{\"SessionId\":\"x\",\"UserId\":\"a\","
                "\"UserId\":\"vip-1\",\"SessionStatus\":4}]}}",
                "{\"Header\":{\"Code\":0},\"Payload\":{\"Sessions\":[1]}}",
                "{\"Header\":{\"Code\":0},\"Payload\":{\"Sessions\":[{}]}}",
                "{\"Header\":{\"Code\":0},\"Payload\":{\"Sessions\":[{\"SessionId\":\"\",\"UserId\":\"a\","
                "\"SessionStatus\":1}]}}",
                "{\"Header\":{\"Code\":0},\"Payload\":{\"Sessions\":[{\"SessionId\":5,\"UserId\":\"a\","
                "\"SessionStatus\":1}]}}",
                "{\"Header\":{\"Code\":0},\"Payload\":{\"Sessions\":[{\"SessionId\":\"x\",\"SessionStatus\":"
                "1}]}}",
                "{\"Header\":{\"Code\":0},\"Payload\":{\"Sessions\":[{\"SessionId\":\"x\",\"UserId\":\"a\","
                "\"SessionStatus\":1.5}]}}",
                "{\"Header\":{\"Code\":0},\"Payload\":{\"Sessions\":[{\"SessionId\":\"x\",\"UserId\":\"a\","
                "\"SessionStatus\":\"in progress\"}]}}",
                "{\"Header\":{\"Code\":0},\"Payload\":{\"Sessions\":[{\"SessionId\":\"x\",\"UserId\":\"a\","
                "\"SessionStatus\":1,\"IsSessionStarted\":\"maybe\"}]}}",
                /* a good entry followed by a bad one: only the bad one is skipped */
                "{\"Header\":{\"Code\":0},\"Payload\":{\"Sessions\":[{\"SessionId\":\"x\",\"UserId\":\"a\","
                "\"SessionStatus\":1},7]}}",
        };

        (void) state;
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                struct session_list *l = NULL;
                struct gateway_error err;

                assert_int_equal(gateway_parse_list(bad[i], strlen(bad[i]), &l, &err), 0);
                assert_int_equal(l->n_malformed, 1);
                assert_true(l->n <= 1);
                assert_non_null(malformed_entry_id(&l->malformed[0], idbuf, sizeof idbuf));
                assert_non_null(l->malformed[0].reason);
                session_list_free(l);
        }
}

static void test_parse_ack_and_stat(void **state) {
        const char *ok = "{\"Header\":{\"Code\":0,\"Message\":\"\"},\"Payload\":{\"ReqId\":\"x\"}}";
        const char *gone = "{\"Header\":{\"Code\":10004,\"Message\":\"session not found\"},\"Payload\":{}}";
        const char *stat =
                "{\"Header\":{\"Code\":0},\"Payload\":{\"SessionStatus\":2,\"IsSessionStarted\":true}}";
        struct gateway_error err;
        struct stat_result st;

        (void) state;
        assert_int_equal(gateway_parse_ack(ok, strlen(ok), &err), 0);
        assert_int_equal(gateway_parse_ack(gone, strlen(gone), &err), -EPROTO);
        assert_int_equal(err.kind, GATEWAY_API_ERROR);
        assert_int_equal(err.code, 10004);
        assert_int_equal(gateway_parse_ack("<html>", 6, &err), -EPROTO);
        assert_int_equal(err.kind, GATEWAY_BAD_RESPONSE);
        assert_int_equal(gateway_parse_stat(stat, strlen(stat), &st, &err), 0);
        assert_int_equal(st.status, 2);
        assert_int_equal(st.started, TRISTATE_TRUE);
        assert_int_equal(gateway_parse_stat(ok, strlen(ok), &st, &err), -EPROTO);
}

static void test_merge(void **state) {
        struct session_list *lists[3];
        struct session_list *m = NULL;

        (void) state;
        lists[0] = parse_ok("{\"Header\":{\"Code\":0},\"Payload\":{\"Sessions\":["
                            "{\"UserId\":\"a\",\"SessionId\":\"x\",\"SessionStatus\":1},"
                            "{\"UserId\":\"b\",\"SessionId\":\"y\",\"SessionStatus\":4}]}}");
        lists[1] = parse_ok("{\"Header\":{\"Code\":0},\"Payload\":{\"Sessions\":null}}");
        lists[2] = parse_ok("{\"Header\":{\"Code\":0},\"Payload\":{\"Sessions\":["
                            "{\"UserId\":\"c\",\"SessionId\":\"y\",\"SessionStatus\":1},"
                            "{\"UserId\":\"d\",\"SessionId\":\"z\",\"SessionStatus\":3}]}}");
        assert_int_equal(session_list_merge(lists, 3, &m), 0);
        /* "y" is in two projects with different users: never acted on. */
        assert_int_equal(m->n, 2);
        assert_int_equal(m->n_duplicates, 0);
        assert_int_equal(m->n_malformed, 1);
        assert_string_equal(malformed_entry_id(&m->malformed[0], idbuf, sizeof idbuf), "y");
        assert_string_equal(m->items[0].session_id, "x");
        assert_string_equal(m->items[1].session_id, "z");
        session_list_free(m);

        /* The same session listed identically by two projects counts once. */
        lists[0] = parse_ok("{\"Header\":{\"Code\":0},\"Payload\":{\"Sessions\":["
                            "{\"UserId\":\"a\",\"SessionId\":\"x\",\"SessionStatus\":1}]}}");
        lists[1] = parse_ok("{\"Header\":{\"Code\":0},\"Payload\":{\"Sessions\":["
                            "{\"UserId\":\"a\",\"SessionId\":\"x\",\"SessionStatus\":1}]}}");
        /* A hostile entry in one project hides its SessionId in the other too. */
        lists[2] = parse_ok("{\"Header\":{\"Code\":0},\"Payload\":{\"Sessions\":["
                            "{\"UserId\":\"a\\u2028\",\"SessionId\":\"x\",\"SessionStatus\":1}]}}");
        assert_int_equal(session_list_merge(lists, 2, &m), 0);
        assert_int_equal(m->n, 1);
        assert_int_equal(m->n_duplicates, 1);
        session_list_free(m);
        lists[0] = parse_ok("{\"Header\":{\"Code\":0},\"Payload\":{\"Sessions\":["
                            "{\"UserId\":\"a\",\"SessionId\":\"x\",\"SessionStatus\":1}]}}");
        lists[1] = lists[2];
        assert_int_equal(session_list_merge(lists, 2, &m), 0);
        assert_int_equal(m->n, 0);
        assert_int_equal(m->n_malformed, 1);
        session_list_free(m);
}

/* Issue 10, item 2: ids are hostile bytes. */
static void test_id_problem(void **state) {
        static const struct {
                const char *s;
                size_t len;
                bool ok;
        } cases[] = {
                { "abc", 3, true },
                { "", 0, true },
                { "\xc3\xbc"
                  "ber",
                  5, true },                     /* ü */
                { "\xf0\x9f\x98\x80", 4, true }, /* an emoji */
                { "a\0b", 3, false },            /* NUL */
                { "a\x1f"
                  "b",
                  3, false },                     /* C0 */
                { "a\x7f", 2, false },            /* DEL */
                { "a\xc2\x85", 3, false },        /* C1 (NEL) */
                { "a\xe2\x80\xa8", 4, false },    /* U+2028 */
                { "a\xe2\x80\xa9", 4, false },    /* U+2029 */
                { "a\xff", 2, false },            /* not UTF-8 */
                { "\xc0\xaf", 2, false },         /* overlong */
                { "\xed\xa0\x80", 3, false },     /* surrogate */
                { "\xf4\x90\x80\x80", 4, false }, /* above U+10FFFF */
                { "\xe2\x80", 2, false },         /* cut short */
        };
        char big[GATEWAY_ID_MAX + 2];

        (void) state;
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
                assert_int_equal(gateway_id_problem(cases[i].s, cases[i].len) == NULL, cases[i].ok);
        memset(big, 'x', sizeof big);
        assert_null(gateway_id_problem(big, GATEWAY_ID_MAX));
        assert_non_null(gateway_id_problem(big, GATEWAY_ID_MAX + 1));
}

static void test_parse_list_hostile_ids_skipped(void **state) {
        /* An escaped NUL would cut "victim\u0000x" to "victim", another session. */
        static const char json[] = "{\"Header\":{\"Code\":0},\"Payload\":{\"Sessions\":["
                                   "{\"SessionId\":\"victim\\u0000x\",\"UserId\":\"u\",\"SessionStatus\":4},"
                                   "{\"SessionId\":\"ok\",\"UserId\":\"a\\u2028b\",\"SessionStatus\":4},"
                                   "{\"SessionId\":\"a\\\\u0000\",\"UserId\":\"u\",\"SessionStatus\":4},"
                                   "{\"SessionId\":\"victim\",\"UserId\":\"u\",\"SessionStatus\":1}]}}";
        struct session_list *l = NULL;
        struct gateway_error err;

        (void) state;
        assert_int_equal(gateway_parse_list(json, strlen(json), &l, &err), 0);
        /* "a\\u0000" is a backslash and "u0000": a harmless id. */
        assert_int_equal(l->n, 2);
        assert_string_equal(l->items[0].session_id, "a\\u0000");
        assert_string_equal(l->items[1].session_id, "victim");
        assert_int_equal(l->n_malformed, 2);
        assert_string_equal(malformed_entry_id(&l->malformed[0], idbuf, sizeof idbuf), "victim\\x01x");
        assert_string_equal(malformed_entry_id(&l->malformed[1], idbuf, sizeof idbuf), "ok");
        session_list_free(l);

        /* A raw NUL byte inside a string is no id either. */
        {
                static const char raw[] = "{\"Header\":{\"Code\":0},\"Payload\":{\"Sessions\":["
                                          "{\"SessionId\":\"v\0x\",\"UserId\":\"u\",\"SessionStatus\":4}]}}";

                l = NULL;
                assert_int_equal(gateway_parse_list(raw, sizeof raw - 1, &l, &err), 0);
                assert_int_equal(l->n, 0);
                assert_int_equal(l->n_malformed, 1);
                session_list_free(l);
        }
}

/* Valid JSON that cJSON alone would refuse as a whole (issue 19): a lone
 * UTF-16 surrogate in any form, a field nested past the parser's limit.
 * The entry is skipped; the rest of the list is decided. */
static void test_parse_list_surrogates_and_depth_skip_the_entry(void **state) {
        static const char *const bad[] = {
                "\"SessionId\":\"s-bad\\udc00\",\"UserId\":\"u\"",         /* a low surrogate alone */
                "\"SessionId\":\"s-bad\",\"UserId\":\"js-client\\ud800\"", /* a high one at the end */
                "\"SessionId\":\"s\\ud800x\",\"UserId\":\"u\"",            /* a high one alone */
                "\"SessionId\":\"s\\udc00\\ud800\",\"UserId\":\"u\"",      /* a reversed pair */
                "\"SessionId\":\"s\\uD800\\u0041\",\"UserId\":\"u\"",      /* high + not low */
        };
        struct gateway_error err;
        char json[4096];

        (void) state;
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                struct session_list *l = NULL;

                snprintf(json, sizeof json,
                         "{\"Header\":{\"Code\":0},\"Payload\":{\"Sessions\":["
                         "{%s,\"SessionStatus\":4},"
                         "{\"SessionId\":\"ok\\ud83d\\ude00\",\"UserId\":\"u\",\"SessionStatus\":4}]}}",
                         bad[i]);
                assert_int_equal(gateway_parse_list(json, strlen(json), &l, &err), 0);
                assert_int_equal(l->n, 1);
                assert_string_equal(l->items[0].session_id, "ok\xf0\x9f\x98\x80"); /* a real pair */
                assert_int_equal(l->n_malformed, 1);
                session_list_free(l);
        }

        /* An unknown field nested 2,000 deep: the entry goes, the list stays. */
        {
                struct session_list *l = NULL;
                size_t n = 0, depth = 2000;
                char *deep = malloc(depth * 2 + 512);

                assert_non_null(deep);
                n += (size_t) sprintf(deep,
                                      "{\"Header\":{\"Code\":0},\"Payload\":{\"Sessions\":["
                                      "{\"SessionId\":\"deep\",\"UserId\":\"u\",\"SessionStatus\":4,\"x\":");
                for (size_t i = 0; i < depth; i++)
                        deep[n++] = '[';
                for (size_t i = 0; i < depth; i++)
                        deep[n++] = ']';
                n += (size_t) sprintf(deep + n,
                                      "},{\"SessionId\":\"ok\",\"UserId\":\"u\",\"SessionStatus\":4}]}}");
                assert_int_equal(gateway_parse_list(deep, n, &l, &err), 0);
                assert_int_equal(l->n, 1);
                assert_string_equal(l->items[0].session_id, "ok");
                assert_int_equal(l->n_malformed, 1);
                assert_string_equal(malformed_entry_id(&l->malformed[0], idbuf, sizeof idbuf), "deep");
                session_list_free(l);
                free(deep);
        }
}

/* Strings too long to be an id are shortened before parsing (a 16 MiB
 * list of them would otherwise be held whole): the entry is still skipped
 * with the right reason, and the log can still tell which id it was. */
static void test_parse_list_long_ids_shortened(void **state) {
        char json[2048], id[301], ctl[120];
        struct session_list *l = NULL;
        struct gateway_error err;

        (void) state;
        memset(id, 'a', 300);
        id[0] = 'B', id[299] = 'Z', id[300] = '\0';
        memset(ctl, 'c', 110);
        memcpy(ctl + 50, "\\n", 2);
        ctl[110] = '\0';
        snprintf(json, sizeof json,
                 "{\"Header\":{\"Code\":0},\"Payload\":{\"Sessions\":["
                 "{\"SessionId\":\"%s\",\"UserId\":\"u\",\"SessionStatus\":4},"
                 "{\"SessionId\":\"%s\",\"UserId\":\"u\",\"SessionStatus\":4},"
                 "{\"SessionId\":\"ok\",\"UserId\":\"u\",\"SessionStatus\":4}]}}",
                 id, ctl);
        assert_int_equal(gateway_parse_list(json, strlen(json), &l, &err), 0);
        assert_int_equal(l->n, 1);
        assert_int_equal(l->n_malformed, 2);
        assert_string_equal(l->malformed[0].reason, "longer than 256 bytes");
        assert_string_equal(l->malformed[1].reason, "contains a control character");
        malformed_entry_id(&l->malformed[0], idbuf, sizeof idbuf);
        assert_non_null(strstr(idbuf, "Baaaa"));
        assert_non_null(strstr(idbuf, "aaaZ"));
        session_list_free(l);
}

/* What the second red team of issue 19 found in the parser. */
static void test_parse_list_red_team_2(void **state) {
        struct session_list *l = NULL;
        struct gateway_error err;
        (void) state;

        /* A twin with a field given twice blocks the valid entry beside it. */
        {
                static const char json[] = "{\"Header\":{\"Code\":0},\"Payload\":{\"Sessions\":["
                                           "{\"SessionId\":\"s1\",\"UserId\":\"u\",\"SessionStatus\":4},"
                                           "{\"SessionId\":\"s1\",\"UserId\":\"u\",\"UserId\":\"vip-1\","
                                           "\"SessionStatus\":4},"
                                           "{\"SessionId\":\"s2\",\"SessionId\":\"s3\",\"UserId\":\"u\","
                                           "\"SessionStatus\":4},"
                                           "{\"SessionId\":\"s3\",\"UserId\":\"u\",\"SessionStatus\":4},"
                                           "{\"SessionId\":\"ok\",\"UserId\":\"u\",\"SessionStatus\":4}]}}";

                assert_int_equal(gateway_parse_list(json, strlen(json), &l, &err), 0);
                assert_int_equal(l->n, 1);
                assert_string_equal(l->items[0].session_id, "ok");
                session_list_free(l);
        }
        /* A number with a fraction or an exponent is no JSON integer. */
        {
                static const char *const forms[] = { "4.0", "4e0", "40e-1", "3.9999999999999999", "4E0" };

                for (size_t i = 0; i < ELEMENTSOF(forms); i++) {
                        char json[512];

                        snprintf(json, sizeof json,
                                 "{\"Header\":{\"Code\":0},\"Payload\":{\"Sessions\":["
                                 "{\"SessionId\":\"s1\",\"UserId\":\"u\",\"SessionStatus\":%s,\"x\":1.5},"
                                 "{\"SessionId\":\"ok\",\"UserId\":\"u\",\"SessionStatus\":4}]}}",
                                 forms[i]);
                        l = NULL;
                        assert_int_equal(gateway_parse_list(json, strlen(json), &l, &err), 0);
                        assert_int_equal(l->n, 1);
                        assert_string_equal(l->items[0].session_id, "ok");
                        assert_string_equal(l->malformed[0].reason, "SessionStatus is not an integer");
                        session_list_free(l);
                }
        }
        /* The envelope says one thing: a key given twice refuses the reply. */
        {
                static const char *const twice[] = {
                        "{\"Header\":{\"Code\":0,\"Code\":100005},\"Payload\":{\"Sessions\":[]}}",
                        "{\"Header\":{\"Code\":0},\"Header\":{\"Code\":100003},\"Payload\":{\"Sessions\":[]}"
                        "}",
                        "{\"Header\":{\"Code\":0},\"Payload\":{\"Sessions\":[]},\"Payload\":{\"Sessions\":[]"
                        "}}",
                        "{\"Header\":{\"Code\":0},\"Payload\":{\"Sessions\":[{\"SessionId\":\"s\","
                        "\"UserId\":"
                        "\"u\",\"SessionStatus\":4}],\"Sessions\":[]}}",
                };

                for (size_t i = 0; i < ELEMENTSOF(twice); i++) {
                        l = NULL;
                        assert_int_equal(gateway_parse_list(twice[i], strlen(twice[i]), &l, &err), -EPROTO);
                        assert_int_equal(err.kind, GATEWAY_BAD_RESPONSE);
                        assert_null(l);
                }
        }
        /* One hostile id listed 3 times holds one slot: live once. */
        {
                static const char json[] =
                        "{\"Header\":{\"Code\":0},\"Payload\":{\"Sessions\":["
                        "{\"SessionId\":\"h\\u0000\",\"UserId\":\"u\",\"SessionStatus\":1},"
                        "{\"SessionId\":\"h\\u0000\",\"UserId\":\"u\",\"SessionStatus\":1},"
                        "{\"SessionId\":\"h\\u0000\",\"UserId\":\"u\",\"SessionStatus\":1}]}}";
                size_t live = 0;

                l = NULL;
                assert_int_equal(gateway_parse_list(json, strlen(json), &l, &err), 0);
                assert_int_equal(l->n_malformed, 3);
                for (size_t i = 0; i < l->n_malformed; i++)
                        live += l->malformed[i].live;
                assert_int_equal(live, 1);
                session_list_free(l);
        }
}

static void test_parse_list_value_cap(void **state) {
        size_t n = GATEWAY_LIST_MAX_VALUES + 10, len = 0;
        char *json = malloc(n * 2 + 128);
        struct session_list *l = NULL;
        struct gateway_error err;

        (void) state;
        len += (size_t) sprintf(json, "{\"Header\":{\"Code\":0},\"Payload\":{\"Sessions\":[],\"X\":[");
        for (size_t i = 0; i < n; i++)
                json[len++] = i ? ',' : '0', json[len++] = '0';
        len += (size_t) sprintf(json + len, "]}}");
        assert_int_equal(gateway_parse_list(json, len, &l, &err), -EPROTO);
        assert_int_equal(err.kind, GATEWAY_BAD_RESPONSE);
        assert_non_null(strstr(err.message, "JSON values"));
        free(json);
}

static void test_parse_not_nul_terminated(void **state) {
        /* The parser must honour the length and never read past it. */
        const char text[] = "{\"Header\":{\"Code\":0},\"Payload\":{}}";
        char *copy = malloc(sizeof text - 1);
        struct gateway_error err;

        (void) state;
        memcpy(copy, text, sizeof text - 1);
        assert_int_equal(gateway_parse_ack(copy, sizeof text - 1, &err), 0);
        assert_int_equal(gateway_parse_ack(copy, 10, &err), -EPROTO);
        free(copy);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_signature_vector),
                cmocka_unit_test(test_signature_second_vector),
                cmocka_unit_test(test_code_names),
                cmocka_unit_test(test_build_url),
                cmocka_unit_test(test_signer_cache),
                cmocka_unit_test(test_reqid),
                cmocka_unit_test(test_build_body),
                cmocka_unit_test(test_parse_list_sample),
                cmocka_unit_test(test_parse_list_empty_forms),
                cmocka_unit_test(test_parse_list_duplicates_and_unknown_started),
                cmocka_unit_test(test_parse_list_api_error),
                cmocka_unit_test(test_parse_list_junk),
                cmocka_unit_test(test_parse_list_bad_entries_skipped),
                cmocka_unit_test(test_parse_ack_and_stat),
                cmocka_unit_test(test_merge),
                cmocka_unit_test(test_parse_not_nul_terminated),
                cmocka_unit_test(test_id_problem),
                cmocka_unit_test(test_parse_list_hostile_ids_skipped),
                cmocka_unit_test(test_parse_list_surrogates_and_depth_skip_the_entry),
                cmocka_unit_test(test_parse_list_long_ids_shortened),
                cmocka_unit_test(test_parse_list_red_team_2),
                cmocka_unit_test(test_parse_list_value_cap),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
