/* The durable queue of webhook events: in memory, oldest first, and in an
 * append-only file beside the state file, so that a restart, kill -9 or a
 * reboot loses no event the daemon had logged.
 *
 * The file is one JSON object per line: {"at": MS, "event": {...}} adds an
 * event (queued at wall-clock MS), {"done": [ID, ...]} takes events out
 * (delivered or dropped). Each line goes out in one write() before the
 * journal hears of the event, and notify_queue_sync() (once per loop
 * iteration) makes it durable across a power loss. When most lines are
 * dead, the file is rewritten with the live events only, atomically (like
 * the state file). Lines that cannot be read (a torn last line, NULs after
 * a power loss) are skipped; the file they were in is kept beside as
 * PATH.corrupt-TIME and the live events are written anew. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"

struct notify_item {
        char *id;
        char *json; /* the event, as notify_event_render() made it */
        int64_t queued_wall_ms;
};

struct notify_queue {
        struct notify_item *items; /* items[head .. head + n) */
        size_t head, n, cap;
        char *path;
        char *corrupt_copy; /* where a file with unreadable lines was kept at open; NULL: none */
        int fd;             /* O_APPEND; -1 when the file cannot be written (events then live in memory) */
        size_t lines;       /* in the file, live or dead */
        bool unsynced;      /* written since the last notify_queue_sync() */
        int write_error;    /* the last failed write's errno, 0: none */
        bool behind;        /* a write failed: the file lacks what memory has, and is rewritten whole next */
};

/* The queue file of an account: its state file with ".json" replaced by
 * ".notify.jsonl" (or ".notify.jsonl" appended). The caller frees it. */
char *notify_queue_path(const char *state_file);

/* Opens (creating) path and loads the events it holds. Returns the number
 * of unreadable lines skipped (>= 0), or a negative errno with err set; the
 * queue is then empty and usable, in memory only. */
int notify_queue_open(struct notify_queue *q, const char *path, struct error *err);
void notify_queue_close(struct notify_queue *q);

static inline struct notify_item *notify_queue_at(const struct notify_queue *q, size_t i) {
        return &q->items[q->head + i];
}

/* Appends an event (id and json are copied) and writes it to the file. 0,
 * or -ENOMEM (nothing queued). A failed write keeps the event in memory and
 * is remembered in write_error (the caller warns). */
int notify_queue_push(struct notify_queue *q, const char *id, const char *json, int64_t queued_wall_ms);

/* Takes the k oldest events out, in memory and in the file. */
void notify_queue_pop(struct notify_queue *q, size_t k);

/* fdatasync()s what was written since the last call. */
void notify_queue_sync(struct notify_queue *q);
