#!/usr/bin/env python3
"""Throttling benchmark (issue 11): the simulator in rate-limit mode (a token
bucket of RATE calls per second, 100012 beyond it) with N due failed
streams; the daemon runs --once with max_parallel 32, once without and once
with gateway.max_rate: RATE. Reports the time until every session was
closed (target: at most 1.25 x N / RATE), and the share of calls refused
with 100012 (target: at most 5 %). Medians of --repeat runs.

Usage: bench/throttle.py --binary build/ivh-reclaimd [--n 200] [--rate 40]
       [--latency-ms 50] [--repeat 3] [--smoke] [--out FILE]
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

import gateway_sim  # noqa: E402

APPKEY = "e38267c0e86411ebb02aed82acb0ed99"
TOKEN = "f68f2d10ae9e4604b76fb05cf46bccec"


def one_run(binary, n, rate, latency, max_rate):
    work = tempfile.mkdtemp(prefix="ivh-bench-throttle-")
    try:
        gw = gateway_sim.Gateway(APPKEY, TOKEN, latency=latency, rate_limit=rate)
        ids = [gw.add_session("u%d" % i, gateway_sim.STREAM_FAILED) for i in range(n)]
        server = gateway_sim.serve(gw)
        try:
            cfg = os.path.join(work, "policy.yaml")
            with open(cfg, "w") as f:
                f.write("gateway:\n  url: http://127.0.0.1:%d\n  appkey: %s\n  timeout: 10s\n"
                        "  max_parallel: 32\n%s"
                        "poll_interval: 10m\nstate_file: %s/state.json\nmax_closes_per_cycle: 100000\n"
                        "policies:\n  - {name: failed, kind: failed, after: 0s}\n"
                        % (server.server_address[1], APPKEY, "  max_rate: %g\n" % max_rate if max_rate else "",
                           work))
            env = dict(os.environ, IVH_ACCESS_TOKEN=TOKEN)
            start = time.monotonic()
            p = subprocess.run([binary, "--config", cfg, "--once", "--log-target", "console"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=600)
            wall = time.monotonic() - start
            closed = set(gw.closed_ids())
            calls = len(gw.calls)
            refused = len(gw.throttled_calls())
        finally:
            server.shutdown()
            server.server_close()
        if p.returncode != 0 or closed != set(ids):
            raise SystemExit("bench-throttle: rc=%d, %d of %d closed\n%s" % (p.returncode, len(closed), n,
                                                                           p.stderr[-2000:]))
        return {"wall_s": wall, "calls": calls, "refused": refused}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--rate", type=float, default=40)
    ap.add_argument("--latency-ms", type=float, default=50)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--smoke", action="store_true", help="small and quick: N=40, rate 20, one run")
    ap.add_argument("--out")
    a = ap.parse_args()
    if a.smoke:
        a.n, a.rate, a.repeat = 40, 20, 1
    bound = 1.25 * a.n / a.rate
    rows = []
    for max_rate in (None, a.rate):
        runs = [one_run(a.binary, a.n, a.rate, a.latency_ms / 1000.0, max_rate) for _ in range(a.repeat)]
        wall = statistics.median(r["wall_s"] for r in runs)
        share = statistics.median(r["refused"] / r["calls"] for r in runs)
        row = {"max_rate": max_rate, "n": a.n, "rate": a.rate, "wall_s": wall, "bound_s": bound,
               "refused_share": share, "calls": statistics.median(r["calls"] for r in runs),
               "refused": statistics.median(r["refused"] for r in runs), "runs": runs,
               "meets_time": wall <= bound, "meets_refused": share <= 0.05}
        rows.append(row)
        print("| %s | %d | %.2f s (bound %.2f s) | %d of %d calls refused (%.1f %%) |"
              % ("max_rate: %g" % max_rate if max_rate else "no max_rate", a.n, wall, bound, row["refused"],
                 row["calls"], 100 * share), flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
