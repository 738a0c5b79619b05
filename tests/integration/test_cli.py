"""The command line: --check-config, credentials, --help/--version, usage."""

import os
import re
import subprocess
import unittest

from harness import APPKEY, BINARY, TOKEN, DaemonTest
from gateway_sim import STREAM_FAILED



class CheckConfig(DaemonTest):
    def check(self, text):
        with open(self.config_file, "w") as f:
            f.write(text)
        return subprocess.run([BINARY, "--check-config", "--config", self.config_file],
                              capture_output=True, text=True)

    def test_malformed_yaml(self):
        p = self.check("gateway:\n  appkey: k\npolicies:\n  - name: a\n    kind: [failed\n")
        self.assertEqual(p.returncode, 78)
        self.assertRegex(p.stderr, r"^%s:\d+:\d+: YAML syntax error" % self.config_file)

    def test_every_error_with_position_and_suggestion(self):
        p = self.check("gateway:\n  appkey: k\n  timout: 5s\npolicies:\n"
                       "  - name: a\n    kind: failed\n    after: 10\n")
        self.assertEqual(p.returncode, 78)
        lines = p.stderr.splitlines()
        self.assertIn("%s:3:3: gateway: unknown key 'timout', did you mean 'timeout'?" % self.config_file, lines)
        self.assertIn("%s:7:12: policies[0].after: invalid duration '10': missing unit "
                      "(use ms, s, m, h or d)" % self.config_file, lines)
        self.assertEqual(len(lines), 2)

    def test_missing_file(self):
        p = subprocess.run([BINARY, "--check-config", "--config", "/nonexistent.yaml"],
                           capture_output=True, text=True)
        self.assertEqual(p.returncode, 78)
        self.assertIn("/nonexistent.yaml: cannot read configuration: No such file or directory", p.stderr)

    def test_invalid_config_refuses_to_start(self):
        with open(self.config_file, "w") as f:
            f.write("gateway: {appkey: k}\npolicies: [{name: a, kind: failed}]\n")
        run = self.run_daemon("--once")
        self.assertEqual(run.returncode, 78)
        self.assertIn("missing required key 'after'", run.stderr)
        self.assertEqual(self.gw.calls, [])


class Credentials(DaemonTest):
    def setUp(self):
        super().setUp()
        self.failed = self.gw.add_session("u1", STREAM_FAILED)

    def test_missing_token_exits_78(self):
        self.write_config([("f", "failed", "0s")])
        run = self.run_daemon("--once", token=None)
        self.assertEqual(run.returncode, 78, run)
        self.assertIn("no access token", run.stderr)
        self.assertEqual(self.gw.calls, [])

    def test_token_file(self):
        path = os.path.join(self.dir, "accesstoken")
        with open(path, "w") as f:
            f.write(TOKEN + "\n")
        os.chmod(path, 0o600)
        self.write_config([("f", "failed", "0s")], gateway_extra="  accesstoken_file: %s\n" % path)
        run = self.run_daemon("--once", token=None)
        self.assertEqual(run.returncode, 0, run)
        self.assertEqual(self.gw.closed_ids(), [self.failed])
        self.assert_gateway_clean()

    def test_token_file_readable_by_others_is_refused(self):
        path = os.path.join(self.dir, "accesstoken")
        with open(path, "w") as f:
            f.write(TOKEN)
        os.chmod(path, 0o644)
        self.write_config([("f", "failed", "0s")], gateway_extra="  accesstoken_file: %s\n" % path)
        run = self.run_daemon("--once", token=None)
        self.assertEqual(run.returncode, 78, run)
        self.assertIn("readable by others", run.stderr)
        self.assertEqual(self.gw.calls, [])

    def test_credentials_directory(self):
        creds = os.path.join(self.dir, "creds")
        os.mkdir(creds)
        with open(os.path.join(creds, "accesstoken"), "w") as f:
            f.write(TOKEN)
        os.chmod(os.path.join(creds, "accesstoken"), 0o400)
        self.write_config([("f", "failed", "0s")])
        env = self.env(token="wrong-token-must-not-be-used")
        env["CREDENTIALS_DIRECTORY"] = creds
        run = self.run_daemon("--once", env=env)
        self.assertEqual(run.returncode, 0, run)
        self.assertEqual(self.gw.closed_ids(), [self.failed])

    def test_wrong_token_is_an_api_error_and_never_logged(self):
        self.write_config([("f", "failed", "0s")])
        run = self.run_daemon("--once", token="not-the-token-0123456789")
        # The gateway answers 100005 (unauthorized): an account problem, exit 77 (EX_NOPERM).
        self.assertEqual(run.returncode, 77, run)
        self.assertIn("signature mismatch", run.stderr)
        auth = [l for l in run.logs if l.get("message_id") == "d1f0b64d5da24960a3fff63a226ec244"]
        self.assertEqual(len(auth), 1, run)
        self.assertIn("check the appkey, the access token and the system clock", auth[0]["msg"])
        self.assertNotIn("not-the-token-0123456789", run.stderr + run.stdout)
        self.assertEqual(self.gw.calls_to("closesession"), [])

    def test_empty_token(self):
        self.write_config([("f", "failed", "0s")])
        run = self.run_daemon("--once", token="  \n")
        self.assertEqual(run.returncode, 78, run)
        self.assertIn("IVH_ACCESS_TOKEN: is empty", run.stderr)


class Usage(DaemonTest):
    def test_help_and_version(self):
        p = subprocess.run([BINARY, "--help"], capture_output=True, text=True)
        self.assertEqual(p.returncode, 0)
        for flag in ("--config", "--once", "--dry-run", "--plan", "--check-config", "--log-target", "--version"):
            self.assertIn(flag, p.stdout)
        p = subprocess.run([BINARY, "--version"], capture_output=True, text=True)
        self.assertEqual(p.returncode, 0)
        self.assertRegex(p.stdout, r"^ivh-reclaimd \d+\.\d+\.\d+\n$")

    def test_bad_usage_exits_64(self):
        for args in (["--bogus"], ["--log-target", "syslog"], ["extra-arg"]):
            p = subprocess.run([BINARY, *args], capture_output=True, text=True)
            self.assertEqual(p.returncode, 64, args)
            self.assertTrue(p.stderr)


class BashCompletion(unittest.TestCase):
    """completion/ivh-reclaimd offers exactly the options --help lists."""

    def complete(self, *words):
        script = ('source /usr/share/bash-completion/bash_completion; source "$1"; shift; '
                  'COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}; '
                  '_ivh_reclaimd; printf "%s\\n" "${COMPREPLY[@]}"')
        src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "completion", "ivh-reclaimd")
        p = subprocess.run(["bash", "-c", script, "bash", src, "ivh-reclaimd", *words],
                           capture_output=True, text=True)
        self.assertEqual(p.returncode, 0, p.stderr)
        return sorted(p.stdout.split())

    @unittest.skipUnless(os.path.exists("/usr/share/bash-completion/bash_completion"), "needs bash-completion")
    def test_options_match_help(self):
        help_text = subprocess.run([BINARY, "--help"], capture_output=True, text=True).stdout
        long_options = sorted(set(re.findall(r"(--[a-z][a-z-]+)", help_text.split("\n\n")[1])))
        self.assertEqual([o for o in self.complete("--") if o.startswith("--")], long_options)
        self.assertEqual(self.complete("--log-target", ""), ["auto", "console", "journal"])
        self.assertEqual(self.complete("--output", "j"), ["json"])
