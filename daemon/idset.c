#include "idset.h"

#include <assert.h>
#include <errno.h>
#include <search.h>
#include <stdlib.h>
#include <string.h>

struct idset {
        void *previous, *current; /* tsearch trees of strdup()ed strings */
};

static int compare(const void *a, const void *b) {
        return strcmp(a, b);
}

int idset_new(struct idset **ret) {
        struct idset *s = calloc(1, sizeof *s);

        assert(ret);
        if (!s)
                return -ENOMEM;
        *ret = s;
        return 0;
}

void idset_free(struct idset *s) {
        if (!s)
                return;
        tdestroy(s->previous, free);
        tdestroy(s->current, free);
        free(s);
}

int idset_mark(struct idset *s, const char *id) {
        char **found;
        char *copy;

        assert(s && id);
        if (tfind(id, &s->current, compare))
                return 0;
        found = tfind(id, &s->previous, compare);
        if (found) {
                copy = *found;
                tdelete(copy, &s->previous, compare);
                if (!tsearch(copy, &s->current, compare)) {
                        free(copy);
                        return -ENOMEM;
                }
                return 0;
        }
        copy = strdup(id);
        if (!copy || !tsearch(copy, &s->current, compare)) {
                free(copy);
                return -ENOMEM;
        }
        return 1;
}

void idset_round_end(struct idset *s) {
        assert(s);
        tdestroy(s->previous, free);
        s->previous = s->current;
        s->current = NULL;
}
