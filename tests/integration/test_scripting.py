"""Issue 13: what scripts read. --plan --output json, --plan --detailed-exitcode,
usage errors, and --check-config's checks beyond the file (appkey, token,
directories, distinct files)."""

import json
import os
import re
import shutil
import subprocess

from harness import BINARY, TOKEN, DaemonTest, wait_for
from gateway_sim import IN_PROGRESS, STREAM_FAILED

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
EXAMPLES = os.path.join(SRC, "config")
SAMPLE_APPKEY = "e38267c0e86411ebb02aed82acb0ed99"


class PlanJson(DaemonTest):
    def test_one_object_per_session_with_the_journal_field_names(self):
        failed = self.gw.add_session("u-failed", STREAM_FAILED)
        vip = self.gw.add_session("vip-1", STREAM_FAILED)
        young = self.gw.add_session("u-young", IN_PROGRESS, started=False)
        odd = self.gw.add_session('quote"and\\back', IN_PROGRESS, started=True)
        self.seed_state({failed: 120, vip: 120, odd: 30})
        self.write_config([("failed-streams", "failed", "1m"), ("never-started", "not_started", "10m")],
                          protect_users=["vip-*"])

        run = self.run_daemon("--plan", "--output", "json")

        self.assertEqual(run.returncode, 0, run)
        self.assertEqual(self.gw.calls_to("closesession"), [])
        rows = [json.loads(line) for line in run.stdout.splitlines()]
        self.assertEqual(len(rows), 4, run.stdout)
        by_id = {r["IVH_SESSION_ID"]: r for r in rows}
        for r in rows:
            self.assertEqual(set(r), {"IVH_ACCOUNT", "IVH_SESSION_ID", "IVH_USER_ID", "IVH_SESSION_STATUS",
                                      "IVH_SESSION_STARTED", "IVH_AGE_SEC", "IVH_POLICY", "IVH_POLICY_KIND",
                                      "IVH_PROJECT_ID", "IVH_ASSET_VK", "IVH_CREATE_TYPE",  # issue 22
                                      "IVH_DECISION", "IVH_REASON"})
            self.assertEqual(r["IVH_ACCOUNT"], "default")
        self.assertEqual(by_id[failed]["IVH_DECISION"], "failed-streams")
        self.assertEqual(by_id[failed]["IVH_POLICY_KIND"], "failed")
        self.assertEqual(by_id[failed]["IVH_SESSION_STATUS"], 4)
        self.assertGreaterEqual(by_id[failed]["IVH_AGE_SEC"], 120)
        self.assertEqual(by_id[failed]["IVH_REASON"], "failed after 1m")
        self.assertEqual(by_id[vip]["IVH_DECISION"], "protected")
        self.assertEqual(by_id[young]["IVH_DECISION"], "keep")
        self.assertIsNone(by_id[young]["IVH_AGE_SEC"], "first seen now: no age")
        self.assertIs(by_id[young]["IVH_SESSION_STARTED"], False)
        self.assertRegex(by_id[young]["IVH_REASON"], r"^never-started due in ")
        # The user id with a quote and a backslash comes back byte for byte.
        self.assertEqual(by_id[odd]["IVH_USER_ID"], 'quote"and\\back')
        self.assertIsNone(by_id[odd]["IVH_POLICY"])
        self.assertEqual(by_id[odd]["IVH_DECISION"], "keep")

    def test_fused_and_deferred_rows(self):
        unstarted = [self.gw.add_session("kiosk-%d" % i, IN_PROGRESS, started=False) for i in range(3)]
        self.gw.add_session("web-1", IN_PROGRESS, started=True)
        failed = [self.gw.add_session("crash-%d" % i, STREAM_FAILED) for i in range(3)]
        self.seed_state(dict({s: 1200 for s in unstarted}, **{failed[0]: 1800, failed[1]: 1200, failed[2]: 600}))
        self.write_config([("failed-streams", "failed", "1m"), ("never-started", "not_started", "10m")],
                          extra="max_closes_per_cycle: 2\nfuse:\n  max_share: 50%\n  min_sessions: 0\n")
        run = self.run_daemon("--plan", "--output", "json", "--detailed-exitcode")
        self.assertEqual(run.returncode, 2, run)
        decision = {r["IVH_SESSION_ID"]: r["IVH_DECISION"] for r in map(json.loads, run.stdout.splitlines())}
        self.assertEqual([decision[s] for s in unstarted], ["fused"] * 3)
        self.assertEqual([decision[s] for s in failed], ["failed-streams", "failed-streams", "deferred"])


class DetailedExitcode(DaemonTest):
    def test_zero_when_nothing_would_be_reclaimed(self):
        self.gw.add_session("u-keep", IN_PROGRESS, started=True)
        self.write_config([("failed-streams", "failed", "1m")])
        run = self.run_daemon("--plan", "--detailed-exitcode")
        self.assertEqual(run.returncode, 0, run)
        self.assertIn("1 sessions: 0 to reclaim", run.stdout)

    def test_two_when_something_would_even_in_dry_run(self):
        self.gw.add_session("u-failed", STREAM_FAILED)
        self.write_config([("failed-streams", "failed", "0s")], extra="dry_run: true\n")
        run = self.run_daemon("--plan", "--detailed-exitcode")
        self.assertEqual(run.returncode, 2, run)
        self.assertEqual(self.gw.calls_to("closesession"), [])
        # Without the flag, the same plan exits 0 as before.
        self.assertEqual(self.run_daemon("--plan").returncode, 0)

    def test_one_on_every_error(self):
        self.gw.add_session("u-failed", STREAM_FAILED)
        self.write_config([("failed-streams", "failed", "0s")])
        self.gw.add_fault("listsessionofuin", "http_status", status=503)
        self.assertEqual(self.run_daemon("--plan", "--detailed-exitcode").returncode, 1)
        self.gw.faults.clear()
        # Refused credentials: 77 without the flag, 1 with it.
        self.assertEqual(self.run_daemon("--plan", token="not-the-token").returncode, 77)
        self.assertEqual(self.run_daemon("--plan", "--detailed-exitcode", token="not-the-token").returncode, 1)
        # An invalid file: 78 without the flag, 1 with it.
        with open(self.config_file, "a") as f:
            f.write("bogus_key: 1\n")
        self.assertEqual(self.run_daemon("--plan").returncode, 78)
        self.assertEqual(self.run_daemon("--plan", "--detailed-exitcode").returncode, 1)


class UsageErrors(DaemonTest):
    def test_one_line_then_the_hint(self):
        cases = {
            ("--bogus",): "unrecognized option '--bogus'",
            ("--log-target", "syslog"): "--log-target must be auto, journal or console, not 'syslog'",
            ("extra-arg",): "unexpected argument 'extra-arg'",
            ("--output", "json"): "--output needs --plan",
            ("--plan", "--output", "xml"): "--output must be table or json, not 'xml'",
            ("--detailed-exitcode",): "--detailed-exitcode needs --plan",
            ("--config",): "option '--config' requires an argument",
        }
        for args, message in cases.items():
            with self.subTest(args=args):
                p = subprocess.run([BINARY, *args], capture_output=True, text=True)
                self.assertEqual(p.returncode, 64, p)
                lines = p.stderr.splitlines()
                self.assertEqual(len(lines), 2, p.stderr)
                self.assertIn(message, lines[0])
                self.assertEqual(lines[1], "Try 'ivh-reclaimd --help' for more information.")
                self.assertEqual(p.stdout, "")


class CheckBase(DaemonTest):
    def check(self, env_extra=None, config=None, token=TOKEN):
        env = dict(os.environ)
        env.pop("CREDENTIALS_DIRECTORY", None)
        env.pop("IVH_ACCESS_TOKEN", None)
        if token is not None:
            env["IVH_ACCESS_TOKEN"] = token
        env.update(env_extra or {})
        return subprocess.run([BINARY, "--check-config", "--config", config or self.config_file],
                              capture_output=True, text=True, env=env, timeout=30)

    def shipped_copy(self, name, appkey=None):
        with open(os.path.join(EXAMPLES, name)) as f:
            text = f.read()
        if appkey:
            text = text.replace(SAMPLE_APPKEY, appkey)
        text = text.replace("/var/lib/ivh-reclaimd/", self.dir + "/")
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.write(text)
        return path


class CheckConfigPreflight(CheckBase):
    def test_shipped_file_is_refused_until_its_appkey_is_set(self):
        path = self.shipped_copy("policy.yaml")
        p = self.check(config=path)
        self.assertEqual(p.returncode, 78, p)
        self.assertRegex(p.stderr, r"(?m)^%s:\d+:11: gateway\.appkey is the sample appkey from Tencent's "
                         r"documentation" % re.escape(path))
        path = self.shipped_copy("policy.yaml", appkey="0123456789abcdef0123456789abcdef")
        p = self.check(config=path)
        self.assertEqual(p.returncode, 0, p)
        self.assertIn("OK (3 policies)", p.stdout)
        with open(os.path.join(EXAMPLES, "policy.yaml")) as f:
            self.assertRegex(f.read(), r"(?m)^dry_run: true$", "the shipped file starts in dry-run mode")

    def test_accounts_example_with_each_token(self):
        path = self.shipped_copy("accounts.yaml", appkey="00112233445566778899aabbccddeeff")
        p = self.check(config=path, token=None)
        self.assertEqual(p.returncode, 78, p)
        self.assertIn("account prod: no access token for account prod", p.stderr)
        self.assertIn("account staging: no access token for account staging", p.stderr)
        p = self.check(config=path, token=None,
                       env_extra={"IVH_ACCESS_TOKEN_PROD": "a", "IVH_ACCESS_TOKEN_STAGING": "b"})
        self.assertEqual(p.returncode, 0, p)
        self.assertIn("OK (2 accounts, 4 policies)", p.stdout)

    def test_token_must_be_present_and_private(self):
        self.write_config([("f", "failed", "1m")])
        p = self.check(token=None)
        self.assertEqual(p.returncode, 78, p)
        self.assertIn("no access token", p.stderr)
        # Beside the policy file, where the shipped unit's LoadCredential= reads it.
        beside = os.path.join(self.dir, "accesstoken")
        with open(beside, "w") as f:
            f.write("tok\n")
        for mode, ok in ((0o644, False), (0o640, False), (0o660, False), (0o600, True), (0o400, True)):
            with self.subTest(mode=oct(mode)):
                os.chmod(beside, mode)
                p = self.check(token=None)
                self.assertEqual(p.returncode, 0 if ok else 78, p)
                if ok:
                    self.assertIn("the shipped unit hands over as a credential", p.stdout)
                else:
                    self.assertRegex(p.stderr, r"access token file %s .*(readable by others|gives its group or "
                                     r"others access)" % re.escape(beside))
        os.unlink(beside)
        # Under systemd: the credential.
        creds = os.path.join(self.dir, "creds")
        os.mkdir(creds)
        with open(os.path.join(creds, "accesstoken"), "w") as f:
            f.write("")
        os.chmod(os.path.join(creds, "accesstoken"), 0o400)
        p = self.check(token=None, env_extra={"CREDENTIALS_DIRECTORY": creds})
        self.assertEqual(p.returncode, 78, p)
        self.assertIn("is empty", p.stderr)
        self.assertNotIn(TOKEN, p.stdout + p.stderr)

    def test_directories_must_be_writable(self):
        blocker = os.path.join(self.dir, "not-a-dir")
        with open(blocker, "w") as f:
            f.write("")
        self.write_config([("f", "failed", "1m")],
                          extra="metrics_file: %s/nowhere/m.prom\n" % self.dir)
        with open(self.config_file) as f:
            text = f.read()
        with open(self.config_file, "w") as f:
            f.write(text.replace("state_file: %s" % self.state_file, "state_file: %s/state.json" % blocker))
        p = self.check()
        self.assertEqual(p.returncode, 78, p)
        self.assertIn("state_file: %s is not a directory" % blocker, p.stderr)
        self.assertIn("metrics_file: directory %s/nowhere does not exist" % self.dir, p.stderr)
        if os.geteuid() != 0:
            return
        # A directory the service user cannot write (uid 65534 through setpriv).
        if not shutil.which("setpriv"):
            self.skipTest("needs setpriv")
        ro = os.path.join(self.dir, "ro")
        os.mkdir(ro, 0o755)
        self.write_config([("f", "failed", "1m")])
        with open(self.config_file) as f:
            text = f.read()
        with open(self.config_file, "w") as f:
            f.write(text.replace("state_file: %s" % self.state_file, "state_file: %s/state.json" % ro))
        os.chmod(self.config_file, 0o644)
        os.chmod(self.dir, 0o755)
        env = dict(os.environ, IVH_ACCESS_TOKEN=TOKEN)
        p = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", BINARY,
                            "--check-config", "--config", self.config_file],
                           capture_output=True, text=True, env=env, timeout=30)
        self.assertEqual(p.returncode, 78, p)
        self.assertIn("state_file: cannot write in %s: Permission denied (running as uid 65534)" % ro, p.stderr)

    def test_state_file_may_not_be_the_policy_file(self):
        self.write_config([("f", "failed", "1m")])
        with open(self.config_file) as f:
            text = f.read()
        with open(self.config_file, "w") as f:
            f.write(text.replace("state_file: %s" % self.state_file, "state_file: %s/./policy.yaml" % self.dir))
        p = self.check()
        self.assertEqual(p.returncode, 78, p)
        self.assertRegex(p.stderr, r"^%s:\d+:1: state_file: .* is the same file as the policy file"
                         % re.escape(self.config_file))
        # The daemon refuses it as well, and the policy file is untouched.
        with open(self.config_file) as f:
            before = f.read()
        self.assertEqual(self.run_daemon("--once").returncode, 78)
        with open(self.config_file) as f:
            self.assertEqual(f.read(), before)


class CheckConfigHostileSettings(CheckBase):
    """--check-config against files it must not let the daemon overwrite, unsafe
    token places, the sample appkey and a reload that needs a restart; the
    modes exclude each other (found by the issue-13 red team)."""

    def config_with(self, **keys):
        self.write_config([("f", "failed", "1m")])
        with open(self.config_file) as f:
            text = f.read()
        for key, value in keys.items():
            if key == "state_file":
                text = text.replace("state_file: %s" % self.state_file, "state_file: %s" % value)
            else:
                text += "%s: %s\n" % (key, value)
        with open(self.config_file, "w") as f:
            f.write(text)

    def test_files_that_must_not_be_overwritten(self):
        token = os.path.join(self.dir, "token")
        with open(token, "w") as f:
            f.write("tok\n")
        os.chmod(token, 0o600)
        dangling = os.path.join(self.dir, "m.prom")
        os.symlink(self.state_file, dangling)  # the state file does not exist yet
        cases = [
            ({"metrics_file": dangling}, "is the same file as state_file"),
            ({"metrics_file": self.state_file + ".lock"}, "is the lock file of the state file"),
            ({"metrics_file": token, "gateway_token": token}, "is the access token file"),
            ({"state_file": token, "gateway_token": token}, "is the access token file"),
        ]
        for keys, message in cases:
            with self.subTest(keys=keys):
                tok = keys.pop("gateway_token", None)
                self.config_with(**keys)
                if tok:
                    with open(self.config_file) as f:
                        text = f.read().replace("gateway:\n", "gateway:\n  accesstoken_file: %s\n" % tok)
                    with open(self.config_file, "w") as f:
                        f.write(text)
                p = self.check()
                self.assertEqual(p.returncode, 78, p)
                self.assertRegex(p.stderr, r"(?m)^%s:\d+:\d+: .*%s" % (re.escape(self.config_file), message))
                # The daemon refuses it too, and writes nothing.
                self.assertEqual(self.run_daemon("--once").returncode, 78)
                self.assertFalse(os.path.exists(self.state_file))
                with open(token) as f:
                    self.assertEqual(f.read(), "tok\n")

    def test_hard_link_and_the_running_policy_copy(self):
        # Final red team: a hard link to the policy file passed as another
        # file, and the daemon's own copy of its policy could be given to it
        # as state or metrics file (which then disabled the reload check).
        self.config_with()
        link = os.path.join(self.dir, "hard.json")
        os.link(self.config_file, link)
        self.config_with(state_file=link)
        os.unlink(link)
        os.link(self.config_file, link)
        p = self.check()
        self.assertEqual(p.returncode, 78, p)
        self.assertIn("is the same file as the policy file", p.stderr)
        for key in ("state_file", "metrics_file"):
            with self.subTest(key=key):
                self.config_with(**{key: os.path.join(self.dir, "running-policy.yaml")})
                p = self.check()
                self.assertEqual(p.returncode, 78, p)
                self.assertRegex(p.stderr, r"(?m)^%s:\d+:\d+: %s: .* has the name of the daemon's copy of its "
                                 r"running policy" % (re.escape(self.config_file), key))
                self.assertEqual(self.run_daemon("--once").returncode, 78)

    def test_state_file_that_is_not_a_file(self):
        for path, message in (("/dev/null", "is not a regular file"), ("/proc/version", "is in /proc or /sys")):
            with self.subTest(path=path):
                self.config_with(state_file=path)
                p = self.check()
                self.assertEqual(p.returncode, 78, p)
                self.assertIn(message, p.stderr)

    def test_token_in_a_directory_anyone_may_write(self):
        d = os.path.join(self.dir, "open")
        os.mkdir(d)
        os.chmod(d, 0o777)
        token = os.path.join(d, "token")
        with open(token, "w") as f:
            f.write("tok\n")
        os.chmod(token, 0o600)
        self.config_with()
        with open(self.config_file) as f:
            text = f.read().replace("gateway:\n", "gateway:\n  accesstoken_file: %s\n" % token)
        with open(self.config_file, "w") as f:
            f.write(text)
        p = self.check(token=None)
        self.assertEqual(p.returncode, 78, p)
        self.assertIn("is in a directory that anyone may write", p.stderr)
        os.chmod(d, 0o1777)  # sticky, as /tmp: others cannot replace it
        self.assertEqual(self.check(token=None).returncode, 0)

    def test_sample_appkey_in_any_case(self):
        self.config_with()
        with open(self.config_file) as f:
            text = f.read()
        with open(self.config_file, "w") as f:
            f.write(re.sub(r"appkey: \S+", "appkey: " + SAMPLE_APPKEY.upper(), text))
        p = self.check()
        self.assertEqual(p.returncode, 78, p)
        self.assertIn("is the sample appkey", p.stderr)

    def test_modes_exclude_each_other(self):
        for args in (["--plan", "--once"], ["--once", "--check-config"], ["--check-config", "--plan"]):
            with self.subTest(args=args):
                p = subprocess.run([BINARY, *args], capture_output=True, text=True)
                self.assertEqual(p.returncode, 64)
                self.assertIn("cannot be used together", p.stderr.splitlines()[0])
                self.assertTrue(p.stderr.startswith("ivh-reclaimd: "))
        p = subprocess.run([BINARY, "--plan", "--plan", "--help"], capture_output=True, text=True)
        self.assertEqual(p.returncode, 0)

    def test_reload_check_compares_with_the_running_policy(self):
        # As the unit's ExecReload= runs it: $MAINPID, $INVOCATION_ID and
        # $STATE_DIRECTORY, where the daemon keeps its running policy.
        statedir = os.path.join(self.dir, "statedir")
        os.mkdir(statedir)
        self.config_with(state_file=os.path.join(statedir, "state.json"))
        env = dict(self.env(), STATE_DIRECTORY=statedir)
        p = self.start_daemon(env=env)
        running = os.path.join(statedir, "running-policy.yaml")
        wait_for(lambda: os.path.exists(running), what="the copy of the running policy")
        with open(running) as f:
            self.assertEqual(f.readline(), "# ivh-reclaimd %d\n" % p.pid)
        reload_env = {"MAINPID": str(p.pid), "INVOCATION_ID": "0" * 32, "STATE_DIRECTORY": statedir}
        self.assertEqual(self.check(env_extra=reload_env).returncode, 0)
        with open(self.config_file) as f:
            good = f.read()
        with open(self.config_file, "w") as f:
            f.write(good.replace(os.path.join(statedir, "state.json"), os.path.join(statedir, "other.json")))
        c = self.check(env_extra=reload_env)
        self.assertEqual(c.returncode, 78, c)
        self.assertIn("state_file differs from the running daemon's, which needs a restart", c.stderr)
        # A metrics directory that cannot be written warns, and fails nothing.
        with open(self.config_file, "w") as f:
            f.write(good + "metrics_file: %s/nowhere/m.prom\n" % self.dir)
        c = self.check(env_extra=reload_env)
        self.assertEqual(c.returncode, 0, c)
        self.assertIn("warning: metrics_file: directory %s/nowhere does not exist" % self.dir, c.stdout)
        run = self.stop_daemon(p)
        self.assertEqual(run.returncode, 0, run)
