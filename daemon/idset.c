#include "idset.h"

#include <assert.h>
#include <errno.h>
#include <stdlib.h>

#include "strmap.h"

struct idset {
        struct strmap *previous, *current; /* the ids of the two rounds; the values are unused */
};

/* The value of every id: the map needs one that is not NULL. */
static char present;

int idset_new(struct idset **ret) {
        struct idset *s = calloc(1, sizeof *s);

        assert(ret);
        if (!s || strmap_new(&s->previous) < 0 || strmap_new(&s->current) < 0) {
                idset_free(s);
                return -ENOMEM;
        }
        *ret = s;
        return 0;
}

void idset_free(struct idset *s) {
        if (!s)
                return;
        strmap_free(s->previous, NULL);
        strmap_free(s->current, NULL);
        free(s);
}

int idset_keep(struct idset *s, const char *id) {
        assert(s && id);
        if (strmap_get(s->current, id))
                return 1;
        return strmap_move(s->current, s->previous, id);
}

int idset_mark(struct idset *s, const char *id) {
        int r = idset_keep(s, id);

        if (r != 0)
                return r < 0 ? r : 0;
        r = strmap_put(s->current, id, &present);
        return r < 0 ? r : 1;
}

void idset_round_end(struct idset *s) {
        assert(s);
        strmap_clear(s->previous, NULL);
        strmap_swap(s->previous, s->current);
}
