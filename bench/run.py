#!/usr/bin/env python3
"""Benchmark harness for ivh-reclaimd (not part of the timed test suite).

Reclaim: the gateway simulator (a separate process) starts with N leaked
sessions (failed streams) and a fixed latency L on every call. One reclaim is
run by each contender, and its wall time, CPU time (user+sys, its children
included) and peak RSS are measured; the daemon, the floor and the Python
client run --repeat times and the tables show medians. The contenders are:
  daemon      ivh-reclaimd --once, max_parallel P
  python      bench/py_client.py: standard-library thread pool of width P
  sequential  bench/seq_close.sh: curl + openssl + jq in a shell loop
  floor       bench/curl_floor.c: N calls through libcurl and nothing else
              (signed URL given, replies not parsed, no logging): the CPU
              floor of any libcurl client making the same calls
  bound       L_list + ceil(N / P) x L
The simulator counts the TCP connections it accepted.

Steady state: the simulator lists N live sessions of which none is due. The
daemon polls every --steady-interval, and the harness measures its CPU time
per cycle and its RSS at the start and at the end of the window.

Usage: bench/run.py --binary build/ivh-reclaimd --floor-binary build/curl-floor
       [--sizes 100,1000,10000] [--repeat 5] [--seq-max 1000]
       [--steady-sizes 1000,5000,10000] [--smoke]
Standard library only; prints Markdown tables and writes --out JSON."""

import argparse
import base64
import hashlib
import hmac
import json
import math
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SIM = os.path.join(ROOT, "tests", "gateway_sim.py")
PY = sys.executable
APPKEY = "e38267c0e86411ebb02aed82acb0ed99"
TOKEN = "bench-" + os.urandom(8).hex()
CYCLE_MSG = "e28e9acd311d441a9e1e0a1a36189eb0"
TIME = "/usr/bin/time"   # GNU time (Debian package "time"), for peak RSS


class Sim:
    def __init__(self, work, sessions, latency_ms):
        self.work = work
        seed = os.path.join(work, "seed.json")
        with open(seed, "w") as f:
            json.dump(sessions, f)
        token_file = os.path.join(work, "token")
        with open(token_file, "w") as f:
            f.write(TOKEN)
        self.port_file = os.path.join(work, "port")
        self.stats_file = os.path.join(work, "stats.json")
        for p in (self.port_file, self.stats_file):
            if os.path.exists(p):
                os.remove(p)
        self.proc = subprocess.Popen([PY, SIM, "--appkey", APPKEY, "--token-file", token_file, "--seed", seed,
                                      "--latency-ms", str(latency_ms), "--port-file", self.port_file,
                                      "--stats-file", self.stats_file], stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not os.path.exists(self.port_file):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("the simulator did not start")
            time.sleep(0.05)
        with open(self.port_file) as f:
            self.url = "http://127.0.0.1:%d" % int(f.read())

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            # The statistics are written before the simulator exits.
            self.proc.kill()
            self.proc.wait()
        with open(self.stats_file) as f:
            return json.load(f)


def leaked(n):
    return [{"UserId": "crash-%d" % i, "SessionId": "leak-%d" % i, "SessionStatus": 4, "IsSessionStarted": False}
            for i in range(n)]


def signed_url(base, endpoint):
    """The URL with appkey, timestamp and signature, as the daemon builds it."""
    ts = str(int(time.time()))
    mac = hmac.new(TOKEN.encode(), ("appkey=%s&timestamp=%s" % (APPKEY, ts)).encode(), hashlib.sha256).digest()
    return "%s/v2/ivh/sessionmanager/sessionmanagerservice/%s?appkey=%s&timestamp=%s&signature=%s" % (
        base, endpoint, APPKEY, ts, urllib.parse.quote(base64.b64encode(mac).decode(), safe=""))


def live(n):
    return [{"UserId": "web-%d" % i, "SessionStatus": 1, "IsSessionStarted": True} for i in range(n)]


def write_config(work, url, parallel, interval="30s"):
    path = os.path.join(work, "policy.yaml")
    state = os.path.join(work, "state.json")
    if os.path.exists(state):
        os.remove(state)
    with open(path, "w") as f:
        f.write("""gateway:
  url: %s
  appkey: %s
  timeout: 60s
  max_parallel: %d
poll_interval: %s
state_file: %s
max_closes_per_cycle: 1000000
policies:
  - {name: failed-streams, kind: failed, after: 0s}
  - {name: never-started, kind: not_started, after: 1d}
""" % (url, APPKEY, parallel, interval, state))
    return path


def measure(cmd, env, work):
    """Runs cmd; returns wall seconds, CPU seconds (children included), peak RSS in kB.

    Peak RSS comes from GNU time, which forks the contender itself: Linux
    carries a process's peak RSS across exec(), so ru_maxrss of a child forked
    straight from this Python process would report Python's size instead of
    the contender's. CPU time comes from wait4() on time, and so includes
    time's own share, under 1 ms."""
    rss_file = os.path.join(work, "maxrss")
    # Output goes to files: a pipe nobody reads would block a chatty child.
    with open(os.path.join(work, "out.log"), "w+") as out, open(os.path.join(work, "err.log"), "w+") as err:
        t0 = time.monotonic()
        p = subprocess.Popen([TIME, "-f", "%M", "-o", rss_file, "--"] + cmd, env=env, stdout=out, stderr=err)
        # wait4 gives this child's own rusage (with its reaped children).
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.monotonic() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        if p.returncode != 0:
            err.seek(0)
            raise RuntimeError("%s exited %d:\n%s" % (cmd[0], p.returncode, err.read()[-2000:]))
    with open(rss_file) as f:
        maxrss_kb = int(f.read().split()[-1])
    return {"wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime, "user_s": ru.ru_utime, "sys_s": ru.ru_stime,
            "maxrss_kb": maxrss_kb}


def median_run(runs):
    """One figure per key: the median over the runs; the runs are kept as samples."""
    m = {k: statistics.median(r[k] for r in runs) for k in ("wall_s", "cpu_s", "user_s", "sys_s", "maxrss_kb")}
    m["connections"] = max(r["connections"] for r in runs)
    m["closed"] = min(r["closed"] for r in runs)
    m["runs"] = len(runs)
    m["samples"] = runs
    return m


def reclaim_bench(args, work, n, contender):
    sim = Sim(work, leaked(n), args.latency_ms)
    env = dict(os.environ, IVH_ACCESS_TOKEN=TOKEN)
    env.pop("JOURNAL_STREAM", None)
    try:
        if contender == "daemon":
            cfg = write_config(work, sim.url, args.parallel)
            r = measure([args.binary, "--config", cfg, "--once", "--log-target", "console"], env, work)
        elif contender == "floor":
            r = measure([args.floor_binary, signed_url(sim.url, "closesession"), str(n), str(args.parallel),
                         "leak-"], env, work)
        elif contender == "python":
            r = measure([PY, os.path.join(HERE, "py_client.py"), "--url", sim.url, "--appkey", APPKEY,
                         "--parallel", str(args.parallel)], env, work)
        else:
            r = measure(["bash", os.path.join(HERE, "seq_close.sh"), sim.url, APPKEY], env, work)
    finally:
        stats = sim.stop()
    if stats["closed"] != n:
        raise RuntimeError("%s closed %d of %d sessions" % (contender, stats["closed"], n))
    r["connections"] = stats["connections"]
    r["closed"] = stats["closed"]
    return r


def proc_cpu_s(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_kb(pid, key="VmRSS"):
    with open("/proc/%d/status" % pid) as f:
        return int([l for l in f if l.startswith(key + ":")][0].split()[1])


def steady_bench(args, work, n):
    sim = Sim(work, live(n), 0)
    env = dict(os.environ, IVH_ACCESS_TOKEN=TOKEN)
    env.pop("JOURNAL_STREAM", None)
    cfg = write_config(work, sim.url, args.parallel, interval=args.steady_interval)
    log_path = os.path.join(work, "steady.log")
    log = open(log_path, "w")
    # -v: the idle cycles' summaries are debug entries, and each one is counted
    p = subprocess.Popen([args.binary, "--config", cfg, "--log-target", "console", "-v"], env=env,
                         stdout=subprocess.DEVNULL, stderr=log)

    def cycles():
        with open(log_path) as f:
            return f.read().count("message_id=" + CYCLE_MSG)

    try:
        while cycles() < args.steady_warmup:
            if p.poll() is not None:
                raise RuntimeError("the daemon exited")
            time.sleep(0.05)
        c0, cpu0, rss0 = cycles(), proc_cpu_s(p.pid), proc_rss_kb(p.pid)
        rss_samples = []
        while cycles() < c0 + args.steady_cycles:
            time.sleep(0.2)
            rss_samples.append(proc_rss_kb(p.pid))
        c1, cpu1, rss1 = cycles(), proc_cpu_s(p.pid), proc_rss_kb(p.pid)
        hwm = proc_rss_kb(p.pid, "VmHWM")
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=60)
        log.close()
        sim.stop()
    with open(log_path) as f:
        durations = [int(l.split("duration_ms=")[1].split()[0]) for l in f if "duration_ms=" in l]
    return {"n": n, "cycles": c1 - c0, "cpu_ms_per_cycle": (cpu1 - cpu0) * 1000 / (c1 - c0),
            "rss_kb_start": rss0, "rss_kb_end": rss1, "rss_kb_max_sampled": max(rss_samples + [rss1]),
            "vm_hwm_kb": hwm, "cycle_wall_ms_median": statistics.median(durations[args.steady_warmup:] or durations)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--binary", default=os.path.join(ROOT, "build", "ivh-reclaimd"))
    ap.add_argument("--sizes", default="100,1000,10000")
    ap.add_argument("--floor-binary", default=os.path.join(ROOT, "build", "curl-floor"))
    ap.add_argument("--latency-ms", type=float, default=50)
    ap.add_argument("--parallel", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=5,
                    help="runs of the daemon, the floor and the Python client per N; tables show medians")
    ap.add_argument("--seq-max", type=int, default=1000,
                    help="run the sequential loop up to this N; above it, extrapolate from the largest run")
    ap.add_argument("--steady-sizes", default="1000,5000,10000")
    ap.add_argument("--steady-interval", default="200ms")
    ap.add_argument("--steady-warmup", type=int, default=5)
    ap.add_argument("--steady-cycles", type=int, default=50)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, for CI: proves the harness runs")
    ap.add_argument("--out", default="bench-results.json")
    args = ap.parse_args()
    if args.smoke:
        args.sizes, args.latency_ms, args.seq_max, args.repeat = "50", 10, 50, 1
        args.steady_sizes, args.steady_cycles, args.steady_interval = "500", 10, "100ms"
    for tool in ("curl", "openssl", "jq"):
        if not shutil.which(tool):
            sys.exit("bench: %s is needed for the sequential baseline (apt-get install %s)" % (tool, tool))
    if not os.access(TIME, os.X_OK):
        sys.exit("bench: %s is needed to measure peak RSS (apt-get install time)" % TIME)

    work = tempfile.mkdtemp(prefix="ivh-bench-")
    results = {"machine": {"nproc": os.cpu_count(), "uname": os.uname().release},
               "latency_ms": args.latency_ms, "parallel": args.parallel, "repeat": args.repeat, "reclaim": [], "steady": []}
    seq_per_call = None
    for n in [int(x) for x in args.sizes.split(",")]:
        row = {"n": n, "bound_s": (args.latency_ms + math.ceil(n / args.parallel) * args.latency_ms) / 1000}
        for contender in ("daemon", "floor", "python", "sequential"):
            if contender == "sequential" and n > args.seq_max:
                if seq_per_call is None:   # nothing to extrapolate from: run the smallest size first
                    seq_per_call = reclaim_bench(args, work, min(n, 100), "sequential")["wall_s"] / min(n, 100)
                row["sequential"] = {"wall_s": seq_per_call * n, "extrapolated": True}
                continue
            # The sequential loop runs once: at 70 s a run, noise is small next to it.
            runs = 1 if contender == "sequential" else args.repeat
            print("bench: reclaim N=%d with %s, %d run(s) ..." % (n, contender, runs), file=sys.stderr, flush=True)
            row[contender] = median_run([reclaim_bench(args, work, n, contender) for _ in range(runs)])
            if contender == "sequential":
                seq_per_call = row[contender]["wall_s"] / n
        d = row["daemon"]
        row["daemon_vs_bound"] = d["wall_s"] / row["bound_s"]
        row["sequential_vs_daemon"] = row["sequential"]["wall_s"] / d["wall_s"]
        row["python_vs_daemon_wall"] = row["python"]["wall_s"] / d["wall_s"]
        row["daemon_cpu_vs_python_cpu"] = d["cpu_s"] / row["python"]["cpu_s"]
        row["floor_cpu_vs_python_cpu"] = row["floor"]["cpu_s"] / row["python"]["cpu_s"]
        results["reclaim"].append(row)
    for n in [int(x) for x in args.steady_sizes.split(",")]:
        print("bench: steady state N=%d ..." % n, file=sys.stderr, flush=True)
        results["steady"].append(steady_bench(args, work, n))
    shutil.rmtree(work, ignore_errors=True)

    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    print("| N | bound | daemon wall | ×bound | daemon CPU | daemon peak RSS | conns | floor CPU | python wall | "
          "python CPU | python peak RSS | daemon CPU / python CPU | floor CPU / python CPU | sequential wall | "
          "sequential / daemon |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results["reclaim"]:
        d, fl, py, sq = r["daemon"], r["floor"], r["python"], r["sequential"]
        print("| %d | %.2f s | %.2f s | %.2f | %.3f s | %.1f MB | %d | %.3f s | %.2f s | %.2f s | %.1f MB | %.3f | %.3f "
              "| %s%.1f s | %.1f× |" % (
                  r["n"], r["bound_s"], d["wall_s"], r["daemon_vs_bound"], d["cpu_s"], d["maxrss_kb"] / 1024,
                  d["connections"], fl["cpu_s"], py["wall_s"], py["cpu_s"], py["maxrss_kb"] / 1024,
                  r["daemon_cpu_vs_python_cpu"], r["floor_cpu_vs_python_cpu"], "~" if sq.get("extrapolated") else "",
                  sq["wall_s"], r["sequential_vs_daemon"]))
    print()
    print("| N live, none due | cycles measured | CPU per cycle | cycle wall (median) | RSS start → end | VmHWM |")
    print("|---|---|---|---|---|---|")
    for s in results["steady"]:
        print("| %d | %d | %.2f ms | %d ms | %.1f → %.1f MB | %.1f MB |" % (
            s["n"], s["cycles"], s["cpu_ms_per_cycle"], s["cycle_wall_ms_median"], s["rss_kb_start"] / 1024,
            s["rss_kb_end"] / 1024, s["vm_hwm_kb"] / 1024))
    return 0


if __name__ == "__main__":
    sys.exit(main())
