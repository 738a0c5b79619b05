#include "notify-event.h"

#include <assert.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-id128.h>
#include <time.h>

const char *const notify_type_names[NOTIFY_TYPES] = {
        [NOTIFY_RECLAIMED] = "reclaimed",
        [NOTIFY_WOULD_RECLAIM] = "would_reclaim",
        [NOTIFY_DUE_SOON] = "due_soon",
        [NOTIFY_CLOSE_FAILED] = "close_failed",
        [NOTIFY_RECLAIMING_STOPPED] = "reclaiming_stopped",
        [NOTIFY_RECLAIMING_RESUMED] = "reclaiming_resumed",
};

const char *notify_type_to_string(enum notify_type t) {
        assert(t < NOTIFY_TYPES);
        return notify_type_names[t];
}

int notify_type_from_string(const char *s) {
        for (int i = 0; s && i < NOTIFY_TYPES; i++)
                if (strcmp(s, notify_type_names[i]) == 0)
                        return i;
        return -1;
}

int notify_new_id(char ret[NOTIFY_ID_LEN + 1]) {
        sd_id128_t id;
        int r = sd_id128_randomize(&id);

        if (r < 0)
                return r;
        snprintf(ret, NOTIFY_ID_LEN + 1, SD_ID128_UUID_FORMAT_STR, SD_ID128_FORMAT_VAL(id));
        return 0;
}

int notify_stable_id(const char *account, const char *key, char ret[NOTIFY_ID_LEN + 1]) {
        unsigned char md[EVP_MAX_MD_SIZE];
        unsigned int n = 0;
        EVP_MD_CTX *ctx = EVP_MD_CTX_new();
        sd_id128_t id;
        bool ok = ctx && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) &&
                  EVP_DigestUpdate(ctx, account, strlen(account) + 1) && /* with its NUL: a separator */
                  EVP_DigestUpdate(ctx, key, strlen(key)) && EVP_DigestFinal_ex(ctx, md, &n) && n >= 16;

        EVP_MD_CTX_free(ctx);
        if (!ok)
                return -EIO;
        memcpy(id.bytes, md, 16);
        /* A UUID of version 5's shape (name-based, SHA), variant RFC 4122. */
        id.bytes[6] = (uint8_t) ((id.bytes[6] & 0x0f) | 0x50);
        id.bytes[8] = (uint8_t) ((id.bytes[8] & 0x3f) | 0x80);
        snprintf(ret, NOTIFY_ID_LEN + 1, SD_ID128_UUID_FORMAT_STR, SD_ID128_FORMAT_VAL(id));
        return 0;
}

void notify_format_time(int64_t wall_ms, char buf[32]) {
        time_t t = (time_t) (wall_ms / 1000);
        struct tm tm;
        char date[24];

        gmtime_r(&t, &tm);
        strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%S", &tm);
        snprintf(buf, 32, "%s.%03dZ", date, (int) (wall_ms % 1000));
}

static bool add_string(cJSON *o, const char *key, const char *value) {
        return !value || cJSON_AddStringToObject(o, key, value);
}

int notify_event_render(enum notify_type t, const char *id, int64_t wall_ms, const char *account,
                        const struct notify_session *s, const char *reason, char **ret) {
        cJSON *o = cJSON_CreateObject();
        char when[32], due[32];
        bool ok;

        assert(id && account && ret);
        notify_format_time(wall_ms, when);
        ok = o && add_string(o, "id", id) && add_string(o, "type", notify_type_to_string(t)) &&
             add_string(o, "time", when) && add_string(o, "account", account);
        if (ok && s) {
                ok = add_string(o, "session_id", s->session_id) && add_string(o, "user_id", s->user_id) &&
                     add_string(o, "policy", s->policy) && add_string(o, "policy_kind", s->policy_kind) &&
                     cJSON_AddNumberToObject(o, "age_sec", (double) s->age_sec) &&
                     cJSON_AddNumberToObject(o, "session_status", s->session_status) &&
                     add_string(o, "outcome", s->outcome) &&
                     cJSON_AddBoolToObject(o, "dry_run", s->dry_run) &&
                     add_string(o, "project_id", s->project_id) && add_string(o, "asset_vk", s->asset_vk);
                if (ok && t == NOTIFY_DUE_SOON) {
                        notify_format_time(s->due_at_wall_ms, due);
                        ok = add_string(o, "due_at", due);
                }
        }
        if (ok && reason)
                ok = add_string(o, "reason", reason);
        *ret = ok ? cJSON_PrintUnformatted(o) : NULL;
        cJSON_Delete(o);
        return *ret ? 0 : -ENOMEM;
}

int notify_body_json(char *const *events, size_t n, char **ret) {
        cJSON *body = cJSON_CreateObject(), *list = body ? cJSON_AddArrayToObject(body, "events") : NULL;
        int r = list ? 0 : -ENOMEM;

        for (size_t i = 0; r == 0 && i < n; i++) {
                cJSON *e = cJSON_Parse(events[i]);

                if (!e)
                        r = -EINVAL;
                else
                        cJSON_AddItemToArray(list, e);
        }
        *ret = r == 0 ? cJSON_PrintUnformatted(body) : NULL;
        if (r == 0 && !*ret)
                r = -ENOMEM;
        cJSON_Delete(body);
        return r;
}

/* Slack reads &, < and > as markup (<!channel>, <url|text>): a user id
 * must not be able to ping a channel or forge a link. */
static void slack_escape(FILE *f, const char *s) {
        for (; s && *s; s++)
                switch (*s) {
                case '&':
                        fputs("&amp;", f);
                        break;
                case '<':
                        fputs("&lt;", f);
                        break;
                case '>':
                        fputs("&gt;", f);
                        break;
                default:
                        fputc(*s, f);
                }
}

static const char *field(const cJSON *e, const char *key) {
        const char *s = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(e, key));

        return s ? s : "";
}

/* One line of text for an event. */
static void slack_line(FILE *f, const cJSON *e) {
        const char *type = field(e, "type");
        const cJSON *age = cJSON_GetObjectItemCaseSensitive(e, "age_sec");
        int t = notify_type_from_string(type);

        fputs("ivh-reclaimd, account ", f);
        slack_escape(f, field(e, "account"));
        fputs(": ", f);
        if (t == NOTIFY_RECLAIMING_STOPPED || t == NOTIFY_RECLAIMING_RESUMED) {
                fputs(t == NOTIFY_RECLAIMING_STOPPED ? "reclaiming stopped: " : "reclaiming resumed (was: ",
                      f);
                slack_escape(f, field(e, "reason"));
                fputs(t == NOTIFY_RECLAIMING_STOPPED ? "" : ")", f);
                return;
        }
        fputs(t == NOTIFY_RECLAIMED       ? "reclaimed"
              : t == NOTIFY_WOULD_RECLAIM ? "would reclaim (dry run)"
              : t == NOTIFY_DUE_SOON      ? "will reclaim"
              : t == NOTIFY_CLOSE_FAILED  ? "failed to reclaim"
                                          : type,
              f);
        fputs(" session ", f);
        slack_escape(f, field(e, "session_id"));
        fputs(" of user '", f);
        slack_escape(f, field(e, "user_id"));
        fputs("' (policy ", f);
        slack_escape(f, field(e, "policy"));
        fputs(", ", f);
        slack_escape(f, field(e, "policy_kind"));
        if (cJSON_IsNumber(age))
                fprintf(f, ", first seen %.0f s ago", age->valuedouble);
        fputs(")", f);
        if (t == NOTIFY_DUE_SOON) {
                fputs(" at ", f);
                slack_escape(f, field(e, "due_at"));
        }
        if (t == NOTIFY_RECLAIMED && strcmp(field(e, "outcome"), "already_closed") == 0)
                fputs("; it was already gone", f);
}

int notify_body_slack(char *const *events, size_t n, char **ret, size_t *ret_used) {
        char *text = NULL;
        size_t len = 0, used = 0;
        FILE *f = open_memstream(&text, &len);
        cJSON *body;
        int r = 0;

        if (!f)
                return -ENOMEM;
        for (size_t i = 0; r == 0 && i < n; i++) {
                cJSON *e = cJSON_Parse(events[i]);
                long before = ftell(f);

                if (!e) {
                        r = -EINVAL;
                        break;
                }
                if (i > 0)
                        fputc('\n', f);
                slack_line(f, e);
                cJSON_Delete(e);
                /* Slack cuts a message's text at 40,000 characters: the
                 * line that goes past the limit waits for the next one. */
                if (i > 0 && ftell(f) > NOTIFY_SLACK_TEXT_MAX) {
                        fflush(f);
                        text[before] = '\0';
                        break;
                }
                used = i + 1;
        }
        if (fclose(f) != 0 && r == 0)
                r = -ENOMEM;
        body = r == 0 ? cJSON_CreateObject() : NULL;
        if (ret_used)
                *ret_used = used;
        if (r == 0 && (!body || !cJSON_AddStringToObject(body, "text", text)))
                r = -ENOMEM;
        *ret = r == 0 ? cJSON_PrintUnformatted(body) : NULL;
        if (r == 0 && !*ret)
                r = -ENOMEM;
        cJSON_Delete(body);
        free(text);
        return r;
}

int notify_sign(const char *secret, const char *timestamp, const char *body,
                char ret[NOTIFY_SIGNATURE_LEN + 1]) {
        size_t tl, bl;
        unsigned char md[EVP_MAX_MD_SIZE];
        unsigned int md_len = 0;
        char *msg;
        bool ok;

        assert(secret && timestamp && body);
        tl = strlen(timestamp);
        bl = strlen(body);
        /* The signed message is timestamp "." body, in one buffer for the
         * one-shot HMAC(). */
        msg = malloc(tl + 1 + bl + 1);
        if (!msg)
                return -ENOMEM;
        memcpy(msg, timestamp, tl);
        msg[tl] = '.';
        memcpy(msg + tl + 1, body, bl + 1);
        ok = HMAC(EVP_sha256(), secret, (int) strlen(secret), (const unsigned char *) msg, tl + 1 + bl, md,
                  &md_len) != NULL &&
             md_len == 32;
        free(msg);
        if (!ok)
                return -EIO;
        memcpy(ret, "sha256=", 7);
        for (unsigned i = 0; i < md_len; i++)
                snprintf(ret + 7 + 2 * i, 3, "%02x", md[i]);
        return 0;
}
