#!/usr/bin/env python3
"""Live demo: the gateway simulator seeded with leaked sessions, and the real
daemon reclaiming them in this terminal. Standard library only."""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
import gateway_sim  # noqa: E402
from gateway_sim import IN_PROGRESS, PREPARING, STREAM_FAILED  # noqa: E402

APPKEY = "e38267c0e86411ebb02aed82acb0ed99"
TOKEN = "demo-token-" + os.urandom(8).hex()

BOLD, DIM, RESET = ("\033[1m", "\033[2m", "\033[0m") if sys.stdout.isatty() else ("", "", "")


def banner(text):
    print("\n%s== %s%s" % (BOLD, text, RESET), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--binary", default=os.path.join(ROOT, "build", "ivh-reclaimd"))
    ap.add_argument("--seconds", type=float, default=20)
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="ivh-demo-")
    gw = gateway_sim.Gateway(APPKEY, TOKEN, latency=0.05)
    healthy = [gw.add_session("web-%d" % i, IN_PROGRESS, True) for i in range(6)]
    vips = [gw.add_session("vip-%d" % i, STREAM_FAILED, False) for i in range(2)]
    for i in range(5):
        gw.add_session("app-crash-%d" % i, STREAM_FAILED, False)
    for i in range(8):
        gw.add_session("zombie-%d" % i, PREPARING, False)
    booths = [gw.add_session("booth-%d" % i, IN_PROGRESS, True) for i in range(4)]
    server = gateway_sim.serve(gw)
    port = server.server_address[1]

    # The booths have been up for three hours (as if the daemon saw them then).
    now_ms = int(time.time() * 1000)
    with open(os.path.join(work, "state.json"), "w") as f:
        json.dump({"version": 1, "first_seen": {b: now_ms - 3 * 3600 * 1000 for b in booths}}, f)
    config = os.path.join(work, "policy.yaml")
    with open(config, "w") as f:
        f.write("""gateway:
  url: http://127.0.0.1:%d
  appkey: %s
  timeout: 5s
  max_parallel: 8
poll_interval: 2s
state_file: %s/state.json
max_closes_per_cycle: 100
protect:
  user_ids: ["vip-*"]
policies:
  - name: failed-streams
    kind: failed
    after: 0s
  - name: never-started
    kind: not_started
    after: 3s
  - name: booth-max-age
    kind: max_age
    after: 2h
    user_ids: ["booth-*"]
""" % (port, APPKEY, work))
    env = dict(os.environ, IVH_ACCESS_TOKEN=TOKEN)
    env.pop("JOURNAL_STREAM", None)

    print("%sSimulated IVH gateway on 127.0.0.1:%d with %d sessions; files in %s%s"
          % (DIM, port, len(gw.sessions), work, RESET))
    banner("ivh-reclaimd --plan  (what would happen, nothing is closed)")
    subprocess.run([args.binary, "--config", config, "--plan"], env=env, check=False)

    banner("ivh-reclaimd  (the daemon, live; Ctrl-C stops it)")
    daemon = subprocess.Popen([args.binary, "--config", config, "--log-target", "console"], env=env)

    def leak_storm():
        time.sleep(args.seconds / 2)
        print("%s>> an app release crashes: 12 more sessions leak%s" % (BOLD, RESET), flush=True)
        for i in range(12):
            gw.add_session("release-42-%d" % i, STREAM_FAILED if i % 2 else PREPARING, False)

    threading.Thread(target=leak_storm, daemon=True).start()
    try:
        deadline = time.monotonic() + args.seconds
        while time.monotonic() < deadline and daemon.poll() is None:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    if daemon.poll() is None:
        daemon.send_signal(signal.SIGTERM)
    rc = daemon.wait(timeout=30)

    closed = set(gw.closed_ids())
    banner("result, as the gateway saw it")
    left = [s for s in gw.sessions.values() if s["SessionStatus"] != gateway_sim.CLOSED]
    print("closesession calls that closed a session: %d" % len(closed))
    print("sessions still open: %d (%s)" % (len(left), ", ".join(sorted(s["UserId"] for s in left))))
    print("healthy sessions touched: %d; protected sessions touched: %d"
          % (len(closed & set(healthy)), len(closed & set(vips))))
    print("TCP connections the daemon opened: %d; calls rejected for bad signatures: %d"
          % (gw.connections, len(gw.rejected_calls())))
    print("daemon exit status: %d" % rc)
    server.shutdown()
    return 0 if rc == 0 and not (closed & (set(healthy) | set(vips))) else 1


if __name__ == "__main__":
    sys.exit(main())
