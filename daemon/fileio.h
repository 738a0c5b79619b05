/* Whole-file reads, atomic writes and the few paths they care about. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

/* Reads a whole regular file of at most max_size bytes into a NUL-terminated
 * buffer. The file is opened without blocking, so a FIFO or device at path
 * cannot hang the caller. Returns 0 or a negative errno: -EFBIG when the
 * file is too large, -EISDIR for a directory, -EBADFD for anything else
 * that is not a regular file. */
int read_file_full(const char *path, size_t max_size, char **ret_data, size_t *ret_size);

/* What read_file_full() and friends mean by an error code, for messages:
 * strerror(), except that -EBADFD reads "not a regular file". */
const char *file_strerror(int negative_errno);

/* Writes data to path atomically: a temporary file ".#NAME.XXXXXX" in the
 * same directory, fsync, rename over path, fsync of the directory. When path
 * is a symbolic link, its target is replaced and the link kept. Returns 0 or
 * -errno. */
int write_file_atomic(const char *path, const char *data, size_t size, unsigned mode);

/* The file that path names: path itself, or, when path is a symbolic link,
 * what it points to (resolved fully; for a dangling link, its target next
 * to the link). target has room for PATH_MAX bytes. Returns 0 or -errno
 * (-ELOOP for a link loop). */
int path_follow_link(const char *path, char *target);

/* Whether name (a directory entry) is a temporary file that
 * write_file_atomic() for a file named base would create. */
bool is_atomic_temporary(const char *name, const char *base);

/* The kernel's boot id (/proc/sys/kernel/random/boot_id), else
 * $IVH_BOOT_ID (the unit's %b), as 36 characters with dashes. Returns 0, or
 * a negative errno with ret empty. */
int read_boot_id(char ret[37]);
