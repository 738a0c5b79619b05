/* The string map (strmap.h), on glibc's tsearch red-black trees. */
#include "strmap.h"

#include <assert.h>
#include <errno.h>
#include <search.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>

/* One allocation per entry: the key is stored right after the struct. */
struct strmap_entry {
        const char *key;
        void *value;
};

struct strmap {
        void *root; /* tsearch tree of struct strmap_entry */
        size_t n;
};

static int compare(const void *a, const void *b) {
        return strcmp(((const struct strmap_entry *) a)->key, ((const struct strmap_entry *) b)->key);
}

static struct strmap_entry *entry_new(const char *key, void *value) {
        size_t len = strlen(key);
        struct strmap_entry *e = malloc(sizeof *e + len + 1);

        if (!e)
                return NULL;
        e->key = memcpy((char *) (e + 1), key, len + 1);
        e->value = value;
        return e;
}

static struct strmap_entry *find(const struct strmap *m, const char *key) {
        const struct strmap_entry probe = { .key = key };
        struct strmap_entry **found = tfind(&probe, &m->root, compare);

        return found ? *found : NULL;
}

int strmap_new(struct strmap **ret) {
        struct strmap *m = calloc(1, sizeof *m);

        assert(ret);
        if (!m)
                return -ENOMEM;
        *ret = m;
        return 0;
}

struct free_walk {
        strmap_free_fn free_value;
};

static void free_value_of(const void *node, VISIT which, void *closure) {
        const struct free_walk *w = closure;

        if (which == postorder || which == leaf)
                w->free_value((*(struct strmap_entry *const *) node)->value);
}

void strmap_clear(struct strmap *m, strmap_free_fn free_value) {
        struct free_walk w = { free_value };

        if (!m)
                return;
        if (free_value)
                twalk_r(m->root, free_value_of, &w);
        tdestroy(m->root, free);
        m->root = NULL;
        m->n = 0;
}

void strmap_free(struct strmap *m, strmap_free_fn free_value) {
        strmap_clear(m, free_value);
        free(m);
}

size_t strmap_size(const struct strmap *m) {
        assert(m);
        return m->n;
}

void *strmap_get(const struct strmap *m, const char *key) {
        struct strmap_entry *e;

        assert(m && key);
        e = find(m, key);
        return e ? e->value : NULL;
}

int strmap_put(struct strmap *m, const char *key, void *value) {
        struct strmap_entry *e, **slot;

        assert(m && key && value);
        if (find(m, key))
                return -EEXIST;
        e = entry_new(key, value);
        if (!e)
                return -ENOMEM;
        slot = tsearch(e, &m->root, compare);
        if (!slot) {
                free(e);
                return -ENOMEM;
        }
        m->n++;
        return 0;
}

void *strmap_remove(struct strmap *m, const char *key) {
        struct strmap_entry *e;
        void *value;

        assert(m && key);
        e = find(m, key);
        if (!e)
                return NULL;
        tdelete(e, &m->root, compare);
        m->n--;
        value = e->value;
        free(e);
        return value;
}

int strmap_move(struct strmap *dst, struct strmap *src, const char *key) {
        struct strmap_entry *e;

        assert(dst && src && key);
        e = find(src, key);
        if (!e)
                return 0;
        if (find(dst, key))
                return -EEXIST;
        if (!tsearch(e, &dst->root, compare))
                return -ENOMEM;
        tdelete(e, &src->root, compare);
        src->n--;
        dst->n++;
        return 1;
}

void strmap_swap(struct strmap *a, struct strmap *b) {
        struct strmap t = *a;

        *a = *b;
        *b = t;
}

struct visit_walk {
        strmap_visit_fn fn;
        void *userdata;
};

static void visit_one(const void *node, VISIT which, void *closure) {
        const struct visit_walk *w = closure;
        struct strmap_entry *e = *(struct strmap_entry *const *) node;

        if (which == postorder || which == leaf)
                w->fn(e->key, e->value, w->userdata);
}

void strmap_foreach(const struct strmap *m, strmap_visit_fn fn, void *userdata) {
        struct visit_walk w = { fn, userdata };

        assert(m && fn);
        twalk_r(m->root, visit_one, &w);
}

void strindex_free(struct strindex *x) {
        free(x->next);
        free(x->tail);
        strmap_free(x->first, NULL);
        *x = (struct strindex){ 0 };
}

/* Room for up to n strings. */
int strindex_init(struct strindex *x, size_t n) {
        *x = (struct strindex){ 0 };
        x->next = calloc(n ? n : 1, sizeof *x->next);
        x->tail = calloc(n ? n : 1, sizeof *x->tail);
        if (!x->next || !x->tail || strmap_new(&x->first) < 0) {
                strindex_free(x);
                return -ENOMEM;
        }
        return 0;
}

/* Adds s as number i (numbers added in increasing order, each below the n
 * given to strindex_init) and returns the first number with an equal
 * string: i itself if s is new (x->oom is set if memory ran out, and a
 * later duplicate of s may then go unnoticed). The earlier
 * numbers with the same string are then, in increasing order, first,
 * x->next[first], ..., up to i. */
size_t strindex_add(struct strindex *x, size_t i, const char *s) {
        /* The map holds first + 1, so that no value is NULL. */
        uintptr_t found = (uintptr_t) strmap_get(x->first, s);

        x->next[i] = SIZE_MAX;
        if (found) {
                size_t first = (size_t) found - 1;

                x->next[x->tail[first]] = i;
                x->tail[first] = i;
                return first;
        }
        x->tail[i] = i;
        if (strmap_put(x->first, s, (void *) (uintptr_t) (i + 1)) == -ENOMEM)
                x->oom = true;
        return i;
}
