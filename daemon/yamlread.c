#include "yamlread.h"

#include <assert.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "duration.h"
#include "strmap.h"
#include "util.h"

/* Bounds on the shape of the policy file, so that any file under
 * CONFIG_MAX_SIZE is loaded or refused in milliseconds and a few MB, whatever
 * it holds. A real policy file nests about 6 levels deep (accounts, policies,
 * user_ids), has at most a few thousand nodes and rarely any anchors, so each
 * bound is far above what an operator writes. The first five are checked by
 * a linear pass over libyaml's events (and, for directives, over the bytes)
 * before the document is built, and the file is refused at the first one
 * exceeded:
 * - CONFIG_MAX_DEPTH: libyaml's scanner is quadratic in the nesting of flow
 *   collections ('[' x 150,000 took minutes);
 * - CONFIG_MAX_ALIASES: every alias is walked again where it is used, so
 *   aliases multiply the work ("billion laughs");
 * - CONFIG_MAX_ANCHORS: libyaml checks each new anchor against all earlier
 *   ones, and each directive against all earlier ones;
 * - CONFIG_MAX_NODES: scalars plus collections, in all documents.
 * After loading, CONFIG_MAX_EXPANDED bounds the nodes visited by the walk,
 * with aliases expanded and the global protect lists copied into every
 * account, and CONFIG_MAX_ERRORS ends the walk once that many errors have been
 * reported. Duplicate keys, names and project ids are found with a hash
 * table, not by comparing every pair. */
#define CONFIG_MAX_DEPTH      32
#define CONFIG_MAX_ALIASES    100
#define CONFIG_MAX_ANCHORS    100
#define CONFIG_MAX_DIRECTIVES 16
#define CONFIG_MAX_NODES      50000
#define CONFIG_MAX_EXPANDED   100000
#define CONFIG_MAX_ERRORS     100

/* libyaml marks count from zero; people count from one. After
 * CONFIG_MAX_ERRORS errors, one more line says so, and nothing else is
 * reported (or parsed: the walkers check p->stop). */
void yaml_error_at(struct yaml_reader *p, yaml_mark_t mark, const char *fmt, ...) {
        va_list ap;

        if (p->stop)
                return;
        fprintf(p->err, "%s:%zu:%zu: ", p->path, mark.line + 1, mark.column + 1);
        if (p->n_errors >= CONFIG_MAX_ERRORS) {
                fprintf(p->err, "more than %d errors; the rest are not reported\n", CONFIG_MAX_ERRORS);
                p->n_errors++;
                p->stop = true;
                return;
        }
        va_start(ap, fmt);
        vfprintf(p->err, fmt, ap);
        va_end(ap);
        fputc('\n', p->err);
        p->n_errors++;
}

/* Counts n more nodes walked at node at (see CONFIG_MAX_EXPANDED). Returns
 * whether the walk may go on. */
bool yaml_spend(struct yaml_reader *p, const yaml_node_t *at, size_t n) {
        if (p->stop)
                return false;
        if (n > CONFIG_MAX_EXPANDED - p->n_visited) {
                yaml_error(
                        p, at,
                        "more than %d nodes after expanding aliases and copying protect lists into accounts",
                        CONFIG_MAX_EXPANDED);
                p->stop = true;
                return false;
        }
        p->n_visited += n;
        return true;
}

yaml_node_t *yaml_node(struct yaml_reader *p, int id) {
        return yaml_document_get_node(p->doc, id);
}

const char *yaml_scalar(const yaml_node_t *n) {
        return n->type == YAML_SCALAR_NODE ? (const char *) n->data.scalar.value : NULL;
}

bool yaml_is_null(const yaml_node_t *n) {
        const char *s = yaml_scalar(n);

        if (!s || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
                return false;
        return *s == '\0' || strcmp(s, "~") == 0 || strcmp(s, "null") == 0 || strcmp(s, "Null") == 0 ||
               strcmp(s, "NULL") == 0;
}

const char *yaml_type_name(const yaml_node_t *n) {
        switch (n->type) {
        case YAML_MAPPING_NODE:
                return "a mapping";
        case YAML_SEQUENCE_NODE:
                return "a list";
        default:
                return yaml_is_null(n) ? "nothing (null)" : "a scalar";
        }
}

yaml_node_t *yaml_find(struct yaml_reader *p, yaml_node_t *map, const char *key) {
        if (!map || map->type != YAML_MAPPING_NODE)
                return NULL;
        for (yaml_node_pair_t *pair = map->data.mapping.pairs.start; pair < map->data.mapping.pairs.top;
             pair++) {
                const char *k = yaml_scalar(yaml_node(p, pair->key));
                if (k && strcmp(k, key) == 0)
                        return yaml_node(p, pair->value);
        }
        return NULL;
}

static bool has_key(struct yaml_reader *p, yaml_node_t *map, const char *key) {
        if (map->type != YAML_MAPPING_NODE)
                return true; /* already reported */
        for (yaml_node_pair_t *pair = map->data.mapping.pairs.start; pair < map->data.mapping.pairs.top;
             pair++) {
                const char *k = yaml_scalar(yaml_node(p, pair->key));
                if (k && strcmp(k, key) == 0)
                        return true;
        }
        return false;
}

void yaml_require(struct yaml_reader *p, const char *where, yaml_node_t *map, const char *const *required) {
        for (; *required; required++)
                if (!has_key(p, map, *required))
                        yaml_error(p, map, "%s: missing required key '%s'", where, *required);
}

/* Whether s has only ASCII letters, digits and the characters in extra:
 * the names that end up in URLs, journal fields and metric labels. */
bool yaml_only_name_chars(const char *s, const char *extra) {
        for (; *s; s++)
                if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
                      strchr(extra, *s)))
                        return false;
        return true;
}

/* Edit distance, for suggesting the key an operator probably meant. */
static size_t edit_distance(const char *a, const char *b) {
        size_t la = strlen(a), lb = strlen(b), prev[64], cur[64];

        if (la >= ELEMENTSOF(prev) || lb >= ELEMENTSOF(prev))
                return SIZE_MAX;
        for (size_t j = 0; j <= lb; j++)
                prev[j] = j;
        for (size_t i = 1; i <= la; i++) {
                cur[0] = i;
                for (size_t j = 1; j <= lb; j++) {
                        size_t sub = prev[j - 1] + (a[i - 1] != b[j - 1]);
                        size_t del = prev[j] + 1, ins = cur[j - 1] + 1;
                        cur[j] = sub < del ? (sub < ins ? sub : ins) : (del < ins ? del : ins);
                }
                memcpy(prev, cur, (lb + 1) * sizeof prev[0]);
        }
        return prev[lb];
}

/* Whether cand is closer to word than *best_d, within limit; updates
 * *best_d. */
static bool closer(const char *word, const char *cand, size_t limit, size_t *best_d) {
        size_t lk = strlen(word), lc = strlen(cand), d;

        /* The distance is at least the difference in length. */
        if ((lk > lc ? lk - lc : lc - lk) > limit)
                return false;
        d = edit_distance(word, cand);
        /* Replacing as many characters as the name has is no hint
         * ("k0" is not a misspelt "ha"). */
        if (d >= *best_d || d >= lc || d > limit)
                return false;
        *best_d = d;
        return true;
}

static const char *nearest_key(const char *key, const struct yaml_key *keys) {
        const char *best = NULL;
        size_t best_d = SIZE_MAX, limit = strlen(key) / 3 + 2;

        for (; keys->name; keys++) {
                if (keys->type != YAML_T_INLINE) {
                        if (closer(key, keys->name, limit, &best_d))
                                best = keys->name;
                        continue;
                }
                for (const struct yaml_key *k = keys->section; k->name; k++)
                        if ((k->flags & YAML_K_ACCOUNT) && closer(key, k->name, limit, &best_d))
                                best = k->name;
        }
        return best;
}

const char *yaml_nearest_word(const char *word, const char *const *words, size_t n) {
        const char *best = NULL;
        size_t best_d = SIZE_MAX, limit;

        if (!word)
                return NULL;
        limit = strlen(word) / 3 + 2;
        for (size_t i = 0; i < n; i++)
                if (closer(word, words[i], limit, &best_d))
                        best = words[i];
        return best;
}

static char *key_list(const struct yaml_key *keys, char *buf, size_t n) {
        size_t off = 0;

        buf[0] = '\0';
        for (; keys->name && off < n; keys++) {
                if (keys->type != YAML_T_INLINE) {
                        off += (size_t) snprintf(buf + off, n - off, "%s%s", off ? ", " : "", keys->name);
                        continue;
                }
                for (const struct yaml_key *k = keys->section; k->name && off < n; k++)
                        if (k->flags & YAML_K_ACCOUNT)
                                off += (size_t) snprintf(buf + off, n - off, "%s%s", off ? ", " : "",
                                                         k->name);
        }
        return buf;
}

static char *xstrdup(struct yaml_reader *p, const char *s) {
        char *d = strdup(s);
        if (!d)
                p->oom = true;
        return d;
}

/* A string value; null is accepted only when allow_null (then *dst = NULL). */
static void get_string(struct yaml_reader *p, const char *where, yaml_node_t *n, bool allow_null,
                       char **dst) {
        const char *s = yaml_scalar(n);

        if (allow_null && yaml_is_null(n)) {
                free(*dst);
                *dst = NULL;
                return;
        }
        if (!s || yaml_is_null(n)) {
                yaml_error(p, n, "%s: expected a string, got %s", where, yaml_type_name(n));
                return;
        }
        if (*s == '\0') {
                yaml_error(p, n, "%s: must not be empty", where);
                return;
        }
        if (strlen(s) != n->data.scalar.length) {
                yaml_error(p, n, "%s: must not contain a NUL character", where);
                return;
        }
        free(*dst);
        *dst = xstrdup(p, s);
}

static void get_duration(struct yaml_reader *p, const char *where, yaml_node_t *n, uint64_t min_ms,
                         uint64_t *dst) {
        const char *s = yaml_scalar(n), *problem = NULL;
        uint64_t ms;
        char buf[32];

        if (!s || yaml_is_null(n)) {
                yaml_error(p, n, "%s: expected a duration such as 30s or 10m, got %s", where,
                           yaml_type_name(n));
                return;
        }
        if (duration_parse(s, &ms, &problem) < 0) {
                yaml_error(p, n, "%s: invalid duration '%s': %s", where, s, problem);
                return;
        }
        if (ms < min_ms) {
                yaml_error(p, n, "%s: must be at least %s", where, duration_format(min_ms, buf, sizeof buf));
                return;
        }
        *dst = ms;
}

static void get_uint(struct yaml_reader *p, const char *where, yaml_node_t *n, unsigned min, unsigned max,
                     unsigned *dst) {
        const char *s = yaml_scalar(n);
        unsigned long long v = 0;

        if (!s || yaml_is_null(n) || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE) {
                yaml_error(p, n, "%s: expected a whole number, got %s", where,
                           s && !yaml_is_null(n) ? "a quoted string" : yaml_type_name(n));
                return;
        }
        if (*s == '\0' || strspn(s, "0123456789") != strlen(s) || strlen(s) > 10) {
                yaml_error(p, n, "%s: expected a whole number from %u to %u, got '%s'", where, min, max, s);
                return;
        }
        v = strtoull(s, NULL, 10);
        if (v < min || v > max) {
                yaml_error(p, n, "%s: must be from %u to %u, got %llu", where, min, max, v);
                return;
        }
        *dst = (unsigned) v;
}

static void get_bool(struct yaml_reader *p, const char *where, yaml_node_t *n, bool *dst) {
        static const char *const yes[] = { "true", "yes", "on" }, *const no[] = { "false", "no", "off" };
        const char *s = yaml_scalar(n);

        if (s && n->data.scalar.style == YAML_PLAIN_SCALAR_STYLE) {
                for (size_t i = 0; i < ELEMENTSOF(yes); i++) {
                        if (strcasecmp(s, yes[i]) == 0) {
                                *dst = true;
                                return;
                        }
                        if (strcasecmp(s, no[i]) == 0) {
                                *dst = false;
                                return;
                        }
                }
        }
        yaml_error(p, n, "%s: expected true or false, got %s%s%s", where,
                   s && !yaml_is_null(n) ? "'" : yaml_type_name(n), s && !yaml_is_null(n) ? s : "",
                   s && !yaml_is_null(n) ? "'" : "");
}

/* Why a glob pattern would not mean what it seems to, or NULL. fnmatch()
 * reads an unbalanced '[' literally, which quietly narrows a protect list. */
static const char *glob_problem(const char *s) {
        for (size_t i = 0; s[i]; i++) {
                size_t j;

                if (s[i] == '\\') {
                        if (s[i + 1])
                                i++;
                        continue;
                }
                if (s[i] != '[')
                        continue;
                j = i + 1;
                if (s[j] == '!' || s[j] == '^')
                        j++;
                if (s[j] == ']')
                        j++;
                while (s[j] && s[j] != ']')
                        j++;
                if (!s[j])
                        return "has a '[' without a matching ']' (write [[] to match a literal '[')";
                i = j;
        }
        return NULL;
}

void yaml_read_globs(struct yaml_reader *p, const char *where, yaml_node_t *n, struct glob_list *dst) {
        size_t count;

        glob_list_free(dst);
        if (yaml_is_null(n))
                return;
        if (n->type != YAML_SEQUENCE_NODE) {
                yaml_error(p, n, "%s: expected a list of glob patterns such as [\"vip-*\"], got %s", where,
                           yaml_type_name(n));
                return;
        }
        count = (size_t) (n->data.sequence.items.top - n->data.sequence.items.start);
        if (count == 0 || !yaml_spend(p, n, count))
                return;
        dst->items = calloc(count, sizeof(char *));
        if (!dst->items) {
                p->oom = true;
                return;
        }
        for (yaml_node_item_t *it = n->data.sequence.items.start;
             it < n->data.sequence.items.top && !p->stop; it++) {
                yaml_node_t *item = yaml_node(p, *it);
                const char *s = item ? yaml_scalar(item) : NULL;

                if (!s || yaml_is_null(item) || *s == '\0') {
                        yaml_error(p, item ? item : n, "%s: each entry must be a non-empty string, got %s",
                                   where,
                                   item && s && !yaml_is_null(item) ? "an empty string"
                                                                    : yaml_type_name(item ? item : n));
                        continue;
                }
                if (strlen(s) != item->data.scalar.length) {
                        yaml_error(p, item, "%s: a pattern may not contain a NUL character", where);
                        continue;
                }
                if (glob_problem(s)) {
                        yaml_error(p, item, "%s: pattern \"%s\" %s", where, s, glob_problem(s));
                        continue;
                }
                dst->items[dst->n] = xstrdup(p, s);
                if (dst->items[dst->n])
                        dst->n++;
        }
}

/* A list of ids to list by (projects, assets): no id twice. */
static void get_id_list(struct yaml_reader *p, const char *where, yaml_node_t *v, struct glob_list *dst) {
        struct strindex seen;

        yaml_read_globs(p, where, v, dst);
        if (strindex_init(&seen, dst->n) < 0) {
                p->oom = true;
                return;
        }
        /* One error for each earlier copy, as many as there are. */
        for (size_t i = 0; i < dst->n && !p->stop; i++)
                for (size_t j = strindex_add(&seen, i, dst->items[i]); j != i && !p->stop; j = seen.next[j])
                        yaml_error(p, v, "%s: '%s' is listed twice", where, dst->items[i]);
        if (seen.oom)
                p->oom = true;
        strindex_free(&seen);
}

/* Calls per second: a positive number such as 40 or 2.5. */
static void get_rate(struct yaml_reader *p, const char *where, yaml_node_t *n, double *dst) {
        const char *s = yaml_scalar(n);
        char *end = NULL;
        double v;

        if (!s || yaml_is_null(n) || !*s) {
                yaml_error(p, n, "%s: expected calls per second such as 40, got %s", where,
                           yaml_type_name(n));
                return;
        }
        v = strtod(s, &end);
        if (end == s || *end != '\0' || !isfinite(v) || v < 0.1 || v > 100000) {
                yaml_error(p, n, "%s: expected calls per second between 0.1 and 100000, got '%s'", where, s);
                return;
        }
        *dst = v;
}

/* A share: "50%" or a fraction such as 0.5; 0 < share <= 1. */
static void get_share(struct yaml_reader *p, const char *where, yaml_node_t *n, double *dst) {
        const char *s = yaml_scalar(n);
        char *end = NULL;
        double v;

        if (!s || yaml_is_null(n) || !*s) {
                yaml_error(p, n, "%s: expected a share such as 50%% or 0.5, got %s", where,
                           yaml_type_name(n));
                return;
        }
        v = strtod(s, &end);
        if (end == s || (strcmp(end, "%") != 0 && *end != '\0') || isnan(v)) {
                yaml_error(p, n, "%s: expected a share such as 50%% or 0.5, got '%s'", where, s);
                return;
        }
        if (*end == '%')
                v /= 100.0;
        if (!(v > 0.0 && v <= 1.0)) {
                yaml_error(p, n, "%s: must be above 0%% and at most 100%%, got '%s'", where, s);
                return;
        }
        *dst = v;
}

#define FIELD(base, k)  ((void *) ((char *) (base) + (k)->offset))
#define CFIELD(base, k) ((const void *) ((const char *) (base) + (k)->offset))

/* Reads one value of a known key. Returns whether it was read without a new
 * problem. */
static bool read_value(struct yaml_reader *p, const char *where, yaml_node_t *v, const struct yaml_key *k,
                       void *base) {
        size_t before = p->n_errors;
        void *field = FIELD(base, k);

        switch (k->type) {
        case YAML_T_STRING:
        case YAML_T_STRING_OR_NULL:
                get_string(p, where, v, k->type == YAML_T_STRING_OR_NULL, field);
                break;
        case YAML_T_DURATION:
                get_duration(p, where, v, k->min, field);
                break;
        case YAML_T_UINT:
                get_uint(p, where, v, (unsigned) k->min, (unsigned) k->max, field);
                break;
        case YAML_T_BOOL:
                get_bool(p, where, v, field);
                break;
        case YAML_T_SHARE:
                get_share(p, where, v, field);
                break;
        case YAML_T_RATE:
                get_rate(p, where, v, field);
                break;
        case YAML_T_GLOBS:
                yaml_read_globs(p, where, v, field);
                break;
        case YAML_T_IDS:
                get_id_list(p, where, v, field);
                break;
        case YAML_T_SECTION:
                if (!(yaml_is_null(v) && (k->flags & YAML_K_NULL_OK)))
                        yaml_walk(p, where, v, k->section, field, where);
                break;
        case YAML_T_CUSTOM:
                k->parse(p, where, v, base);
                break;
        case YAML_T_INLINE:
                break; /* not a key: find_key() never returns one */
        }
        if (p->n_errors != before) {
                /* As the file was always read: a string refused for a NUL
                 * is still checked up to the NUL, when the key says so. */
                const char *text = yaml_scalar(v);
                char *copy;

                if (k->check && (k->flags & YAML_K_CHECK_PREFIX) && text && !yaml_is_null(v) && *text &&
                    strlen(text) != v->data.scalar.length && (copy = strdup(text))) {
                        k->check(p, where, v, &copy);
                        free(copy);
                }
                return false;
        }
        if (k->check && k->type != YAML_T_CUSTOM)
                k->check(p, where, v, field);
        return true;
}

/* The row of name in keys, inline rows included: *offset is where the
 * row's struct starts in the mapping's, *where the prefix of its messages
 * (NULL: the row's own .where, or the mapping's). */
static const struct yaml_key *find_key(const struct yaml_key *keys, const char *name, size_t *offset,
                                       const char **where) {
        *offset = 0;
        *where = NULL;
        for (; keys->name; keys++) {
                if (keys->type != YAML_T_INLINE) {
                        if (strcmp(keys->name, name) == 0)
                                return keys;
                        continue;
                }
                for (const struct yaml_key *k = keys->section; k->name; k++)
                        if ((k->flags & YAML_K_ACCOUNT) && strcmp(k->name, name) == 0) {
                                *offset = keys->offset;
                                *where = keys->where;
                                return k;
                        }
        }
        return NULL;
}

void yaml_walk(struct yaml_reader *p, const char *where, yaml_node_t *map, const struct yaml_key *keys,
               void *base, const char *prefix) {
        struct strindex seen;
        size_t n_pairs, n_seen = 0;

        if (map->type != YAML_MAPPING_NODE) {
                yaml_error(p, map, "%s: expected a mapping, got %s", where, yaml_type_name(map));
                return;
        }
        n_pairs = (size_t) (map->data.mapping.pairs.top - map->data.mapping.pairs.start);
        if (!yaml_spend(p, map, n_pairs))
                return;
        if (strindex_init(&seen, n_pairs) < 0) {
                p->oom = true;
                return;
        }
        for (yaml_node_pair_t *pair = map->data.mapping.pairs.start;
             pair < map->data.mapping.pairs.top && !p->stop; pair++) {
                yaml_node_t *k = yaml_node(p, pair->key), *v = yaml_node(p, pair->value);
                const char *key = k ? yaml_scalar(k) : NULL;
                const struct yaml_key *known;
                const char *inline_where;
                size_t offset;
                char value_where[160];
                bool dup = false;

                if (key) {
                        dup = strindex_add(&seen, n_seen, key) != n_seen;
                        n_seen++;
                }
                if (!key || !v) {
                        yaml_error(p, k ? k : map, "%s: keys must be plain strings", where);
                        continue;
                }
                if (dup) {
                        yaml_error(p, k, "%s: duplicate key '%s'", where, key);
                        continue;
                }
                known = find_key(keys, key, &offset, &inline_where);
                if (!known) {
                        const char *near = nearest_key(key, keys);
                        char all[256];

                        if (near)
                                yaml_error(p, k, "%s: unknown key '%s', did you mean '%s'?", where, key,
                                           near);
                        else
                                yaml_error(p, k, "%s: unknown key '%s' (valid keys: %s)", where, key,
                                           key_list(keys, all, sizeof all));
                        continue;
                }
                if (inline_where || known->where)
                        snprintf(value_where, sizeof value_where, "%s.%s",
                                 inline_where ? inline_where : known->where, key);
                else if (prefix)
                        snprintf(value_where, sizeof value_where, "%s.%s", prefix, key);
                else
                        snprintf(value_where, sizeof value_where, "%s", key);
                (void) read_value(p, value_where, v, known, (char *) base + offset);
        }
        if (seen.oom)
                p->oom = true;
        strindex_free(&seen);
}

int yaml_defaults(const struct yaml_key *keys, void *base) {
        for (const struct yaml_key *k = keys; k->name; k++) {
                yaml_node_t node = { .type = YAML_SCALAR_NODE };
                struct yaml_reader quiet = { .path = "(defaults)" };
                char *errors = NULL, text[256];
                size_t len = 0;

                if (k->type == YAML_T_SECTION) {
                        if (yaml_defaults(k->section, FIELD(base, k)) < 0)
                                return -ENOMEM;
                        continue;
                }
                if (!k->def)
                        continue;
                /* The default goes through the reader like any value. */
                assert(strlen(k->def) < sizeof text);
                snprintf(text, sizeof text, "%s", k->def);
                node.data.scalar.value = (yaml_char_t *) text;
                node.data.scalar.length = strlen(text);
                node.data.scalar.style = YAML_PLAIN_SCALAR_STYLE;
                quiet.err = open_memstream(&errors, &len);
                if (!quiet.err)
                        return -ENOMEM;
                (void) read_value(&quiet, k->name, &node, k, base);
                fclose(quiet.err);
                free(errors);
                assert(quiet.n_errors == 0); /* a default the reader refuses is a bug */
                if (quiet.oom)
                        return -ENOMEM;
        }
        return 0;
}

static int copy_field(const struct yaml_key *k, void *dst, const void *src, bool all) {
        void *d = FIELD(dst, k);
        const void *s = CFIELD(src, k);

        switch (k->type) {
        case YAML_T_STRING:
        case YAML_T_STRING_OR_NULL: {
                const char *from = *(char *const *) s;

                free(*(char **) d);
                *(char **) d = NULL;
                if (from && !(*(char **) d = strdup(from)))
                        return -ENOMEM;
                return 0;
        }
        case YAML_T_DURATION:
                *(uint64_t *) d = *(const uint64_t *) s;
                return 0;
        case YAML_T_UINT:
                *(unsigned *) d = *(const unsigned *) s;
                return 0;
        case YAML_T_BOOL:
                *(bool *) d = *(const bool *) s;
                return 0;
        case YAML_T_SHARE:
        case YAML_T_RATE:
                *(double *) d = *(const double *) s;
                return 0;
        case YAML_T_GLOBS:
        case YAML_T_IDS:
                glob_list_free(d);
                return glob_list_copy(d, s);
        case YAML_T_SECTION:
                for (const struct yaml_key *sk = k->section; sk->name; sk++)
                        if ((all || (sk->flags & YAML_K_INHERITED)) && copy_field(sk, d, s, true) < 0)
                                return -ENOMEM;
                return 0;
        case YAML_T_CUSTOM:
        case YAML_T_INLINE:
                return 0;
        }
        return 0;
}

int yaml_inherit(const struct yaml_key *keys, void *dst, const void *src) {
        for (const struct yaml_key *k = keys; k->name; k++) {
                bool all = k->flags & YAML_K_INHERITED;

                if (!all && k->type != YAML_T_SECTION)
                        continue;
                if (copy_field(k, dst, src, all) < 0)
                        return -ENOMEM;
        }
        return 0;
}

void yaml_free_fields(const struct yaml_key *keys, void *base) {
        for (const struct yaml_key *k = keys; k->name; k++)
                switch (k->type) {
                case YAML_T_STRING:
                case YAML_T_STRING_OR_NULL:
                        free(*(char **) FIELD(base, k));
                        *(char **) FIELD(base, k) = NULL;
                        break;
                case YAML_T_GLOBS:
                case YAML_T_IDS:
                        glob_list_free(FIELD(base, k));
                        break;
                case YAML_T_SECTION:
                        yaml_free_fields(k->section, FIELD(base, k));
                        break;
                default:
                        break;
                }
}

const char *yaml_restart_needed(const struct yaml_key *keys, const void *a, const void *b) {
        for (const struct yaml_key *k = keys; k->name; k++) {
                if (k->type == YAML_T_SECTION) {
                        const char *inner = yaml_restart_needed(k->section, CFIELD(a, k), CFIELD(b, k));

                        if (inner)
                                return inner;
                        continue;
                }
                if (!(k->flags & YAML_K_RESTART))
                        continue;
                switch (k->type) {
                case YAML_T_STRING:
                case YAML_T_STRING_OR_NULL: {
                        const char *x = *(char *const *) CFIELD(a, k), *y = *(char *const *) CFIELD(b, k);

                        if ((x == NULL) != (y == NULL) || (x && strcmp(x, y) != 0))
                                return k->name;
                        break;
                }
                case YAML_T_DURATION:
                        if (*(const uint64_t *) CFIELD(a, k) != *(const uint64_t *) CFIELD(b, k))
                                return k->name;
                        break;
                case YAML_T_GLOBS:
                case YAML_T_IDS: {
                        const struct glob_list *x = CFIELD(a, k), *y = CFIELD(b, k);

                        if (x->n != y->n)
                                return k->name;
                        for (size_t i = 0; i < x->n; i++)
                                if (strcmp(x->items[i], y->items[i]) != 0)
                                        return k->name;
                        break;
                }
                default:
                        /* No other type needs a restart so far. */
                        break;
                }
        }
        return NULL;
}

/* libyaml reads all the directives of a document before it reports the
 * document's start, checking each %TAG against all earlier ones, so they are
 * counted in the bytes: a '%' that starts a line. Returns whether the file is
 * refused. */
static bool too_many_directives(struct yaml_reader *p, const char *data, size_t size) {
        yaml_mark_t mark = { 0 };
        size_t n = 0;

        for (size_t i = 0; i < size; i++) {
                if (data[i] == '%' && (i == 0 || data[i - 1] == '\n' || data[i - 1] == '\r')) {
                        if (++n > CONFIG_MAX_DIRECTIVES) {
                                mark.index = i;
                                yaml_error_at(p, mark,
                                              "more than %d directives (lines that start with '%%')",
                                              CONFIG_MAX_DIRECTIVES);
                                return true;
                        }
                }
                /* Line breaks as libyaml counts them; "\r\n" is one. */
                if (data[i] == '\n' || (data[i] == '\r' && (i + 1 == size || data[i + 1] != '\n')))
                        mark.line++;
        }
        return false;
}

/* A first, linear pass over the events of the whole stream that enforces
 * CONFIG_MAX_DEPTH, _ALIASES, _ANCHORS and _NODES before yaml_parser_load()
 * builds anything. Returns 1 when the file is refused (reported), 0 when the
 * loader may run (a syntax error is left for the loader to report, at the
 * same place), or -ENOMEM. */
static int check_shape(struct yaml_reader *p, const char *data, size_t size) {
        size_t depth = 0, nodes = 0, aliases = 0, anchors = 0;
        yaml_parser_t parser;
        yaml_event_t ev;
        int r = 0;

        if (too_many_directives(p, data, size))
                return 1;
        if (!yaml_parser_initialize(&parser))
                return -ENOMEM;
        yaml_parser_set_input_string(&parser, (const unsigned char *) data, size);
        for (bool end = false; !end && r == 0;) {
                const yaml_char_t *anchor = NULL;

                if (!yaml_parser_parse(&parser, &ev)) {
                        if (parser.error == YAML_MEMORY_ERROR)
                                r = -ENOMEM;
                        break;
                }
                switch (ev.type) {
                case YAML_SEQUENCE_START_EVENT:
                        anchor = ev.data.sequence_start.anchor;
                        depth++;
                        nodes++;
                        break;
                case YAML_MAPPING_START_EVENT:
                        anchor = ev.data.mapping_start.anchor;
                        depth++;
                        nodes++;
                        break;
                case YAML_SEQUENCE_END_EVENT:
                case YAML_MAPPING_END_EVENT:
                        depth--;
                        break;
                case YAML_SCALAR_EVENT:
                        anchor = ev.data.scalar.anchor;
                        nodes++;
                        break;
                case YAML_ALIAS_EVENT:
                        aliases++;
                        break;
                case YAML_STREAM_END_EVENT:
                        end = true;
                        break;
                default:
                        break;
                }
                anchors += anchor != NULL;
                r = 1;
                if (depth > CONFIG_MAX_DEPTH)
                        yaml_error_at(p, ev.start_mark, "nesting deeper than %d levels", CONFIG_MAX_DEPTH);
                else if (aliases > CONFIG_MAX_ALIASES)
                        yaml_error_at(p, ev.start_mark, "more than %d aliases", CONFIG_MAX_ALIASES);
                else if (anchors > CONFIG_MAX_ANCHORS)
                        yaml_error_at(p, ev.start_mark, "more than %d anchors", CONFIG_MAX_ANCHORS);
                else if (nodes > CONFIG_MAX_NODES)
                        yaml_error_at(p, ev.start_mark, "more than %d nodes", CONFIG_MAX_NODES);
                else
                        r = 0;
                yaml_event_delete(&ev);
        }
        yaml_parser_delete(&parser);
        return r;
}

int yaml_read_document(struct yaml_reader *p, const char *data, size_t size,
                       void (*fn)(struct yaml_reader *p, yaml_node_t *root, void *userdata),
                       void *userdata) {
        yaml_parser_t parser;
        yaml_document_t doc, extra;
        int r;

        r = check_shape(p, data, size);
        if (r != 0)
                return r < 0 ? r : 0;
        if (!yaml_parser_initialize(&parser))
                return -ENOMEM;
        yaml_parser_set_input_string(&parser, (const unsigned char *) data, size);
        if (!yaml_parser_load(&parser, &doc)) {
                if (parser.error == YAML_MEMORY_ERROR)
                        r = -ENOMEM;
                else
                        yaml_error_at(p, parser.problem_mark, "YAML syntax error: %s%s%s",
                                      parser.problem ? parser.problem : "unknown problem",
                                      parser.context ? " " : "", parser.context ? parser.context : "");
                yaml_parser_delete(&parser);
                return r;
        }
        p->doc = &doc;
        fn(p, yaml_document_get_root_node(&doc), userdata);

        /* A second document would be silently ignored; refuse it instead. */
        if (yaml_parser_load(&parser, &extra)) {
                yaml_node_t *root = yaml_document_get_root_node(&extra);
                if (root)
                        yaml_error(p, root, "only one YAML document is allowed in the file");
                yaml_document_delete(&extra);
        } else if (parser.error != YAML_NO_ERROR) {
                yaml_error_at(p, parser.problem_mark, "YAML syntax error: %s",
                              parser.problem ? parser.problem : "unknown problem");
        }
        p->doc = NULL;
        yaml_document_delete(&doc);
        yaml_parser_delete(&parser);
        return r;
}
