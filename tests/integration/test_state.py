"""First-seen times survive restarts; sessions no longer listed are dropped."""

import json
import os
import time

from harness import DaemonTest, wait_for
from gateway_sim import IN_PROGRESS


class Restart(DaemonTest):
    def test_restart_keeps_ages(self):
        a = self.gw.add_session("booth-1", IN_PROGRESS)
        self.write_config([("booth-max-age", "max_age", "2s", ["booth-*"])])

        # First run: the session is seen for the first time and recorded.
        run = self.run_daemon("--once")
        self.assertEqual(run.returncode, 0, run)
        self.assertEqual(self.gw.calls_to("closesession"), [])
        first_seen = self.read_state()[a]
        self.assertAlmostEqual(first_seen / 1000, time.time(), delta=5)

        # A later run of a new process does not reset the age.
        time.sleep(2.2)
        run = self.run_daemon("--once")
        self.assertEqual(run.returncode, 0, run)
        self.assertEqual(self.gw.closed_ids(), [a])
        age = int(run.reclaims("closed")[0]["age_sec"])
        self.assertGreaterEqual(age, 2)

    def test_lost_state_restarts_ages_from_zero(self):
        a = self.gw.add_session("booth-1", IN_PROGRESS)
        self.seed_state({a: 3600})
        os.remove(self.state_file)
        self.write_config([("booth-max-age", "max_age", "30m")])
        run = self.run_daemon("--once")
        self.assertEqual(run.returncode, 0, run)
        self.assertEqual(self.gw.closed_ids(), [])

    def test_unlisted_sessions_are_dropped_after_their_grace_period(self):
        a = self.gw.add_session("u1", IN_PROGRESS)
        self.seed_state({a: 60, "gone-1": 600, "gone-2": 6000})
        # 10 poll intervals of 100ms: 1 s of grace.
        self.write_config([("old", "max_age", "1d")], poll_interval="100ms")
        run = self.run_daemon("--once")
        self.assertEqual(run.returncode, 0, run)
        self.assertEqual(sorted(self.read_state()), sorted([a, "gone-1", "gone-2"]))
        p = self.start_daemon()
        wait_for(lambda: sorted(self.read_state()) == [a], timeout=15, what="the grace period to pass")
        self.stop_daemon(p)

    def test_corrupt_state_is_set_aside(self):
        a = self.gw.add_session("u1", IN_PROGRESS)
        with open(self.state_file, "w") as f:
            f.write('{"version": 1, "first_seen": {"x": ')
        self.write_config([("old", "max_age", "1d")])
        run = self.run_daemon("--once")
        self.assertEqual(run.returncode, 0, run)
        self.assertTrue(any("corrupt" in l["msg"] and l["level"] == "warning" for l in run.logs), run)
        self.assertEqual(list(self.read_state()), [a])
        aside = [n for n in os.listdir(self.dir) if n.startswith("state.json.corrupt-")]
        self.assertEqual(len(aside), 1)
        with open(os.path.join(self.dir, aside[0])) as f:
            self.assertTrue(f.read().startswith('{"version": 1'))

    def test_state_file_is_private_and_valid_json(self):
        self.gw.add_session("u1", IN_PROGRESS)
        self.write_config([("old", "max_age", "1d")])
        self.run_daemon("--once")
        self.assertEqual(os.stat(self.state_file).st_mode & 0o777, 0o600)
        with open(self.state_file) as f:
            doc = json.load(f)
        self.assertEqual(doc["version"], 2)
        self.assertEqual(len(doc["boot_id"]), 36)
        self.assertTrue(doc["wall_trusted"])
        self.assertEqual([n for n in os.listdir(self.dir) if n.startswith(".#state.json.")], [])
