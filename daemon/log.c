#include "log.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <systemd/sd-journal.h>
#include <time.h>
#include <unistd.h>

#include "util.h"

#define LOG_LINE_MAX 8192
/* A cut value ends in this mark ("…", U+2026 in UTF-8). */
#define CUT_MARK     "\xe2\x80\xa6"
#define CUT_MARK_LEN 3
/* The shortest a cut console value can be: its quotes and the mark. */
#define CUT_MIN (2 + CUT_MARK_LEN)
/* On the console, a long msg is cut down to this before any field value is. */
#define MSG_KEEP_MIN 512

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

/* What one byte of a quoted value takes once escaped. */
static size_t escaped_len(unsigned char c) {
        if (c == '"' || c == '\\' || c == '\n')
                return 2;
        if (c < 0x20 || c == 0x7f)
                return 4; /* \xNN */
        return 1;
}

/* The bytes logfmt_append() writes for value, quotes included; once that
 * exceeds limit, some number above limit (so a huge value is not read to its
 * end). */
static size_t value_len(const char *v, size_t limit) {
        bool quote = !*v;
        size_t n = 0;

        for (; *v && n <= limit; v++) {
                unsigned char c = (unsigned char) *v;

                n += escaped_len(c);
                if (c <= ' ' || c == '"' || c == '=' || c == '\\' || c >= 0x7f)
                        quote = true;
        }
        return quote ? n + 2 : n;
}

/* Shortens a cut of s at n bytes (n < strlen(s)) so that it does not split a
 * UTF-8 sequence. */
static size_t utf8_cut(const char *s, size_t n) {
        for (int i = 0; i < 3 && n > 0 && ((unsigned char) s[n] & 0xc0) == 0x80; i++)
                n--;
        return n;
}

/* Appends the first n bytes of value, escaped for use inside quotes. */
static void append_escaped(char *buf, size_t size, size_t *off, const char *value, size_t n) {
        const char *end = value + n;

        while (value < end) {
                /* Copy the run that needs no escaping in one go. */
                size_t run = 0;
                while (value + run < end && escaped_len((unsigned char) value[run]) == 1)
                        run++;
                append_raw(buf, size, off, value, run);
                value += run;
                if (value == end)
                        break;
                if (*value == '"' || *value == '\\') {
                        char esc[2] = { '\\', *value };
                        append_raw(buf, size, off, esc, 2);
                } else if (*value == '\n') {
                        append_raw(buf, size, off, "\\n", 2);
                } else {
                        char hex[8];
                        int k = snprintf(hex, sizeof hex, "\\x%02x", (unsigned char) *value);
                        append_raw(buf, size, off, hex, (size_t) k);
                }
                value++;
        }
}

static void append_key(char *buf, size_t size, size_t *off, const char *key) {
        if (*off > 0)
                append_raw(buf, size, off, " ", 1);
        append_raw(buf, size, off, key, strlen(key));
        append_raw(buf, size, off, "=", 1);
}

void logfmt_append(char *buf, size_t size, size_t *off, const char *key, const char *value) {
        append_key(buf, size, off, key);
        if (!needs_quotes(value)) {
                append_raw(buf, size, off, value, strlen(value));
                return;
        }
        append_raw(buf, size, off, "\"", 1);
        append_escaped(buf, size, off, value, strlen(value));
        append_raw(buf, size, off, "\"", 1);
}

/* Like logfmt_append(), but the value takes at most max bytes (max >=
 * CUT_MIN): a longer one is cut, quoted, and ends in CUT_MARK inside the
 * quotes. A cut never splits an escape or a UTF-8 sequence. */
static void logfmt_append_max(char *buf, size_t size, size_t *off, const char *key, const char *value,
                              size_t max) {
        size_t n = 0, used = CUT_MIN;

        if (value_len(value, max) <= max) {
                logfmt_append(buf, size, off, key, value);
                return;
        }
        while (value[n] && used + escaped_len((unsigned char) value[n]) <= max)
                used += escaped_len((unsigned char) value[n++]);
        n = utf8_cut(value, n);
        append_key(buf, size, off, key);
        append_raw(buf, size, off, "\"", 1);
        append_escaped(buf, size, off, value, n);
        append_raw(buf, size, off, CUT_MARK "\"", CUT_MARK_LEN + 1);
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

static const char *field_value(const struct log_field *f) {
        return f->value ? f->value : "";
}

/* What the field values take when each is cut to at most cap bytes. */
static size_t values_len_capped(const struct log_field *fields, size_t n_fields, size_t cap) {
        size_t sum = 0;

        for (size_t i = 0; i < n_fields; i++) {
                size_t l = value_len(field_value(&fields[i]), cap);
                sum += l < cap ? l : cap;
        }
        return sum;
}

/* The largest cap on each field value that lets them all fit in budget, so
 * that only the longest are cut and short ones such as outcome never are;
 * CUT_MIN when even that does not fit. */
static size_t fit_cap(const struct log_field *fields, size_t n_fields, size_t budget) {
        size_t lo = CUT_MIN, hi = budget + 1;

        if (values_len_capped(fields, n_fields, lo) > budget)
                return lo;
        while (lo < hi) {
                size_t mid = lo + (hi - lo + 1) / 2;

                if (values_len_capped(fields, n_fields, mid) <= budget)
                        lo = mid;
                else
                        hi = mid - 1;
        }
        return lo;
}

size_t logfmt_line(char *buf, size_t size, const char *ts, int priority, const char *message_id,
                   const struct log_field *fields, size_t n_fields, const char *message) {
        const char *level = level_names[priority & 7];
        size_t fixed, want, msg_want, avail, msg_max, cap = SIZE_MAX, off = 0;
        char key[64];

        if (size == 0)
                return 0;
        buf[0] = '\0';

        /* What is never cut: the keys, separators, ts, level and message_id. */
        fixed = strlen("ts=") + strlen(ts) + strlen(" level=") + strlen(level) + strlen(" msg=");
        if (message_id)
                fixed += strlen(" message_id=") + value_len(message_id, size);
        for (size_t i = 0; i < n_fields; i++) {
                console_key(fields[i].name, key, sizeof key);
                fixed += 1 + strlen(key) + 1;
        }
        avail = size - 1 > fixed ? size - 1 - fixed : 0;

        /* The values, each measured up to avail (more is too long anyway). */
        msg_want = value_len(message, avail);
        want = values_len_capped(fields, n_fields, avail + 1);
        msg_max = msg_want;
        if (msg_want + want > avail) {
                /* Too long. The human msg gives way first, down to a floor. */
                size_t msg_floor = msg_want;

                if (msg_floor > MSG_KEEP_MIN)
                        msg_floor = MSG_KEEP_MIN;
                if (msg_floor > avail / 4)
                        msg_floor = avail / 4 > CUT_MIN ? avail / 4 : CUT_MIN;
                if (want + msg_floor <= avail) {
                        msg_max = avail - want;
                } else {
                        /* Then the longest field values. If they cannot all
                         * fit beside the msg floor, the msg goes down to its
                         * shortest too. */
                        msg_max = msg_floor;
                        if (msg_max >= avail ||
                            values_len_capped(fields, n_fields, CUT_MIN) > avail - msg_max)
                                msg_max = msg_want < CUT_MIN ? msg_want : CUT_MIN;
                        cap = fit_cap(fields, n_fields, avail > msg_max ? avail - msg_max : 0);
                }
                if (msg_max > msg_want)
                        msg_max = msg_want;
                if (msg_max < CUT_MIN)
                        msg_max = CUT_MIN;
        }

        append(buf, size, &off, "ts=%s", ts);
        logfmt_append(buf, size, &off, "level", level);
        logfmt_append_max(buf, size, &off, "msg", message, msg_max);
        if (message_id)
                logfmt_append(buf, size, &off, "message_id", message_id);
        for (size_t i = 0; i < n_fields; i++) {
                console_key(fields[i].name, key, sizeof key);
                logfmt_append_max(buf, size, &off, key, field_value(&fields[i]), cap);
        }
        return off;
}

static void log_console(int priority, const char *message_id, const struct log_field *fields,
                        size_t n_fields, const char *message) {
        char line[LOG_LINE_MAX], ts[64], tsms[80];
        struct timespec now;
        struct tm tm;
        size_t n;

        clock_gettime(CLOCK_REALTIME, &now);
        gmtime_r(&now.tv_sec, &tm);
        strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
        snprintf(tsms, sizeof tsms, "%s.%03ldZ", ts, now.tv_nsec / 1000000);
        /* One byte of the buffer is kept for the newline. */
        n = logfmt_line(line, sizeof line - 1, tsms, priority, message_id, fields, n_fields, message);
        line[n++] = '\n';
        fwrite(line, 1, n, stderr);
        fflush(stderr);
}

/* Copies value into a new "NAME=value" string, the value cut at
 * LOG_FIELD_VALUE_MAX bytes (on a UTF-8 boundary, then CUT_MARK). */
static char *journal_field(const char *name, const char *value) {
        size_t nl = strlen(name), vl = strnlen(value, LOG_FIELD_VALUE_MAX + 1), keep = vl;
        char *s;

        if (vl > LOG_FIELD_VALUE_MAX)
                keep = utf8_cut(value, LOG_FIELD_VALUE_MAX - CUT_MARK_LEN);
        s = malloc(nl + 1 + keep + CUT_MARK_LEN + 1);
        if (!s)
                return NULL;
        memcpy(s, name, nl);
        s[nl] = '=';
        memcpy(s + nl + 1, value, keep);
        if (keep < vl) {
                memcpy(s + nl + 1 + keep, CUT_MARK, CUT_MARK_LEN);
                keep += CUT_MARK_LEN;
        }
        s[nl + 1 + keep] = '\0';
        return s;
}

static int log_journal(int priority, const char *message_id, const struct log_field *fields, size_t n_fields,
                       const char *message) {
        struct iovec *iov = NULL;
        char **strs, prio[16];
        size_t n = 0, max = n_fields + 4;
        int r = 0;

        /* Every field is sent: none is dropped for want of room. */
        strs = calloc(max, sizeof *strs);
        iov = calloc(max, sizeof *iov);
        if (!strs || !iov) {
                r = -ENOMEM;
                goto out;
        }
        snprintf(prio, sizeof prio, "%d", priority & 7);
        strs[n++] = journal_field("MESSAGE", message);
        strs[n++] = journal_field("PRIORITY", prio);
        strs[n++] = journal_field("SYSLOG_IDENTIFIER", "ivh-reclaimd");
        if (message_id)
                strs[n++] = journal_field("MESSAGE_ID", message_id);
        for (size_t i = 0; i < n_fields; i++)
                strs[n++] = journal_field(fields[i].name, field_value(&fields[i]));
        for (size_t i = 0; i < n; i++) {
                if (!strs[i]) {
                        r = -ENOMEM;
                        goto out;
                }
                iov[i] = (struct iovec){ .iov_base = strs[i], .iov_len = strlen(strs[i]) };
        }
        r = sd_journal_sendv(iov, (int) n);
out:
        for (size_t i = 0; strs && i < n; i++)
                free(strs[i]);
        free(strs);
        free(iov);
        return r;
}

void log_structv(int priority, const char *message_id, const struct log_field *fields, size_t n_fields,
                 const char *fmt, va_list ap) {
        char message[LOG_LINE_MAX];
        int saved_errno = errno, n;

        if ((priority & 7) > log_max_level)
                return;
        n = vsnprintf(message, sizeof message, fmt, ap);
        if (n < 0)
                message[0] = '\0';
        else if (n >= (int) sizeof message) {
                /* Cut: say so, and do not leave half a UTF-8 sequence. */
                size_t keep = utf8_cut(message, sizeof message - 1 - CUT_MARK_LEN);

                memcpy(message + keep, CUT_MARK, CUT_MARK_LEN + 1);
        }
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
