"""over_capacity: when live sessions exceed capacity - keep_free, sessions
that match the selector go, in order (failed, never started, oldest), until
the count is back to capacity - keep_free."""

from harness import DaemonTest
from gateway_sim import IN_PROGRESS, PREPARING, STREAM_FAILED


class OverCapacity(DaemonTest):
    def setUp(self):
        super().setUp()
        g = self.gw
        self.failed = g.add_session("kiosk-f", STREAM_FAILED)
        self.unstarted = g.add_session("kiosk-u", PREPARING, started=False)
        self.old = [g.add_session("kiosk-old-%d" % i, IN_PROGRESS) for i in range(3)]
        self.young = [g.add_session("kiosk-young-%d" % i, IN_PROGRESS) for i in range(4)]
        self.vip = g.add_session("vip-1", IN_PROGRESS)
        self.desk = [g.add_session("desk-%d" % i, IN_PROGRESS) for i in range(3)]
        # live: unstarted + 3 old + 4 young + vip + 3 desk = 12
        ages = {self.old[0]: 5 * 3600, self.old[1]: 4 * 3600, self.old[2]: 3 * 3600, self.vip: 9 * 3600}
        ages.update({s: 600 for s in self.young})
        ages.update({s: 9 * 3600 for s in self.desk})
        self.seed_state(ages)
        # capacity 12, keep_free 3: at most 9 live, so 3 must go.
        self.write_config([("never-started", "not_started", "1d")], protect_users=["vip-*"],
                          extra="")
        with open(self.config_file, "a") as f:
            f.write("  - {name: kiosk-overflow, kind: over_capacity, capacity: 12, keep_free: 3, "
                    "user_ids: [\"kiosk-*\"]}\n")

    def test_order_and_stop(self):
        run = self.run_daemon("--once")
        self.assertEqual(run.returncode, 0, run)
        # failed first, then never started, then the oldest live ones until 9 remain
        self.assertEqual(set(self.gw.closed_ids()), {self.failed, self.unstarted, self.old[0], self.old[1]})
        live = [s for s in self.gw.sessions.values() if s["SessionStatus"] in (1, 3)]
        self.assertEqual(len(live), 9)
        for s in [self.vip] + self.desk + self.young + [self.old[2]]:
            self.assertEqual(self.gw.status_of(s), IN_PROGRESS)
        self.assertEqual({e["policy"] for e in run.reclaims("closed")}, {"kiosk-overflow"})
        self.assertEqual({e["policy_kind"] for e in run.reclaims("closed")}, {"over_capacity"})
        self.assert_gateway_clean()

        # The next cycle: at the limit, nothing more.
        run = self.run_daemon("--once")
        self.assertEqual(len(self.gw.closed_ids()), 4)

    def test_plan_and_dry_run_show_it(self):
        run = self.run_daemon("--plan")
        self.assertEqual(run.returncode, 0, run)
        rows = {l.split()[0]: l for l in run.stdout.splitlines()[1:] if l and not l[0].isdigit()}
        for s in (self.failed, self.unstarted, self.old[0], self.old[1]):
            self.assertIn("kiosk-overflow", rows[s])
            self.assertIn("over capacity", rows[s])
        self.assertIn(" keep ", rows[self.old[2]])
        self.assertIn("protected", rows[self.vip])
        self.assertIn("4 to reclaim", run.stdout)

        run = self.run_daemon("--once", "--dry-run")
        self.assertEqual(len(run.reclaims("dry_run")), 4)
        self.assertEqual(self.gw.calls_to("closesession"), [])

    def test_protected_sessions_count_but_are_never_taken(self):
        with open(self.config_file) as f:
            text = f.read()
        # Everyone is a victim candidate now, but vip-* stays protected.
        with open(self.config_file, "w") as f:
            f.write(text.replace('user_ids: ["kiosk-*"]}', "}"))
        run = self.run_daemon("--once")
        self.assertEqual(run.returncode, 0, run)
        self.assertNotIn(self.vip, self.gw.closed_ids())
        # 12 live, limit 9: failed, unstarted, then the two oldest desks (9h) go.
        self.assertEqual(len(self.gw.closed_ids()), 4)
