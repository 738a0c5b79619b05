#include "http.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct request {
        struct http *http;
        CURL *easy;
        struct curl_slist *headers;
        char *buf;
        size_t len, cap;
        bool too_large;
        char errbuf[CURL_ERROR_SIZE];
        http_done_fn done;
        void *userdata;
        struct request *prev, *next; /* in http->requests */
};

struct sock {
        ev_io io;
        struct http *http;
        struct sock *prev, *next; /* in http->socks */
};

struct http {
        struct ev_loop *loop;
        CURLM *multi;
        ev_timer timer; /* the one timer curl asks for */
        struct http_options opt;
        char *ca_file, *cert_file, *key_file;
        struct request *requests;
        struct sock *socks; /* curl may drop sockets without CURL_POLL_REMOVE on cleanup */
        CURL **idle;        /* easy handles kept for reuse */
        size_t n_idle, cap_idle;
        size_t in_flight;
        /* check_multi_info() is handing responses to their owners: an
         * http_free() from one of those callbacks is only recorded here and
         * carried out when the loop over finished transfers has returned. */
        unsigned completing;
        bool free_requested;
};

static void http_free_now(struct http *h);

/* Frees a request. Its easy handle goes back to the idle pool when reuse is
 * set and there is room: creating one per request costs more CPU than the
 * request itself. */
static void request_free(struct http *h, struct request *req, bool reuse) {
        if (!req)
                return;
        if (req->easy) {
                if (reuse && h->n_idle < h->cap_idle) {
                        curl_easy_reset(req->easy);
                        h->idle[h->n_idle++] = req->easy;
                } else
                        curl_easy_cleanup(req->easy);
        }
        curl_slist_free_all(req->headers);
        free(req->buf);
        free(req);
}

static void request_unlink(struct http *h, struct request *req) {
        if (req->prev)
                req->prev->next = req->next;
        else
                h->requests = req->next;
        if (req->next)
                req->next->prev = req->prev;
        req->prev = req->next = NULL;
}

/* Reads every finished transfer and hands it to its owner. */
static void check_multi_info(struct http *h) {
        CURLMsg *msg;
        int left;

        h->completing++;
        while (!h->free_requested && (msg = curl_multi_info_read(h->multi, &left))) {
                struct request *req = NULL;
                static char empty[1]; /* the body of a reply without one */
                struct http_response resp = { 0 };
                CURLcode result;

                if (msg->msg != CURLMSG_DONE)
                        continue;
                result = msg->data.result;
                curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **) &req);
                curl_easy_getinfo(req->easy, CURLINFO_RESPONSE_CODE, &resp.status);
                curl_easy_getinfo(req->easy, CURLINFO_TOTAL_TIME, &resp.total_s);
                {
                        curl_off_t retry_after = 0;

                        if (curl_easy_getinfo(req->easy, CURLINFO_RETRY_AFTER, &retry_after) == CURLE_OK &&
                            retry_after > 0)
                                resp.retry_after_s = retry_after > 86400 ? 86400 : (long) retry_after;
                }
                curl_multi_remove_handle(h->multi, req->easy);
                request_unlink(h, req);
                h->in_flight--;

                resp.result = req->too_large ? CURLE_FILESIZE_EXCEEDED : result;
                resp.too_large = req->too_large;
                resp.body = req->buf ? req->buf : empty;
                resp.body_len = req->len;
                resp.request_ = req;
                resp.error = req->too_large       ? "response larger than the size limit"
                             : result == CURLE_OK ? ""
                             : req->errbuf[0]     ? req->errbuf
                                                  : curl_easy_strerror(result);
                req->done(&resp, req->userdata);
                request_free(h, req, !h->free_requested);
        }
        if (--h->completing == 0 && h->free_requested)
                http_free_now(h);
}

static void timer_cb(struct ev_loop *loop, ev_timer *w, int revents) {
        struct http *h = w->data;
        int running;

        (void) loop;
        (void) revents;
        curl_multi_socket_action(h->multi, CURL_SOCKET_TIMEOUT, 0, &running);
        check_multi_info(h);
}

static void io_cb(struct ev_loop *loop, ev_io *w, int revents) {
        struct sock *s = w->data;
        struct http *h = s->http;
        int running, action = 0;

        (void) loop;
        if (revents & EV_READ)
                action |= CURL_CSELECT_IN;
        if (revents & EV_WRITE)
                action |= CURL_CSELECT_OUT;
        curl_multi_socket_action(h->multi, w->fd, action, &running);
        check_multi_info(h);
}

static void sock_free(struct http *h, struct sock *s) {
        ev_io_stop(h->loop, &s->io);
        if (s->prev)
                s->prev->next = s->next;
        else
                h->socks = s->next;
        if (s->next)
                s->next->prev = s->prev;
        free(s);
}

/* CURLMOPT_SOCKETFUNCTION */
static int socket_cb(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp) {
        struct http *h = userp;
        struct sock *s = socketp;
        int events = 0;

        (void) easy;
        if (what == CURL_POLL_REMOVE) {
                if (s) {
                        curl_multi_assign(h->multi, fd, NULL);
                        sock_free(h, s);
                }
                return 0;
        }
        if (!s) {
                s = calloc(1, sizeof *s);
                if (!s)
                        return -1;
                s->http = h;
                s->io.data = s;
                s->next = h->socks;
                if (h->socks)
                        h->socks->prev = s;
                h->socks = s;
                ev_init(&s->io, io_cb);
                curl_multi_assign(h->multi, fd, s);
        }
        if (what & CURL_POLL_IN)
                events |= EV_READ;
        if (what & CURL_POLL_OUT)
                events |= EV_WRITE;
        if (ev_is_active(&s->io) && s->io.fd == fd && (s->io.events & (EV_READ | EV_WRITE)) == events)
                return 0;
        /* libev forbids ev_io_set on an active watcher. */
        ev_io_stop(h->loop, &s->io);
        ev_io_set(&s->io, fd, events);
        ev_io_start(h->loop, &s->io);
        return 0;
}

/* CURLMOPT_TIMERFUNCTION: only (re)arms the watcher; never calls libcurl. */
static int multi_timer_cb(CURLM *multi, long timeout_ms, void *userp) {
        struct http *h = userp;

        (void) multi;
        ev_timer_stop(h->loop, &h->timer);
        if (timeout_ms >= 0) {
                ev_timer_set(&h->timer, (double) timeout_ms / 1000.0, 0.);
                ev_timer_start(h->loop, &h->timer);
        }
        return 0;
}

void http_response_drop_body(const struct http_response *resp) {
        struct request *req = resp->request_;

        if (!req)
                return;
        free(req->buf);
        req->buf = NULL;
        req->len = req->cap = 0;
}

/* CURLOPT_WRITEFUNCTION */
static size_t write_cb(char *data, size_t size, size_t nmemb, void *userp) {
        struct request *req = userp;
        size_t n = size * nmemb;

        if (n > req->http->opt.max_response_size - req->len) {
                req->too_large = true;
                return 0; /* aborts the transfer */
        }
        if (req->len + n + 1 > req->cap) {
                size_t cap = req->cap ? req->cap : 4096;
                curl_off_t announced = -1;
                char *buf;

                /* A body whose size is announced gets one buffer of that
                 * size: no chain of copies for a large list. */
                if (req->cap == 0 &&
                    curl_easy_getinfo(req->easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &announced) ==
                            CURLE_OK &&
                    announced > 0 && (uint64_t) announced < req->http->opt.max_response_size)
                        cap = (size_t) announced + 1;
                while (cap < req->len + n + 1)
                        cap *= 2;
                buf = realloc(req->buf, cap);
                if (!buf)
                        return 0;
                req->buf = buf;
                req->cap = cap;
        }
        memcpy(req->buf + req->len, data, n);
        req->len += n;
        req->buf[req->len] = '\0';
        return n;
}

int http_new(struct ev_loop *loop, const struct http_options *opt, struct http **ret) {
        struct http *h = calloc(1, sizeof *h);

        if (!h)
                return -ENOMEM;
        h->loop = loop;
        h->opt = *opt;
        if (opt->ca_file) {
                h->ca_file = strdup(opt->ca_file);
                if (!h->ca_file)
                        goto oom;
        }
        h->opt.ca_file = h->ca_file;
        if ((opt->cert_file && !(h->cert_file = strdup(opt->cert_file))) ||
            (opt->key_file && !(h->key_file = strdup(opt->key_file))))
                goto oom;
        h->opt.cert_file = h->cert_file;
        h->opt.key_file = h->key_file;
        h->multi = curl_multi_init();
        h->cap_idle = opt->max_connections > 0 ? (size_t) opt->max_connections : 1;
        h->idle = calloc(h->cap_idle, sizeof *h->idle);
        if (!h->multi || !h->idle)
                goto oom;
        ev_init(&h->timer, timer_cb);
        h->timer.data = h;
        curl_multi_setopt(h->multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
        curl_multi_setopt(h->multi, CURLMOPT_SOCKETDATA, h);
        curl_multi_setopt(h->multi, CURLMOPT_TIMERFUNCTION, multi_timer_cb);
        curl_multi_setopt(h->multi, CURLMOPT_TIMERDATA, h);
        /* Keep every connection of a burst for the next one. */
        curl_multi_setopt(h->multi, CURLMOPT_MAXCONNECTS, opt->max_connections);
        curl_multi_setopt(h->multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, opt->max_connections);
        *ret = h;
        return 0;
oom:
        http_free(h);
        return -ENOMEM;
}

void http_free(struct http *h) {
        if (!h)
                return;
        if (h->completing > 0) {
                /* Called from a completion callback of this very handle:
                 * freeing now would pull the multi handle out from under
                 * check_multi_info(). Cancel the rest once it returns. */
                h->free_requested = true;
                return;
        }
        http_free_now(h);
}

static void http_free_now(struct http *h) {
        while (h->requests) {
                struct request *req = h->requests;

                curl_multi_remove_handle(h->multi, req->easy);
                request_unlink(h, req);
                request_free(h, req, false);
        }
        while (h->n_idle > 0)
                curl_easy_cleanup(h->idle[--h->n_idle]);
        free(h->idle);
        if (h->multi)
                curl_multi_cleanup(h->multi);
        while (h->socks)
                sock_free(h, h->socks);
        ev_timer_stop(h->loop, &h->timer);
        free(h->ca_file);
        free(h->cert_file);
        free(h->key_file);
        free(h);
}

int http_post_json(struct http *h, const char *url, const char *body, http_done_fn done, void *userdata) {
        return http_post(h, url, body, NULL, done, userdata);
}

int http_post(struct http *h, const char *url, const char *body, const char *const *headers,
              http_done_fn done, void *userdata) {
        struct request *req;
        CURLcode rc = CURLE_OK;

        if (h->free_requested)
                return -ESHUTDOWN;
        req = calloc(1, sizeof *req);
        if (!req)
                return -ENOMEM;
        req->http = h;
        req->done = done;
        req->userdata = userdata;
        req->easy = h->n_idle > 0 ? h->idle[--h->n_idle] : curl_easy_init();
        if (!req->easy)
                goto oom;
        {
                /* The default type unless the caller names one; no "Expect:
                 * 100-continue" round trip before a larger body. */
                const char *fixed[] = { "Content-Type: application/json;charset=utf-8", "Expect:" };
                bool own_type = false;

                for (size_t i = 0; headers && headers[i]; i++)
                        own_type |= strncasecmp(headers[i], "Content-Type:", 13) == 0;
                for (size_t i = own_type ? 1 : 0; i < 2; i++) {
                        struct curl_slist *t = curl_slist_append(req->headers, fixed[i]);
                        if (!t)
                                goto oom;
                        req->headers = t;
                }
        }
        for (size_t i = 0; headers && headers[i]; i++) {
                struct curl_slist *t = curl_slist_append(req->headers, headers[i]);
                if (!t)
                        goto oom;
                req->headers = t;
        }

#define SETOPT(opt, val)                                            \
        do {                                                        \
                if (rc == CURLE_OK)                                 \
                        rc = curl_easy_setopt(req->easy, opt, val); \
        } while (0)
        SETOPT(CURLOPT_URL, url);
        SETOPT(CURLOPT_PROTOCOLS_STR, "http,https");
        SETOPT(CURLOPT_FOLLOWLOCATION, 0L);
        SETOPT(CURLOPT_NOSIGNAL, 1L);
        SETOPT(CURLOPT_HTTPHEADER, req->headers);
        SETOPT(CURLOPT_COPYPOSTFIELDS, body);
        SETOPT(CURLOPT_WRITEFUNCTION, write_cb);
        SETOPT(CURLOPT_WRITEDATA, req);
        SETOPT(CURLOPT_ERRORBUFFER, req->errbuf);
        SETOPT(CURLOPT_PRIVATE, req);
        SETOPT(CURLOPT_TIMEOUT_MS, h->opt.timeout_ms);
        SETOPT(CURLOPT_CONNECTTIMEOUT_MS, h->opt.connect_timeout_ms);
        SETOPT(CURLOPT_TCP_KEEPALIVE, 1L);
        SETOPT(CURLOPT_USERAGENT, "ivh-reclaimd/" IVH_VERSION);
        SETOPT(CURLOPT_SSL_VERIFYPEER, 1L);
        SETOPT(CURLOPT_SSL_VERIFYHOST, 2L);
        if (h->opt.ca_file)
                SETOPT(CURLOPT_CAINFO, h->opt.ca_file);
        if (h->opt.cert_file)
                SETOPT(CURLOPT_SSLCERT, h->opt.cert_file);
        if (h->opt.key_file)
                SETOPT(CURLOPT_SSLKEY, h->opt.key_file);
#undef SETOPT
        if (rc != CURLE_OK) {
                request_free(h, req, false);
                return rc == CURLE_OUT_OF_MEMORY ? -ENOMEM : -EINVAL;
        }
        if (curl_multi_add_handle(h->multi, req->easy) != CURLM_OK) {
                request_free(h, req, false);
                return -EIO;
        }
        req->next = h->requests;
        if (h->requests)
                h->requests->prev = req;
        h->requests = req;
        h->in_flight++;
        return 0;
oom:
        request_free(h, req, false);
        return -ENOMEM;
}

size_t http_in_flight(const struct http *h) {
        return h->in_flight;
}
