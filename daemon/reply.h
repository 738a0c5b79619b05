/* What a gateway reply means, by Tencent's published codes (the gateway
 * code table of ivh-reclaimd(8)), and how to describe a failed one. Pure. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gateway.h"
#include "http.h"

/* The published Header.Code values the daemon acts on (see ivh-reclaimd(8), FAILED CLOSES, THROTTLING AND
 * CREDENTIALS). */
#define CODE_UNAUTHORIZED   100005
#define CODE_TOO_FREQUENT   100012
#define CODE_ALREADY_CLOSED 110013
#define CODE_NO_SESSION     110018
#define CODE_REPLACED       110022 /* closed because another session took its UserId */

/* What a reply means, by the published codes (ivh-reclaimd(8)). */
enum verdict {
        VERDICT_OK,
        VERDICT_GONE,      /* 110013 already closed, 110018 does not exist, 110022 replaced */
        VERDICT_THROTTLED, /* 100012, HTTP 429 or 503: slow down, account-wide */
        VERDICT_AUTH,      /* 100005, HTTP 401 or 403: an account problem */
        VERDICT_FAILED,    /* anything else */
};

/* The verdict from the transport alone: VERDICT_OK when a 200 arrived and
 * the body is to be parsed. */
enum verdict reply_http_verdict(const struct http_response *resp);

/* The verdict from a parsed 200 reply: parsed is the gateway_parse_*()
 * result. */
enum verdict reply_api_verdict(int parsed, const struct gateway_error *err);

/* A throttled reply: 100012 and HTTP 429 say that the account calls too
 * often, which teaches the pace; HTTP 503 that the gateway is overloaded. */
bool reply_teaches_pace(const struct http_response *resp);

/* Describes a transport-level failure into buf; returns false when resp is
 * a 200. */
bool reply_transport_failed(const struct http_response *resp, char *buf, size_t n);

/* The longest wait a Retry-After imposes, on the list or on the closes:
 * max(poll_interval, 5 min), so that a gateway cannot switch reclaiming off. */
uint64_t reply_retry_after_cap_ms(uint64_t poll_interval_ms);

/* Describes what a gateway_parse_*() failure r means. */
/* The published name of a Header.Code ("avatar expired" for 100015), or
 * NULL for a code Tencent does not publish. */
const char *reply_code_name(long code);

void reply_describe_parse_error(int r, const struct gateway_error *err, char *buf, size_t n);
