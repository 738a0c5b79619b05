#include "log.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <systemd/sd-journal.h>
#include <time.h>
#include <unistd.h>

#include "util.h"

#define LOG_MAX_FIELDS 24
#define LOG_LINE_MAX   8192

static enum log_target log_target = LOG_TARGET_CONSOLE;
static int log_max_level = LOG_INFO;

static const char *const level_names[] = {
        [LOG_EMERG] = "emerg",     [LOG_ALERT] = "alert",   [LOG_CRIT] = "crit", [LOG_ERR] = "error",
        [LOG_WARNING] = "warning", [LOG_NOTICE] = "notice", [LOG_INFO] = "info", [LOG_DEBUG] = "debug",
};

int log_target_from_string(const char *s, enum log_target *ret) {
        if (strcmp(s, "auto") == 0)
                *ret = LOG_TARGET_AUTO;
        else if (strcmp(s, "journal") == 0)
                *ret = LOG_TARGET_JOURNAL;
        else if (strcmp(s, "console") == 0)
                *ret = LOG_TARGET_CONSOLE;
        else
                return -EINVAL;
        return 0;
}

static bool stderr_is_journal(void) {
        const char *e = getenv("JOURNAL_STREAM");
        unsigned long long dev, ino;
        struct stat st;

        if (!e || sscanf(e, "%llu:%llu", &dev, &ino) != 2)
                return false;
        if (fstat(STDERR_FILENO, &st) < 0)
                return false;
        return (unsigned long long) st.st_dev == dev && (unsigned long long) st.st_ino == ino;
}

void log_open(enum log_target target) {
        if (target == LOG_TARGET_AUTO)
                target = stderr_is_journal() ? LOG_TARGET_JOURNAL : LOG_TARGET_CONSOLE;
        log_target = target;
}

enum log_target log_get_target(void) {
        return log_target;
}

void log_set_max_level(int priority) {
        log_max_level = priority;
}

static bool needs_quotes(const char *v) {
        if (!*v)
                return true;
        for (; *v; v++)
                if (*v <= ' ' || *v == '"' || *v == '=' || *v == '\\' || (unsigned char) *v >= 0x7f)
                        return true;
        return false;
}

static void append(char *buf, size_t size, size_t *off, const char *fmt, ...)
        __attribute__((format(printf, 4, 5)));

static void append(char *buf, size_t size, size_t *off, const char *fmt, ...) {
        va_list ap;
        int n;

        if (*off >= size)
                return;
        va_start(ap, fmt);
        n = vsnprintf(buf + *off, size - *off, fmt, ap);
        va_end(ap);
        if (n > 0)
                *off = (size_t) n >= size - *off ? size - 1 : *off + (size_t) n;
}

/* Appends n bytes, truncating at the end of the buffer (always terminated). */
static void append_raw(char *buf, size_t size, size_t *off, const char *s, size_t n) {
        if (*off + 1 >= size)
                return;
        if (n > size - 1 - *off)
                n = size - 1 - *off;
        memcpy(buf + *off, s, n);
        *off += n;
        buf[*off] = '\0';
}

void logfmt_append(char *buf, size_t size, size_t *off, const char *key, const char *value) {
        if (*off > 0)
                append_raw(buf, size, off, " ", 1);
        append_raw(buf, size, off, key, strlen(key));
        append_raw(buf, size, off, "=", 1);
        if (!needs_quotes(value)) {
                append_raw(buf, size, off, value, strlen(value));
                return;
        }
        append_raw(buf, size, off, "\"", 1);
        while (*value) {
                /* Copy the run that needs no escaping in one go. */
                size_t run = 0;
                while (value[run] && value[run] != '"' && value[run] != '\\' &&
                       (unsigned char) value[run] >= 0x20 && (unsigned char) value[run] != 0x7f)
                        run++;
                append_raw(buf, size, off, value, run);
                value += run;
                if (!*value)
                        break;
                if (*value == '"' || *value == '\\') {
                        char esc[2] = { '\\', *value };
                        append_raw(buf, size, off, esc, 2);
                } else if (*value == '\n') {
                        append_raw(buf, size, off, "\\n", 2);
                } else {
                        char hex[8];
                        int n = snprintf(hex, sizeof hex, "\\x%02x", (unsigned char) *value);
                        append_raw(buf, size, off, hex, (size_t) n);
                }
                value++;
        }
        append_raw(buf, size, off, "\"", 1);
}

/* "IVH_SESSION_ID" -> "session_id" */
static void console_key(const char *name, char *buf, size_t n) {
        size_t i = 0;

        if (strncmp(name, "IVH_", 4) == 0)
                name += 4;
        for (; *name && i + 1 < n; name++)
                buf[i++] = (char) tolower((unsigned char) *name);
        buf[i] = '\0';
}

static void log_console(int priority, const char *message_id, const struct log_field *fields,
                        size_t n_fields, const char *message) {
        char line[LOG_LINE_MAX], ts[64], key[64];
        struct timespec now;
        struct tm tm;
        size_t off = 0;

        clock_gettime(CLOCK_REALTIME, &now);
        gmtime_r(&now.tv_sec, &tm);
        strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
        append(line, sizeof line, &off, "ts=%s.%03ldZ", ts, now.tv_nsec / 1000000);
        logfmt_append(line, sizeof line, &off, "level", level_names[priority & 7]);
        logfmt_append(line, sizeof line, &off, "msg", message);
        if (message_id)
                logfmt_append(line, sizeof line, &off, "message_id", message_id);
        for (size_t i = 0; i < n_fields; i++) {
                console_key(fields[i].name, key, sizeof key);
                logfmt_append(line, sizeof line, &off, key, fields[i].value ? fields[i].value : "");
        }
        fprintf(stderr, "%s\n", line);
        fflush(stderr);
}

static int log_journal(int priority, const char *message_id, const struct log_field *fields, size_t n_fields,
                       const char *message) {
        struct iovec iov[LOG_MAX_FIELDS + 4];
        char *strs[LOG_MAX_FIELDS + 4];
        size_t n = 0;
        int r = 0;

        if (n_fields > LOG_MAX_FIELDS)
                n_fields = LOG_MAX_FIELDS;
        if (asprintf(&strs[n++], "MESSAGE=%s", message) < 0 ||
            asprintf(&strs[n++], "PRIORITY=%d", priority & 7) < 0 ||
            asprintf(&strs[n++], "SYSLOG_IDENTIFIER=%s", "ivh-reclaimd") < 0) {
                n--;
                r = -ENOMEM;
                goto out;
        }
        if (message_id && asprintf(&strs[n++], "MESSAGE_ID=%s", message_id) < 0) {
                n--;
                r = -ENOMEM;
                goto out;
        }
        for (size_t i = 0; i < n_fields; i++)
                if (asprintf(&strs[n++], "%s=%s", fields[i].name, fields[i].value ? fields[i].value : "") <
                    0) {
                        n--;
                        r = -ENOMEM;
                        goto out;
                }
        for (size_t i = 0; i < n; i++)
                iov[i] = (struct iovec){ .iov_base = strs[i], .iov_len = strlen(strs[i]) };
        r = sd_journal_sendv(iov, (int) n);
out:
        for (size_t i = 0; i < n; i++)
                free(strs[i]);
        return r;
}

void log_structv(int priority, const char *message_id, const struct log_field *fields, size_t n_fields,
                 const char *fmt, va_list ap) {
        char message[LOG_LINE_MAX];
        int saved_errno = errno;

        if ((priority & 7) > log_max_level)
                return;
        vsnprintf(message, sizeof message, fmt, ap);
        if (log_target != LOG_TARGET_JOURNAL ||
            log_journal(priority, message_id, fields, n_fields, message) < 0)
                log_console(priority, message_id, fields, n_fields, message);
        errno = saved_errno;
}

void log_struct(int priority, const char *message_id, const struct log_field *fields, size_t n_fields,
                const char *fmt, ...) {
        va_list ap;

        va_start(ap, fmt);
        log_structv(priority, message_id, fields, n_fields, fmt, ap);
        va_end(ap);
}
