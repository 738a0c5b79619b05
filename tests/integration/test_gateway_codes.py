"""Issue 11: the daemon speaks the real gateway. Published Header.Code values
decide outcomes, throttling is account-wide, auth failures are an account
problem, asset lists are listed, and statsession's stream error is logged.
Each test asserts what the gateway saw and what the operator reads."""

import time

from harness import DaemonTest, wait_for
from gateway_sim import (E_ALREADY_CLOSED, E_INTERNAL, E_NO_SESSION, E_TOO_FREQUENT, IN_PROGRESS,
                         STREAM_FAILED)

AUTH_ID = "d1f0b64d5da24960a3fff63a226ec244"


class Codes(DaemonTest):
    def test_110013_is_already_closed_without_another_call(self):
        a = self.gw.add_session("u1", STREAM_FAILED)
        self.gw.add_fault("closesession", "api_error", session_id=a, code=E_ALREADY_CLOSED,
                          message="session already closed")
        self.write_config([("failed-streams", "failed", "0s")])
        run = self.run_daemon("--once")
        self.assertEqual(run.returncode, 0, run)
        self.assertEqual([e["session_id"] for e in run.reclaims("already_closed")], [a])
        self.assertEqual(self.gw.calls_to("statsession"), [])

    def test_same_error_on_close_and_stat_is_not_already_closed(self):
        # The old inference ("both calls gave the same code, so it is gone") is gone.
        a = self.gw.add_session("u1", STREAM_FAILED)
        self.gw.add_fault("closesession", "api_error", session_id=a, code=E_INTERNAL, message="internal")
        self.gw.add_fault("statsession", "api_error", session_id=a, code=E_INTERNAL, message="internal")
        self.write_config([("failed-streams", "failed", "0s")])
        run = self.run_daemon("--once")
        self.assertEqual(run.returncode, 0, run)
        self.assertEqual(run.reclaims("already_closed"), [])
        failed = run.reclaims("failed")
        self.assertEqual([e["session_id"] for e in failed], [a])
        self.assertEqual(failed[0]["api_code"], str(E_INTERNAL))

    def test_unknown_error_then_stat_110018_confirms_it_is_gone(self):
        a = self.gw.add_session("u1", STREAM_FAILED)
        self.gw.add_fault("closesession", "api_error", session_id=a, code=E_INTERNAL, message="internal")
        self.gw.add_fault("statsession", "vanish", session_id=a)
        self.write_config([("failed-streams", "failed", "0s")])
        run = self.run_daemon("--once")
        self.assertEqual(run.returncode, 0, run)
        self.assertEqual([e["session_id"] for e in run.reclaims("already_closed")], [a])
        self.assertEqual(self.gw.calls_to("statsession")[0]["code"], E_NO_SESSION)

    def test_stream_error_from_statsession_is_in_the_reclaim_entry(self):
        a = self.gw.add_session("booth-1", IN_PROGRESS, _error=(-111002, "long connection dropped"))
        self.seed_state({a: 7200})
        self.write_config([("booth-max-age", "max_age", "1h")])
        run = self.run_daemon("--once")
        self.assertEqual(run.returncode, 0, run)
        e = run.reclaims("closed")[0]
        self.assertEqual(e["stream_error_code"], "-111002")
        self.assertEqual(e["stream_error"], "long connection dropped")


class Throttling(DaemonTest):
    def test_throttled_closes_are_sent_again_in_the_same_cycle(self):
        self.gw.rate_limit = 10
        ids = [self.gw.add_session("u%d" % i, STREAM_FAILED) for i in range(40)]
        self.write_config([("failed-streams", "failed", "0s")], poll_interval="10m", max_parallel=16,
                          timeout="5s")
        p = self.start_daemon()
        wait_for(lambda: sorted(self.gw.closed_ids()) == sorted(ids), timeout=30, what="every close")
        run = self.stop_daemon(p)
        self.assertEqual(run.returncode, 0, run)
        self.assertEqual(len(self.gw.calls_to("listsessionofuin")), 1, "all in one cycle")
        summary = run.summaries()[0]
        self.assertEqual(summary["closed"], "40")
        self.assertEqual(summary["failed"], "0")
        self.assertGreater(int(summary["throttled"]), 0)
        self.assertEqual(int(summary["throttled"]), len(self.gw.throttled_calls()))
        self.assertEqual(run.reclaims("failed"), [], "a throttled close is no failure of the session")

    def test_max_rate_keeps_under_the_gateways_limit(self):
        self.gw.rate_limit = 10
        ids = [self.gw.add_session("u%d" % i, STREAM_FAILED) for i in range(30)]
        self.write_config([("failed-streams", "failed", "0s")], poll_interval="10m", max_parallel=16,
                          timeout="5s", gateway_extra="  max_rate: 8\n")
        p = self.start_daemon()
        wait_for(lambda: sorted(self.gw.closed_ids()) == sorted(ids), timeout=30, what="every close")
        run = self.stop_daemon(p)
        self.assertEqual(run.returncode, 0, run)
        self.assertLessEqual(len(self.gw.throttled_calls()), 1)

    def test_http_429_and_503_are_throttling_too(self):
        for status in (429, 503):
            self.gw.rate_limit = 10
            self.gw.rate_limit_http = status
            self.gw._bucket = None
            ids = [self.gw.add_session("h%d-%d" % (status, i), STREAM_FAILED) for i in range(20)]
            self.write_config([("failed-streams", "failed", "0s")], poll_interval="10m", max_parallel=16,
                              timeout="5s")
            p = self.start_daemon()
            wait_for(lambda: set(ids) <= set(self.gw.closed_ids()), timeout=30, what="every close")
            run = self.stop_daemon(p)
            self.assertEqual(run.reclaims("failed"), [], status)


class Auth(DaemonTest):
    def test_code_100005_on_the_list_exits_77(self):
        self.gw.auth_failure = "code"
        self.write_config([("failed-streams", "failed", "0s")])
        for args in (["--once"], ["--plan"]):
            run = self.run_daemon(*args)
            self.assertEqual(run.returncode, 77, run)
            auth = [l for l in run.logs if l.get("message_id") == AUTH_ID]
            self.assertEqual(len(auth), 1, run)
            self.assertEqual(auth[0]["level"], "error")

    def test_http_401_and_403_are_auth_failures(self):
        for status in (401, 403):
            self.gw.auth_failure = status
            self.write_config([("failed-streams", "failed", "0s")])
            run = self.run_daemon("--once")
            self.assertEqual(run.returncode, 77, run)

    def test_auth_failure_on_close_makes_no_per_session_retry(self):
        ids = [self.gw.add_session("u%d" % i, STREAM_FAILED) for i in range(5)]
        self.gw.add_fault("closesession", "api_error", session_id=ids[0], code=100005,
                          message="unauthorized operation")
        self.write_config([("failed-streams", "failed", "0s")], poll_interval="200ms", max_parallel=1)
        p = self.start_daemon()
        wait_for(lambda: sorted(self.gw.closed_ids()) == sorted(ids), timeout=15, what="the next cycle")
        run = self.stop_daemon(p)
        auth = [l for l in run.logs if l.get("message_id") == AUTH_ID]
        self.assertEqual(len(auth), 1, run)
        # No backoff for the session: it was closed at the very next cycle.
        first, second = run.summaries()[0], run.summaries()[1]
        self.assertEqual(first["failed"], "1")
        self.assertEqual(second["backing_off"], "0")


class AssetLists(DaemonTest):
    def test_asset_sessions_are_listed_and_merged(self):
        a = self.gw.add_session("u1", STREAM_FAILED, asset_vk="vk-1")
        b = self.gw.add_session("u2", STREAM_FAILED, project_id="proj-1")
        self.gw.add_session("u3", STREAM_FAILED, asset_vk="vk-other")
        self.write_config([("failed-streams", "failed", "0s")],
                          gateway_extra="  project_ids: [proj-1]\n  asset_vks: [vk-1]\n")
        run = self.run_daemon("--once")
        self.assertEqual(run.returncode, 0, run)
        self.assertEqual(sorted(self.gw.closed_ids()), sorted([a, b]))
        self.assertEqual(len(self.gw.calls_to("listsessionofassetvk")), 1)
        self.assertEqual(self.gw.calls_to("listsessionofuin"), [])

    def test_one_failed_asset_list_decides_nothing(self):
        self.gw.add_session("u1", STREAM_FAILED, asset_vk="vk-1")
        self.gw.add_session("u2", STREAM_FAILED, project_id="proj-1")
        self.gw.add_fault("listsessionofassetvk", "http_status", status=500)
        self.write_config([("failed-streams", "failed", "0s")],
                          gateway_extra="  project_ids: [proj-1]\n  asset_vks: [vk-1]\n")
        run = self.run_daemon("--once")
        self.assertEqual(run.returncode, 1, run)
        self.assertEqual(self.gw.closed_ids(), [])


class HostileGatewayReplies(DaemonTest):
    """Mistyped and junk list entries, and a gateway that throttles every close
    (found by a red-team pass over the first version of issue 11)."""

    def test_mistyped_started_flag_is_never_acted_on(self):
        body = ('{"Header":{"Code":0,"Message":""},"Payload":{"Sessions":['
                '{"SessionId":"s-str","UserId":"u","SessionStatus":1,"IsSessionStarted":"false"},'
                '{"SessionId":"s-num","UserId":"u","SessionStatus":1,"IsSessionStarted":0},'
                '{"SessionId":"s-status","UserId":"u","SessionStatus":"4"},'
                '{"SessionId":"s-twice","UserId":"u","UserId":"vip-1","SessionStatus":4}]}}')
        self.gw.add_fault("listsessionofuin", "garbage", body=body.encode())
        self.write_config([("failed-streams", "failed", "0s"), ("never-started", "not_started", "0s")],
                          protect_users=["vip-*"], extra="recheck_before_close: false\n")
        run = self.run_daemon("--once")
        self.assertEqual(run.returncode, 0, run)
        self.assertEqual(self.gw.calls_to("closesession"), [])
        self.assertEqual(run.summaries()[0]["malformed"], "4")

    def test_a_gateway_that_throttles_every_close_ends_the_cycle_with_a_warning(self):
        ids = [self.gw.add_session("u%d" % i, STREAM_FAILED) for i in range(10)]
        for sid in ids:
            self.gw.add_fault("closesession", "api_error", session_id=sid, code=E_TOO_FREQUENT, count=1000,
                              message="request too frequent")
        self.write_config([("failed-streams", "failed", "0s")], poll_interval="3s", max_parallel=4)
        p = self.start_daemon()
        wait_for(lambda: len(self.gw.calls_to("listsessionofuin")) >= 3, timeout=15, what="three cycles")
        run = self.stop_daemon(p)
        self.assertEqual(run.returncode, 0, run)
        ends = run.summaries()
        self.assertGreaterEqual(len(ends), 2)
        self.assertTrue(all(int(e["throttled"]) > 0 and e["failed"] == "0" for e in ends[:2]), ends)
        self.assertTrue(any(l["level"] == "warning" and "next cycle" in l["msg"] for l in run.logs), run)
        lists = self.gw.calls_to("listsessionofuin")
        self.assertLess(lists[1]["time"] - lists[0]["time"], 4.5, "a cycle ran past poll_interval")

    def test_retry_after_is_honoured_on_every_throttled_close(self):
        a = self.gw.add_session("u1", STREAM_FAILED)
        self.gw.add_fault("closesession", "http_status", session_id=a, status=429, retry_after=3, count=3)
        self.write_config([("failed-streams", "failed", "0s")], poll_interval="20s", max_parallel=1)
        p = self.start_daemon()
        wait_for(lambda: self.gw.closed_ids() == [a], timeout=20, what="the close")
        run = self.stop_daemon(p)
        self.assertEqual(run.returncode, 0, run)
        closes = self.gw.calls_to("closesession")
        self.assertEqual(len(closes), 4)
        for before, after in zip(closes, closes[1:]):
            self.assertGreaterEqual(after["time"] - before["time"], 2.9)

    def test_junk_entries_do_not_dilute_the_share_fuse(self):
        body = ('{"Header":{"Code":0,"Message":""},"Payload":{"Sessions":[' +
                ",".join('{"SessionId":"j%d"}' % i for i in range(30)) + "," +
                ",".join('{"SessionId":"live%d","UserId":"u%d","SessionStatus":1,"IsSessionStarted":false}'
                         % (i, i) for i in range(12)) + "]}}")
        self.gw.add_fault("listsessionofuin", "garbage", body=body.encode())
        for i in range(12):
            self.gw.add_session("u%d" % i, IN_PROGRESS, started=False, session_id="live%d" % i)
        self.write_config([("never-started", "not_started", "0s")], extra="recheck_before_close: false\n")
        run = self.run_daemon("--once")
        self.assertEqual(run.returncode, 0, run)
        self.assertEqual(self.gw.closed_ids(), [])
        self.assertEqual(run.summaries()[0]["fused"], "12")


class ThrottlePauseAndPace(DaemonTest):
    """A Retry-After or a slow pace holds later calls and later cycles; a
    throttled or refused confirmation is a throttle or an auth failure (found
    by a red-team pass over the learnt pace, issue 11)."""

    def test_a_retry_after_longer_than_the_cycle_holds_the_next_cycle_too(self):
        # Retry-After 6 s with poll_interval 2 s: the cycle gives the close up,
        # and neither the next list nor the close may come before 6 s.
        a = self.gw.add_session("u1", STREAM_FAILED)
        self.gw.add_fault("closesession", "http_status", session_id=a, status=429, retry_after=6, count=1)
        self.write_config([("failed-streams", "failed", "0s")], poll_interval="2s")
        p = self.start_daemon()
        wait_for(lambda: self.gw.closed_ids() == [a], timeout=20, what="the close after the Retry-After")
        run = self.stop_daemon(p)
        self.assertEqual(run.returncode, 0, run)
        closes = self.gw.calls_to("closesession")
        refused_at = closes[0]["time"]
        self.assertEqual(closes[0]["http_status"], 429)
        self.assertGreaterEqual(closes[1]["time"] - refused_at, 5.9, closes)
        early = [c for c in self.gw.calls_to("listsessionofuin") if 0.1 < c["time"] - refused_at < 5.9]
        self.assertEqual(early, [], "a list went out inside the gateway's Retry-After")
        self.assertEqual(run.reclaims("failed"), [])
        self.assertTrue(any(l["level"] == "warning" and "next cycle" in l["msg"] for l in run.logs), run)

    def test_what_the_cycle_gave_up_is_not_sent_later_in_that_cycle(self):
        # One reply of a burst asks for 6 s, the others for 1 s: once the
        # cycle has said "the closes left wait for the next cycle", nothing
        # goes out before the 6 s are over.
        ids = [self.gw.add_session("u%d" % i, STREAM_FAILED) for i in range(4)]
        self.gw.add_fault("closesession", "http_status", session_id=ids[0], status=429, retry_after=6, count=1)
        for sid in ids[1:]:
            self.gw.add_fault("closesession", "http_status", session_id=sid, status=429, retry_after=1, count=1)
        self.write_config([("failed-streams", "failed", "0s")], poll_interval="2s", max_parallel=4)
        p = self.start_daemon()
        wait_for(lambda: sorted(self.gw.closed_ids()) == sorted(ids), timeout=25, what="all four closed")
        run = self.stop_daemon(p)
        self.assertEqual(run.returncode, 0, run)
        closes = self.gw.calls_to("closesession")
        first_refusal = min(c["time"] for c in closes if c["http_status"] == 429)
        later = [c["time"] - first_refusal for c in closes if c["http_status"] != 429]
        self.assertGreaterEqual(min(later), 5.8, closes)

    def test_a_throttled_confirmation_is_a_throttle_not_a_failure(self):
        # The close answers a code the daemon does not know, the confirming
        # statsession answers 100012: the account pauses and the close is
        # sent again; no `failed` entry, and the summary counts the throttle.
        a = self.gw.add_session("u1", STREAM_FAILED)
        self.gw.add_fault("closesession", "api_error", session_id=a, code=E_INTERNAL, message="internal", count=1)
        self.gw.add_fault("statsession", "api_error", session_id=a, code=E_TOO_FREQUENT,
                          message="request too frequent", count=1)
        self.write_config([("failed-streams", "failed", "0s")])
        run = self.run_daemon("--once")
        self.assertEqual(run.returncode, 0, run)
        self.assertEqual(self.gw.closed_ids(), [a])
        self.assertEqual(run.reclaims("failed"), [])
        self.assertEqual(run.summaries()[0]["throttled"], "1")

    def test_an_unauthorized_confirmation_is_an_auth_failure(self):
        a = self.gw.add_session("u1", STREAM_FAILED)
        self.gw.add_fault("closesession", "api_error", session_id=a, code=E_INTERNAL, message="internal", count=1)
        self.gw.add_fault("statsession", "http_status", session_id=a, status=401, count=1)
        self.write_config([("failed-streams", "failed", "0s")])
        run = self.run_daemon("--once")
        self.assertTrue(any(l.get("message_id") == AUTH_ID for l in run.logs), run)

    def test_a_tiny_max_rate_does_not_make_an_endless_quiet_cycle(self):
        # max_rate 0.2: one close every 5 s. A cycle waits for its pace no
        # longer than poll_interval, says so, and the next cycle lists again.
        for i in range(6):
            self.gw.add_session("u%d" % i, STREAM_FAILED)
        self.write_config([("failed-streams", "failed", "0s")], poll_interval="2s",
                          gateway_extra="  max_rate: 0.2\n")
        p = self.start_daemon()
        wait_for(lambda: len(self.gw.calls_to("listsessionofuin")) >= 4, timeout=15, what="four cycles")
        run = self.stop_daemon(p)
        self.assertEqual(run.returncode, 0, run)
        self.assertTrue(any(l["level"] == "warning" and "pace" in l["msg"] for l in run.logs), run)
        self.assertGreaterEqual(len(run.summaries()), 3)
