/* libcurl's multi interface bound to a libev loop: socket and timer
 * callbacks, per-request buffers, completion callbacks. Nothing about the
 * IVH API lives here. */
#pragma once

#include <curl/curl.h>
#include <ev.h>
#include <stdbool.h>
#include <stddef.h>

struct http;

struct http_options {
        const char *ca_file;   /* NULL: the system trust store */
        const char *cert_file; /* a TLS client certificate (PEM), with key_file; NULL: none */
        const char *key_file;
        long timeout_ms; /* whole transfer */
        long connect_timeout_ms;
        size_t max_response_size;
        long max_connections; /* connections kept and opened at most */
};

struct request;

struct http_response {
        CURLcode result; /* CURLE_OK when a response arrived */
        long status;     /* HTTP status, 0 when none */
        char *body;      /* NUL-terminated, valid during the callback only; the callback may rewrite
                            it in place (gateway_parse_list_in_place()) */
        size_t body_len;
        bool too_large;     /* the body exceeded max_response_size */
        const char *error;  /* human-readable transport error, "" if none */
        long retry_after_s; /* the Retry-After header in seconds, 0 when absent */
        double total_s;
        struct request *request_; /* for http_response_drop_body() only */
};

/* Frees the body of a response from inside its callback, once the callback
 * has read it: a 16 MiB list need not stay while the cycle decides. After
 * this, resp->body must not be used; everything else in resp may. */
void http_response_drop_body(const struct http_response *resp);

typedef void (*http_done_fn)(const struct http_response *resp, void *userdata);

int http_new(struct ev_loop *loop, const struct http_options *opt, struct http **ret);

/* Frees the multi handle. In-flight requests are cancelled without their
 * callbacks being called. Must run while the loop still exists. Called from
 * one of this handle's own completion callbacks, it only marks the handle:
 * no further callback runs, new requests are refused, and the memory is
 * released once the completion loop has returned. The runner never relies on
 * this (it frees handles only from its advance step); it is a safety net. */
void http_free(struct http *h);

/* Starts an asynchronous POST of a JSON body. done is called exactly once,
 * from the loop, unless the request is cancelled by http_free(). */
int http_post_json(struct http *h, const char *url, const char *body, http_done_fn done, void *userdata);

/* The same, with more request headers ("Name: value", NULL-terminated); a
 * Content-Type among them replaces the default one. */
int http_post(struct http *h, const char *url, const char *body, const char *const *headers,
              http_done_fn done, void *userdata);

size_t http_in_flight(const struct http *h);
