#include "config.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <yaml.h>

#include "duration.h"
#include "util.h"

#define CONFIG_MAX_SIZE      (1024 * 1024)
#define MAX_PARALLEL_LIMIT   256
#define MIN_POLL_INTERVAL_MS 10
#define MIN_TIMEOUT_MS       100

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

struct parser {
        const char *path;
        yaml_document_t *doc;
        FILE *err;
        size_t n_errors;
        size_t n_visited; /* nodes walked, aliases expanded; see CONFIG_MAX_EXPANDED */
        bool oom;
        bool stop; /* a bound was reached: report nothing more, walk no further */
};

static const char *const top_keys[] = {
        "gateway",
        "poll_interval",
        "state_file",
        "dry_run",
        "max_closes_per_cycle",
        "protect",
        "policies",
        "fuse",
        "recheck_before_close",
        "metrics_file",
        "accounts",
        NULL,
};
static const char *const fuse_keys[] = { "max_share", "min_sessions", NULL };
static const char *const account_keys[] = {
        "name",      "appkey",   "accesstoken_file", "url",     "project_ids",
        "asset_vks", "max_rate", "policies",         "protect", NULL,
};
static const char *const gateway_keys[] = {
        "url",          "appkey",      "accesstoken_file", "ca_file",  "timeout",
        "max_parallel", "project_ids", "asset_vks",        "max_rate", NULL,
};
static const char *const protect_keys[] = { "user_ids", "session_ids", NULL };
static const char *const policy_keys[] = {
        "name", "kind", "after", "user_ids", "capacity", "keep_free", NULL
};

static const char *const kind_names[] = {
        [POLICY_FAILED] = "failed",
        [POLICY_NOT_STARTED] = "not_started",
        [POLICY_MAX_AGE] = "max_age",
        [POLICY_OVER_CAPACITY] = "over_capacity",
};

const char *config_account_name(const struct config *c) {
        return c->account ? c->account : "default";
}

const char *policy_kind_to_string(enum policy_kind k) {
        return (size_t) k < ELEMENTSOF(kind_names) ? kind_names[k] : "unknown";
}

static void diag_at(struct parser *p, yaml_mark_t mark, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));

/* libyaml marks count from zero; people count from one. After
 * CONFIG_MAX_ERRORS errors, one more line says so, and nothing else is
 * reported (or parsed: the walkers check p->stop). */
static void diag_at(struct parser *p, yaml_mark_t mark, const char *fmt, ...) {
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

#define diag(p, node, ...) diag_at((p), (node)->start_mark, __VA_ARGS__)

/* Counts n more nodes walked at node at (see CONFIG_MAX_EXPANDED). Returns
 * whether the walk may go on. */
static bool spend(struct parser *p, const yaml_node_t *at, size_t n) {
        if (p->stop)
                return false;
        if (n > CONFIG_MAX_EXPANDED - p->n_visited) {
                diag(p, at,
                     "more than %d nodes after expanding aliases and copying protect lists into accounts",
                     CONFIG_MAX_EXPANDED);
                p->stop = true;
                return false;
        }
        p->n_visited += n;
        return true;
}

/* Strings numbered 0, 1, 2, ... in the order they are added, grouped by
 * equality in a hash table, so that duplicates are found in linear time.
 * The strings are borrowed and must outlive the index. */
struct strindex {
        const char **keys; /* by number */
        size_t *next;      /* the next number with the same string; SIZE_MAX at the end */
        size_t *tail;      /* by a group's first number: its last */
        size_t *slots;     /* the first number of each group; SIZE_MAX when free */
        size_t mask;
};

static void strindex_free(struct strindex *x) {
        free(x->keys);
        free(x->next);
        free(x->tail);
        free(x->slots);
        *x = (struct strindex){ 0 };
}

/* Room for up to n strings. */
static int strindex_init(struct strindex *x, size_t n) {
        size_t cap = 16;

        *x = (struct strindex){ 0 };
        while (cap < 2 * n)
                cap *= 2;
        x->keys = calloc(n ? n : 1, sizeof *x->keys);
        x->next = calloc(n ? n : 1, sizeof *x->next);
        x->tail = calloc(n ? n : 1, sizeof *x->tail);
        x->slots = malloc(cap * sizeof *x->slots);
        if (!x->keys || !x->next || !x->tail || !x->slots) {
                strindex_free(x);
                return -ENOMEM;
        }
        memset(x->slots, 0xff, cap * sizeof *x->slots);
        x->mask = cap - 1;
        return 0;
}

/* Adds s as number i (numbers added in increasing order, each below the n
 * given to strindex_init) and returns the first number with an equal
 * string: i itself if s is new. The earlier numbers with the same string are
 * then, in increasing order, first, x->next[first], ..., up to i. */
static size_t strindex_add(struct strindex *x, size_t i, const char *s) {
        size_t h = 2166136261u;

        for (const unsigned char *c = (const unsigned char *) s; *c; c++)
                h = (h ^ *c) * 16777619u;
        x->keys[i] = s;
        x->next[i] = SIZE_MAX;
        for (h &= x->mask; x->slots[h] != SIZE_MAX; h = (h + 1) & x->mask) {
                size_t first = x->slots[h];

                if (strcmp(x->keys[first], s) == 0) {
                        x->next[x->tail[first]] = i;
                        x->tail[first] = i;
                        return first;
                }
        }
        x->slots[h] = i;
        x->tail[i] = i;
        return i;
}

static yaml_node_t *node_get(struct parser *p, int id) {
        return yaml_document_get_node(p->doc, id);
}

static const char *scalar(const yaml_node_t *n) {
        return n->type == YAML_SCALAR_NODE ? (const char *) n->data.scalar.value : NULL;
}

static bool is_null(const yaml_node_t *n) {
        const char *s = scalar(n);

        if (!s || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
                return false;
        return *s == '\0' || strcmp(s, "~") == 0 || strcmp(s, "null") == 0 || strcmp(s, "Null") == 0 ||
               strcmp(s, "NULL") == 0;
}

static const char *node_type_name(const yaml_node_t *n) {
        switch (n->type) {
        case YAML_MAPPING_NODE:
                return "a mapping";
        case YAML_SEQUENCE_NODE:
                return "a list";
        default:
                return is_null(n) ? "nothing (null)" : "a scalar";
        }
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

static const char *nearest_key(const char *key, const char *const *keys) {
        const char *best = NULL;
        size_t best_d = SIZE_MAX, limit = strlen(key) / 3 + 2;

        for (; *keys; keys++) {
                size_t lk = strlen(key), lc = strlen(*keys), d;

                /* The distance is at least the difference in length. */
                if ((lk > lc ? lk - lc : lc - lk) > limit)
                        continue;
                d = edit_distance(key, *keys);
                if (d < best_d) {
                        best_d = d;
                        best = *keys;
                }
        }
        return best_d <= limit ? best : NULL;
}

static char *key_list(const char *const *keys, char *buf, size_t n) {
        size_t off = 0;

        buf[0] = '\0';
        for (; *keys && off < n; keys++)
                off += (size_t) snprintf(buf + off, n - off, "%s%s", off ? ", " : "", *keys);
        return buf;
}

typedef void (*key_fn)(struct parser *p, const char *key, yaml_node_t *value, void *userdata);

/* Walks a mapping node: rejects non-scalar, duplicate and unknown keys (with a
 * suggestion), and calls fn for every known one. */
static void walk_mapping(struct parser *p, const char *where, yaml_node_t *map, const char *const *keys,
                         key_fn fn, void *userdata) {
        struct strindex seen;
        size_t n_pairs, n_seen = 0;

        if (map->type != YAML_MAPPING_NODE) {
                diag(p, map, "%s: expected a mapping, got %s", where, node_type_name(map));
                return;
        }
        n_pairs = (size_t) (map->data.mapping.pairs.top - map->data.mapping.pairs.start);
        if (!spend(p, map, n_pairs))
                return;
        if (strindex_init(&seen, n_pairs) < 0) {
                p->oom = true;
                return;
        }
        for (yaml_node_pair_t *pair = map->data.mapping.pairs.start;
             pair < map->data.mapping.pairs.top && !p->stop; pair++) {
                yaml_node_t *k = node_get(p, pair->key), *v = node_get(p, pair->value);
                const char *key = k ? scalar(k) : NULL;
                const char *const *known;
                bool dup = false;

                if (key) {
                        dup = strindex_add(&seen, n_seen, key) != n_seen;
                        n_seen++;
                }
                if (!key || !v) {
                        diag(p, k ? k : map, "%s: keys must be plain strings", where);
                        continue;
                }
                if (dup) {
                        diag(p, k, "%s: duplicate key '%s'", where, key);
                        continue;
                }
                for (known = keys; *known && strcmp(*known, key) != 0; known++)
                        ;
                if (!*known) {
                        const char *near = nearest_key(key, keys);
                        char all[256];

                        if (near)
                                diag(p, k, "%s: unknown key '%s', did you mean '%s'?", where, key, near);
                        else
                                diag(p, k, "%s: unknown key '%s' (valid keys: %s)", where, key,
                                     key_list(keys, all, sizeof all));
                        continue;
                }
                fn(p, key, v, userdata);
        }
        strindex_free(&seen);
}

static bool has_key(struct parser *p, yaml_node_t *map, const char *key) {
        if (map->type != YAML_MAPPING_NODE)
                return true; /* already reported */
        for (yaml_node_pair_t *pair = map->data.mapping.pairs.start; pair < map->data.mapping.pairs.top;
             pair++) {
                const char *k = scalar(node_get(p, pair->key));
                if (k && strcmp(k, key) == 0)
                        return true;
        }
        return false;
}

static void require_keys(struct parser *p, const char *where, yaml_node_t *map,
                         const char *const *required) {
        for (; *required; required++)
                if (!has_key(p, map, *required))
                        diag(p, map, "%s: missing required key '%s'", where, *required);
}

/* Whether s has only ASCII letters, digits and the characters in extra:
 * the names that end up in URLs, journal fields and metric labels. */
static bool only_name_chars(const char *s, const char *extra) {
        for (; *s; s++)
                if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
                      strchr(extra, *s)))
                        return false;
        return true;
}

static char *xstrdup(struct parser *p, const char *s) {
        char *d = strdup(s);
        if (!d)
                p->oom = true;
        return d;
}

/* A string value; null is accepted only when allow_null (then *dst = NULL). */
static void get_string(struct parser *p, const char *where, yaml_node_t *n, bool allow_null, char **dst) {
        const char *s = scalar(n);

        if (allow_null && is_null(n)) {
                free(*dst);
                *dst = NULL;
                return;
        }
        if (!s || is_null(n)) {
                diag(p, n, "%s: expected a string, got %s", where, node_type_name(n));
                return;
        }
        if (*s == '\0') {
                diag(p, n, "%s: must not be empty", where);
                return;
        }
        if (strlen(s) != n->data.scalar.length) {
                diag(p, n, "%s: must not contain a NUL character", where);
                return;
        }
        free(*dst);
        *dst = xstrdup(p, s);
}

static void get_duration(struct parser *p, const char *where, yaml_node_t *n, uint64_t min_ms,
                         uint64_t *dst) {
        const char *s = scalar(n), *problem = NULL;
        uint64_t ms;
        char buf[32];

        if (!s || is_null(n)) {
                diag(p, n, "%s: expected a duration such as 30s or 10m, got %s", where, node_type_name(n));
                return;
        }
        if (duration_parse(s, &ms, &problem) < 0) {
                diag(p, n, "%s: invalid duration '%s': %s", where, s, problem);
                return;
        }
        if (ms < min_ms) {
                diag(p, n, "%s: must be at least %s", where, duration_format(min_ms, buf, sizeof buf));
                return;
        }
        *dst = ms;
}

static void get_uint(struct parser *p, const char *where, yaml_node_t *n, unsigned min, unsigned max,
                     unsigned *dst) {
        const char *s = scalar(n);
        unsigned long long v = 0;

        if (!s || is_null(n) || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE) {
                diag(p, n, "%s: expected a whole number, got %s", where,
                     s && !is_null(n) ? "a quoted string" : node_type_name(n));
                return;
        }
        if (*s == '\0' || strspn(s, "0123456789") != strlen(s) || strlen(s) > 10) {
                diag(p, n, "%s: expected a whole number from %u to %u, got '%s'", where, min, max, s);
                return;
        }
        v = strtoull(s, NULL, 10);
        if (v < min || v > max) {
                diag(p, n, "%s: must be from %u to %u, got %llu", where, min, max, v);
                return;
        }
        *dst = (unsigned) v;
}

static void get_bool(struct parser *p, const char *where, yaml_node_t *n, bool *dst) {
        static const char *const yes[] = { "true", "yes", "on" }, *const no[] = { "false", "no", "off" };
        const char *s = scalar(n);

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
        diag(p, n, "%s: expected true or false, got %s%s%s", where,
             s && !is_null(n) ? "'" : node_type_name(n), s && !is_null(n) ? s : "",
             s && !is_null(n) ? "'" : "");
}

static void glob_list_free(struct glob_list *l) {
        for (size_t i = 0; i < l->n; i++)
                free(l->items[i]);
        free(l->items);
        l->items = NULL;
        l->n = 0;
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

static void get_glob_list(struct parser *p, const char *where, yaml_node_t *n, struct glob_list *dst) {
        size_t count;

        glob_list_free(dst);
        if (is_null(n))
                return;
        if (n->type != YAML_SEQUENCE_NODE) {
                diag(p, n, "%s: expected a list of glob patterns such as [\"vip-*\"], got %s", where,
                     node_type_name(n));
                return;
        }
        count = (size_t) (n->data.sequence.items.top - n->data.sequence.items.start);
        if (count == 0 || !spend(p, n, count))
                return;
        dst->items = calloc(count, sizeof(char *));
        if (!dst->items) {
                p->oom = true;
                return;
        }
        for (yaml_node_item_t *it = n->data.sequence.items.start;
             it < n->data.sequence.items.top && !p->stop; it++) {
                yaml_node_t *item = node_get(p, *it);
                const char *s = item ? scalar(item) : NULL;

                if (!s || is_null(item) || *s == '\0') {
                        diag(p, item ? item : n, "%s: each entry must be a non-empty string, got %s", where,
                             item && s && !is_null(item) ? "an empty string"
                                                         : node_type_name(item ? item : n));
                        continue;
                }
                if (strlen(s) != item->data.scalar.length) {
                        diag(p, item, "%s: a pattern may not contain a NUL character", where);
                        continue;
                }
                if (glob_problem(s)) {
                        diag(p, item, "%s: pattern \"%s\" %s", where, s, glob_problem(s));
                        continue;
                }
                dst->items[dst->n] = xstrdup(p, s);
                if (dst->items[dst->n])
                        dst->n++;
        }
}

bool config_host_is_loopback(const char *host) {
        struct in_addr a4;
        struct in6_addr a6;
        char buf[64];
        size_t len;

        if (!host)
                return false;
        if (strcasecmp(host, "localhost") == 0)
                return true;
        if (inet_pton(AF_INET, host, &a4) == 1)
                return (ntohl(a4.s_addr) >> 24) == 127;
        len = strlen(host);
        if (len >= 2 && host[0] == '[' && host[len - 1] == ']' && len - 2 < sizeof buf) {
                memcpy(buf, host + 1, len - 2);
                buf[len - 2] = '\0';
                host = buf;
        }
        return inet_pton(AF_INET6, host, &a6) == 1 && IN6_IS_ADDR_LOOPBACK(&a6);
}

/* https://host[:port][/path], or http:// for loopback hosts only. */
static void check_url(struct parser *p, yaml_node_t *n, const char *url) {
        CURLU *u = curl_url();
        char *scheme = NULL, *host = NULL, *query = NULL, *fragment = NULL, *user = NULL;

        if (!u) {
                p->oom = true;
                return;
        }
        if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK) {
                diag(p, n, "gateway.url: '%s' is not a valid URL", url);
                goto out;
        }
        curl_url_get(u, CURLUPART_SCHEME, &scheme, 0);
        curl_url_get(u, CURLUPART_HOST, &host, 0);
        curl_url_get(u, CURLUPART_QUERY, &query, 0);
        curl_url_get(u, CURLUPART_FRAGMENT, &fragment, 0);
        curl_url_get(u, CURLUPART_USER, &user, 0);
        if (!scheme || (strcasecmp(scheme, "https") != 0 && strcasecmp(scheme, "http") != 0))
                diag(p, n, "gateway.url: scheme must be https (http only for loopback)");
        else if (strcasecmp(scheme, "http") == 0 && !config_host_is_loopback(host))
                diag(p, n, "gateway.url: plain http is refused for non-loopback host '%s'; use https",
                     host ? host : "");
        if (query || fragment || user)
                diag(p, n, "gateway.url: must not carry credentials, a query or a fragment");
out:
        curl_free(scheme);
        curl_free(host);
        curl_free(query);
        curl_free(fragment);
        curl_free(user);
        curl_url_cleanup(u);
}

/* A list of ids to list by (projects, assets): no id twice. */
static void get_id_list(struct parser *p, const char *where, yaml_node_t *v, struct glob_list *dst) {
        struct strindex seen;

        get_glob_list(p, where, v, dst);
        if (strindex_init(&seen, dst->n) < 0) {
                p->oom = true;
                return;
        }
        /* One error for each earlier copy, as many as there are. */
        for (size_t i = 0; i < dst->n && !p->stop; i++)
                for (size_t j = strindex_add(&seen, i, dst->items[i]); j != i && !p->stop; j = seen.next[j])
                        diag(p, v, "%s: '%s' is listed twice", where, dst->items[i]);
        strindex_free(&seen);
}

/* Calls per second: a positive number such as 40 or 2.5. */
static void get_rate(struct parser *p, const char *where, yaml_node_t *n, double *dst) {
        const char *s = scalar(n);
        char *end = NULL;
        double v;

        if (!s || is_null(n) || !*s) {
                diag(p, n, "%s: expected calls per second such as 40, got %s", where, node_type_name(n));
                return;
        }
        v = strtod(s, &end);
        if (end == s || *end != '\0' || !isfinite(v) || v < 0.1 || v > 100000) {
                diag(p, n, "%s: expected calls per second between 0.1 and 100000, got '%s'", where, s);
                return;
        }
        *dst = v;
}

static void gateway_key(struct parser *p, const char *key, yaml_node_t *v, void *userdata) {
        struct gateway_config *g = userdata;
        char where[64];

        snprintf(where, sizeof where, "gateway.%s", key);
        if (strcmp(key, "url") == 0) {
                size_t before = p->n_errors;

                get_string(p, where, v, false, &g->url);
                if (g->url && p->n_errors == before) {
                        size_t len = strlen(g->url);
                        while (len > 0 && g->url[len - 1] == '/')
                                g->url[--len] = '\0';
                        check_url(p, v, g->url);
                }
        } else if (strcmp(key, "appkey") == 0) {
                const char *s = scalar(v);
                get_string(p, where, v, false, &g->appkey);
                if (s && !is_null(v) && *s && !only_name_chars(s, "-_."))
                        diag(p, v, "gateway.appkey: may contain only letters, digits, '-', '_' and '.'");
                else if (s && strlen(s) > 128)
                        diag(p, v, "gateway.appkey: longer than 128 characters");
        } else if (strcmp(key, "accesstoken_file") == 0) {
                get_string(p, where, v, true, &g->accesstoken_file);
        } else if (strcmp(key, "ca_file") == 0) {
                get_string(p, where, v, true, &g->ca_file);
        } else if (strcmp(key, "timeout") == 0) {
                get_duration(p, where, v, MIN_TIMEOUT_MS, &g->timeout_ms);
        } else if (strcmp(key, "max_parallel") == 0) {
                get_uint(p, where, v, 1, MAX_PARALLEL_LIMIT, &g->max_parallel);
        } else if (strcmp(key, "project_ids") == 0) {
                get_id_list(p, where, v, &g->project_ids);
        } else if (strcmp(key, "asset_vks") == 0) {
                get_id_list(p, where, v, &g->asset_vks);
        } else if (strcmp(key, "max_rate") == 0) {
                get_rate(p, where, v, &g->max_rate);
        }
}

/* A share: "50%" or a fraction such as 0.5; 0 < share <= 1. */
static void get_share(struct parser *p, const char *where, yaml_node_t *n, double *dst) {
        const char *s = scalar(n);
        char *end = NULL;
        double v;

        if (!s || is_null(n) || !*s) {
                diag(p, n, "%s: expected a share such as 50%% or 0.5, got %s", where, node_type_name(n));
                return;
        }
        v = strtod(s, &end);
        if (end == s || (strcmp(end, "%") != 0 && *end != '\0') || isnan(v)) {
                diag(p, n, "%s: expected a share such as 50%% or 0.5, got '%s'", where, s);
                return;
        }
        if (*end == '%')
                v /= 100.0;
        if (!(v > 0.0 && v <= 1.0)) {
                diag(p, n, "%s: must be above 0%% and at most 100%%, got '%s'", where, s);
                return;
        }
        *dst = v;
}

static void fuse_key(struct parser *p, const char *key, yaml_node_t *v, void *userdata) {
        struct fuse_config *f = userdata;

        if (strcmp(key, "max_share") == 0)
                get_share(p, "fuse.max_share", v, &f->max_share);
        else if (strcmp(key, "min_sessions") == 0)
                get_uint(p, "fuse.min_sessions", v, 0, 1000000, &f->min_sessions);
}

static void protect_key(struct parser *p, const char *key, yaml_node_t *v, void *userdata) {
        struct config *c = userdata;

        if (strcmp(key, "user_ids") == 0)
                get_glob_list(p, "protect.user_ids", v, &c->protect_user_ids);
        else if (strcmp(key, "session_ids") == 0)
                get_glob_list(p, "protect.session_ids", v, &c->protect_session_ids);
}

struct policy_ctx {
        struct policy *pol;
        bool kind_ok;
        char where[64];
};

static void policy_key(struct parser *p, const char *key, yaml_node_t *v, void *userdata) {
        struct policy_ctx *ctx = userdata;
        char where[128];

        snprintf(where, sizeof where, "%s.%s", ctx->where, key);
        if (strcmp(key, "name") == 0) {
                const char *s = scalar(v);
                get_string(p, where, v, false, &ctx->pol->name);
                if (s && !is_null(v) && *s && !only_name_chars(s, "-_."))
                        diag(p, v, "%s: may contain only letters, digits, '-', '_' and '.'", where);
                else if (s && (strcmp(s, "keep") == 0 || strcmp(s, "protected") == 0))
                        diag(p, v, "%s: '%s' is reserved for --plan output; choose another name", where, s);
        } else if (strcmp(key, "kind") == 0) {
                const char *s = scalar(v);
                size_t i;

                for (i = 0; s && i < ELEMENTSOF(kind_names); i++)
                        if (strcmp(s, kind_names[i]) == 0)
                                break;
                if (!s || i == ELEMENTSOF(kind_names)) {
                        diag(p, v,
                             "%s: expected one of failed, not_started, max_age, over_capacity, got %s%s%s",
                             where, s ? "'" : node_type_name(v), s ? s : "", s ? "'" : "");
                        return;
                }
                ctx->pol->kind = (enum policy_kind) i;
                ctx->kind_ok = true;
        } else if (strcmp(key, "after") == 0) {
                get_duration(p, where, v, 0, &ctx->pol->after_ms);
        } else if (strcmp(key, "user_ids") == 0) {
                /* An empty selector would select every user: a template that
                 * renders an empty list must not widen the policy. */
                if (is_null(v))
                        diag(p, v,
                             "%s: is empty (null), which would select every user; "
                             "omit user_ids to match every user",
                             where);
                else if (v->type == YAML_SEQUENCE_NODE &&
                         v->data.sequence.items.top == v->data.sequence.items.start)
                        diag(p, v,
                             "%s: is an empty list, which would select every user; "
                             "omit user_ids to match every user",
                             where);
                else
                        get_glob_list(p, where, v, &ctx->pol->user_ids);
        } else if (strcmp(key, "capacity") == 0) {
                get_uint(p, where, v, 1, 1000000, &ctx->pol->capacity);
        } else if (strcmp(key, "keep_free") == 0) {
                get_uint(p, where, v, 0, 1000000, &ctx->pol->keep_free);
        }
}

static void parse_policies(struct parser *p, yaml_node_t *n, struct config *c) {
        static const char *const required[] = { "name", "kind", NULL };
        static const char *const required_timer[] = { "after", NULL };
        static const char *const required_capacity[] = { "capacity", NULL };
        struct strindex names;
        size_t count;

        if (n->type != YAML_SEQUENCE_NODE) {
                diag(p, n, "policies: expected a list of policies, got %s", node_type_name(n));
                return;
        }
        count = (size_t) (n->data.sequence.items.top - n->data.sequence.items.start);
        if (count == 0 || !spend(p, n, count))
                return;
        c->policies = calloc(count, sizeof(struct policy));
        if (!c->policies || strindex_init(&names, count) < 0) {
                p->oom = true;
                return;
        }
        for (size_t i = 0; i < count && !p->stop; i++) {
                yaml_node_t *item = node_get(p, n->data.sequence.items.start[i]);
                struct policy_ctx ctx = { .pol = &c->policies[c->n_policies] };
                size_t self;

                if (!item)
                        continue;
                c->n_policies++;
                snprintf(ctx.where, sizeof ctx.where, "policies[%zu]", i);
                walk_mapping(p, ctx.where, item, policy_keys, policy_key, &ctx);
                require_keys(p, ctx.where, item, required);
                /* Rules that involve several keys of the policy. */
                if (item->type == YAML_MAPPING_NODE && ctx.kind_ok) {
                        if (ctx.pol->kind == POLICY_OVER_CAPACITY) {
                                require_keys(p, ctx.where, item, required_capacity);
                                if (ctx.pol->capacity > 0 && ctx.pol->keep_free >= ctx.pol->capacity)
                                        diag(p, item, "%s: keep_free (%u) must be less than capacity (%u)",
                                             ctx.where, ctx.pol->keep_free, ctx.pol->capacity);
                        } else {
                                require_keys(p, ctx.where, item, required_timer);
                                if (has_key(p, item, "capacity") || has_key(p, item, "keep_free"))
                                        diag(p, item,
                                             "%s: capacity and keep_free apply only to kind over_capacity",
                                             ctx.where);
                        }
                }
                if (!ctx.pol->name)
                        continue;
                self = c->n_policies - 1;
                for (size_t j = strindex_add(&names, self, ctx.pol->name); j != self && !p->stop;
                     j = names.next[j])
                        diag(p, item, "%s: policy name '%s' is already used by policies[%zu]", ctx.where,
                             ctx.pol->name, j);
        }
        strindex_free(&names);
}

static void top_key(struct parser *p, const char *key, yaml_node_t *v, void *userdata) {
        struct config *c = userdata;

        if (strcmp(key, "gateway") == 0) {
                walk_mapping(p, "gateway", v, gateway_keys, gateway_key, &c->gateway);
        } else if (strcmp(key, "accounts") == 0) {
                /* Parsed after the top level, whose settings accounts inherit. */
        } else if (strcmp(key, "poll_interval") == 0)
                get_duration(p, key, v, MIN_POLL_INTERVAL_MS, &c->poll_interval_ms);
        else if (strcmp(key, "state_file") == 0)
                get_string(p, key, v, false, &c->state_file);
        else if (strcmp(key, "metrics_file") == 0)
                get_string(p, key, v, true, &c->metrics_file);
        else if (strcmp(key, "dry_run") == 0)
                get_bool(p, key, v, &c->dry_run);
        else if (strcmp(key, "recheck_before_close") == 0)
                get_bool(p, key, v, &c->recheck_before_close);
        else if (strcmp(key, "fuse") == 0) {
                if (!is_null(v))
                        walk_mapping(p, "fuse", v, fuse_keys, fuse_key, &c->fuse);
        } else if (strcmp(key, "max_closes_per_cycle") == 0)
                get_uint(p, key, v, 1, 1000000, &c->max_closes_per_cycle);
        else if (strcmp(key, "protect") == 0) {
                if (!is_null(v))
                        walk_mapping(p, "protect", v, protect_keys, protect_key, c);
        } else if (strcmp(key, "policies") == 0)
                parse_policies(p, v, c);
}

static int config_defaults(struct config *c, const char *path) {
        c->path = strdup(path);
        c->gateway.url = strdup(CONFIG_DEFAULT_URL);
        c->state_file = strdup(CONFIG_DEFAULT_STATE_FILE);
        c->gateway.timeout_ms = 10 * 1000;
        c->gateway.max_parallel = 16;
        c->poll_interval_ms = 30 * 1000;
        c->max_closes_per_cycle = 100;
        c->recheck_before_close = true;
        c->fuse.max_share = 0.5;
        c->fuse.min_sessions = 10;
        return c->path && c->gateway.url && c->state_file ? 0 : -ENOMEM;
}

static yaml_node_t *find_value(struct parser *p, yaml_node_t *map, const char *key) {
        if (!map || map->type != YAML_MAPPING_NODE)
                return NULL;
        for (yaml_node_pair_t *pair = map->data.mapping.pairs.start; pair < map->data.mapping.pairs.top;
             pair++) {
                const char *k = scalar(node_get(p, pair->key));
                if (k && strcmp(k, key) == 0)
                        return node_get(p, pair->value);
        }
        return NULL;
}

static int glob_list_copy(struct glob_list *dst, const struct glob_list *src) {
        if (src->n == 0)
                return 0;
        dst->items = calloc(src->n, sizeof(char *));
        if (!dst->items)
                return -ENOMEM;
        for (; dst->n < src->n; dst->n++)
                if (!(dst->items[dst->n] = strdup(src->items[dst->n])))
                        return -ENOMEM;
        return 0;
}

/* "state.json" + "prod" -> "state.prod.json"; "state" -> "state.prod". */
static char *account_state_file(const char *state_file, const char *name) {
        size_t len = strlen(state_file);
        char *r = NULL;

        if (len > 5 && strcmp(state_file + len - 5, ".json") == 0) {
                if (asprintf(&r, "%.*s.%s.json", (int) (len - 5), state_file, name) < 0)
                        r = NULL;
        } else if (asprintf(&r, "%s.%s", state_file, name) < 0)
                r = NULL;
        return r;
}

/* An account starts as a copy of the top level's settings. */
static struct config *account_new(struct parser *p, const struct config *top) {
        struct config *a = calloc(1, sizeof *a);

        if (!a) {
                p->oom = true;
                return NULL;
        }
        a->path = strdup(top->path);
        a->gateway.url = strdup(top->gateway.url);
        a->gateway.ca_file = strdup_or_null(top->gateway.ca_file);
        a->gateway.timeout_ms = top->gateway.timeout_ms;
        a->gateway.max_parallel = top->gateway.max_parallel;
        a->gateway.max_rate = top->gateway.max_rate;
        a->poll_interval_ms = top->poll_interval_ms;
        a->dry_run = top->dry_run;
        a->recheck_before_close = top->recheck_before_close;
        a->max_closes_per_cycle = top->max_closes_per_cycle;
        a->fuse = top->fuse;
        if (!a->path || !a->gateway.url || (top->gateway.ca_file && !a->gateway.ca_file) ||
            glob_list_copy(&a->protect_user_ids, &top->protect_user_ids) < 0 ||
            glob_list_copy(&a->protect_session_ids, &top->protect_session_ids) < 0) {
                p->oom = true;
                config_free(a);
                return NULL;
        }
        return a;
}

static int glob_list_append(struct glob_list *dst, const struct glob_list *more) {
        char **items;

        if (more->n == 0)
                return 0;
        items = realloc(dst->items, (dst->n + more->n) * sizeof(char *));
        if (!items)
                return -ENOMEM;
        dst->items = items;
        for (size_t i = 0; i < more->n; i++)
                if (!(dst->items[dst->n] = strdup(more->items[i])))
                        return -ENOMEM;
                else
                        dst->n++;
        return 0;
}

struct account_ctx {
        struct config *a;
        char where[64];
};

static void account_key(struct parser *p, const char *key, yaml_node_t *v, void *userdata) {
        struct account_ctx *ctx = userdata;
        struct config *a = ctx->a;
        char where[96];

        snprintf(where, sizeof where, "%s.%s", ctx->where, key);
        if (strcmp(key, "name") == 0) {
                const char *s = scalar(v);

                get_string(p, where, v, false, &a->account);
                if (s && !is_null(v) && *s && !only_name_chars(s, "-_"))
                        diag(p, v, "%s: may contain only letters, digits, '-' and '_'", where);
        } else if (strcmp(key, "policies") == 0) {
                parse_policies(p, v, a);
        } else if (strcmp(key, "protect") == 0) {
                struct config extra = { 0 };

                if (!is_null(v))
                        walk_mapping(p, where, v, protect_keys, protect_key, &extra);
                if (glob_list_append(&a->protect_user_ids, &extra.protect_user_ids) < 0 ||
                    glob_list_append(&a->protect_session_ids, &extra.protect_session_ids) < 0)
                        p->oom = true;
                glob_list_free(&extra.protect_user_ids);
                glob_list_free(&extra.protect_session_ids);
        } else {
                /* appkey, accesstoken_file, url, project_ids: as under gateway: */
                gateway_key(p, key, v, &a->gateway);
        }
}

static void parse_accounts(struct parser *p, yaml_node_t *n, struct config *top) {
        static const char *const required[] = { "name", "appkey", "policies", NULL };
        struct strindex names;
        size_t count;

        if (n->type != YAML_SEQUENCE_NODE) {
                diag(p, n, "accounts: expected a list of accounts, got %s", node_type_name(n));
                return;
        }
        count = (size_t) (n->data.sequence.items.top - n->data.sequence.items.start);
        if (count == 0) {
                diag(p, n, "accounts: expected at least one account");
                return;
        }
        if (!spend(p, n, count))
                return;
        top->accounts = calloc(count, sizeof *top->accounts);
        if (!top->accounts || strindex_init(&names, count) < 0) {
                p->oom = true;
                return;
        }
        for (size_t i = 0; i < count && !p->stop; i++) {
                yaml_node_t *item = node_get(p, n->data.sequence.items.start[i]);
                struct account_ctx ctx;
                struct config *a;
                size_t self;

                if (!item)
                        continue;
                /* Each account gets its own copy of the global protect lists. */
                if (!spend(p, item, top->protect_user_ids.n + top->protect_session_ids.n))
                        break;
                if (!(a = account_new(p, top)))
                        continue;
                top->accounts[top->n_accounts++] = a;
                ctx.a = a;
                snprintf(ctx.where, sizeof ctx.where, "accounts[%zu]", i);
                walk_mapping(p, ctx.where, item, account_keys, account_key, &ctx);
                require_keys(p, ctx.where, item, required);
                if (!a->account)
                        continue;
                self = top->n_accounts - 1;
                for (size_t j = strindex_add(&names, self, a->account); j != self && !p->stop;
                     j = names.next[j])
                        diag(p, item, "%s: account name '%s' is already used by accounts[%zu]", ctx.where,
                             a->account, j);
                a->state_file = account_state_file(top->state_file, a->account);
                if (!a->state_file)
                        p->oom = true;
        }
        strindex_free(&names);
}

/* The file a path names, for comparing two paths: realpath() when the file
 * exists, else the real path of its directory with the last component
 * appended, else the path as written. NULL when memory runs out. */
static char *normalize_path(const char *path) {
        const char *slash = strrchr(path, '/'), *base = slash ? slash + 1 : path;
        char *r = realpath(path, NULL), *dir, *rdir;

        if (r || errno == ENOMEM)
                return r;
        if (*base == '\0' || strcmp(base, ".") == 0 || strcmp(base, "..") == 0)
                return strdup(path);
        dir = slash ? strndup(path, slash == path ? 1 : (size_t) (slash - path)) : strdup(".");
        if (!dir)
                return NULL;
        rdir = realpath(dir, NULL);
        free(dir);
        if (!rdir)
                return strdup(path);
        if (asprintf(&r, "%s%s%s", rdir, strcmp(rdir, "/") == 0 ? "" : "/", base) < 0)
                r = NULL;
        free(rdir);
        return r;
}

/* Whether paths a and b name the same file (see normalize_path). */
static bool same_file(struct parser *p, const char *a, const char *b) {
        char *na = normalize_path(a), *nb = normalize_path(b);
        bool same = na && nb && strcmp(na, nb) == 0;

        if (!na || !nb)
                p->oom = true;
        free(na);
        free(nb);
        return same;
}

/* The metrics file is replaced on every cycle: it must not be the state
 * file (of any account) or the policy file itself. */
static void check_metrics_file(struct parser *p, yaml_node_t *root, const struct config *c) {
        yaml_node_t *at = NULL;

        if (!c->metrics_file || p->stop)
                return;
        for (yaml_node_pair_t *pair = root->data.mapping.pairs.start; pair < root->data.mapping.pairs.top;
             pair++) {
                yaml_node_t *k = node_get(p, pair->key);
                const char *key = k ? scalar(k) : NULL;

                if (key && strcmp(key, "metrics_file") == 0) {
                        at = k;
                        break;
                }
        }
        if (!at)
                return;
        if (same_file(p, c->metrics_file, c->path))
                diag(p, at, "metrics_file: '%s' is the same file as the policy file", c->metrics_file);
        if (same_file(p, c->metrics_file, c->state_file))
                diag(p, at, "metrics_file: '%s' is the same file as state_file", c->metrics_file);
        for (size_t i = 0; i < c->n_accounts; i++)
                if (c->accounts[i]->state_file && same_file(p, c->metrics_file, c->accounts[i]->state_file))
                        diag(p, at,
                             "metrics_file: '%s' is the same file as the state file of accounts[%zu] (%s)",
                             c->metrics_file, i, c->accounts[i]->state_file);
}

static void parse_document(struct parser *p, struct config *c) {
        yaml_node_t *root = yaml_document_get_root_node(p->doc), *accounts, *gateway;

        if (!root) {
                yaml_mark_t start = { 0 };
                diag_at(p, start, "the file is empty; expected a mapping with 'gateway' and 'policies'");
                return;
        }
        walk_mapping(p, "top level", root, top_keys, top_key, c);
        if (root->type != YAML_MAPPING_NODE)
                return;
        accounts = find_value(p, root, "accounts");
        gateway = find_value(p, root, "gateway");
        if (!accounts) {
                static const char *const required[] = { "gateway", "policies", NULL };
                static const char *const required_gateway[] = { "appkey", NULL };

                require_keys(p, "top level", root, required);
                if (gateway)
                        require_keys(p, "gateway", gateway, required_gateway);
                check_metrics_file(p, root, c);
                return;
        }
        /* With accounts, what is per account cannot also be global. */
        if (find_value(p, root, "policies"))
                diag(p, root, "top level: 'policies' belongs in each account when 'accounts' is used");
        for (const char *const *k =
                     (const char *const[]){ "appkey", "accesstoken_file", "project_ids", "asset_vks", NULL };
             *k; k++)
                if (find_value(p, gateway, *k))
                        diag(p, find_value(p, gateway, *k),
                             "gateway.%s: belongs in each account when 'accounts' is used", *k);
        parse_accounts(p, accounts, c);
        check_metrics_file(p, root, c);
}

/* libyaml reads all the directives of a document before it reports the
 * document's start, checking each %TAG against all earlier ones, so they are
 * counted in the bytes: a '%' that starts a line. Returns whether the file is
 * refused. */
static bool too_many_directives(struct parser *p, const char *data, size_t size) {
        yaml_mark_t mark = { 0 };
        size_t n = 0;

        for (size_t i = 0; i < size; i++) {
                if (data[i] == '%' && (i == 0 || data[i - 1] == '\n' || data[i - 1] == '\r')) {
                        if (++n > CONFIG_MAX_DIRECTIVES) {
                                mark.index = i;
                                diag_at(p, mark, "more than %d directives (lines that start with '%%')",
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
static int check_shape(struct parser *p, const char *data, size_t size) {
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
                        diag_at(p, ev.start_mark, "nesting deeper than %d levels", CONFIG_MAX_DEPTH);
                else if (aliases > CONFIG_MAX_ALIASES)
                        diag_at(p, ev.start_mark, "more than %d aliases", CONFIG_MAX_ALIASES);
                else if (anchors > CONFIG_MAX_ANCHORS)
                        diag_at(p, ev.start_mark, "more than %d anchors", CONFIG_MAX_ANCHORS);
                else if (nodes > CONFIG_MAX_NODES)
                        diag_at(p, ev.start_mark, "more than %d nodes", CONFIG_MAX_NODES);
                else
                        r = 0;
                yaml_event_delete(&ev);
        }
        yaml_parser_delete(&parser);
        return r;
}

static int load_yaml(struct parser *p, const char *data, size_t size, struct config *c) {
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
                        diag_at(p, parser.problem_mark, "YAML syntax error: %s%s%s",
                                parser.problem ? parser.problem : "unknown problem",
                                parser.context ? " " : "", parser.context ? parser.context : "");
                yaml_parser_delete(&parser);
                return r;
        }
        p->doc = &doc;
        parse_document(p, c);

        /* A second document would be silently ignored; refuse it instead. */
        if (yaml_parser_load(&parser, &extra)) {
                yaml_node_t *root = yaml_document_get_root_node(&extra);
                if (root)
                        diag(p, root, "only one YAML document is allowed in the file");
                yaml_document_delete(&extra);
        } else if (parser.error != YAML_NO_ERROR) {
                diag_at(p, parser.problem_mark, "YAML syntax error: %s",
                        parser.problem ? parser.problem : "unknown problem");
        }
        p->doc = NULL;
        yaml_document_delete(&doc);
        yaml_parser_delete(&parser);
        return r;
}

int config_load(const char *path, struct config **ret_config, char **ret_errors) {
        struct parser p = { .path = path };
        struct config *c = NULL;
        char *data = NULL, *errors = NULL;
        size_t size = 0, errors_len = 0;
        int r;

        *ret_errors = NULL;
        p.err = open_memstream(&errors, &errors_len);
        if (!p.err)
                return -ENOMEM;

        r = read_file_full(path, CONFIG_MAX_SIZE, &data, &size);
        if (r < 0) {
                fprintf(p.err, "%s: cannot read configuration: %s\n", path,
                        r == -EFBIG ? "file larger than 1 MiB" : file_strerror(r));
                goto out;
        }
        c = calloc(1, sizeof *c);
        if (!c || config_defaults(c, path) < 0) {
                r = -ENOMEM;
                goto out;
        }
        r = load_yaml(&p, data, size, c);
        if (r >= 0 && p.oom)
                r = -ENOMEM;
        if (r >= 0 && p.n_errors > 0)
                r = -EINVAL;
        if (r < 0)
                goto out;

        *ret_config = c;
        c = NULL;
out:
        if (r == -ENOMEM)
                fprintf(p.err, "%s: out of memory while loading configuration\n", path);
        fclose(p.err);
        if (r < 0)
                *ret_errors = errors;
        else
                free(errors);
        config_free(c);
        free(data);
        return r;
}

void config_free(struct config *c) {
        if (!c)
                return;
        for (size_t i = 0; i < c->n_accounts; i++)
                config_free(c->accounts[i]);
        free(c->accounts);
        free(c->account);
        free(c->path);
        free(c->gateway.url);
        free(c->gateway.appkey);
        free(c->gateway.accesstoken_file);
        free(c->gateway.ca_file);
        glob_list_free(&c->gateway.project_ids);
        glob_list_free(&c->gateway.asset_vks);
        free(c->state_file);
        free(c->metrics_file);
        glob_list_free(&c->protect_user_ids);
        glob_list_free(&c->protect_session_ids);
        for (size_t i = 0; i < c->n_policies; i++) {
                free(c->policies[i].name);
                glob_list_free(&c->policies[i].user_ids);
        }
        free(c->policies);
        free(c);
}
