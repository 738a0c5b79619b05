#include "fileio.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int read_file_full(const char *path, size_t max_size, char **ret_data, size_t *ret_size) {
        struct stat st;
        char *buf = NULL;
        size_t len = 0;
        int fd, r;

        /* O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer. */
        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
        if (fd < 0)
                return -errno;
        if (fstat(fd, &st) < 0) {
                r = -errno;
                goto out;
        }
        if (!S_ISREG(st.st_mode)) {
                r = S_ISDIR(st.st_mode) ? -EISDIR : -EBADFD;
                goto out;
        }
        if ((uint64_t) st.st_size > max_size) {
                r = -EFBIG;
                goto out;
        }
        buf = malloc((size_t) st.st_size + 1);
        if (!buf) {
                r = -ENOMEM;
                goto out;
        }
        while (len < (size_t) st.st_size) {
                ssize_t n = read(fd, buf + len, (size_t) st.st_size - len);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        r = -errno;
                        goto out;
                }
                if (n == 0)
                        break; /* file shrank under us; take what is there */
                len += (size_t) n;
        }
        buf[len] = '\0';
        *ret_data = buf;
        if (ret_size)
                *ret_size = len;
        buf = NULL;
        r = 0;
out:
        free(buf);
        close(fd);
        return r;
}

static int write_all(int fd, const char *data, size_t size) {
        while (size > 0) {
                ssize_t n = write(fd, data, size);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                data += n;
                size -= (size_t) n;
        }
        return 0;
}

const char *file_strerror(int negative_errno) {
        return negative_errno == -EBADFD ? "not a regular file" : strerror(-negative_errno);
}

bool is_atomic_temporary(const char *name, const char *base) {
        size_t n = strlen(base);

        /* ".#" base "." and six characters from mkostemp() */
        return strncmp(name, ".#", 2) == 0 && strncmp(name + 2, base, n) == 0 && name[2 + n] == '.' &&
               strlen(name + 3 + n) == 6 &&
               strspn(name + 3 + n, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") == 6;
}

int path_follow_link(const char *path, char *target) {
        struct stat st;

        if (lstat(path, &st) < 0 || !S_ISLNK(st.st_mode)) {
                if (snprintf(target, PATH_MAX, "%s", path) >= PATH_MAX)
                        return -ENAMETOOLONG;
                return 0;
        }
        if (realpath(path, target))
                return 0;
        if (errno != ENOENT)
                return -errno; /* a loop, a permission problem */
        /* A dangling link: its target is the file to create. */
        {
                char linkdir[PATH_MAX], joined[PATH_MAX];
                ssize_t n = readlink(path, target, PATH_MAX - 1);

                if (n < 0)
                        return -errno;
                target[n] = '\0';
                if (target[0] == '/')
                        return 0;
                snprintf(linkdir, sizeof linkdir, "%s", path);
                if (snprintf(joined, sizeof joined, "%s/%s", dirname(linkdir), target) >=
                    (int) sizeof joined)
                        return -ENAMETOOLONG;
                memcpy(target, joined, PATH_MAX);
        }
        return 0;
}

int write_file_atomic(const char *path, const char *data, size_t size, unsigned mode) {
        char target[PATH_MAX], tmp[PATH_MAX], dir[PATH_MAX], base[PATH_MAX];
        int fd, dfd, r;

        /* Write through a symbolic link: replace what it points to, not the
         * link (an operator may keep the state on another volume). */
        r = path_follow_link(path, target);
        if (r < 0)
                return r;

        snprintf(dir, sizeof dir, "%s", target);
        snprintf(base, sizeof base, "%s", target);
        if (snprintf(tmp, sizeof tmp, "%s/.#%s.XXXXXX", dirname(dir), basename(base)) >= (int) sizeof tmp)
                return -ENAMETOOLONG;
        snprintf(dir, sizeof dir, "%s", target);

        fd = mkostemp(tmp, O_CLOEXEC);
        if (fd < 0)
                return -errno;
        if (fchmod(fd, (mode_t) mode) < 0) {
                r = -errno;
                goto fail;
        }
        r = write_all(fd, data, size);
        if (r < 0)
                goto fail;
        if (fsync(fd) < 0) {
                r = -errno;
                goto fail;
        }
        if (close(fd) < 0) {
                fd = -1;
                r = -errno;
                goto fail;
        }
        fd = -1;
        if (rename(tmp, target) < 0) {
                r = -errno;
                goto fail;
        }

        /* Make the rename itself durable. */
        dfd = open(dirname(dir), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd < 0)
                return -errno;
        r = fsync(dfd) < 0 ? -errno : 0;
        close(dfd);
        return r;

fail:
        if (fd >= 0)
                close(fd);
        unlink(tmp);
        return r;
}

/* A boot id as 36 characters with dashes (as procfs writes it) from that
 * form or from 32 hex digits (as systemd's %b specifier writes it). */
static int canonical_boot_id(const char *s, char ret[37]) {
        size_t k = 0;

        for (size_t i = 0; s[i] && k < 36; i++) {
                if (s[i] == '-')
                        continue;
                if (!isxdigit((unsigned char) s[i]))
                        return -EBADMSG;
                if (k == 8 || k == 13 || k == 18 || k == 23)
                        ret[k++] = '-';
                ret[k++] = (char) tolower((unsigned char) s[i]);
        }
        ret[k] = '\0';
        return k == 36 && strlen(s) == (strchr(s, '-') ? 36u : 32u) ? 0 : -EBADMSG;
}

int read_boot_id(char ret[37]) {
        /* procfs reports size 0 for this file, so read_file_full() cannot
         * serve: stdio reads what is there. */
        FILE *f = fopen("/proc/sys/kernel/random/boot_id", "re");
        const char *env = getenv("IVH_BOOT_ID");
        char buf[64] = { 0 };
        size_t size;
        int r = -ENOENT;

        if (f) {
                size = fread(buf, 1, sizeof buf - 1, f);
                fclose(f);
                while (size > 0 && (buf[size - 1] == '\n' || buf[size - 1] == ' '))
                        buf[--size] = '\0';
                r = canonical_boot_id(buf, ret);
        } else
                r = -errno;
        /* The shipped unit hides /proc/sys (ProcSubset=pid) and hands the
         * boot id over as Environment=IVH_BOOT_ID=%b instead. */
        if (r < 0 && env && *env)
                r = canonical_boot_id(env, ret);
        if (r < 0)
                ret[0] = '\0';
        return r;
}
