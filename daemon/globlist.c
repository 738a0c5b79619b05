/* Lists of strings: the shell globs of selectors and protect lists, and the
 * id and URL lists of the file. */
#include "globlist.h"

#include <errno.h>
#include <fnmatch.h>
#include <stdlib.h>
#include <string.h>

void glob_list_free(struct glob_list *l) {
        for (size_t i = 0; i < l->n; i++)
                free(l->items[i]);
        free(l->items);
        l->items = NULL;
        l->n = 0;
}

int glob_list_copy(struct glob_list *dst, const struct glob_list *src) {
        if (src->n == 0)
                return 0;
        dst->items = calloc(src->n, sizeof(char *));
        if (!dst->items)
                return -ENOMEM;
        for (; dst->n < src->n; dst->n++)
                if (!(dst->items[dst->n] = strdup(src->items[dst->n])))
                        return -ENOMEM;
        return 0;
}

int glob_list_append(struct glob_list *dst, const struct glob_list *more) {
        char **items;

        if (more->n == 0)
                return 0;
        items = realloc(dst->items, (dst->n + more->n) * sizeof(char *));
        if (!items)
                return -ENOMEM;
        dst->items = items;
        for (size_t i = 0; i < more->n; i++)
                if (!(dst->items[dst->n] = strdup(more->items[i])))
                        return -ENOMEM;
                else
                        dst->n++;
        return 0;
}

bool glob_list_match(const struct glob_list *l, const char *s) {
        for (size_t i = 0; i < l->n; i++)
                if (fnmatch(l->items[i], s, 0) == 0)
                        return true;
        return false;
}
