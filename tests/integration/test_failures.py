"""Failures: a close that fails then succeeds, sessions that vanish, an
unreachable or misbehaving gateway."""

import socket

from harness import DaemonTest, wait_for
from gateway_sim import E_NO_SESSION, IN_PROGRESS, STREAM_FAILED


class CloseFailures(DaemonTest):
    def test_close_that_fails_is_retried_next_cycle(self):
        a = self.gw.add_session("u1", STREAM_FAILED)
        b = self.gw.add_session("u2", STREAM_FAILED)
        self.gw.add_fault("closesession", "http_status", session_id=a, status=502)
        self.write_config([("failed-streams", "failed", "0s")])

        run = self.run_daemon("--once")
        self.assertEqual(run.returncode, 0, run)
        self.assertEqual(self.gw.closed_ids(), [b])
        failed = run.reclaims("failed")
        self.assertEqual([e["session_id"] for e in failed], [a])
        self.assertIn("HTTP status 502", failed[0]["error"])
        self.assertEqual(failed[0]["level"], "warning")
        self.assertEqual(run.summaries()[-1]["failed"], "1")

        run = self.run_daemon("--once")
        self.assertEqual(run.returncode, 0, run)
        self.assertEqual(self.gw.closed_ids(), [b, a])
        self.assertEqual([e["session_id"] for e in run.reclaims("closed")], [a])

    def test_api_error_on_close_then_success_in_daemon_mode(self):
        a = self.gw.add_session("u1", STREAM_FAILED)
        self.gw.add_fault("closesession", "api_error", count=2, code=-101000, message="internal system error")
        self.write_config([("failed-streams", "failed", "0s")], poll_interval="200ms")

        p = self.start_daemon()
        wait_for(lambda: self.gw.closed_ids() == [a], what="the third attempt to close")
        run = self.stop_daemon(p)

        self.assertEqual(run.returncode, 0, run)
        self.assertEqual(len(self.gw.calls_to("closesession")), 3)
        # Each API error was checked with statsession: the session was still live.
        self.assertEqual(len(self.gw.calls_to("statsession")), 2)
        self.assertEqual([e["api_code"] for e in run.reclaims("failed")], ["-101000", "-101000"])
        self.assertEqual(len(run.reclaims("closed")), 1)

    def test_session_gone_before_close_counts_as_already_closed(self):
        a = self.gw.add_session("u1", STREAM_FAILED)
        self.gw.add_fault("closesession", "vanish", session_id=a)
        self.write_config([("failed-streams", "failed", "0s")])

        run = self.run_daemon("--once")

        self.assertEqual(run.returncode, 0, run)
        gone = run.reclaims("already_closed")
        self.assertEqual([e["session_id"] for e in gone], [a], run)
        self.assertEqual(run.reclaims("failed"), [])
        # closesession's 110018 says it all: no extra statsession call.
        self.assertEqual(self.gw.calls_to("closesession")[0]["code"], E_NO_SESSION)
        self.assertEqual(self.gw.calls_to("statsession"), [])
        self.assertEqual(run.summaries()[-1]["already_closed"], "1")

    def test_close_timeout_is_a_failure_not_a_hang(self):
        a = self.gw.add_session("u1", STREAM_FAILED)
        self.gw.add_fault("closesession", "hang", seconds=3)
        self.write_config([("failed-streams", "failed", "0s")], timeout="500ms")
        run = self.run_daemon("--once", timeout=20)
        self.assertEqual(run.returncode, 0, run)
        failed = run.reclaims("failed")
        self.assertEqual([e["session_id"] for e in failed], [a])
        self.assertIn("timed out", failed[0]["error"])


class ListFailures(DaemonTest):
    def test_malformed_list_closes_nothing(self):
        # A reply whose envelope is wrong fails the cycle.
        self.gw.add_session("u1", STREAM_FAILED)
        self.gw.add_fault("listsessionofuin", "garbage", body=b'{"Header": {"Code": 0}, "Payload": {"Sessions": {}}}')
        self.write_config([("failed-streams", "failed", "0s")])
        run = self.run_daemon("--once")
        self.assertEqual(run.returncode, 1, run)
        self.assertEqual(self.gw.calls_to("closesession"), [])
        self.assertIn("malformed response", run.stderr)

    def test_one_bad_entry_is_skipped_the_rest_decided(self):
        # Issue 11: one entry without the documented shape no longer blinds the cycle.
        self.gw.add_fault("listsessionofuin", "garbage", body=(
            b'{"Header": {"Code": 0}, "Payload": {"Sessions": ['
            b'{"SessionId": 5, "UserId": "a", "SessionStatus": 4},'
            b'{"SessionId": "no-user", "SessionStatus": 4},'
            b'{"SessionId": "good", "UserId": "u", "SessionStatus": 4}]}}'))
        self.gw.add_session("u", STREAM_FAILED, session_id="good")
        self.gw.add_session("x", STREAM_FAILED, session_id="no-user")
        self.write_config([("failed-streams", "failed", "0s")])
        run = self.run_daemon("--once")
        self.assertEqual(run.returncode, 0, run)
        self.assertEqual(self.gw.closed_ids(), ["good"])
        self.assertEqual(run.summaries()[0]["malformed"], "2")
        warned = sorted(l["session_id"] for l in run.logs if "never acted on" in l.get("msg", ""))
        self.assertEqual(warned, ["Sessions[0]", "no-user"])

    def test_unreachable_gateway_is_logged_and_retried(self):
        # A port nobody listens on.
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        self.write_config([("failed-streams", "failed", "0s")], url="http://127.0.0.1:%d" % port,
                          poll_interval="200ms")

        p = self.start_daemon()
        wait_for(lambda: len([l for l in self.daemon_log(p)
                              if l.get("message_id") == "f8e2aad76f6749b7a1433345838414f1"]) >= 3,
                 what="three failed cycles")
        self.assertIsNone(p.poll(), "the daemon must keep running")
        run = self.stop_daemon(p)
        self.assertEqual(run.returncode, 0, run)
        self.assertIn("onnect", [l for l in run.logs if l.get("message_id") == "f8e2aad76f6749b7a1433345838414f1"][0]["error"])

    def test_list_recovers_after_failures(self):
        a = self.gw.add_session("u1", STREAM_FAILED)
        self.gw.add_fault("listsessionofuin", "http_status", count=2, status=500)
        self.write_config([("failed-streams", "failed", "0s")], poll_interval="200ms")
        p = self.start_daemon()
        wait_for(lambda: self.gw.closed_ids() == [a], what="the close after two failed lists")
        run = self.stop_daemon(p)
        self.assertEqual(run.returncode, 0, run)
        self.assertGreaterEqual(len([s for s in run.summaries() if s["level"] == "warning"]), 2)
