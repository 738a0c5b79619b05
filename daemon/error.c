#include "error.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

int error_set(struct error *e, int r, const char *fmt, ...) {
        va_list ap;
        char *m = NULL;

        if (!e)
                return r;
        va_start(ap, fmt);
        if (vasprintf(&m, fmt, ap) < 0)
                m = NULL;
        va_end(ap);
        return error_take(e, r, m);
}

int error_take(struct error *e, int r, char *message) {
        if (!e) {
                free(message);
                return r;
        }
        free(e->message);
        e->message = message;
        return r;
}

const char *error_message(const struct error *e) {
        return e && e->message ? e->message : "";
}

void error_done(struct error *e) {
        if (!e)
                return;
        free(e->message);
        e->message = NULL;
}
