"""Issue 14: active/standby instances elected through a real 3-member etcd
cluster. Two daemons watch one simulated account: only the leader closes;
after kill -9 of the leader the standby closes the next due session within
lease + 2 poll intervals, using the ages it kept; with 2 of 3 etcd members
gone, the leader stops closing within the lease; the old leader comes back
as a standby; and over the whole run no session is closed twice."""

import json
import os
import re
import shutil
import signal
import subprocess
import time
import unittest

import etcd
from harness import BINARY, DaemonTest, parse_logfmt, wait_for
from gateway_sim import IN_PROGRESS, STREAM_FAILED
from test_systemd import NotifySocket
import notify_receiver  # noqa: E402  (tests/ is on the path through harness)

LEASE_S = 3


def ts(text):
    """The logfmt ts= value (UTC, milliseconds) as Unix time."""
    import datetime
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=datetime.timezone.utc).timestamp()
POLL_S = 1
ROLE_ID = "744e34992be84570b0e60a79de095343"


@unittest.skipUnless(os.path.exists(etcd.ETCD), "needs etcd (Debian package etcd-server)")
class Failover(DaemonTest):
    def setUp(self):
        super().setUp()
        self.cluster = etcd.Cluster()
        self.addCleanup(self.cluster.close)
        self.daemons = {}

    notify_section = ""

    def config_for(self, name, policies, lease=LEASE_S, timeout="2s"):
        self.write_config(policies, poll_interval="%ds" % POLL_S, timeout=timeout, extra=self.notify_section + (
            "metrics_file: %s/%s.prom\n"
            "ha:\n  endpoints: [%s]\n  name: %s\n  lease: %ds\n  key_prefix: /test-%d-%s/\n"
            % (self.dir, name, ", ".join(self.cluster.endpoints), name, lease, os.getpid(), self._testMethodName)))
        with open(self.config_file) as f:
            text = f.read().replace("state_file: %s" % self.state_file,
                                    "state_file: %s/state-%s.json" % (self.dir, name))
        path = os.path.join(self.dir, "%s.yaml" % name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def start(self, name, policies, **kw):
        path = self.config_for(name, policies, **kw)
        out = open(os.path.join(self.dir, "%s.log" % name), "a")
        p = subprocess.Popen([BINARY, "--config", path, "--log-target", "console"], env=self.env(),
                             stdout=subprocess.DEVNULL, stderr=out)
        out.close()
        self.procs.append(p)
        self.daemons[name] = p
        return p

    def log(self, name):
        with open(os.path.join(self.dir, "%s.log" % name)) as f:
            return [parse_logfmt(l) for l in f.read().splitlines() if l.startswith("ts=")]

    def roles(self, name):
        return [e.get("ha_role") for e in self.log(name) if e.get("message_id") == ROLE_ID]

    def leader(self):
        for name in self.daemons:
            if self.daemons[name].poll() is None and self.roles(name)[-1:] == ["leader"]:
                return name
        return None

    def closes(self):
        return [c["session_id"] for c in self.gw.calls_to("closesession")]

    def reclaimed_by(self, name):
        return [e["session_id"] for e in self.log(name) if e.get("outcome") == "closed"]

    def metric(self, name, metric):
        try:
            with open(os.path.join(self.dir, "%s.prom" % name)) as f:
                m = re.search(r"(?m)^%s (\S+)$" % re.escape(metric), f.read())
        except FileNotFoundError:
            return None
        return m.group(1) if m else None

    def test_failover(self):
        policies = [("failed-streams", "failed", "0s"), ("never-started", "not_started", "12s")]
        crashed = self.gw.add_session("app-crash-1", STREAM_FAILED)
        # Never started: due 12 s after first sight. Both instances see it now.
        slow = self.gw.add_session("kiosk-1", IN_PROGRESS, started=False)
        t0 = time.monotonic()
        self.start("alpha", policies)
        self.start("beta", policies)

        # 1. One leader, one standby; only the leader closes.
        wait_for(lambda: self.leader() is not None, timeout=LEASE_S * 3, what="a leader")
        first = self.leader()
        other = "beta" if first == "alpha" else "alpha"
        wait_for(lambda: crashed in self.closes(), timeout=10, what="the failed stream closed")
        wait_for(lambda: self.roles(other)[-1:] == ["standby"], timeout=5, what="a standby")
        # The gateway records a close before the daemon has its reply and logs it.
        wait_for(lambda: self.reclaimed_by(first), timeout=5, what="the leader's reclaim entry")
        self.assertEqual(self.reclaimed_by(first), [crashed])
        self.assertEqual(self.reclaimed_by(other), [])
        self.assertEqual(self.metric(first, 'ivh_leader{account="default"}'), "1")
        wait_for(lambda: self.metric(other, 'ivh_leader{account="default"}') == "0", what="the standby's metric")

        # 2. kill -9 of the leader a second before kiosk-1 is due: the
        #    standby closes it within lease + 2 poll intervals, on the age it
        #    kept (had it started the age afresh, 12 s later).
        time.sleep(max(0.0, 12 - 1 - (time.monotonic() - t0)))
        self.daemons[first].send_signal(signal.SIGKILL)
        self.daemons[first].wait()
        killed = time.monotonic()
        wait_for(lambda: slow in self.closes(), timeout=12 + LEASE_S + 2 * POLL_S + 5, what="the failover close")
        took = time.monotonic() - killed
        due_in = max(0.0, 12 - (killed - t0))
        self.assertLessEqual(took, LEASE_S + 2 * POLL_S + 0.5,
                             "first close %.1f s after kill -9 (due in %.1f s)" % (took, due_in))
        wait_for(lambda: self.reclaimed_by(other), timeout=5, what="the new leader's reclaim entry")
        self.assertEqual(self.reclaimed_by(other), [slow])
        self.assertEqual(self.roles(other)[-1], "leader")
        self.failover_s = took

        # 3. The old leader comes back as a standby.
        self.start(first, policies)
        wait_for(lambda: self.roles(first)[-1:] == ["standby"], timeout=LEASE_S * 3, what="a standby again")
        self.assertEqual(self.leader(), other)

        # 4. Quorum loss: 2 of 3 members stop. The leader stops closing
        #    within the lease; nobody closes anything; both say so.
        for m in self.cluster.members[1:]:
            self.cluster.stop(m)
        lost = time.monotonic()
        wait_for(lambda: "leader" not in self.roles(other)[-1:], timeout=LEASE_S + 2, what="the leader to step down")
        stepped_down = time.monotonic() - lost
        self.assertLessEqual(stepped_down, LEASE_S + 1.0)
        late = self.gw.add_session("app-crash-2", STREAM_FAILED)
        time.sleep(LEASE_S + 2 * POLL_S)
        self.assertNotIn(late, self.closes(), "a close went out without quorum")
        for name in (first, other):
            self.assertIn("unreachable", self.roles(name))

        # Over the whole run: each session closed at most once, and only
        # those a policy selected.
        closes = self.closes()
        self.assertEqual(sorted(closes), sorted(set(closes)), closes)
        self.assertEqual(sorted(closes), sorted([crashed, slow]))
        for p in self.daemons.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                self.assertEqual(p.wait(timeout=15), 0)
        for name in self.daemons:
            with open(os.path.join(self.dir, "%s.log" % name)) as f:
                text = f.read()
            self.assertNotIn("Sanitizer", text)
            self.assertNotIn("runtime error:", text)
        report = os.environ.get("IVH_HA_REPORT")
        if report:
            with open(report, "w") as f:
                json.dump({"lease_s": LEASE_S, "poll_interval_s": POLL_S, "due_after_kill_s": round(due_in, 2),
                           "first_close_after_kill_s": round(took, 2),
                           "step_down_after_quorum_loss_s": round(stepped_down, 2),
                           "closes_after_quorum_loss": len([c for c in closes if c == late]),
                           "duplicate_closes": len(closes) - len(set(closes)),
                           "roles": {n: self.roles(n) for n in self.daemons}}, f, indent=1)

    def test_only_the_leader_sends_webhooks(self):
        # notify: each instance has its own receiver; the leader's gets the
        # event of its close, the standby's nothing, not even a due_soon.
        secret_file = os.path.join(self.dir, "notify-secret")
        with open(secret_file, "w") as f:
            f.write("ha-notify-secret")
        os.chmod(secret_file, 0o600)
        receivers = {name: notify_receiver.Receiver(secret="ha-notify-secret").start() for name in ("alpha", "beta")}
        for r in receivers.values():
            self.addCleanup(r.stop)
        policies = [("failed-streams", "failed", "0s"), ("kiosk-age", "max_age", "1h")]
        crashed = self.gw.add_session("app-crash-1", STREAM_FAILED)
        self.gw.add_session("kiosk-1", IN_PROGRESS)
        for name in ("alpha", "beta"):
            self.notify_section = ("notify:\n  url: %s\n  secret_file: %s\n  due_soon: 2h\n"
                                   % (receivers[name].url("/hook"), secret_file))
            self.start(name, policies)
        wait_for(lambda: self.leader() is not None, timeout=LEASE_S * 3, what="a leader")
        first = self.leader()
        other = "beta" if first == "alpha" else "alpha"
        receivers[first].wait_for_events(lambda evs: crashed in {e.get("session_id") for e in evs
                                                                 if e["type"] == "reclaimed"},
                                         timeout=10, what="the leader's reclaimed event")
        wait_for(lambda: self.roles(other)[-1:] == ["standby"], timeout=5, what="a standby")
        time.sleep(3 * POLL_S)
        self.assertEqual(receivers[other].all_requests(), [], "the standby sent webhooks")
        self.assertEqual(sorted(e["type"] for e in receivers[first].events()), ["due_soon", "reclaimed"])
        self.assertEqual(receivers[first].bad_signatures, [])
        for p in self.daemons.values():
            p.send_signal(signal.SIGTERM)
            self.assertEqual(p.wait(timeout=15), 0)

    def test_sigterm_keeps_the_lease_for_closes_in_flight_then_revokes(self):
        # Red team 14: the leader dropped its lease at SIGTERM while its
        # closes were in flight, and the standby closed them again.
        policies = [("failed-streams", "failed", "0s")]
        self.start("alpha", policies, lease=6, timeout="4s")
        self.start("beta", policies, lease=6, timeout="4s")
        wait_for(lambda: self.leader() is not None, timeout=20, what="a leader")
        first = self.leader()
        other = "beta" if first == "alpha" else "alpha"
        wait_for(lambda: self.roles(other)[-1:] == ["standby"], timeout=10, what="a standby")
        sids = [self.gw.add_session("crash-%d" % i, STREAM_FAILED) for i in range(3)]
        for sid in sids:
            self.gw.add_fault("closesession", "hang", seconds=2.5, session_id=sid)
        wait_for(lambda: len(self.gw.calls_to("closesession")) >= 3, timeout=10, what="the closes in flight")
        self.daemons[first].send_signal(signal.SIGTERM)
        term = time.time()
        self.assertEqual(self.daemons[first].wait(timeout=15), 0)
        exited = time.time()
        self.assertGreater(exited - term, 1.5, "the leader must wait for its closes in flight")
        wait_for(lambda: self.roles(other)[-1:] == ["leader"], timeout=10, what="the takeover")
        lead = [e for e in self.log(other) if e.get("message_id") == ROLE_ID and e.get("ha_role") == "leader"][-1]
        took = ts(lead["ts"]) - exited
        self.assertGreater(took, -0.3, "the standby led before the old leader's closes were done")
        self.assertLess(took, 2.5, "the revoke should hand over at once, not after the 6 s lease")
        wait_for(lambda: set(sids) <= set(self.gw.closed_ids()), timeout=10, what="the closes by the new leader")
        self.assertEqual(len(self.gw.closed_ids()), len(set(self.gw.closed_ids())))

    def test_status_names_a_failing_list_with_ha(self):
        self.gw.add_fault("listsessionofuin", "http_status", status=500, count=1000)
        path = self.config_for("solo", [("failed-streams", "failed", "0s")])
        notify = NotifySocket(self.dir)
        self.addCleanup(notify.close)
        p = subprocess.Popen([BINARY, "--config", path, "--log-target", "console"],
                             env=dict(self.env(), NOTIFY_SOCKET=notify.path), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        self.procs.append(p)
        notify.wait_for(lambda m: any(x.startswith("STATUS=Leader (solo): Last poll failed") for x in m),
                        "STATUS= naming the role and the failing list", timeout=20)
        p.send_signal(signal.SIGTERM)
        self.assertEqual(p.wait(timeout=15), 0)

    def test_without_ha_section_once_refused_with_ha(self):
        path = self.config_for("solo", [("failed-streams", "failed", "0s")])
        p = subprocess.run([BINARY, "--config", path, "--once", "--log-target", "console"], env=self.env(),
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(p.returncode, 78, p.stderr)
        self.assertIn("--once cannot run with ha", p.stderr)
        self.assertEqual(self.closes(), [])


if __name__ == "__main__":
    unittest.main()


@unittest.skipUnless(os.path.exists(etcd.ETCD), "needs etcd (Debian package etcd-server)")
class Tls(DaemonTest):
    tls = True  # the simulator speaks HTTPS too; its pki has a client certificate for etcd

    def test_client_certificate(self):
        cluster = etcd.Cluster(size=1, pki=self.pki)
        self.addCleanup(cluster.close)
        sid = self.gw.add_session("u1", STREAM_FAILED)
        base = "  endpoints: [%s]\n  name: tls-a\n  lease: 3s\n  ca_file: %s\n" % (cluster.endpoints[0],
                                                                                  self.pki["ca"])
        # Without a client certificate etcd refuses the handshake: never leader, nothing closed.
        self.write_config([("f", "failed", "0s")], poll_interval="500ms",
                          gateway_extra="  ca_file: %s\n" % self.pki["ca"], extra="ha:\n" + base)
        p = self.start_daemon()
        time.sleep(4)
        run = self.stop_daemon(p)
        self.assertEqual(self.gw.calls_to("closesession"), [])
        roles = [e.get("ha_role") for e in run.logs if e.get("message_id") == ROLE_ID]
        self.assertIn("unreachable", roles)
        self.assertNotIn("leader", roles)
        # With it: leader, and the session is closed.
        self.write_config([("f", "failed", "0s")], poll_interval="500ms",
                          gateway_extra="  ca_file: %s\n" % self.pki["ca"],
                          extra="ha:\n" + base + "  cert_file: %s\n  key_file: %s\n"
                          % (self.pki["client_cert"], self.pki["client_key"]))
        p = self.start_daemon()
        wait_for(lambda: sid in [c["session_id"] for c in self.gw.calls_to("closesession")], timeout=15,
                 what="the close through a TLS-elected leader")
        run = self.stop_daemon(p)
        self.assertIn("leader", [e.get("ha_role") for e in run.logs if e.get("message_id") == ROLE_ID])


class HaConfig(DaemonTest):
    def check(self, ha):
        self.write_config([("f", "failed", "0s")], extra="ha:\n" + ha)
        return subprocess.run([BINARY, "--check-config", "--config", self.config_file], env=self.env(),
                              capture_output=True, text=True, timeout=30)

    def test_errors_with_positions(self):
        cases = {
            "  lease: 10s\n": "missing required key 'endpoints'",
            "  endpoints: []\n": "needs at least one etcd endpoint",
            "  endpoints: [etcd:2379]\n": "'etcd:2379' is not a valid URL",
            "  endpoints: [http://etcd-1:2379]\n": "plain http is refused for non-loopback host 'etcd-1'",
            "  endpoints: ['http://a b:2379']\n": "is not a valid URL",
            "  endpoints: ['http://[::1]:2379']\n  cert_file: /c.pem\n": "cert_file and key_file go together",
            "  endpoints: [http://localhost:2379]\n  lease: 2500ms\n": "must be whole seconds",
            "  endpoints: [http://localhost:2379]\n  lease: 1s\n": "ha.lease",
            "  endpoints: [http://localhost:2379]\n  name: 'a b'\n": "ha.name: may contain only",
            "  endpoints: [http://localhost:2379]\n  nmae: x\n": "unknown key 'nmae', did you mean 'name'?",
        }
        for ha, message in cases.items():
            with self.subTest(ha=ha):
                p = self.check(ha)
                self.assertEqual(p.returncode, 78, p)
                self.assertRegex(p.stderr, r"(?m)^%s:\d+:\d+: .*%s" % (re.escape(self.config_file),
                                                                       re.escape(message)))
        p = self.check("  endpoints: [http://127.0.0.1:2379, https://etcd-2:2379/]\n  name: host-a\n")
        self.assertEqual(p.returncode, 0, p)
        p = self.check("  endpoints: [https://127.0.0.1:2379]\n  ca_file: /nonexistent/ca.pem\n")
        self.assertEqual(p.returncode, 78, p)
        self.assertIn("%s: ha.ca_file: /nonexistent/ca.pem: No such file or directory" % self.config_file, p.stderr)

    @unittest.skipUnless(os.path.exists(etcd.ETCD), "needs etcd (Debian package etcd-server)")
    def test_reload_cannot_change_ha(self):
        cluster = etcd.Cluster(size=1)
        self.addCleanup(cluster.close)
        ha = "  endpoints: [%s]\n  name: solo\n  lease: 3s\n" % cluster.endpoints[0]
        sid = self.gw.add_session("u1", STREAM_FAILED)
        self.write_config([("f", "failed", "0s")], poll_interval="500ms", extra="ha:\n" + ha)
        p = self.start_daemon()
        wait_for(lambda: sid in [c["session_id"] for c in self.gw.calls_to("closesession")], timeout=15,
                 what="the single instance to lead and close")
        self.write_config([("f", "failed", "0s")], poll_interval="500ms", extra="ha:\n" + ha.replace("3s", "5s"))
        p.send_signal(signal.SIGHUP)
        time.sleep(1)
        run = self.stop_daemon(p)
        self.assertIn("Reload failed: the ha: section changed, which needs a restart", run.stderr)
        self.assertEqual(run.returncode, 0, run)
