"""--once, --dry-run, --plan and max_closes_per_cycle."""

import os

from harness import DaemonTest
from gateway_sim import IN_PROGRESS, STREAM_FAILED


class Modes(DaemonTest):
    def test_dry_run_never_calls_closesession(self):
        ids = [self.gw.add_session("u%d" % i, STREAM_FAILED) for i in range(3)]
        self.write_config([("failed-streams", "failed", "0s")])

        run = self.run_daemon("--once", "--dry-run")

        self.assertEqual(run.returncode, 0, run)
        self.assertEqual(self.gw.calls_to("closesession"), [])
        self.assertCountEqual([e["session_id"] for e in run.reclaims("dry_run")], ids)
        self.assertEqual(run.summaries()[-1]["dry_run"], "3")

    def test_dry_run_from_the_file(self):
        self.gw.add_session("u1", STREAM_FAILED)
        self.write_config([("failed-streams", "failed", "0s")], extra="dry_run: true\n")
        run = self.run_daemon("--once")
        self.assertEqual(run.returncode, 0, run)
        self.assertEqual(self.gw.calls_to("closesession"), [])
        self.assertEqual(len(run.reclaims("dry_run")), 1)

    def test_plan_explains_and_touches_nothing(self):
        failed = self.gw.add_session("u-failed", STREAM_FAILED)
        vip = self.gw.add_session("vip-1", STREAM_FAILED)
        young = self.gw.add_session("u-young", IN_PROGRESS, started=False)
        keep = self.gw.add_session("u-keep", IN_PROGRESS, started=True)
        self.seed_state({failed: 120, vip: 120})
        with open(self.state_file) as f:
            before = f.read()
        self.write_config([("failed-streams", "failed", "1m"), ("never-started", "not_started", "10m")],
                          protect_users=["vip-*"])

        run = self.run_daemon("--plan")

        self.assertEqual(run.returncode, 0, run)
        self.assertEqual(self.gw.calls_to("closesession"), [])
        self.assertEqual(len(self.gw.calls), 1)
        with open(self.state_file) as f:
            self.assertEqual(f.read(), before, "--plan must not write the state file")
        lines = run.stdout.splitlines()
        self.assertEqual(lines[0].split()[:6], ["SESSION_ID", "USER_ID", "STATUS", "STARTED", "AGE", "DECISION"])
        rows = {l.split()[0]: l for l in lines[1:] if l and not l[0].isdigit()}
        self.assertRegex(rows[failed], r"4 stream_failed\s+yes\s+2m\d*s?\s+failed-streams")
        self.assertRegex(rows[vip], r"\sprotected\s")
        self.assertRegex(rows[young], r"1 in_progress\s+no\s+new\s+keep\s+never-started due in 10m")
        self.assertRegex(rows[keep], r"\skeep\s+no policy matches")
        self.assertIn("4 sessions: 1 to reclaim, 1 protected, 2 kept", run.stdout)

    def test_plan_marks_fused_and_deferred_rows_as_the_cycle_then_does(self):
        # Three never-started live sessions of four live: over the share fuse.
        # Three failed streams with max_closes_per_cycle 2: the youngest waits.
        unstarted = [self.gw.add_session("kiosk-%d" % i, IN_PROGRESS, started=False) for i in range(3)]
        live = self.gw.add_session("web-1", IN_PROGRESS, started=True)
        failed = [self.gw.add_session("crash-%d" % i, STREAM_FAILED) for i in range(3)]
        self.seed_state(dict({s: 1200 for s in unstarted + [live]},
                             **{failed[0]: 1800, failed[1]: 1200, failed[2]: 600}))
        self.write_config([("failed-streams", "failed", "1m"), ("never-started", "not_started", "10m")],
                          extra="max_closes_per_cycle: 2\nfuse:\n  max_share: 50%\n  min_sessions: 0\n")

        plan = self.run_daemon("--plan")

        self.assertEqual(plan.returncode, 0, plan)
        rows = {l.split()[0]: l.split() for l in plan.stdout.splitlines()[1:] if l and not l[0].isdigit()}
        decision = {sid: cols[6] for sid, cols in rows.items()}  # STATUS is two words
        for sid in unstarted:
            self.assertEqual(decision[sid], "fused", plan.stdout)
            self.assertIn("held back by the share fuse", " ".join(rows[sid]))
        self.assertEqual(decision[failed[0]], "failed-streams")
        self.assertEqual(decision[failed[1]], "failed-streams")
        self.assertEqual(decision[failed[2]], "deferred", plan.stdout)
        self.assertIn("max_closes_per_cycle is 2", " ".join(rows[failed[2]]))
        self.assertEqual(decision[live], "keep")
        self.assertIn("7 sessions: 2 to reclaim, 0 protected, 1 kept", plan.stdout)
        self.assertIn("the share fuse holds back all 3 due live ones", plan.stdout)
        self.assertIn("max_closes_per_cycle=2 defers 1 to later cycles", plan.stdout)
        self.assertEqual(self.gw.calls_to("closesession"), [])

        # The cycle does exactly what the plan said.
        run = self.run_daemon("--once")
        self.assertEqual(run.returncode, 0, run)
        planned = {sid for sid, d in decision.items() if d == "failed-streams"}
        self.assertEqual(set(self.gw.closed_ids()), planned)
        summary = run.summaries()[-1]
        self.assertEqual((summary["closed"], summary["fused"], summary["deferred"]), ("2", "3", "1"), summary)

    def test_plan_with_list_failure_exits_1(self):
        self.gw.add_fault("listsessionofuin", "http_status", status=503)
        self.write_config([("failed-streams", "failed", "0s")])
        run = self.run_daemon("--plan")
        self.assertEqual(run.returncode, 1, run)
        self.assertFalse(os.path.exists(self.state_file))

    def test_once_exit_status_follows_the_list_call(self):
        self.gw.add_session("u1", STREAM_FAILED)
        self.gw.add_fault("listsessionofuin", "api_error", code=100014, message="concurrency quota insufficient or expired")
        self.write_config([("failed-streams", "failed", "0s")])

        run = self.run_daemon("--once")
        self.assertEqual(run.returncode, 1, run)
        self.assertEqual(self.gw.calls_to("closesession"), [])
        failed = [l for l in run.logs if l.get("message_id") == "f8e2aad76f6749b7a1433345838414f1"]
        self.assertEqual(len(failed), 1, run)
        self.assertEqual(failed[0]["api_code"], "100014")
        self.assertIn("concurrency quota insufficient", failed[0]["error"])

        run = self.run_daemon("--once")
        self.assertEqual(run.returncode, 0, run)
        self.assertEqual(len(self.gw.closed_ids()), 1)

    def test_max_closes_per_cycle_closes_the_oldest_first(self):
        ids = [self.gw.add_session("u%d" % i, STREAM_FAILED) for i in range(5)]
        # ids[3] and ids[1] are the oldest.
        self.seed_state({ids[0]: 100, ids[1]: 500, ids[2]: 200, ids[3]: 900, ids[4]: 300})
        self.write_config([("failed-streams", "failed", "0s")], extra="max_closes_per_cycle: 2\n")

        run = self.run_daemon("--once")

        self.assertEqual(run.returncode, 0, run)
        self.assertCountEqual(self.gw.closed_ids(), [ids[3], ids[1]])
        fuse = [l for l in run.logs if l.get("message_id") == "7790a43c50c9428f9d94329cc7e5e131"]
        self.assertEqual(len(fuse), 1, run)
        self.assertEqual(fuse[0]["level"], "warning")
        self.assertEqual(fuse[0]["due"], "5")
        summary = run.summaries()[-1]
        self.assertEqual((summary["due"], summary["closed"], summary["deferred"]), ("5", "2", "3"))

        # The rest go in the following cycles, still oldest first.
        run = self.run_daemon("--once")
        self.assertCountEqual(self.gw.closed_ids()[2:], [ids[4], ids[2]])
        run = self.run_daemon("--once")
        self.assertEqual(self.gw.closed_ids()[4:], [ids[0]])

    def test_parallel_closes_are_bounded_by_max_parallel(self):
        self.gw.latency = 0.15
        for i in range(20):
            self.gw.add_session("u%d" % i, STREAM_FAILED)
        self.write_config([("failed-streams", "failed", "0s")], max_parallel=4)

        run = self.run_daemon("--once")

        self.assertEqual(run.returncode, 0, run)
        self.assertEqual(len(self.gw.closed_ids()), 20)
        # Never more than max_parallel at once, and really in parallel.
        self.assertLessEqual(self.gw.max_in_flight["closesession"], 4)
        self.assertGreaterEqual(self.gw.max_in_flight["closesession"], 2)
        # Connections are reused: at most max_parallel + the list call's.
        self.assertLessEqual(self.gw.connections, 4 + 2)
        self.assert_gateway_clean()
