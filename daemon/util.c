#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static int64_t clock_ms(clockid_t id) {
        struct timespec ts;

        if (clock_gettime(id, &ts) < 0)
                abort(); /* cannot fail for these clocks */
        return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t now_mono_ms(void) {
        return clock_ms(CLOCK_BOOTTIME);
}

int64_t now_wall_ms(void) {
        return clock_ms(CLOCK_REALTIME);
}

char *strdup_or_null(const char *s) {
        return s ? strdup(s) : NULL;
}

int read_file_full(const char *path, size_t max_size, char **ret_data, size_t *ret_size) {
        struct stat st;
        char *buf = NULL;
        size_t len = 0;
        int fd, r;

        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0)
                return -errno;
        if (fstat(fd, &st) < 0) {
                r = -errno;
                goto out;
        }
        if (!S_ISREG(st.st_mode)) {
                r = -EINVAL;
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

int write_file_atomic(const char *path, const char *data, size_t size, unsigned mode) {
        char tmp[PATH_MAX], dir[PATH_MAX];
        int fd, dfd, r;

        if (snprintf(tmp, sizeof tmp, "%s.XXXXXX", path) >= (int) sizeof tmp)
                return -ENAMETOOLONG;
        if (snprintf(dir, sizeof dir, "%s", path) >= (int) sizeof dir)
                return -ENAMETOOLONG;

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
        if (rename(tmp, path) < 0) {
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

char *sanitize_printable(const char *s, char *buf, size_t n) {
        size_t i = 0;

        if (n == 0)
                return buf;
        for (; s && *s && i + 1 < n; s++, i++)
                buf[i] = (*s >= 0x20 && *s < 0x7f) ? *s : '?';
        buf[i] = '\0';
        return buf;
}
