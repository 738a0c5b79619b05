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

int idset_keep(struct idset *s, const char *id) {
        char **found;
        char *copy;

        assert(s && id);
        if (tfind(id, &s->current, compare))
                return 1;
        found = tfind(id, &s->previous, compare);
        if (!found)
                return 0;
        copy = *found;
        tdelete(copy, &s->previous, compare);
        if (!tsearch(copy, &s->current, compare)) {
                free(copy);
                return -ENOMEM;
        }
        return 1;
}

int idset_mark(struct idset *s, const char *id) {
        char *copy;
        int r = idset_keep(s, id);

        if (r != 0)
                return r < 0 ? r : 0;
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
