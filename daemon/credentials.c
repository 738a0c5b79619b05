#include "credentials.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fileio.h"
#include "util.h"

#define TOKEN_MAX_SIZE           4096
#define NOTIFY_SECRET_CREDENTIAL "notify-secret"
#define NOTIFY_SECRET_ENV        "IVH_NOTIFY_SECRET"

/* Accepts the token with surrounding white space trimmed; it must then be
 * non-empty printable ASCII without spaces. */
static int token_take(char *raw, char **ret) {
        char *start = raw, *end;
        char *tok;

        while (*start == ' ' || *start == '\t' || *start == '\n' || *start == '\r')
                start++;
        end = start + strlen(start);
        while (end > start && (end[-1] == ' ' || end[-1] == '\t' || end[-1] == '\n' || end[-1] == '\r'))
                end--;
        if (end == start)
                return -ENODATA;
        for (const char *c = start; c < end; c++)
                if (*c <= 0x20 || *c >= 0x7f)
                        return -EBADMSG;
        tok = strndup(start, (size_t) (end - start));
        if (!tok)
                return -ENOMEM;
        *ret = tok;
        return 0;
}

static const char *file_type(mode_t mode) {
        switch (mode & S_IFMT) {
        case S_IFDIR:
                return "a directory";
        case S_IFIFO:
                return "a FIFO";
        case S_IFSOCK:
                return "a socket";
        case S_IFCHR:
                return "a character device";
        case S_IFBLK:
                return "a block device";
        default:
                return "of an unknown type";
        }
}

/* Reads at most TOKEN_MAX_SIZE bytes from fd into buf (size TOKEN_MAX_SIZE +
 * 1) and terminates it. Returns the length, -EFBIG for a longer file, or
 * -errno. */
static ssize_t read_token_fd(int fd, char *buf) {
        size_t len = 0;

        for (;;) {
                ssize_t n = read(fd, buf + len, TOKEN_MAX_SIZE + 1 - len);

                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (n == 0)
                        break;
                len += (size_t) n;
                if (len > TOKEN_MAX_SIZE)
                        return -EFBIG;
        }
        buf[len] = '\0';
        return (ssize_t) len;
}

/* Opens the file once and judges and reads that very file (no check by path
 * followed by a later open, which another process could swap in between).
 * O_NONBLOCK: a FIFO at the path cannot block start-up; it is then refused as
 * not a regular file. The token never appears in a message. */
static int load_file(const char *path, const char *what, struct credentials *c, struct error *err) {
        char raw[TOKEN_MAX_SIZE + 1];
        struct stat st;
        ssize_t len = 0;
        int fd, r;

        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
        if (fd < 0) {
                r = -errno;
                (void) error_set(err, 0, "%s file %s: %s", what, path, strerror(-r));
                return r;
        }
        if (fstat(fd, &st) < 0) {
                r = -errno;
                (void) error_set(err, 0, "%s file %s: %s", what, path, strerror(-r));
                goto out;
        }
        if (!S_ISREG(st.st_mode)) {
                (void) error_set(err, 0, "%s file %s is not a regular file (it is %s)", what, path,
                                 file_type(st.st_mode));
                r = -EINVAL;
                goto out;
        }
        if (st.st_mode & S_IROTH) {
                (void) error_set(
                        err, 0,
                        "%s file %s is readable by others (mode %04o); refusing it: run 'chmod o-r %s'",
                        what, path, (unsigned) (st.st_mode & 07777), path);
                r = -EPERM;
                goto out;
        }
        if ((uint64_t) st.st_size > TOKEN_MAX_SIZE) {
                r = -EFBIG;
        } else {
                len = read_token_fd(fd, raw);
                r = len < 0 ? (int) len : 0;
        }
        if (r < 0) {
                (void) error_set(err, 0, "%s file %s: %s", what, path,
                                 r == -EFBIG ? "larger than 4 KiB" : strerror(-r));
                goto out;
        }
        /* A NUL byte would silently end the token early. */
        r = memchr(raw, '\0', (size_t) len) ? -EBADMSG : token_take(raw, &c->token);
        if (r < 0) {
                (void) error_set(err, 0, "%s file %s: %s", what, path,
                                 r == -ENODATA   ? "is empty"
                                 : r == -EBADMSG ? "contains white space or non-printable characters"
                                                 : strerror(-r));
                goto out;
        }
        snprintf(c->source, sizeof c->source, "file %s", path);
        c->path = strdup(path);
        if (!c->path)
                r = -ENOMEM;
out:
        explicit_bzero(raw, sizeof raw);
        close(fd);
        return r;
}

/* A token or secret from the environment variable name (value env, which
 * the caller wipes): its rules are the file's. The message never holds it. */
static int load_env(const char *name, const char *env, struct credentials *c, struct error *err) {
        size_t len = strlen(env);
        char *raw = strdup(env);
        int r = raw ? token_take(raw, &c->token) : -ENOMEM;

        if (raw) {
                explicit_bzero(raw, len);
                free(raw);
        }
        if (r < 0)
                return error_set(err, r, "%s: %s", name,
                                 r == -ENODATA  ? "is empty"
                                 : r == -ENOMEM ? "out of memory"
                                                : "contains white space or non-printable characters");
        snprintf(c->source, sizeof c->source, "environment variable %s", name);
        c->from_env = true;
        return 0;
}

void credentials_name(const char *account, char *buf, size_t n) {
        snprintf(buf, n, "accesstoken%s%s", account ? "-" : "", account ? account : "");
}

int credentials_load(const struct gateway_config *g, const struct credentials *previous, const char *account,
                     struct credentials **ret, struct error *err) {
        char cred_name[128], env_name[128], path[PATH_MAX];
        struct credentials *c;
        const char *dir;
        char *env;
        int r;

        /* Per account: credential accesstoken-NAME, variable IVH_ACCESS_TOKEN_NAME. */
        credentials_name(account, cred_name, sizeof cred_name);
        snprintf(env_name, sizeof env_name, "IVH_ACCESS_TOKEN%s", account ? "_" : "");
        {
                size_t i = strlen(env_name);

                for (const char *k = account; k && *k && i + 1 < sizeof env_name; k++)
                        env_name[i++] =
                                (char) (isalnum((unsigned char) *k) ? toupper((unsigned char) *k) : '_');
                env_name[i] = '\0';
        }

        c = calloc(1, sizeof *c);
        if (!c)
                return -ENOMEM;

        dir = getenv("CREDENTIALS_DIRECTORY");
        if (dir && *dir)
                snprintf(path, sizeof path, "%s/%s", dir, cred_name);
        env = getenv(env_name);
        if (g->accesstoken_file) {
                r = load_file(g->accesstoken_file, "access token", c, err);
        } else if (dir && *dir && access(path, F_OK) == 0) {
                r = load_file(path, "access token", c, err);
        } else if (env) {
                r = load_env(env_name, env, c, err);
        } else if (previous && previous->from_env) {
                c->token = strdup(previous->token);
                r = c->token ? 0 : -ENOMEM;
                memcpy(c->source, previous->source, sizeof c->source);
                c->from_env = true;
        } else {
                (void) error_set(
                        err, 0,
                        "no access token%s%s: set %saccesstoken_file, provide the credential '%s' (LoadCredential=), or set %s",
                        account ? " for account " : "", account ? account : "",
                        account ? "the account's " : "gateway.", cred_name, env_name);
                r = -ENOKEY;
        }
        /* Keep the token out of /proc/PID/environ (which shows the original
         * environment block, so wipe it in place) and out of any child. */
        if (env) {
                explicit_bzero(env, strlen(env));
                unsetenv(env_name);
        }
        if (r < 0) {
                credentials_free(c);
                return r;
        }
        *ret = c;
        return 0;
}

void credentials_free(struct credentials *c) {
        if (!c)
                return;
        if (c->token) {
                explicit_bzero(c->token, strlen(c->token));
                free(c->token);
        }
        free(c->path);
        free(c);
}

/* The shipped unit's SetCredential= default for a missing secret file: not
 * a secret (it has spaces), and worth its own message. */
static bool is_unit_placeholder(const char *path) {
        char *data = NULL;
        size_t len = 0;
        bool r = read_file_full(path, 64, &data, &len) == 0 && strcmp(data, NOTIFY_SECRET_PLACEHOLDER) == 0;

        if (data)
                explicit_bzero(data, len);
        free(data);
        return r;
}

int credentials_load_notify_secret(const struct notify_config *n, struct credentials **env_cache,
                                   struct credentials **ret, struct error *err) {
        const char *dir = getenv("CREDENTIALS_DIRECTORY");
        char path[PATH_MAX];
        struct credentials *c = calloc(1, sizeof *c);
        char *env = getenv(NOTIFY_SECRET_ENV);
        int r;

        if (!c)
                return -ENOMEM;
        if (dir && *dir)
                snprintf(path, sizeof path, "%s/%s", dir, NOTIFY_SECRET_CREDENTIAL);
        /* Read once per process: every account and every reload after
         * this one find it in *env_cache, since it is wiped now. */
        if (env && env_cache && !*env_cache) {
                struct credentials *e = calloc(1, sizeof *e);

                r = e ? load_env(NOTIFY_SECRET_ENV, env, e, err) : -ENOMEM;
                explicit_bzero(env, strlen(env));
                unsetenv(NOTIFY_SECRET_ENV);
                if (r < 0) {
                        credentials_free(e);
                        credentials_free(c);
                        return r == -ENOMEM ? error_set(err, r, "%s: out of memory", NOTIFY_SECRET_ENV)
                                            : -EINVAL;
                }
                *env_cache = e;
        }
        if (n->secret_file)
                r = load_file(n->secret_file, "notify secret", c, err);
        else if (dir && *dir && access(path, F_OK) == 0 && is_unit_placeholder(path))
                r = error_set(
                        err, -ENOKEY,
                        "no notify secret: the unit hands over %s as the credential '%s' (LoadCredential=), and that file does not exist; install it with mode 0600, or set notify.secret_file",
                        NOTIFY_SECRET_UNIT_FILE, NOTIFY_SECRET_CREDENTIAL);
        else if (dir && *dir && access(path, F_OK) == 0)
                r = load_file(path, "notify secret", c, err);
        else if (env_cache && *env_cache) {
                c->token = strdup((*env_cache)->token);
                r = c->token ? 0 : -ENOMEM;
                memcpy(c->source, (*env_cache)->source, sizeof c->source);
                c->from_env = true;
        } else if (!(dir && *dir) && access(NOTIFY_SECRET_UNIT_FILE, F_OK) == 0)
                /* Run by hand (--check-config, a test run): the file the
                 * shipped unit would hand over. */
                r = load_file(NOTIFY_SECRET_UNIT_FILE, "notify secret", c, err);
        else
                r = error_set(
                        err, -ENOKEY,
                        "no notify secret: set notify.secret_file, provide the credential '%s' (LoadCredential=), or set %s (format: slack needs none)",
                        NOTIFY_SECRET_CREDENTIAL, NOTIFY_SECRET_ENV);
        if (r < 0) {
                credentials_free(c);
                return r;
        }
        *ret = c;
        return 0;
}
