"""The state file under kill -9: whenever the daemon dies, what is on disk
loads, and the next start neither complains nor loses ages."""

import json
import os
import random
import signal
import time

from harness import DaemonTest, wait_for
from gateway_sim import IN_PROGRESS


class KillNine(DaemonTest):
    def test_kill_9_at_random_moments_never_corrupts_the_state(self):
        rng = random.Random(1234)
        self.write_config([("old", "max_age", "1d")], poll_interval="10ms")
        ids = [self.gw.add_session("u%d" % i, IN_PROGRESS) for i in range(200)]
        kills = 0
        for round_ in range(25):
            # Churn: every round the list changes, so every cycle writes.
            for _ in range(20):
                victim = rng.choice(ids)
                self.gw.sessions.pop(victim, None)
                ids.remove(victim)
                ids.append(self.gw.add_session("r%d" % round_, IN_PROGRESS))
            p = self.start_daemon()
            wait_for(lambda: len(self.gw.calls_to("listsessionofuin")) > 0, what="a list call")
            time.sleep(rng.uniform(0.0, 0.15))
            p.send_signal(signal.SIGKILL)
            p.wait()
            p.stderr_file.close()
            kills += 1
            if os.path.exists(self.state_file):
                with open(self.state_file) as f:
                    doc = json.load(f)   # never half written
                self.assertEqual(doc["version"], 2)
                self.assertIsInstance(doc["first_seen"], dict)
        self.assertEqual(kills, 25)

        # A clean start afterwards: no warning about the state, stale temporary
        # files removed, every listed session known.
        run = self.run_daemon("--once")
        self.assertEqual(run.returncode, 0, run)
        self.assertFalse([l for l in run.logs if "state file" in l.get("msg", "")], run)
        # Sessions that left the list may stay for their grace period (10 intervals).
        self.assertLessEqual(set(ids), set(self.read_state()))
        leftovers = [n for n in os.listdir(self.dir) if n.startswith(".#state.json.")]
        self.assertEqual(leftovers, [])

    def test_ages_survive_kill_9(self):
        a = self.gw.add_session("u1", IN_PROGRESS)
        self.seed_state({a: 3600})
        self.write_config([("old", "max_age", "1d")], poll_interval="20ms")
        p = self.start_daemon()
        wait_for(lambda: len(self.gw.calls_to("listsessionofuin")) >= 5, what="five cycles")
        p.send_signal(signal.SIGKILL)
        p.wait()
        p.stderr_file.close()
        first_seen = self.read_state()[a]
        self.assertAlmostEqual(first_seen / 1000, time.time() - 3600, delta=10)
