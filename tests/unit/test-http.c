/* daemon/http.c (libcurl's multi interface on a libev loop) against a tiny
 * HTTP/1.1 server on 127.0.0.1, served by the same loop in this process:
 * what a request carries, what a response says (status, body, Retry-After,
 * a body over the size limit, a refused connection, a timeout), and that
 * http_free() cancels what is in flight, also from inside a callback. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "http.h"

#define MAX_CONNS     8
#define TIMEOUT_S     5.0 /* a run that takes longer than this has hung */
#define MAX_RESPONSES 8

/* ------------------------------------------------------------------ */
/* The server                                                          */

struct conn {
        int fd;
        ev_io io;
        char buf[16384];
        size_t len;
};

static struct server {
        int fd, port;
        ev_io accept_io;
        struct conn conns[MAX_CONNS];
        unsigned accepted, requests;
        unsigned answer_max; /* answer the first this many requests; read the rest, never answer */
        /* What the next requests are answered, in turn (the last one again
         * when they run out): a whole response without its body, and its
         * body. */
        const char *head[MAX_RESPONSES];
        const char *body[MAX_RESPONSES];
        size_t n_responses;
        char last_request[4096]; /* head and body of the last request */
} S;

/* Answers every complete request in c->buf. */
static void serve(struct conn *c) {
        for (;;) {
                char *end, *cl;
                size_t head_len, body_len = 0, n;
                char out[16384];
                unsigned k;
                int len;

                c->buf[c->len] = '\0';
                end = strstr(c->buf, "\r\n\r\n");
                if (!end)
                        return;
                head_len = (size_t) (end + 4 - c->buf);
                cl = strcasestr(c->buf, "\r\nContent-Length:");
                if (cl && cl < end)
                        body_len = strtoul(cl + 17, NULL, 10);
                if (c->len < head_len + body_len)
                        return;
                n = head_len + body_len;
                snprintf(S.last_request, sizeof S.last_request, "%.*s", (int) n, c->buf);
                k = S.requests < S.n_responses ? S.requests : (unsigned) S.n_responses - 1;
                S.requests++;
                memmove(c->buf, c->buf + n, c->len - n);
                c->len -= n;
                if (S.requests > S.answer_max)
                        continue;
                len = snprintf(out, sizeof out, "%sContent-Length: %zu\r\n\r\n%s", S.head[k],
                               strlen(S.body[k]), S.body[k]);
                assert_true(len > 0 && (size_t) len < sizeof out);
                /* Blocking, and small enough for the socket's buffer. */
                assert_int_equal(write(c->fd, out, (size_t) len), len);
        }
}

static void conn_close(struct ev_loop *loop, struct conn *c) {
        ev_io_stop(loop, &c->io);
        close(c->fd);
        c->fd = -1;
}

static void conn_cb(struct ev_loop *loop, ev_io *w, int revents) {
        struct conn *c = w->data;
        ssize_t n;

        (void) revents;
        n = read(c->fd, c->buf + c->len, sizeof c->buf - 1 - c->len);
        if (n <= 0) {
                conn_close(loop, c);
                return;
        }
        c->len += (size_t) n;
        serve(c);
}

static void accept_cb(struct ev_loop *loop, ev_io *w, int revents) {
        int fd = accept(w->fd, NULL, NULL);

        (void) revents;
        if (fd < 0)
                return;
        for (size_t i = 0; i < MAX_CONNS; i++) {
                struct conn *c = &S.conns[i];

                if (c->fd >= 0)
                        continue;
                c->fd = fd;
                c->len = 0;
                c->io.data = c;
                ev_io_init(&c->io, conn_cb, fd, EV_READ);
                ev_io_start(loop, &c->io);
                S.accepted++;
                return;
        }
        close(fd);
}

/* A listening socket on 127.0.0.1; returns it, its port in *port. */
static int listen_loopback(int *port) {
        struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        socklen_t len = sizeof a;
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

        assert_true(fd >= 0);
        assert_int_equal(bind(fd, (struct sockaddr *) &a, sizeof a), 0);
        assert_int_equal(listen(fd, 16), 0);
        assert_int_equal(getsockname(fd, (struct sockaddr *) &a, &len), 0);
        *port = ntohs(a.sin_port);
        return fd;
}

/* ------------------------------------------------------------------ */
/* The client side                                                     */

struct reply {
        unsigned calls;
        struct http_response resp; /* pointers cleared: valid only in the callback */
        char body[16384];
        bool in_post;        /* the callback came from inside http_post_json() */
        bool drop;           /* drop the body in the callback */
        bool free_http;      /* http_free() from inside the callback */
        int post_after_free; /* what http_post_json() then said */
};

static struct ev_loop *loop;
static struct http *http;
static bool posting;
static unsigned done_calls, want_calls;
static ev_timer timeout;
static bool timed_out;

static void on_done(const struct http_response *resp, void *userdata) {
        struct reply *r = userdata;

        r->calls++;
        r->in_post = posting;
        r->resp = *resp;
        snprintf(r->body, sizeof r->body, "%s", resp->body);
        r->resp.body = NULL;
        r->resp.error = NULL;
        r->resp.request_ = NULL;
        if (r->drop)
                http_response_drop_body(resp);
        if (r->free_http) {
                http_free(http);
                /* The handle is only marked: new requests are refused. */
                r->post_after_free = http_post_json(http, "http://127.0.0.1:9/", "{}", on_done, r);
                http = NULL;
        }
        if (++done_calls >= want_calls)
                ev_break(loop, EVBREAK_ALL);
}

static void timeout_cb(struct ev_loop *l, ev_timer *w, int revents) {
        (void) w;
        (void) revents;
        timed_out = true;
        ev_break(l, EVBREAK_ALL);
}

/* Runs the loop until n more callbacks have come, or for at most seconds
 * (then timed_out is set). */
static void run(unsigned n, double seconds) {
        want_calls = done_calls + n;
        timed_out = false;
        ev_timer_init(&timeout, timeout_cb, seconds, 0.);
        ev_timer_start(loop, &timeout);
        ev_run(loop, 0);
        ev_timer_stop(loop, &timeout);
}

static void post(const char *path, const char *body, struct reply *r) {
        char url[128];
        int ret;

        snprintf(url, sizeof url, "http://127.0.0.1:%d%s", S.port, path);
        posting = true;
        ret = http_post_json(http, url, body, on_done, r);
        posting = false;
        assert_int_equal(ret, 0);
}

static int setup_with(long timeout_ms, size_t max_response_size, long max_connections) {
        struct http_options opt = {
                .timeout_ms = timeout_ms,
                .connect_timeout_ms = timeout_ms,
                .max_response_size = max_response_size,
                .max_connections = max_connections,
        };

        memset(&S, 0, sizeof S);
        for (size_t i = 0; i < MAX_CONNS; i++)
                S.conns[i].fd = -1;
        S.head[0] = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n";
        S.body[0] = "{\"Header\":{\"Code\":0}}";
        S.n_responses = 1;
        S.answer_max = UINT32_MAX;
        done_calls = 0;
        loop = ev_loop_new(EVFLAG_AUTO);
        if (!loop)
                return -1;
        S.fd = listen_loopback(&S.port);
        ev_io_init(&S.accept_io, accept_cb, S.fd, EV_READ);
        ev_io_start(loop, &S.accept_io);
        return http_new(loop, &opt, &http);
}

static int setup(void **state) {
        (void) state;
        return setup_with(5000, 1 << 20, 4);
}

static int setup_small(void **state) {
        (void) state;
        return setup_with(300, 1024, 2);
}

static int teardown(void **state) {
        (void) state;
        http_free(http);
        http = NULL;
        for (size_t i = 0; i < MAX_CONNS; i++)
                if (S.conns[i].fd >= 0)
                        conn_close(loop, &S.conns[i]);
        ev_io_stop(loop, &S.accept_io);
        close(S.fd);
        ev_loop_destroy(loop);
        return 0;
}

/* ------------------------------------------------------------------ */
/* Tests                                                               */

static void test_post_and_reply(void **state) {
        struct reply r = { 0 };

        (void) state;
        post("/v2/ivh/x?appkey=k", "{\"Payload\":{\"ReqId\":\"1\"}}", &r);
        assert_int_equal(http_in_flight(http), 1);
        run(1, TIMEOUT_S);
        assert_false(timed_out);
        assert_int_equal(r.calls, 1);
        assert_false(r.in_post);
        assert_int_equal(http_in_flight(http), 0);
        assert_int_equal(r.resp.result, CURLE_OK);
        assert_int_equal(r.resp.status, 200);
        assert_string_equal(r.body, "{\"Header\":{\"Code\":0}}");
        assert_int_equal(r.resp.body_len, strlen(r.body));
        assert_false(r.resp.too_large);
        assert_int_equal(r.resp.retry_after_s, 0);
        assert_true(r.resp.total_s >= 0);

        /* What the server saw. */
        assert_int_equal(S.requests, 1);
        assert_non_null(strstr(S.last_request, "POST /v2/ivh/x?appkey=k HTTP/1.1\r\n"));
        assert_non_null(strcasestr(S.last_request, "\r\nContent-Type: application/json;charset=utf-8\r\n"));
        assert_non_null(strcasestr(S.last_request, "\r\nUser-Agent: ivh-reclaimd/"));
        assert_null(strcasestr(S.last_request, "\r\nExpect:"));
        assert_non_null(strstr(S.last_request, "\r\n\r\n{\"Payload\":{\"ReqId\":\"1\"}}"));
}

/* Retry-After in seconds, capped at a day; an HTTP error is no transport
 * error. */
static void test_retry_after(void **state) {
        struct reply r1 = { 0 }, r2 = { 0 };

        (void) state;
        S.head[0] = "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3\r\n";
        S.body[0] = "slow down";
        S.head[1] = "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 999999\r\n";
        S.body[1] = "";
        S.n_responses = 2;
        post("/a", "{}", &r1);
        run(1, TIMEOUT_S);
        post("/b", "{}", &r2);
        run(1, TIMEOUT_S);
        assert_false(timed_out);
        assert_int_equal(r1.resp.result, CURLE_OK);
        assert_int_equal(r1.resp.status, 429);
        assert_int_equal(r1.resp.retry_after_s, 3);
        assert_string_equal(r1.body, "slow down");
        assert_int_equal(r2.resp.status, 503);
        assert_int_equal(r2.resp.retry_after_s, 86400);
        assert_string_equal(r2.body, "");
        assert_int_equal(S.accepted, 1); /* the connection was kept */
}

/* A body over max_response_size (1 KiB here) is cut off: no body, and a
 * transport error that says why. */
static void test_response_too_large(void **state) {
        static char big[8001];
        struct reply r = { 0 };

        (void) state;
        memset(big, 'x', sizeof big - 1);
        S.body[0] = big;
        post("/", "{}", &r);
        run(1, TIMEOUT_S);
        assert_false(timed_out);
        assert_int_equal(r.calls, 1);
        assert_true(r.resp.too_large);
        assert_int_equal(r.resp.result, CURLE_FILESIZE_EXCEEDED);
}

/* Nothing listens: a transport error, no status. */
static void test_connection_refused(void **state) {
        struct reply r = { 0 };
        int port, fd = listen_loopback(&port);
        char url[64];

        (void) state;
        close(fd);
        snprintf(url, sizeof url, "http://127.0.0.1:%d/", port);
        assert_int_equal(http_post_json(http, url, "{}", on_done, &r), 0);
        run(1, TIMEOUT_S);
        assert_false(timed_out);
        assert_int_equal(r.calls, 1);
        assert_int_equal(r.resp.result, CURLE_COULDNT_CONNECT);
        assert_int_equal(r.resp.status, 0);
}

/* The server never answers: gateway.timeout (300 ms here) ends it. */
static void test_timeout(void **state) {
        struct reply r = { 0 };

        (void) state;
        S.answer_max = 0;
        post("/", "{}", &r);
        run(1, TIMEOUT_S);
        assert_false(timed_out);
        assert_int_equal(r.calls, 1);
        assert_int_equal(r.resp.result, CURLE_OPERATION_TIMEDOUT);
        assert_true(r.resp.total_s >= 0.25 && r.resp.total_s < 2.0);
}

/* http_free() with requests in flight: their callbacks never come. */
static void test_free_cancels(void **state) {
        struct reply r[3] = { 0 };

        (void) state;
        S.answer_max = 0;
        for (size_t i = 0; i < 3; i++)
                post("/", "{}", &r[i]);
        run(1, 0.2); /* long enough for the requests to reach the server */
        assert_true(timed_out);
        assert_int_equal(S.requests, 3);
        http_free(http);
        http = NULL;
        run(1, 0.2);
        assert_true(timed_out);
        for (size_t i = 0; i < 3; i++)
                assert_int_equal(r[i].calls, 0);
}

/* http_free() from inside a completion callback only marks the handle:
 * new requests are refused, the other request's callback never comes, and
 * the memory goes once the completions have been handed out (the leak check
 * sees it). The body is dropped in the callback, as the cycle does with a
 * list. */
static void test_free_from_a_callback(void **state) {
        struct reply r[2] = { { .drop = true, .free_http = true }, { .drop = true, .free_http = true } };

        (void) state;
        S.answer_max = 1; /* whichever arrives first */
        post("/", "{}", &r[0]);
        post("/", "{}", &r[1]);
        run(1, TIMEOUT_S);
        assert_false(timed_out);
        assert_null(http); /* freed from the callback */
        run(1, 0.2);
        assert_true(timed_out);
        assert_int_equal(S.requests, 2);
        assert_int_equal(r[0].calls + r[1].calls, 1);
        assert_string_equal(r[r[1].calls].body, "{\"Header\":{\"Code\":0}}");
        assert_int_equal(r[r[1].calls].post_after_free, -ESHUTDOWN);
}

/* More requests than max_connections (2 here): they wait for a
 * connection, and each is answered once. */
static void test_parallel(void **state) {
        struct reply r[5] = { 0 };

        (void) state;
        for (size_t i = 0; i < 5; i++)
                post("/", "{}", &r[i]);
        assert_int_equal(http_in_flight(http), 5);
        run(5, TIMEOUT_S);
        assert_false(timed_out);
        for (size_t i = 0; i < 5; i++) {
                assert_int_equal(r[i].calls, 1);
                assert_int_equal(r[i].resp.status, 200);
        }
        assert_int_equal(S.requests, 5);
        assert_true(S.accepted <= 2);
        assert_int_equal(http_in_flight(http), 0);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_post_and_reply, setup, teardown),
                cmocka_unit_test_setup_teardown(test_retry_after, setup, teardown),
                cmocka_unit_test_setup_teardown(test_response_too_large, setup_small, teardown),
                cmocka_unit_test_setup_teardown(test_connection_refused, setup, teardown),
                cmocka_unit_test_setup_teardown(test_timeout, setup_small, teardown),
                cmocka_unit_test_setup_teardown(test_free_cancels, setup, teardown),
                cmocka_unit_test_setup_teardown(test_free_from_a_callback, setup, teardown),
                cmocka_unit_test_setup_teardown(test_parallel, setup_small, teardown),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
