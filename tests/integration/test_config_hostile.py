"""--check-config against hostile policy files (issue 10, items 4, 13 and 14):
sizes that used to freeze or exhaust the loader, empty selectors that used to
widen a policy to every user, and a metrics_file that would overwrite the
state or the policy file. Each file is refused with FILE:LINE:COLUMN."""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import BINARY  # noqa: E402

HEAD = "gateway: {appkey: k}\n"


def nested_brackets(n=150000):
    """300 KB of '[' and ']': the loader used to freeze for minutes."""
    return HEAD + "policies: " + "[" * n + "]" * n + "\n"


def many_keys(n=90000):
    """90k keys in one mapping: the duplicate-key check was quadratic."""
    return HEAD + "policies: []\n" + "".join("k%d: 1\n" % i for i in range(n))


def many_aliases(n=4000, width=200):
    """One anchored policy with a wide selector, referred to 4,000 times:
    every reference copied the selector and every pair of copies reported
    a duplicate name (1 GB)."""
    users = ", ".join("u%d" % i for i in range(width))
    return (HEAD + "x: &p {name: a, kind: failed, after: 1m, user_ids: [%s]}\n" % users
            + "policies: [" + ", ".join(["*p"] * n) + "]\n")


def billion_laughs(levels=11):
    """Each level refers to the one before it ten times: 10^11 strings."""
    lines = [HEAD, 'l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n']
    for i in range(1, levels + 1):
        lines.append("l%d: &l%d [%s]\n" % (i, i, ", ".join(["*l%d" % (i - 1)] * 10)))
    lines.append("policies: [{name: a, kind: failed, after: 1m, user_ids: *l%d}]\n" % levels)
    return "".join(lines)


def nested_expansion(accounts=30, policies=30, width=2000):
    """Under the alias limit, but every account's policies are the same
    anchored list, and every policy's selector the same anchored list:
    30 x 30 x 2,000 patterns to copy."""
    users = ", ".join("u%d" % i for i in range(width))
    pols = ", ".join("{name: p%d, kind: failed, after: 1m, user_ids: %s}"
                     % (i, ("&u [%s]" % users) if i == 0 else "*u") for i in range(policies))
    out = ["gateway: {timeout: 5s}\naccounts:\n  - {name: a0, appkey: k, policies: &p [%s]}\n" % pols]
    out += ["  - {name: a%d, appkey: k, policies: *p}\n" % i for i in range(1, accounts)]
    return "".join(out)


def many_nodes(n=120000):
    """A flat list of 120k tiny scalars (about 700 KB)."""
    return HEAD + "policies: []\nprotect:\n  session_ids: [" + ",".join("s%d" % i for i in range(n)) + "]\n"


def many_anchors(n=60000):
    """Anchors alone: libyaml checks each new anchor against all earlier ones."""
    return HEAD + "policies: []\nprotect:\n  session_ids: [" + ",".join("&a%d s" % i for i in range(n)) + "]\n"


def same_project_ids(n=40000):
    """One project id listed 40k times: each pair used to be one error."""
    return "gateway: {appkey: k, project_ids: [" + ",".join(["p"] * n) + "]}\npolicies: []\n"


# --check-config also looks for a token; these tests are about the file.
CHECK_ENV = dict(os.environ, IVH_ACCESS_TOKEN="t0ken")


class CheckConfigFile(unittest.TestCase):
    """A scratch directory with policy.yaml; check() writes it and runs
    --check-config on it."""

    max_size = None  # bytes; a hostile file must stay small to prove the point

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="ivh-check-config-")
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)
        self.config_file = os.path.join(self.dir, "policy.yaml")

    def check(self, text, timeout=60):
        with open(self.config_file, "w") as f:
            f.write(text)
        if self.max_size is not None:
            self.assertLess(os.path.getsize(self.config_file), self.max_size)
        # The timeout only keeps a regression from hanging the suite.
        return subprocess.run([BINARY, "--check-config", "--config", self.config_file], env=CHECK_ENV,
                              capture_output=True, text=True, timeout=timeout)


class Hostile(CheckConfigFile):
    max_size = 1024 * 1024

    def assertRefused(self, p, message):
        self.assertEqual(p.returncode, 78, p.stderr[:2000])
        self.assertRegex(p.stderr, r"(?m)^%s:\d+:\d+: .*%s" % (re.escape(self.config_file), re.escape(message)))
        # A bounded report, however many problems the file has.
        self.assertLess(len(p.stderr), 256 * 1024)

    def test_nested_brackets(self):
        p = self.check(nested_brackets())
        self.assertRefused(p, "nesting deeper than 32 levels")
        self.assertIn("%s:2:42: " % self.config_file, p.stderr)

    def test_many_keys(self):
        self.assertRefused(self.check(many_keys()), "more than 50000 nodes")

    def test_many_keys_under_the_node_limit(self):
        # Under the node limit, each key is still refused, but the report stops.
        p = self.check(many_keys(20000))
        self.assertRefused(p, "top level: unknown key 'k10' (valid keys: gateway, poll_interval")
        self.assertRegex(p.stderr, r"more than 100 errors")
        self.assertEqual(len(p.stderr.splitlines()), 101)

    def test_many_aliases(self):
        self.assertRefused(self.check(many_aliases()), "more than 100 aliases")

    def test_billion_laughs(self):
        self.assertRefused(self.check(billion_laughs()), "more than 100 aliases")

    def test_aliases_under_the_limit_expand_boundedly(self):
        p = self.check(nested_expansion())
        self.assertRefused(p, "more than 100000 nodes after expanding aliases")
        self.assertEqual(len(p.stderr.splitlines()), 1, p.stderr)

    def test_protect_lists_copied_into_many_accounts(self):
        text = ("gateway: {timeout: 5s}\nprotect:\n  session_ids: [%s]\naccounts:\n"
                % ",".join("s%d" % i for i in range(20000))
                + "".join("  - {name: a%d, appkey: k, policies: []}\n" % i for i in range(1000)))
        self.assertRefused(self.check(text), "copying protect lists into accounts")

    def test_many_nodes(self):
        self.assertRefused(self.check(many_nodes()), "more than 50000 nodes")

    def test_many_anchors(self):
        self.assertRefused(self.check(many_anchors()), "more than 100 anchors")

    def test_same_project_id_many_times(self):
        p = self.check(same_project_ids())
        self.assertRefused(p, "gateway.project_ids: 'p' is listed twice")
        self.assertRegex(p.stderr, r"more than 100 errors")


class EmptySelector(CheckConfigFile):
    def test_empty_or_null_selector_is_refused(self):
        for value in ("[]", "", "~", "null"):
            with self.subTest(value=value):
                p = self.check(HEAD + "policies:\n"
                               "  - name: booth\n    kind: max_age\n    after: 2h\n"
                               "    user_ids: %s\n" % value)
                self.assertEqual(p.returncode, 78, p.stderr)
                self.assertRegex(p.stderr, r"^%s:6:1[45]: policies\[0\]\.user_ids: .*omit user_ids to match every user"
                                 % re.escape(self.config_file))

    def test_empty_protect_list_is_allowed(self):
        p = self.check(HEAD + "protect: {user_ids: [], session_ids: []}\npolicies: []\n")
        self.assertEqual(p.returncode, 0, p.stderr)


class MetricsFile(CheckConfigFile):
    def test_metrics_file_is_the_state_file(self):
        state = os.path.join(self.dir, "state.json")
        p = self.check(HEAD + "policies: []\nstate_file: %s\nmetrics_file: %s/./state.json\n"
                       % (state, self.dir))
        self.assertEqual(p.returncode, 78, p.stderr)
        self.assertRegex(p.stderr, r"^%s:4:1: metrics_file: .*state_file" % re.escape(self.config_file))

    def test_metrics_file_is_the_policy_file(self):
        os.symlink(self.config_file, os.path.join(self.dir, "link.yaml"))
        p = self.check(HEAD + "policies: []\nmetrics_file: %s/link.yaml\n" % self.dir)
        self.assertEqual(p.returncode, 78, p.stderr)
        self.assertRegex(p.stderr, r"^%s:3:1: metrics_file: .*policy file" % re.escape(self.config_file))

    def test_metrics_file_is_an_account_state_file(self):
        p = self.check("gateway: {url: 'http://127.0.0.1:1'}\nstate_file: %s/state.json\n"
                       "metrics_file: %s/state.prod.json\n"
                       "accounts:\n  - {name: prod, appkey: k, policies: []}\n" % (self.dir, self.dir))
        self.assertEqual(p.returncode, 78, p.stderr)
        self.assertRegex(p.stderr, r"^%s:3:1: metrics_file: .*accounts\[0\]" % re.escape(self.config_file))

    def test_distinct_metrics_file_is_fine(self):
        p = self.check(HEAD + "policies: []\nstate_file: %s/state.json\nmetrics_file: %s/m.prom\n"
                       % (self.dir, self.dir))
        self.assertEqual(p.returncode, 0, p.stderr)


if __name__ == "__main__":
    unittest.main()
