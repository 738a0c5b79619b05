/* The webhook's pure parts: the signature (checked against openssl dgst
 * -hmac), the event and batch bodies, and the durable queue file: what a
 * restart, a torn write and a compaction leave in it. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "notify-event.h"
#include "notify-queue.h"

/* printf '%s' '1700000000.{"events":[]}' | openssl dgst -sha256 -hmac whsec_test */
static void test_signature_vector(void **state) {
        char sig[NOTIFY_SIGNATURE_LEN + 1];

        (void) state;
        assert_int_equal(notify_sign("whsec_test", "1700000000", "{\"events\":[]}", sig), 0);
        assert_string_equal(sig, "sha256=4f6f9b7a41398ad124e52a1320534f978e522923f3f2b2724e31d7a9dbf78a7f");
}

static void test_types_round_trip(void **state) {
        (void) state;
        for (int t = 0; t < NOTIFY_TYPES; t++)
                assert_int_equal(notify_type_from_string(notify_type_to_string((enum notify_type) t)), t);
        assert_int_equal(notify_type_from_string("reclaim"), -1);
        assert_int_equal(notify_type_from_string(NULL), -1);
}

static void test_event_fields(void **state) {
        struct notify_session s = {
                .session_id = "m1",
                .user_id = "u\"1\n",
                .policy = "stale",
                .policy_kind = "max_age",
                .outcome = "closed",
                .age_sec = 3600,
                .session_status = 1,
        };
        char *json = NULL, id[NOTIFY_ID_LEN + 1];
        cJSON *e;

        (void) state;
        assert_int_equal(notify_new_id(id), 0);
        assert_int_equal(strlen(id), NOTIFY_ID_LEN);
        assert_int_equal(
                notify_event_render(NOTIFY_RECLAIMED, id, 1796476201894, "default", &s, NULL, &json), 0);
        e = cJSON_Parse(json);
        assert_non_null(e);
        assert_string_equal(cJSON_GetObjectItem(e, "id")->valuestring, id);
        assert_string_equal(cJSON_GetObjectItem(e, "type")->valuestring, "reclaimed");
        assert_string_equal(cJSON_GetObjectItem(e, "time")->valuestring, "2026-12-05T13:10:01.894Z");
        assert_string_equal(cJSON_GetObjectItem(e, "user_id")->valuestring, "u\"1\n");
        assert_int_equal(cJSON_GetObjectItem(e, "age_sec")->valueint, 3600);
        assert_int_equal(cJSON_GetObjectItem(e, "session_status")->valueint, 1);
        assert_true(cJSON_IsFalse(cJSON_GetObjectItem(e, "dry_run")));
        /* unknown owner: left out, not null */
        assert_null(cJSON_GetObjectItem(e, "project_id"));
        assert_null(cJSON_GetObjectItem(e, "due_at"));
        cJSON_Delete(e);
        free(json);

        s.outcome = NULL;
        s.due_at_wall_ms = 1796476501000;
        assert_int_equal(notify_event_render(NOTIFY_DUE_SOON, id, 1796476201000, "a", &s, NULL, &json), 0);
        e = cJSON_Parse(json);
        assert_string_equal(cJSON_GetObjectItem(e, "due_at")->valuestring, "2026-12-05T13:15:01.000Z");
        assert_null(cJSON_GetObjectItem(e, "outcome"));
        cJSON_Delete(e);
        free(json);

        assert_int_equal(
                notify_event_render(NOTIFY_RECLAIMING_STOPPED, id, 0, "a", NULL, "failing to list", &json),
                0);
        e = cJSON_Parse(json);
        assert_string_equal(cJSON_GetObjectItem(e, "reason")->valuestring, "failing to list");
        assert_null(cJSON_GetObjectItem(e, "session_id"));
        cJSON_Delete(e);
        free(json);
}

static void test_bodies(void **state) {
        char *events[2] = { NULL, NULL }, *body = NULL;
        struct notify_session s = { .session_id = "m1",
                                    .user_id = "<!channel> & <https://evil|click>",
                                    .policy = "p",
                                    .policy_kind = "failed",
                                    .outcome = "closed" };
        cJSON *b;

        (void) state;
        assert_int_equal(notify_event_render(NOTIFY_RECLAIMED, "id-1", 0, "default", &s, NULL, &events[0]),
                         0);
        assert_int_equal(notify_event_render(NOTIFY_RECLAIMING_RESUMED, "id-2", 0, "default", NULL,
                                             "stalled", &events[1]),
                         0);
        assert_int_equal(notify_body_json(events, 2, &body), 0);
        b = cJSON_Parse(body);
        assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(b, "events")), 2);
        assert_string_equal(
                cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(b, "events"), 1), "id")
                        ->valuestring,
                "id-2");
        cJSON_Delete(b);
        free(body);

        {
                size_t used = 0;

                assert_int_equal(notify_body_slack(events, 2, &body, &used), 0);
                assert_int_equal(used, 2);
        }
        b = cJSON_Parse(body);
        {
                const char *text = cJSON_GetObjectItem(b, "text")->valuestring;

                assert_non_null(strstr(text, "reclaimed session m1"));
                assert_non_null(strstr(text, "&lt;!channel&gt; &amp; &lt;https://evil|click&gt;"));
                assert_null(strstr(text, "<!channel>"));
                assert_non_null(
                        strstr(text, "\nivh-reclaimd, account default: reclaiming resumed (was: stalled)"));
        }
        cJSON_Delete(b);
        free(body);

        /* Not JSON: refused, not sent half-made. */
        free(events[1]);
        events[1] = strdup("{broken");
        assert_int_equal(notify_body_json(events, 2, &body), -EINVAL);
        assert_int_equal(notify_body_slack(events, 2, &body, NULL), -EINVAL);
        free(events[0]);
        free(events[1]);
}

/* A batch whose text would pass Slack's limit is cut at an event's
 * boundary; the rest goes in the next request. */
static void test_slack_text_limit(void **state) {
        char *events[100], *body = NULL, user[1001];
        size_t used = 0;
        cJSON *b;

        (void) state;
        memset(user, 'u', sizeof user - 1);
        user[sizeof user - 1] = '\0';
        for (int i = 0; i < 100; i++) {
                struct notify_session s = { .session_id = "m1",
                                            .user_id = user,
                                            .policy = "p",
                                            .policy_kind = "failed",
                                            .outcome = "closed" };
                char id[16];

                snprintf(id, sizeof id, "id-%d", i);
                assert_int_equal(
                        notify_event_render(NOTIFY_RECLAIMED, id, 0, "default", &s, NULL, &events[i]), 0);
        }
        assert_int_equal(notify_body_slack(events, 100, &body, &used), 0);
        assert_true(used >= 1 && used < 100);
        b = cJSON_Parse(body);
        assert_true(strlen(cJSON_GetObjectItem(b, "text")->valuestring) <= NOTIFY_SLACK_TEXT_MAX);
        cJSON_Delete(b);
        free(body);
        for (int i = 0; i < 100; i++)
                free(events[i]);
}

/* An event said once (due_soon, would_reclaim) keeps its id across a
 * restart: the id comes from the account and what the event is about. */
static void test_stable_ids(void **state) {
        char a[NOTIFY_ID_LEN + 1], b[NOTIFY_ID_LEN + 1], c[NOTIFY_ID_LEN + 1];

        (void) state;
        assert_int_equal(notify_stable_id("default", "2\nm1\np", a), 0);
        assert_int_equal(notify_stable_id("default", "2\nm1\np", b), 0);
        assert_int_equal(notify_stable_id("prod", "2\nm1\np", c), 0);
        assert_string_equal(a, b);
        assert_string_not_equal(a, c);
        assert_int_equal(strlen(a), NOTIFY_ID_LEN);
        assert_int_equal(a[14], '5'); /* a version-5-shaped UUID */
}

struct dir {
        char path[64];
        char file[96];
};

static void make_dir(struct dir *d) {
        strcpy(d->path, "/tmp/ivh-test-notify-XXXXXX");
        assert_non_null(mkdtemp(d->path));
        snprintf(d->file, sizeof d->file, "%s/q.notify.jsonl", d->path);
}

static void remove_dir(struct dir *d) {
        char cmd[128];

        snprintf(cmd, sizeof cmd, "rm -rf %s", d->path);
        assert_int_equal(system(cmd), 0);
}

static void push(struct notify_queue *q, const char *id, int64_t at) {
        char json[128];

        snprintf(json, sizeof json, "{\"id\":\"%s\",\"type\":\"reclaimed\"}", id);
        assert_int_equal(notify_queue_push(q, id, json, at), 0);
        assert_int_equal(q->write_error, 0);
}

static void append(const char *file, const char *text) {
        FILE *f = fopen(file, "a");

        assert_non_null(f);
        fputs(text, f);
        fclose(f);
}

/* What was pushed and not popped comes back after a "restart", in order. */
static void test_queue_survives_reopen(void **state) {
        struct notify_queue q;
        struct dir d;
        struct stat st;

        (void) state;
        make_dir(&d);
        assert_int_equal(notify_queue_open(&q, d.file, NULL), 0);
        push(&q, "a", 1000);
        push(&q, "b", 2000);
        push(&q, "c", 3000);
        notify_queue_pop(&q, 1);
        /* kill -9 here: no close, no sync */
        assert_int_equal(stat(d.file, &st), 0);
        assert_int_equal(st.st_mode & 0777, 0600);
        {
                struct notify_queue q2;

                assert_int_equal(notify_queue_open(&q2, d.file, NULL), 0);
                assert_int_equal(q2.n, 2);
                assert_string_equal(notify_queue_at(&q2, 0)->id, "b");
                assert_int_equal(notify_queue_at(&q2, 0)->queued_wall_ms, 2000);
                assert_string_equal(notify_queue_at(&q2, 1)->id, "c");
                assert_non_null(strstr(notify_queue_at(&q2, 1)->json, "\"c\""));
                /* reopening compacted the file: two lines, both live */
                assert_int_equal(q2.lines, 2);
                notify_queue_close(&q2);
        }
        notify_queue_close(&q);
        remove_dir(&d);
}

/* A torn last line (power loss mid-write) and junk lines are skipped and
 * counted; an event written twice counts once. */
static void test_queue_skips_torn_and_junk(void **state) {
        struct notify_queue q;
        struct dir d;

        (void) state;
        make_dir(&d);
        append(d.file, "{\"at\":1,\"event\":{\"id\":\"x\",\"type\":\"reclaimed\"}}\n"
                       "not json\n"
                       "{\"at\":2,\"event\":{\"id\":\"x\",\"type\":\"reclaimed\"}}\n"
                       "{\"at\":3,\"event\":{\"type\":\"no id\"}}\n"
                       "{\"at\":4,\"event\":{\"id\":\"y\",\"type\":\"recl");
        assert_int_equal(notify_queue_open(&q, d.file, NULL), 3);
        assert_int_equal(q.n, 1);
        assert_string_equal(notify_queue_at(&q, 0)->id, "x");
        /* The file as it was is kept beside; the new one has no torn line
         * for the next event to run into. */
        assert_non_null(q.corrupt_copy);
        assert_int_equal(access(q.corrupt_copy, F_OK), 0);
        push(&q, "z", 5);
        notify_queue_close(&q);
        assert_int_equal(notify_queue_open(&q, d.file, NULL), 0);
        assert_int_equal(q.n, 2);
        assert_string_equal(notify_queue_at(&q, 1)->id, "z");
        notify_queue_close(&q);
        remove_dir(&d);
}

/* NULs (what a power cut can leave in place of data) spoil their line
 * only: the events after them are read. */
static void test_queue_reads_past_nuls(void **state) {
        static const char text[] = "{\"at\":1,\"event\":{\"id\":\"a\",\"type\":\"reclaimed\"}}\n"
                                   "\0\0\0\0\0\0\0\0\n"
                                   "{\"at\":2,\"event\":{\"id\":\"b\",\"type\":\"reclaimed\"}}\n";
        struct notify_queue q;
        struct dir d;
        FILE *f;

        (void) state;
        make_dir(&d);
        f = fopen(d.file, "w");
        assert_non_null(f);
        assert_int_equal(fwrite(text, 1, sizeof text - 1, f), sizeof text - 1);
        fclose(f);
        assert_int_equal(notify_queue_open(&q, d.file, NULL), 1);
        assert_int_equal(q.n, 2);
        assert_string_equal(notify_queue_at(&q, 1)->id, "b");
        notify_queue_close(&q);
        remove_dir(&d);
}

/* Many deliveries: the file is rewritten with the live events only, and
 * stays small. */
static void test_queue_compacts(void **state) {
        struct notify_queue q;
        struct dir d;
        struct stat st;
        char id[16];

        (void) state;
        make_dir(&d);
        assert_int_equal(notify_queue_open(&q, d.file, NULL), 0);
        for (int i = 0; i < 5000; i++) {
                snprintf(id, sizeof id, "e%d", i);
                push(&q, id, i);
                if (i % 2 == 1)
                        notify_queue_pop(&q, 2);
        }
        push(&q, "last", 9999);
        assert_int_equal(q.n, 1);
        assert_true(q.lines < 2 * 1000 + 10);
        assert_int_equal(stat(d.file, &st), 0);
        assert_true(st.st_size < 200 * 1024);
        notify_queue_close(&q);
        assert_int_equal(notify_queue_open(&q, d.file, NULL), 0);
        assert_int_equal(q.n, 1);
        assert_string_equal(notify_queue_at(&q, 0)->id, "last");
        notify_queue_close(&q);
        remove_dir(&d);
}

/* A queue file that cannot be written: the events live in memory and the
 * failure is reported, nothing is lost while the process runs. */
static void test_queue_unwritable(void **state) {
        struct notify_queue q;
        struct dir d;
        char file[128];

        (void) state;
        make_dir(&d);
        snprintf(file, sizeof file, "%s/missing/q.jsonl", d.path);
        assert_true(notify_queue_open(&q, file, NULL) < 0);
        notify_queue_close(&q);
        /* a FIFO is refused, not read (it would block) */
        snprintf(file, sizeof file, "%s/fifo", d.path);
        assert_int_equal(mkfifo(file, 0600), 0);
        assert_true(notify_queue_open(&q, file, NULL) < 0);
        notify_queue_close(&q);
        remove_dir(&d);
}

/* A full disk: a short write is cut back off (no torn line runs into the
 * next one), the events stay in memory, and once there is room again the
 * file is rewritten whole: a restart then finds every event. Needs root for
 * a small tmpfs; skipped otherwise. */
static void test_queue_full_disk(void **state) {
        struct notify_queue q;
        struct dir d;
        char cmd[256], filler[128], id[16];
        int bad, n_full = 0;
        FILE *f;

        (void) state;
        if (geteuid() != 0)
                skip();
        make_dir(&d);
        snprintf(cmd, sizeof cmd, "mount -t tmpfs -o size=64k tmpfs %s 2>/dev/null", d.path);
        if (system(cmd) != 0) {
                remove_dir(&d);
                skip();
        }
        assert_int_equal(notify_queue_open(&q, d.file, NULL), 0);
        push(&q, "before", 1);
        snprintf(filler, sizeof filler, "%s/filler", d.path);
        f = fopen(filler, "w");
        assert_non_null(f);
        while (fputs("filler filler filler filler filler filler filler filler\n", f) >= 0 && fflush(f) == 0)
                ;
        fclose(f);
        for (int i = 0; i < 40; i++) {
                char json[256];

                snprintf(id, sizeof id, "full%d", i);
                snprintf(json, sizeof json, "{\"id\":\"%s\",\"type\":\"reclaimed\",\"pad\":\"%0100d\"}", id,
                         i);
                assert_int_equal(notify_queue_push(&q, id, json, i), 0);
                n_full += q.write_error != 0;
        }
        assert_true(n_full > 0); /* the disk was full */
        assert_true(q.behind);
        assert_int_equal(unlink(filler), 0);
        push(&q, "after", 99);
        assert_false(q.behind);
        assert_int_equal(q.write_error, 0);
        notify_queue_close(&q);
        /* a restart: every event, in order, and no unreadable line */
        bad = notify_queue_open(&q, d.file, NULL);
        assert_int_equal(bad, 0);
        assert_int_equal(q.n, 42);
        assert_string_equal(notify_queue_at(&q, 0)->id, "before");
        assert_string_equal(notify_queue_at(&q, 41)->id, "after");
        notify_queue_close(&q);
        snprintf(cmd, sizeof cmd, "umount %s", d.path);
        assert_int_equal(system(cmd), 0);
        remove_dir(&d);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_signature_vector),
                cmocka_unit_test(test_types_round_trip),
                cmocka_unit_test(test_event_fields),
                cmocka_unit_test(test_bodies),
                cmocka_unit_test(test_slack_text_limit),
                cmocka_unit_test(test_stable_ids),
                cmocka_unit_test(test_queue_survives_reopen),
                cmocka_unit_test(test_queue_skips_torn_and_junk),
                cmocka_unit_test(test_queue_reads_past_nuls),
                cmocka_unit_test(test_queue_compacts),
                cmocka_unit_test(test_queue_unwritable),
                cmocka_unit_test(test_queue_full_disk),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
