"""Issue 13: the Debian package as built by debhelper. lintian, hardening,
the -dbgsym package, reproducibility, and what the package holds."""

import os
import shutil
import subprocess
import tempfile
import unittest

import packages
from packages import SRC, run

needs = [t for t in ("dpkg-buildpackage", "lintian", "hardening-check", "dpkg-deb") if not shutil.which(t)]


@unittest.skipIf(needs, "needs %s (scripts/deps.sh installs them)" % ", ".join(needs))
class Package(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="ivh-pkgtest-")
        cls.debs = packages.build("main", workdir=os.path.join(cls.tmp, "first"))
        cls.deb = cls.debs["ivh-reclaimd"]
        cls.unpacked = os.path.join(cls.tmp, "unpacked")
        run("dpkg-deb", "-x", cls.deb, cls.unpacked)
        cls.control = os.path.join(cls.tmp, "control")
        run("dpkg-deb", "-e", cls.deb, cls.control)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_lintian_reports_no_error_and_no_warning(self):
        changes = [f for f in os.listdir(os.path.dirname(self.deb)) if f.endswith(".changes")][0]
        p = run("lintian", "--fail-on", "error,warning", "--display-info",
                os.path.join(os.path.dirname(self.deb), changes), check=False, timeout=600)
        tags = [l for l in p.stdout.splitlines() if l[:2] in ("E:", "W:")]
        self.assertEqual(tags, [], p.stdout)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)

    def test_hardening_check_passes(self):
        binary = os.path.join(self.unpacked, "usr", "bin", "ivh-reclaimd")
        # PIE, stack protector, FORTIFY, RELRO, BIND_NOW. Control-flow
        # protection needs a CET-marked crt1.o, which bookworm's libc does not have.
        p = run("hardening-check", "--nocfprotection", binary, check=False)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        for line in ("Position Independent Executable: yes", "Stack protected: yes",
                     "Fortify Source functions: yes", "Read-only relocations: yes", "Immediate binding: yes"):
            self.assertIn(line, p.stdout)

    def test_stripped_binary_and_dbgsym_package(self):
        binary = os.path.join(self.unpacked, "usr", "bin", "ivh-reclaimd")
        self.assertNotIn("debug_info", run("objdump", "-h", binary).stdout, "the binary must be stripped")
        build_id = [l for l in run("readelf", "-n", binary).stdout.splitlines() if "Build ID" in l][0].split()[-1]
        self.assertIn("ivh-reclaimd-dbgsym", self.debs)
        files = run("dpkg-deb", "-c", self.debs["ivh-reclaimd-dbgsym"]).stdout
        self.assertIn("./usr/lib/debug/.build-id/%s/%s.debug" % (build_id[:2], build_id[2:]), files)

    def test_contents(self):
        files = run("dpkg-deb", "-c", self.deb).stdout
        for path in ("./usr/bin/ivh-reclaimd", "./lib/systemd/system/ivh-reclaimd.service",
                     "./usr/lib/systemd/catalog/ivh-reclaimd.catalog", "./etc/ivh-reclaimd/policy.yaml",
                     "./usr/share/man/man8/ivh-reclaimd.8.gz", "./usr/share/man/man5/ivh-reclaimd.yaml.5.gz",
                     "./usr/share/bash-completion/completions/ivh-reclaimd",
                     "./usr/share/doc/ivh-reclaimd/copyright", "./usr/share/doc/ivh-reclaimd/changelog.gz",
                     "./usr/share/doc/ivh-reclaimd/README.Debian",
                     "./usr/share/doc/ivh-reclaimd/examples/ivh-reclaimd.rules.yml",
                     "./usr/share/doc/ivh-reclaimd/examples/node-exporter/metrics.conf",
                     "./usr/share/doc/ivh-reclaimd/examples/node-exporter/sysusers.conf",
                     "./usr/share/doc/ivh-reclaimd/examples/node-exporter/tmpfiles.conf",
                     "./usr/lib/sysusers.d/ivh-reclaimd.conf", "./usr/lib/tmpfiles.d/ivh-reclaimd.conf"):
            self.assertIn(path, files)
        with open(os.path.join(self.control, "conffiles")) as f:
            self.assertEqual(f.read().split(), ["/etc/ivh-reclaimd/policy.yaml"])
        with open(os.path.join(self.unpacked, "etc", "ivh-reclaimd", "policy.yaml")) as f:
            self.assertRegex(f.read(), r"(?m)^dry_run: true$")
        with open(os.path.join(self.unpacked, "usr", "share", "doc", "ivh-reclaimd", "copyright")) as f:
            text = f.read()
        self.assertTrue(text.startswith("Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/"))
        self.assertIn("License: Expat", text)
        info = run("dpkg-deb", "-f", self.deb, "Maintainer", "Depends").stdout
        self.assertNotIn("localhost", info)
        self.assertIn("libev4", info)

    def test_maintainer_scripts(self):
        with open(os.path.join(self.control, "postinst")) as f:
            postinst = f.read()
        # Installing neither enables nor starts; an upgrade try-restarts.
        self.assertNotIn("deb-systemd-invoke start", postinst)
        self.assertIn("deb-systemd-invoke try-restart 'ivh-reclaimd.service'", postinst)
        self.assertIn("is installed but not started", postinst)
        with open(os.path.join(self.control, "prerm")) as f:
            self.assertRegex(f.read(), r'"\$1" = remove .*\n\s+deb-systemd-invoke stop ivh-reclaimd.service')
        with open(os.path.join(self.control, "postrm")) as f:
            postrm = f.read()
        for path in ("/etc/ivh-reclaimd/accesstoken", "/var/lib/private/ivh-reclaimd", "/var/lib/ivh-reclaimd"):
            self.assertIn(path, postrm)
        self.assertFalse(os.path.exists(os.path.join(self.control, "preinst")),
                         "no preinst: an upgrade must not stop the daemon before the new binary is in place")

    def test_reproducible_in_another_directory(self):
        # Same SOURCE_DATE_EPOCH (from debian/changelog), another build path.
        other = packages.build("again", workdir=os.path.join(self.tmp, "second-build-in-a-longer-path"))
        for name in ("ivh-reclaimd", "ivh-reclaimd-dbgsym"):
            with open(self.debs[name], "rb") as a, open(other[name], "rb") as b:
                self.assertTrue(a.read() == b.read(), "%s differs between two builds" % name)


class Rules(unittest.TestCase):
    @unittest.skipUnless(shutil.which("promtool"), "needs promtool (Debian package prometheus)")
    def test_alert_rules_are_valid(self):
        p = run("promtool", "check", "rules", os.path.join(SRC, "examples", "ivh-reclaimd.rules.yml"), check=False)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertIn("SUCCESS: 7 rules found", p.stdout)

    @unittest.skipUnless(shutil.which("promtool"), "needs promtool (Debian package prometheus)")
    def test_rules_fire_on_the_metrics_the_daemon_writes(self):
        # promtool test rules: the alerts fire on series named as the daemon
        # names them (a renamed metric would make this fail).
        tmp = tempfile.mkdtemp(prefix="ivh-rules-")
        self.addCleanup(shutil.rmtree, tmp, ignore_errors=True)
        shutil.copy(os.path.join(SRC, "examples", "ivh-reclaimd.rules.yml"), tmp)
        with open(os.path.join(tmp, "test.yml"), "w") as f:
            f.write("""rule_files: [ivh-reclaimd.rules.yml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'ivh_last_successful_poll_timestamp_seconds{account="default"}'
        values: '0x10'
      - series: 'ivh_sessions_fused{account="default"}'
        values: '3x10'
      - series: 'ivh_config_last_reload_successful'
        values: '0x10'
      - series: 'ivh_api_calls_total{account="default",endpoint="listsessionofuin",result="auth_error"}'
        values: '0+1x10'
      - series: 'ivh_notify_oldest_event_age_seconds{account="default"}'
        values: '0+60x30'
    alert_rule_test:
      - eval_time: 10m
        alertname: IvhReclaimdNotPolling
        exp_alerts:
          - exp_labels: {severity: critical, account: default}
            exp_annotations:
              summary: "ivh-reclaimd has not listed the sessions of account default for 3 poll intervals"
              description: "Leaked IVH sessions are not being reclaimed. See journalctl -t ivh-reclaimd MESSAGE_ID=f8e2aad76f6749b7a1433345838414f1."
      - eval_time: 10m
        alertname: IvhReclaimdFuseTripped
        exp_alerts:
          - exp_labels: {severity: warning, account: default}
            exp_annotations:
              summary: "The share fuse of ivh-reclaimd holds back 3 due sessions of account default"
              description: "Run ivh-reclaimd --plan to see which policy selects them; journalctl -t ivh-reclaimd MESSAGE_ID=fdd69b80db994344b2f08dde98cb05ea."
      - eval_time: 10m
        alertname: IvhReclaimdReloadFailed
        exp_alerts:
          - exp_labels: {severity: warning}
            exp_annotations:
              summary: "ivh-reclaimd refused its last reload; the previous policy is still in effect"
              description: "Run ivh-reclaimd --check-config and read journalctl -u ivh-reclaimd."
      - eval_time: 10m
        alertname: IvhReclaimdAuthFailing
        exp_alerts:
          - exp_labels: {severity: critical, account: default, endpoint: listsessionofuin, result: auth_error}
            exp_annotations:
              summary: "The IVH gateway refuses ivh-reclaimd's credentials for account default"
              description: "Check gateway.appkey, the access token and the clock; journalctl -t ivh-reclaimd MESSAGE_ID=d1f0b64d5da24960a3fff63a226ec244."
      - eval_time: 14m
        alertname: IvhReclaimdNotifyQueueStale
        exp_alerts: []
      - eval_time: 25m
        alertname: IvhReclaimdNotifyQueueStale
        exp_alerts:
          - exp_labels: {severity: warning, account: default}
            exp_annotations:
              summary: "ivh-reclaimd's webhook events for account default have waited 25m 0s"
              description: "The application is not told of reclaims. Read journalctl -u ivh-reclaimd | grep -i notif; see ivh_notify_deliveries_total."
""")
        p = run("promtool", "test", "rules", "test.yml", cwd=tmp, check=False)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)


if __name__ == "__main__":
    unittest.main()
