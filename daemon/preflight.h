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

/* Under the unit's ExecReload= ($MAINPID and $INVOCATION_ID set), also:
 * that no key needing a restart (state_file, accounts, ha) differs from the
 * running daemon's. The daemon keeps the file it runs with as
 * $STATE_DIRECTORY/RUNNING_POLICY_NAME, first line "# ivh-reclaimd PID";
 * without that copy the daemon's own reload check remains. Directory
 * problems are then only warnings (a reload must never be refused for a
 * metrics directory), and the token is not checked when systemd hides the
 * credentials from the reload command. */

/* The file the shipped unit's LoadCredential= hands over for account a:
 * beside the policy file, named as the credential (accesstoken or
 * accesstoken-NAME). NULL when out of memory. */
char *preflight_unit_credential_path(const struct config *a);

/* Under a unit ($CREDENTIALS_DIRECTORY set, no accesstoken_file), judges
 * the file the unit's LoadCredential= copies, which the daemon cannot
 * otherwise see: the unit's SetCredential= default ("no token file", handed
 * over when that file is missing; or an empty credential) and a file that
 * gives its group or others access are refused with a message that names
 * the file and the fix. Returns 0, -ENOKEY, -EPERM or -ENOMEM (err set). */
int preflight_unit_credential(const struct config *a, struct error *err);

/* Whether this runs as a unit's control process, such as ExecReload=
 * ($MAINPID and $INVOCATION_ID are set). */
bool preflight_run_by_reload(void);

/* Writes top's text as that copy, when $STATE_DIRECTORY is set (under
 * systemd). Returns 0 (also when there is nothing to do) or -errno. */
int preflight_save_running(const struct config *top);
