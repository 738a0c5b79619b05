/* Lists of strings: the shell globs of selectors and protect lists, and the
 * id and URL lists of the file (globlist.c). */
#pragma once

#include <stdbool.h>
#include <stddef.h>

struct glob_list {
        char **items;
        size_t n;
};

void glob_list_free(struct glob_list *l);

/* dst (empty) becomes a copy of src: 0 or -ENOMEM (dst then holds what was
 * copied, for glob_list_free()). */
int glob_list_copy(struct glob_list *dst, const struct glob_list *src);

/* Appends copies of more's items to dst: 0 or -ENOMEM. */
int glob_list_append(struct glob_list *dst, const struct glob_list *more);

/* Whether s matches any pattern of l (fnmatch(), no flags). */
bool glob_list_match(const struct glob_list *l, const char *s);
