/* The gateway access token: where it comes from and how it is kept. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "config.h"
#include "error.h"

struct credentials {
        char *token;      /* wiped on free */
        char source[256]; /* human-readable origin, never the token */
        char *path;       /* the file it was read from; NULL: the environment */
        bool from_env;
};

/* Looks for the token in gateway.accesstoken_file, then
 * $CREDENTIALS_DIRECTORY/accesstoken (if it exists), then $IVH_ACCESS_TOKEN
 * (which is then wiped from the environment). For a named account (account
 * non-NULL): the account's accesstoken_file, the credential
 * accesstoken-NAME, then $IVH_ACCESS_TOKEN_NAME (NAME upper-cased, other
 * characters as '_'). A token file readable by others is refused.
 * On reload, pass the running credentials as previous: a token that came from
 * the (since wiped) environment is then carried over when no file names one.
 * Returns 0, or a negative errno with a message (never containing the token)
 * in err. */
int credentials_load(const struct gateway_config *g, const struct credentials *previous, const char *account,
                     struct credentials **ret, struct error *err);

void credentials_free(struct credentials *c);

/* The systemd credential's name for an account: "accesstoken", or
 * "accesstoken-NAME" for a named account. */
void credentials_name(const char *account, char *buf, size_t n);

/* The shipped unit: LoadCredential=notify-secret:NOTIFY_SECRET_UNIT_FILE,
 * and SetCredential=notify-secret:NOTIFY_SECRET_PLACEHOLDER when it is missing. */
#define NOTIFY_SECRET_UNIT_FILE   "/etc/ivh-reclaimd/notify-secret"
#define NOTIFY_SECRET_PLACEHOLDER "no notify secret file"

/* The webhook secret of notify: (format json): notify.secret_file, else
 * $CREDENTIALS_DIRECTORY/notify-secret, else $IVH_NOTIFY_SECRET, else
 * (run by hand, without $CREDENTIALS_DIRECTORY) NOTIFY_SECRET_UNIT_FILE. The
 * variable is read once per process, wiped, and kept in *env_cache (the
 * caller's, freed with credentials_free()) for every account and reload
 * after. Same rules as the token: a file readable by others is refused, the
 * secret is printable ASCII without spaces, and never appears in a message.
 * Returns 0 or a negative errno with err set (-ENOKEY: none found). */
int credentials_load_notify_secret(const struct notify_config *n, struct credentials **env_cache,
                                   struct credentials **ret, struct error *err);
