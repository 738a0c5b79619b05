#include "ha.h"

#include <assert.h>
#include <cJSON.h>
#include <errno.h>
#include <inttypes.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"
#include "log.h"
#include "util.h"
#include "globlist.h"

#define HA_MAX_RESPONSE (1024 * 1024)

/* What the one request in flight is. */
enum step {
        STEP_NONE,
        STEP_RANGE,     /* standby: is there a leader? */
        STEP_GRANT,     /* standby, no leader: a lease for the attempt */
        STEP_TXN,       /* create the key with that lease, if it does not exist */
        STEP_KEEPALIVE, /* leader: renew the lease */
        STEP_CHECK,     /* leader: is the key still ours? */
        STEP_REVOKE,    /* stopping: give the lease back */
};

/* A request in flight: one of the election, and the revoke at the end. */
struct req {
        struct ha *h;
        enum step step;
        int64_t sent_ms;
};

struct ha {
        struct ev_loop *loop;
        struct http *http;
        struct glob_list endpoints; /* own copy; the file's (normalized) URLs */
        char *name;
        uint64_t lease_ms;
        char *key; /* key_prefix "leader" */
        char *key_b64, *name_b64;
        unsigned ttl_s;
        size_t endpoint; /* index into endpoints.items */
        enum ha_role role;
        char lease[24]; /* the leader's lease ID ("" when none) */
        char attempt[24];
        int64_t last_ok_ms;      /* leader: when the last keepalive etcd confirmed was sent */
        int64_t last_contact_ms; /* when etcd last answered anything */
        char leader[65];
        struct req req[2];        /* [0] the election's, [1] the revoke */
        void (*released)(void *); /* ha_release(): told when the revoke is done */
        void *released_userdata;
        bool stopped;
        bool announced; /* the role has been told at least once */
        ev_timer tick;
        ha_role_fn fn;
        void *userdata;
};

static const char *const role_names[] = {
        [HA_STANDBY] = "standby",
        [HA_LEADER] = "leader",
        [HA_UNREACHABLE] = "unreachable",
};

const char *ha_role_to_string(enum ha_role r) {
        return r <= HA_UNREACHABLE ? role_names[r] : "?";
}

static char *base64(const char *s) {
        size_t n = strlen(s);
        char *out = malloc(4 * ((n + 2) / 3) + 1);

        if (out)
                EVP_EncodeBlock((unsigned char *) out, (const unsigned char *) s, (int) n);
        return out;
}

/* Decodes base64 text into buf (at most n - 1 bytes and a NUL); false when
 * it is not base64 or does not fit. */
static bool unbase64(const char *in, char *buf, size_t n) {
        size_t len = strlen(in), pad = 0;
        unsigned char *tmp;
        int r;

        if (len % 4 != 0 || len / 4 * 3 >= n + 2)
                return false;
        tmp = malloc(len / 4 * 3 + 1);
        if (!tmp)
                return false;
        r = EVP_DecodeBlock(tmp, (const unsigned char *) in, (int) len);
        pad = len >= 1 && in[len - 1] == '=' ? (len >= 2 && in[len - 2] == '=' ? 2 : 1) : 0;
        if (r < 0 || (size_t) r < pad || (size_t) r - pad >= n || memchr(tmp, '\0', (size_t) r - pad)) {
                free(tmp);
                return false;
        }
        memcpy(buf, tmp, (size_t) r - pad);
        buf[(size_t) r - pad] = '\0';
        free(tmp);
        return true;
}

/* etcd's JSON writes 64-bit integers as strings; accept numbers too. The ID
 * is kept as the digits etcd wrote. */
static bool json_id(const cJSON *v, char *buf, size_t n) {
        if (cJSON_IsString(v) && v->valuestring[0] && strlen(v->valuestring) < n &&
            strspn(v->valuestring, "0123456789") == strlen(v->valuestring)) {
                strcpy(buf, v->valuestring);
                return true;
        }
        if (cJSON_IsNumber(v) && v->valuedouble > 0 && v->valuedouble < 9e15) {
                snprintf(buf, n, "%.0f", v->valuedouble);
                return true;
        }
        return false;
}

static long long json_int(const cJSON *v) {
        if (cJSON_IsString(v))
                return strtoll(v->valuestring, NULL, 10);
        if (cJSON_IsNumber(v))
                return (long long) v->valuedouble;
        return 0;
}

static void set_role(struct ha *h, enum ha_role role) {
        enum ha_role old = h->role;

        /* The first outcome of the election is told even when it is the
         * role an instance starts in (standby). */
        if (role == old && h->announced)
                return;
        h->announced = true;
        h->role = role;
        if (role != HA_LEADER)
                h->lease[0] = '\0';
        if (h->fn)
                h->fn(h, old, h->userdata);
}

static void done(const struct http_response *resp, void *userdata);

/* Sends one request to the current endpoint. Returns whether it went. */
static bool post(struct ha *h, enum step step, const char *path, cJSON *body) {
        struct req *req = &h->req[step == STEP_REVOKE];
        char *text = body ? cJSON_PrintUnformatted(body) : NULL;
        char *url = NULL;
        int r = -ENOMEM;

        cJSON_Delete(body);
        if (text && asprintf(&url, "%s%s", h->endpoints.items[h->endpoint], path) >= 0) {
                req->h = h;
                req->step = step;
                req->sent_ms = now_mono_ms();
                r = http_post_json(h->http, url, text, done, req);
        }
        if (r < 0) {
                req->step = STEP_NONE;
                log_warning("HA: cannot send a request to etcd: %s", strerror(-r));
        }
        free(url);
        cJSON_free(text);
        return r >= 0;
}

static cJSON *object_with_key(const struct ha *h) {
        cJSON *o = cJSON_CreateObject();

        if (o && !cJSON_AddStringToObject(o, "key", h->key_b64)) {
                cJSON_Delete(o);
                return NULL;
        }
        return o;
}

static void send_range(struct ha *h, enum step step) {
        post(h, step, "/v3/kv/range", object_with_key(h));
}

static void send_grant(struct ha *h) {
        cJSON *o = cJSON_CreateObject();

        if (o && !cJSON_AddNumberToObject(o, "TTL", h->ttl_s)) {
                cJSON_Delete(o);
                o = NULL;
        }
        post(h, STEP_GRANT, "/v3/lease/grant", o);
}

/* {"ID": lease}, for keepalive and revoke; NULL when memory runs out. */
static cJSON *object_with_lease(const char *lease) {
        cJSON *o = cJSON_CreateObject();

        if (o && !cJSON_AddStringToObject(o, "ID", lease)) {
                cJSON_Delete(o);
                return NULL;
        }
        return o;
}

static void send_keepalive(struct ha *h) {
        post(h, STEP_KEEPALIVE, "/v3/lease/keepalive", object_with_lease(h->lease));
}

/* Creates the key with the attempt's lease, only if no key exists (its
 * create revision is 0); else reads it, to learn who leads. */
static void send_txn(struct ha *h) {
        cJSON *o = cJSON_CreateObject(), *cmp = cJSON_CreateObject(), *put = cJSON_CreateObject();
        cJSON *range = object_with_key(h), *ok = cJSON_CreateObject(), *ko = cJSON_CreateObject();
        cJSON *a = NULL, *b = NULL, *c = NULL;
        bool built = o && cmp && put && range && ok && ko && (a = cJSON_AddArrayToObject(o, "compare")) &&
                     (b = cJSON_AddArrayToObject(o, "success")) &&
                     (c = cJSON_AddArrayToObject(o, "failure")) &&
                     cJSON_AddStringToObject(cmp, "key", h->key_b64) &&
                     cJSON_AddStringToObject(cmp, "result", "EQUAL") &&
                     cJSON_AddStringToObject(cmp, "target", "CREATE") &&
                     cJSON_AddStringToObject(cmp, "create_revision", "0") &&
                     cJSON_AddStringToObject(put, "key", h->key_b64) &&
                     cJSON_AddStringToObject(put, "value", h->name_b64) &&
                     cJSON_AddStringToObject(put, "lease", h->attempt);

        if (!built) {
                cJSON_Delete(o);
                cJSON_Delete(cmp);
                cJSON_Delete(put);
                cJSON_Delete(range);
                cJSON_Delete(ok);
                cJSON_Delete(ko);
                post(h, STEP_TXN, "/v3/kv/txn", NULL);
                return;
        }
        cJSON_AddItemToArray(a, cmp);
        cJSON_AddItemToObject(ok, "request_put", put);
        cJSON_AddItemToArray(b, ok);
        cJSON_AddItemToObject(ko, "request_range", range);
        cJSON_AddItemToArray(c, ko);
        post(h, STEP_TXN, "/v3/kv/txn", o);
}

/* The first key-value of a range reply (or of a txn's failure branch). */
static const cJSON *first_kv(const cJSON *range) {
        const cJSON *kvs = cJSON_GetObjectItemCaseSensitive(range, "kvs");

        return cJSON_IsArray(kvs) ? cJSON_GetArrayItem(kvs, 0) : NULL;
}

/* Learns the leader's name from a key-value. */
static void note_leader(struct ha *h, const cJSON *kv) {
        const cJSON *v = kv ? cJSON_GetObjectItemCaseSensitive(kv, "value") : NULL;
        char name[sizeof h->leader];

        if (cJSON_IsString(v) && unbase64(v->valuestring, name, sizeof name))
                sanitize_printable(name, h->leader, sizeof h->leader);
        else
                h->leader[0] = '\0';
}

static void failed(struct ha *h, const char *what, const char *why) {
        log_debug("HA: %s on %s failed: %s", what, h->endpoints.items[h->endpoint], why);
        /* The next request goes to the next endpoint. */
        h->endpoint = (h->endpoint + 1) % h->endpoints.n;
}

static void on_reply(struct ha *h, enum step step, int64_t sent_ms, const cJSON *root) {
        const cJSON *kv, *result, *v;
        char id[sizeof h->lease];

        switch (step) {
        case STEP_RANGE:
                kv = first_kv(root);
                if (kv) {
                        note_leader(h, kv);
                        set_role(h, HA_STANDBY);
                } else if (!h->stopped)
                        send_grant(h); /* no leader: try */
                break;
        case STEP_GRANT:
                if (!json_id(cJSON_GetObjectItemCaseSensitive(root, "ID"), id, sizeof id)) {
                        failed(h, "lease grant", "no lease ID in the reply");
                        break;
                }
                strcpy(h->attempt, id);
                h->last_ok_ms = sent_ms; /* the lease lives at least TTL from here */
                if (!h->stopped)
                        send_txn(h);
                break;
        case STEP_TXN:
                if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(root, "succeeded"))) {
                        strcpy(h->lease, h->attempt);
                        snprintf(h->leader, sizeof h->leader, "%s", h->name);
                        set_role(h, HA_LEADER);
                        break;
                }
                v = cJSON_GetObjectItemCaseSensitive(root, "responses");
                v = cJSON_IsArray(v) ? cJSON_GetArrayItem(v, 0) : NULL;
                v = v ? cJSON_GetObjectItemCaseSensitive(v, "response_range") : NULL;
                note_leader(h, v ? first_kv(v) : NULL);
                set_role(h, HA_STANDBY);
                break;
        case STEP_KEEPALIVE:
                result = cJSON_GetObjectItemCaseSensitive(root, "result");
                if (!json_id(cJSON_GetObjectItemCaseSensitive(result, "ID"), id, sizeof id) ||
                    strcmp(id, h->lease) != 0) {
                        failed(h, "keepalive", "the reply names another lease");
                        break;
                }
                if (json_int(cJSON_GetObjectItemCaseSensitive(result, "TTL")) <= 0) {
                        log_warning("HA: etcd says the lease of this leader (%s) has expired; stepping down",
                                    h->name);
                        set_role(h, HA_STANDBY);
                        break;
                }
                h->last_ok_ms = sent_ms;
                if (!h->stopped && h->role == HA_LEADER)
                        send_range(h, STEP_CHECK);
                break;
        case STEP_CHECK:
                kv = first_kv(root);
                v = kv ? cJSON_GetObjectItemCaseSensitive(kv, "lease") : NULL;
                if (!kv || !json_id(v, id, sizeof id) || strcmp(id, h->lease) != 0) {
                        note_leader(h, kv);
                        log_warning(
                                "HA: the election key is no longer held by this instance's lease; stepping down");
                        set_role(h, HA_STANDBY);
                }
                break;
        case STEP_REVOKE:
        case STEP_NONE:
                break;
        }
}

static void done(const struct http_response *resp, void *userdata) {
        struct req *req = userdata;
        struct ha *h = req->h;
        enum step step = req->step;
        cJSON *root = NULL;
        char why[160];

        req->step = STEP_NONE;
        if (step == STEP_REVOKE) {
                /* Whatever came back: the lease is given back, or expires. */
                if (h->released)
                        h->released(h->released_userdata);
                return;
        }
        if (resp->result != CURLE_OK || resp->status != 200 || resp->too_large) {
                snprintf(why, sizeof why, "%s",
                         resp->result != CURLE_OK ? resp->error
                         : resp->too_large        ? "reply too large"
                                                  : "HTTP error");
                if (resp->result == CURLE_OK && resp->status != 200)
                        snprintf(why, sizeof why, "HTTP %ld", resp->status);
                failed(h, step == STEP_KEEPALIVE ? "keepalive" : "request", why);
                return;
        }
        root = cJSON_ParseWithLength(resp->body, resp->body_len);
        if (!cJSON_IsObject(root) || cJSON_GetObjectItemCaseSensitive(root, "error")) {
                failed(h, "request", root ? "etcd reported an error" : "the reply is not JSON");
                cJSON_Delete(root);
                return;
        }
        h->last_contact_ms = now_mono_ms();
        if (h->stopped) {
                cJSON_Delete(root);
                return;
        }
        if (h->role == HA_UNREACHABLE && step != STEP_KEEPALIVE && step != STEP_CHECK)
                set_role(h, HA_STANDBY);
        on_reply(h, step, req->sent_ms, root);
        cJSON_Delete(root);
}

static void tick_cb(struct ev_loop *loop, ev_timer *w, int revents) {
        struct ha *h = w->data;
        int64_t now = now_mono_ms();

        (void) loop;
        (void) revents;
        if (h->stopped)
                return;
        /* Fencing: no lease confirmed for lease/2 means no leader here. */
        if (h->role == HA_LEADER && now - h->last_ok_ms > (int64_t) h->lease_ms / 2) {
                log_warning("HA: no keepalive confirmed by etcd for %" PRIu64 " ms; stepping down",
                            h->lease_ms / 2);
                set_role(h,
                         now - h->last_contact_ms > (int64_t) h->lease_ms / 2 ? HA_UNREACHABLE : HA_STANDBY);
        } else if (h->role == HA_STANDBY && now - h->last_contact_ms > (int64_t) h->lease_ms / 2)
                set_role(h, HA_UNREACHABLE);
        if (h->req[0].step != STEP_NONE)
                return; /* one request at a time; curl's timeout bounds it */
        if (h->role == HA_LEADER)
                send_keepalive(h);
        else
                send_range(h, STEP_RANGE);
}

int ha_new(struct ev_loop *loop, const struct ha_config *cfg, ha_role_fn fn, void *userdata, struct ha **ret,
           struct error *err) {
        struct ha *h;
        struct http_options opt;
        int r;

        assert(loop && cfg && cfg->enabled && cfg->endpoints.n > 0 && cfg->name && ret);
        h = calloc(1, sizeof *h);
        if (!h)
                return -ENOMEM;
        h->loop = loop;
        h->fn = fn;
        h->userdata = userdata;
        h->role = HA_STANDBY;
        h->lease_ms = cfg->lease_ms;
        h->ttl_s = (unsigned) ((cfg->lease_ms + 999) / 1000);
        if (glob_list_copy(&h->endpoints, &cfg->endpoints) < 0 || !(h->name = strdup(cfg->name)) ||
            asprintf(&h->key, "%sleader", cfg->key_prefix) < 0 || !(h->key_b64 = base64(h->key)) ||
            !(h->name_b64 = base64(cfg->name))) {
                ha_free(h);
                return -ENOMEM;
        }
        /* Every request is bounded by lease/3: a hung etcd cannot hold the
         * election past the point where the leader must step down. */
        opt = (struct http_options){ .ca_file = cfg->ca_file,
                                     .cert_file = cfg->cert_file,
                                     .key_file = cfg->key_file,
                                     .timeout_ms = (long) (cfg->lease_ms / 3),
                                     .connect_timeout_ms = (long) (cfg->lease_ms / 3),
                                     .max_response_size = HA_MAX_RESPONSE,
                                     .max_connections = 2 };
        r = http_new(loop, &opt, &h->http);
        if (r < 0) {
                ha_free(h);
                return error_set(err, r, "HA: cannot set up HTTP for etcd: %s", strerror(-r));
        }
        h->last_contact_ms = now_mono_ms();
        ev_init(&h->tick, tick_cb);
        h->tick.data = h;
        *ret = h;
        return 0;
}

void ha_start(struct ha *h) {
        /* Renew six times per lease: a keepalive confirmed less than lease/3
         * ago is then the rule, not the exception. */
        double every = (double) h->lease_ms / 6000.0;

        ev_timer_set(&h->tick, 0., every < 0.1 ? 0.1 : every);
        ev_timer_start(h->loop, &h->tick);
}

bool ha_release(struct ha *h, void (*released)(void *), void *userdata) {
        bool pending = false;

        if (!h || h->stopped)
                return false;
        h->stopped = true;
        ev_timer_stop(h->loop, &h->tick);
        if (h->role == HA_LEADER && h->lease[0]) {
                h->released = released;
                h->released_userdata = userdata;
                pending = post(h, STEP_REVOKE, "/v3/lease/revoke", object_with_lease(h->lease));
                log_info("HA: %s gives up leadership%s", h->name,
                         pending ? " (revoking its lease)" : "; its lease expires by itself");
        }
        h->role = HA_STANDBY;
        h->lease[0] = '\0';
        return pending;
}

void ha_free(struct ha *h) {
        if (!h)
                return;
        if (h->loop)
                ev_timer_stop(h->loop, &h->tick);
        http_free(h->http);
        glob_list_free(&h->endpoints);
        free(h->name);
        free(h->key);
        free(h->key_b64);
        free(h->name_b64);
        free(h);
}

enum ha_role ha_role(const struct ha *h) {
        return h->role;
}

bool ha_may_dispatch(const struct ha *h, int64_t now_mono_ms) {
        return h->role == HA_LEADER && !h->stopped &&
               now_mono_ms - h->last_ok_ms < (int64_t) h->lease_ms / 3;
}

const char *ha_name(const struct ha *h) {
        return h->name;
}

const char *ha_leader(const struct ha *h) {
        return h->leader;
}
