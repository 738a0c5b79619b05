/* The one error convention of the daemon.
 *
 * A function that can fail returns a negative errno (0, or a count, on
 * success). When its caller needs to know why, it takes a struct error *
 * as its last parameter and fills it with a message for people, which never
 * carries a secret; the caller prints or logs it and frees it with
 * error_done(). NULL means the caller does not want the message. A function
 * that logs its failures itself, instead, says "already logged" in its
 * comment and takes no struct error.
 *
 * Preconditions (what only a bug could break) are assert()ed at the entry
 * points of each module. */
#pragma once

struct error {
        char *message; /* NULL: none */
};

/* Sets e's message (replacing one already there) when e is not NULL, and
 * returns r, so that a function can `return error_set(err, -EINVAL, ...)`.
 * When memory runs out the message stays NULL. */
int error_set(struct error *e, int r, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Like error_set(), with a message already allocated (taken, also when e is
 * NULL). */
int error_take(struct error *e, int r, char *message);

/* The message, or "" when there is none. */
const char *error_message(const struct error *e);

void error_done(struct error *e);
