#include "notify-queue.h"

#include <assert.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "fileio.h"
#include "strmap.h"

/* A queue file larger than this is not read (max_queue events of a few
 * hundred bytes each fit many times over). */
#define QUEUE_FILE_MAX (256u * 1024 * 1024)
/* The file is rewritten when it holds more than this many dead lines and
 * more dead lines than live ones. */
#define COMPACT_MIN_DEAD 1000

static void item_free(struct notify_item *it) {
        free(it->id);
        free(it->json);
        *it = (struct notify_item){ 0 };
}

/* Room for one more item at the end, moving the live ones to the front
 * when the dead space before them is as large as they are. */
static int reserve(struct notify_queue *q) {
        if (q->head > 0 && q->head >= q->n) {
                memmove(q->items, q->items + q->head, q->n * sizeof *q->items);
                q->head = 0;
        }
        if (q->head + q->n < q->cap)
                return 0;
        size_t cap = q->cap ? q->cap * 2 : 64;
        struct notify_item *items = reallocarray(q->items, cap, sizeof *items);

        if (!items)
                return -ENOMEM;
        q->items = items;
        q->cap = cap;
        return 0;
}

static int add_item(struct notify_queue *q, const char *id, const char *json, int64_t at) {
        struct notify_item it = { .id = strdup(id), .json = strdup(json), .queued_wall_ms = at };

        if (!it.id || !it.json || reserve(q) < 0) {
                item_free(&it);
                return -ENOMEM;
        }
        q->items[q->head + q->n++] = it;
        return 0;
}

/* Writes one line in one write(): a process killed after it returns has
 * handed the whole line to the kernel. A short write (a full disk) is cut
 * back off, so that no torn line runs into the next one. */
static void write_line(struct notify_queue *q, cJSON *record) {
        char *text = cJSON_PrintUnformatted(record);
        off_t end = -1;
        size_t len;
        ssize_t w;

        if (!text) {
                q->write_error = ENOMEM;
                q->behind = true;
                return;
        }
        len = strlen(text);
        text[len] = '\n'; /* replaces the NUL; the length says where it ends */
        if (q->fd < 0)
                w = -1, errno = q->write_error ? q->write_error : EBADF;
        else {
                end = lseek(q->fd, 0, SEEK_END);
                do
                        w = write(q->fd, text, len + 1);
                while (w < 0 && errno == EINTR);
        }
        if (w == (ssize_t) (len + 1)) {
                q->lines++;
                q->unsynced = true;
                q->write_error = 0;
        } else {
                q->write_error = w < 0 ? errno : ENOSPC;
                q->behind = true;
                if (w > 0 && end >= 0)
                        (void) ftruncate(q->fd, end);
        }
        free(text);
}

static cJSON *add_record(const struct notify_item *it) {
        cJSON *rec = cJSON_CreateObject(), *event = cJSON_Parse(it->json);

        if (!rec || !event || !cJSON_AddNumberToObject(rec, "at", (double) it->queued_wall_ms)) {
                cJSON_Delete(rec);
                cJSON_Delete(event);
                return NULL;
        }
        cJSON_AddItemToObject(rec, "event", event);
        return rec;
}

static int open_append(struct notify_queue *q) {
        if (q->fd >= 0)
                close(q->fd);
        q->fd = open(q->path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOCTTY | O_NONBLOCK, 0600);
        return q->fd < 0 ? -errno : 0;
}

/* Rewrites the file with the live events only, atomically. */
static int compact(struct notify_queue *q) {
        char *text = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&text, &len);
        int r = 0;

        if (!f)
                return -ENOMEM;
        for (size_t i = 0; i < q->n && r == 0; i++) {
                cJSON *rec = add_record(notify_queue_at(q, i));
                char *line = rec ? cJSON_PrintUnformatted(rec) : NULL;

                if (!line)
                        r = -ENOMEM;
                else
                        fprintf(f, "%s\n", line);
                free(line);
                cJSON_Delete(rec);
        }
        if (fclose(f) != 0 && r == 0)
                r = -ENOMEM;
        if (r == 0)
                r = write_file_atomic(q->path, text, len, 0600);
        free(text);
        if (r < 0)
                return r;
        q->lines = q->n;
        q->unsynced = false;
        q->behind = false;
        return open_append(q);
}

/* Reads the file's lines: the ids taken out first, then the events still
 * in. Returns the number of lines that could not be read. */
static int load(struct notify_queue *q, const char *data, size_t size) {
        struct strmap *done = NULL;
        int bad = 0, r = strmap_new(&done);

        if (r < 0)
                return r;
        for (int pass = 0; pass < 2 && r >= 0; pass++) {
                const char *line = data, *end = data + size;

                /* By length, not by NUL: a NUL (what a power cut can leave)
                 * spoils its line only. */
                while (line < end && r >= 0) {
                        const char *eol = memchr(line, '\n', (size_t) (end - line));
                        cJSON *rec, *ids, *event, *at, *id;

                        if (!eol) {
                                /* A torn last line: the write that made it never returned. */
                                bad += pass == 0;
                                break;
                        }
                        rec = memchr(line, '\0', (size_t) (eol - line))
                                      ? NULL
                                      : cJSON_ParseWithLength(line, (size_t) (eol - line));
                        line = eol + 1;
                        ids = cJSON_GetObjectItemCaseSensitive(rec, "done");
                        event = cJSON_GetObjectItemCaseSensitive(rec, "event");
                        at = cJSON_GetObjectItemCaseSensitive(rec, "at");
                        id = cJSON_GetObjectItemCaseSensitive(event, "id");
                        q->lines += pass == 0;
                        if (pass == 0 && cJSON_IsArray(ids)) {
                                const cJSON *x;

                                cJSON_ArrayForEach(x, ids) if (cJSON_IsString(x) &&
                                                               strmap_put(done, x->valuestring, done) ==
                                                                       -ENOMEM) r = -ENOMEM;
                        } else if (cJSON_IsObject(event) && cJSON_IsString(id) && cJSON_IsNumber(at)) {
                                if (pass == 1 && !strmap_get(done, id->valuestring)) {
                                        char *json = cJSON_PrintUnformatted(event);

                                        r = json ? add_item(q, id->valuestring, json,
                                                            (int64_t) at->valuedouble)
                                                 : -ENOMEM;
                                        /* An event written twice (a compaction
                                         * cut short) counts once. */
                                        if (r >= 0 && strmap_put(done, id->valuestring, done) == -ENOMEM)
                                                r = -ENOMEM;
                                        free(json);
                                }
                        } else if (pass == 0 && !cJSON_IsArray(ids))
                                bad++;
                        cJSON_Delete(rec);
                }
        }
        strmap_free(done, NULL);
        return r < 0 ? r : bad;
}

/* A file with lines that cannot be read is kept beside, as PATH.corrupt-TIME,
 * before the live events are written anew: nothing is thrown away unseen,
 * and no torn line is left for the next line to run into. */
static void keep_corrupt(struct notify_queue *q) {
        char *copy = NULL;

        if (asprintf(&copy, "%s.corrupt-%lld", q->path, (long long) time(NULL)) >= 0 &&
            rename(q->path, copy) == 0)
                q->corrupt_copy = copy;
        else
                free(copy);
}

char *notify_queue_path(const char *state_file) {
        size_t len = strlen(state_file);
        char *r = NULL;

        if (len > 5 && strcmp(state_file + len - 5, ".json") == 0) {
                if (asprintf(&r, "%.*s.notify.jsonl", (int) (len - 5), state_file) < 0)
                        r = NULL;
        } else if (asprintf(&r, "%s.notify.jsonl", state_file) < 0)
                r = NULL;
        return r;
}

int notify_queue_open(struct notify_queue *q, const char *path, struct error *err) {
        char *data = NULL;
        size_t size = 0;
        int r, bad = 0;

        assert(q && path);
        *q = (struct notify_queue){ .fd = -1 };
        q->path = strdup(path);
        if (!q->path)
                return error_set(err, -ENOMEM, "out of memory");
        r = read_file_full(path, QUEUE_FILE_MAX, &data, &size);
        if (r == -ENOENT)
                r = 0;
        else if (r < 0) {
                q->write_error = -r; /* the file stays as it is */
                return error_set(err, r, "cannot read the notification queue %s: %s", path,
                                 r == -EFBIG ? "larger than 256 MiB" : file_strerror(r));
        } else {
                bad = load(q, data, size);
                free(data);
                if (bad < 0)
                        return error_set(err, bad, "out of memory reading the notification queue %s", path);
                if (bad > 0)
                        keep_corrupt(q);
        }
        /* Start from a file of live events only. */
        r = q->lines > q->n || bad > 0 ? compact(q) : open_append(q);
        if (r < 0)
                q->write_error = -r;
        if (r < 0)
                return error_set(err, r, "cannot write the notification queue %s: %s", path, strerror(-r));
        return bad;
}

void notify_queue_close(struct notify_queue *q) {
        notify_queue_sync(q);
        for (size_t i = 0; i < q->n; i++)
                item_free(notify_queue_at(q, i));
        free(q->items);
        free(q->path);
        free(q->corrupt_copy);
        if (q->fd >= 0)
                close(q->fd);
        *q = (struct notify_queue){ .fd = -1 };
}

/* After a failed write the file lacks what memory has: the next change
 * rewrites it whole instead of appending. Returns whether it did. A file
 * that could not be read at start is never rewritten (fd < 0). */
static bool catch_up(struct notify_queue *q) {
        int r;

        if (!q->behind || q->fd < 0)
                return false;
        r = compact(q);
        if (r < 0) {
                q->write_error = -r;
                return false;
        }
        q->behind = false;
        q->write_error = 0;
        return true;
}

int notify_queue_push(struct notify_queue *q, const char *id, const char *json, int64_t queued_wall_ms) {
        cJSON *rec;
        int r = add_item(q, id, json, queued_wall_ms);

        if (r < 0)
                return r;
        if (catch_up(q))
                return 0; /* the rewrite has it */
        rec = add_record(notify_queue_at(q, q->n - 1));
        if (rec)
                write_line(q, rec);
        else {
                q->write_error = ENOMEM;
                q->behind = true;
        }
        cJSON_Delete(rec);
        return 0;
}

void notify_queue_pop(struct notify_queue *q, size_t k) {
        cJSON *rec, *ids;

        if (k > q->n)
                k = q->n;
        if (k == 0)
                return;
        rec = cJSON_CreateObject();
        ids = rec ? cJSON_AddArrayToObject(rec, "done") : NULL;
        for (size_t i = 0; i < k; i++) {
                struct notify_item *it = notify_queue_at(q, i);
                cJSON *s = ids ? cJSON_CreateString(it->id) : NULL;

                if (s)
                        cJSON_AddItemToArray(ids, s);
                else
                        ids = NULL;
                item_free(it);
        }
        q->head += k;
        q->n -= k;
        if (q->n == 0)
                q->head = 0;
        /* Without the record, the events would come back after a restart:
         * sent twice, never lost. */
        if (!catch_up(q) && ids)
                write_line(q, rec);
        cJSON_Delete(rec);
        if (q->lines > COMPACT_MIN_DEAD + q->n && q->lines - q->n > q->n) {
                int r = compact(q);

                if (r < 0) {
                        q->write_error = -r;
                        q->behind = true;
                }
        }
}

void notify_queue_sync(struct notify_queue *q) {
        if (q->fd >= 0 && q->unsynced)
                (void) fdatasync(q->fd);
        q->unsynced = false;
}
