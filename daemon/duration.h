/* Durations as operators write them: 500ms, 30s, 10m, 2h, 1d, or a sum such
 * as 1h30m. Values are milliseconds. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#define DURATION_MAX_MS (UINT64_C(100) * 365 * 24 * 3600 * 1000)

/* Returns 0, -EINVAL for a malformed string (a message is put in err), or
 * -ERANGE for a value above DURATION_MAX_MS. */
int duration_parse(const char *s, uint64_t *ret_ms, const char **ret_problem);

/* Formats ms as the shortest sum of units ("2h5m", "500ms", "0s"). */
char *duration_format(uint64_t ms, char *buf, size_t n);
