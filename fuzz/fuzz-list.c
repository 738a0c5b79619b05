/* libFuzzer target: the gateway's replies (list, stat, ack) as the daemon
 * parses them. Any crash, leak, or sanitizer report is a bug. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "gateway.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        struct session_list *l = NULL;
        struct gateway_error err;
        struct stat_result st;

        if (gateway_parse_list((const char *) data, size, &l, &err) == 0) {
                /* Every entry is usable as the policy code expects. */
                for (size_t i = 0; i < l->n; i++)
                        if (!l->items[i].session_id[0] || !l->items[i].user_id)
                                __builtin_trap();
                session_list_free(l);
        } else if (strnlen(err.message, sizeof err.message) == sizeof err.message) {
                __builtin_trap(); /* messages are always terminated */
        }
        (void) gateway_parse_stat((const char *) data, size, &st, &err);
        (void) gateway_parse_ack((const char *) data, size, &err);
        return 0;
}
