/* The poll cycle (daemon/cycle*.c) driven over a real libev loop. As
 * chrony's test/unit/ntp_core.c does for its protocol, the unit runs as it
 * is and the network is stubbed: this file defines the functions of
 * daemon/http.h (a scripted gateway) and of daemon/ha.h (a role the test
 * sets), and the test binary is linked without http.c and ha.c. Everything
 * else is the daemon's own code: config_load(), decide(), the state, the
 * retry table, the throttle, the request building and the reply parsing.
 *
 * The fake gateway records every request (the endpoint from the URL, the
 * SessionId or project from the JSON body) and answers it from the test's
 * script, always later, from the loop (an ev_timer), never from inside
 * http_post_json(). A run lasts until the loop has nothing left to do; a
 * watchdog that does not keep the loop alive fails a cycle that hangs. */
#include <cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "config.h"
#include "credentials.h"
#include "cycle.h"
#include "gateway.h"
#include "ha.h"
#include "http.h"
#include "log.h"
#include "retry.h"
#include "state.h"
#include "throttle.h"
#include "util.h"

#define MAX_SESSIONS 16
#define MAX_SENT     128
#define DELAY_S      0.005 /* a reply comes back this long after its request, unless scripted */
#define WATCHDOG_S   5.0   /* a run that takes longer than this has hung */
#define BASE_URL     "http://127.0.0.1:9" /* gateway.url: nothing listens there */

/* ------------------------------------------------------------------ */
/* The fake gateway                                                    */

/* A session as the gateway knows it. A list reply lists them all (a project
 * or asset list only those whose group is its id); statsession reports the
 * status as it is now; a successful closesession makes it status 2. */
struct fake_session {
        const char *id, *user, *group;
        int status;
        enum tristate started;
};

/* One request as it reached the gateway. */
struct sent {
        char endpoint[48];
        char id[80];  /* SessionId, VirtualmanProjectId or AssetVirtualmanKey; "" for none */
        int64_t ms;   /* now_mono_ms() when it was posted */
        bool refused; /* http_post_json() refused it: it never went out */
};

/* How the gateway answers one request; the script may change any of it. */
struct answer {
        int refuse;      /* a negative errno: http_post_json() returns it, nothing is sent */
        CURLcode result; /* not CURLE_OK: a transport error, no HTTP response */
        long status;     /* the HTTP status */
        long retry_after_s;
        long code;      /* Header.Code of a 200 reply */
        double delay_s; /* the reply comes back this long after the request */
};

/* The test's script: how to answer this request, the attempt-th of its
 * endpoint for its id (0 for the first). *a holds the default answer. */
typedef void (*script_fn)(const struct sent *s, unsigned attempt, struct answer *a);

/* Runs just before a reply is handed to the cycle (its request still in
 * flight): the place to reload, stop or fence in the middle of a cycle.
 * nth counts the replies of the same endpoint, 0 for the first. */
typedef void (*hook_fn)(const struct sent *s, unsigned nth);

struct http {
        struct ev_loop *loop;
        struct request *requests; /* in flight */
        size_t in_flight;
};

struct request {
        struct http *http;
        ev_timer timer;
        size_t sent; /* in F.sent */
        struct answer answer;
        char *body;
        size_t body_len;
        http_done_fn done;
        void *userdata;
        struct request *prev, *next;
};

static struct fake {
        struct fake_session sessions[MAX_SESSIONS];
        size_t n_sessions;
        struct sent sent[MAX_SENT];
        size_t n_sent;
        size_t peak_in_flight;
        size_t dropped;      /* bodies dropped with http_response_drop_body() */
        unsigned replies[4]; /* per endpoint kind: list, closesession, statsession, other */
        script_fn script;
        hook_fn hook;
} F;

/* The rig: everything a cycle borrows, and what the test saw of it. */
static struct rig {
        struct ev_loop *loop;
        struct http *http;
        char dir[64], cfg_path[96], state_path[96], log_path[96];
        struct config *files[4];
        size_t n_files;
        const struct config *config; /* the account the cycle starts with */
        char token[32];
        struct credentials creds;
        struct gateway_signer signer;
        struct state *state;
        struct retry_table *retries;
        struct throttle throttle;
        bool use_throttle;
        struct ha *ha; /* NULL: no ha: section */
        struct cycle *cycle;
        enum cycle_phase phases[8];
        size_t n_phases;
        char problem[512]; /* the first thing that went wrong inside a callback */
        ev_timer watchdog;
        bool hung;
        int saved_stderr;
        char *log; /* the journal entries of the last run, as console lines */
} T;

/* Callbacks run inside the loop, where a failed cmocka assertion would jump
 * out of the cycle's code: they note the first problem here, and the test
 * fails on it once the loop has returned. */
static void problem(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void problem(const char *fmt, ...) {
        va_list ap;

        if (T.problem[0])
                return;
        va_start(ap, fmt);
        vsnprintf(T.problem, sizeof T.problem, fmt, ap);
        va_end(ap);
}

static struct fake_session *find_session(const char *id) {
        for (size_t i = 0; i < F.n_sessions; i++)
                if (strcmp(F.sessions[i].id, id) == 0)
                        return &F.sessions[i];
        return NULL;
}

static bool is_list(const char *endpoint) {
        return strncmp(endpoint, "listsessionof", 13) == 0;
}

static unsigned endpoint_kind(const char *endpoint) {
        if (is_list(endpoint))
                return 0;
        if (strcmp(endpoint, "closesession") == 0)
                return 1;
        return strcmp(endpoint, "statsession") == 0 ? 2 : 3;
}

/* Reads the endpoint from the URL and the id from the body into *s. */
static void read_request(const char *url, const char *body, struct sent *s) {
        const char *p = strstr(url, GATEWAY_PATH_PREFIX), *q;
        cJSON *root, *payload, *reqid, *id = NULL;
        static const char *const fields[] = { "SessionId", "VirtualmanProjectId", "AssetVirtualmanKey" };

        if (strncmp(url, BASE_URL GATEWAY_PATH_PREFIX, strlen(BASE_URL GATEWAY_PATH_PREFIX)) != 0 || !p ||
            !(q = strchr(p, '?')) || !strstr(q, "appkey=k&timestamp=") || !strstr(q, "&signature=")) {
                problem("unexpected URL %s", url);
                return;
        }
        p += strlen(GATEWAY_PATH_PREFIX);
        snprintf(s->endpoint, sizeof s->endpoint, "%.*s", (int) (q - p), p);
        root = cJSON_Parse(body);
        payload = cJSON_GetObjectItemCaseSensitive(root, "Payload");
        reqid = cJSON_GetObjectItemCaseSensitive(payload, "ReqId");
        if (!cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(root, "Header")) || !cJSON_IsString(reqid) ||
            strlen(reqid->valuestring) != GATEWAY_REQID_LEN)
                problem("unexpected body %s", body);
        for (size_t i = 0; i < ELEMENTSOF(fields) && !id; i++)
                id = cJSON_GetObjectItemCaseSensitive(payload, fields[i]);
        if (id && cJSON_IsString(id))
                snprintf(s->id, sizeof s->id, "%s", id->valuestring);
        cJSON_Delete(root);
}

static void add_entry(cJSON *sessions, const struct fake_session *fs) {
        cJSON *o = cJSON_CreateObject();

        cJSON_AddStringToObject(o, "SessionId", fs->id);
        cJSON_AddStringToObject(o, "UserId", fs->user);
        cJSON_AddNumberToObject(o, "SessionStatus", fs->status);
        if (fs->started != TRISTATE_UNKNOWN)
                cJSON_AddBoolToObject(o, "IsSessionStarted", fs->started == TRISTATE_TRUE);
        cJSON_AddItemToArray(sessions, o);
}

/* The JSON body of a 200 reply to s. */
static char *reply_body(const struct sent *s, struct answer *a) {
        cJSON *root = cJSON_CreateObject(), *header, *payload;
        struct fake_session *fs = find_session(s->id);
        char *text;

        if (a->code == 0 && strcmp(s->endpoint, "statsession") == 0 && !fs)
                a->code = 110018;
        header = cJSON_AddObjectToObject(root, "Header");
        cJSON_AddNumberToObject(header, "Code", (double) a->code);
        cJSON_AddStringToObject(header, "Message", a->code ? "scripted error" : "");
        cJSON_AddStringToObject(header, "RequestID", "fake");
        payload = cJSON_AddObjectToObject(root, "Payload");
        if (a->code == 0 && is_list(s->endpoint)) {
                cJSON *sessions = cJSON_AddArrayToObject(payload, "Sessions");

                for (size_t i = 0; i < F.n_sessions; i++)
                        if (!s->id[0] || (F.sessions[i].group && strcmp(F.sessions[i].group, s->id) == 0))
                                add_entry(sessions, &F.sessions[i]);
        } else if (a->code == 0 && strcmp(s->endpoint, "statsession") == 0) {
                cJSON_AddNumberToObject(payload, "SessionStatus", fs->status);
                if (fs->started != TRISTATE_UNKNOWN)
                        cJSON_AddBoolToObject(payload, "IsSessionStarted", fs->started == TRISTATE_TRUE);
        } else if (a->code == 0 && strcmp(s->endpoint, "closesession") == 0 && fs)
                fs->status = SESSION_CLOSED;
        text = cJSON_PrintUnformatted(root);
        cJSON_Delete(root);
        return text;
}

static void request_unlink(struct http *h, struct request *req) {
        if (req->prev)
                req->prev->next = req->next;
        else
                h->requests = req->next;
        if (req->next)
                req->next->prev = req->prev;
        h->in_flight--;
}

static void reply_cb(struct ev_loop *loop, ev_timer *w, int revents) {
        struct request *req = w->data;
        struct http *h = req->http;
        const struct sent *s = &F.sent[req->sent];
        unsigned kind = endpoint_kind(s->endpoint);
        static char empty[1];
        struct http_response resp = {
                .result = req->answer.result,
                .status = req->answer.result == CURLE_OK ? req->answer.status : 0,
                .retry_after_s = req->answer.retry_after_s,
                .total_s = req->answer.delay_s,
                .error = req->answer.result == CURLE_OK
                                 ? ""
                                 : "Failed to connect to 127.0.0.1 port 9: Connection refused",
                .request_ = req,
        };

        (void) loop;
        (void) revents;
        if (F.hook)
                F.hook(s, F.replies[kind]);
        F.replies[kind]++;
        request_unlink(h, req);
        resp.body = req->body ? req->body : empty;
        resp.body_len = req->body_len;
        req->done(&resp, req->userdata);
        free(req->body);
        free(req);
}

int http_new(struct ev_loop *loop, const struct http_options *opt, struct http **ret) {
        struct http *h = calloc(1, sizeof *h);

        (void) opt;
        if (!h)
                return -ENOMEM;
        h->loop = loop;
        *ret = h;
        return 0;
}

void http_free(struct http *h) {
        if (!h)
                return;
        while (h->requests) {
                struct request *req = h->requests;

                ev_timer_stop(h->loop, &req->timer);
                request_unlink(h, req);
                free(req->body);
                free(req);
        }
        free(h);
}

size_t http_in_flight(const struct http *h) {
        return h->in_flight;
}

void http_response_drop_body(const struct http_response *resp) {
        struct request *req = resp->request_;

        free(req->body);
        req->body = NULL;
        req->body_len = 0;
        F.dropped++;
}

/* The webhook's call (notify.c); no cycle here has a notifier. */
int http_post(struct http *h, const char *url, const char *body, const char *const *headers,
              http_done_fn done, void *userdata) {
        (void) h, (void) url, (void) body, (void) headers, (void) done, (void) userdata;
        return -EOPNOTSUPP;
}

int http_post_json(struct http *h, const char *url, const char *body, http_done_fn done, void *userdata) {
        struct answer a = { .status = 200, .delay_s = DELAY_S };
        struct request *req;
        struct sent *s;
        unsigned attempt = 0;

        if (F.n_sent == MAX_SENT) {
                problem("more than %d requests", MAX_SENT);
                return -E2BIG;
        }
        s = &F.sent[F.n_sent];
        *s = (struct sent){ .ms = now_mono_ms() };
        read_request(url, body, s);
        for (size_t i = 0; i < F.n_sent; i++)
                attempt += strcmp(F.sent[i].endpoint, s->endpoint) == 0 && strcmp(F.sent[i].id, s->id) == 0;
        F.n_sent++;
        if (F.script)
                F.script(s, attempt, &a);
        if (a.refuse < 0) {
                s->refused = true;
                return a.refuse;
        }
        req = calloc(1, sizeof *req);
        if (!req)
                return -ENOMEM;
        *req = (struct request){ .http = h, .sent = F.n_sent - 1, .done = done, .userdata = userdata };
        if (a.result == CURLE_OK && a.status == 200)
                req->body = reply_body(s, &a);
        else if (a.result == CURLE_OK)
                req->body = strdup("<html>scripted HTTP error</html>");
        req->body_len = req->body ? strlen(req->body) : 0;
        req->answer = a;
        ev_timer_init(&req->timer, reply_cb, a.delay_s, 0.);
        req->timer.data = req;
        ev_timer_start(h->loop, &req->timer);
        req->next = h->requests;
        if (h->requests)
                h->requests->prev = req;
        h->requests = req;
        if (++h->in_flight > F.peak_in_flight)
                F.peak_in_flight = h->in_flight;
        return 0;
}

/* ------------------------------------------------------------------ */
/* The fake ha: the role and the lease are what the test sets.         */

struct ha {
        enum ha_role role;
        bool lease_fresh; /* a leader's lease confirmed within lease/3 */
};

static struct ha test_ha;

enum ha_role ha_role(const struct ha *h) {
        return h->role;
}

bool ha_may_dispatch(const struct ha *h, int64_t now) {
        (void) now;
        return h->role == HA_LEADER && h->lease_fresh;
}

const char *ha_role_to_string(enum ha_role r) {
        return r == HA_LEADER ? "leader" : r == HA_STANDBY ? "standby" : "unreachable";
}

/* ------------------------------------------------------------------ */
/* The rig                                                             */

static int setup(void **state) {
        (void) state;
        memset(&F, 0, sizeof F);
        memset(&T, 0, sizeof T);
        memset(&test_ha, 0, sizeof test_ha);
        T.saved_stderr = -1;
        strcpy(T.dir, "/tmp/ivh-test-cycle-XXXXXX");
        if (!mkdtemp(T.dir))
                return -1;
        snprintf(T.cfg_path, sizeof T.cfg_path, "%s/policy.yaml", T.dir);
        snprintf(T.state_path, sizeof T.state_path, "%s/state.json", T.dir);
        snprintf(T.log_path, sizeof T.log_path, "%s/log", T.dir);
        T.loop = ev_loop_new(EVFLAG_AUTO);
        if (!T.loop || http_new(T.loop, &(struct http_options){ 0 }, &T.http) < 0 ||
            state_new(T.state_path, &T.state) < 0 || retry_table_new(&T.retries) < 0)
                return -1;
        strcpy(T.token, "fake-token");
        T.creds.token = T.token;
        gateway_signer_reset(&T.signer);
        return 0;
}

static void restore_stderr(void) {
        if (T.saved_stderr < 0)
                return;
        fflush(stderr);
        dup2(T.saved_stderr, STDERR_FILENO);
        close(T.saved_stderr);
        T.saved_stderr = -1;
}

static int teardown(void **state) {
        (void) state;
        restore_stderr();
        cycle_free(T.cycle);
        http_free(T.http);
        if (T.loop)
                ev_loop_destroy(T.loop);
        state_free(T.state);
        retry_table_free(T.retries);
        for (size_t i = 0; i < T.n_files; i++)
                config_free(T.files[i]);
        free(T.log);
        unlink(T.cfg_path);
        unlink(T.state_path);
        unlink(T.log_path);
        rmdir(T.dir);
        return 0;
}

/* A policy file; what is not given takes the value below. */
struct yaml {
        unsigned max_parallel;     /* 4 */
        const char *poll_interval; /* 30s */
        const char *gateway;       /* more keys of gateway: ("project_ids: [p1], ") */
        bool dry_run, recheck;     /* false, false */
        unsigned max_closes;       /* 100 */
        const char *protect;       /* protect.user_ids, a flow list: [] */
        const char *policies;      /* one policy: failed streams, at once */
};

/* Loads the file with config_load(), as the daemon does; returns its
 * account (the rig frees the file). */
static const struct config *load_config(struct yaml y) {
        struct config *c = NULL;
        struct error err = { 0 };
        FILE *f = fopen(T.cfg_path, "w");
        int r;

        assert_non_null(f);
        fprintf(f,
                "gateway: {url: '" BASE_URL "', appkey: k, %smax_parallel: %u}\n"
                "poll_interval: %s\n"
                "state_file: %s\n"
                "dry_run: %s\n"
                "recheck_before_close: %s\n"
                "max_closes_per_cycle: %u\n"
                "fuse: {max_share: 100%%, min_sessions: 0}\n"
                "protect: {user_ids: %s}\n"
                "policies:\n%s",
                y.gateway ? y.gateway : "", y.max_parallel ? y.max_parallel : 4,
                y.poll_interval ? y.poll_interval : "30s", T.state_path, y.dry_run ? "true" : "false",
                y.recheck ? "true" : "false", y.max_closes ? y.max_closes : 100,
                y.protect ? y.protect : "[]",
                y.policies ? y.policies : "  - {name: failed-streams, kind: failed, after: 0s}\n");
        fclose(f);
        r = config_load(T.cfg_path, &c, &err);
        if (r < 0)
                fail_msg("config_load: %d: %s", r, err.message ? err.message : "");
        assert_int_equal(c->n_accounts, 1);
        assert_true(T.n_files < ELEMENTSOF(T.files));
        T.files[T.n_files++] = c;
        return c->accounts[0];
}

static void gateway_lists(const char *id, const char *user, int status, enum tristate started) {
        assert_true(F.n_sessions < MAX_SESSIONS);
        F.sessions[F.n_sessions++] =
                (struct fake_session){ .id = id, .user = user, .status = status, .started = started };
}

/* n sessions whose stream failed (status 4): due at once under the
 * default policy. Named PREFIX1..PREFIXn, of users u-PREFIX1.. */
static void gateway_lists_failed(size_t n) {
        static char ids[MAX_SESSIONS][24], users[MAX_SESSIONS][24];

        for (size_t i = 0; i < n; i++) {
                snprintf(ids[i], sizeof ids[i], "f%zu", i + 1);
                snprintf(users[i], sizeof users[i], "u-%zu", i + 1);
                gateway_lists(ids[i], users[i], SESSION_STREAM_FAILED, TRISTATE_TRUE);
        }
}

static void on_phase(struct cycle *c, enum cycle_phase phase, void *userdata) {
        (void) userdata;
        if (T.n_phases == ELEMENTSOF(T.phases)) {
                problem("too many phase changes");
                return;
        }
        T.phases[T.n_phases++] = phase;
        if (T.cycle && c != T.cycle)
                problem("phase change of another cycle");
        if (cycle_phase(c) != phase)
                problem("cycle_phase() says %d in the phase function of %d", cycle_phase(c), phase);
        if (phase == CYCLE_ENDED && http_in_flight(T.http) > 0)
                problem("the cycle ended with %zu request(s) in flight", http_in_flight(T.http));
}

static void watchdog_cb(struct ev_loop *loop, ev_timer *w, int revents) {
        (void) w;
        (void) revents;
        T.hung = true;
        ev_break(loop, EVBREAK_ALL);
}

static void read_log(void) {
        FILE *f = fopen(T.log_path, "r");
        long n;

        assert_non_null(f);
        fseek(f, 0, SEEK_END);
        n = ftell(f);
        fseek(f, 0, SEEK_SET);
        free(T.log);
        T.log = calloc(1, (size_t) n + 1);
        assert_non_null(T.log);
        assert_int_equal(fread(T.log, 1, (size_t) n, f), (size_t) n);
        fclose(f);
        if (getenv("IVH_TEST_VERBOSE"))
                fputs(T.log, stderr);
}

/* Starts a cycle with the rig's config and runs the loop until it has
 * nothing left to do. Asserts what every cycle must do: end, exactly once,
 * with nothing in flight and no watcher left behind. When cycle_start()
 * fails, returns NULL with its error in *ret_start (if given; else the test
 * fails). */
static const struct cycle_result *start_and_run(int *ret_start) {
        struct cycle_env env = {
                .loop = T.loop,
                .account = "default",
                .config = T.config,
                .creds = &T.creds,
                .signer = &T.signer,
                .http = T.http,
                .state = T.state,
                .retries = T.retries,
                .throttle = T.use_throttle ? &T.throttle : NULL,
                .next_cycle = true,
                .ha = T.ha,
        };
        size_t ended = 0;
        int fd, r;

        assert_non_null(T.config);
        cycle_free(T.cycle);
        T.cycle = NULL;
        T.n_phases = 0;
        memset(F.replies, 0, sizeof F.replies);
        if (T.use_throttle)
                throttle_new_cycle(&T.throttle, now_mono_ms());

        /* The cycle's journal entries go to a file the test can read. */
        fflush(stderr);
        T.saved_stderr = dup(STDERR_FILENO);
        fd = open(T.log_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        assert_true(T.saved_stderr >= 0 && fd >= 0);
        dup2(fd, STDERR_FILENO);
        close(fd);

        ev_timer_init(&T.watchdog, watchdog_cb, WATCHDOG_S, 0.);
        ev_timer_start(T.loop, &T.watchdog);
        ev_unref(T.loop); /* the watchdog alone does not keep the loop running */
        r = cycle_start(&env, on_phase, NULL, &T.cycle);
        if (r >= 0)
                ev_run(T.loop, 0);
        ev_ref(T.loop);
        ev_timer_stop(T.loop, &T.watchdog);

        restore_stderr();
        read_log();
        if (T.problem[0])
                fail_msg("%s", T.problem);
        if (r < 0 && ret_start) {
                *ret_start = r;
                assert_null(T.cycle);
                assert_int_equal(T.n_phases, 0);
                assert_int_equal(http_in_flight(T.http), 0);
                return NULL;
        }
        if (r < 0)
                fail_msg("cycle_start: %s", strerror(-r));
        assert_false(T.hung);
        assert_non_null(T.cycle);
        assert_int_equal(cycle_phase(T.cycle), CYCLE_ENDED);
        assert_int_equal(http_in_flight(T.http), 0);
        for (size_t i = 0; i < T.n_phases; i++) {
                ended += T.phases[i] == CYCLE_ENDED;
                if (i > 0)
                        assert_true(T.phases[i] > T.phases[i - 1]);
        }
        assert_int_equal(ended, 1);
        assert_int_equal(T.phases[T.n_phases - 1], CYCLE_ENDED);
        /* An ended cycle stays ended. */
        cycle_stop(T.cycle);
        assert_int_equal(T.phases[T.n_phases - 1], CYCLE_ENDED);
        assert_int_equal(ended, 1);
        return cycle_result(T.cycle);
}

static const struct cycle_result *run_cycle(void) {
        return start_and_run(NULL);
}

/* "closing ended" */
static const char *phases(void) {
        static char buf[64];
        size_t off = 0;

        buf[0] = '\0';
        for (size_t i = 0; i < T.n_phases; i++)
                off += (size_t) snprintf(buf + off, sizeof buf - off, "%s%s", i ? " " : "",
                                         T.phases[i] == CYCLE_LISTING   ? "listing"
                                         : T.phases[i] == CYCLE_CLOSING ? "closing"
                                                                        : "ended");
        return buf;
}

/* The ids of the requests to endpoint that went out, in order: "f1 f2". */
static const char *sent_ids(const char *endpoint) {
        static char buf[1024];
        size_t off = 0;

        buf[0] = '\0';
        for (size_t i = 0; i < F.n_sent; i++)
                if (!F.sent[i].refused && strcmp(F.sent[i].endpoint, endpoint) == 0)
                        off += (size_t) snprintf(buf + off, sizeof buf - off, "%s%s", off ? " " : "",
                                                 F.sent[i].id);
        return buf;
}

static const char *closes(void) {
        return sent_ids("closesession");
}

static size_t count_sent(const char *endpoint) {
        size_t n = 0;

        for (size_t i = 0; i < F.n_sent; i++)
                n += !F.sent[i].refused && strcmp(F.sent[i].endpoint, endpoint) == 0;
        return n;
}

/* When the nth request (0: the first) to endpoint for id went out. */
static int64_t sent_at(const char *endpoint, const char *id, unsigned nth) {
        unsigned k = 0;

        for (size_t i = 0; i < F.n_sent; i++)
                if (strcmp(F.sent[i].endpoint, endpoint) == 0 && strcmp(F.sent[i].id, id) == 0 && k++ == nth)
                        return F.sent[i].ms;
        fail_msg("no request %u to %s for %s", nth, endpoint, id);
        return 0;
}

/* How many lines of the last run's log have every one of the (NULL-ended)
 * needles. */
static size_t log_lines(const char *needle, ...) {
        size_t n = 0;

        for (const char *p = T.log; *p;) {
                const char *eol = strchr(p, '\n');
                size_t len = eol ? (size_t) (eol - p) : strlen(p);
                char line[8192];
                bool all = true;
                va_list ap;

                snprintf(line, sizeof line, "%.*s", (int) len, p);
                va_start(ap, needle);
                for (const char *s = needle; s && all; s = va_arg(ap, const char *))
                        all = strstr(line, s) != NULL;
                va_end(ap);
                n += all;
                p += len + (eol ? 1 : 0);
        }
        return n;
}

static void assert_counts(const struct cycle_result *r, size_t closed, size_t already_closed, size_t failed,
                          size_t skipped, size_t deferred, size_t throttled, size_t standby) {
        char got[256], want[256];

        snprintf(
                got, sizeof got,
                "closed=%zu already_closed=%zu failed=%zu skipped=%zu deferred=%zu throttled=%zu standby=%zu",
                r->closed, r->already_closed, r->failed, r->skipped, r->deferred, r->throttled, r->standby);
        snprintf(
                want, sizeof want,
                "closed=%zu already_closed=%zu failed=%zu skipped=%zu deferred=%zu throttled=%zu standby=%zu",
                closed, already_closed, failed, skipped, deferred, throttled, standby);
        assert_string_equal(got, want);
}

/* ------------------------------------------------------------------ */
/* Closing                                                             */

/* Exactly the due sessions are closed, each once; never a live, protected
 * or closed one; no more than max_parallel at a time. */
static void test_closes_exactly_the_due(void **state) {
        const struct cycle_result *r;

        (void) state;
        T.config = load_config(
                (struct yaml){ .max_parallel = 2,
                               .protect = "['vip-*']",
                               .policies = "  - {name: failed-streams, kind: failed, after: 0s}\n"
                                           "  - {name: never-started, kind: not_started, after: 0s}\n" });
        gateway_lists("f1", "u-1", SESSION_STREAM_FAILED, TRISTATE_TRUE);
        gateway_lists("live", "u-2", SESSION_IN_PROGRESS, TRISTATE_TRUE);
        gateway_lists("ns", "u-3", SESSION_IN_PROGRESS, TRISTATE_FALSE);
        gateway_lists("vip", "vip-1", SESSION_STREAM_FAILED, TRISTATE_TRUE);
        gateway_lists("gone", "u-4", SESSION_CLOSED, TRISTATE_TRUE);
        gateway_lists("prep", "u-5", SESSION_PREPARING, TRISTATE_TRUE);
        gateway_lists("f2", "u-6", SESSION_STREAM_FAILED, TRISTATE_TRUE);

        r = run_cycle();
        assert_string_equal(sent_ids("listsessionofuin"), "");
        assert_int_equal(count_sent("listsessionofuin"), 1);
        assert_string_equal(closes(), "f1 ns f2");
        assert_int_equal(count_sent("statsession"), 0);
        assert_string_equal(phases(), "closing ended");
        assert_false(r->list_failed);
        assert_int_equal(r->listed, 7);
        assert_int_equal(r->due, 3);
        assert_int_equal(r->protected_due, 1);
        assert_counts(r, 3, 0, 0, 0, 0, 0, 0);
        assert_int_equal(F.peak_in_flight, 2);
        assert_int_equal(F.dropped, 1); /* the list's body goes before the cycle decides */
        assert_int_equal(find_session("f1")->status, SESSION_CLOSED);
        assert_int_equal(find_session("vip")->status, SESSION_STREAM_FAILED);
        assert_int_equal(log_lines("Reclaimed session", "session_id=f1", "outcome=closed", NULL), 1);
        assert_int_equal(log_lines("Cycle done: listed=7 due=3 closed=3", NULL), 1);
        assert_int_equal(retry_size(T.retries), 0);
}

/* max_closes_per_cycle: the rest wait for a later cycle. */
static void test_max_closes_per_cycle(void **state) {
        const struct cycle_result *r;

        (void) state;
        T.config = load_config((struct yaml){ .max_closes = 2 });
        gateway_lists_failed(5);
        r = run_cycle();
        assert_string_equal(closes(), "f1 f2");
        assert_int_equal(r->due, 5);
        assert_counts(r, 2, 0, 0, 0, 3, 0, 0);
}

/* recheck_before_close: statsession first; a session that started or went
 * away since the list is not closed. */
static void script_recheck(const struct sent *s, unsigned attempt, struct answer *a) {
        (void) attempt;
        (void) a;
        if (strcmp(s->endpoint, "statsession") != 0)
                return;
        if (strcmp(s->id, "n2") == 0)
                find_session("n2")->started = TRISTATE_TRUE; /* the user came after all */
        if (strcmp(s->id, "n3") == 0)
                find_session("n3")->status = SESSION_CLOSED;
}

static void test_recheck_before_close(void **state) {
        const struct cycle_result *r;

        (void) state;
        T.config = load_config(
                (struct yaml){ .max_parallel = 1,
                               .recheck = true,
                               .policies = "  - {name: failed-streams, kind: failed, after: 0s}\n"
                                           "  - {name: never-started, kind: not_started, after: 0s}\n" });
        gateway_lists("f1", "u-1", SESSION_STREAM_FAILED, TRISTATE_TRUE);
        gateway_lists("n1", "u-2", SESSION_IN_PROGRESS, TRISTATE_FALSE);
        gateway_lists("n2", "u-3", SESSION_IN_PROGRESS, TRISTATE_FALSE);
        gateway_lists("n3", "u-4", SESSION_PREPARING, TRISTATE_FALSE);
        F.script = script_recheck;

        r = run_cycle();
        assert_string_equal(sent_ids("statsession"), "n1 n2 n3"); /* not for a failed stream */
        assert_string_equal(closes(), "f1 n1");
        assert_counts(r, 2, 1, 0, 1, 0, 0, 0);
        assert_int_equal(log_lines("outcome=skipped", "session_id=n2", "no longer applies", NULL), 1);
}

/* Every way a close can fail, and the next cycle: the failed sessions back
 * off, the gone ones are not listed as due any more. */
static void script_failures(const struct sent *s, unsigned attempt, struct answer *a) {
        (void) attempt;
        if (strcmp(s->endpoint, "closesession") == 0) {
                if (strcmp(s->id, "f1") == 0)
                        a->status = 500;
                else if (strcmp(s->id, "f2") == 0)
                        a->result = CURLE_COULDNT_CONNECT;
                else if (strcmp(s->id, "f3") == 0) {
                        a->code = 110013; /* already closed */
                        find_session("f3")->status = SESSION_CLOSED;
                } else if (strcmp(s->id, "f4") == 0) {
                        a->code = 123456; /* unknown: statsession says it is gone */
                        find_session("f4")->status = SESSION_CLOSED;
                } else if (strcmp(s->id, "f5") == 0)
                        a->code = 123456; /* unknown: statsession says it is still there */
                else if (strcmp(s->id, "f6") == 0)
                        a->refuse = -ENOMEM;
        }
}

static void test_close_failures_back_off(void **state) {
        const struct cycle_result *r;

        (void) state;
        T.config = load_config((struct yaml){ .max_parallel = 3 });
        gateway_lists_failed(7);
        F.script = script_failures;

        r = run_cycle();
        assert_string_equal(closes(), "f1 f2 f3 f4 f5 f7");
        assert_int_equal(count_sent("closesession"), 6);
        assert_string_equal(sent_ids("statsession"), "f4 f5");
        assert_counts(r, 1, 2, 4, 0, 0, 0, 0);
        assert_int_equal(retry_size(T.retries), 4); /* f1, f2, f5, f6 */
        assert_int_equal(log_lines("Failed to reclaim session f1", "HTTP status 500", NULL), 1);
        assert_int_equal(log_lines("Failed to reclaim session f2", "Connection refused", NULL), 1);
        assert_int_equal(log_lines("Failed to reclaim session f6", "Cannot allocate memory", NULL), 1);

        /* The next cycle: the failed ones wait, nothing is sent. */
        F.n_sent = 0;
        F.script = NULL;
        r = run_cycle();
        assert_int_equal(count_sent("listsessionofuin"), 1);
        assert_string_equal(closes(), "");
        assert_string_equal(phases(), "closing ended");
        assert_int_equal(r->backing_off, 4);
        assert_counts(r, 0, 0, 0, 0, 0, 0, 0);
}

static void script_500_retry_after(const struct sent *s, unsigned attempt, struct answer *a) {
        (void) attempt;
        if (strcmp(s->endpoint, "closesession") == 0 && strcmp(s->id, "f1") == 0) {
                a->status = 500;
                a->retry_after_s = 1;
        }
}

/* A failed close with a Retry-After: the session backs off at least that
 * long, and the other closes of the cycle wait for it too. */
static void test_failure_with_retry_after(void **state) {
        const struct cycle_result *r;
        uint64_t wait = 0;
        int64_t gap;

        (void) state;
        T.config = load_config((struct yaml){ .max_parallel = 1 });
        gateway_lists_failed(2);
        F.script = script_500_retry_after;

        r = run_cycle();
        assert_string_equal(closes(), "f1 f2");
        assert_counts(r, 1, 0, 1, 0, 0, 0, 0);
        gap = sent_at("closesession", "f2", 0) - sent_at("closesession", "f1", 0);
        assert_true(gap >= 950);
        assert_true(retry_blocked(T.retries, "f1", now_mono_ms(), &wait));
        assert_false(retry_blocked(T.retries, "f2", now_mono_ms(), &wait));
        assert_int_equal(log_lines("asked for a pause (Retry-After)", NULL), 1);
}

/* ------------------------------------------------------------------ */
/* Listing                                                             */

static void script_list_fails(const struct sent *s, unsigned attempt, struct answer *a) {
        (void) attempt;
        if (is_list(s->endpoint)) {
                a->code = 100012;
                a->retry_after_s = 7;
        }
}

/* A failed list: nothing is closed, the cycle ends from LISTING. */
static void test_list_failure(void **state) {
        const struct cycle_result *r;

        (void) state;
        T.config = load_config((struct yaml){ 0 });
        gateway_lists_failed(2);
        F.script = script_list_fails;
        r = run_cycle();
        assert_string_equal(phases(), "ended");
        assert_true(r->list_failed);
        assert_int_equal(r->throttled, 1);
        assert_int_equal(r->retry_after_ms, 7000);
        assert_string_equal(closes(), "");
        assert_int_equal(log_lines("Failed to list sessions", "100012", NULL), 1);
}

static void script_refuse_list(const struct sent *s, unsigned attempt, struct answer *a) {
        (void) attempt;
        if (is_list(s->endpoint) && strcmp(s->id, "p1") != 0)
                a->refuse = -ENOMEM;
}

/* The list call cannot even be started: cycle_start() fails, and says so. */
static void test_list_cannot_start(void **state) {
        const struct cycle_result *r;
        int ret = 0;

        (void) state;
        T.config = load_config((struct yaml){ 0 });
        gateway_lists_failed(2);
        F.script = script_refuse_list;
        assert_null(start_and_run(&ret));
        assert_int_equal(ret, -ENOMEM);
        assert_int_equal(log_lines("Failed to list sessions", "cannot start request", NULL), 1);

        /* One project's list goes, the next cannot start: the cycle waits
         * for the first, then fails. */
        T.config = load_config((struct yaml){ .gateway = "project_ids: [p1, p2, p3], " });
        F.n_sent = 0;
        r = run_cycle();
        assert_string_equal(sent_ids("listsessionofprojectid"), "p1");
        assert_string_equal(phases(), "ended");
        assert_true(r->list_failed);
        assert_string_equal(closes(), "");
        assert_int_equal(log_lines("Failed to list sessions", "cannot start request", NULL), 1);
}

/* gateway.project_ids and asset_vks: one list call each, merged. */
static void script_project_fails(const struct sent *s, unsigned attempt, struct answer *a) {
        (void) attempt;
        if (strcmp(s->id, "p2") == 0)
                a->status = 502;
}

static void test_project_lists(void **state) {
        const struct cycle_result *r;

        (void) state;
        T.config = load_config((struct yaml){ .gateway = "project_ids: [p1, p2], asset_vks: [a1], " });
        gateway_lists("f1", "u-1", SESSION_STREAM_FAILED, TRISTATE_TRUE);
        gateway_lists("f2", "u-2", SESSION_STREAM_FAILED, TRISTATE_TRUE);
        gateway_lists("f3", "u-3", SESSION_STREAM_FAILED, TRISTATE_TRUE);
        gateway_lists("other", "u-4", SESSION_STREAM_FAILED, TRISTATE_TRUE);
        F.sessions[0].group = "p1";
        F.sessions[1].group = "p2";
        F.sessions[2].group = "a1";
        F.sessions[3].group = "p9"; /* not ours */

        r = run_cycle();
        assert_string_equal(sent_ids("listsessionofprojectid"), "p1 p2");
        assert_string_equal(sent_ids("listsessionofassetvk"), "a1");
        assert_int_equal(count_sent("listsessionofuin"), 0);
        assert_int_equal(r->listed, 3);
        assert_string_equal(closes(), "f1 f2 f3");
        assert_counts(r, 3, 0, 0, 0, 0, 0, 0);

        /* One project's list fails: the cycle decides nothing. */
        F.n_sent = 0;
        F.script = script_project_fails;
        r = run_cycle();
        assert_string_equal(phases(), "ended");
        assert_true(r->list_failed);
        assert_string_equal(closes(), "");
        assert_int_equal(log_lines("Failed to list sessions", "project p2", "HTTP status 502", NULL), 1);
}

/* ------------------------------------------------------------------ */
/* Throttling                                                          */

static void script_100012_once(const struct sent *s, unsigned attempt, struct answer *a) {
        if (strcmp(s->endpoint, "closesession") == 0 && strcmp(s->id, "f2") == 0 && attempt == 0)
                a->code = 100012;
}

/* A close refused as too frequent (Code 100012) is sent again in the same
 * cycle, once the account's pace (cut at the refusal) allows; the session
 * does not back off. */
static void test_throttled_close_is_sent_again(void **state) {
        const struct cycle_result *r;
        int64_t gap;

        (void) state;
        T.config = load_config((struct yaml){ .max_parallel = 1 });
        throttle_init(&T.throttle, 1, 0, now_mono_ms());
        T.use_throttle = true;
        gateway_lists_failed(3);
        F.script = script_100012_once;

        r = run_cycle();
        assert_string_equal(closes(), "f1 f2 f2 f3");
        assert_counts(r, 3, 0, 0, 0, 0, 1, 0);
        assert_int_equal(T.throttle.cuts, 1); /* 100012 teaches a pace */
        assert_true(throttle_rate(&T.throttle) > 0);
        gap = sent_at("closesession", "f2", 1) - sent_at("closesession", "f2", 0);
        assert_true(gap >= (int64_t) (1000 / throttle_rate(&T.throttle)) - 1); /* one call at the new pace */
        assert_int_equal(retry_size(T.retries), 0);
        assert_int_equal(log_lines("calls too often", "the pace is now", NULL), 1);
        assert_int_equal(log_lines("pausing", NULL), 0);
        assert_int_equal(log_lines("outcome=", "session_id=f2", NULL), 1); /* one reclaim entry */
}

static void script_429(const struct sent *s, unsigned attempt, struct answer *a) {
        if (strcmp(s->endpoint, "closesession") == 0 && strcmp(s->id, "f1") == 0 && attempt == 0) {
                a->status = 429;
                a->retry_after_s = 1;
        }
        if (strcmp(s->endpoint, "closesession") == 0 && strcmp(s->id, "f2") == 0)
                a->delay_s = 0.05; /* answered after the 429 */
}

static struct cycle_activity probed;
static bool was_probed;

static void probe_cb(struct ev_loop *loop, ev_timer *w, int revents) {
        (void) loop;
        (void) w;
        (void) revents;
        cycle_get_activity(T.cycle, &probed);
        was_probed = true;
}

/* HTTP 429 with Retry-After: the close goes again once it has passed. */
static void test_http_429_retry_after(void **state) {
        const struct cycle_result *r;
        ev_timer probe;
        int64_t gap;

        (void) state;
        T.config = load_config((struct yaml){ .max_parallel = 2 });
        throttle_init(&T.throttle, 2, 0, now_mono_ms());
        T.use_throttle = true;
        gateway_lists_failed(2);
        F.script = script_429;
        /* Half way through the pause: nothing in flight, dispatch paused. */
        ev_timer_init(&probe, probe_cb, 0.5, 0.);
        ev_timer_start(T.loop, &probe);

        r = run_cycle();
        assert_string_equal(closes(), "f1 f2 f1");
        assert_counts(r, 2, 0, 0, 0, 0, 1, 0);
        gap = sent_at("closesession", "f1", 1) - sent_at("closesession", "f1", 0);
        assert_true(gap >= 950);
        assert_true(was_probed);
        assert_true(probed.paused);
        assert_int_equal(probed.in_flight, 0);
        assert_int_equal(retry_size(T.retries), 0);
}

static void script_503(const struct sent *s, unsigned attempt, struct answer *a) {
        if (strcmp(s->endpoint, "closesession") == 0 && strcmp(s->id, "f1") == 0 && attempt == 0)
                a->status = 503;
}

/* HTTP 503: the gateway is overloaded. A pause and a smaller window, but no
 * pace learnt from it. */
static void test_http_503_teaches_no_pace(void **state) {
        const struct cycle_result *r;

        (void) state;
        T.config = load_config((struct yaml){ .max_parallel = 1 });
        throttle_init(&T.throttle, 1, 0, now_mono_ms());
        T.use_throttle = true;
        gateway_lists_failed(2);
        F.script = script_503;

        r = run_cycle();
        assert_string_equal(closes(), "f1 f1 f2");
        assert_counts(r, 2, 0, 0, 0, 0, 1, 0);
        assert_int_equal(T.throttle.cuts, 0); /* 503 teaches no pace */
        assert_true(throttle_rate(&T.throttle) == 0);
        assert_int_equal(log_lines("overloaded (HTTP 503)", NULL), 1);
}

static void script_long_retry_after(const struct sent *s, unsigned attempt, struct answer *a) {
        (void) attempt;
        if (strcmp(s->endpoint, "closesession") == 0 && strcmp(s->id, "f1") == 0) {
                a->status = 429;
                a->retry_after_s = 30;
        }
}

/* A Retry-After that outlasts poll_interval: the cycle does not wait; the
 * throttled close and the ones not sent are left to the next cycle, which
 * waits for it. */
static void test_retry_after_past_poll_interval(void **state) {
        const struct cycle_result *r;

        (void) state;
        T.config = load_config((struct yaml){ .max_parallel = 1, .poll_interval = "2s" });
        throttle_init(&T.throttle, 1, 0, now_mono_ms());
        T.use_throttle = true;
        gateway_lists_failed(3);
        F.script = script_long_retry_after;

        r = run_cycle();
        assert_string_equal(closes(), "f1");
        assert_counts(r, 0, 0, 0, 0, 3, 1, 0);
        assert_true(r->duration_ms < 1000);
        assert_true(throttle_held_ms(&T.throttle, now_mono_ms()) > 25000);
        assert_int_equal(retry_size(T.retries), 0);
        assert_int_equal(log_lines("longer than poll_interval", NULL), 1);
}

static void script_auth(const struct sent *s, unsigned attempt, struct answer *a) {
        (void) attempt;
        if (strcmp(s->endpoint, "closesession") == 0)
                a->code = 100005;
}

static void script_stat_100012_once(const struct sent *s, unsigned attempt, struct answer *a) {
        if (strcmp(s->endpoint, "statsession") == 0 && attempt == 0)
                a->code = 100012;
}

/* A re-check (statsession before the close) refused as too frequent is
 * sent again too, then the close. */
static void test_throttled_recheck_is_sent_again(void **state) {
        const struct cycle_result *r;

        (void) state;
        T.config = load_config((struct yaml){
                .recheck = true, .policies = "  - {name: never-started, kind: not_started, after: 0s}\n" });
        throttle_init(&T.throttle, 4, 0, now_mono_ms());
        T.use_throttle = true;
        gateway_lists("n1", "u-1", SESSION_IN_PROGRESS, TRISTATE_FALSE);
        F.script = script_stat_100012_once;

        r = run_cycle();
        assert_string_equal(sent_ids("statsession"), "n1 n1");
        assert_string_equal(closes(), "n1");
        assert_counts(r, 1, 0, 0, 0, 0, 1, 0);
        assert_int_equal(retry_size(T.retries), 0);
}

/* gateway.max_rate paces the closes; what the pace would send only after
 * poll_interval is left to the next cycle. */
static void test_pace_leaves_closes_for_the_next_cycle(void **state) {
        const struct cycle_result *r;
        int64_t gap;

        (void) state;
        T.config = load_config(
                (struct yaml){ .max_parallel = 8, .poll_interval = "1s", .gateway = "max_rate: 2, " });
        throttle_init(&T.throttle, T.config->gateway.max_parallel, T.config->gateway.max_rate,
                      now_mono_ms());
        T.use_throttle = true;
        gateway_lists_failed(6);

        r = run_cycle();
        /* One second's burst (2), then one every 500 ms, until 1 s is up. */
        assert_string_equal(closes(), "f1 f2 f3");
        gap = sent_at("closesession", "f3", 0) - sent_at("closesession", "f2", 0);
        assert_true(gap >= 450);
        assert_counts(r, 3, 0, 0, 0, 3, 0, 0);
        assert_true(r->duration_ms < 1000);
        assert_int_equal(log_lines("The account's pace (2.0 calls/s)", "wait for the next cycle", NULL), 1);
}

/* The credentials are refused: nothing more is sent, nothing backs off. */
static void test_auth_refusal(void **state) {
        const struct cycle_result *r;

        (void) state;
        T.config = load_config((struct yaml){ .max_parallel = 1 });
        gateway_lists_failed(3);
        F.script = script_auth;

        r = run_cycle();
        assert_string_equal(closes(), "f1");
        assert_counts(r, 0, 0, 1, 0, 2, 0, 0);
        assert_true(r->auth_failed);
        assert_int_equal(retry_size(T.retries), 0);
        assert_int_equal(log_lines("refused our credentials", NULL), 1);
}

/* ------------------------------------------------------------------ */
/* A reload during the cycle                                           */

static const struct config *reloaded;

/* Reloads before the first reply to a closesession: closes are in flight,
 * others not yet sent. */
static void hook_reload_at_first_close_reply(const struct sent *s, unsigned nth) {
        if (strcmp(s->endpoint, "closesession") == 0 && nth == 0)
                cycle_reconfigure(T.cycle, reloaded);
}

/* A reload that protects a user: her closes not yet sent are skipped; the
 * one in flight completes. */
static void test_reload_protects_a_user(void **state) {
        const struct cycle_result *r;

        (void) state;
        T.config = load_config((struct yaml){ .max_parallel = 2 });
        reloaded = load_config((struct yaml){ .max_parallel = 2, .protect = "['b-*']" });
        gateway_lists("b1", "b-1", SESSION_STREAM_FAILED, TRISTATE_TRUE);
        gateway_lists("a1", "a-1", SESSION_STREAM_FAILED, TRISTATE_TRUE);
        gateway_lists("b2", "b-2", SESSION_STREAM_FAILED, TRISTATE_TRUE);
        gateway_lists("a2", "a-2", SESSION_STREAM_FAILED, TRISTATE_TRUE);
        gateway_lists("b3", "b-3", SESSION_STREAM_FAILED, TRISTATE_TRUE);
        gateway_lists("a3", "a-3", SESSION_STREAM_FAILED, TRISTATE_TRUE);
        F.hook = hook_reload_at_first_close_reply;

        r = run_cycle();
        assert_string_equal(closes(), "b1 a1 a2 a3"); /* b1 was in flight */
        assert_counts(r, 4, 0, 0, 2, 0, 0, 0);
        assert_int_equal(log_lines("outcome=skipped", "the reloaded configuration protects it", NULL), 2);
        assert_int_equal(log_lines("outcome=skipped", "session_id=b2", NULL), 1);
        assert_int_equal(log_lines("outcome=skipped", "session_id=b3", NULL), 1);
}

/* A reload that raises an over_capacity policy's capacity: the victims not
 * yet closed are no longer over it. */
static void test_reload_raises_capacity(void **state) {
        const struct cycle_result *r;

        (void) state;
        T.config = load_config((struct yaml){
                .max_parallel = 1, .policies = "  - {name: cap, kind: over_capacity, capacity: 2}\n" });
        reloaded = load_config((struct yaml){
                .max_parallel = 1, .policies = "  - {name: cap, kind: over_capacity, capacity: 10}\n" });
        for (size_t i = 0; i < 6; i++) {
                static const char *const ids[] = { "k1", "k2", "k3", "k4", "k5", "k6" };

                gateway_lists(ids[i], "kiosk", SESSION_IN_PROGRESS, TRISTATE_TRUE);
        }
        F.hook = hook_reload_at_first_close_reply;

        r = run_cycle();
        assert_int_equal(r->due, 4);
        assert_int_equal(count_sent("closesession"), 1);
        assert_counts(r, 1, 0, 0, 3, 0, 0, 0);
        assert_int_equal(log_lines("outcome=skipped", "no longer selects it", NULL), 3);
}

/* A reload that turns dry_run on: nothing more is closed. */
static void test_reload_turns_on_dry_run(void **state) {
        const struct cycle_result *r;

        (void) state;
        T.config = load_config((struct yaml){ .max_parallel = 2 });
        reloaded = load_config((struct yaml){ .max_parallel = 2, .dry_run = true });
        gateway_lists_failed(5);
        F.hook = hook_reload_at_first_close_reply;

        r = run_cycle();
        assert_string_equal(closes(), "f1 f2");
        assert_counts(r, 2, 0, 0, 3, 0, 0, 0);
        assert_int_equal(r->dry_run, 0);
        assert_int_equal(log_lines("outcome=skipped", "is a dry run", NULL), 3);
}

static void hook_reload_at_list_reply(const struct sent *s, unsigned nth) {
        (void) nth;
        if (is_list(s->endpoint))
                cycle_reconfigure(T.cycle, reloaded);
}

/* A reload while the list is in flight: the reloaded file decides. */
static void test_reload_while_listing(void **state) {
        const struct cycle_result *r;

        (void) state;
        T.config = load_config((struct yaml){ 0 });
        reloaded = load_config((struct yaml){ .protect = "['*']" });
        gateway_lists_failed(3);
        F.hook = hook_reload_at_list_reply;

        r = run_cycle();
        assert_string_equal(phases(), "closing ended");
        assert_string_equal(closes(), "");
        assert_int_equal(r->protected_due, 3);
        assert_counts(r, 0, 0, 0, 0, 0, 0, 0);
}

static void script_throttle_f1_then_slow_f2(const struct sent *s, unsigned attempt, struct answer *a) {
        if (strcmp(s->endpoint, "closesession") != 0)
                return;
        if (strcmp(s->id, "f1") == 0 && attempt == 0) {
                a->code = 100012;
                a->retry_after_s = 1; /* a pause */
        }
        if (strcmp(s->id, "f2") == 0)
                a->delay_s = 0.1; /* answered during f1's pause */
}

static void hook_reload_at_f2_reply(const struct sent *s, unsigned nth) {
        (void) nth;
        if (strcmp(s->endpoint, "closesession") == 0 && strcmp(s->id, "f2") == 0)
                cycle_reconfigure(T.cycle, reloaded);
}

static void hook_reload_at_first_stat_reply(const struct sent *s, unsigned nth) {
        if (strcmp(s->endpoint, "statsession") == 0 && nth == 0)
                cycle_reconfigure(T.cycle, reloaded);
}

/* A reload that protects a session whose re-check is in flight: its close
 * is not sent. */
static void test_reload_during_a_recheck(void **state) {
        const struct cycle_result *r;
        const char *policies = "  - {name: never-started, kind: not_started, after: 0s}\n";

        (void) state;
        T.config = load_config((struct yaml){ .max_parallel = 1, .recheck = true, .policies = policies });
        reloaded = load_config((struct yaml){
                .max_parallel = 1, .recheck = true, .policies = policies, .protect = "['u-1']" });
        gateway_lists("n1", "u-1", SESSION_IN_PROGRESS, TRISTATE_FALSE);
        gateway_lists("n2", "u-2", SESSION_IN_PROGRESS, TRISTATE_FALSE);
        F.hook = hook_reload_at_first_stat_reply;

        r = run_cycle();
        assert_string_equal(sent_ids("statsession"), "n1 n2");
        assert_string_equal(closes(), "n2");
        assert_counts(r, 1, 0, 0, 1, 0, 0, 0);
        assert_int_equal(log_lines("outcome=skipped", "session_id=n1", "protects it", NULL), 1);
}

/* A reload that lowers max_closes_per_cycle: the closes already sent count
 * against it, the rest are skipped. */
static void test_reload_lowers_max_closes(void **state) {
        const struct cycle_result *r;

        (void) state;
        T.config = load_config((struct yaml){ .max_parallel = 2 });
        reloaded = load_config((struct yaml){ .max_parallel = 2, .max_closes = 3 });
        gateway_lists_failed(6);
        F.hook = hook_reload_at_first_close_reply;

        r = run_cycle();
        assert_string_equal(closes(), "f1 f2 f3");
        assert_counts(r, 3, 0, 0, 3, 0, 0, 0);
        assert_int_equal(log_lines("outcome=skipped", "no longer selects it (deferred)", NULL), 3);
}

/* A close requeued after a throttle, then protected by a reload during the
 * pause: it is not sent again. */
static void test_reload_skips_a_requeued_close(void **state) {
        const struct cycle_result *r;

        (void) state;
        T.config = load_config((struct yaml){ .max_parallel = 2 });
        reloaded = load_config((struct yaml){ .max_parallel = 2, .protect = "['u-1']" });
        throttle_init(&T.throttle, 2, 0, now_mono_ms());
        T.use_throttle = true;
        gateway_lists_failed(3);
        F.script = script_throttle_f1_then_slow_f2;
        F.hook = hook_reload_at_f2_reply;

        r = run_cycle();
        assert_string_equal(closes(), "f1 f2 f3");
        assert_counts(r, 2, 0, 0, 1, 0, 1, 0);
        assert_int_equal(log_lines("outcome=skipped", "session_id=f1", "protects it", NULL), 1);
}

static void hook_reload_at_f1_throttled_reply(const struct sent *s, unsigned nth) {
        (void) nth;
        if (strcmp(s->endpoint, "closesession") == 0 && strcmp(s->id, "f1") == 0)
                cycle_reconfigure(T.cycle, reloaded);
}

/* The reload comes while the throttled close is still in flight: the
 * decision counts it as sent, then the throttle puts it back; before it
 * goes again, decide() is asked again and protects it. */
static void test_reload_before_a_throttle_reply(void **state) {
        const struct cycle_result *r;

        (void) state;
        T.config = load_config((struct yaml){ .max_parallel = 1 });
        reloaded = load_config((struct yaml){ .max_parallel = 1, .protect = "['u-1']" });
        throttle_init(&T.throttle, 1, 0, now_mono_ms());
        T.use_throttle = true;
        gateway_lists_failed(2);
        F.script = script_throttle_f1_then_slow_f2; /* f1's first close is refused */
        F.hook = hook_reload_at_f1_throttled_reply;

        r = run_cycle();
        assert_string_equal(closes(), "f1 f2");
        assert_counts(r, 1, 0, 0, 1, 0, 1, 0);
        assert_int_equal(log_lines("outcome=skipped", "session_id=f1", "protects it", NULL), 1);
}

/* ------------------------------------------------------------------ */
/* Stopping                                                            */

static void hook_stop_at_first_close_reply(const struct sent *s, unsigned nth) {
        if (strcmp(s->endpoint, "closesession") == 0 && nth == 0)
                cycle_stop(T.cycle);
}

static void hook_stop_at_list_reply(const struct sent *s, unsigned nth) {
        (void) nth;
        if (is_list(s->endpoint))
                cycle_stop(T.cycle);
}

static void hook_stop_at_f2_reply(const struct sent *s, unsigned nth) {
        (void) nth;
        if (strcmp(s->endpoint, "closesession") == 0 && strcmp(s->id, "f2") == 0)
                cycle_stop(T.cycle);
}

/* cycle_stop(): the closes in flight finish, the others are deferred. */
static void test_stop(void **state) {
        const struct cycle_result *r;

        (void) state;
        T.config = load_config((struct yaml){ .max_parallel = 2 });
        gateway_lists_failed(5);
        F.hook = hook_stop_at_first_close_reply;
        r = run_cycle();
        assert_string_equal(closes(), "f1 f2");
        assert_counts(r, 2, 0, 0, 0, 3, 0, 0);

        /* Stopped during the pause after a throttle: the requeued close
         * and the one not yet sent are deferred at once. */
        F.n_sent = 0;
        for (size_t i = 0; i < F.n_sessions; i++)
                F.sessions[i].status = SESSION_STREAM_FAILED;
        throttle_init(&T.throttle, 2, 0, now_mono_ms());
        T.use_throttle = true;
        F.script = script_throttle_f1_then_slow_f2;
        F.hook = hook_stop_at_f2_reply;
        r = run_cycle();
        assert_string_equal(closes(), "f1 f2");
        assert_counts(r, 1, 0, 0, 0, 4, 1, 0);
        /* It ended with f2's reply, without waiting for the pause. */
        assert_true(r->started_ms + r->duration_ms < T.throttle.paused_until_ms);

        /* Stopped while listing: nothing is decided. */
        F.n_sent = 0;
        F.script = NULL;
        F.hook = hook_stop_at_list_reply;
        r = run_cycle();
        assert_string_equal(phases(), "ended");
        assert_string_equal(closes(), "");
        assert_counts(r, 0, 0, 0, 0, 0, 0, 0);
}

/* ------------------------------------------------------------------ */
/* Fencing (ha:)                                                       */

/* A standby, or an instance cut off from etcd, lists and keeps ages but
 * closes nothing. */
static void test_standby_closes_nothing(void **state) {
        static const enum ha_role roles[] = { HA_STANDBY, HA_UNREACHABLE };

        (void) state;
        T.config = load_config((struct yaml){ 0 });
        gateway_lists_failed(3);
        T.ha = &test_ha;
        for (size_t i = 0; i < ELEMENTSOF(roles); i++) {
                const struct cycle_result *r;

                test_ha = (struct ha){ .role = roles[i] };
                F.n_sent = 0;
                r = run_cycle();
                assert_int_equal(count_sent("listsessionofuin"), 1);
                assert_int_equal(F.n_sent, 1);
                assert_string_equal(phases(), "closing ended");
                assert_int_equal(r->due, 3);
                assert_counts(r, 0, 0, 0, 0, 0, 0, 3);
                assert_int_equal(log_lines("Cycle done", "standby=3", NULL), 1);
                assert_int_equal(log_lines("outcome=", NULL), 0); /* no per-session entry */
        }
        assert_int_equal(state_size(T.state), 3); /* the ages are kept for a failover */
}

/* A leader whose lease etcd has not confirmed lately sends nothing. */
static void test_stale_lease_sends_nothing(void **state) {
        const struct cycle_result *r;

        (void) state;
        T.config = load_config((struct yaml){ 0 });
        gateway_lists_failed(3);
        test_ha = (struct ha){ .role = HA_LEADER, .lease_fresh = false };
        T.ha = &test_ha;
        r = run_cycle();
        assert_string_equal(closes(), "");
        assert_int_equal(count_sent("statsession"), 0);
        assert_counts(r, 0, 0, 0, 0, 0, 0, 3);
        assert_int_equal(log_lines("no longer holds a confirmed etcd lease", NULL), 1);
        /* The warning counts every close held back, the one about to go too. */
        assert_int_equal(log_lines("3 close(s) not sent are left to the leader", NULL), 1);
}

static void hook_lease_lost_at_first_close_reply(const struct sent *s, unsigned nth) {
        if (strcmp(s->endpoint, "closesession") == 0 && nth == 0)
                test_ha.lease_fresh = false;
}

static void script_f2_late(const struct sent *s, unsigned attempt, struct answer *a, long code) {
        (void) attempt;
        if (strcmp(s->endpoint, "closesession") == 0 && strcmp(s->id, "f2") == 0) {
                a->code = code;
                a->delay_s = 0.05;
        }
}

static void script_f2_late_throttled(const struct sent *s, unsigned attempt, struct answer *a) {
        script_f2_late(s, attempt, a, 100012);
}

static void script_f2_late_unknown_error(const struct sent *s, unsigned attempt, struct answer *a) {
        script_f2_late(s, attempt, a, 123456);
}

/* The lease goes stale with closes in flight: they finish, nothing more
 * is sent; a throttled one is left to the leader, not requeued. */
static void test_fenced_during_the_cycle(void **state) {
        const struct cycle_result *r;

        (void) state;
        T.config = load_config((struct yaml){ .max_parallel = 2 });
        gateway_lists_failed(5);
        test_ha = (struct ha){ .role = HA_LEADER, .lease_fresh = true };
        T.ha = &test_ha;
        F.hook = hook_lease_lost_at_first_close_reply;
        F.script = script_f2_late_throttled;

        r = run_cycle();
        assert_string_equal(closes(), "f1 f2");
        assert_counts(r, 1, 0, 0, 0, 0, 1, 4);
        assert_int_equal(log_lines("no longer holds a confirmed etcd lease", NULL), 1);

        /* An unknown error after the fence: no statsession to check it. */
        F.n_sent = 0;
        test_ha.lease_fresh = true;
        F.script = script_f2_late_unknown_error;
        for (size_t i = 0; i < F.n_sessions; i++)
                F.sessions[i].status = SESSION_STREAM_FAILED;
        r = run_cycle();
        assert_string_equal(closes(), "f1 f2");
        assert_int_equal(count_sent("statsession"), 0);
        assert_counts(r, 1, 0, 1, 0, 0, 0, 3);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_closes_exactly_the_due, setup, teardown),
                cmocka_unit_test_setup_teardown(test_max_closes_per_cycle, setup, teardown),
                cmocka_unit_test_setup_teardown(test_recheck_before_close, setup, teardown),
                cmocka_unit_test_setup_teardown(test_close_failures_back_off, setup, teardown),
                cmocka_unit_test_setup_teardown(test_failure_with_retry_after, setup, teardown),
                cmocka_unit_test_setup_teardown(test_list_failure, setup, teardown),
                cmocka_unit_test_setup_teardown(test_list_cannot_start, setup, teardown),
                cmocka_unit_test_setup_teardown(test_project_lists, setup, teardown),
                cmocka_unit_test_setup_teardown(test_throttled_close_is_sent_again, setup, teardown),
                cmocka_unit_test_setup_teardown(test_http_429_retry_after, setup, teardown),
                cmocka_unit_test_setup_teardown(test_http_503_teaches_no_pace, setup, teardown),
                cmocka_unit_test_setup_teardown(test_retry_after_past_poll_interval, setup, teardown),
                cmocka_unit_test_setup_teardown(test_throttled_recheck_is_sent_again, setup, teardown),
                cmocka_unit_test_setup_teardown(test_pace_leaves_closes_for_the_next_cycle, setup, teardown),
                cmocka_unit_test_setup_teardown(test_auth_refusal, setup, teardown),
                cmocka_unit_test_setup_teardown(test_reload_protects_a_user, setup, teardown),
                cmocka_unit_test_setup_teardown(test_reload_raises_capacity, setup, teardown),
                cmocka_unit_test_setup_teardown(test_reload_turns_on_dry_run, setup, teardown),
                cmocka_unit_test_setup_teardown(test_reload_while_listing, setup, teardown),
                cmocka_unit_test_setup_teardown(test_reload_during_a_recheck, setup, teardown),
                cmocka_unit_test_setup_teardown(test_reload_lowers_max_closes, setup, teardown),
                cmocka_unit_test_setup_teardown(test_reload_skips_a_requeued_close, setup, teardown),
                cmocka_unit_test_setup_teardown(test_reload_before_a_throttle_reply, setup, teardown),
                cmocka_unit_test_setup_teardown(test_stop, setup, teardown),
                cmocka_unit_test_setup_teardown(test_standby_closes_nothing, setup, teardown),
                cmocka_unit_test_setup_teardown(test_stale_lease_sends_nothing, setup, teardown),
                cmocka_unit_test_setup_teardown(test_fenced_during_the_cycle, setup, teardown),
        };

        log_open(LOG_TARGET_CONSOLE);
        log_set_max_level(LOG_DEBUG);
        return cmocka_run_group_tests(tests, NULL, NULL);
}
