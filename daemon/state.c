#include "state.h"

#include <assert.h>
#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#include "fileio.h"
#include "json.h"
#include "strmap.h"
#include "util.h"

#define STATE_VERSION       2
#define STATE_MAX_SIZE      (256 * 1024 * 1024)
#define CLOCK_STEP_LIMIT_MS 2000
/* No session was first seen before 2020-01-01 (the IVH interactive API is
 * younger): an earlier time in the file is damage, not an age. */
#define STATE_EARLIEST_MS 1577836800000LL

struct state_entry {
        int64_t first_seen_mono_ms; /* when anchored */
        int64_t first_seen_wall_ms; /* when not: from a file of another boot */
        int64_t last_listed_mono_ms;
        uint64_t seen_generation; /* the last state_sync() that listed it */
        bool anchored;
};

struct state {
        char *path;
        struct strmap *entries; /* struct state_entry by session id */
        size_t n_unanchored;
        uint64_t generation;
        bool dirty;
        bool wall_trusted; /* the gateway accepted our clock since the last step */
        bool offset_known; /* offset_ms holds the last wall - boot-time offset seen */
        int64_t offset_ms;
        char boot_id[37]; /* "" when unknown: then no file is taken as this boot's */
        int lock_fd;
};

int state_new(const char *path, struct state **ret) {
        struct state *s = calloc(1, sizeof *s);

        assert(path && ret);
        if (!s)
                return -ENOMEM;
        s->lock_fd = -1;
        s->path = strdup(path);
        if (!s->path || strmap_new(&s->entries) < 0) {
                free(s->path);
                free(s);
                return -ENOMEM;
        }
        if (read_boot_id(s->boot_id) < 0)
                s->boot_id[0] = '\0';
        *ret = s;
        return 0;
}

void state_free(struct state *s) {
        if (!s)
                return;
        strmap_free(s->entries, free);
        if (s->lock_fd >= 0)
                close(s->lock_fd);
        free(s->path);
        free(s);
}

const char *state_boot_id(const struct state *s) {
        return s->boot_id;
}

void state_set_boot_id(struct state *s, const char *boot_id) {
        snprintf(s->boot_id, sizeof s->boot_id, "%s", boot_id);
}

int state_lock(struct state *s) {
        char target[PATH_MAX], path[PATH_MAX + 8];
        int fd, r;

        /* Beside the file itself, not beside a symbolic link to it: two
         * daemons reaching one file through different names must meet. */
        r = path_follow_link(s->path, target);
        if (r < 0)
                return r;
        if (snprintf(path, sizeof path, "%s.lock", target) >= (int) sizeof path)
                return -ENAMETOOLONG;
        fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOCTTY | O_NONBLOCK, 0600);
        if (fd < 0)
                return -errno;
        if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
                r = errno == EWOULDBLOCK ? -EBUSY : -errno;
                close(fd);
                return r;
        }
        if (s->lock_fd >= 0)
                close(s->lock_fd);
        s->lock_fd = fd;
        return 0;
}

/* Inserts a new entry; returns 1 if added, 0 if the id was there, <0 on ENOMEM. */
static int insert(struct strmap *m, const char *session_id, const struct state_entry *proto) {
        struct state_entry *e = malloc(sizeof *e);
        int r;

        if (!e)
                return -ENOMEM;
        *e = *proto;
        r = strmap_put(m, session_id, e);
        if (r < 0)
                free(e);
        return r == -EEXIST ? 0 : r < 0 ? r : 1;
}

static int parse_state(struct state *s, const char *data, size_t size, int64_t now_wall_ms,
                       int64_t now_mono_ms, char **ret_notice) {
        cJSON *root = json_parse_exact(data, size), *version, *sessions, *boot, *offset, *trusted, *saved,
              *it;
        bool same_boot = false, file_trusted = true;
        int64_t file_offset = 0, saved_wall = INT64_MAX - CLOCK_STEP_LIMIT_MS;
        struct strmap *tree = NULL;
        size_t n_unanchored = 0, dropped = 0;
        int r = -EBADMSG;

        if (!cJSON_IsObject(root))
                goto out;
        if (strmap_new(&tree) < 0) {
                r = -ENOMEM;
                goto out;
        }
        version = cJSON_GetObjectItemCaseSensitive(root, "version");
        sessions = cJSON_GetObjectItemCaseSensitive(root, "first_seen");
        if (!cJSON_IsNumber(version) ||
            (version->valuedouble != 1 && version->valuedouble != STATE_VERSION) ||
            !cJSON_IsObject(sessions))
                goto out;
        if (version->valuedouble == STATE_VERSION) {
                boot = cJSON_GetObjectItemCaseSensitive(root, "boot_id");
                offset = cJSON_GetObjectItemCaseSensitive(root, "offset_ms");
                trusted = cJSON_GetObjectItemCaseSensitive(root, "wall_trusted");
                saved = cJSON_GetObjectItemCaseSensitive(root, "saved_ms");
                if (!cJSON_IsString(boot) || !cJSON_IsNumber(offset) || !isfinite(offset->valuedouble) ||
                    fabs(offset->valuedouble) > 1e15 || !cJSON_IsBool(trusted) || !cJSON_IsNumber(saved) ||
                    !isfinite(saved->valuedouble) || saved->valuedouble < 0 || saved->valuedouble > 1e15)
                        goto out;
                file_offset = (int64_t) offset->valuedouble;
                saved_wall = (int64_t) saved->valuedouble;
                file_trusted = cJSON_IsTrue(trusted);
                same_boot = s->boot_id[0] && strcmp(boot->valuestring, s->boot_id) == 0;
        }
        /* Version 1 files have no boot id: they are read as another boot's,
         * and were written only after a list the gateway accepted. */
        cJSON_ArrayForEach(it, sessions) {
                double wall = it->valuedouble;
                struct state_entry e = { .last_listed_mono_ms = now_mono_ms };

                /* One bad entry makes the whole file suspect: a time before
                 * 2020, or after the file was written, cannot be true. */
                if (!cJSON_IsNumber(it) || !isfinite(wall) || wall < (double) STATE_EARLIEST_MS ||
                    wall > 1e15 || (int64_t) wall > saved_wall + CLOCK_STEP_LIMIT_MS || !it->string[0]) {
                        r = -EBADMSG;
                        goto out;
                }
                if (same_boot) {
                        e.anchored = true;
                        e.first_seen_mono_ms = (int64_t) wall - file_offset;
                        if (e.first_seen_mono_ms > now_mono_ms)
                                e.first_seen_mono_ms = now_mono_ms;
                } else if (file_trusted) {
                        e.first_seen_wall_ms = (int64_t) wall;
                } else {
                        dropped++;
                        continue;
                }
                r = insert(tree, it->string, &e);
                if (r < 0)
                        goto out;
                if (r > 0 && !e.anchored)
                        n_unanchored++;
        }
        strmap_swap(s->entries, tree); /* tree now holds the old entries, freed below */
        s->n_unanchored = n_unanchored;
        s->dirty = dropped > 0;
        s->offset_known = true;
        s->offset_ms = now_wall_ms - now_mono_ms;
        r = 0;
        if (dropped > 0 &&
            asprintf(
                    ret_notice,
                    "state file %s was written in another boot while the wall clock was unconfirmed; the ages of its %zu session(s) restart from zero",
                    s->path, dropped) < 0)
                *ret_notice = NULL;
out:
        strmap_free(tree, free);
        cJSON_Delete(root);
        return r;
}

/* Removes the temporary files that a write interrupted by a crash left
 * behind: ".#NAME.XXXXXX" only, never another file of the operator's. */
static void remove_stale_temporaries(const char *path) {
        char dirbuf[4096], basebuf[4096];
        const char *base;
        DIR *d;
        struct dirent *de;

        snprintf(dirbuf, sizeof dirbuf, "%s", path);
        snprintf(basebuf, sizeof basebuf, "%s", path);
        base = basename(basebuf);
        d = opendir(dirname(dirbuf));
        if (!d)
                return;
        while ((de = readdir(d)))
                if (is_atomic_temporary(de->d_name, base))
                        unlinkat(dirfd(d), de->d_name, 0);
        closedir(d);
}

/* state_load() with the warning as an allocated string. */
static int load(struct state *s, int64_t now_wall_ms, int64_t now_mono_ms, bool read_only,
                char **ret_warning) {
        char *data = NULL, aside[4096];
        size_t size = 0;
        int r;

        *ret_warning = NULL;
        s->offset_known = true;
        s->offset_ms = now_wall_ms - now_mono_ms;
        if (!read_only)
                remove_stale_temporaries(s->path);
        r = read_file_full(s->path, STATE_MAX_SIZE, &data, &size);
        if (r == -ENOENT)
                return 0;
        if (r < 0 && r != -EFBIG)
                return r;
        if (r == 0) {
                r = parse_state(s, data, size, now_wall_ms, now_mono_ms, ret_warning);
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
                r = asprintf(
                        ret_warning,
                        "state file %s is not valid and could not be set aside (%s); starting with an empty state, ages restart from zero",
                        s->path, strerror(errno));
        else
                r = asprintf(
                        ret_warning,
                        "state file %s is not valid; moved it to %s and started with an empty state, ages restart from zero",
                        s->path, aside);
        if (r < 0)
                *ret_warning = NULL;
        s->dirty = true;
        return 0;
}

int state_load(struct state *s, int64_t now_wall_ms, int64_t now_mono_ms, bool read_only,
               struct error *warning) {
        char *w = NULL;
        int r;

        assert(s && warning);
        r = load(s, now_wall_ms, now_mono_ms, read_only, &w);
        error_done(warning);
        (void) error_take(warning, r, w);
        return r;
}

static void anchor_one(const char *session_id, void *value, void *userdata) {
        struct state_entry *e = value;
        const int64_t *now = userdata; /* { wall, mono } */
        int64_t age;

        (void) session_id;
        if (e->anchored)
                return;
        /* A time in the future means a clock went back: count from now. */
        age = now[0] - e->first_seen_wall_ms;
        e->first_seen_mono_ms = now[1] - (age > 0 ? age : 0);
        e->anchored = true;
}

size_t state_anchor(struct state *s, int64_t now_wall_ms, int64_t now_mono_ms) {
        int64_t now[2] = { now_wall_ms, now_mono_ms };
        size_t n = s->n_unanchored;

        if (!s->wall_trusted)
                s->dirty = true; /* record that the clock is confirmed */
        s->wall_trusted = true;
        /* offset_ms is left to state_check_clock(): taking the current one
         * here would swallow a step that came since the last check. */
        if (n == 0)
                return 0;
        strmap_foreach(s->entries, anchor_one, now);
        s->n_unanchored = 0;
        s->dirty = true;
        return n;
}

int64_t state_check_clock(struct state *s, int64_t now_wall_ms, int64_t now_mono_ms) {
        int64_t offset = now_wall_ms - now_mono_ms, step;

        if (!s->offset_known) {
                s->offset_known = true;
                s->offset_ms = offset;
                return 0;
        }
        step = offset - s->offset_ms;
        s->offset_ms = offset; /* slow drift (NTP slewing) never adds up to a step */
        if (step >= -CLOCK_STEP_LIMIT_MS && step <= CLOCK_STEP_LIMIT_MS)
                return 0;
        s->wall_trusted = false;
        s->dirty = true;
        return step;
}

static uint64_t age_at(int64_t first_seen_mono_ms, int64_t now_mono_ms) {
        return now_mono_ms < first_seen_mono_ms ? 0 : (uint64_t) (now_mono_ms - first_seen_mono_ms);
}

static struct state_entry *lookup(const struct state *s, const char *session_id) {
        return strmap_get(s->entries, session_id);
}

bool state_first_seen(const struct state *s, const char *session_id, int64_t *ret_first_seen_mono_ms) {
        const struct state_entry *e = lookup(s, session_id);

        if (!e || !e->anchored)
                return false;
        if (ret_first_seen_mono_ms)
                *ret_first_seen_mono_ms = e->first_seen_mono_ms;
        return true;
}

uint64_t state_age_ms(const struct state *s, const char *session_id, int64_t now_mono_ms) {
        int64_t first;

        if (!state_first_seen(s, session_id, &first))
                return 0;
        return age_at(first, now_mono_ms);
}

struct sweep {
        uint64_t generation;
        int64_t forget_before_ms; /* last listed before this: forgotten */
        const char **stale;       /* the map's own keys, valid until removed */
        size_t n_stale, n_unlisted;
};

static void collect_stale(const char *session_id, void *value, void *userdata) {
        const struct state_entry *e = value;
        struct sweep *sw = userdata;

        if (e->seen_generation == sw->generation)
                return;
        sw->n_unlisted++;
        if (e->last_listed_mono_ms < sw->forget_before_ms)
                sw->stale[sw->n_stale++] = session_id;
}

int state_sync(struct state *s, const struct session_list *l, int64_t now_mono_ms, uint64_t grace_ms,
               uint64_t *ret_ages) {
        size_t marked = 0;

        /* Mark every listed session with this generation, adding new ones;
         * then sweep out the entries not listed for longer than the grace
         * period. In the steady state (nothing new, nothing gone) this
         * allocates nothing. */
        s->generation++;
        for (size_t i = 0; i < l->n; i++) {
                struct state_entry *e = lookup(s, l->items[i].session_id);

                if (e && !e->anchored) {
                        /* Not anchored yet (state_anchor() was not called):
                         * no age can be given, so it counts from now. */
                        e->anchored = true;
                        e->first_seen_mono_ms = now_mono_ms;
                        s->n_unanchored--;
                        s->dirty = true;
                }
                if (e) {
                        if (e->seen_generation != s->generation)
                                marked++;
                        e->seen_generation = s->generation;
                        e->last_listed_mono_ms = now_mono_ms;
                        if (ret_ages)
                                ret_ages[i] = age_at(e->first_seen_mono_ms, now_mono_ms);
                        continue;
                }
                struct state_entry proto = {
                        .first_seen_mono_ms = now_mono_ms,
                        .last_listed_mono_ms = now_mono_ms,
                        .seen_generation = s->generation,
                        .anchored = true,
                };
                int r = insert(s->entries, l->items[i].session_id, &proto);
                if (r < 0)
                        return r; /* the rest is recorded next cycle; nothing is swept */
                marked++;
                s->dirty = true;
                if (ret_ages)
                        ret_ages[i] = 0;
        }
        if (strmap_size(s->entries) > marked) {
                /* Some entries were not listed: collect those past their grace, then delete. */
                struct sweep sw = {
                        .generation = s->generation,
                        .forget_before_ms = now_mono_ms - (int64_t) grace_ms,
                        .stale = malloc(strmap_size(s->entries) * sizeof *sw.stale),
                };

                if (!sw.stale)
                        return -ENOMEM;
                strmap_foreach(s->entries, collect_stale, &sw);
                for (size_t i = 0; i < sw.n_stale; i++) {
                        struct state_entry *e = strmap_remove(s->entries, sw.stale[i]);

                        if (!e->anchored)
                                s->n_unanchored--;
                        free(e);
                }
                if (sw.n_stale > 0)
                        s->dirty = true;
                free(sw.stale);
        }
        return 0;
}

size_t state_size(const struct state *s) {
        return strmap_size(s->entries);
}

bool state_dirty(const struct state *s) {
        return s->dirty;
}

struct save {
        cJSON *obj;
        int64_t offset_ms;
        bool oom;
};

static void save_one(const char *session_id, void *value, void *userdata) {
        const struct state_entry *e = value;
        struct save *sv = userdata;
        cJSON *n;

        /* The key is the entry's own id, not a copy (the "CS" form: cJSON
         * does not free it): a state of many long ids is not held twice
         * while it is written. */
        n = cJSON_CreateNumber((double) (e->first_seen_mono_ms + sv->offset_ms));
        if (!n || !cJSON_AddItemToObjectCS(sv->obj, session_id, n)) {
                cJSON_Delete(n);
                sv->oom = true;
        }
}

int state_save(struct state *s, int64_t now_wall_ms, int64_t now_mono_ms) {
        struct save sv = { .offset_ms = now_wall_ms - now_mono_ms };
        cJSON *root;
        char *text;
        int r;

        if (!s->dirty || s->n_unanchored > 0)
                return 0;
        root = cJSON_CreateObject();
        if (!root || !cJSON_AddNumberToObject(root, "version", STATE_VERSION) ||
            !cJSON_AddStringToObject(root, "boot_id", s->boot_id) ||
            !cJSON_AddNumberToObject(root, "offset_ms", (double) sv.offset_ms) ||
            !cJSON_AddBoolToObject(root, "wall_trusted", s->wall_trusted) ||
            !cJSON_AddNumberToObject(root, "saved_ms", (double) now_wall_ms) ||
            !(sv.obj = cJSON_AddObjectToObject(root, "first_seen"))) {
                cJSON_Delete(root);
                return -ENOMEM;
        }
        strmap_foreach(s->entries, save_one, &sv);
        text = sv.oom ? NULL : cJSON_PrintUnformatted(root);
        cJSON_Delete(root);
        if (!text)
                return -ENOMEM;
        r = write_file_atomic(s->path, text, strlen(text), 0600);
        free(text);
        if (r >= 0)
                s->dirty = false;
        return r;
}
