/* A map from strings to pointers: the one home of every string-keyed table
 * in the daemon (the retry table, the state's first-seen times, the ids
 * already warned about, the duplicate finder of the config reader).
 *
 * A balanced tree (glibc's tsearch), so that a list of hostile ids costs
 * O(log n) per lookup, never the quadratic worst case of a hash table whose
 * function an attacker can know. The map owns a copy of each key; values
 * are the caller's, must not be NULL, and are freed only by the function
 * handed to strmap_clear() or strmap_free(). */
#pragma once

#include <stdbool.h>
#include <stddef.h>

struct strmap;

typedef void (*strmap_free_fn)(void *value);
/* Called for each entry in key order; may not change the map. */
typedef void (*strmap_visit_fn)(const char *key, void *value, void *userdata);

int strmap_new(struct strmap **ret);

/* Frees the map, and each value with free_value (if not NULL). */
void strmap_free(struct strmap *m, strmap_free_fn free_value);

/* Empties the map, freeing each value with free_value (if not NULL). */
void strmap_clear(struct strmap *m, strmap_free_fn free_value);

size_t strmap_size(const struct strmap *m);

/* The value of key, or NULL. */
void *strmap_get(const struct strmap *m, const char *key);

/* Adds key (copied) with value (not NULL). 0, -EEXIST when key is there
 * (its value unchanged), or -ENOMEM. */
int strmap_put(struct strmap *m, const char *key, void *value);

/* Takes key out of the map: its value (the caller's now), or NULL. */
void *strmap_remove(struct strmap *m, const char *key);

/* Moves the entry of key from src to dst, key and value, allocating
 * nothing but dst's tree node: 1 moved, 0 not in src, -EEXIST in dst
 * already (nothing moved), -ENOMEM (the entry stays in src). */
int strmap_move(struct strmap *dst, struct strmap *src, const char *key);

/* Swaps the contents of a and b. */
void strmap_swap(struct strmap *a, struct strmap *b);

void strmap_foreach(const struct strmap *m, strmap_visit_fn fn, void *userdata);

/* Strings numbered 0, 1, 2, ... in the order they are added, grouped by
 * equality (through a strmap), so that every duplicate is found and named. */
struct strindex {
        size_t *next;         /* the next number with the same string; SIZE_MAX at the end */
        size_t *tail;         /* by a group's first number: its last */
        struct strmap *first; /* each string's first number, plus one */
        bool oom;             /* an add ran out of memory: the caller reports it */
};
int strindex_init(struct strindex *x, size_t n);
size_t strindex_add(struct strindex *x, size_t i, const char *s);
void strindex_free(struct strindex *x);
