#include "preflight.h"

#include <assert.h>
#include <errno.h>
#include <libgen.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <linux/magic.h>
#include <sys/vfs.h>
#include <unistd.h>

#include "credentials.h"
#include "fileio.h"
#include "util.h"

/* The directories made when the service starts: the shipped unit's
 * StateDirectory=, and the metrics directory of the node_exporter recipe
 * (examples/node-exporter/metrics.conf). */
#define UNIT_STATE_DIRECTORY   "/var/lib/ivh-reclaimd"
#define UNIT_METRICS_DIRECTORY "/run/ivh-reclaimd-metrics"

struct report {
        FILE *problems, *notes;
        char *problems_buf, *notes_buf;
        size_t problems_len, notes_len;
        int n;
        /* Run by the unit's ExecReload= ($MAINPID, $INVOCATION_ID): the
         * daemon runs with its files; only the file itself can fail the
         * reload, so that a reload (an emergency protect rule, say) is never
         * refused for a metrics directory. */
        bool reload;
};

/* One line of the report: a problem (counted, fails the check) or a note. */
static void report(struct report *rep, bool is_problem, const char *fmt, va_list ap)
        __attribute__((format(printf, 3, 0)));
static void report(struct report *rep, bool is_problem, const char *fmt, va_list ap) {
        FILE *f = is_problem ? rep->problems : rep->notes;

        vfprintf(f, fmt, ap);
        fputc('\n', f);
        rep->n += is_problem;
}

static void problem(struct report *rep, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void problem(struct report *rep, const char *fmt, ...) {
        va_list ap;

        va_start(ap, fmt);
        report(rep, true, fmt, ap);
        va_end(ap);
}

static void note(struct report *rep, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void note(struct report *rep, const char *fmt, ...) {
        va_list ap;

        va_start(ap, fmt);
        report(rep, false, fmt, ap);
        va_end(ap);
}

/* A problem by hand; a warning, which fails nothing, in a reload. */
static void dir_issue(struct report *rep, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void dir_issue(struct report *rep, const char *fmt, ...) {
        va_list ap;

        if (rep->reload)
                fputs("warning: ", rep->notes);
        va_start(ap, fmt);
        report(rep, !rep->reload, fmt, ap);
        va_end(ap);
}

/* "account NAME: " for a named account, "" for the single form. */
static const char *prefix(const struct config *a, char *buf, size_t n) {
        if (!a->account)
                return "";
        snprintf(buf, n, "account %s: ", a->account);
        return buf;
}

static void check_appkey(struct report *rep, const struct config *top, const struct config *a) {
        char pre[160];

        if (!a->gateway.appkey || strcasecmp(a->gateway.appkey, CONFIG_SAMPLE_APPKEY) != 0)
                return;
        if (a->gateway.appkey_line > 0)
                problem(rep,
                        "%s:%u:%u: %sgateway.appkey is the sample appkey from Tencent's documentation; set your account's own appkey",
                        top->path, a->gateway.appkey_line, a->gateway.appkey_column,
                        prefix(a, pre, sizeof pre));
        else
                problem(rep, "%s: %sgateway.appkey is the sample appkey from Tencent's documentation",
                        top->path, prefix(a, pre, sizeof pre));
}

/* The file the shipped unit's LoadCredential= names: beside the policy file,
 * named as the credential. */
static char *unit_credential_path(const struct config *top, const struct config *a) {
        char *copy = strdup(top->path), *r = NULL, name[128];

        if (!copy)
                return NULL;
        credentials_name(a->account, name, sizeof name);
        if (asprintf(&r, "%s/%s", dirname(copy), name) < 0)
                r = NULL;
        free(copy);
        return r;
}

/* The value of the unit's SetCredential=accesstoken: line, handed over
 * when LoadCredential= finds no file (it cannot be a token: it has
 * spaces). An empty credential counts too. */
#define UNIT_NO_TOKEN "no token file"

static bool is_unit_default(const char *path) {
        char buf[sizeof UNIT_NO_TOKEN + 1] = "";
        struct stat st;
        size_t n;
        FILE *f;

        if (stat(path, &st) < 0 || !S_ISREG(st.st_mode) || (size_t) st.st_size > strlen(UNIT_NO_TOKEN) + 1)
                return false;
        if (st.st_size == 0)
                return true;
        f = fopen(path, "re");
        if (!f)
                return false;
        n = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[n] = '\0';
        buf[strcspn(buf, "\n")] = '\0';
        return strcmp(buf, UNIT_NO_TOKEN) == 0;
}

char *preflight_unit_credential_path(const struct config *a) {
        return unit_credential_path(a, a);
}

int preflight_unit_credential(const struct config *a, struct error *err) {
        const char *dir = getenv("CREDENTIALS_DIRECTORY");
        char name[128], *copy = NULL, *source = NULL;
        struct stat st;
        int r = 0;

        if (!dir || !*dir || a->gateway.accesstoken_file)
                return 0;
        credentials_name(a->account, name, sizeof name);
        if (asprintf(&copy, "%s/%s", dir, name) < 0 || !(source = unit_credential_path(a, a))) {
                r = -ENOMEM;
                goto out;
        }
        if (is_unit_default(copy)) {
                /* The unit's SetCredential= default: LoadCredential= found
                 * nothing to hand over. */
                (void) error_set(
                        err, 0,
                        "no access token%s%s: %s does not exist, so the unit hands the service no token as its credential '%s'; install it with 'install -m 0600 /dev/stdin %s' (paste the token, then Ctrl-D) and start the service again",
                        a->account ? " for account " : "", a->account ? a->account : "", source, name,
                        source);
                r = -ENOKEY;
        } else if (stat(source, &st) == 0 && (st.st_mode & 077)) {
                /* systemd's copy is private; the file it copied is not. */
                (void) error_set(
                        err, 0,
                        "access token file %s gives its group or others access (mode %04o); refusing it: run 'chmod 0600 %s' (systemd hands the service a private copy, but the file itself can be read)",
                        source, (unsigned) (st.st_mode & 07777), source);
                r = -EPERM;
        }
out:
        free(copy);
        free(source);
        return r;
}

static bool in_credentials_directory(const char *path) {
        const char *dir = getenv("CREDENTIALS_DIRECTORY");
        size_t n = dir ? strlen(dir) : 0;

        return n > 0 && strncmp(path, dir, n) == 0 && path[n] == '/';
}

static void check_secret_file(struct report *rep, const struct config *a, const char *path,
                              const char *what) {
        char pre[160], *copy = strdup(path);
        struct stat st;

        /* Whoever may replace the file may hand the daemon another token. */
        if (copy && stat(dirname(copy), &st) == 0 && (st.st_mode & S_IWOTH) && !(st.st_mode & S_ISVTX))
                problem(rep, "%s%s file %s is in a directory that anyone may write",
                        prefix(a, pre, sizeof pre), what, path);
        free(copy);

        if (stat(path, &st) < 0) {
                problem(rep, "%s%s file %s: %s", prefix(a, pre, sizeof pre), what, path, strerror(errno));
                return;
        }
        if (st.st_mode & 077)
                problem(rep,
                        "%s%s file %s gives its group or others access (mode %04o); run 'chmod 0600 %s'",
                        prefix(a, pre, sizeof pre), what, path, (unsigned) (st.st_mode & 07777), path);
        /* A systemd credential belongs to the service's user by design. */
        if (st.st_uid != 0 && st.st_uid != geteuid() && !in_credentials_directory(path))
                problem(rep, "%s%s file %s belongs to uid %u, neither root nor this user (uid %u)",
                        prefix(a, pre, sizeof pre), what, path, (unsigned) st.st_uid, (unsigned) geteuid());
}

/* systemd 252 runs the unit's ExecReload= in a namespace where the
 * service's credentials are not visible, though $CREDENTIALS_DIRECTORY is
 * set. */
static bool credentials_hidden(const struct report *rep) {
        const char *dir = getenv("CREDENTIALS_DIRECTORY");
        struct stat st;

        return rep->reload && dir && *dir && stat(dir, &st) < 0;
}

static int check_token(struct report *rep, const struct config *top, const struct config *a) {
        struct credentials *creds = NULL;
        struct error err = { 0 };
        char pre[160];
        int r;

        if (!a->gateway.accesstoken_file && credentials_hidden(rep)) {
                note(rep,
                     "%stoken: not checked: %s cannot be read by this reload command; the daemon keeps the credential it was started with (a reload cannot change it)",
                     prefix(a, pre, sizeof pre), getenv("CREDENTIALS_DIRECTORY"));
                return 0;
        }
        r = credentials_load(&a->gateway, NULL, a->account, &creds, &err);
        if (r == -ENOKEY && !getenv("CREDENTIALS_DIRECTORY")) {
                /* Run by hand: the unit will hand over the file LoadCredential= names. */
                struct gateway_config g = a->gateway;
                char *path = unit_credential_path(top, a);

                if (!path) {
                        error_done(&err);
                        return -ENOMEM;
                }
                if (access(path, F_OK) == 0) {
                        error_done(&err);
                        g.accesstoken_file = path;
                        r = credentials_load(&g, NULL, a->account, &creds, &err);
                        if (r >= 0)
                                note(rep,
                                     "%stoken: %s, which the shipped unit hands over as a credential (LoadCredential=)",
                                     prefix(a, pre, sizeof pre), path);
                } else {
                        char *m = NULL;

                        if (asprintf(&m, "%s; nor is there %s, which the shipped unit would load",
                                     error_message(&err), path) >= 0)
                                (void) error_take(&err, 0, m);
                }
                free(path);
        }
        if (r == -ENOMEM) {
                error_done(&err);
                return r;
        }
        if (r < 0)
                problem(rep, "%s%s", prefix(a, pre, sizeof pre), error_message(&err));
        else if (creds->path)
                check_secret_file(rep, a, creds->path, "access token");
        if (r >= 0 && a->gateway.accesstoken_file && !getenv("CREDENTIALS_DIRECTORY") && geteuid() == 0)
                note(rep,
                     "%snote: under the shipped unit the service runs as a dynamic user, which cannot read %s; leave accesstoken_file unset there and use LoadCredential=",
                     prefix(a, pre, sizeof pre), a->gateway.accesstoken_file);
        error_done(&err);
        credentials_free(creds);
        return 0;
}

/* notify: (format json) needs its secret, in a file only its owner reads;
 * its ca_file must be readable. */
static int check_notify(struct report *rep, const struct config *a, struct credentials **env_cache) {
        struct credentials *secret = NULL;
        struct error err = { 0 };
        char pre[160];
        int r;

        if (!a->notify.url)
                return 0;
        if (a->notify.ca_file && !rep->reload && access(a->notify.ca_file, R_OK) < 0)
                problem(rep, "%snotify.ca_file: %s: %s", prefix(a, pre, sizeof pre), a->notify.ca_file,
                        strerror(errno));
        if (strcmp(a->notify.format, "json") != 0)
                return 0;
        if (!a->notify.secret_file && credentials_hidden(rep)) {
                note(rep,
                     "%snotify secret: not checked: %s cannot be read by this reload command; the daemon checks it when it reloads",
                     prefix(a, pre, sizeof pre), getenv("CREDENTIALS_DIRECTORY"));
                return 0;
        }
        r = credentials_load_notify_secret(&a->notify, env_cache, &secret, &err);
        if (r == -ENOMEM) {
                error_done(&err);
                return r;
        }
        if (r < 0)
                problem(rep, "%s%s", prefix(a, pre, sizeof pre), error_message(&err));
        else if (secret->path)
                check_secret_file(rep, a, secret->path, "notify secret");
        if (r >= 0 && a->notify.secret_file && !getenv("CREDENTIALS_DIRECTORY") && geteuid() == 0)
                note(rep,
                     "%snote: under the shipped unit the service runs as a dynamic user, which cannot read %s; leave notify.secret_file unset there and install %s, which the unit hands over (LoadCredential=)",
                     prefix(a, pre, sizeof pre), a->notify.secret_file, NOTIFY_SECRET_UNIT_FILE);
        error_done(&err);
        credentials_free(secret);
        return 0;
}

/* Whether the shipped unit lets the service write in dir. */
static bool unit_writable(const char *dir) {
        return strcmp(dir, UNIT_STATE_DIRECTORY) == 0 || strcmp(dir, UNIT_METRICS_DIRECTORY) == 0;
}

/* The directory of file, which the daemon writes files into. */
static int check_dir_of(struct report *rep, const char *key, const char *file) {
        char *copy = strdup(file), *dir, *buf, *up;
        struct statfs fs;
        struct stat st;

        if (!copy)
                return -ENOMEM;
        dir = dirname(copy);
        if (stat(dir, &st) == 0) {
                if (!S_ISDIR(st.st_mode))
                        dir_issue(rep, "%s: %s is not a directory", key, dir);
                else if (statfs(dir, &fs) == 0 &&
                         (fs.f_type == PROC_SUPER_MAGIC || fs.f_type == SYSFS_MAGIC))
                        dir_issue(rep, "%s: %s is in /proc or /sys", key, dir);
                else if (access(dir, W_OK | X_OK) < 0)
                        dir_issue(rep, "%s: cannot write in %s: %s (running as uid %u)", key, dir,
                                  strerror(errno), (unsigned) geteuid());
                else if (!rep->reload && !getenv("INVOCATION_ID") && !unit_writable(dir))
                        note(rep,
                             "%s: note: the shipped unit (ProtectSystem=strict) can write only %s and what a drop-in adds with ReadWritePaths=, not %s",
                             key, UNIT_STATE_DIRECTORY, dir);
                free(copy);
                return 0;
        }
        if (errno != ENOENT) {
                dir_issue(rep, "%s: %s: %s", key, dir, strerror(errno));
                free(copy);
                return 0;
        }
        /* Not there yet. The service's start makes the state directory, and
         * the node_exporter recipe the metrics one; nothing makes any other. */
        if (!unit_writable(dir)) {
                dir_issue(rep, "%s: directory %s does not exist", key, dir);
                free(copy);
                return 0;
        }
        up = buf = strdup(dir);
        if (!buf) {
                free(copy);
                return -ENOMEM;
        }
        while (strcmp(up, "/") != 0 && strcmp(up, ".") != 0 && stat(up, &st) < 0 && errno == ENOENT)
                up = dirname(up);
        if (access(up, W_OK | X_OK) < 0)
                dir_issue(rep, "%s: %s does not exist, and cannot be made in %s: %s", key, dir, up,
                          strerror(errno));
        else
                note(rep, "%s: %s does not exist yet; the service makes it when it starts", key, dir);
        free(buf);
        free(copy);
        return 0;
}

/* ha: the TLS files must be readable (by hand; a reload command may not see
 * the service's credentials, where they usually are). */
static void check_ha_files(struct report *rep, const struct config *c) {
        const char *const files[][2] = { { "ca_file", c->ha.ca_file },
                                         { "cert_file", c->ha.cert_file },
                                         { "key_file", c->ha.key_file } };

        if (!c->ha.enabled || rep->reload)
                return;
        for (size_t i = 0; i < ELEMENTSOF(files); i++)
                if (files[i][1] && access(files[i][1], R_OK) < 0)
                        problem(rep, "%s: ha.%s: %s: %s", c->path, files[i][0], files[i][1],
                                strerror(errno));
}

/* A state_file that exists must be a regular file (the daemon refuses
 * anything else at start). */
static void check_state_file(struct report *rep, const char *path) {
        struct stat st;

        if (stat(path, &st) == 0 && !S_ISREG(st.st_mode))
                dir_issue(rep, "state_file: %s is not a regular file", path);
}

/* $STATE_DIRECTORY's first directory, and the copy of the running policy
 * in it; NULL when memory runs out. */
static char *running_policy_path(const char *dirs) {
        char *path = NULL;

        if (asprintf(&path, "%.*s/%s", (int) strcspn(dirs, ":"), dirs, RUNNING_POLICY_NAME) < 0)
                return NULL;
        return path;
}

/* Run by hand: the PID of the daemon the shipped unit runs, from the head
 * of its copy of the running policy, if that process is alive; else 0. */
static long running_daemon_pid(const char *text, size_t len) {
        char comm[64] = "", proc[64];
        long pid = 0;
        FILE *f;

        if (len < 16 || sscanf(text, "# ivh-reclaimd %ld\n", &pid) != 1 || pid <= 0)
                return 0;
        snprintf(proc, sizeof proc, "/proc/%ld/comm", pid);
        f = fopen(proc, "re");
        if (!f)
                return 0;
        if (!fgets(comm, sizeof comm, f))
                comm[0] = '\0';
        fclose(f);
        return strncmp(comm, "ivh-reclaimd", 12) == 0 ? pid : 0;
}

/* The unit's reload: would the running daemon take this file, or does a
 * key that needs a restart differ? The daemon keeps a copy of the file it
 * runs with in $STATE_DIRECTORY (RUNNING_POLICY_NAME), headed by its PID.
 * Run by hand, the same comparison with the shipped unit's daemon, if one
 * runs, tells what a reload would do (a note: the file is fine for a
 * restart). */
static int check_restart(struct report *rep, const struct config *c) {
        const char *dirs = getenv("STATE_DIRECTORY"), *pid = getenv("MAINPID"), *what = NULL;
        struct config *running = NULL;
        /* rep->reload: $MAINPID is set. */
        struct error err = { 0 };
        char *path = NULL, *text = NULL, head[64], by_hand_pid[24];
        size_t len = 0;
        int r;

        if (!rep->reload) {
                /* By hand: the shipped unit's state directory, if it runs. */
                if (dirs)
                        return 0;
                dirs = UNIT_STATE_DIRECTORY;
        } else if (!dirs || !*dirs)
                return 0;
        if (!(path = running_policy_path(dirs)))
                return -ENOMEM;
        r = read_file_full(path, CONFIG_MAX_SIZE, &text, &len);
        if (!rep->reload) {
                long p = r >= 0 ? running_daemon_pid(text, len) : 0;

                if (p == 0)
                        goto out;
                snprintf(by_hand_pid, sizeof by_hand_pid, "%ld", p);
                pid = by_hand_pid;
        }
        snprintf(head, sizeof head, "# ivh-reclaimd %s\n", pid);
        if (r < 0 || len < strlen(head) || strncmp(text, head, strlen(head)) != 0) {
                note(rep,
                     "note: no copy of the running policy from PID %s in %s; keys that need a restart are checked by the daemon itself",
                     pid, path);
                goto out;
        }
        r = config_load(path, &running, &err);
        if (r < 0) {
                note(rep, "note: the running policy's copy %s does not load; not compared", path);
                goto out;
        }
        /* The single-gateway form's one account is unnamed: a change of
         * form is a change of the list of accounts, as the count is. */
        if (running->n_accounts != c->n_accounts ||
            !running->accounts[0]->account != !c->accounts[0]->account)
                what = "the list of accounts";
        else if ((what = config_restart_needed(c, running)) == NULL)
                for (size_t i = 0; i < c->n_accounts && !what; i++)
                        what = config_restart_needed(c->accounts[i], running->accounts[i]);
        if (what && rep->reload)
                problem(rep,
                        "%s: %s differs from the running daemon's, which needs a restart (systemctl restart ivh-reclaimd); the running policy stays",
                        c->path, what);
        else if (what)
                note(rep,
                     "note: %s differs from the running daemon's (PID %s): 'systemctl reload ivh-reclaimd' will be refused and the running policy stays; 'systemctl restart ivh-reclaimd' takes this file",
                     what, pid);
out:
        config_free(running);
        error_done(&err);
        free(text);
        free(path);
        return r == -ENOMEM ? r : 0;
}

int preflight_check(const struct config *c, struct error *err, char **notes) {
        struct report rep = { 0 };
        struct credentials *notify_env = NULL;
        const struct config *const *accounts = (const struct config *const *) c->accounts;
        size_t n = c->n_accounts;
        int r = 0;

        assert(c);
        rep.reload = preflight_run_by_reload();
        *notes = NULL;
        rep.problems = open_memstream(&rep.problems_buf, &rep.problems_len);
        rep.notes = open_memstream(&rep.notes_buf, &rep.notes_len);
        if (!rep.problems || !rep.notes) {
                r = -ENOMEM;
                goto out;
        }
        for (size_t i = 0; i < n && r >= 0; i++) {
                bool dup = false;

                check_appkey(&rep, c, accounts[i]);
                r = check_token(&rep, c, accounts[i]);
                if (r >= 0)
                        r = check_notify(&rep, accounts[i], &notify_env);
                /* Accounts' state files usually share one directory: check it once. */
                for (size_t j = 0; j < i && accounts[i]->state_file; j++) {
                        char *a = strdup(accounts[i]->state_file), *b = strdup(accounts[j]->state_file);

                        dup = dup || (a && b && strcmp(dirname(a), dirname(b)) == 0);
                        free(a);
                        free(b);
                }
                if (r >= 0 && accounts[i]->state_file && !dup)
                        r = check_dir_of(&rep, "state_file", accounts[i]->state_file);
                if (r >= 0 && accounts[i]->state_file)
                        check_state_file(&rep, accounts[i]->state_file);
        }
        if (r >= 0 && c->metrics_file)
                r = check_dir_of(&rep, "metrics_file", c->metrics_file);
        if (r >= 0) {
                check_ha_files(&rep, c);
                r = check_restart(&rep, c);
        }
out:
        credentials_free(notify_env);
        if (rep.problems)
                fclose(rep.problems);
        if (rep.notes)
                fclose(rep.notes);
        if (r >= 0 && rep.n > 0)
                (void) error_take(err, 0, rep.problems_buf);
        else
                free(rep.problems_buf);
        if (r >= 0 && rep.notes_buf && rep.notes_len > 0)
                *notes = rep.notes_buf;
        else
                free(rep.notes_buf);
        return r < 0 ? r : rep.n;
}

int preflight_save_running(const struct config *top) {
        const char *dirs = getenv("STATE_DIRECTORY");
        char *path = NULL, *text = NULL;
        size_t len = 0;
        FILE *f;
        int r;

        if (!dirs || !*dirs || !top->text)
                return 0;
        f = open_memstream(&text, &len);
        if (!f)
                return -ENOMEM;
        fprintf(f, "# ivh-reclaimd %ld\n", (long) getpid());
        fwrite(top->text, 1, top->text_len, f);
        if (fclose(f) != 0 || !(path = running_policy_path(dirs))) {
                free(text);
                return -ENOMEM;
        }
        r = write_file_atomic(path, text, len, 0600);
        free(path);
        free(text);
        return r;
}

bool preflight_run_by_reload(void) {
        return getenv("MAINPID") && getenv("INVOCATION_ID");
}
