#include "state.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <math.h>
#include <search.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util.h"

#define STATE_VERSION  1
#define STATE_MAX_SIZE (256 * 1024 * 1024)

struct state_entry {
        char *session_id;
        int64_t first_seen_mono_ms;
        uint64_t seen_generation; /* the last state_sync() that listed it */
};

struct state {
        char *path;
        void *root; /* tsearch tree of struct state_entry, keyed by session_id */
        size_t n;
        uint64_t generation;
        bool dirty;
};

static int compare_entry(const void *a, const void *b) {
        return strcmp(((const struct state_entry *) a)->session_id,
                      ((const struct state_entry *) b)->session_id);
}

static void entry_free(void *p) {
        struct state_entry *e = p;

        free(e->session_id);
        free(e);
}

int state_new(const char *path, struct state **ret) {
        struct state *s = calloc(1, sizeof *s);

        if (!s)
                return -ENOMEM;
        s->path = strdup(path);
        if (!s->path) {
                free(s);
                return -ENOMEM;
        }
        *ret = s;
        return 0;
}

void state_free(struct state *s) {
        if (!s)
                return;
        tdestroy(s->root, entry_free);
        free(s->path);
        free(s);
}

/* Inserts a new entry; returns 1 if added, 0 if the id was there, <0 on ENOMEM. */
static int insert(void **root, const char *id, int64_t first_seen_mono_ms, uint64_t generation) {
        struct state_entry *e = calloc(1, sizeof *e), **found;

        if (!e)
                return -ENOMEM;
        e->session_id = strdup(id);
        e->first_seen_mono_ms = first_seen_mono_ms;
        e->seen_generation = generation;
        if (!e->session_id) {
                free(e);
                return -ENOMEM;
        }
        found = tsearch(e, root, compare_entry);
        if (!found) {
                entry_free(e);
                return -ENOMEM;
        }
        if (*found != e) {
                entry_free(e);
                return 0;
        }
        return 1;
}

static int parse_state(struct state *s, const char *data, size_t size, int64_t now_wall_ms,
                       int64_t now_mono_ms) {
        cJSON *root = json_parse_exact(data, size), *version, *sessions, *it;
        void *tree = NULL;
        size_t n = 0;
        int r = -EBADMSG;

        if (!cJSON_IsObject(root))
                goto out;
        version = cJSON_GetObjectItemCaseSensitive(root, "version");
        sessions = cJSON_GetObjectItemCaseSensitive(root, "first_seen");
        if (!cJSON_IsNumber(version) || version->valuedouble != STATE_VERSION || !cJSON_IsObject(sessions))
                goto out;
        cJSON_ArrayForEach(it, sessions) {
                double wall = it->valuedouble;
                int64_t age;

                if (!cJSON_IsNumber(it) || !isfinite(wall) || wall < 0 || wall > 1e15 || !it->string[0])
                        goto out;
                /* A time in the future means the clock went back: count from now. */
                age = now_wall_ms - (int64_t) wall;
                if (age < 0)
                        age = 0;
                r = insert(&tree, it->string, now_mono_ms - age, 0);
                if (r < 0)
                        goto out;
                n += (size_t) r;
        }
        tdestroy(s->root, entry_free);
        s->root = tree;
        s->n = n;
        s->dirty = false;
        tree = NULL;
        r = 0;
out:
        tdestroy(tree, entry_free);
        cJSON_Delete(root);
        return r;
}

/* Removes PATH.XXXXXX files that a write interrupted by a crash left behind. */
static void remove_stale_temporaries(const char *path) {
        char dirbuf[4096], basebuf[4096];
        const char *base;
        size_t base_len;
        DIR *d;
        struct dirent *de;

        snprintf(dirbuf, sizeof dirbuf, "%s", path);
        snprintf(basebuf, sizeof basebuf, "%s", path);
        base = basename(basebuf);
        base_len = strlen(base);
        d = opendir(dirname(dirbuf));
        if (!d)
                return;
        while ((de = readdir(d))) {
                const char *suffix = de->d_name + base_len;

                if (strncmp(de->d_name, base, base_len) != 0 || suffix[0] != '.' || strlen(suffix) != 7 ||
                    strspn(suffix + 1, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") !=
                            6)
                        continue;
                unlinkat(dirfd(d), de->d_name, 0);
        }
        closedir(d);
}

int state_load(struct state *s, int64_t now_wall_ms, int64_t now_mono_ms, bool read_only,
               char **ret_warning) {
        char *data = NULL, aside[4096];
        size_t size = 0;
        int r;

        *ret_warning = NULL;
        if (!read_only)
                remove_stale_temporaries(s->path);
        r = read_file_full(s->path, STATE_MAX_SIZE, &data, &size);
        if (r == -ENOENT)
                return 0;
        if (r < 0 && r != -EFBIG)
                return r;
        if (r == 0) {
                r = parse_state(s, data, size, now_wall_ms, now_mono_ms);
                free(data);
                if (r != -EBADMSG)
                        return r;
        }

        if (read_only) {
                if (asprintf(ret_warning, "state file %s is not valid; ignoring it, all ages count from now",
                             s->path) < 0)
                        *ret_warning = NULL;
                return 0;
        }
        snprintf(aside, sizeof aside, "%s.corrupt-%lld", s->path, (long long) (now_wall_ms / 1000));
        if (rename(s->path, aside) < 0)
                r = asprintf(ret_warning,
                             "state file %s is not valid and could not be set aside (%s); "
                             "starting with an empty state, ages restart from zero",
                             s->path, strerror(errno));
        else
                r = asprintf(ret_warning,
                             "state file %s is not valid; moved it to %s and started with "
                             "an empty state, ages restart from zero",
                             s->path, aside);
        if (r < 0)
                *ret_warning = NULL;
        s->dirty = true;
        return 0;
}

static uint64_t age_at(int64_t first_seen_mono_ms, int64_t now_mono_ms) {
        return now_mono_ms < first_seen_mono_ms ? 0 : (uint64_t) (now_mono_ms - first_seen_mono_ms);
}

bool state_first_seen(const struct state *s, const char *session_id, int64_t *ret_first_seen_mono_ms) {
        struct state_entry key = { .session_id = (char *) (uintptr_t) session_id }, **found;

        found = tfind(&key, &s->root, compare_entry);
        if (found && ret_first_seen_mono_ms)
                *ret_first_seen_mono_ms = (*found)->first_seen_mono_ms;
        return found != NULL;
}

uint64_t state_age_ms(const struct state *s, const char *session_id, int64_t now_mono_ms) {
        int64_t first;

        if (!state_first_seen(s, session_id, &first))
                return 0;
        return age_at(first, now_mono_ms);
}

/* twalk() takes no user data; state code is single-threaded, so a file-local
 * struct carries the context of one walk at a time. */
static struct {
        uint64_t generation;
        struct state_entry **stale;
        size_t n_stale;
} sweep_ctx;

static void collect_stale(const void *node, VISIT which, int depth) {
        struct state_entry *e = *(struct state_entry *const *) node;

        (void) depth;
        if ((which == postorder || which == leaf) && e->seen_generation != sweep_ctx.generation)
                sweep_ctx.stale[sweep_ctx.n_stale++] = e;
}

int state_sync(struct state *s, const struct session_list *l, int64_t now_mono_ms, uint64_t *ret_ages) {
        size_t marked = 0;

        /* Mark every listed session with this generation, adding new ones;
         * then sweep out the entries the list no longer names. In the steady
         * state (nothing new, nothing gone) this allocates nothing. */
        s->generation++;
        for (size_t i = 0; i < l->n; i++) {
                struct state_entry key = { .session_id = l->items[i].session_id }, **found;

                found = tfind(&key, &s->root, compare_entry);
                if (found) {
                        if ((*found)->seen_generation != s->generation)
                                marked++;
                        (*found)->seen_generation = s->generation;
                        if (ret_ages)
                                ret_ages[i] = age_at((*found)->first_seen_mono_ms, now_mono_ms);
                        continue;
                }
                int r = insert(&s->root, l->items[i].session_id, now_mono_ms, s->generation);
                if (r < 0)
                        return r; /* the rest is recorded next cycle; nothing is swept */
                s->n++;
                marked++;
                s->dirty = true;
                if (ret_ages)
                        ret_ages[i] = 0;
        }
        if (s->n > marked) {
                /* Some entries were not listed: collect them, then delete. */
                sweep_ctx.generation = s->generation;
                sweep_ctx.n_stale = 0;
                sweep_ctx.stale = malloc(s->n * sizeof *sweep_ctx.stale);
                if (!sweep_ctx.stale)
                        return -ENOMEM;
                twalk(s->root, collect_stale);
                for (size_t i = 0; i < sweep_ctx.n_stale; i++) {
                        struct state_entry *e = sweep_ctx.stale[i];

                        tdelete(e, &s->root, compare_entry);
                        entry_free(e);
                }
                s->n -= sweep_ctx.n_stale;
                if (sweep_ctx.n_stale > 0)
                        s->dirty = true;
                free(sweep_ctx.stale);
                sweep_ctx.stale = NULL;
        }
        return 0;
}

size_t state_size(const struct state *s) {
        return s->n;
}

bool state_dirty(const struct state *s) {
        return s->dirty;
}

/* twalk() takes no user data; the save is single-threaded, so a file-local
 * pointer carries the context for the duration of one walk. */
static struct {
        cJSON *obj;
        int64_t offset_ms;
        bool oom;
} save_ctx;

static void save_one(const void *node, VISIT which, int depth) {
        const struct state_entry *e = *(struct state_entry *const *) node;

        (void) depth;
        if (which != postorder && which != leaf)
                return;
        if (!cJSON_AddNumberToObject(save_ctx.obj, e->session_id,
                                     (double) (e->first_seen_mono_ms + save_ctx.offset_ms)))
                save_ctx.oom = true;
}

int state_save(struct state *s, int64_t now_wall_ms, int64_t now_mono_ms) {
        cJSON *root;
        char *text;
        int r;

        if (!s->dirty)
                return 0;
        root = cJSON_CreateObject();
        if (!root || !cJSON_AddNumberToObject(root, "version", STATE_VERSION) ||
            !(save_ctx.obj = cJSON_AddObjectToObject(root, "first_seen"))) {
                cJSON_Delete(root);
                return -ENOMEM;
        }
        save_ctx.offset_ms = now_wall_ms - now_mono_ms;
        save_ctx.oom = false;
        twalk(s->root, save_one);
        text = save_ctx.oom ? NULL : cJSON_PrintUnformatted(root);
        cJSON_Delete(root);
        save_ctx.obj = NULL;
        if (!text)
                return -ENOMEM;
        r = write_file_atomic(s->path, text, strlen(text), 0600);
        free(text);
        if (r >= 0)
                s->dirty = false;
        return r;
}
