"""Issue 11, item 8: leaks arise through the API, as real clients make them.
A small scripted app creates sessions over HTTP with signed requests, waits
for them to become ready, starts them, and crashes at each step. The daemon
must reclaim exactly the leaks its policies name, and nothing else."""

import json
import time
import urllib.request
import uuid

from harness import APPKEY, TOKEN, DaemonTest, wait_for
from gateway_sim import IN_PROGRESS, PREFIX, STREAM_FAILED, sign


class App:
    """A client of the IVH API, standard library only."""

    def __init__(self, url):
        self.url = url

    def call(self, endpoint, **payload):
        ts = str(int(time.time()))
        query = "appkey=%s&timestamp=%s&signature=%s" % (
            APPKEY, ts, urllib.parse.quote(sign(APPKEY, TOKEN, ts), safe=""))
        payload["ReqId"] = uuid.uuid4().hex
        req = urllib.request.Request(self.url + PREFIX + endpoint + "?" + query,
                                     data=json.dumps({"Header": {}, "Payload": payload}).encode(),
                                     headers={"Content-Type": "application/json;charset=utf-8"})
        with urllib.request.urlopen(req, timeout=5) as r:
            doc = json.loads(r.read())
        return doc["Header"]["Code"], doc["Payload"]

    def create(self, user, fail=False):
        payload = {"VirtualmanProjectId": "proj-1", "UserId": user, "Protocol": "rtmp", "DriverType": 1}
        if fail:
            payload["_SimFail"] = True
        code, p = self.call("createsession", **payload)
        assert code == 0, code
        assert p["SessionStatus"] == 3      # preparing, as documented
        return p["SessionId"]

    def wait_ready(self, sid):
        for _ in range(100):
            code, p = self.call("statsession", SessionId=sid)
            assert code == 0, code
            if p["SessionStatus"] in (1, 4):
                return p["SessionStatus"]
            time.sleep(0.02)
        raise AssertionError("session %s never became ready" % sid)

    def start(self, sid):
        code, _ = self.call("startsession", SessionId=sid)
        return code


class Lifecycle(DaemonTest):
    def test_the_app_crashing_at_each_step_leaks_what_the_policies_reclaim(self):
        app = App(self.url)
        # startsession before the session is ready is refused with 110014.
        early = app.create("early-1")
        self.assertEqual(app.start(early), 110014)

        leaks = {}
        # 1. crash right after create: the cloud makes it ready, nobody starts it.
        leaks["after_create"] = app.create("app-crash-create")
        # 2. crash after it became ready: status 1, IsSessionStarted false.
        sid = app.create("app-crash-ready")
        self.assertEqual(app.wait_ready(sid), IN_PROGRESS)
        leaks["after_ready"] = sid
        # 3. crash after start: a started zombie; only a max_age policy for kiosks takes it.
        sid = app.create("kiosk-crash-start")
        app.wait_ready(sid)
        self.assertEqual(app.start(sid), 0)
        leaks["after_start"] = sid
        # 4. the stream fails.
        sid = app.create("app-failed-stream", fail=True)
        self.assertEqual(app.wait_ready(sid), STREAM_FAILED)
        leaks["failed_stream"] = sid
        # A healthy, started session of a normal user, and one still preparing.
        healthy = app.create("app-healthy")
        app.wait_ready(healthy)
        self.assertEqual(app.start(healthy), 0)

        # The most common real leak arose through the API: status 1, never started.
        for key in ("after_create", "after_ready"):
            wait_for(lambda: self.gw.status_of(leaks[key]) == IN_PROGRESS, what="ready")
            self.assertFalse(self.gw.sessions[leaks[key]]["IsSessionStarted"])

        self.write_config([("failed-streams", "failed", "0s"),
                           ("never-started", "not_started", "1s"),
                           ("kiosk-max-age", "max_age", "2s", ["kiosk-*"])], poll_interval="200ms")
        p = self.start_daemon()
        expected = {leaks["after_create"], leaks["after_ready"], leaks["after_start"], leaks["failed_stream"],
                    early}
        wait_for(lambda: set(self.gw.closed_ids()) == expected, timeout=20, what="every leak reclaimed")
        time.sleep(1.0)
        run = self.stop_daemon(p)
        self.assertEqual(run.returncode, 0, run)
        self.assertEqual(sorted(self.gw.closed_ids()), sorted(expected), "a session closed twice or wrongly")
        self.assertNotEqual(self.gw.status_of(healthy), 2)
        by_policy = {e["session_id"]: e["policy"] for e in run.reclaims("closed")}
        self.assertEqual(by_policy[leaks["failed_stream"]], "failed-streams")
        self.assertEqual(by_policy[leaks["after_create"]], "never-started")
        self.assertEqual(by_policy[leaks["after_ready"]], "never-started")
        self.assertEqual(by_policy[leaks["after_start"]], "kiosk-max-age")
        self.assert_gateway_clean()
