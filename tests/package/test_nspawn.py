"""Issue 13: the package under a real systemd. A Debian 12 root booted with
systemd-nspawn --boot; the freshly built .deb installed in it; the service
started against the gateway simulator on the host's loopback. Then, in
turn: not started on install, no restart loop without a token, READY, a
reclaim in the journal, node_exporter serving the metrics with no manual
step, the same-boot ages across a restart, reload with a good and with a
broken file, SIGUSR1, a token file others may read, a missing metrics
directory, webhooks signed with the unit's notify-secret credential from a
queue that outlives a restart, the multi-account credential drop-in, an
upgrade that restarts
the daemon and one that does not (a broken file), remove stopping it, and
purge leaving nothing behind (issues 13, 20 and 23)."""

import json
import os
import shutil
import socket
import sys
import time
import unittest
import urllib.request

import packages

sys.path.insert(0, os.path.join(packages.SRC, "tests"))
import gateway_sim  # noqa: E402
import notify_receiver  # noqa: E402
from gateway_sim import IN_PROGRESS, STREAM_FAILED  # noqa: E402

APPKEY = "5b0e7c1d9a2f4e6b8c3d1a0f9e8d7c6b"
TOKEN = "nspawn-test-token-0123456789"
NOTIFY_SECRET = "nspawn-notify-secret-9f8e7d6c5b4a"
RECLAIM_ID = "99f9654f605e424185666fe382c90fb6"
needs = [t for t in ("systemd-nspawn", "debootstrap", "nsenter", "dpkg-buildpackage") if not shutil.which(t)]


def wait_for(what, predicate, timeout=30.0, interval=0.25):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.0f s waiting for %s" % (timeout, what))
        time.sleep(interval)


@unittest.skipIf(os.geteuid() != 0, "booting a container needs root")
@unittest.skipIf(needs, "needs %s (scripts/deps.sh installs them)" % ", ".join(needs))
class UnderSystemd(unittest.TestCase):
    maxDiff = None

    @classmethod
    def setUpClass(cls):
        cls.debs = packages.build("main")
        cls.upgrade = packages.build("upgrade", version="0.1.0+upgrade1")
        cls.gw = gateway_sim.Gateway(APPKEY, TOKEN)
        cls.server = gateway_sim.serve(cls.gw)
        cls.url = "http://127.0.0.1:%d" % cls.server.server_address[1]
        # The container shares the host's network: node_exporter gets a free
        # loopback port rather than 9100.
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            cls.exporter_port = sock.getsockname()[1]

        def configure(box):
            box.put("/etc/default/prometheus-node-exporter",
                    'ARGS="--web.listen-address=127.0.0.1:%d"\n' % cls.exporter_port)
        cls.box = packages.Container("ivh-test-%d" % os.getpid(), before_boot=configure)
        for name, path in (("v1.deb", cls.debs["ivh-reclaimd"]), ("v2.deb", cls.upgrade["ivh-reclaimd"])):
            shutil.copy(path, cls.box.path("/var/tmp/" + name))

    @classmethod
    def tearDownClass(cls):
        cls.box.close()
        cls.server.shutdown()
        cls.server.server_close()

    # -- helpers --------------------------------------------------------------
    def sh(self, script, **kw):
        return self.box.sh(script, **kw)

    def policy(self, poll="30s", extra="", policies="  - {name: failed-streams, kind: failed, after: 0s}\n"):
        return ("dry_run: false\n"
                "gateway:\n  url: %s\n  appkey: %s\n  timeout: 5s\n"
                "poll_interval: %s\n"
                "metrics_file: /run/ivh-reclaimd-metrics/ivh-reclaimd.prom\n"
                "%spolicies:\n%s") % (self.url, APPKEY, poll, extra, policies)

    def show(self, prop):
        return self.sh("systemctl show -p %s --value ivh-reclaimd" % prop).stdout.strip()

    def journal(self, *matches):
        p = self.sh("journalctl -u ivh-reclaimd -o json --no-pager %s" % " ".join(matches))
        return [json.loads(line) for line in p.stdout.splitlines() if line.strip()]

    def closed(self, session_id):
        return any(c.get("session_id") == session_id for c in self.gw.calls_to("closesession"))

    def file(self, inside):
        # /run is the container's own tmpfs: read it from inside.
        return self.sh("cat %s 2>/dev/null || true" % inside).stdout

    def reclaimed_in_journal(self, session_id):
        return [e for e in self.journal("MESSAGE_ID=" + RECLAIM_ID)
                if e.get("IVH_SESSION_ID") == session_id and e.get("IVH_OUTCOME") == "closed"]

    def daemon_pids(self):
        out = self.sh("pgrep -x ivh-reclaimd || true").stdout.split()
        return [int(p) for p in out]

    # -- the administrator's walk-through, in order ----------------------------
    def test_lifecycle(self):
        box = self.box

        # 1. Installing neither starts nor enables the daemon, and says why.
        p = self.sh("dpkg -i /var/tmp/v1.deb")
        self.assertIn("ivh-reclaimd is installed but not started", p.stdout)
        self.assertEqual(self.sh("systemctl is-active ivh-reclaimd", check=False).stdout.strip(), "inactive")
        self.assertEqual(self.sh("systemctl is-enabled ivh-reclaimd", check=False).stdout.strip(), "disabled")
        self.assertEqual(self.daemon_pids(), [])
        for page in ("ivh-reclaimd", "ivh-reclaimd.yaml"):
            self.assertTrue(os.path.exists(box.path("/usr/share/man/man%s/%s.%s.gz"
                                                    % ("8" if page == "ivh-reclaimd" else "5", page,
                                                       "8" if page == "ivh-reclaimd" else "5"))))

        # 1b. Every file: link of the unit (Documentation=) and of the catalog
        #     (Support:) resolves (issue 20, item 9).
        links = self.sh("systemctl show -p Documentation --value ivh-reclaimd; "
                        "grep -h '^Support:' /usr/lib/systemd/catalog/ivh-reclaimd.catalog").stdout.split()
        files = sorted({l[len("file:"):] for l in links if l.startswith("file:")})
        self.assertTrue(files, links)
        for path in files:
            self.assertTrue(os.path.isfile(box.path(path)), "a broken file: link: " + path)

        # 2. No token: the unit fails once, and does not loop; the journal
        #    names the missing file and how to install it (exit 78, not
        #    systemd's bare 243/CREDENTIALS: issue 20, item 6).
        box.put("/etc/ivh-reclaimd/policy.yaml", self.policy())
        p = self.sh("systemctl start ivh-reclaimd", check=False)
        self.assertNotEqual(p.returncode, 0)
        wait_for("the failed state", lambda: self.show("ActiveState") == "failed")
        self.assertEqual(self.show("ExecMainStatus"), "78")
        time.sleep(7)  # RestartSec=5s
        self.assertEqual(self.show("NRestarts"), "0")
        self.assertEqual(self.show("ActiveState"), "failed")
        text = self.sh("journalctl -u ivh-reclaimd --no-pager").stdout
        self.assertIn("/etc/ivh-reclaimd/accesstoken does not exist", text)
        self.assertIn("install -m 0600 /dev/stdin /etc/ivh-reclaimd/accesstoken", text)
        self.sh("systemctl reset-failed ivh-reclaimd")

        # 3. The token; --check-config as an operator runs it.
        self.sh("install -m 0600 /dev/stdin /etc/ivh-reclaimd/accesstoken", input=TOKEN + "\n")
        p = self.sh("ivh-reclaimd --check-config")
        self.assertIn("/etc/ivh-reclaimd/policy.yaml: OK (1 policies)", p.stdout)

        # 4. Start: `systemctl start` of a Type=notify unit returns once READY=1 came.
        crashed = self.gw.add_session("app-crash-1", STREAM_FAILED)
        p = self.sh("systemctl start ivh-reclaimd", check=False)
        self.assertEqual(p.returncode, 0, p.stderr + self.sh("journalctl --no-pager -n 40 -u ivh-reclaimd").stdout)
        self.assertEqual(self.show("ActiveState"), "active")
        wait_for("the close of %s" % crashed, lambda: self.closed(crashed))
        wait_for("its journal entry", lambda: self.reclaimed_in_journal(crashed))
        entry = self.reclaimed_in_journal(crashed)[0]
        self.assertEqual(entry["IVH_POLICY"], "failed-streams")
        self.assertEqual(entry["SYSLOG_IDENTIFIER"], "ivh-reclaimd")
        wait_for("STATUS=", lambda: "1 reclaimed" in self.show("StatusText"))
        self.assertNotIn(TOKEN, self.sh("journalctl --no-pager -o verbose").stdout)

        # 5. node_exporter (user prometheus) serves the daemon's metrics, with
        #    no step of the operator's: the package's group, directory and
        #    link (issue 20, item 4).
        def scraped_text():
            try:
                with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % self.exporter_port, timeout=5) as r:
                    return r.read().decode()
            except OSError:
                return ""

        def scraped():
            text = scraped_text()
            return text if "ivh_reclaimd_build_info" in text else None
        try:
            text = wait_for("node_exporter to serve ivh_ metrics", scraped, timeout=60, interval=1)
        except AssertionError as e:
            raise AssertionError("%s\n%s" % (e, self.sh(
                "ls -la /run/ivh-reclaimd-metrics /var/lib/prometheus/node-exporter; systemctl status --no-pager "
                "prometheus-node-exporter; journalctl --no-pager -n 30 -u prometheus-node-exporter; "
                "cat /etc/default/prometheus-node-exporter | grep -v '^#'", check=False).stdout))
        self.assertIn('ivh_reclaims_total{account="default",outcome="closed",policy="failed-streams"} 1', text)
        self.assertIn("ivh_config_last_reload_successful 1", text)
        self.assertIn("node_textfile_scrape_error 0", text)

        # 5b. The same-boot age guarantee under the shipped unit (issue 20,
        #     item 2): the state carries this boot's id, and a restart keeps
        #     the ages from the boot-time clock, with no "now count from the
        #     wall clock" and no warning about the boot id.
        live = self.gw.add_session("app-live-1", IN_PROGRESS)

        def state():
            text = self.file("/var/lib/ivh-reclaimd/state.json")
            return json.loads(text) if text.strip() else None
        self.sh("systemctl kill -s USR1 ivh-reclaimd")
        before = wait_for("the live session in the state file",
                          lambda: (state() or {}).get("first_seen", {}).get(live) and state())
        boot_id = self.sh("cat /proc/sys/kernel/random/boot_id").stdout.strip()
        self.assertEqual(before["boot_id"], boot_id)
        calls = len(self.gw.calls_to("listsessionofuin"))
        self.sh("systemctl restart ivh-reclaimd")
        wait_for("a cycle after the restart", lambda: len(self.gw.calls_to("listsessionofuin")) > calls)
        time.sleep(1)
        after = state()
        self.assertEqual(after["boot_id"], boot_id)
        self.assertLess(abs(after["first_seen"][live] - before["first_seen"][live]), 2000)
        text = self.sh("journalctl -u ivh-reclaimd --no-pager").stdout
        self.assertNotIn("now count from the wall clock", text)
        self.assertNotIn("Cannot read the boot id", text)

        # 6. Reload with a good file: it takes effect, the same process runs on.
        pid = int(self.show("MainPID"))
        box.put("/etc/ivh-reclaimd/policy.yaml", self.policy(extra="protect:\n  user_ids: [\"vip-*\"]\n"))
        p = self.sh("systemctl reload ivh-reclaimd", check=False)
        self.assertEqual(p.returncode, 0, p.stderr + self.sh("journalctl --no-pager -n 20 -u ivh-reclaimd").stdout)
        wait_for("the reload in the journal",
                 lambda: any("Reloading" in e.get("MESSAGE", "") for e in self.journal()))
        self.assertEqual(int(self.show("MainPID")), pid)

        # 7. Reload with a broken file: systemctl reload fails, the daemon keeps
        #    its policy (a new failed stream is still closed, through SIGUSR1).
        box.put("/etc/ivh-reclaimd/policy.yaml", self.policy(extra="bogus_key: 1\n"))
        p = self.sh("systemctl reload ivh-reclaimd", check=False)
        self.assertNotEqual(p.returncode, 0, p)
        self.assertEqual(self.show("ActiveState"), "active")
        self.assertEqual(int(self.show("MainPID")), pid)
        text = self.sh("journalctl -u ivh-reclaimd --no-pager").stdout
        self.assertRegex(text, r"/etc/ivh-reclaimd/policy.yaml:\d+:1: top level: unknown key 'bogus_key'")
        self.assertIn("Reload failed", text)
        wait_for("the failed reload in the metrics",
                 lambda: "ivh_config_last_reload_successful 0" in self.file("/run/ivh-reclaimd-metrics/ivh-reclaimd.prom"))
        second = self.gw.add_session("app-crash-2", STREAM_FAILED)
        self.sh("systemctl kill -s USR1 ivh-reclaimd")
        wait_for("the sweep to close %s" % second, lambda: self.closed(second), timeout=15)
        self.assertTrue(wait_for("its journal entry", lambda: self.reclaimed_in_journal(second)))

        # 7b. A valid file that needs a restart (another state_file): the
        #     reload fails too, and the check an operator runs by hand says
        #     so beforehand (issue 20, item 8).
        box.put("/etc/ivh-reclaimd/policy.yaml", self.policy(extra="state_file: /var/lib/ivh-reclaimd/other.json\n"))
        p = self.sh("ivh-reclaimd --check-config")
        self.assertIn("state_file differs from the running daemon's (PID %d): 'systemctl reload ivh-reclaimd' "
                      "will be refused" % pid, p.stdout)
        p = self.sh("systemctl reload ivh-reclaimd", check=False)
        self.assertNotEqual(p.returncode, 0, p)
        self.assertIn("state_file differs from the running daemon's, which needs a restart",
                      self.sh("journalctl -u ivh-reclaimd --no-pager").stdout)
        box.put("/etc/ivh-reclaimd/policy.yaml", self.policy())
        self.sh("systemctl reload ivh-reclaimd")

        # 7c. A token file that others may read is refused under the unit
        #     too, though systemd hands the service a private copy (issue 20,
        #     item 5).
        self.sh("chmod 0644 /etc/ivh-reclaimd/accesstoken")
        p = self.sh("systemctl restart ivh-reclaimd", check=False)
        self.assertNotEqual(p.returncode, 0)
        wait_for("the failed state", lambda: self.show("ActiveState") == "failed")
        self.assertEqual(self.show("ExecMainStatus"), "78")
        self.assertIn("access token file /etc/ivh-reclaimd/accesstoken gives its group or others access "
                      "(mode 0644)", self.sh("journalctl -u ivh-reclaimd --no-pager").stdout)
        self.sh("chmod 0600 /etc/ivh-reclaimd/accesstoken && systemctl reset-failed ivh-reclaimd && "
                "systemctl start ivh-reclaimd")

        # 7d. The metrics directory missing (a purge removed it, the admin's
        #     drop-in stayed): the service starts, warns, and does not loop
        #     (issue 20, item 3).
        self.sh("rm -rf /run/ivh-reclaimd-metrics && systemctl restart ivh-reclaimd")
        self.assertEqual(self.show("ActiveState"), "active")
        time.sleep(7)  # RestartSec=5s
        self.assertEqual(self.show("ActiveState"), "active")
        self.assertEqual(self.show("NRestarts"), "0")
        wait_for("STATUS= naming the metrics file",
                 lambda: "cannot write the metrics file /run/ivh-reclaimd-metrics/ivh-reclaimd.prom"
                 in self.show("StatusText"))
        self.sh("systemd-tmpfiles --create /usr/lib/tmpfiles.d/ivh-reclaimd.conf && "
                "systemctl restart ivh-reclaimd")

        # 7e. notify: under the unit (issue 23). Without the secret file the
        #     unit hands over its placeholder: the service fails once, naming
        #     the file. With it, the webhook arrives signed; events queued
        #     while the receiver is down outlive a restart of the service.
        receiver = notify_receiver.Receiver(secret=NOTIFY_SECRET).start()
        self.addCleanup(receiver.stop)
        notify = "notify:\n  url: %s\n" % receiver.url("/hook")
        box.put("/etc/ivh-reclaimd/policy.yaml", self.policy(poll="2s", extra=notify))
        p = self.sh("systemctl restart ivh-reclaimd", check=False)
        self.assertNotEqual(p.returncode, 0)
        wait_for("the failed state", lambda: self.show("ActiveState") == "failed")
        self.assertEqual(self.show("ExecMainStatus"), "78")
        self.assertIn("the unit hands over /etc/ivh-reclaimd/notify-secret as the credential 'notify-secret'",
                      self.sh("journalctl -u ivh-reclaimd --no-pager").stdout)
        self.sh("install -m 0600 /dev/stdin /etc/ivh-reclaimd/notify-secret", input=NOTIFY_SECRET + "\n")
        self.assertIn("OK", self.sh("ivh-reclaimd --check-config").stdout)
        self.sh("systemctl reset-failed ivh-reclaimd && systemctl start ivh-reclaimd")
        notified = self.gw.add_session("app-crash-n1", STREAM_FAILED)
        wait_for("the reclaimed event", lambda: notified in [e["session_id"] for e in
                                                             receiver.events_by_type("reclaimed")])
        self.assertEqual(receiver.bad_signatures, [])
        self.assertTrue(self.file("/var/lib/ivh-reclaimd/state.notify.jsonl").strip())
        receiver.refuse()
        queued = self.gw.add_session("app-crash-n2", STREAM_FAILED)
        wait_for("the close while the receiver is away", lambda: self.closed(queued))
        wait_for("the event in the queue file",
                 lambda: queued in self.file("/var/lib/ivh-reclaimd/state.notify.jsonl"))
        self.sh("systemctl restart ivh-reclaimd")
        receiver.resume()
        wait_for("the queued event after the restart", lambda: queued in [e["session_id"] for e in
                                                                         receiver.events_by_type("reclaimed")],
                 timeout=60)
        self.assertEqual(receiver.bad_signatures, [])
        self.assertNotIn(NOTIFY_SECRET, self.sh("journalctl --no-pager -o verbose").stdout)
        box.put("/etc/ivh-reclaimd/policy.yaml", self.policy())
        self.sh("systemctl reload ivh-reclaimd")

        # 8. Several accounts: the README's drop-in, with no
        #    /etc/ivh-reclaimd/accesstoken left (no 243 from the unit's own line).
        self.sh("rm /etc/ivh-reclaimd/accesstoken")
        for name in ("prod", "staging"):
            self.sh("install -m 0600 /dev/stdin /etc/ivh-reclaimd/accesstoken-%s" % name, input=TOKEN)
        box.put("/etc/systemd/system/ivh-reclaimd.service.d/accounts.conf",
                "[Service]\nLoadCredential=\n"
                "LoadCredential=accesstoken-prod:/etc/ivh-reclaimd/accesstoken-prod\n"
                "LoadCredential=accesstoken-staging:/etc/ivh-reclaimd/accesstoken-staging\n")
        box.put("/etc/ivh-reclaimd/policy.yaml",
                "dry_run: false\ngateway:\n  url: %s\n  timeout: 5s\npoll_interval: 30s\n"
                "metrics_file: /run/ivh-reclaimd-metrics/ivh-reclaimd.prom\naccounts:\n"
                "  - name: prod\n    appkey: %s\n    policies: [{name: failed-streams, kind: failed, after: 0s}]\n"
                "  - name: staging\n    appkey: %s\n    policies: []\n" % (self.url, APPKEY, APPKEY))
        third = self.gw.add_session("app-crash-3", STREAM_FAILED)
        self.sh("systemctl daemon-reload && systemctl restart ivh-reclaimd")
        self.assertEqual(self.show("ActiveState"), "active")
        wait_for("account prod to close %s" % third, lambda: self.closed(third))
        entry = wait_for("its journal entry", lambda: self.reclaimed_in_journal(third))[0]
        self.assertEqual(entry["IVH_ACCOUNT"], "prod")
        self.sh("systemctl reload ivh-reclaimd")  # --check-config finds both credentials

        # 9. Upgrade: the running daemon is restarted on the new binary.
        pid = int(self.show("MainPID"))
        self.sh("dpkg -i /var/tmp/v2.deb")
        self.assertIn("0.1.0+upgrade1", self.sh("dpkg-query -W -f '${Version}' ivh-reclaimd").stdout)
        new_pid = int(wait_for("a new main process", lambda: (self.show("MainPID") not in ("0", str(pid)))
                               and self.show("MainPID")))
        self.assertEqual(self.show("ActiveState"), "active")
        exe = self.sh("readlink /proc/%d/exe" % new_pid).stdout.strip()
        self.assertFalse(exe.endswith("(deleted)"), exe)
        self.assertEqual(self.daemon_pids(), [new_pid])

        # 9b. A reload refused earlier left a broken file: an upgrade (here a
        #     reinstall) does not replace the running daemon with one that
        #     refuses it, and says so loudly (issue 20, item 1).
        with open(box.path("/etc/ivh-reclaimd/policy.yaml")) as f:
            good = f.read()
        box.put("/etc/ivh-reclaimd/policy.yaml", good + "bogus_key: 1\n")
        self.assertNotEqual(self.sh("systemctl reload ivh-reclaimd", check=False).returncode, 0)
        p = self.sh("dpkg -i /var/tmp/v2.deb")
        self.assertIn("NOT restarted after the upgrade", p.stderr)
        self.assertRegex(p.stderr, r"/etc/ivh-reclaimd/policy.yaml:\d+:1: top level: unknown key 'bogus_key'")
        self.assertEqual(self.show("ActiveState"), "active")
        self.assertEqual(int(self.show("MainPID")), new_pid)
        self.assertIn("NOT restarted after the upgrade", self.sh("journalctl -t ivh-reclaimd --no-pager").stdout)
        box.put("/etc/ivh-reclaimd/policy.yaml", good)
        self.sh("systemctl reload ivh-reclaimd")

        # 10. Remove: the daemon stops, and closes nothing more.
        self.sh("dpkg -r ivh-reclaimd")
        self.assertEqual(self.daemon_pids(), [])
        self.assertIn(self.show("ActiveState"), ("inactive", ""))
        late = self.gw.add_session("app-crash-4", STREAM_FAILED)
        time.sleep(3)
        self.assertFalse(self.closed(late))
        # node_exporter no longer serves the removed daemon's last metrics.
        text = scraped_text()
        self.assertNotIn("ivh_reclaimd_build_info", text)
        self.assertIn("node_textfile_scrape_error 0", text)

        # 11. Purge (after the operator takes back their own drop-in): nothing left.
        self.sh("rm -rf /etc/systemd/system/ivh-reclaimd.service.d")
        self.sh("dpkg -P ivh-reclaimd")
        left = self.sh("find / -xdev \\( -path /proc -o -path /sys -o -path /var/tmp \\) -prune -o "
                       "-name '*ivh-reclaimd*' -print; ls -d /run/ivh-reclaimd* 2>/dev/null; true").stdout.split()
        self.assertEqual(left, [])
        for path in ("/etc/ivh-reclaimd", "/var/lib/private/ivh-reclaimd", "/var/lib/ivh-reclaimd"):
            self.assertFalse(os.path.lexists(box.path(path)), path)
        # Every close went to a session a policy selected, once.
        ids = [c.get("session_id") for c in self.gw.calls_to("closesession")]
        self.assertEqual(sorted(ids), sorted([crashed, second, third, notified, queued]))


if __name__ == "__main__":
    unittest.main()
