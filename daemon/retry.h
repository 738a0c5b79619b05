/* Backoff for failed closes: after a failure a session is not tried again
 * before base × 2^(failures-1) (capped, with jitter) or the gateway's
 * Retry-After, whichever is later. Pure apart from the table itself. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "session.h"

struct retry_table;

int retry_table_new(struct retry_table **ret);
void retry_table_free(struct retry_table *t);

/* The delay before the next attempt after `failures` consecutive failures:
 * base_ms × 2^(failures-1), capped at cap_ms, then scaled by a jitter factor
 * in [0.5, 1.0] taken from `random` (any 32-bit value), and never shorter than
 * retry_after_ms. */
uint64_t retry_delay_ms(unsigned failures, uint64_t base_ms, uint64_t cap_ms, uint64_t retry_after_ms,
                        uint32_t random);

/* Whether the session must wait; if so *ret_wait_ms says how long. */
bool retry_blocked(const struct retry_table *t, const char *session_id, int64_t now_ms,
                   uint64_t *ret_wait_ms);

/* Records a failure. Returns the number of consecutive failures, or -ENOMEM. */
int retry_failed(struct retry_table *t, const char *session_id, int64_t now_ms, uint64_t base_ms,
                 uint64_t cap_ms, uint64_t retry_after_ms, uint32_t random);

/* Forgets a session (closed, gone, or no longer listed). */
void retry_forget(struct retry_table *t, const char *session_id);

/* Forgets every session that is not in the list. */
void retry_prune(struct retry_table *t, const struct session_list *l);

size_t retry_size(const struct retry_table *t);
