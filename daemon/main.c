/* ivh-reclaimd: argv, exit codes and wiring; nothing else. */
#include <curl/curl.h>
#include <errno.h>
#include <ev.h>
#include <getopt.h>
#include <malloc.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <systemd/sd-daemon.h>

#include "config.h"
#include "log.h"
#include "preflight.h"
#include "reclaimer.h"

/* Exit codes (sysexits.h where one fits). */
enum {
        EXIT_OK = 0,
        EXIT_FAIL = 1,    /* --once/--plan: the list call failed; or a runtime error */
        EXIT_PLANNED = 2, /* --plan --detailed-exitcode: something would be reclaimed */
        EXIT_USAGE = 64,  /* bad command line */
        EXIT_BUSY = 75,   /* EX_TEMPFAIL: another instance holds the state file's lock */
        EXIT_CONFIG = 78, /* invalid configuration or missing credentials */
};

static void help(FILE *out) {
        fprintf(out,
                "Usage: ivh-reclaimd [OPTION]...\n"
                "Reclaims leaked Tencent Cloud IVH interactive sessions according to YAML policies.\n"
                "\n"
                "  -c, --config FILE        policy file (default " CONFIG_DEFAULT_PATH ")\n"
                "      --once               run one cycle, wait for its closes, and exit\n"
                "      --dry-run            decide and log everything, never call closesession\n"
                "      --plan               list sessions once, print what would happen to each, close nothing\n"
                "      --output FORMAT      with --plan: table (default) or json (one object per session)\n"
                "      --detailed-exitcode  with --plan: exit 0 if nothing would be reclaimed, 2 if something\n"
                "                           would, 1 on any error\n"
                "      --check-config       validate the policy file, token, appkey and directories, and exit\n"
                "      --log-target TARGET  auto, journal or console (default auto)\n"
                "  -v, --verbose            also log debug messages\n"
                "  -h, --help               show this help\n"
                "      --version            show the version\n"
                "\n"
                "The access token is read from gateway.accesstoken_file, else\n"
                "$CREDENTIALS_DIRECTORY/accesstoken, else $IVH_ACCESS_TOKEN, else (run by hand)\n"
                "the file accesstoken beside the policy file, which the unit hands over.\n"
                "\n"
                "Exit status: 0 success; 1 the session list could not be fetched (--once, --plan)\n"
                "or a runtime error; 2 --plan --detailed-exitcode found sessions to reclaim;\n"
                "64 usage error; 75 another instance uses the same state file; 77 the gateway\n"
                "refused the credentials (--once, --plan); 78 invalid configuration or missing\n"
                "credentials.\n");
}

/* A usage error: one line saying what is wrong (getopt_long() prints its
 * own), then where to look. */
static int usage_hint(void) {
        fputs("Try 'ivh-reclaimd --help' for more information.\n", stderr);
        return EXIT_USAGE;
}

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int usage_error(const char *fmt, ...) {
        va_list ap;

        fputs("ivh-reclaimd: ", stderr);
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        fputc('\n', stderr);
        return usage_hint();
}

/* Run by the unit's ExecReload=, --check-config has $MAINPID: when it refuses
 * the file, no SIGHUP follows, so it tells the daemon with SIGUSR2 that a
 * reload failed (for ivh_config_last_reload_successful and STATUS=). Only
 * from a unit's control process ($INVOCATION_ID is set too), and not when
 * /proc shows that $MAINPID is something else. (The sandbox may hide the
 * main process's /proc entry; systemd's $MAINPID is the daemon.) */
static void tell_daemon_reload_failed(void) {
        const char *s = getenv("MAINPID");
        char path[64], comm[32] = "";
        FILE *f;
        long pid;
        char *end;

        if (!preflight_run_by_reload() || !*s)
                return;
        errno = 0;
        pid = strtol(s, &end, 10);
        if (errno || *end || pid <= 1 || pid == (long) getpid())
                return;
        snprintf(path, sizeof path, "/proc/%ld/comm", pid);
        f = fopen(path, "re");
        if (f) {
                if (!fgets(comm, sizeof comm, f))
                        comm[0] = '\0';
                fclose(f);
                if (strcmp(comm, "ivh-reclaimd\n") != 0)
                        return;
        }
        (void) kill((pid_t) pid, SIGUSR2);
}

/* --check-config: the file was loaded; now what the daemon needs at start
 * that can be checked without the network (preflight.h). */
static int check_config(const char *path, struct config *config) {
        struct error err = { 0 };
        char *notes = NULL;
        size_t n = 0;
        int problems = preflight_check(config, &err, &notes);

        if (notes)
                fputs(notes, stdout);
        free(notes);
        if (problems < 0) {
                fprintf(stderr, "ivh-reclaimd: out of memory\n");
                return EXIT_FAIL;
        }
        if (problems > 0) {
                fputs(error_message(&err), stderr);
                error_done(&err);
                tell_daemon_reload_failed();
                return EXIT_CONFIG;
        }
        for (size_t i = 0; i < config->n_accounts; i++)
                n += config->accounts[i]->n_policies;
        /* The single-gateway form's one account has no name in the file. */
        if (config->accounts[0]->account)
                printf("%s: OK (%zu accounts, %zu policies)\n", path, config->n_accounts, n);
        else
                printf("%s: OK (%zu policies)\n", path, n);
        return EXIT_OK;
}

enum {
        OPT_ONCE = 256,
        OPT_DRY_RUN,
        OPT_PLAN,
        OPT_CHECK,
        OPT_LOG_TARGET,
        OPT_VERSION,
        OPT_OUTPUT,
        OPT_DETAILED_EXITCODE,
};

static const char *mode_name(int opt) {
        return opt == OPT_ONCE ? "--once" : opt == OPT_PLAN ? "--plan" : "--check-config";
}

/* Before anything else: SIGHUP, SIGUSR1 and SIGUSR2 would kill a process
 * that has not installed its handlers yet (--once, --plan, a daemon still
 * loading its state), and ivh-reclaimd(8) suggests `kill -USR1 $(pidof
 * ivh-reclaimd)`.
 * They are ignored until the daemon's signal watchers take them over. A
 * closed stderr pipe must not kill the daemon either: SIGPIPE is ignored,
 * and writes fail with EPIPE instead. */
static void ignore_signals(void) {
        struct sigaction sa = { .sa_handler = SIG_IGN };

        sigemptyset(&sa.sa_mask);
        sigaction(SIGHUP, &sa, NULL);
        sigaction(SIGUSR1, &sa, NULL);
        sigaction(SIGUSR2, &sa, NULL);
        sigaction(SIGPIPE, &sa, NULL);
}

int main(int argc, char **argv) {
        static const struct option options[] = {
                { "config", required_argument, NULL, 'c' },
                { "once", no_argument, NULL, OPT_ONCE },
                { "dry-run", no_argument, NULL, OPT_DRY_RUN },
                { "plan", no_argument, NULL, OPT_PLAN },
                { "check-config", no_argument, NULL, OPT_CHECK },
                { "log-target", required_argument, NULL, OPT_LOG_TARGET },
                { "verbose", no_argument, NULL, 'v' },
                { "help", no_argument, NULL, 'h' },
                { "version", no_argument, NULL, OPT_VERSION },
                { "output", required_argument, NULL, OPT_OUTPUT },
                { "detailed-exitcode", no_argument, NULL, OPT_DETAILED_EXITCODE },
                {},
        };
        struct reclaimer_options ropt = { .mode = RECLAIMER_DAEMON };
        enum log_target target = LOG_TARGET_AUTO;
        const char *config_path = CONFIG_DEFAULT_PATH;
        struct config *config = NULL;
        struct reclaimer *r = NULL;
        struct ev_loop *loop;
        bool check_only = false, verbose = false, output_set = false, detailed = false;
        struct error err = { 0 };
        int c, ret, status, mode_opt = 0;

        ignore_signals();
        /* getopt_long() names the program by argv[0] in its messages. */
        if (argc > 0)
                argv[0] = (char *) "ivh-reclaimd";
        while ((c = getopt_long(argc, argv, "c:vh", options, NULL)) >= 0) {
                /* One mode at most: --once, --plan and --check-config exclude each other. */
                if ((c == OPT_ONCE || c == OPT_PLAN || c == OPT_CHECK) && mode_opt && mode_opt != c)
                        return usage_error("%s and %s cannot be used together", mode_name(mode_opt),
                                           mode_name(c));
                if (c == OPT_ONCE || c == OPT_PLAN || c == OPT_CHECK)
                        mode_opt = c;
                switch (c) {
                case 'c':
                        config_path = optarg;
                        break;
                case OPT_ONCE:
                        ropt.mode = RECLAIMER_ONCE;
                        break;
                case OPT_DRY_RUN:
                        ropt.force_dry_run = true;
                        break;
                case OPT_PLAN:
                        ropt.mode = RECLAIMER_PLAN;
                        break;
                case OPT_CHECK:
                        check_only = true;
                        break;
                case OPT_LOG_TARGET:
                        if (log_target_from_string(optarg, &target) < 0)
                                return usage_error("--log-target must be auto, journal or console, not '%s'",
                                                   optarg);
                        break;
                case OPT_OUTPUT:
                        if (strcmp(optarg, "table") == 0)
                                ropt.plan_format = PLAN_TABLE;
                        else if (strcmp(optarg, "json") == 0)
                                ropt.plan_format = PLAN_JSON;
                        else
                                return usage_error("--output must be table or json, not '%s'", optarg);
                        output_set = true;
                        break;
                case OPT_DETAILED_EXITCODE:
                        detailed = true;
                        break;
                case 'v':
                        verbose = true;
                        break;
                case 'h':
                        help(stdout);
                        return EXIT_OK;
                case OPT_VERSION:
                        printf("ivh-reclaimd %s\n", IVH_VERSION);
                        return EXIT_OK;
                default:
                        /* getopt_long() has said what is wrong. */
                        return usage_hint();
                }
        }
        if (optind < argc)
                return usage_error("unexpected argument '%s'", argv[optind]);
        if (output_set && ropt.mode != RECLAIMER_PLAN)
                return usage_error("%s needs --plan", "--output");
        if (detailed && ropt.mode != RECLAIMER_PLAN)
                return usage_error("%s needs --plan", "--detailed-exitcode");

        /* Serve large buffers (a big session list) from mmap and give them back
         * when freed. glibc would otherwise raise its threshold after the first
         * big free and keep the memory in the heap: a long-running daemon
         * should return to its steady-state size after a spike. */
        mallopt(M_MMAP_THRESHOLD, 256 * 1024);

        /* The access token lives in this process's memory: keep it out of core dumps. */
        prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);

        log_open(target);
        if (verbose)
                log_set_max_level(LOG_DEBUG);

        ret = config_load(config_path, &config, &err);
        if (ret < 0) {
                /* FILE:LINE:COLUMN lines go to stderr as they are, so editors can jump to them. */
                fputs(error_message(&err), stderr);
                if (!check_only && log_get_target() == LOG_TARGET_JOURNAL)
                        log_error("Invalid configuration %s:\n%s", config_path, error_message(&err));
                error_done(&err);
                if (check_only)
                        tell_daemon_reload_failed();
                return detailed || ret == -ENOMEM ? EXIT_FAIL : EXIT_CONFIG;
        }
        if (check_only) {
                status = check_config(config_path, config);
                config_free(config);
                return status;
        }

        if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
                log_error("Failed to initialize libcurl");
                config_free(config);
                return EXIT_FAIL;
        }
        loop = ev_default_loop(EVFLAG_AUTO);
        if (!loop) {
                log_error("Failed to create the event loop");
                config_free(config);
                curl_global_cleanup();
                return EXIT_FAIL;
        }

        ret = reclaimer_new(loop, config, &ropt, &r, &err);
        if (ret < 0) {
                log_error("%s", error_message(&err));
                error_done(&err);
                status = ret == -ENOMEM ? EXIT_FAIL : EXIT_CONFIG;
        } else if ((ret = reclaimer_start(r)) < 0) {
                /* A state_file that cannot be locked or read (a directory, a
                 * FIFO, a link loop, no permission) is the configuration's
                 * fault: a restart would not fix it. */
                status = ret == -EBUSY ? EXIT_BUSY : ret == -ENOMEM || ret == -EIO ? EXIT_FAIL : EXIT_CONFIG;
        } else {
                if (ropt.mode == RECLAIMER_DAEMON)
                        sd_notify(0, "READY=1");
                ev_run(loop, 0);
                status = ropt.mode == RECLAIMER_DAEMON ? EXIT_OK : reclaimer_exit_status(r);
                if (detailed && status == EXIT_OK)
                        status = reclaimer_planned(r) > 0 ? EXIT_PLANNED : EXIT_OK;
        }
        /* terraform's convention: 1 is any error, 2 is "there is something to do". */
        if (detailed && status != EXIT_OK && status != EXIT_PLANNED)
                status = EXIT_FAIL;
        reclaimer_free(r);
        ev_loop_destroy(loop);
        curl_global_cleanup();
        return status;
}
