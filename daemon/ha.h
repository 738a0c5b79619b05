/* Active/standby instances elected through etcd (the `ha:` section).
 *
 * One election key, KEY_PREFIX "leader", holds the leader's name, attached
 * to the leader's lease. An instance becomes leader by a transaction that
 * creates the key only if it does not exist (create revision 0), so a
 * standby takes over only once the old leader's lease has expired in etcd
 * and the key with it. Everything goes through etcd's v3 JSON gateway
 * (/v3/lease/grant, /v3/kv/txn, /v3/lease/keepalive, /v3/kv/range,
 * /v3/lease/revoke), with libcurl on the daemon's libev loop: one request at
 * a time, never blocking.
 *
 * Fencing: the leader may dispatch a close only while the last keepalive
 * that etcd confirmed was sent less than lease/3 ago; when none has been
 * confirmed for lease/2 it steps down. An instance that cannot reach etcd
 * closes nothing. */
#pragma once

#include <ev.h>
#include <stdbool.h>
#include <stdint.h>

#include "config.h"
#include "error.h"

enum ha_role {
        HA_STANDBY,     /* lists, keeps ages, closes nothing */
        HA_LEADER,      /* closes while its lease is fresh (ha_may_dispatch) */
        HA_UNREACHABLE, /* etcd has not answered for lease/2: closes nothing */
};

struct ha;

/* Told when the role changes. It runs inside the module's request callback:
 * it may record, log and arm watchers, not free the ha. */
typedef void (*ha_role_fn)(struct ha *h, enum ha_role old, void *userdata);

/* Copies cfg (enabled). Starts as standby; ha_start() begins the election.
 * Returns 0 or a negative errno with a message in err. */
int ha_new(struct ev_loop *loop, const struct ha_config *cfg, ha_role_fn fn, void *userdata, struct ha **ret,
           struct error *err);

void ha_start(struct ha *h);

/* Ends the election once the daemon has stopped sending (no request of
 * its own in flight). A leader keeps renewing its lease until then, and now
 * revokes it, so that a standby takes over at once. Returns true when the
 * revoke went out: released(userdata) is then called from the loop when it
 * is answered or has failed (within lease/3); the loop should run until
 * then. */
bool ha_release(struct ha *h, void (*released)(void *), void *userdata);

void ha_free(struct ha *h);

enum ha_role ha_role(const struct ha *h);
const char *ha_role_to_string(enum ha_role r);

/* Leader, and the lease confirmed by a keepalive sent less than lease/3
 * before now_mono_ms. */
bool ha_may_dispatch(const struct ha *h, int64_t now_mono_ms);

/* This instance's name, and the leader's as last read from etcd ("" when
 * unknown). */
const char *ha_name(const struct ha *h);
const char *ha_leader(const struct ha *h);
