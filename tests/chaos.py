#!/usr/bin/env python3
"""Bounded chaos run: the real daemon against the gateway simulator with a
random fault on about every fourth call, sessions leaking, starting and
vanishing all the time, and a poll interval of a few milliseconds.

Passes when: every due session was closed by the end, no session that was not
due at the moment of its close was closed, RSS and the open file descriptor
count stayed flat, and the daemon exited 0. With --valgrind the daemon runs
under valgrind's memcheck, and any error or leak fails the run.

Prints its figures as one JSON line (and writes them to --report).
Standard library only."""

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gateway_sim  # noqa: E402
from gateway_sim import E_TIMESTAMP, IN_PROGRESS, PREPARING, STREAM_FAILED  # noqa: E402

APPKEY = "e38267c0e86411ebb02aed82acb0ed99"
TOKEN = "chaos-token-" + os.urandom(8).hex()
NEVER_STARTED_AFTER = 0.5   # seconds, the not_started policy's `after`
CYCLE_MSG = "e28e9acd311d441a9e1e0a1a36189eb0"

LIST_FAULTS = [
    dict(kind="http_status", status=500), dict(kind="http_status", status=429, retry_after=0),
    dict(kind="reset"), dict(kind="hang", seconds=0.4), dict(kind="trickle", seconds=0.6),
    dict(kind="truncate"), dict(kind="garbage", body=b"{\"Header\":"), dict(kind="api_error", code=-101000),
    dict(kind="api_error", code=E_TIMESTAMP, message="timestamp expired"), dict(kind="wrong_types"),
    dict(kind="duplicate"), dict(kind="null_sessions"),
]
CALL_FAULTS = [
    dict(kind="http_status", status=502), dict(kind="http_status", status=503, retry_after=0),
    dict(kind="reset"), dict(kind="hang", seconds=0.4), dict(kind="truncate"), dict(kind="garbage", body=b"<"),
    dict(kind="api_error", code=-101000), dict(kind="vanish"),
]


class ChaosGateway(gateway_sim.Gateway):
    def __init__(self, *a, fault_rate, **kw):
        super().__init__(*a, **kw)
        self.fault_rate = fault_rate
        self.faults_on = True
        self.rng = random.Random(int.from_bytes(os.urandom(4), "little"))
        self.first_listed = {}
        self.injected = 0

    def _take_fault(self, endpoint, session_id):
        if not self.faults_on or self.rng.random() >= self.fault_rate:
            return None
        if endpoint == "listsessionofuin":
            if self.rng.random() < 0.01:
                f = dict(kind="huge", megabytes=20)
            else:
                f = dict(self.rng.choice(LIST_FAULTS))
        else:
            f = dict(self.rng.choice(CALL_FAULTS))
        self.injected += 1
        return f

    def _dispatch(self, endpoint, payload, reqid, record, reply):
        out = super()._dispatch(endpoint, payload, reqid, record, reply)
        if endpoint == "listsessionofuin" and record.get("code") == 0:
            now = time.monotonic()
            for sid, s in self.sessions.items():
                if s["SessionStatus"] != gateway_sim.CLOSED:
                    self.first_listed.setdefault(sid, now)
        return out

    def is_due(self, s):
        """The simulator's truth, at the moment of a close (lock held)."""
        if s["UserId"].startswith("vip-"):
            return False
        if s["SessionStatus"] == STREAM_FAILED:
            return True
        if s["SessionStatus"] in (IN_PROGRESS, PREPARING) and s["IsSessionStarted"] is False:
            first = self.first_listed.get(s["SessionId"])
            # The daemon saw it no earlier than the first list that held it.
            return first is not None and time.monotonic() - first >= NEVER_STARTED_AFTER - 0.01
        return False


def churn(gw, stop, rng, counters):
    """Clients: sessions leak, start in time, or end on their own."""
    n = 0
    while not stop.is_set():
        n += 1
        with gw.lock:
            open_now = sum(1 for s in gw.sessions.values() if s["SessionStatus"] != gateway_sim.CLOSED)
        kind = rng.choices(["failed", "zombie", "live", "vip", "starter", "quit"], [3, 3, 2, 1, 3, 2])[0]
        if open_now > 150:
            kind = "quit"   # keep the account at a realistic size
        if kind == "failed":
            gw.add_session("crash-%d" % n, STREAM_FAILED, started=rng.random() < 0.5)
        elif kind == "zombie":
            gw.add_session("zombie-%d" % n, PREPARING, started=False)
        elif kind == "live":
            gw.add_session("web-%d" % n, IN_PROGRESS, started=True)
        elif kind == "vip":
            gw.add_session("vip-%d" % n, STREAM_FAILED, started=False)
        elif kind == "starter":
            sid = gw.add_session("app-%d" % n, PREPARING, started=False)
            # Its client starts it well before never-started could apply.
            delay = rng.uniform(0.0, NEVER_STARTED_AFTER / 4)
            threading.Timer(delay, start_session, (gw, sid)).start()
        else:
            # A client ends its own session (never one that is due: that is the daemon's job).
            with gw.lock:
                mine = [s for s in gw.sessions.values()
                        if s["SessionStatus"] != gateway_sim.CLOSED and not gw.is_due(s)
                        and s["UserId"].split("-")[0] in ("web", "app", "vip")]
                if mine:
                    rng.choice(mine)["SessionStatus"] = gateway_sim.CLOSED
        counters[kind] = counters.get(kind, 0) + 1
        # Keep the store bounded: forget sessions closed a while ago.
        if n % 200 == 0:
            with gw.lock:
                for sid in [k for k, s in gw.sessions.items() if s["SessionStatus"] == gateway_sim.CLOSED]:
                    del gw.sessions[sid]
        stop.wait(0.01)


def start_session(gw, sid):
    with gw.lock:
        s = gw.sessions.get(sid)
        if s and s["SessionStatus"] != gateway_sim.CLOSED:
            s["IsSessionStarted"] = True
            s["SessionStatus"] = IN_PROGRESS


def sample(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            rss = int([l for l in f if l.startswith("VmRSS:")][0].split()[1])
        fds = len(os.listdir("/proc/%d/fd" % pid))
        return rss, fds
    except (OSError, IndexError):
        return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--binary", required=True)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--interval", default="10ms", help="poll_interval")
    ap.add_argument("--fault-rate", type=float, default=0.25)
    ap.add_argument("--valgrind", action="store_true")
    ap.add_argument("--min-cycles", type=int, default=1000)
    ap.add_argument("--no-rss-check", action="store_true",
                    help="for sanitizer builds, whose quarantine grows by design")
    ap.add_argument("--report")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="ivh-chaos-")
    gw = ChaosGateway(APPKEY, TOKEN, fault_rate=args.fault_rate)
    gw.due_check = gw.is_due
    for i in range(60):
        gw.add_session("web-seed-%d" % i, IN_PROGRESS, started=True)
    server = gateway_sim.serve(gw)
    config = os.path.join(work, "policy.yaml")
    with open(config, "w") as f:
        f.write("""gateway:
  url: http://127.0.0.1:%d
  appkey: %s
  timeout: 250ms
  max_parallel: 8
poll_interval: %s
state_file: %s/state.json
protect:
  user_ids: ["vip-*"]
policies:
  - {name: failed-streams, kind: failed, after: 0s}
  - {name: never-started, kind: not_started, after: %dms}
""" % (server.server_address[1], APPKEY, args.interval, work, int(NEVER_STARTED_AFTER * 1000)))

    # -v: a quiet cycle's summary is a debug entry, and every cycle is counted
    cmd = [args.binary, "--config", config, "--log-target", "console", "-v"]
    if args.valgrind:
        cmd = ["valgrind", "--quiet", "--leak-check=full", "--show-leak-kinds=definite,indirect",
               "--errors-for-leak-kinds=definite,indirect", "--error-exitcode=99",
               "--log-file=%s/valgrind.log" % work] + cmd
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "JOURNAL_STREAM")}
    env["IVH_ACCESS_TOKEN"] = TOKEN
    stderr_path = os.path.join(work, "daemon.log")
    stderr = open(stderr_path, "w")
    daemon = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=stderr)

    stop = threading.Event()
    counters = {}
    rng = random.Random(int.from_bytes(os.urandom(4), "little"))
    churner = threading.Thread(target=churn, args=(gw, stop, rng, counters), daemon=True)
    churner.start()
    samples = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < args.seconds and daemon.poll() is None:
        time.sleep(0.5)
        s = sample(daemon.pid)
        if s:
            samples.append(s)
    stop.set()
    churner.join()
    gw.faults_on = False

    # Drain: with faults off, every due session must go within a few seconds.
    def due_left():
        with gw.lock:
            return [s["SessionId"] for s in gw.sessions.values()
                    if s["SessionStatus"] != gateway_sim.CLOSED and gw.is_due(s)]
    deadline = time.monotonic() + (60 if args.valgrind else 20)
    while due_left() and time.monotonic() < deadline and daemon.poll() is None:
        time.sleep(0.2)
    left = due_left()
    if daemon.poll() is None:
        daemon.send_signal(signal.SIGTERM)
    try:
        rc = daemon.wait(timeout=120)
    except subprocess.TimeoutExpired:
        daemon.kill()
        rc = "hung"
    stderr.close()
    server.shutdown()

    with open(stderr_path) as f:
        log = f.read()
    cycles = log.count("message_id=" + CYCLE_MSG)
    failed_cycles = log.count("msg=\"Cycle failed")
    with gw.lock:
        closed = sum(1 for c in gw.calls if c["endpoint"] == "closesession" and c["outcome"] == "closed")
        undue = list(gw.undue_closes)
        calls = len(gw.calls)
    warm = samples[len(samples) // 10:] or samples
    third = max(len(warm) // 3, 1)
    rss_first = statistics.median(s[0] for s in warm[:third]) if warm else 0
    rss_last = statistics.median(s[0] for s in warm[-third:]) if warm else 0
    fd_first = max((s[1] for s in warm[:third]), default=0)
    fd_last = max((s[1] for s in warm[-third:]), default=0)
    figures = {
        "seconds": args.seconds, "valgrind": args.valgrind, "cycles": cycles, "failed_cycles": failed_cycles,
        "gateway_calls": calls, "faults_injected": gw.injected, "sessions_created": sum(counters.values()),
        "closed": closed, "wrongly_closed": len(undue), "due_left_open": len(left),
        "rss_kb_first_third": rss_first, "rss_kb_last_third": rss_last,
        "fds_first_third": fd_first, "fds_last_third": fd_last, "exit_status": rc,
        "token_in_log": TOKEN in log,
    }
    print(json.dumps(figures))
    if args.report:
        with open(args.report, "w") as f:
            json.dump(figures, f, indent=1)

    problems = []
    if rc != 0:
        problems.append("daemon exit status %s" % rc)
        if args.valgrind and os.path.exists(os.path.join(work, "valgrind.log")):
            with open(os.path.join(work, "valgrind.log")) as f:
                sys.stderr.write(f.read()[-6000:])
    if undue:
        problems.append("%d sessions closed that were not due: %s" % (len(undue), undue[:3]))
    if left:
        problems.append("%d due sessions still open: %s" % (len(left), left[:5]))
    if cycles < args.min_cycles:
        problems.append("only %d cycles (wanted at least %d)" % (cycles, args.min_cycles))
    if not args.valgrind and not args.no_rss_check and rss_last > rss_first * 1.25 + 2048:
        problems.append("RSS grew from %d kB to %d kB" % (rss_first, rss_last))
    if fd_last > fd_first + 2:
        problems.append("open fds grew from %d to %d" % (fd_first, fd_last))
    if TOKEN in log or "Sanitizer" in log or "runtime error:" in log:
        problems.append("the log holds the token or a sanitizer report")
    for p in problems:
        print("chaos: FAIL: " + p, file=sys.stderr)
    if problems:
        print("chaos: daemon log kept in " + stderr_path, file=sys.stderr)
        return 1
    print("chaos: PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
