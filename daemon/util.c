#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

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

char *escape_bytes(const char *s, char *buf, size_t n) {
        size_t i = 0;

        if (n == 0)
                return buf;
        for (; s && *s; s++) {
                unsigned char ch = (unsigned char) *s;
                char esc[5];
                size_t len;

                if (ch == '\\')
                        len = (size_t) snprintf(esc, sizeof esc, "\\\\");
                else if (ch >= 0x20 && ch < 0x7f)
                        esc[0] = (char) ch, esc[1] = '\0', len = 1;
                else
                        len = (size_t) snprintf(esc, sizeof esc, "\\x%02x", ch);
                if (i + len + 1 > n)
                        break;
                memcpy(buf + i, esc, len);
                i += len;
        }
        buf[i] = '\0';
        return buf;
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
