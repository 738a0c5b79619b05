"""The long-running daemon: live reclaiming, SIGTERM, secrets."""

import os
import signal

from harness import TOKEN, DaemonTest, wait_for
from gateway_sim import IN_PROGRESS, PREPARING, STREAM_FAILED


class Daemon(DaemonTest):
    def test_reclaims_sessions_as_they_leak(self):
        keep = self.gw.add_session("u-live", IN_PROGRESS, started=True)
        self.write_config([("failed-streams", "failed", "0s"), ("never-started", "not_started", "500ms")],
                          poll_interval="200ms")
        p = self.start_daemon()
        wait_for(lambda: len(self.gw.calls_to("listsessionofuin")) >= 2, what="two cycles")

        failed = self.gw.add_session("u-crash", STREAM_FAILED)
        wait_for(lambda: failed in self.gw.closed_ids(), what="the failed stream to be closed")
        unstarted = self.gw.add_session("u-zombie", PREPARING, started=False)
        wait_for(lambda: unstarted in self.gw.closed_ids(), what="the unstarted session to be closed")

        run = self.stop_daemon(p)
        self.assertEqual(run.returncode, 0, run)
        self.assertEqual(self.gw.status_of(keep), IN_PROGRESS)
        self.assertCountEqual(self.gw.closed_ids(), [failed, unstarted])
        # It was seen on at least one cycle before it became due.
        entry = [e for e in run.reclaims("closed") if e["session_id"] == unstarted][0]
        self.assertGreaterEqual(int(entry["age_sec"]), 0)
        self.assertEqual(entry["policy"], "never-started")
        # The state file holds what is still listed when it stopped.
        self.assertIn(keep, self.read_state())
        self.assert_gateway_clean()

    def test_sigterm_lets_in_flight_closes_finish(self):
        self.gw.latency = 0.6
        ids = [self.gw.add_session("u%d" % i, STREAM_FAILED) for i in range(3)]
        self.write_config([("failed-streams", "failed", "0s")], poll_interval="10s", timeout="5s")
        p = self.start_daemon()
        wait_for(lambda: len(self.gw.calls_to("closesession")) == 3, what="closes in flight")

        run = self.stop_daemon(p, signal.SIGTERM)

        self.assertEqual(run.returncode, 0, run)
        self.assertCountEqual(self.gw.closed_ids(), ids)
        self.assertEqual(len(run.reclaims("closed")), 3, run)
        self.assertTrue(os.path.exists(self.state_file))

    def test_token_not_in_cmdline_environ_or_logs(self):
        self.gw.add_session("u1", STREAM_FAILED)
        self.write_config([("failed-streams", "failed", "0s")], poll_interval="200ms")
        p = self.start_daemon()
        wait_for(lambda: len(self.gw.closed_ids()) == 1, what="a close")
        with open("/proc/%d/cmdline" % p.pid, "rb") as f:
            self.assertNotIn(TOKEN.encode(), f.read())
        with open("/proc/%d/environ" % p.pid, "rb") as f:
            self.assertNotIn(TOKEN.encode(), f.read())
        run = self.stop_daemon(p)
        self.assertEqual(run.returncode, 0, run)
        self.assertNotIn(TOKEN, run.stderr)

    def test_sigint_without_cycle_in_flight(self):
        self.write_config([("failed-streams", "failed", "0s")], poll_interval="10s")
        p = self.start_daemon()
        wait_for(lambda: len(self.gw.calls_to("listsessionofuin")) == 1, what="the first cycle")
        wait_for(lambda: any(l.get("message_id") == "e28e9acd311d441a9e1e0a1a36189eb0" for l in self.daemon_log(p)),
                 what="the first summary")
        run = self.stop_daemon(p, signal.SIGINT)
        self.assertEqual(run.returncode, 0, run)
