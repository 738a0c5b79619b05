/* A set of strings that remembers which ids were seen in the previous round,
 * so that something is said once per id rather than once per cycle, and
 * forgotten once the id is gone. */
#pragma once

struct idset;

int idset_new(struct idset **ret);
void idset_free(struct idset *s);

/* Marks id as seen in this round. Returns 1 when it was seen in neither this
 * nor the previous round (new), 0 when it was, or -ENOMEM. */
int idset_mark(struct idset *s, const char *id);

/* Marks id as seen in this round only if it was already known (seen in
 * this or the previous round). Returns 1 when it was, 0 when it was not
 * (nothing is added), or -ENOMEM. */
int idset_keep(struct idset *s, const char *id);

/* Ends the round: ids not marked in it are forgotten. */
void idset_round_end(struct idset *s);
