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
        p = run("systemd-analyze", "verify", self.unit)
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
        p = run(BINARY, "--check-config", "--config", os.path.join(SRC, "config", "policy.yaml"))
        self.assertEqual(p.returncode, 0, p.stderr)
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


@unittest.skipUnless(os.geteuid() == 0, "installing a Debian package needs root")
@unittest.skipUnless(shutil.which("dpkg") and shutil.which("cpack"), "needs dpkg and cpack")
class DebianPackage(unittest.TestCase):
    def setUp(self):
        if run("dpkg-query", "-W", "ivh-reclaimd").returncode == 0:
            self.skipTest("an ivh-reclaimd package is already installed here; not touching it")
        self.dir = tempfile.mkdtemp(prefix="ivh-deb-")
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)
        self.addCleanup(run, "dpkg", "--purge", "ivh-reclaimd")

    def test_package_installs_and_removes_cleanly(self):
        build = os.path.join(self.dir, "build")
        p = run("cmake", "-S", SRC, "-B", build, "-DCMAKE_INSTALL_PREFIX=/usr", "-DIVH_BUILD_TESTS=OFF",
                "-DCMAKE_BUILD_TYPE=Release")
        self.assertEqual(p.returncode, 0, p.stderr)
        p = run("cmake", "--build", build, "-j", str(os.cpu_count() or 2))
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        p = run("cpack", "-G", "DEB", cwd=build)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        deb = glob.glob(os.path.join(build, "ivh-reclaimd_*.deb"))[0]

        p = run("dpkg-deb", "-I", deb)
        self.assertIn("conffiles", p.stdout)
        self.assertRegex(p.stdout, r"Depends: .*libev4")

        p = run("dpkg", "-i", deb)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        for path in ("/usr/bin/ivh-reclaimd", "/lib/systemd/system/ivh-reclaimd.service",
                     "/usr/lib/systemd/catalog/ivh-reclaimd.catalog", "/etc/ivh-reclaimd/policy.yaml"):
            self.assertTrue(os.path.exists(path), path)
        p = run("/usr/bin/ivh-reclaimd", "--check-config")
        self.assertEqual(p.returncode, 0, p.stderr)
        p = run("systemd-analyze", "verify", "/lib/systemd/system/ivh-reclaimd.service")
        self.assertEqual(p.returncode, 0, p.stderr)
        run("journalctl", "--update-catalog")
        p = run("journalctl", "--list-catalog", "99f9654f605e424185666fe382c90fb6")
        self.assertIn("ivh-reclaimd", p.stdout)

        # The operator edits the policy; reinstalling keeps the edit.
        with open("/etc/ivh-reclaimd/policy.yaml", "a") as f:
            f.write("# edited\n")
        p = run("dpkg", "-i", "--force-confold", deb)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        with open("/etc/ivh-reclaimd/policy.yaml") as f:
            self.assertTrue(f.read().endswith("# edited\n"))

        p = run("dpkg", "--remove", "ivh-reclaimd")
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertFalse(os.path.exists("/usr/bin/ivh-reclaimd"))
        self.assertFalse(os.path.exists("/lib/systemd/system/ivh-reclaimd.service"))
        self.assertTrue(os.path.exists("/etc/ivh-reclaimd/policy.yaml"), "remove keeps conffiles")
        p = run("dpkg", "--purge", "ivh-reclaimd")
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertFalse(os.path.exists("/etc/ivh-reclaimd/policy.yaml"))
        self.assertNotEqual(run("dpkg-query", "-W", "ivh-reclaimd").returncode, 0)
        run("journalctl", "--update-catalog")
