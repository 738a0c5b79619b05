"""Several accounts in one process: each with its own gateway, token source,
policies, state file and timer; a hanging gateway stalls only its own
account; every log entry and metric names its account."""

import json
import os
import time

from harness import DaemonTest, wait_for
import gateway_sim  # noqa: E402 (harness puts it on the path)
from gateway_sim import STREAM_FAILED
from test_metrics import get, parse_prometheus


class Accounts(DaemonTest):
    def setUp(self):
        super().setUp()
        self.gws = {"alpha": self.gw}
        self.tokens = {"alpha": "f68f2d10ae9e4604b76fb05cf46bccec"}
        self.ports = {"alpha": self.port}
        for name in ("beta", "gamma"):
            token = "token-%s-0123456789" % name
            gw = gateway_sim.Gateway("ak-%s" % name, token, latency=5.0 if name == "gamma" else 0.0)
            server = gateway_sim.serve(gw)
            self.addCleanup(server.server_close)
            self.addCleanup(server.shutdown)
            self.gws[name], self.tokens[name], self.ports[name] = gw, token, server.server_address[1]
        self.gws["alpha"].appkey = "ak-alpha"
        with open(os.path.join(self.dir, "beta.token"), "w") as f:
            f.write(self.tokens["beta"])
        os.chmod(os.path.join(self.dir, "beta.token"), 0o600)
        self.metrics = os.path.join(self.dir, "ivh.prom")
        with open(self.config_file, "w") as f:
            f.write("""gateway:
  timeout: 1s
  max_parallel: 4
poll_interval: 200ms
state_file: %(dir)s/state.json
metrics_file: %(metrics)s
protect:
  user_ids: ["vip-*"]
accounts:
  - name: alpha
    appkey: ak-alpha
    url: http://127.0.0.1:%(alpha)d
    policies: [{name: failed-streams, kind: failed, after: 0s}]
  - name: beta
    appkey: ak-beta
    url: http://127.0.0.1:%(beta)d
    accesstoken_file: %(dir)s/beta.token
    project_ids: ["p1"]
    protect: {user_ids: ["beta-keep-*"]}
    policies: [{name: beta-failed, kind: failed, after: 0s}]
  - name: gamma
    appkey: ak-gamma
    url: http://127.0.0.1:%(gamma)d
    policies: [{name: failed-streams, kind: failed, after: 0s}]
""" % dict(dir=self.dir, metrics=self.metrics, **self.ports))

    def env_tokens(self):
        env = self.env(token=None)
        env["IVH_ACCESS_TOKEN_ALPHA"] = self.tokens["alpha"]
        env["IVH_ACCESS_TOKEN_GAMMA"] = self.tokens["gamma"]
        return env

    def test_status_names_every_account_that_cannot_reclaim_and_why(self):
        # Issue 19: with several accounts STATUS= summed the counts and hid
        # the account whose every close was refused.
        from test_systemd import NotifySocket
        notify = NotifySocket(self.dir)
        self.addCleanup(notify.close)
        self.gws["gamma"].latency = 0.0
        for i in range(3):
            self.gws["alpha"].add_session("a%d" % i, STREAM_FAILED)
            self.gws["gamma"].add_session("g%d" % i, STREAM_FAILED)
        self.gws["alpha"].add_fault("closesession", "api_error", count=10 ** 6, code=100012,
                                    message="too frequent")
        self.gws["gamma"].add_fault("closesession", "api_error", count=10 ** 6, code=100005,
                                    message="unauthorized")
        env = dict(self.env_tokens(), NOTIFY_SOCKET=notify.path,
                   IVH_ACCESS_TOKEN_BETA=self.tokens["beta"])
        p = self.start_daemon(env=env)

        def told(msgs):
            status = [m for m in msgs if m.startswith("STATUS=3 accounts")]
            return status and "throttled: alpha" in status[-1] and "credentials refused: gamma" in status[-1]
        notify.wait_for(told, "STATUS= naming alpha as throttled and gamma as refused", timeout=30)
        run = self.stop_daemon(p)
        self.assertEqual(run.returncode, 0, run)
        self.assertEqual(self.gws["alpha"].closed_ids() + self.gws["gamma"].closed_ids(), [])

    def test_a_hanging_gateway_stalls_only_its_account(self):
        g = self.gws
        stuck = g["gamma"].add_session("g1", STREAM_FAILED)
        p = self.start_daemon(env=self.env_tokens())
        wait_for(lambda: len(g["alpha"].calls_to("listsessionofuin")) >= 3 and
                 len(g["beta"].calls_to("listsessionofprojectid")) >= 3, what="alpha and beta cycling")

        # Leaks appear on alpha and beta while gamma's gateway hangs.
        t0 = time.monotonic()
        a1 = g["alpha"].add_session("a1", STREAM_FAILED)
        b1 = g["beta"].add_session("b1", STREAM_FAILED, project_id="p1")
        b_other = g["beta"].add_session("b2", STREAM_FAILED, project_id="p2")
        b_keep = g["beta"].add_session("beta-keep-1", STREAM_FAILED, project_id="p1")
        vip = g["alpha"].add_session("vip-1", STREAM_FAILED)
        wait_for(lambda: g["alpha"].closed_ids() == [a1] and g["beta"].closed_ids() == [b1], timeout=10,
                 what="alpha and beta to reclaim")
        elapsed = time.monotonic() - t0
        wait_for(lambda: os.path.exists(self.metrics) and
                 get(parse_prometheus(open(self.metrics).read()), "ivh_cycles_total", "gamma",
                     result="list_failed") >= 1, what="a failed gamma cycle in the metrics")
        run = self.stop_daemon(p)

        self.assertEqual(run.returncode, 0, run)
        # On time: within a few poll intervals, though every gamma call hangs 5 s.
        self.assertLess(elapsed, 3.0)
        self.assertEqual(g["gamma"].closed_ids(), [])
        self.assertEqual(g["gamma"].status_of(stuck), STREAM_FAILED)
        for s in (b_other, b_keep):
            self.assertEqual(g["beta"].status_of(s), STREAM_FAILED)
        self.assertEqual(g["alpha"].status_of(vip), STREAM_FAILED)
        for name in ("alpha", "beta"):
            self.assertEqual(self.gws[name].rejected_calls(), [])

        # Log entries name their account.
        closed = {l["user_id"]: l for l in run.reclaims("closed")}   # session ids repeat across simulators
        self.assertEqual(closed["a1"]["account"], "alpha")
        self.assertEqual(closed["a1"]["session_id"], a1)
        self.assertEqual(closed["b1"]["account"], "beta")
        self.assertEqual(closed["b1"]["policy"], "beta-failed")
        self.assertTrue(any(l.get("account") == "gamma" and "timed out" in l.get("error", "")
                            for l in run.logs if l.get("message_id") == "f8e2aad76f6749b7a1433345838414f1"))
        for token in self.tokens.values():
            self.assertNotIn(token, run.stderr)

        # One state file per account.
        with open(os.path.join(self.dir, "state.alpha.json")) as f:
            self.assertIn(vip, json.load(f)["first_seen"])
        self.assertTrue(os.path.exists(os.path.join(self.dir, "state.beta.json")))

        m = parse_prometheus(open(self.metrics).read())
        self.assertEqual(get(m, "ivh_reclaims_total", "alpha", policy="failed-streams", outcome="closed"), 1)
        self.assertEqual(get(m, "ivh_reclaims_total", "beta", policy="beta-failed", outcome="closed"), 1)
        self.assertGreaterEqual(get(m, "ivh_api_calls_total", "gamma", endpoint="listsessionofuin",
                                    result="transport_error"), 1)
        self.assertGreater(get(m, "ivh_last_successful_poll_timestamp_seconds", "alpha"), 0)
        self.assertEqual(get(m, "ivh_last_successful_poll_timestamp_seconds", "gamma"), 0)

    def test_once_and_plan_cover_every_account(self):
        self.gws["gamma"].latency = 0
        for name, gw in self.gws.items():
            gw.add_session("%s-crash" % name, STREAM_FAILED, project_id="p1")
        run = self.run_daemon("--plan", env=self.env_tokens())
        self.assertEqual(run.returncode, 0, run)
        for name in ("alpha", "beta", "gamma"):
            self.assertIn("== account %s" % name, run.stdout)
        self.assertEqual(run.stdout.count("1 sessions: 1 to reclaim"), 3)
        run = self.run_daemon("--once", env=self.env_tokens())
        self.assertEqual(run.returncode, 0, run)
        for gw in self.gws.values():
            self.assertEqual(len(gw.closed_ids()), 1)

    def test_a_missing_token_names_the_account(self):
        env = self.env_tokens()
        del env["IVH_ACCESS_TOKEN_GAMMA"]
        run = self.run_daemon("--once", env=env)
        self.assertEqual(run.returncode, 78, run)
        self.assertIn("no access token for account gamma", run.stderr)
        self.assertIn("IVH_ACCESS_TOKEN_GAMMA", run.stderr)
        self.assertIn("accesstoken-gamma", run.stderr)
