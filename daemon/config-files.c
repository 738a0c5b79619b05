/* The files a policy file names, told apart: the state and metrics files
 * are replaced while the daemon runs, so neither may be the policy file, a
 * token file, the daemon's copy of its running policy, or (the metrics
 * file) a state file or its lock. Paths are compared as the files they
 * name, through symbolic links, "." and "..". */
#include "config-internal.h"
#include "notify-queue.h"

#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* The file a path names, for comparing two paths: realpath() when the file
 * exists; a symbolic link that points nowhere yet is followed to where it
 * points (a later write goes there); else the real path of its directory
 * with the last component appended, else the path as written. NULL when
 * memory runs out. */
static char *normalize_path_at(const char *path, unsigned depth) {
        const char *slash = strrchr(path, '/'), *base = slash ? slash + 1 : path;
        char *r = realpath(path, NULL), *dir, *rdir;
        char target[PATH_MAX];
        ssize_t n;

        if (r || errno == ENOMEM)
                return r;
        n = readlink(path, target, sizeof target - 1);
        if (n > 0 && depth < 40) {
                char *next = NULL;

                target[n] = '\0';
                if (target[0] == '/' || !slash)
                        next = strdup(target);
                else if (asprintf(&next, "%.*s/%s", (int) (slash - path), path, target) < 0)
                        next = NULL;
                if (!next)
                        return NULL;
                r = normalize_path_at(next, depth + 1);
                free(next);
                return r;
        }
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

static char *normalize_path(const char *path) {
        return normalize_path_at(path, 0);
}

/* Whether paths a and b name the same file (see normalize_path). */
static bool same_file(struct yaml_reader *p, const char *a, const char *b) {
        char *na = normalize_path(a), *nb = normalize_path(b);
        struct stat sa, sb;
        /* Two names of one file (a hard link) are one file too. */
        bool same = na && nb &&
                    (strcmp(na, nb) == 0 || (stat(na, &sa) == 0 && stat(nb, &sb) == 0 &&
                                             sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino));

        if (!na || !nb)
                p->oom = true;
        free(na);
        free(nb);
        return same;
}

/* The key node of a top-level key, for its position; else the root. */
static yaml_node_t *top_key_node(struct yaml_reader *p, yaml_node_t *root, const char *name) {
        for (yaml_node_pair_t *pair = root->data.mapping.pairs.start; pair < root->data.mapping.pairs.top;
             pair++) {
                yaml_node_t *k = yaml_node(p, pair->key);
                const char *key = k ? yaml_scalar(k) : NULL;

                if (key && strcmp(key, name) == 0)
                        return k;
        }
        return root;
}

/* Whether path is named as the daemon's copy of its running policy, which
 * it writes in its state directory (preflight.h). */
static bool is_running_policy_name(const char *path) {
        const char *slash = strrchr(path, '/');

        return strcmp(slash ? slash + 1 : path, RUNNING_POLICY_NAME) == 0;
}

/* Whether path names state_file's lock file (beside the file, or beside
 * its target when it is a link). */
static bool is_lock_of(struct yaml_reader *p, const char *path, const char *state_file) {
        char *target = normalize_path(state_file), *lock = NULL;
        bool same = false;

        if (target && asprintf(&lock, "%s.lock", target) >= 0)
                same = same_file(p, path, lock);
        else
                p->oom = true;
        free(target);
        free(lock);
        return same;
}

/* A token file named in the file (an account's) that path would overwrite. */
static const char *token_file_at(struct yaml_reader *p, const struct config *c, const char *path) {
        for (size_t i = 0; i < c->n_accounts; i++)
                if (c->accounts[i]->gateway.accesstoken_file &&
                    same_file(p, path, c->accounts[i]->gateway.accesstoken_file))
                        return c->accounts[i]->gateway.accesstoken_file;
        return NULL;
}

/* One state file: index is its account's place in accounts:, or SIZE_MAX
 * for state_file itself; errors point at the state_file (metrics_file) key. */
static void check_state_file(struct yaml_reader *p, const struct config *c, const char *state, size_t index,
                             yaml_node_t *state_at, yaml_node_t *metrics_at) {
        const char *token;

        if (!state)
                return;
        if (same_file(p, state, c->path)) {
                if (index == SIZE_MAX)
                        yaml_error(p, state_at, "state_file: '%s' is the same file as the policy file",
                                   state);
                else
                        yaml_error(
                                p, state_at,
                                "state_file: the state file of accounts[%zu] (%s) is the same file as the policy file",
                                index, state);
        }
        if ((token = token_file_at(p, c, state)))
                yaml_error(p, state_at, "state_file: '%s' is the access token file %s", state, token);
        if (is_running_policy_name(state))
                yaml_error(
                        p, state_at,
                        "state_file: '%s' has the name of the daemon's copy of its running policy (" RUNNING_POLICY_NAME
                        ")",
                        state);
        if (!metrics_at)
                return;
        if (same_file(p, c->metrics_file, state)) {
                if (index == SIZE_MAX)
                        yaml_error(p, metrics_at, "metrics_file: '%s' is the same file as state_file",
                                   c->metrics_file);
                else
                        yaml_error(
                                p, metrics_at,
                                "metrics_file: '%s' is the same file as the state file of accounts[%zu] (%s)",
                                c->metrics_file, index, state);
        }
        if (is_lock_of(p, c->metrics_file, state))
                yaml_error(p, metrics_at, "metrics_file: '%s' is the lock file of the state file %s",
                           c->metrics_file, state);
}

/* notify: the queue file (made from the state file's name) is written
 * while the daemon runs, and the secret file must never be: neither may be
 * another file of the daemon's. Errors point at the notify (else
 * state_file) key. */
static void check_notify_files(struct yaml_reader *p, yaml_node_t *root, const struct config *c) {
        yaml_node_t *at = top_key_node(p, root, "notify");

        if (at == root)
                at = top_key_node(p, root, "state_file");
        for (size_t i = 0; i < c->n_accounts && !p->stop; i++) {
                const struct config *a = c->accounts[i];
                char *queue;
                const char *token, *secret = a->notify.secret_file;

                if (!a->notify.url || !a->state_file)
                        continue;
                queue = notify_queue_path(a->state_file);
                if (!queue) {
                        p->oom = true;
                        return;
                }
                if (same_file(p, queue, c->path) ||
                    (c->metrics_file && same_file(p, queue, c->metrics_file)) ||
                    (token = token_file_at(p, c, queue)) || (secret && same_file(p, queue, secret)))
                        yaml_error(
                                p, at,
                                "notify: the queue file %s (made from state_file) is the policy, metrics, access token or notify secret file; choose another state_file",
                                queue);
                if (secret && (same_file(p, secret, c->path) ||
                               (c->metrics_file && same_file(p, secret, c->metrics_file)) ||
                               same_file(p, secret, a->state_file)))
                        yaml_error(
                                p, at,
                                "notify.secret_file: '%s' is a file the daemon writes (state or metrics) or the policy file",
                                secret);
                free(queue);
        }
}

/* The state and metrics files are replaced while the daemon runs: neither
 * may be the policy file itself or a token file, nor may the metrics file be
 * a state file (of any account) or its lock. */
void config_check_distinct_files(struct yaml_reader *p, yaml_node_t *root, const struct config *c) {
        yaml_node_t *state_at, *metrics_at;
        const char *token;

        if (p->stop)
                return;
        state_at = top_key_node(p, root, "state_file");
        metrics_at = c->metrics_file ? top_key_node(p, root, "metrics_file") : NULL;
        if (metrics_at && same_file(p, c->metrics_file, c->path))
                yaml_error(p, metrics_at, "metrics_file: '%s' is the same file as the policy file",
                           c->metrics_file);
        if (metrics_at && is_running_policy_name(c->metrics_file))
                yaml_error(
                        p, metrics_at,
                        "metrics_file: '%s' has the name of the daemon's copy of its running policy (" RUNNING_POLICY_NAME
                        ")",
                        c->metrics_file);
        if (metrics_at && (token = token_file_at(p, c, c->metrics_file)))
                yaml_error(p, metrics_at, "metrics_file: '%s' is the access token file %s", c->metrics_file,
                           token);
        /* state_file itself (the single form's account's, and in the
         * accounts: form the name each account's file is made from), then
         * each named account's. */
        check_state_file(p, c, c->state_file, SIZE_MAX, state_at, metrics_at);
        for (size_t i = 0; i < c->n_accounts; i++)
                if (c->accounts[i]->account)
                        check_state_file(p, c, c->accounts[i]->state_file, i, state_at, metrics_at);
        check_notify_files(p, root, c);
}
