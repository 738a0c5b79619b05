/* JSON helpers shared by the gateway replies and the state file (cJSON does
 * the parsing). */
#include "json.h"

#include <string.h>

cJSON *json_parse_exact(const char *text, size_t len) {
        const char *end = NULL;
        cJSON *root = cJSON_ParseWithLengthOpts(text, len, &end, false);

        /* Anything but white space after the value makes the text invalid. */
        for (const char *p = end; root && p && p < text + len; p++)
                if (!strchr(" \t\r\n", *p) || *p == '\0') {
                        cJSON_Delete(root);
                        return NULL;
                }
        return root;
}

/* Whether obj names the key name more than once: cJSON reads the first of
 * two equal keys, other JSON stacks the last, so the reply has no one
 * meaning. */
bool json_key_repeats(const cJSON *obj, const char *name) {
        const cJSON *f;
        unsigned n = 0;

        cJSON_ArrayForEach(f, obj) {
                if (f->string && strcmp(f->string, name) == 0 && ++n > 1)
                        return true;
        }
        return false;
}

/* The first character at or after p that is not JSON white space. */
const char *json_skip_space(const char *p, const char *end) {
        while (p < end && strchr(" \t\r\n", *p) && *p)
                p++;
        return p;
}
