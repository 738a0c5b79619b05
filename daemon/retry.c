#include "retry.h"

#include <assert.h>
#include <errno.h>
#include <search.h>
#include <stdlib.h>
#include <string.h>

struct retry_entry {
        char *session_id;
        unsigned failures;
        int64_t not_before_ms;
};

struct retry_table {
        void *root; /* tsearch tree of struct retry_entry */
        size_t n;
};

static int compare(const void *a, const void *b) {
        return strcmp(((const struct retry_entry *) a)->session_id,
                      ((const struct retry_entry *) b)->session_id);
}

static void entry_free(void *p) {
        struct retry_entry *e = p;

        free(e->session_id);
        free(e);
}

int retry_table_new(struct retry_table **ret) {
        struct retry_table *t = calloc(1, sizeof *t);

        assert(ret);
        if (!t)
                return -ENOMEM;
        *ret = t;
        return 0;
}

void retry_table_free(struct retry_table *t) {
        if (!t)
                return;
        tdestroy(t->root, entry_free);
        free(t);
}

uint64_t retry_delay_ms(unsigned failures, uint64_t base_ms, uint64_t cap_ms, uint64_t retry_after_ms,
                        uint32_t random) {
        uint64_t d = base_ms;

        for (unsigned i = 1; i < failures && d < cap_ms; i++)
                d *= 2;
        if (d > cap_ms)
                d = cap_ms;
        /* Jitter: spread retries over [d/2, d] so that a burst of failures does
         * not come back as a burst. */
        d = d / 2 + (uint64_t) ((double) (d - d / 2) * ((double) random / (double) UINT32_MAX));
        /* The gateway's Retry-After is honoured, but never holds a session
         * back beyond the backoff cap. */
        if (retry_after_ms > cap_ms)
                retry_after_ms = cap_ms;
        return d > retry_after_ms ? d : retry_after_ms;
}

static struct retry_entry *lookup(const struct retry_table *t, const char *session_id) {
        struct retry_entry key = { .session_id = (char *) (uintptr_t) session_id }, **found;

        found = tfind(&key, &t->root, compare);
        return found ? *found : NULL;
}

bool retry_blocked(const struct retry_table *t, const char *session_id, int64_t now_ms,
                   uint64_t *ret_wait_ms) {
        const struct retry_entry *e = lookup(t, session_id);

        if (!e || now_ms >= e->not_before_ms)
                return false;
        if (ret_wait_ms)
                *ret_wait_ms = (uint64_t) (e->not_before_ms - now_ms);
        return true;
}

int retry_failed(struct retry_table *t, const char *session_id, int64_t now_ms, uint64_t base_ms,
                 uint64_t cap_ms, uint64_t retry_after_ms, uint32_t random) {
        struct retry_entry *e = lookup(t, session_id);

        if (!e) {
                struct retry_entry **slot;

                e = calloc(1, sizeof *e);
                if (!e || !(e->session_id = strdup(session_id))) {
                        free(e);
                        return -ENOMEM;
                }
                slot = tsearch(e, &t->root, compare);
                if (!slot) {
                        entry_free(e);
                        return -ENOMEM;
                }
                t->n++;
        }
        e->failures++;
        e->not_before_ms =
                now_ms + (int64_t) retry_delay_ms(e->failures, base_ms, cap_ms, retry_after_ms, random);
        return (int) e->failures;
}

void retry_forget(struct retry_table *t, const char *session_id) {
        struct retry_entry *e = lookup(t, session_id);

        assert(t && session_id);
        if (!e)
                return;
        tdelete(e, &t->root, compare);
        entry_free(e);
        t->n--;
}

void retry_prune(struct retry_table *t, const struct session_list *l) {
        void *keep = NULL;
        size_t n = 0;

        assert(t && l);
        if (t->n == 0)
                return;
        /* Move the listed entries into a new tree; what remains is dropped. */
        for (size_t i = 0; i < l->n; i++) {
                struct retry_entry *e = lookup(t, l->items[i].session_id);

                if (!e)
                        continue;
                tdelete(e, &t->root, compare);
                if (!tsearch(e, &keep, compare)) {
                        entry_free(e); /* out of memory: forgetting only makes a retry earlier */
                        continue;
                }
                n++;
        }
        tdestroy(t->root, entry_free);
        t->root = keep;
        t->n = n;
}

size_t retry_size(const struct retry_table *t) {
        assert(t);
        return t->n;
}
