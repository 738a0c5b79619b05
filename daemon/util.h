/* Small helpers shared by every module: clocks and string handling. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define ELEMENTSOF(a) (sizeof(a) / sizeof((a)[0]))

/* Milliseconds on CLOCK_BOOTTIME: steady, and it keeps counting across
 * suspend, so session ages measured with it include time asleep. */
int64_t now_mono_ms(void);
/* Milliseconds since the Unix epoch (CLOCK_REALTIME). */
int64_t now_wall_ms(void);

/* Copies s into buf (size n), escaping every byte that is not printable
 * ASCII, and the backslash, as \xNN / \\. Truncated to fit. Returns buf. */
char *escape_bytes(const char *s, char *buf, size_t n);

/* Copies s into buf (size n), replacing bytes that are not printable ASCII
 * with '?', so that untrusted ids cannot mangle a terminal. Returns buf. */
char *sanitize_printable(const char *s, char *buf, size_t n);
