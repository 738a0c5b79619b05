"""One test per fault mode of the gateway. Each asserts the gateway-side
outcome: exactly the due sessions end up closed, eventually, and no other
session is touched; no session is closed on the strength of a bad list."""

import os
import time

from harness import DaemonTest, wait_for
from gateway_sim import E_TIMESTAMP, IN_PROGRESS, PREPARING, STREAM_FAILED

UNDER_ASAN = "ASAN_OPTIONS" in os.environ


class FaultTest(DaemonTest):
    def setUp(self):
        super().setUp()
        self.due = [self.gw.add_session("crash-1", STREAM_FAILED, started=False),
                    self.gw.add_session("crash-2", STREAM_FAILED, started=True)]
        self.keep = [self.gw.add_session("live-1", IN_PROGRESS, started=True),
                     self.gw.add_session("vip-1", STREAM_FAILED, started=False),
                     self.gw.add_session("young-1", PREPARING, started=False)]

    def configure(self, **kw):
        kw.setdefault("poll_interval", "100ms")
        kw.setdefault("timeout", "1s")
        self.write_config([("failed-streams", "failed", "0s"), ("never-started", "not_started", "1d")],
                          protect_users=["vip-*"], **kw)

    def reclaim(self, wait=30, args=(), **kw):
        """Runs the daemon until the due sessions are closed; returns its run."""
        self.configure(**kw)
        p = self.start_daemon(*args)
        wait_for(lambda: set(self.gw.closed_ids()) == set(self.due), timeout=wait,
                 what="the due sessions to be closed")
        time.sleep(0.3)   # a few more cycles: nothing else may happen
        self.proc_status = open("/proc/%d/status" % p.pid).read()
        run = self.stop_daemon(p)
        self.assertEqual(run.returncode, 0, run)
        self.assert_outcome()
        return run

    def assert_outcome(self):
        self.assertCountEqual(self.gw.closed_ids(), self.due)
        touched = {c["session_id"] for c in self.gw.calls if c["endpoint"] in ("closesession", "statsession")}
        self.assertEqual(touched - set(self.due), set(), "sessions no policy selected were touched")
        for s in self.keep:
            self.assertNotEqual(self.gw.status_of(s), 2)
        # No close before the first list that arrived intact (a list with one
        # wrongly typed entry is usable: that entry is skipped).
        calls = self.gw.calls
        first_good = min(i for i, c in enumerate(calls)
                         if c["endpoint"] == "listsessionofuin" and c["code"] == 0
                         and c.get("fault") in (None, "duplicate", "wrong_types"))
        first_close = min(i for i, c in enumerate(calls) if c["endpoint"] == "closesession")
        self.assertGreater(first_close, first_good)
        self.assert_gateway_clean()

    def list_failures(self, run):
        return [l for l in run.logs if l.get("message_id") == "f8e2aad76f6749b7a1433345838414f1"]


class ListFaults(FaultTest):
    def test_http_5xx(self):
        self.gw.add_fault("listsessionofuin", "http_status", status=502, count=3)
        run = self.reclaim()
        self.assertEqual(len(self.list_failures(run)), 3)
        self.assertIn("HTTP status 502", self.list_failures(run)[0]["error"])

    def test_http_429_retry_after_is_honoured(self):
        self.gw.add_fault("listsessionofuin", "http_status", status=429, retry_after=2)
        self.reclaim()
        lists = self.gw.calls_to("listsessionofuin")
        self.assertGreaterEqual(lists[1]["time"] - lists[0]["time"], 1.9,
                                "the next list came before Retry-After (poll_interval is 100ms)")

    def test_connection_reset(self):
        self.gw.add_fault("listsessionofuin", "reset", count=2)
        run = self.reclaim()
        # libcurl may resend once by itself on a reused connection.
        self.assertIn(len(self.list_failures(run)), (1, 2))
        self.assertGreaterEqual(len(self.gw.calls_to("listsessionofuin")), 3)

    def test_response_hangs_past_the_timeout(self):
        self.gw.add_fault("listsessionofuin", "hang", seconds=3)
        run = self.reclaim(timeout="500ms")
        self.assertIn("timed out", self.list_failures(run)[0]["error"])

    def test_slow_trickling_body(self):
        self.gw.add_fault("listsessionofuin", "trickle", seconds=4)
        run = self.reclaim(timeout="800ms")
        self.assertIn("timed out", self.list_failures(run)[0]["error"])

    def test_truncated_json(self):
        self.gw.add_fault("listsessionofuin", "truncate")
        run = self.reclaim()
        self.assertIn("not valid JSON", self.list_failures(run)[0]["error"])

    def test_invalid_json(self):
        self.gw.add_fault("listsessionofuin", "garbage", body=b"<html>502 Bad Gateway</html>")
        run = self.reclaim()
        self.assertIn("not valid JSON", self.list_failures(run)[0]["error"])

    def test_body_larger_than_any_sane_list(self):
        self.gw.add_fault("listsessionofuin", "huge", megabytes=40)
        run = self.reclaim()
        self.assertIn("larger than the size limit", self.list_failures(run)[0]["error"])
        if not UNDER_ASAN:
            hwm_kb = int([l for l in self.proc_status.splitlines() if l.startswith("VmHWM:")][0].split()[1])
            self.assertLess(hwm_kb, 48 * 1024, "peak RSS must stay bounded despite a 40 MB reply")

    def test_header_code_nonzero(self):
        self.gw.add_fault("listsessionofuin", "api_error", code=-101000, message="internal", count=2)
        run = self.reclaim()
        self.assertEqual([l["api_code"] for l in self.list_failures(run)], ["-101000", "-101000"])

    def test_wrong_field_types(self):
        # Issue 11: the entry with a wrong type is skipped (never acted on); the rest is decided.
        self.gw.add_fault("listsessionofuin", "wrong_types")
        run = self.reclaim()
        self.assertEqual(self.list_failures(run), [])
        skipped = [l for l in run.logs if "SessionStatus is not an integer" in l.get("msg", "")]
        self.assertEqual(len(skipped), 1, run)
        self.assertEqual(skipped[0]["level"], "warning")

    def test_duplicate_session_ids(self):
        self.gw.add_fault("listsessionofuin", "duplicate", count=100)
        run = self.reclaim()
        self.assertEqual(len(self.gw.calls_to("closesession")), 2, "each session closed once")
        self.assertTrue(any("more than once" in l["msg"] for l in run.logs))

    def test_sessions_null(self):
        self.gw.add_fault("listsessionofuin", "null_sessions", count=3)
        run = self.reclaim(args=("-v",))   # the quiet cycles' summaries are debug entries
        self.assertEqual([s["listed"] for s in run.summaries()][:3], ["0", "0", "0"])

    def test_clock_skew_rejected_timestamp(self):
        self.gw.clock_offset = 600   # the gateway's clock is 10 minutes ahead
        self.configure()
        p = self.start_daemon()
        wait_for(lambda: len(self.gw.calls_to("listsessionofuin")) >= 3, what="three rejected lists")
        self.assertEqual(self.gw.calls_to("closesession"), [])
        self.assertEqual({c["code"] for c in self.gw.calls}, {E_TIMESTAMP})
        self.gw.clock_offset = 0
        wait_for(lambda: set(self.gw.closed_ids()) == set(self.due), what="closes once the clocks agree")
        run = self.stop_daemon(p)
        self.assertIn("timestamp expired", self.list_failures(run)[0]["error"])
        self.assertCountEqual(self.gw.closed_ids(), self.due)


class CloseFaults(FaultTest):
    def test_http_5xx_then_success(self):
        self.gw.add_fault("closesession", "http_status", status=500, session_id=self.due[0], count=2)
        run = self.reclaim()
        self.assertEqual(len(run.reclaims("failed")), 2)

    def test_429_retry_after_delays_the_retry_and_the_other_closes(self):
        self.gw.add_fault("closesession", "http_status", status=429, retry_after=1, session_id=self.due[0])
        self.reclaim(poll_interval="5s", max_parallel=1)
        closes = [c for c in self.gw.calls_to("closesession") if c["session_id"] == self.due[0]]
        self.assertEqual(len(closes), 2)
        self.assertGreaterEqual(closes[1]["time"] - closes[0]["time"], 0.9)
        other = [c for c in self.gw.calls_to("closesession") if c["session_id"] == self.due[1]][0]
        self.assertGreaterEqual(other["time"] - closes[0]["time"], 0.9, "the pause applies to every close")

    def test_exponential_backoff(self):
        self.gw.add_fault("closesession", "api_error", code=-101000, session_id=self.due[0], count=4)
        self.reclaim(poll_interval="100ms")
        t = [c["time"] for c in self.gw.calls_to("closesession") if c["session_id"] == self.due[0]]
        self.assertEqual(len(t), 5)
        gaps = [b - a for a, b in zip(t, t[1:])]
        # base 100ms doubling, jitter in [50%, 100%]: at least 50, 100, 200, 400 ms
        for k, gap in enumerate(gaps):
            self.assertGreaterEqual(gap, 0.05 * 2 ** k - 0.01, gaps)
        self.assertGreater(gaps[3], gaps[0])

    def test_connection_reset(self):
        self.gw.add_fault("closesession", "reset", session_id=self.due[1])
        run = self.reclaim()
        # On a reused connection libcurl itself sends the request again; on a
        # fresh one the daemon logs a failure and retries later. Either way
        # the session is closed by a second call.
        self.assertLessEqual(len(run.reclaims("failed")), 1)
        self.assertGreaterEqual(len([c for c in self.gw.calls_to("closesession")
                                     if c["session_id"] == self.due[1]]), 2)

    def test_hang_past_the_timeout(self):
        # The gateway closes the session but the answer never comes in time:
        # the daemon counts a failure, and the next list no longer has it.
        self.gw.add_fault("closesession", "hang", seconds=2, session_id=self.due[0])
        run = self.reclaim(timeout="500ms")
        self.assertIn("timed out", run.reclaims("failed")[0]["error"])

    def test_invalid_json(self):
        self.gw.add_fault("closesession", "garbage", body=b"{", session_id=self.due[0])
        run = self.reclaim()
        self.assertIn("not valid JSON", run.reclaims("failed")[0]["error"])


class Recheck(DaemonTest):
    def test_session_started_since_the_list_is_spared(self):
        late = self.gw.add_session("kiosk-1", PREPARING, started=False)
        leaked = self.gw.add_session("kiosk-2", PREPARING, started=False)
        # Between the list and the close, the client of `late` starts it.
        self.gw.add_fault("statsession", "mutate", session_id=late,
                          updates={"IsSessionStarted": True, "SessionStatus": IN_PROGRESS})
        self.write_config([("never-started", "not_started", "0s")])
        run = self.run_daemon("--once")
        self.assertEqual(run.returncode, 0, run)
        self.assertEqual(self.gw.closed_ids(), [leaked])
        skipped = run.reclaims("skipped")
        self.assertEqual([e["session_id"] for e in skipped], [late])
        self.assertIn("no longer applies", skipped[0]["reason"])

    def test_recheck_can_be_turned_off(self):
        self.gw.add_session("kiosk-1", PREPARING, started=False)
        self.write_config([("never-started", "not_started", "0s")], extra="recheck_before_close: false\n")
        run = self.run_daemon("--once")
        self.assertEqual(run.returncode, 0, run)
        self.assertEqual(self.gw.calls_to("statsession"), [])
        self.assertEqual(len(self.gw.closed_ids()), 1)

    def test_failed_streams_are_not_rechecked(self):
        self.gw.add_session("u", STREAM_FAILED)
        self.write_config([("failed-streams", "failed", "0s")])
        self.run_daemon("--once")
        self.assertEqual(self.gw.calls_to("statsession"), [])


class ShareFuse(DaemonTest):
    def setUp(self):
        super().setUp()
        self.live = [self.gw.add_session("kiosk-%d" % i, PREPARING, started=False) for i in range(12)]
        self.failed = self.gw.add_session("crash", STREAM_FAILED)

    def test_trips_on_a_suspicious_share_but_failed_streams_still_go(self):
        self.write_config([("failed-streams", "failed", "0s"), ("never-started", "not_started", "0s")])
        run = self.run_daemon("--once")
        self.assertEqual(run.returncode, 0, run)
        self.assertEqual(self.gw.closed_ids(), [self.failed])
        fuse = [l for l in run.logs if l.get("message_id") == "fdd69b80db994344b2f08dde98cb05ea"]
        self.assertEqual(len(fuse), 1, run)
        self.assertEqual((fuse[0]["due_live"], fuse[0]["live"]), ("12", "12"))
        self.assertEqual(run.summaries()[-1]["fused"], "12")

    def test_configurable(self):
        self.write_config([("failed-streams", "failed", "0s"), ("never-started", "not_started", "0s")],
                          extra="fuse:\n  max_share: 100%\n  min_sessions: 10\n")
        run = self.run_daemon("--once")
        self.assertEqual(run.returncode, 0, run)
        self.assertEqual(len(self.gw.closed_ids()), 13)

    def test_below_min_sessions_is_not_suspicious(self):
        for s in self.live[:4]:
            self.gw.sessions[s]["IsSessionStarted"] = True
            self.gw.sessions[s]["SessionStatus"] = IN_PROGRESS
        # 8 of 12 live are due: above 50 % but not above min_sessions (10).
        self.write_config([("never-started", "not_started", "0s")])
        run = self.run_daemon("--once")
        self.assertEqual(run.returncode, 0, run)
        self.assertEqual(len(self.gw.closed_ids()), 8)
