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

/* strdup() that accepts NULL. */
char *strdup_or_null(const char *s);

/* Reads a whole regular file of at most max_size bytes into a NUL-terminated
 * buffer. Returns 0 or a negative errno (-EFBIG when the file is too large). */
int read_file_full(const char *path, size_t max_size, char **ret_data, size_t *ret_size);

/* Writes data to path atomically: a temporary file in the same directory,
 * fsync, rename over path, fsync of the directory. Returns 0 or -errno. */
int write_file_atomic(const char *path, const char *data, size_t size, unsigned mode);

/* Copies s into buf (size n), replacing bytes that are not printable ASCII
 * with '?', so that untrusted ids cannot mangle a terminal. Returns buf. */
char *sanitize_printable(const char *s, char *buf, size_t n);
