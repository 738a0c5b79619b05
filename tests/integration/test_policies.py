"""Each policy kind, the protect lists and status 2, against the simulator."""

from harness import DaemonTest
from gateway_sim import CLOSED, IN_PROGRESS, PREPARING, STREAM_FAILED


class PolicyKinds(DaemonTest):
    def test_failed_closes_status_4_only(self):
        failed = self.gw.add_session("u1", STREAM_FAILED, started=True)
        failed_unstarted = self.gw.add_session("u2", STREAM_FAILED, started=False)
        live = self.gw.add_session("u3", IN_PROGRESS, started=True)
        preparing = self.gw.add_session("u4", PREPARING, started=False)
        self.write_config([("failed-streams", "failed", "0s")])

        run = self.run_daemon("--once")

        self.assertEqual(run.returncode, 0, run)
        self.assertCountEqual(self.gw.closed_ids(), [failed, failed_unstarted])
        self.assertEqual(self.gw.status_of(live), IN_PROGRESS)
        self.assertEqual(self.gw.status_of(preparing), PREPARING)
        closed = run.reclaims("closed")
        self.assertEqual(len(closed), 2)
        for entry in closed:
            self.assertEqual(entry["policy"], "failed-streams")
            self.assertEqual(entry["session_status"], "4")
            self.assertIn(entry["user_id"], ("u1", "u2"))
        self.assert_gateway_clean()

    def test_failed_waits_for_after(self):
        self.gw.add_session("u1", STREAM_FAILED)
        self.write_config([("failed-streams", "failed", "1m")])
        run = self.run_daemon("--once")
        self.assertEqual(run.returncode, 0, run)
        self.assertEqual(self.gw.closed_ids(), [])
        self.assertEqual(self.gw.calls_to("closesession"), [])

    def test_not_started(self):
        prep = self.gw.add_session("u1", PREPARING, started=False)
        live_unstarted = self.gw.add_session("u2", IN_PROGRESS, started=False)
        started = self.gw.add_session("u3", IN_PROGRESS, started=True)
        failed_unstarted = self.gw.add_session("u4", STREAM_FAILED, started=False)
        self.write_config([("never-started", "not_started", "0s")])

        run = self.run_daemon("--once")

        self.assertEqual(run.returncode, 0, run)
        self.assertCountEqual(self.gw.closed_ids(), [prep, live_unstarted])
        self.assertEqual(self.gw.status_of(started), IN_PROGRESS)
        self.assertEqual(self.gw.status_of(failed_unstarted), STREAM_FAILED)
        self.assertEqual({e["policy"] for e in run.reclaims("closed")}, {"never-started"})

    def test_max_age_with_selector_counts_from_first_sight(self):
        old_booth = self.gw.add_session("booth-1", IN_PROGRESS)
        young_booth = self.gw.add_session("booth-2", IN_PROGRESS)
        old_other = self.gw.add_session("desk-1", IN_PROGRESS)
        old_prep = self.gw.add_session("booth-3", PREPARING, started=False)
        self.seed_state({old_booth: 3 * 3600, young_booth: 3600, old_other: 5 * 3600, old_prep: 3 * 3600})
        self.write_config([("booth-max-age", "max_age", "2h", ["booth-*"])])

        run = self.run_daemon("--once")

        self.assertEqual(run.returncode, 0, run)
        self.assertCountEqual(self.gw.closed_ids(), [old_booth, old_prep])
        ages = {e["session_id"]: int(e["age_sec"]) for e in run.reclaims("closed")}
        self.assertTrue(3 * 3600 - 5 <= ages[old_booth] <= 3 * 3600 + 5, ages)

    def test_first_match_wins(self):
        # The kiosk exception comes first and owns unstarted kiosk sessions,
        # so the shorter general policy does not close them.
        kiosk = self.gw.add_session("kiosk-1", IN_PROGRESS, started=False)
        other = self.gw.add_session("web-1", IN_PROGRESS, started=False)
        self.write_config([("kiosk-slow", "not_started", "1d", ["kiosk-*"]),
                           ("never-started", "not_started", "0s")])
        run = self.run_daemon("--once")
        self.assertEqual(run.returncode, 0, run)
        self.assertEqual(self.gw.closed_ids(), [other])
        self.assertEqual(self.gw.status_of(kiosk), IN_PROGRESS)


class ProtectAndClosed(DaemonTest):
    def test_protect_lists_win_over_every_policy(self):
        vip = self.gw.add_session("vip-7", STREAM_FAILED, started=False)
        pinned = self.gw.add_session("anyone", STREAM_FAILED, started=False, session_id="pinned-42")
        plain = self.gw.add_session("anyone", STREAM_FAILED, started=False)
        self.write_config([("failed-streams", "failed", "0s"), ("never-started", "not_started", "0s"),
                           ("all", "max_age", "0s")],
                          protect_users=["vip-*"], protect_sessions=["pinned-*"])

        run = self.run_daemon("--once")

        self.assertEqual(run.returncode, 0, run)
        self.assertEqual(self.gw.closed_ids(), [plain])
        touched = {c["session_id"] for c in self.gw.calls if c["endpoint"] != "listsessionofuin"}
        self.assertEqual(touched, {plain})
        self.assertNotIn(vip, touched)
        self.assertNotIn(pinned, touched)
        self.assertEqual(run.summaries()[-1]["protected"], "2")

    def test_status_2_is_never_closed(self):
        self.gw.list_closed = True
        closed = self.gw.add_session("u1", CLOSED, started=False)
        self.write_config([("failed-streams", "failed", "0s"), ("never-started", "not_started", "0s"),
                           ("all", "max_age", "0s")])
        run = self.run_daemon("--once")
        self.assertEqual(run.returncode, 0, run)
        self.assertEqual(self.gw.calls_to("closesession"), [])
        self.assertEqual(run.summaries()[-1]["listed"], "1")
        self.assertEqual(self.gw.status_of(closed), CLOSED)

    def test_driver_type_as_string_or_int_and_unknown_fields(self):
        a = self.gw.add_session("u1", STREAM_FAILED, driver_type="3", Extra={"x": [1]})
        b = self.gw.add_session("u2", STREAM_FAILED, driver_type=1, Another=None)
        self.write_config([("failed-streams", "failed", "0s")])
        run = self.run_daemon("--once")
        self.assertEqual(run.returncode, 0, run)
        self.assertCountEqual(self.gw.closed_ids(), [a, b])
