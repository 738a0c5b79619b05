"""The unit file (systemd-analyze), cmake --install and the Debian package."""

import glob
import os
import re
import shutil
import subprocess
import tempfile
import unittest

from harness import BINARY

SRC = os.environ.get("IVH_SOURCE_DIR") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
BUILD = os.environ.get("IVH_BUILD_DIR") or os.path.dirname(BINARY)
UNIT = os.path.join(SRC, "systemd", "ivh-reclaimd.service")


def run(*cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


class UnitFile(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="ivh-unit-")
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)
        # verify checks that ExecStart exists: point it at the build.
        with open(UNIT) as f:
            text = f.read()
        self.unit = os.path.join(self.dir, "ivh-reclaimd.service")
        with open(self.unit, "w") as f:
            f.write(text.replace("/usr/bin/ivh-reclaimd", os.path.abspath(BINARY)))
        self.text = text

    def test_systemd_analyze_verify(self):
        # verify also runs man for each Documentation=man:...: show it the built pages.
        for page in ("ivh-reclaimd.8", "ivh-reclaimd.yaml.5"):
            built = os.path.join(BUILD, page)
            self.assertTrue(os.path.exists(built), "%s not built (IVH_BUILD_MAN)" % built)
            section = os.path.join(self.dir, "man", "man" + page[-1])
            os.makedirs(section, exist_ok=True)
            shutil.copy(built, section)
        p = run("systemd-analyze", "verify", self.unit,
                env=dict(os.environ, MANPATH=os.path.join(self.dir, "man")))
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertNotIn("ivh-reclaimd.service", p.stderr)

    def test_sandbox_exposure(self):
        p = run("systemd-analyze", "security", "--offline=true", self.unit)
        m = re.search(r"Overall exposure level for ivh-reclaimd.service: ([\d.]+)", p.stdout)
        self.assertIsNotNone(m, p.stdout + p.stderr)
        self.assertLessEqual(float(m.group(1)), 2.0, p.stdout)

    def test_contract(self):
        for line in ("Type=notify", "ExecReload=/bin/kill -HUP $MAINPID", "Restart=on-failure",
                     "StateDirectory=ivh-reclaimd", "ConfigurationDirectory=ivh-reclaimd",
                     "LoadCredential=accesstoken:/etc/ivh-reclaimd/accesstoken", "DynamicUser=yes",
                     "NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes",
                     "PrivateDevices=yes", "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
                     "SystemCallFilter=@system-service", "CapabilityBoundingSet=", "LimitCORE=0"):
            self.assertIn("\n" + line + "\n", self.text, line)
        self.assertRegex(self.text, r"\nWatchdogSec=\d+s\n")
        # The token goes through LoadCredential, never through the command line.
        exec_start = [l for l in self.text.splitlines() if l.startswith("ExecStart=")][0]
        self.assertNotIn("token", exec_start.lower())

    def test_example_policy_matches_the_unit(self):
        p = run(BINARY, "--check-config", "--config", os.path.join(SRC, "config", "policy.yaml"),
                env=dict(os.environ, IVH_ACCESS_TOKEN="t"))
        # Valid, but the sample appkey must be replaced first (issue 13).
        self.assertEqual(p.returncode, 78, p.stderr)
        self.assertEqual(len(p.stderr.splitlines()), 1, p.stderr)
        self.assertIn("gateway.appkey is the sample appkey", p.stderr)
        with open(os.path.join(SRC, "config", "policy.yaml")) as f:
            text = f.read()
        # Under DynamicUser the service cannot read a root-only token file: the
        # example must leave accesstoken_file unset so LoadCredential= is used.
        self.assertNotRegex(text, r"(?m)^\s*accesstoken_file:")
        self.assertIn("state_file: /var/lib/ivh-reclaimd/state.json", text)


class CmakeInstall(unittest.TestCase):
    def test_install_layout_and_kept_policy(self):
        dest = tempfile.mkdtemp(prefix="ivh-destdir-")
        self.addCleanup(shutil.rmtree, dest, ignore_errors=True)
        env = dict(os.environ, DESTDIR=dest)
        p = run("cmake", "--install", BUILD, env=env)
        self.assertEqual(p.returncode, 0, p.stderr)
        files = {os.path.relpath(f, dest) for f in glob.glob(dest + "/**", recursive=True) if os.path.isfile(f)}
        names = {os.path.basename(f) for f in files}
        self.assertLessEqual({"ivh-reclaimd", "ivh-reclaimd.service", "ivh-reclaimd.catalog", "policy.yaml",
                              "README.md"}, names, files)
        unit = [f for f in files if f.endswith("ivh-reclaimd.service")][0]
        binary = [f for f in files if f.endswith("bin/ivh-reclaimd")][0]
        policy = [f for f in files if f.endswith("ivh-reclaimd/policy.yaml") and "/doc/" not in f][0]
        with open(os.path.join(dest, unit)) as f:
            text = f.read()
        self.assertIn("ExecStart=/%s --config /%s" % (binary, policy), text)
        self.assertTrue(os.access(os.path.join(dest, binary), os.X_OK))

        # An edited policy survives a second install.
        with open(os.path.join(dest, policy), "a") as f:
            f.write("# edited by the operator\n")
        p = run("cmake", "--install", BUILD, env=env)
        self.assertEqual(p.returncode, 0, p.stderr)
        with open(os.path.join(dest, policy)) as f:
            self.assertTrue(f.read().endswith("# edited by the operator\n"))
