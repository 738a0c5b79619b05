#!/usr/bin/env python3
"""Pace benchmark (issues 11 and 24): the gateway simulator (in this process,
on loopback) with N due failed streams and a fixed latency per call; the
daemon runs --once with max_parallel 32 and default settings (no
gateway.max_rate). One row per case of issue 24:

  fast-100     100 due, 50 ms per call, no limit       target: <= 2 x the latency bound
  fast-1000    1,000 due, 50 ms per call, no limit     target: <= 1.3 x the latency bound
  limit-50     200 due, 40 calls/s, 50 ms per call     target: <= 1.25 x N/rate + 1 s, <= 5 % refused
  limit-200    200 due, 40 calls/s, 200 ms per call    target: the same
  random-10    200 due, no limit, 1 close in 10 refused at random (100012)
                                                       target: >= 30 closes/s

The latency bound is one list call plus ceil(N / 32) round trips. The rate
limit is a token bucket of 40 calls/s with one second of burst; beyond it,
Code 100012. Time is the daemon's wall time, from its start to its exit
(every due session closed, checked). Each row is the median of --repeat runs;
--binary may be given twice (LABEL=PATH) to put two builds side by side.

Usage: bench/throttle.py --binary [LABEL=]build/ivh-reclaimd [--binary ...]
       [--repeat 5] [--rows fast-100,limit-50] [--smoke] [--out FILE]
"""

import argparse
import json
import math
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
PARALLEL = 32

ROWS = {
    "fast-100": dict(n=100, latency=0.05, rate=None, random=None),
    "fast-1000": dict(n=1000, latency=0.05, rate=None, random=None),
    "limit-50": dict(n=200, latency=0.05, rate=40, random=None),
    "limit-200": dict(n=200, latency=0.2, rate=40, random=None),
    "random-10": dict(n=200, latency=0.05, rate=None, random=0.1),
}


def one_run(binary, row, seed):
    work = tempfile.mkdtemp(prefix="ivh-bench-throttle-")
    try:
        gw = gateway_sim.Gateway(APPKEY, TOKEN, latency=row["latency"], rate_limit=row["rate"],
                                 random_refusal=row["random"], seed=seed)
        ids = [gw.add_session("u%d" % i, gateway_sim.STREAM_FAILED) for i in range(row["n"])]
        server = gateway_sim.serve(gw)
        try:
            cfg = os.path.join(work, "policy.yaml")
            with open(cfg, "w") as f:
                f.write("gateway:\n  url: http://127.0.0.1:%d\n  appkey: %s\n  timeout: 10s\n"
                        "  max_parallel: %d\n"
                        "poll_interval: 10m\nstate_file: %s/state.json\nmax_closes_per_cycle: 100000\n"
                        "policies:\n  - {name: failed, kind: failed, after: 0s}\n"
                        % (server.server_address[1], APPKEY, PARALLEL, work))
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
            raise SystemExit("bench-throttle: rc=%d, %d of %d closed\n%s" % (p.returncode, len(closed), row["n"],
                                                                           p.stderr[-2000:]))
        return {"wall_s": wall, "calls": calls, "refused": refused}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def target(name, row):
    """(what the row is judged on, its bound, the figure's text)"""
    n = row["n"]
    if row["rate"]:
        return "limit", 1.25 * n / row["rate"] + 1.0
    if row["random"]:
        return "closes_per_s", 30.0
    bound = row["latency"] * (1 + math.ceil(n / PARALLEL))
    return "ratio", (2.0 if name == "fast-100" else 1.3), bound


def summarize(name, row, runs):
    wall = statistics.median(r["wall_s"] for r in runs)
    refused = statistics.median(r["refused"] for r in runs)
    calls = statistics.median(r["calls"] for r in runs)
    share = statistics.median(r["refused"] / r["calls"] for r in runs)
    out = {"row": name, "n": row["n"], "latency_ms": row["latency"] * 1000, "rate": row["rate"],
           "random": row["random"], "wall_s": wall, "calls": calls, "refused": refused, "refused_share": share,
           "runs": runs}
    t = target(name, row)
    if t[0] == "ratio":
        out.update(bound_s=t[2], ratio=wall / t[2], meets=wall / t[2] <= t[1],
                   text="%.2f s = %.2fx the bound (%.2f s); target <= %gx" % (wall, wall / t[2], t[2], t[1]))
    elif t[0] == "limit":
        out.update(bound_s=t[1], meets=wall <= t[1] and share <= 0.05,
                   text="%.2f s (bound %.2f s), %d of %d calls refused (%.1f %%)"
                   % (wall, t[1], refused, calls, 100 * share))
    else:
        cps = row["n"] / wall
        out.update(closes_per_s=cps, meets=cps >= t[1],
                   text="%.1f closes/s (%.2f s), %d of %d calls refused; target >= 30"
                   % (cps, wall, refused, calls))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", action="append", required=True, help="[LABEL=]PATH; may be given twice")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--rows", default=",".join(ROWS))
    ap.add_argument("--smoke", action="store_true", help="quick: 40 due at 20 calls/s and 40 at 10 %% random, once")
    ap.add_argument("--out")
    a = ap.parse_args()
    rows = {k: ROWS[k] for k in a.rows.split(",")}
    if a.smoke:
        rows = {"limit-50": dict(n=40, latency=0.05, rate=20, random=None),
                "random-10": dict(n=40, latency=0.05, rate=None, random=0.1)}
        a.repeat = 1
    binaries = [b.split("=", 1) if "=" in b else (os.path.basename(b), b) for b in a.binary]
    results = []
    for name, row in rows.items():
        for label, path in binaries:
            runs = [one_run(path, row, seed) for seed in range(1, a.repeat + 1)]
            s = summarize(name, row, runs)
            s["binary"] = label
            results.append(s)
            print("| %s | %s | %s | %s |" % (name, label, s["text"], "yes" if s["meets"] else "**no**"), flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
