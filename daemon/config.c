#include "config.h"

#include <arpa/inet.h>
#include <assert.h>
#include <curl/curl.h>
#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fileio.h"
#include "notify-event.h"
#include "util.h"
#include "config-internal.h"
#include "strmap.h"
#include "yamlread.h"

#define MAX_PARALLEL_LIMIT   256
#define MIN_POLL_INTERVAL_MS 10
#define MIN_TIMEOUT_MS       100

static const char *const kind_names[] = {
        [POLICY_FAILED] = "failed",
        [POLICY_NOT_STARTED] = "not_started",
        [POLICY_MAX_AGE] = "max_age",
        [POLICY_OVER_CAPACITY] = "over_capacity",
};

const char *config_account_name(const struct config *c) {
        return c->account ? c->account : "default";
}

bool config_is_plan_word(const char *s) {
        /* decide_outcome_to_string() of every outcome but DECIDE_CLOSE and
         * DECIDE_SENT (test-config checks that the two lists agree). */
        static const char *const words[] = { "keep", "protected", "fused", "backing_off", "deferred" };

        for (size_t i = 0; i < ELEMENTSOF(words); i++)
                if (strcmp(s, words[i]) == 0)
                        return true;
        return false;
}

const char *policy_kind_to_string(enum policy_kind k) {
        return (size_t) k < ELEMENTSOF(kind_names) ? kind_names[k] : "unknown";
}

bool config_host_is_loopback(const char *host) {
        struct in_addr a4;
        struct in6_addr a6;
        char buf[64];
        size_t len;

        if (!host)
                return false;
        if (strcasecmp(host, "localhost") == 0)
                return true;
        if (inet_pton(AF_INET, host, &a4) == 1)
                return (ntohl(a4.s_addr) >> 24) == 127;
        len = strlen(host);
        if (len >= 2 && host[0] == '[' && host[len - 1] == ']' && len - 2 < sizeof buf) {
                memcpy(buf, host + 1, len - 2);
                buf[len - 2] = '\0';
                host = buf;
        }
        return inet_pton(AF_INET6, host, &a6) == 1 && IN6_IS_ADDR_LOOPBACK(&a6);
}

/* https://host[:port][/path], or http:// for loopback hosts only. */
static void check_url(struct yaml_reader *p, yaml_node_t *n, const char *what, const char *url, bool show) {
        CURLU *u = curl_url();
        char *scheme = NULL, *host = NULL, *query = NULL, *fragment = NULL, *user = NULL;

        if (!u) {
                p->oom = true;
                return;
        }
        if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK) {
                yaml_error(p, n, "%s: '%s' is not a valid URL", what,
                           show ? url : "(not shown: its path may hold a secret)");
                goto out;
        }
        curl_url_get(u, CURLUPART_SCHEME, &scheme, 0);
        curl_url_get(u, CURLUPART_HOST, &host, 0);
        curl_url_get(u, CURLUPART_QUERY, &query, 0);
        curl_url_get(u, CURLUPART_FRAGMENT, &fragment, 0);
        curl_url_get(u, CURLUPART_USER, &user, 0);
        if (!scheme || (strcasecmp(scheme, "https") != 0 && strcasecmp(scheme, "http") != 0))
                yaml_error(p, n, "%s: scheme must be https (http only for loopback)", what);
        else if (!host || !*host)
                yaml_error(p, n, "%s: '%s' names no host", what,
                           show ? url : "(not shown: its path may hold a secret)");
        else if (strcasecmp(scheme, "http") == 0 && !config_host_is_loopback(host))
                yaml_error(p, n, "%s: plain http is refused for non-loopback host '%s'; use https", what,
                           host);
        if (query || fragment || user)
                yaml_error(p, n, "%s: must not carry credentials, a query or a fragment", what);
out:
        curl_free(scheme);
        curl_free(host);
        curl_free(query);
        curl_free(fragment);
        curl_free(user);
        curl_url_cleanup(u);
}

/* Rules about single values, run once a value was read. */

static void check_gateway_url(struct yaml_reader *p, const char *where, yaml_node_t *v, void *field) {
        char *url = *(char **) field;
        size_t len = strlen(url);

        (void) where;
        while (len > 0 && url[len - 1] == '/')
                url[--len] = '\0';
        check_url(p, v, "gateway.url", url, true);
}

static void check_appkey(struct yaml_reader *p, const char *where, yaml_node_t *v, void *field) {
        const char *s = *(char **) field;

        (void) where;
        if (!yaml_only_name_chars(s, "-_."))
                yaml_error(p, v, "gateway.appkey: may contain only letters, digits, '-', '_' and '.'");
        else if (strlen(s) > 128)
                yaml_error(p, v, "gateway.appkey: longer than 128 characters");
}

static void check_policy_name(struct yaml_reader *p, const char *where, yaml_node_t *v, void *field) {
        const char *s = *(char **) field;

        if (!yaml_only_name_chars(s, "-_."))
                yaml_error(p, v, "%s: may contain only letters, digits, '-', '_' and '.'", where);
        else if (config_is_plan_word(s))
                yaml_error(p, v, "%s: '%s' is reserved for --plan output; choose another name", where, s);
}

static void check_account_name(struct yaml_reader *p, const char *where, yaml_node_t *v, void *field) {
        if (!yaml_only_name_chars(*(char **) field, "-_"))
                yaml_error(p, v, "%s: may contain only letters, digits, '-' and '_'", where);
}

static bool kind_from_string(const char *s, enum policy_kind *ret) {
        for (size_t i = 0; s && i < ELEMENTSOF(kind_names); i++)
                if (strcmp(s, kind_names[i]) == 0) {
                        *ret = (enum policy_kind) i;
                        return true;
                }
        return false;
}

static void parse_kind(struct yaml_reader *p, const char *where, yaml_node_t *v, void *base) {
        struct policy *pol = base;
        const char *s = yaml_scalar(v);
        const char *hint;

        if (kind_from_string(s, &pol->kind))
                return;
        hint = yaml_nearest_word(s, kind_names, ELEMENTSOF(kind_names));
        yaml_error(p, v, "%s: expected one of failed, not_started, max_age, over_capacity, got %s%s%s%s%s%s",
                   where, s ? "'" : yaml_type_name(v), s ? s : "", s ? "'" : "",
                   hint ? ", did you mean '" : "", hint ? hint : "", hint ? "'?" : "");
}

/* An empty selector would select every user (project, asset): a template
 * that renders an empty list must not widen the policy. */
static void read_selector(struct yaml_reader *p, const char *where, yaml_node_t *v, struct glob_list *dst,
                          const char *key, const char *what) {
        if (yaml_is_null(v))
                yaml_error(p, v,
                           "%s: is empty (null), which would select every %s; omit %s to match every %s",
                           where, what, key, what);
        else if (v->type == YAML_SEQUENCE_NODE && v->data.sequence.items.top == v->data.sequence.items.start)
                yaml_error(p, v,
                           "%s: is an empty list, which would select every %s; omit %s to match every %s",
                           where, what, key, what);
        else
                yaml_read_globs(p, where, v, dst);
}

static void parse_selector(struct yaml_reader *p, const char *where, yaml_node_t *v, void *base) {
        read_selector(p, where, v, &((struct policy *) base)->user_ids, "user_ids", "user");
}

static void parse_project_selector(struct yaml_reader *p, const char *where, yaml_node_t *v, void *base) {
        read_selector(p, where, v, &((struct policy *) base)->project_ids, "project_ids", "project");
}

static void parse_asset_selector(struct yaml_reader *p, const char *where, yaml_node_t *v, void *base) {
        read_selector(p, where, v, &((struct policy *) base)->asset_vks, "asset_vks", "asset");
}

static void parse_policies(struct yaml_reader *p, const char *where, yaml_node_t *n, void *base);
static void parse_ha(struct yaml_reader *p, const char *where, yaml_node_t *v, void *base);
static void parse_account_protect(struct yaml_reader *p, const char *where, yaml_node_t *v, void *base);
static void parse_later(struct yaml_reader *p, const char *where, yaml_node_t *v, void *base) {
        /* accounts: read after the top level, whose settings accounts inherit. */
        (void) p, (void) where, (void) v, (void) base;
}

/* Where the file sets map's appkey, for --check-config's messages (the
 * check of the value itself may run on a copy of it). */
static void note_appkey_position(struct yaml_reader *p, yaml_node_t *map, struct gateway_config *g) {
        yaml_node_t *v = yaml_find(p, map, "appkey");

        if (v) {
                g->appkey_line = (unsigned) v->start_mark.line + 1;
                g->appkey_column = (unsigned) v->start_mark.column + 1;
        }
}

/* The schema of the policy file: one row per key. Adding a key is a row here
 * (and YAML_K_ACCOUNT in gateway_keys for a gateway key an account may
 * set for itself) plus its
 * documentation in doc/ivh-reclaimd.yaml.5.scd (tests/check-docs.py checks
 * that it is there). Messages about a value name it as
 * PREFIX.KEY; defaults are written as in the file and read by the same
 * code. */

static const struct yaml_key gateway_keys[] = {
        { .name = "url",
          .type = YAML_T_STRING,
          .offset = offsetof(struct gateway_config, url),
          .flags = YAML_K_INHERITED | YAML_K_ACCOUNT,
          .def = CONFIG_DEFAULT_URL,
          .check = check_gateway_url },
        { .name = "appkey",
          .type = YAML_T_STRING,
          .offset = offsetof(struct gateway_config, appkey),
          .flags = YAML_K_CHECK_PREFIX | YAML_K_ACCOUNT,
          .check = check_appkey },
        { .name = "accesstoken_file",
          .type = YAML_T_STRING_OR_NULL,
          .offset = offsetof(struct gateway_config, accesstoken_file),
          .flags = YAML_K_ACCOUNT },
        { .name = "ca_file",
          .type = YAML_T_STRING_OR_NULL,
          .offset = offsetof(struct gateway_config, ca_file),
          .flags = YAML_K_INHERITED },
        { .name = "timeout",
          .type = YAML_T_DURATION,
          .offset = offsetof(struct gateway_config, timeout_ms),
          .flags = YAML_K_INHERITED,
          .def = "10s",
          .min = MIN_TIMEOUT_MS },
        { .name = "max_parallel",
          .type = YAML_T_UINT,
          .offset = offsetof(struct gateway_config, max_parallel),
          .flags = YAML_K_INHERITED,
          .def = "16",
          .min = 1,
          .max = MAX_PARALLEL_LIMIT },
        { .name = "project_ids",
          .type = YAML_T_IDS,
          .offset = offsetof(struct gateway_config, project_ids),
          .flags = YAML_K_ACCOUNT },
        { .name = "asset_vks",
          .type = YAML_T_IDS,
          .offset = offsetof(struct gateway_config, asset_vks),
          .flags = YAML_K_ACCOUNT },
        { .name = "max_rate",
          .type = YAML_T_RATE,
          .offset = offsetof(struct gateway_config, max_rate),
          .flags = YAML_K_INHERITED | YAML_K_ACCOUNT },
        {},
};

static void check_notify_url(struct yaml_reader *p, const char *where, yaml_node_t *v, void *field) {
        check_url(p, v, where, *(char **) field, false);
}

static void check_notify_format(struct yaml_reader *p, const char *where, yaml_node_t *v, void *field) {
        static const char *const formats[] = { "json", "slack" };
        const char *s = *(char **) field, *hint;

        if (strcmp(s, "json") == 0 || strcmp(s, "slack") == 0)
                return;
        hint = yaml_nearest_word(s, formats, ELEMENTSOF(formats));
        yaml_error(p, v, "%s: expected json or slack, got '%s'%s%s%s", where, s,
                   hint ? ", did you mean '" : "", hint ? hint : "", hint ? "'?" : "");
}

static void check_notify_events(struct yaml_reader *p, const char *where, yaml_node_t *v, void *field) {
        const struct glob_list *l = field;

        if (l->n == 0)
                yaml_error(p, v, "%s: is empty, which would send nothing; omit events to send every event",
                           where);
        for (size_t i = 0; i < l->n; i++) {
                const char *hint;

                if (notify_type_from_string(l->items[i]) >= 0)
                        continue;
                hint = yaml_nearest_word(l->items[i], notify_type_names, NOTIFY_TYPES);
                yaml_error(
                        p, v,
                        "%s: unknown event '%s' (events: reclaimed, would_reclaim, due_soon, close_failed, reclaiming_stopped, reclaiming_resumed)%s%s%s",
                        where, l->items[i], hint ? ", did you mean '" : "", hint ? hint : "",
                        hint ? "'?" : "");
        }
}

/* notify: every key may change on reload. */
static const struct yaml_key notify_keys[] = {
        { .name = "url",
          .type = YAML_T_STRING,
          .offset = offsetof(struct notify_config, url),
          .check = check_notify_url },
        { .name = "secret_file",
          .type = YAML_T_STRING_OR_NULL,
          .offset = offsetof(struct notify_config, secret_file) },
        { .name = "ca_file",
          .type = YAML_T_STRING_OR_NULL,
          .offset = offsetof(struct notify_config, ca_file) },
        { .name = "format",
          .type = YAML_T_STRING,
          .offset = offsetof(struct notify_config, format),
          .def = "json",
          .check = check_notify_format },
        { .name = "events",
          .type = YAML_T_IDS,
          .offset = offsetof(struct notify_config, events),
          .check = check_notify_events },
        { .name = "due_soon",
          .type = YAML_T_DURATION,
          .offset = offsetof(struct notify_config, due_soon_ms),
          .def = "0s" },
        { .name = "timeout",
          .type = YAML_T_DURATION,
          .offset = offsetof(struct notify_config, timeout_ms),
          .def = "10s",
          .min = MIN_TIMEOUT_MS },
        { .name = "max_queue",
          .type = YAML_T_UINT,
          .offset = offsetof(struct notify_config, max_queue),
          .def = "10000",
          .min = 1,
          .max = 100000 },
        { .name = "max_age",
          .type = YAML_T_DURATION,
          .offset = offsetof(struct notify_config, max_age_ms),
          .def = "24h",
          .min = 60000 },
        {},
};

static const struct yaml_key fuse_keys[] = {
        { .name = "max_share",
          .type = YAML_T_SHARE,
          .offset = offsetof(struct fuse_config, max_share),
          .def = "50%" },
        { .name = "min_sessions",
          .type = YAML_T_UINT,
          .offset = offsetof(struct fuse_config, min_sessions),
          .def = "10",
          .max = 1000000 },
        {},
};

static const struct yaml_key protect_keys[] = {
        { .name = "user_ids", .type = YAML_T_GLOBS, .offset = offsetof(struct config, protect_user_ids) },
        { .name = "session_ids",
          .type = YAML_T_GLOBS,
          .offset = offsetof(struct config, protect_session_ids) },
        { .name = "project_ids",
          .type = YAML_T_GLOBS,
          .offset = offsetof(struct config, protect_project_ids) },
        { .name = "asset_vks", .type = YAML_T_GLOBS, .offset = offsetof(struct config, protect_asset_vks) },
        {},
};

static const struct yaml_key top_keys[] = {
        { .name = "gateway",
          .type = YAML_T_SECTION,
          .offset = offsetof(struct config, gateway),
          .section = gateway_keys },
        { .name = "poll_interval",
          .type = YAML_T_DURATION,
          .offset = offsetof(struct config, poll_interval_ms),
          .flags = YAML_K_INHERITED,
          .def = "30s",
          .min = MIN_POLL_INTERVAL_MS },
        { .name = "state_file",
          .type = YAML_T_STRING,
          .offset = offsetof(struct config, state_file),
          .flags = YAML_K_RESTART,
          .def = CONFIG_DEFAULT_STATE_FILE },
        { .name = "dry_run",
          .type = YAML_T_BOOL,
          .offset = offsetof(struct config, dry_run),
          .flags = YAML_K_INHERITED },
        { .name = "max_closes_per_cycle",
          .type = YAML_T_UINT,
          .offset = offsetof(struct config, max_closes_per_cycle),
          .flags = YAML_K_INHERITED,
          .def = "100",
          .min = 1,
          .max = 1000000 },
        /* The struct is the config itself: its two lists live there. */
        { .name = "protect",
          .type = YAML_T_SECTION,
          .offset = 0,
          .flags = YAML_K_INHERITED | YAML_K_NULL_OK,
          .section = protect_keys },
        { .name = "policies", .type = YAML_T_CUSTOM, .parse = parse_policies },
        { .name = "fuse",
          .type = YAML_T_SECTION,
          .offset = offsetof(struct config, fuse),
          .flags = YAML_K_INHERITED | YAML_K_NULL_OK,
          .section = fuse_keys },
        { .name = "recheck_before_close",
          .type = YAML_T_BOOL,
          .offset = offsetof(struct config, recheck_before_close),
          .flags = YAML_K_INHERITED,
          .def = "true" },
        { .name = "metrics_file",
          .type = YAML_T_STRING_OR_NULL,
          .offset = offsetof(struct config, metrics_file) },
        { .name = "accounts", .type = YAML_T_CUSTOM, .parse = parse_later },
        { .name = "ha", .type = YAML_T_CUSTOM, .parse = parse_ha },
        { .name = "notify",
          .type = YAML_T_SECTION,
          .offset = offsetof(struct config, notify),
          .flags = YAML_K_INHERITED,
          .section = notify_keys },
        {},
};

/* etcd client URLs, by the gateway's rules: https, http only for loopback.
 * A trailing slash is dropped, so that "a/" and "a" are one endpoint. */
static void check_endpoints(struct yaml_reader *p, const char *where, yaml_node_t *v, void *field) {
        const struct glob_list *l = field;

        if (l->n == 0)
                yaml_error(p, v, "%s: needs at least one etcd endpoint", where);
        for (size_t i = 0; i < l->n; i++) {
                size_t len = strlen(l->items[i]);

                while (len > 0 && l->items[i][len - 1] == '/')
                        l->items[i][--len] = '\0';
                check_url(p, v, where, l->items[i], true);
        }
}

static void check_ha_name(struct yaml_reader *p, const char *where, yaml_node_t *v, void *field) {
        const char *s = *(char **) field;

        if (s && (!yaml_only_name_chars(s, "-_.") || strlen(s) > 64))
                yaml_error(p, v, "%s: may contain only letters, digits, '-', '_' and '.', at most 64",
                           where);
}

/* Every key needs a restart: the election runs for the process's lifetime. */
static const struct yaml_key ha_keys[] = {
        { .name = "endpoints",
          .type = YAML_T_IDS,
          .offset = offsetof(struct ha_config, endpoints),
          .flags = YAML_K_RESTART,
          .check = check_endpoints },
        { .name = "ca_file",
          .type = YAML_T_STRING_OR_NULL,
          .offset = offsetof(struct ha_config, ca_file),
          .flags = YAML_K_RESTART },
        { .name = "cert_file",
          .type = YAML_T_STRING_OR_NULL,
          .offset = offsetof(struct ha_config, cert_file),
          .flags = YAML_K_RESTART },
        { .name = "key_file",
          .type = YAML_T_STRING_OR_NULL,
          .offset = offsetof(struct ha_config, key_file),
          .flags = YAML_K_RESTART },
        { .name = "name",
          .type = YAML_T_STRING_OR_NULL,
          .offset = offsetof(struct ha_config, name),
          .flags = YAML_K_RESTART,
          .check = check_ha_name },
        { .name = "lease",
          .type = YAML_T_DURATION,
          .offset = offsetof(struct ha_config, lease_ms),
          .flags = YAML_K_RESTART,
          .def = "10s",
          .min = 2000 },
        { .name = "key_prefix",
          .type = YAML_T_STRING,
          .offset = offsetof(struct ha_config, key_prefix),
          .flags = YAML_K_RESTART,
          .def = "/ivh-reclaimd/" },
        {},
};

static void parse_ha(struct yaml_reader *p, const char *where, yaml_node_t *v, void *base) {
        struct config *c = base;
        static const char *const required[] = { "endpoints", NULL };

        (void) where;
        if (v->type != YAML_MAPPING_NODE) {
                yaml_error(p, v, "ha: must be a mapping with at least 'endpoints'");
                return;
        }
        if (yaml_defaults(ha_keys, &c->ha) < 0) {
                p->oom = true;
                return;
        }
        c->ha.enabled = true;
        yaml_walk(p, "ha", v, ha_keys, &c->ha, "ha");
        yaml_require(p, "ha", v, required);
        if (!!c->ha.cert_file != !!c->ha.key_file)
                yaml_error(p, yaml_find(p, v, c->ha.cert_file ? "cert_file" : "key_file"),
                           "ha: cert_file and key_file go together");
        if (c->ha.lease_ms % 1000 != 0)
                yaml_error(p, yaml_find(p, v, "lease"),
                           "ha.lease: must be whole seconds (etcd leases count seconds)");
        if (!c->ha.name) {
                char host[256] = "";

                if (gethostname(host, sizeof host - 1) < 0 || !yaml_only_name_chars(host, "-_.") ||
                    strlen(host) > 64 || !*host)
                        yaml_error(p, v, "ha.name: not set, and the host name cannot serve; set ha.name");
                else if (!(c->ha.name = strdup(host)))
                        p->oom = true;
        }
}

static const struct yaml_key policy_keys[] = {
        { .name = "name",
          .type = YAML_T_STRING,
          .offset = offsetof(struct policy, name),
          .flags = YAML_K_CHECK_PREFIX,
          .check = check_policy_name },
        { .name = "kind", .type = YAML_T_CUSTOM, .parse = parse_kind },
        { .name = "after", .type = YAML_T_DURATION, .offset = offsetof(struct policy, after_ms) },
        { .name = "user_ids", .type = YAML_T_CUSTOM, .parse = parse_selector },
        { .name = "project_ids", .type = YAML_T_CUSTOM, .parse = parse_project_selector },
        { .name = "asset_vks", .type = YAML_T_CUSTOM, .parse = parse_asset_selector },
        { .name = "capacity",
          .type = YAML_T_UINT,
          .offset = offsetof(struct policy, capacity),
          .min = 1,
          .max = 1000000 },
        { .name = "keep_free",
          .type = YAML_T_UINT,
          .offset = offsetof(struct policy, keep_free),
          .max = 1000000 },
        {},
};

/* An account: its name, policies and extra protect rules, and the gateway
 * keys it may set for itself (read as under gateway:). */
static const struct yaml_key account_keys[] = {
        { .name = "name",
          .type = YAML_T_STRING,
          .offset = offsetof(struct config, account),
          .flags = YAML_K_CHECK_PREFIX,
          .check = check_account_name },
        /* gateway_keys' rows flagged YAML_K_ACCOUNT, as gateway.KEY */
        { .name = "(gateway keys of an account)",
          .type = YAML_T_INLINE,
          .offset = offsetof(struct config, gateway),
          .section = gateway_keys,
          .where = "gateway" },
        { .name = "policies", .type = YAML_T_CUSTOM, .parse = parse_policies },
        { .name = "protect", .type = YAML_T_CUSTOM, .parse = parse_account_protect },
        /* over the top level's notify:, key by key */
        { .name = "notify",
          .type = YAML_T_SECTION,
          .offset = offsetof(struct config, notify),
          .section = notify_keys },
        {},
};

const char *config_restart_needed(const struct config *a, const struct config *b) {
        /* An account is known by the name it is shown under: the single
         * form's is "default", as is an account named "default". */
        if (strcmp(config_account_name(a), config_account_name(b)) != 0)
                return "name";
        if (a->ha.enabled != b->ha.enabled)
                return "ha";
        if (a->ha.enabled && yaml_restart_needed(ha_keys, &a->ha, &b->ha))
                return "ha";
        return yaml_restart_needed(top_keys, a, b);
}

/* Rules between the keys of one policy. */
static void check_policy(struct yaml_reader *p, const char *where, yaml_node_t *item,
                         const struct policy *pol) {
        static const char *const required_timer[] = { "after", NULL };
        static const char *const required_capacity[] = { "capacity", NULL };
        yaml_node_t *kind_node = yaml_find(p, item, "kind");
        enum policy_kind kind;

        if (item->type != YAML_MAPPING_NODE ||
            !kind_from_string(kind_node ? yaml_scalar(kind_node) : NULL, &kind))
                return;
        if (kind == POLICY_OVER_CAPACITY) {
                yaml_require(p, where, item, required_capacity);
                if (pol->capacity > 0 && pol->keep_free >= pol->capacity)
                        yaml_error(p, item, "%s: keep_free (%u) must be less than capacity (%u)", where,
                                   pol->keep_free, pol->capacity);
        } else {
                yaml_require(p, where, item, required_timer);
                if (yaml_find(p, item, "capacity") || yaml_find(p, item, "keep_free"))
                        yaml_error(p, item, "%s: capacity and keep_free apply only to kind over_capacity",
                                   where);
        }
}

static void parse_policies(struct yaml_reader *p, const char *where, yaml_node_t *n, void *base) {
        static const char *const required[] = { "name", "kind", NULL };
        struct config *c = base;
        struct strindex names;
        size_t count;

        (void) where;
        if (n->type != YAML_SEQUENCE_NODE) {
                yaml_error(p, n, "policies: expected a list of policies, got %s", yaml_type_name(n));
                return;
        }
        count = (size_t) (n->data.sequence.items.top - n->data.sequence.items.start);
        if (count == 0 || !yaml_spend(p, n, count))
                return;
        c->policies = calloc(count, sizeof(struct policy));
        if (!c->policies || strindex_init(&names, count) < 0) {
                p->oom = true;
                return;
        }
        for (size_t i = 0; i < count && !p->stop; i++) {
                yaml_node_t *item = yaml_node(p, n->data.sequence.items.start[i]);
                struct policy *pol = &c->policies[c->n_policies];
                char at[64];
                size_t self;

                if (!item)
                        continue;
                c->n_policies++;
                snprintf(at, sizeof at, "policies[%zu]", i);
                yaml_walk(p, at, item, policy_keys, pol, at);
                yaml_require(p, at, item, required);
                check_policy(p, at, item, pol);
                if (!pol->name)
                        continue;
                self = c->n_policies - 1;
                for (size_t j = strindex_add(&names, self, pol->name); j != self && !p->stop;
                     j = names.next[j])
                        yaml_error(p, item, "%s: policy name '%s' is already used by policies[%zu]", at,
                                   pol->name, j);
        }
        if (names.oom)
                p->oom = true;
        strindex_free(&names);
}

/* An account's protect: adds to the top level's lists. */
static void parse_account_protect(struct yaml_reader *p, const char *where, yaml_node_t *v, void *base) {
        struct config *a = base, extra = { 0 };

        if (!yaml_is_null(v))
                yaml_walk(p, where, v, protect_keys, &extra, "protect");
        if (glob_list_append(&a->protect_user_ids, &extra.protect_user_ids) < 0 ||
            glob_list_append(&a->protect_session_ids, &extra.protect_session_ids) < 0 ||
            glob_list_append(&a->protect_project_ids, &extra.protect_project_ids) < 0 ||
            glob_list_append(&a->protect_asset_vks, &extra.protect_asset_vks) < 0)
                p->oom = true;
        glob_list_free(&extra.protect_user_ids);
        glob_list_free(&extra.protect_session_ids);
        glob_list_free(&extra.protect_project_ids);
        glob_list_free(&extra.protect_asset_vks);
}

/* "state.json" + "prod" -> "state.prod.json"; "state" -> "state.prod". */
static char *account_state_file(const char *state_file, const char *name) {
        size_t len = strlen(state_file);
        char *r = NULL;

        if (len > 5 && strcmp(state_file + len - 5, ".json") == 0) {
                if (asprintf(&r, "%.*s.%s.json", (int) (len - 5), state_file, name) < 0)
                        r = NULL;
        } else if (asprintf(&r, "%s.%s", state_file, name) < 0)
                r = NULL;
        return r;
}

/* An account starts as a copy of the top level's inherited settings. */
static struct config *account_new(struct yaml_reader *p, const struct config *top) {
        struct config *a = calloc(1, sizeof *a);

        if (!a || !(a->path = strdup(top->path)) || yaml_inherit(top_keys, a, top) < 0) {
                p->oom = true;
                config_free(a);
                return NULL;
        }
        return a;
}

/* A notify: section needs a url, its own or inherited. */
static void require_notify_url(struct yaml_reader *p, yaml_node_t *map, const struct config *c,
                               const char *where) {
        yaml_node_t *v = yaml_find(p, map, "notify");

        if (v && !c->notify.url && v->type == YAML_MAPPING_NODE)
                yaml_error(p, v, "%s%snotify: needs a url", where ? where : "", where ? "." : "");
}

static void parse_accounts(struct yaml_reader *p, yaml_node_t *n, struct config *top) {
        static const char *const required[] = { "name", "appkey", "policies", NULL };
        struct strindex names;
        size_t count;

        if (n->type != YAML_SEQUENCE_NODE) {
                yaml_error(p, n, "accounts: expected a list of accounts, got %s", yaml_type_name(n));
                return;
        }
        count = (size_t) (n->data.sequence.items.top - n->data.sequence.items.start);
        if (count == 0) {
                yaml_error(p, n, "accounts: expected at least one account");
                return;
        }
        if (!yaml_spend(p, n, count))
                return;
        top->accounts = calloc(count, sizeof *top->accounts);
        if (!top->accounts || strindex_init(&names, count) < 0) {
                p->oom = true;
                return;
        }
        for (size_t i = 0; i < count && !p->stop; i++) {
                yaml_node_t *item = yaml_node(p, n->data.sequence.items.start[i]);
                struct config *a;
                char at[64];
                size_t self;

                if (!item)
                        continue;
                /* Each account gets its own copy of the global protect lists. */
                if (!yaml_spend(p, item,
                                top->protect_user_ids.n + top->protect_session_ids.n +
                                        top->protect_project_ids.n + top->protect_asset_vks.n))
                        break;
                if (!(a = account_new(p, top)))
                        continue;
                top->accounts[top->n_accounts++] = a;
                snprintf(at, sizeof at, "accounts[%zu]", i);
                yaml_walk(p, at, item, account_keys, a, at);
                yaml_require(p, at, item, required);
                require_notify_url(p, item, a, at);
                note_appkey_position(p, item, &a->gateway);
                if (!a->account)
                        continue;
                self = top->n_accounts - 1;
                for (size_t j = strindex_add(&names, self, a->account); j != self && !p->stop;
                     j = names.next[j])
                        yaml_error(p, item, "%s: account name '%s' is already used by accounts[%zu]", at,
                                   a->account, j);
                a->state_file = account_state_file(top->state_file, a->account);
                if (!a->state_file)
                        p->oom = true;
        }
        if (names.oom)
                p->oom = true;
        strindex_free(&names);
}

/* The single-gateway form is one account, named "default" (its `account`
 * stays NULL: the file does not name it, and no message or credential
 * name changes). What only an account has moves to it from the top level;
 * the rest it inherits, as a listed account does. From here on the code
 * knows one shape: the global settings and accounts[n >= 1]. */
static void single_account(struct yaml_reader *p, struct config *top) {
        struct config *a;

        if (p->stop)
                return;
        top->accounts = calloc(1, sizeof *top->accounts);
        if (!top->accounts || !(a = account_new(p, top))) {
                p->oom = true;
                return;
        }
        top->accounts[top->n_accounts++] = a;
        a->gateway.appkey = top->gateway.appkey;
        a->gateway.appkey_line = top->gateway.appkey_line;
        a->gateway.appkey_column = top->gateway.appkey_column;
        a->gateway.accesstoken_file = top->gateway.accesstoken_file;
        a->gateway.project_ids = top->gateway.project_ids;
        a->gateway.asset_vks = top->gateway.asset_vks;
        a->policies = top->policies;
        a->n_policies = top->n_policies;
        top->gateway.appkey = top->gateway.accesstoken_file = NULL;
        top->gateway.project_ids = top->gateway.asset_vks = (struct glob_list){ 0 };
        top->policies = NULL;
        top->n_policies = 0;
        if (top->state_file && !(a->state_file = strdup(top->state_file)))
                p->oom = true;
}

static void parse_document(struct yaml_reader *p, yaml_node_t *root, void *userdata) {
        struct config *c = userdata;
        yaml_node_t *accounts, *gateway;

        if (!root) {
                yaml_mark_t start = { 0 };
                yaml_error_at(p, start,
                              "the file is empty; expected a mapping with 'gateway' and 'policies'");
                return;
        }
        yaml_walk(p, "top level", root, top_keys, c, NULL);
        if (root->type != YAML_MAPPING_NODE)
                return;
        require_notify_url(p, root, c, NULL);
        accounts = yaml_find(p, root, "accounts");
        gateway = yaml_find(p, root, "gateway");
        if (!accounts) {
                static const char *const required[] = { "gateway", "policies", NULL };
                static const char *const required_gateway[] = { "appkey", NULL };

                yaml_require(p, "top level", root, required);
                if (gateway) {
                        yaml_require(p, "gateway", gateway, required_gateway);
                        note_appkey_position(p, gateway, &c->gateway);
                }
                single_account(p, c);
                config_check_distinct_files(p, root, c);
                return;
        }
        /* With accounts, what is per account cannot also be global. */
        if (yaml_find(p, root, "policies"))
                yaml_error(p, root, "top level: 'policies' belongs in each account when 'accounts' is used");
        for (const char *const *k =
                     (const char *const[]){ "appkey", "accesstoken_file", "project_ids", "asset_vks", NULL };
             *k; k++)
                if (yaml_find(p, gateway, *k))
                        yaml_error(p, yaml_find(p, gateway, *k),
                                   "gateway.%s: belongs in each account when 'accounts' is used", *k);
        parse_accounts(p, accounts, c);
        config_check_distinct_files(p, root, c);
}

int config_load(const char *path, struct config **ret_config, struct error *err) {
        struct yaml_reader p = { .path = path };
        struct config *c = NULL;
        char *data = NULL, *errors = NULL;
        size_t size = 0, errors_len = 0;
        int r;

        assert(path && ret_config);
        p.err = open_memstream(&errors, &errors_len);
        if (!p.err)
                return error_set(err, -ENOMEM, "%s: out of memory while loading configuration", path);

        r = read_file_full(path, CONFIG_MAX_SIZE, &data, &size);
        if (r < 0) {
                fprintf(p.err, "%s: cannot read configuration: %s\n", path,
                        r == -EFBIG ? "file larger than 1 MiB" : file_strerror(r));
                goto out;
        }
        c = calloc(1, sizeof *c);
        if (!c || !(c->path = strdup(path)) || yaml_defaults(top_keys, c) < 0) {
                r = -ENOMEM;
                goto out;
        }
        r = yaml_read_document(&p, data, size, parse_document, c);
        if (r >= 0 && p.oom)
                r = -ENOMEM;
        if (r >= 0 && p.n_errors > 0)
                r = -EINVAL;
        if (r < 0)
                goto out;

        /* The text as loaded: the daemon keeps a copy of the running policy
         * for the unit's reload check (see preflight.h). */
        c->text = data;
        c->text_len = size;
        data = NULL;
        *ret_config = c;
        c = NULL;
out:
        if (r == -ENOMEM)
                fprintf(p.err, "%s: out of memory while loading configuration\n", path);
        fclose(p.err);
        if (r < 0)
                (void) error_take(err, r, errors);
        else
                free(errors);
        config_free(c);
        free(data);
        return r;
}

void config_free(struct config *c) {
        if (!c)
                return;
        for (size_t i = 0; i < c->n_accounts; i++)
                config_free(c->accounts[i]);
        free(c->accounts);
        free(c->account);
        free(c->path);
        free(c->text);
        yaml_free_fields(top_keys, c);
        yaml_free_fields(ha_keys, &c->ha);
        for (size_t i = 0; i < c->n_policies; i++) {
                yaml_free_fields(policy_keys, &c->policies[i]);
                /* read by read_selector() */
                glob_list_free(&c->policies[i].user_ids);
                glob_list_free(&c->policies[i].project_ids);
                glob_list_free(&c->policies[i].asset_vks);
        }
        free(c->policies);
        free(c);
}
