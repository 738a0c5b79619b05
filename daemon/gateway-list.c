/* The list replies: each entry of Payload.Sessions read on its own (a bad
 * one costs itself, never the account), duplicates reduced, lists merged. */
#include "gateway.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway-internal.h"
#include "json.h"
#include "listscan.h"
#include "util.h"

static bool status_is_live(int status) {
        return status == SESSION_IN_PROGRESS || status == SESSION_PREPARING;
}

/* Room for one more element in array (n of *cap used), doubling: returns
 * the array, moved or not, or NULL (array unchanged) when out of memory. */
static void *reserve_one(void *array, size_t *cap, size_t n, size_t size) {
        size_t c = *cap ? 2 * *cap : 16;
        void *p;

        if (n < *cap)
                return array;
        p = reallocarray(array, c, size);
        if (p)
                *cap = c;
        return p;
}

/* Takes id (owned, or NULL): escaped only if it is logged. */
static int add_malformed(struct session_list *l, char *id, size_t index, const char *reason, bool live) {
        struct malformed_entry *m = reserve_one(l->malformed, &l->malformed_cap, l->n_malformed, sizeof *m);

        if (!m)
                return -ENOMEM;
        l->malformed = m;
        l->malformed[l->n_malformed++] =
                (struct malformed_entry){ .raw_id = id, .index = index, .reason = reason, .live = live };
        return 0;
}

char *malformed_entry_id(const struct malformed_entry *m, char *buf, size_t n) {
        if (m->raw_id)
                return escape_bytes(m->raw_id, buf, n);
        snprintf(buf, n, "Sessions[%zu]", m->index);
        return buf;
}

/* The ids of an entry that has the documented shape: NULL when both may be
 * acted on, else why not. */
static const char *entry_id_problem(const struct session *s) {
        const char *why = gateway_id_problem(s->session_id, strlen(s->session_id));

        if (why)
                return why;
        why = gateway_id_problem(s->user_id, strlen(s->user_id));
        return why ? "UserId is not a usable id" : NULL;
}

static bool has_repeated_field(const cJSON *item) {
        static const char *const fields[] = {
                "SessionId",  "UserId",        "SessionStatus",      "IsSessionStarted",   "VirtualmanType",
                "CreateType", "VirtualmanKey", "AssetVirtualmanKey", "VirtualmanProjectId"
        };
        unsigned seen[ELEMENTSOF(fields)] = { 0 };
        const cJSON *f;

        cJSON_ArrayForEach(f, item) {
                for (size_t i = 0; f->string && i < ELEMENTSOF(fields); i++)
                        if (strcmp(f->string, fields[i]) == 0 && ++seen[i] > 1)
                                return true;
        }
        return false;
}

/* Why an optional string field makes its entry malformed. */
enum field_problem { FIELD_OK, FIELD_NOT_STRING, FIELD_NOT_USABLE };

/* An optional string field: absent, null or empty is NULL (the list does
 * not say: an empty project is no project anyone can protect or select);
 * another type, or a string no id may be, makes the entry malformed.
 * Borrowed from the parsed document (take_entry() copies it). */
static enum field_problem optional_id(const cJSON *item, const char *name, char **ret) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(item, name);

        *ret = NULL;
        if (!v || cJSON_IsNull(v))
                return FIELD_OK;
        if (!cJSON_IsString(v))
                return FIELD_NOT_STRING;
        if (gateway_id_problem(v->valuestring, strlen(v->valuestring)))
                return FIELD_NOT_USABLE;
        if (v->valuestring[0])
                *ret = v->valuestring;
        return FIELD_OK;
}

/* The five fields that say which project or asset a session belongs to
 * (see struct session): each may be missing, none may be of another type. */
static const char *parse_owner(const cJSON *item, struct session *s) {
        static const struct {
                const char *name, *not_string, *not_usable;
                size_t offset;
        } fields[] = {
                { "VirtualmanType", "VirtualmanType is not a string", "VirtualmanType is not a usable id",
                  offsetof(struct session, virtualman_type) },
                { "VirtualmanKey", "VirtualmanKey is not a string", "VirtualmanKey is not a usable id",
                  offsetof(struct session, virtualman_key) },
                { "AssetVirtualmanKey", "AssetVirtualmanKey is not a string",
                  "AssetVirtualmanKey is not a usable id", offsetof(struct session, asset_vk) },
                { "VirtualmanProjectId", "VirtualmanProjectId is not a string",
                  "VirtualmanProjectId is not a usable id", offsetof(struct session, project_id) },
        };
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(item, "CreateType");

        for (size_t i = 0; i < ELEMENTSOF(fields); i++) {
                enum field_problem why = optional_id(item, fields[i].name,
                                                     (char **) (void *) ((char *) s + fields[i].offset));

                if (why != FIELD_OK)
                        return why == FIELD_NOT_STRING ? fields[i].not_string : fields[i].not_usable;
        }
        s->create_type = -1;
        if (type && !cJSON_IsNull(type) &&
            (gateway_get_int(type, &s->create_type) < 0 || s->create_type < 0))
                return "CreateType is not an integer";
        return NULL;
}

/* Reads one entry of Sessions[]. Returns NULL, or why the entry does not
 * have the documented shape (static text). The strings of s are borrowed
 * from the parsed entry until take_entry() copies them. */
static const char *parse_session(const cJSON *item, struct session *s) {
        const cJSON *id, *user, *status;

        if (!cJSON_IsObject(item))
                return "the entry is not an object";
        /* cJSON reads the first of two equal keys, other JSON stacks the
         * last: a field given twice has no one meaning. */
        if (has_repeated_field(item))
                return "a field is given twice";

        id = cJSON_GetObjectItemCaseSensitive(item, "SessionId");
        user = cJSON_GetObjectItemCaseSensitive(item, "UserId");
        status = cJSON_GetObjectItemCaseSensitive(item, "SessionStatus");
        if (!cJSON_IsString(id) || !id->valuestring[0])
                return "SessionId is not a non-empty string";
        s->session_id = id->valuestring;
        if (scan_has_cut_marker(item))
                return "a field is nested more than 100 levels deep";
        if (!cJSON_IsString(user))
                return "UserId is not a string";
        s->user_id = user->valuestring;
        if (gateway_get_int(status, &s->status) < 0)
                return "SessionStatus is not an integer";
        if (gateway_get_tristate(cJSON_GetObjectItemCaseSensitive(item, "IsSessionStarted"), &s->started) <
            0)
                return "IsSessionStarted is not a boolean";
        return parse_owner(item, s);
}

struct dedup_key {
        const char *id;
        size_t index; /* into l->items; l->n + j for l->malformed[j] */
};

static int compare_dedup(const void *a, const void *b) {
        const struct dedup_key *x = a, *y = b;
        int c = strcmp(x->id, y->id);

        return c ? c : (x->index > y->index) - (x->index < y->index);
}

static bool same_string(const char *a, const char *b) {
        return a == b || (a && b && strcmp(a, b) == 0);
}

/* Identical entries, listed by the same call: a session two list calls
 * name (two projects, or a project and an asset) has no one owner. */
static bool same_entry(const struct session *a, const struct session *b) {
        return strcmp(a->user_id, b->user_id) == 0 && a->status == b->status && a->started == b->started &&
               a->create_type == b->create_type && same_string(a->virtualman_type, b->virtualman_type) &&
               same_string(a->virtualman_key, b->virtualman_key) && same_string(a->asset_vk, b->asset_vk) &&
               same_string(a->project_id, b->project_id) &&
               same_string(a->listed_project_id, b->listed_project_id) &&
               same_string(a->listed_asset_vk, b->listed_asset_vk);
}

/* A SessionId listed more than once: identical entries are reduced to the
 * first. Entries that disagree (another user, status or start flag: one of
 * them may be protected, or not due), or that sit beside a hostile entry
 * with the same SessionId, make the session one that is never acted on.
 * One sort of the ids, then one pass over each run of equal ids. */
static int drop_duplicates(struct session_list *l) {
        size_t n_keys = l->n + l->n_malformed, n_malformed = l->n_malformed, kept = 0;
        struct dedup_key *keys;
        bool *drop;
        int r = 0;

        if (n_keys < 2)
                return 0;
        keys = malloc(n_keys * sizeof *keys);
        drop = calloc(l->n ? l->n : 1, sizeof *drop);
        if (!keys || !drop) {
                free(keys);
                free(drop);
                return -ENOMEM;
        }
        for (size_t i = 0; i < l->n; i++)
                keys[i] = (struct dedup_key){ l->items[i].session_id, i };
        n_keys = l->n;
        for (size_t j = 0; j < n_malformed; j++)
                if (l->malformed[j].raw_id) /* an entry without a SessionId hides nothing */
                        keys[n_keys++] = (struct dedup_key){ l->malformed[j].raw_id, l->n + j };
        qsort(keys, n_keys, sizeof *keys, compare_dedup);
        for (size_t a = 0, b; a < n_keys && r >= 0; a = b) {
                struct session *first = NULL;
                bool conflict = false, hostile = false;

                for (b = a; b < n_keys && strcmp(keys[b].id, keys[a].id) == 0; b++) {
                        if (keys[b].index >= l->n) {
                                /* One hostile id listed again and again
                                 * holds one slot: it counts as live once. */
                                if (hostile)
                                        l->malformed[keys[b].index - l->n].live = false;
                                hostile = true;
                        } else if (!first)
                                first = &l->items[keys[b].index];
                        else if (!same_entry(first, &l->items[keys[b].index]))
                                conflict = true;
                }
                if (b - a < 2 || !first)
                        continue;
                for (size_t k = a; k < b; k++)
                        if (keys[k].index < l->n &&
                            (hostile || conflict || &l->items[keys[k].index] != first))
                                drop[keys[k].index] = true;
                if (hostile)
                        continue; /* already counted as malformed */
                if (conflict) {
                        /* The malformed entry takes the first item's id. */
                        r = add_malformed(l, first->session_id, 0,
                                          "listed more than once with conflicting fields",
                                          status_is_live(first->status));
                        if (r >= 0)
                                first->session_id = NULL;
                } else
                        l->n_duplicates += b - a - 1;
        }
        for (size_t i = 0; i < l->n; i++)
                if (!drop[i])
                        l->items[kept++] = l->items[i];
                else {
                        session_done(&l->items[i]);
                }
        l->n = kept;
        free(keys);
        free(drop);
        return r;
}

/* Replaces the strings s borrows from the parsed document with copies of
 * its own; on failure, s owns nothing. */
static int session_own_strings(struct session *s) {
        char **fields[] = SESSION_OWNED_STRINGS(s);

        for (size_t i = 0; i < ELEMENTSOF(fields); i++) {
                if (!*fields[i] || (*fields[i] = strdup(*fields[i])))
                        continue;
                /* The copies made so far are freed; none is borrowed any more. */
                for (size_t j = 0; j < ELEMENTSOF(fields); j++) {
                        if (j < i)
                                free(*fields[j]);
                        *fields[j] = NULL;
                }
                return -ENOMEM;
        }
        return 0;
}

/* Adds one entry of Sessions[] to the list, with strings of its own: the
 * parsed entry is freed at once, so a large list never exists as a whole
 * tree. An entry without the documented shape, or whose ids are hostile, is
 * skipped into l->malformed: never acted on, counted and reported by the
 * caller. The rest of the list is decided. */
static int take_entry(struct session_list *l, const cJSON *item) {
        struct session s = { 0 };
        const char *why = parse_session(item, &s);
        size_t index = l->n + l->n_malformed;
        char *raw = NULL;
        int r;

        if (!why)
                why = entry_id_problem(&s);
        if (why && !s.session_id && cJSON_IsObject(item)) {
                /* A field given twice: every SessionId it names is never
                 * acted on, nor is a valid entry beside it with the same. */
                const cJSON *f;
                bool any = false;

                cJSON_ArrayForEach(f, item) {
                        if (!f->string || strcmp(f->string, "SessionId") != 0 || !cJSON_IsString(f) ||
                            !f->valuestring[0])
                                continue;
                        if (!(raw = strdup(f->valuestring)))
                                return -ENOMEM;
                        r = add_malformed(l, raw, index, why, false);
                        if (r < 0) {
                                free(raw);
                                return r;
                        }
                        any = true;
                }
                if (any)
                        return 0;
        }
        if (!why) {
                struct session *items = reserve_one(l->items, &l->items_cap, l->n, sizeof *items);

                if (!items)
                        return -ENOMEM;
                l->items = items;
                if (session_own_strings(&s) < 0)
                        return -ENOMEM;
                l->items[l->n++] = s;
                return 0;
        }
        if (s.session_id && !(raw = strdup(s.session_id)))
                return -ENOMEM;
        r = add_malformed(l, raw, index, why, status_is_live(s.status));
        if (r < 0)
                free(raw);
        return r;
}

/* Payload.Sessions at body[at] ('['): each entry is parsed by cJSON on its
 * own and taken; then the array becomes "[]" padded with spaces, so that
 * the envelope parses small. */
static int take_entries_at(struct session_list *l, char *body, size_t len, size_t at,
                           struct gateway_error *err) {
        const char *end = body + len, *p = json_skip_space(body + at + 1, end);
        int r;

        if (p < end && *p == ']')
                goto blank;
        for (;;) {
                const char *after = NULL;
                cJSON *item = cJSON_ParseWithLengthOpts(p, (size_t) (end - p), &after, false);

                if (!item)
                        return gateway_fail(err, GATEWAY_BAD_RESPONSE, "response is not valid JSON");
                r = take_entry(l, item);
                cJSON_Delete(item);
                if (r < 0)
                        return r;
                p = json_skip_space(after, end);
                if (p < end && *p == ']')
                        break;
                if (p >= end || *p != ',')
                        return gateway_fail(err, GATEWAY_BAD_RESPONSE, "response is not valid JSON");
                p = json_skip_space(p + 1, end);
        }
blank:
        memset(body + at, ' ', (size_t) (p - (body + at)) + 1);
        memcpy(body + at, "[]", 2);
        return 0;
}

/* Parses a list reply that scan_json() has made safe for cJSON. */
static int parse_list(char *body, size_t len, const struct scan *sc, struct session_list **ret_list,
                      struct gateway_error *err) {
        struct session_list *l = NULL;
        cJSON *root = NULL, *payload, *sessions, *item;
        int r;

        if (sc->values > GATEWAY_LIST_MAX_VALUES)
                return gateway_fail(err, GATEWAY_BAD_RESPONSE,
                                    "the list has more than %d JSON values; refusing it unparsed",
                                    GATEWAY_LIST_MAX_VALUES);
        l = calloc(1, sizeof *l);
        if (!l)
                return -ENOMEM;
        if (sc->has_sessions) {
                r = take_entries_at(l, body, len, sc->sessions_at, err);
                if (r < 0)
                        goto out;
        }
        r = gateway_parse_envelope(body, len, &root, err);
        if (r < 0)
                goto out;
        payload = cJSON_GetObjectItemCaseSensitive(root, "Payload");
        if (!cJSON_IsObject(payload)) {
                r = gateway_fail(err, GATEWAY_BAD_RESPONSE, "response has no Payload object");
                goto out;
        }
        sessions = cJSON_GetObjectItemCaseSensitive(payload, "Sessions");
        if (json_key_repeats(payload, "Sessions")) {
                r = gateway_fail(err, GATEWAY_BAD_RESPONSE, "the response gives Payload.Sessions twice");
                goto out;
        }
        if (sessions && !cJSON_IsNull(sessions) && !cJSON_IsArray(sessions)) {
                r = gateway_fail(err, GATEWAY_BAD_RESPONSE, "Payload.Sessions is not a list");
                goto out;
        }
        /* Entries the scan could not place (keys written with escapes):
         * taken from the whole tree. cJSON arrays are linked lists: walk
         * them, never index them. */
        cJSON_ArrayForEach(item, sessions) {
                r = take_entry(l, item);
                if (r < 0)
                        goto out;
        }
        r = drop_duplicates(l);
        if (r < 0)
                goto out;
        *ret_list = l;
        l = NULL;
out:
        session_list_free(l);
        cJSON_Delete(root);
        return r;
}

int gateway_parse_list_in_place(char *body, size_t len, struct session_list **ret_list,
                                struct gateway_error *err) {
        struct scan sc;

        memset(err, 0, sizeof *err);
        scan_json(body, len, &sc);
        return parse_list(body, len, &sc, ret_list, err);
}

int gateway_parse_list(const char *body, size_t len, struct session_list **ret_list,
                       struct gateway_error *err) {
        char *copy = malloc(len + 1);
        int r;

        memset(err, 0, sizeof *err);
        if (!copy)
                return -ENOMEM;
        memcpy(copy, body, len);
        copy[len] = '\0';
        r = gateway_parse_list_in_place(copy, len, ret_list, err);
        free(copy);
        return r;
}

void session_list_free(struct session_list *l) {
        if (!l)
                return;
        for (size_t i = 0; i < l->n; i++) {
                session_done(&l->items[i]);
        }
        for (size_t i = 0; i < l->n_malformed; i++)
                free(l->malformed[i].raw_id);
        free(l->malformed);
        free(l->items);
        free(l);
}

int session_list_merge(struct session_list **lists, size_t n, struct session_list **ret) {
        struct session_list *m = calloc(1, sizeof *m);
        size_t items = 0, malformed = 0;
        int r = -ENOMEM;

        for (size_t i = 0; i < n; i++) {
                items += lists[i]->n;
                malformed += lists[i]->n_malformed;
        }
        if (!m || !(m->items = calloc(items ? items : 1, sizeof *m->items)) ||
            (malformed > 0 && !(m->malformed = calloc(malformed, sizeof *m->malformed))))
                goto out;
        m->items_cap = items ? items : 1;
        m->malformed_cap = malformed;
        for (size_t i = 0; i < n; i++) {
                if (lists[i]->n > 0)
                        memcpy(m->items + m->n, lists[i]->items, lists[i]->n * sizeof *m->items);
                m->n += lists[i]->n;
                m->n_duplicates += lists[i]->n_duplicates;
                if (lists[i]->n_malformed > 0)
                        memcpy(m->malformed + m->n_malformed, lists[i]->malformed,
                               lists[i]->n_malformed * sizeof *m->malformed);
                m->n_malformed += lists[i]->n_malformed;
                /* The merged list owns the strings now. */
                lists[i]->n = lists[i]->n_malformed = 0;
        }
        r = drop_duplicates(m);
        if (r < 0)
                goto out;
        *ret = m;
        m = NULL;
out:
        for (size_t i = 0; i < n; i++)
                session_list_free(lists[i]);
        session_list_free(m);
        return r;
}
