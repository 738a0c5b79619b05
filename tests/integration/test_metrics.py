"""The Prometheus textfile: parsed back and checked against what the
gateway recorded. Also SIGUSR1, the sweep on demand."""

import os
import re
import signal
import time

from harness import DaemonTest, wait_for
from gateway_sim import STREAM_FAILED

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$')


def parse_prometheus(text):
    """Returns {(name, frozenset(labels)): value}, checking the text format."""
    samples, typed = {}, {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            typed[name] = kind
            continue
        if line.startswith("#") or not line:
            continue
        m = SAMPLE.match(line)
        assert m, "not a sample line: %r" % line
        name, labels, value = m.groups()
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        assert name in typed or base in typed, "no # TYPE before %s" % name
        lab = frozenset(re.findall(r'(\w+)="([^"]*)"', labels or ""))
        samples[(name, lab)] = float(value)
    return samples


def get(samples, name, account="default", **labels):
    labels["account"] = account
    return samples.get((name, frozenset(labels.items())), 0.0)


class Metrics(DaemonTest):
    def test_metrics_match_the_gateway(self):
        closed = [self.gw.add_session("crash-%d" % i, STREAM_FAILED) for i in range(3)]
        stuck = self.gw.add_session("crash-stuck", STREAM_FAILED)
        self.gw.add_session("live", 1, started=True)
        self.gw.add_fault("closesession", "http_status", status=500, session_id=stuck)
        path = os.path.join(self.dir, "ivh.prom")
        self.write_config([("failed-streams", "failed", "0s")], extra="metrics_file: %s\n" % path)

        run = self.run_daemon("--once")
        self.assertEqual(run.returncode, 0, run)
        with open(path) as f:
            m = parse_prometheus(f.read())

        self.assertEqual(get(m, "ivh_reclaims_total", policy="failed-streams", outcome="closed"), 3)
        self.assertEqual(get(m, "ivh_reclaims_total", policy="failed-streams", outcome="failed"), 1)
        self.assertEqual(get(m, "ivh_sessions_listed", status="4"), 4)
        self.assertEqual(get(m, "ivh_sessions_listed", status="1"), 1)
        closes = self.gw.calls_to("closesession")
        self.assertEqual(get(m, "ivh_api_calls_total", endpoint="closesession", result="ok"),
                         len([c for c in closes if c["code"] == 0]))
        self.assertEqual(get(m, "ivh_api_calls_total", endpoint="closesession", result="http_error"), 1)
        self.assertEqual(get(m, "ivh_api_calls_total", endpoint="listsessionofuin", result="ok"),
                         len(self.gw.calls_to("listsessionofuin")))
        # The histogram is cumulative and ends with +Inf = count.
        count = get(m, "ivh_api_latency_seconds_count", endpoint="closesession")
        self.assertEqual(count, len(closes))
        self.assertEqual(get(m, "ivh_api_latency_seconds_bucket", endpoint="closesession", le="+Inf"), count)
        buckets = sorted((float(dict(k[1])["le"]), v) for k, v in m.items()
                         if k[0] == "ivh_api_latency_seconds_bucket" and dict(k[1]).get("endpoint") == "closesession"
                         and dict(k[1])["le"] != "+Inf")
        self.assertEqual([v for _, v in buckets], sorted(v for _, v in buckets))
        self.assertAlmostEqual(get(m, "ivh_last_successful_poll_timestamp_seconds"), time.time(), delta=30)
        self.assertEqual(get(m, "ivh_cycles_total", result="ok"), 1)
        self.assertEqual(get(m, "ivh_state_file_writes_total", result="ok"), 1)
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o644)
        self.assertEqual([n for n in os.listdir(self.dir) if n.startswith("ivh.prom.")], [])

    def test_failed_polls_keep_the_last_success(self):
        path = os.path.join(self.dir, "ivh.prom")
        self.write_config([("failed-streams", "failed", "0s")], extra="metrics_file: %s\n" % path,
                          poll_interval="100ms")
        p = self.start_daemon()
        wait_for(lambda: os.path.exists(path), what="the metrics file")
        with open(path) as f:
            first = get(parse_prometheus(f.read()), "ivh_last_successful_poll_timestamp_seconds")
        self.gw.add_fault("listsessionofuin", "http_status", status=503, count=1000)
        wait_for(lambda: get(parse_prometheus(open(path).read()), "ivh_cycles_total", result="list_failed") >= 3,
                 what="three failed polls in the metrics")
        self.stop_daemon(p)
        with open(path) as f:
            m = parse_prometheus(f.read())
        self.assertGreaterEqual(get(m, "ivh_last_successful_poll_timestamp_seconds"), first)
        self.assertLess(get(m, "ivh_last_successful_poll_timestamp_seconds"), time.time() - 0.2)
        # 503 means "slow down": counted as throttled (issue 11).
        self.assertGreaterEqual(get(m, "ivh_api_calls_total", endpoint="listsessionofuin", result="throttled"), 3)


class Pace(DaemonTest):
    """Issue 24: the pace is visible in the metrics and the journal, and an
    operator can check it against the throttled calls."""

    def run_once(self, n, *args):
        """n due sessions, 50 ms per call, one --once run; returns the run,
        its wall time and its metrics, after checking every session closed."""
        self.gw.latency = 0.05
        ids = [self.gw.add_session("u%d" % i, STREAM_FAILED) for i in range(n)]
        path = os.path.join(self.dir, "ivh.prom")
        self.write_config([("failed-streams", "failed", "0s")],
                          extra="metrics_file: %s\nmax_closes_per_cycle: 1000\n" % path,
                          poll_interval="10m", max_parallel=32, timeout="5s")
        start = time.monotonic()
        run = self.run_daemon("--once", *args)
        took = time.monotonic() - start
        self.assertEqual(run.returncode, 0, run)
        self.assertEqual(sorted(self.gw.closed_ids()), sorted(ids))
        with open(path) as f:
            return run, took, parse_prometheus(f.read())

    def test_the_pace_shows_what_the_gateway_accepts(self):
        self.gw.rate_limit = 10           # 10 calls/s, one second of burst
        run, _, m = self.run_once(60, "-v")
        refused = len(self.gw.throttled_calls())
        self.assertEqual(get(m, "ivh_api_calls_total", endpoint="closesession", result="throttled"), refused)
        self.assertLessEqual(refused, 0.15 * len(self.gw.calls), "at most 15 % of the calls refused")
        self.assertGreaterEqual(get(m, "ivh_pace_cuts_total"), 1)
        pace = get(m, "ivh_pace_calls_per_second")
        self.assertTrue(1 <= pace <= 12, "the pace settles at the gateway's 10 calls/s: %r" % pace)
        cuts = [l["msg"] for l in run.logs if "the pace is now" in l.get("msg", "")]
        self.assertEqual(len(cuts), get(m, "ivh_pace_cuts_total"), "every cut logged once")

    def test_random_refusals_do_not_bring_the_pace_down(self):
        self.gw.random_refusal = 0.1      # 1 close in 10, at any rate
        _, took, m = self.run_once(200)
        self.assertLess(took, 200 / 30.0, "at least 30 closes a second")
        self.assertGreaterEqual(get(m, "ivh_pace_cuts_undone_total"), 1, "the refusals were taken as noise")


class QuietCycles(DaemonTest):
    """A cycle that changes nothing is counted in the metrics, not logged at
    info: the journal gets a summary when something was decided or changed."""

    CYCLE = "e28e9acd311d441a9e1e0a1a36189eb0"

    def test_quiet_cycles_are_counted_not_logged(self):
        self.gw.add_session("live", 1, started=True)
        path = os.path.join(self.dir, "ivh.prom")
        self.write_config([("failed-streams", "failed", "0s")], extra="metrics_file: %s\n" % path,
                          poll_interval="100ms")
        p = self.start_daemon()

        def cycles():
            try:
                return get(parse_prometheus(open(path).read()), "ivh_cycles_total", result="ok")
            except FileNotFoundError:
                return 0
        wait_for(lambda: cycles() >= 6, what="six cycles")
        leaked = self.gw.add_session("crash", STREAM_FAILED)
        wait_for(lambda: self.gw.closed_ids() == [leaked], what="the failed stream to be closed")
        n = len([l for l in self.daemon_log(p) if l.get("message_id") == self.CYCLE])
        wait_for(lambda: cycles() >= 12, what="six more cycles")
        run = self.stop_daemon(p)
        self.assertEqual(run.returncode, 0, run)
        summaries = run.summaries()
        # The first cycle, the one that closed, and the one after it (due went
        # from 1 to 0); every other cycle was quiet.
        self.assertEqual([(s["level"], s["listed"], s["closed"]) for s in summaries],
                         [("info", "1", "0"), ("info", "2", "1"), ("info", "1", "0")], run)
        self.assertLessEqual(n, 3)
        self.assertEqual(summaries[1]["due"], "1")

    def test_verbose_logs_every_summary_quiet_ones_at_debug(self):
        self.gw.add_session("live", 1, started=True)
        self.write_config([("failed-streams", "failed", "0s")], poll_interval="100ms")
        p = self.start_daemon("-v")
        wait_for(lambda: len([l for l in self.daemon_log(p) if l.get("message_id") == self.CYCLE]) >= 4,
                 what="four cycle summaries")
        run = self.stop_daemon(p)
        levels = [s["level"] for s in run.summaries()]
        self.assertEqual(levels[0], "info")
        self.assertEqual(set(levels[1:]), {"debug"}, run)

    def test_a_reload_logs_the_next_summary(self):
        self.gw.add_session("live", 1, started=True)
        self.write_config([("failed-streams", "failed", "0s")], poll_interval="100ms")
        p = self.start_daemon()
        wait_for(lambda: len(self.gw.calls_to("listsessionofuin")) >= 4, what="four cycles")
        p.send_signal(signal.SIGHUP)
        wait_for(lambda: any("now in effect" in l.get("msg", "") for l in self.daemon_log(p)),
                 what="the reload")
        n = len(self.gw.calls_to("listsessionofuin"))
        wait_for(lambda: len(self.gw.calls_to("listsessionofuin")) >= n + 3, what="three more cycles")
        run = self.stop_daemon(p)
        self.assertEqual(len(run.summaries()), 2, run)


class Sweep(DaemonTest):
    def test_sigusr1_runs_a_cycle_now(self):
        self.write_config([("failed-streams", "failed", "0s")], poll_interval="1h")
        p = self.start_daemon()
        wait_for(lambda: len(self.gw.calls_to("listsessionofuin")) == 1, what="the first cycle")
        wait_for(lambda: any(l.get("message_id") == "e28e9acd311d441a9e1e0a1a36189eb0" for l in self.daemon_log(p)),
                 what="the first cycle to end")
        leaked = self.gw.add_session("crash", STREAM_FAILED)
        p.send_signal(signal.SIGUSR1)
        wait_for(lambda: self.gw.closed_ids() == [leaked], timeout=10, what="the sweep to close the session")
        run = self.stop_daemon(p)
        self.assertEqual(run.returncode, 0, run)
        self.assertEqual(len(self.gw.calls_to("listsessionofuin")), 2)
        self.assertTrue(any("Sweep requested" in l["msg"] for l in run.logs))
