/* --check-config's checks beyond the file itself: what the daemon needs at
 * start that can be checked without the network. */
#pragma once

#include "config.h"
#include "error.h"

/* Checks a loaded configuration, for every account:
 *   - the appkey is not the sample appkey of Tencent's documentation;
 *   - a token is found where the daemon would look (credentials_load()); when
 *     $CREDENTIALS_DIRECTORY is unset (run by hand), also where the shipped
 *     unit's LoadCredential= takes it from: the policy file's directory,
 *     file accesstoken or accesstoken-NAME;
 *   - a token file is a regular, non-empty file that gives neither its
 *     group nor others any access;
 *   - the directories of the state file and of the metrics file can be
 *     written (one that does not exist yet is reported on notes, with the
 *     nearest existing parent that must then be writable).
 * Returns the number of problems (0: all good), with one line per problem
 * in err, or -ENOMEM. Lines that are only notes go to *notes (may be NULL
 * when there are none; free() it). Never prints or keeps the token. */
int preflight_check(const struct config *c, struct error *err, char **notes);
