/* libFuzzer target: the policy file loader, fed through a memfd so that it
 * reads a real file as the daemon does. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        struct config *c = NULL;
        char path[64];
        struct error err = { 0 };
        int fd, r;

        fd = memfd_create("policy.yaml", MFD_CLOEXEC);
        if (fd < 0)
                return 0;
        if (write(fd, data, size) != (ssize_t) size) {
                close(fd);
                return 0;
        }
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
        r = config_load(path, &c, &err);
        if (r == 0) {
                /* One shape: the global settings and at least one account,
                 * each with an appkey, a URL, a state file and named policies. */
                if (err.message || !c || c->n_accounts == 0 || c->n_policies != 0)
                        __builtin_trap();
                for (size_t a = 0; a < c->n_accounts; a++) {
                        const struct config *acc = c->accounts[a];

                        if (!acc->gateway.appkey || !acc->gateway.url || !acc->state_file)
                                __builtin_trap();
                        for (size_t i = 0; i < acc->n_policies; i++)
                                if (!acc->policies[i].name)
                                        __builtin_trap();
                }
        } else if (!err.message || c) {
                __builtin_trap(); /* every refusal says why, and returns nothing */
        }
        config_free(c);
        error_done(&err);
        close(fd);
        return 0;
}
