/* Shared by gateway.c (signature, envelope, acks) and gateway-list.c. */
#pragma once

#include <cjson/cJSON.h>
#include <stddef.h>

#include "gateway.h"

/* Fills err (kind and message) and returns -EPROTO. */
int gateway_fail(struct gateway_error *err, enum gateway_failure kind, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));

/* Checks the envelope. On Code 0 returns 0 and hands over the parsed tree. */
int gateway_parse_envelope(const char *body, size_t len, cJSON **ret_root, struct gateway_error *err);

/* An integer field, exactly (SessionStatus "4" is not 4): 0 or -EINVAL. */
int gateway_get_int(const cJSON *v, int *ret);

/* A bool field that may be missing or null (unknown): 0 or -EINVAL. */
int gateway_get_tristate(const cJSON *v, enum tristate *ret);
