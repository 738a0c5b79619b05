/* Reading typed values out of the YAML policy file. Every problem is
 * reported as FILE:LINE:COLUMN, and bounds keep any file cheap to load. The
 * schema (which keys exist, their types, defaults and flags) is the
 * caller's: tables of struct yaml_key, walked by yaml_walk(). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <yaml.h>

#include "config.h"

struct yaml_reader {
        const char *path;
        yaml_document_t *doc;
        FILE *err;
        size_t n_errors;
        size_t n_visited; /* nodes walked, aliases expanded; see CONFIG_MAX_EXPANDED */
        bool oom;
        bool stop; /* a bound was reached: report nothing more, walk no further */
};

/* How a key's value is read. */
enum yaml_type {
        YAML_T_STRING,         /* char *, not empty */
        YAML_T_STRING_OR_NULL, /* char *; null: NULL */
        YAML_T_DURATION,       /* uint64_t ms, at least .min */
        YAML_T_UINT,           /* unsigned, .min to .max */
        YAML_T_BOOL,           /* bool */
        YAML_T_SHARE,          /* double, "50%" or 0.5, above 0 and at most 1 */
        YAML_T_RATE,           /* double, calls per second, 0.1 to 100000 */
        YAML_T_GLOBS,          /* struct glob_list of glob patterns; null: empty */
        YAML_T_IDS,            /* struct glob_list without duplicates */
        YAML_T_SECTION,        /* a mapping of .section keys */
        YAML_T_CUSTOM,         /* .parse does it all, given the whole struct */
        /* Not a key: the rows of .section flagged YAML_K_ACCOUNT are keys of
         * this mapping too, read into base + .offset and named .where.KEY
         * (an account's gateway keys, written beside its name). Its .name
         * only keeps the table going; it matches no key. */
        YAML_T_INLINE,
};

#define YAML_K_INHERITED    (1u << 0) /* an account starts from the top level's value */
#define YAML_K_RESTART      (1u << 1) /* a reload cannot change it: the daemon must restart */
#define YAML_K_NULL_OK      (1u << 2) /* YAML_T_SECTION: null means all defaults */
#define YAML_K_CHECK_PREFIX (1u << 3) /* a string refused for a NUL is still .check()ed up to it */
#define YAML_K_ACCOUNT      (1u << 4) /* offered by a YAML_T_INLINE row (set per account) */

struct yaml_key;

/* YAML_T_CUSTOM: reads v into the struct at base. */
typedef void (*yaml_parse_fn)(struct yaml_reader *p, const char *where, yaml_node_t *v, void *base);
/* Runs after a value was read without error: rules about that one value. */
typedef void (*yaml_check_fn)(struct yaml_reader *p, const char *where, yaml_node_t *v, void *field);

struct yaml_key {
        const char *name;
        enum yaml_type type;
        size_t offset; /* of the field in the mapping's struct */
        unsigned flags;
        const char *def;                /* the default, written as in the file; NULL: zero */
        unsigned long long min, max;    /* YAML_T_UINT: range; YAML_T_DURATION: minimum (ms) */
        const struct yaml_key *section; /* YAML_T_SECTION: its keys */
        yaml_parse_fn parse;            /* YAML_T_CUSTOM */
        yaml_check_fn check;            /* optional */
        const char *where;              /* prefix of value messages, when not the mapping's */
};

/* A table ends with a row whose name is NULL. */

/* Loads data as one YAML document (refusing a second one, and files beyond
 * the bounds) and hands its root to fn. Returns 0 (problems are reported
 * through p) or -ENOMEM. */
int yaml_read_document(struct yaml_reader *p, const char *data, size_t size,
                       void (*fn)(struct yaml_reader *p, yaml_node_t *root, void *userdata), void *userdata);

/* Reports a problem at a node or a mark. */
void yaml_error_at(struct yaml_reader *p, yaml_mark_t mark, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));
#define yaml_error(p, node, ...) yaml_error_at((p), (node)->start_mark, __VA_ARGS__)

/* Counts n more nodes walked at node at. Returns whether the walk may go on. */
bool yaml_spend(struct yaml_reader *p, const yaml_node_t *at, size_t n);

/* Walks a mapping node: refuses non-scalar, duplicate and unknown keys (with
 * a suggestion) and reads every known one into base. where names the mapping
 * in messages; prefix, when not NULL, is put before a key's name in the
 * messages about its value ("gateway" -> "gateway.timeout: ..."). */
void yaml_walk(struct yaml_reader *p, const char *where, yaml_node_t *map, const struct yaml_key *keys,
               void *base, const char *prefix);

/* Sets every field of the table to its default. Returns 0 or -ENOMEM. */
int yaml_defaults(const struct yaml_key *keys, void *base);

/* Copies the fields flagged YAML_K_INHERITED (all of a section so flagged)
 * from src to dst. Returns 0 or -ENOMEM. */
int yaml_inherit(const struct yaml_key *keys, void *dst, const void *src);

/* Frees the strings and lists of the table's fields. */
void yaml_free_fields(const struct yaml_key *keys, void *base);

/* The first key flagged YAML_K_RESTART whose value differs, or NULL. */
const char *yaml_restart_needed(const struct yaml_key *keys, const void *a, const void *b);

yaml_node_t *yaml_node(struct yaml_reader *p, int id);
const char *yaml_scalar(const yaml_node_t *n);
bool yaml_is_null(const yaml_node_t *n);
const char *yaml_type_name(const yaml_node_t *n);
yaml_node_t *yaml_find(struct yaml_reader *p, yaml_node_t *map, const char *key);
void yaml_require(struct yaml_reader *p, const char *where, yaml_node_t *map, const char *const *required);
bool yaml_only_name_chars(const char *s, const char *extra);
void yaml_read_globs(struct yaml_reader *p, const char *where, yaml_node_t *n, struct glob_list *dst);

/* The word of words[0..n) that word is probably a misspelling of, for a
 * "did you mean"; NULL when none is close. */
const char *yaml_nearest_word(const char *word, const char *const *words, size_t n);
