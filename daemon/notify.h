/* `notify:`: one account's webhook. Events wait in a durable queue
 * (notify-queue.h) and go out in signed batches of at most 100 through
 * their own HTTP handle on the daemon's loop, with their own timeout, so
 * that a receiver that hangs or fails costs the reclaims nothing. A failed
 * delivery is retried with exponential backoff and jitter (1 s doubling to
 * 5 min), or after the receiver's Retry-After. At least once: a receiver
 * de-duplicates by the event's id.
 *
 * Nothing here decides or delays a reclaim: the cycle hands over what it
 * did (notify_session()), after the fact, and nothing comes back. */
#pragma once

#include <ev.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "error.h"
#include "metrics.h"
#include "notify-event.h"

struct notifier;

/* Creates the account's notifier and loads its queue (a queue file that
 * cannot be read or written is warned about, and the queue kept in
 * memory: -ENOMEM is the only failure). metrics may be NULL.
 * Sends nothing until notifier_configure() and notifier_set_active(). */
int notifier_new(struct ev_loop *loop, const char *account, const char *queue_path, struct metrics *metrics,
                 struct notifier **ret, struct error *err);

/* Frees it; in-flight requests are cancelled (their events stay queued).
 * Never from inside its own callbacks. */
void notifier_free(struct notifier *n);

/* Takes the account's notify settings (copied) and the secret (copied;
 * NULL for format slack). poll_interval_ms sets how long a receiver may
 * fail before it counts as failing: max(5 min, 10 polls). A changed url,
 * secret, format, ca_file or timeout cancels a request in flight (its
 * events are sent again, to the new receiver) and forgets the backoff.
 * Returns 0 or -ENOMEM. */
int notifier_configure(struct notifier *n, const struct notify_config *cfg, const char *secret,
                       uint64_t poll_interval_ms);

/* Whether this instance may send (ha: the leader only). Events queue
 * either way. */
void notifier_set_active(struct notifier *n, bool active);

/* Whether events of type t are wanted. */
bool notifier_wants(const struct notifier *n, enum notify_type t);

/* Queues one session event (if its type is wanted). Safe from any
 * callback: it only queues, writes the queue file and arms a timer. */
void notify_session(struct notifier *n, enum notify_type t, const struct notify_session *s);

/* due_soon: the announce window (0: none). */
uint64_t notifier_due_soon_ms(const struct notifier *n);

/* Events said once per session and policy while the session stays listed
 * (due_soon, would_reclaim): a cycle starts a round when it has its list,
 * which forgets what the previous round did not see again; notify_once()
 * queues the event the first time in a row of rounds, and marks it seen. */
void notify_new_round(struct notifier *n);
void notify_once(struct notifier *n, enum notify_type t, const struct notify_session *s);

/* Whether the account can reclaim: reason NULL when it can, else the words
 * STATUS= uses. A change between the two queues reclaiming_stopped or
 * reclaiming_resumed. */
void notify_reclaiming(struct notifier *n, const char *reason);

/* For STATUS=: "notifications to URL failing for 7m: REASON" into buf when
 * the receiver has failed for longer than max(5 min, 10 polls), else NULL. */
const char *notifier_problem(const struct notifier *n, char *buf, size_t len);

/* Brings the queue gauges of the metrics up to date. */
void notifier_update_metrics(struct notifier *n);
