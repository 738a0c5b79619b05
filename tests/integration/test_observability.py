"""Issue 13, observability: build and reload metrics, the fuse and deferral
gauges, STATUS= naming a tripped fuse and a failing account, and a reload
refused by the unit's ExecReload= check (--check-config with $MAINPID)
reaching the daemon's metrics and STATUS=."""

import os
import re
import signal
import subprocess
import time

from harness import BINARY, DaemonTest, wait_for
from gateway_sim import IN_PROGRESS, STREAM_FAILED
from test_systemd import NotifySocket


def metric(text, name):
    m = re.search(r"(?m)^%s (\S+)$" % re.escape(name), text)
    return float(m.group(1)) if m else None


class Observability(DaemonTest):
    def setUp(self):
        super().setUp()
        self.notify = NotifySocket(self.dir)
        self.addCleanup(self.notify.close)
        self.metrics = os.path.join(self.dir, "m.prom")

    def start(self):
        env = self.env()
        env["NOTIFY_SOCKET"] = self.notify.path
        return self.start_daemon(env=env)

    def read(self):
        try:
            with open(self.metrics) as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def statuses(self):
        return [m for m in self.notify.drain() if m.startswith("STATUS=")]

    def test_fuse_and_deferred_gauges_and_status(self):
        for i in range(4):
            self.gw.add_session("kiosk-%d" % i, IN_PROGRESS, started=False)
        for i in range(3):
            self.gw.add_session("crash-%d" % i, STREAM_FAILED)
        self.seed_state({})
        self.write_config([("failed-streams", "failed", "0s"), ("never-started", "not_started", "0s")],
                          poll_interval="10s",
                          extra="metrics_file: %s\nmax_closes_per_cycle: 2\n"
                                "fuse:\n  max_share: 50%%\n  min_sessions: 0\n" % self.metrics)
        p = self.start()
        wait_for(lambda: "ivh_sessions_fused" in self.read() and
                 metric(self.read(), 'ivh_sessions_fused{account="default"}') is not None,
                 what="the gauges")
        text = self.read()
        self.assertEqual(metric(text, 'ivh_sessions_fused{account="default"}'), 4)
        self.assertEqual(metric(text, 'ivh_sessions_deferred{account="default"}'), 1)
        self.assertRegex(text, r'(?m)^ivh_reclaimd_build_info\{version="\d+\.\d+\.\d+"\} 1$')
        self.assertEqual(metric(text, "ivh_config_last_reload_successful"), 1)
        loaded = metric(text, "ivh_config_last_reload_success_timestamp_seconds")
        self.assertGreater(loaded, 1.7e9)
        self.notify.wait_for(lambda m: any(x.startswith("STATUS=") for x in m), "a status")
        status = self.statuses()[-1]
        self.assertRegex(status, r"^STATUS=Share fuse tripped: 4 due sessions held back")
        self.stop_daemon(p)

    def test_failing_account_is_named(self):
        self.gw.add_fault("listsessionofuin", "http_status", status=500, count=100)
        text = ("gateway:\n  timeout: 2s\npoll_interval: 10s\nstate_file: %s\naccounts:\n"
                "  - {name: prod, appkey: k1, url: %s, policies: []}\n"
                "  - {name: staging, appkey: k2, url: http://127.0.0.1:1, policies: []}\n"
                % (self.state_file, self.url))
        with open(self.config_file, "w") as f:
            f.write(text)
        env = self.env()
        env["NOTIFY_SOCKET"] = self.notify.path
        env["IVH_ACCESS_TOKEN_PROD"] = env["IVH_ACCESS_TOKEN_STAGING"] = "t"
        p = self.start_daemon(env=env)
        # Each account's failure reaches STATUS= when its own cycle ends: wait for both.
        self.notify.wait_for(lambda m: any("failing to list" in x and "prod" in x and "staging" in x for x in m),
                             "a status naming both accounts")
        status = [x for x in self.statuses() if "failing to list" in x][-1]
        self.assertIn("failing to list: prod, staging", status)
        self.stop_daemon(p)

    def test_reload_failures_reach_the_metrics_and_status(self):
        self.write_config([("failed-streams", "failed", "0s")], poll_interval="10s",
                          extra="metrics_file: %s\n" % self.metrics)
        p = self.start()
        wait_for(lambda: metric(self.read(), "ivh_config_last_reload_successful") == 1, what="the first file")
        first = metric(self.read(), "ivh_config_last_reload_success_timestamp_seconds")

        # A file the daemon refuses on SIGHUP.
        with open(self.config_file) as f:
            good = f.read()
        with open(self.config_file, "w") as f:
            f.write(good + "bogus_key: 1\n")
        p.send_signal(signal.SIGHUP)
        wait_for(lambda: metric(self.read(), "ivh_config_last_reload_successful") == 0, what="the failed reload")
        self.notify.wait_for(lambda m: any("the last reload failed" in x for x in m), "STATUS= saying so")
        self.assertEqual(metric(self.read(), "ivh_config_last_reload_success_timestamp_seconds"), first)

        # A good file again: 1, and a newer timestamp.
        with open(self.config_file, "w") as f:
            f.write(good)
        p.send_signal(signal.SIGHUP)
        wait_for(lambda: metric(self.read(), "ivh_config_last_reload_successful") == 1, what="the good reload")
        self.assertGreater(metric(self.read(), "ivh_config_last_reload_success_timestamp_seconds"), first)

        # The unit's ExecReload= check refuses the file: it tells the daemon (SIGUSR2).
        with open(self.config_file, "w") as f:
            f.write(good + "bogus_key: 1\n")
        env = dict(self.env(), MAINPID=str(p.pid), INVOCATION_ID="0123456789abcdef0123456789abcdef")
        check = subprocess.run([BINARY, "--check-config", "--config", self.config_file], env=env,
                               capture_output=True, text=True, timeout=30)
        self.assertEqual(check.returncode, 78, check)
        wait_for(lambda: metric(self.read(), "ivh_config_last_reload_successful") == 0,
                 what="the refused reload in the metrics")
        self.assertIsNone(p.poll(), "SIGUSR2 must not kill the daemon")
        # Without INVOCATION_ID (not a unit's control process), nobody is signalled.
        with open(self.config_file, "w") as f:
            f.write(good)
        p.send_signal(signal.SIGHUP)
        wait_for(lambda: metric(self.read(), "ivh_config_last_reload_successful") == 1, what="the good reload")
        with open(self.config_file, "w") as f:
            f.write(good + "bogus_key: 1\n")
        env.pop("INVOCATION_ID")
        subprocess.run([BINARY, "--check-config", "--config", self.config_file], env=env,
                       capture_output=True, text=True, timeout=30)
        time.sleep(0.5)
        run = self.stop_daemon(p)
        self.assertEqual(metric(self.read(), "ivh_config_last_reload_successful"), 1)
        self.assertEqual(run.returncode, 0, run)
        self.assertIn("Reload failed: --check-config refused", run.stderr)
