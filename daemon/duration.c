#include "duration.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

static const struct unit {
        const char *suffix;
        uint64_t ms;
} units[] = {
        /* "ms" comes before "m" so that the longest suffix wins. */
        { "ms", 1 }, { "s", 1000 }, { "m", 60 * 1000 }, { "h", 3600 * 1000 }, { "d", 24 * 3600 * 1000 },
};

int duration_parse(const char *s, uint64_t *ret_ms, const char **ret_problem) {
        const char *problem = NULL;
        uint64_t total = 0;
        bool any = false;

        if (!s || !*s) {
                problem = "empty duration";
                goto invalid;
        }
        while (*s) {
                uint64_t n = 0;
                const struct unit *u = NULL;

                if (*s < '0' || *s > '9') {
                        problem = "expected a number followed by ms, s, m, h or d";
                        goto invalid;
                }
                for (; *s >= '0' && *s <= '9'; s++) {
                        if (n > (DURATION_MAX_MS - (uint64_t) (*s - '0')) / 10)
                                goto range;
                        n = n * 10 + (uint64_t) (*s - '0');
                }
                for (size_t i = 0; i < sizeof units / sizeof units[0]; i++)
                        if (strncmp(s, units[i].suffix, strlen(units[i].suffix)) == 0) {
                                u = &units[i];
                                break;
                        }
                if (!u) {
                        problem = *s ? "unknown unit (use ms, s, m, h or d)"
                                     : "missing unit (use ms, s, m, h or d)";
                        goto invalid;
                }
                s += strlen(u->suffix);
                if (n > DURATION_MAX_MS / u->ms || total > DURATION_MAX_MS - n * u->ms)
                        goto range;
                total += n * u->ms;
                any = true;
        }
        if (!any) {
                problem = "empty duration";
                goto invalid;
        }
        *ret_ms = total;
        return 0;

range:
        if (ret_problem)
                *ret_problem = "duration too large (at most 100 years)";
        return -ERANGE;
invalid:
        if (ret_problem)
                *ret_problem = problem;
        return -EINVAL;
}

char *duration_format(uint64_t ms, char *buf, size_t n) {
        size_t off = 0;

        if (n == 0)
                return buf;
        buf[0] = '\0';
        if (ms == 0) {
                snprintf(buf, n, "0s");
                return buf;
        }
        for (size_t i = sizeof units / sizeof units[0]; i-- > 0;) {
                uint64_t q = ms / units[i].ms;
                int w;

                if (q == 0)
                        continue;
                w = snprintf(buf + off, n - off, "%llu%s", (unsigned long long) q, units[i].suffix);
                if (w < 0 || (size_t) w >= n - off)
                        break;
                off += (size_t) w;
                ms -= q * units[i].ms;
        }
        return buf;
}
