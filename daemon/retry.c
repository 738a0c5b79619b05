#include "retry.h"

#include <assert.h>
#include <errno.h>
#include <stdlib.h>

#include "strmap.h"

struct retry_entry {
        unsigned failures;
        int64_t not_before_ms;
};

struct retry_table {
        struct strmap *entries; /* struct retry_entry by session id */
};

int retry_table_new(struct retry_table **ret) {
        struct retry_table *t = calloc(1, sizeof *t);

        assert(ret);
        if (!t || strmap_new(&t->entries) < 0) {
                free(t);
                return -ENOMEM;
        }
        *ret = t;
        return 0;
}

void retry_table_free(struct retry_table *t) {
        if (!t)
                return;
        strmap_free(t->entries, free);
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
        return strmap_get(t->entries, session_id);
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
                e = calloc(1, sizeof *e);
                if (!e || strmap_put(t->entries, session_id, e) < 0) {
                        free(e);
                        return -ENOMEM;
                }
        }
        e->failures++;
        e->not_before_ms =
                now_ms + (int64_t) retry_delay_ms(e->failures, base_ms, cap_ms, retry_after_ms, random);
        return (int) e->failures;
}

void retry_forget(struct retry_table *t, const char *session_id) {
        assert(t && session_id);
        free(strmap_remove(t->entries, session_id));
}

void retry_prune(struct retry_table *t, const struct session_list *l) {
        struct strmap *keep;

        assert(t && l);
        if (strmap_size(t->entries) == 0 || strmap_new(&keep) < 0)
                return; /* out of memory: the entries are kept, and pruned next time */
        /* Move the listed entries into a new map; what remains is dropped. */
        for (size_t i = 0; i < l->n; i++)
                if (strmap_move(keep, t->entries, l->items[i].session_id) == -ENOMEM)
                        free(strmap_remove(t->entries, l->items[i].session_id)); /* a retry comes earlier */
        strmap_swap(keep, t->entries);
        strmap_free(keep, free);
}

size_t retry_size(const struct retry_table *t) {
        assert(t);
        return strmap_size(t->entries);
}
