"""Shared fixtures for the integration tests: a gateway simulator on a free
loopback port, a scratch directory, the policy file, and the real daemon
binary run as a subprocess. Standard library only."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import gateway_sim  # noqa: E402

BINARY = os.environ.get("IVH_RECLAIMD") or os.path.join(HERE, "..", "..", "build", "ivh-reclaimd")
APPKEY = "7d0c6a1e2b9f4c3aa5e8d1f0b2c4e6a8"  # not the documentation's sample, which --check-config refuses
TOKEN = "f68f2d10ae9e4604b76fb05cf46bccec"

LOGFMT_RE = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')


def parse_logfmt(line):
    out = {}
    for key, value in LOGFMT_RE.findall(line):
        if value.startswith('"'):
            value = value[1:-1].encode().decode("unicode_escape")
        out[key] = value
    return out


def wait_for(predicate, timeout=10.0, interval=0.02, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError("timed out after %.1fs waiting for %s" % (timeout, what))


class Run:
    """A finished daemon run: exit code, stdout, stderr lines parsed as logfmt."""

    def __init__(self, returncode, stdout, stderr):
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        self.logs = [parse_logfmt(l) for l in stderr.splitlines() if l.startswith("ts=")]

    def reclaims(self, outcome=None):
        return [l for l in self.logs if l.get("message_id") == "99f9654f605e424185666fe382c90fb6"
                and (outcome is None or l.get("outcome") == outcome)]

    def summaries(self):
        return [l for l in self.logs if l.get("message_id") == "e28e9acd311d441a9e1e0a1a36189eb0"]

    def __repr__(self):
        return "Run(rc=%s)\n--- stdout\n%s--- stderr\n%s" % (self.returncode, self.stdout, self.stderr)


class DaemonTest(unittest.TestCase):
    """Each test gets a fresh simulator, directory and policy file."""

    tls = False
    latency = 0.0

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="ivh-it-")
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)
        self.gw = gateway_sim.Gateway(APPKEY, TOKEN, latency=self.latency)
        cert = key = None
        if self.tls:
            from pki import make_pki  # noqa: E402
            self.pki = make_pki(self.dir)
            cert, key = self.pki["server_cert"], self.pki["server_key"]
        self.server = gateway_sim.serve(self.gw, cert=cert, key=key)
        self.addCleanup(self.server.server_close)
        self.addCleanup(self.server.shutdown)
        self.port = self.server.server_address[1]
        self.url = "%s://127.0.0.1:%d" % ("https" if self.tls else "http", self.port)
        self.state_file = os.path.join(self.dir, "state.json")
        self.config_file = os.path.join(self.dir, "policy.yaml")
        self.procs = []
        self.addCleanup(self._kill_all)

    def _kill_all(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()

    # -- configuration -----------------------------------------------------
    def write_config(self, policies, protect_users=(), protect_sessions=(), extra="", gateway_extra="",
                     poll_interval="300ms", max_parallel=4, timeout="2s", url=None):
        pol = "".join("  - {name: %s, kind: %s, after: %s%s}\n"
                      % (p[0], p[1], p[2], ", user_ids: %s" % json.dumps(p[3]) if len(p) > 3 else "")
                      for p in policies)
        text = ("gateway:\n"
                "  url: %s\n"
                "  appkey: %s\n"
                "  timeout: %s\n"
                "  max_parallel: %d\n"
                "%s"
                "poll_interval: %s\n"
                "state_file: %s\n"
                "protect:\n"
                "  user_ids: %s\n"
                "  session_ids: %s\n"
                "%s"
                "policies:\n%s") % (url or self.url, APPKEY, timeout, max_parallel, gateway_extra,
                                    poll_interval, self.state_file, json.dumps(list(protect_users)),
                                    json.dumps(list(protect_sessions)), extra, pol or "  []\n")
        if not pol:
            text = text.replace("policies:\n  []\n", "policies: []\n")
        with open(self.config_file, "w") as f:
            f.write(text)
        return self.config_file

    def seed_state(self, ages_s):
        """Pretends the daemon first saw these sessions ages_s[id] seconds ago."""
        now_ms = int(time.time() * 1000)
        with open(self.state_file, "w") as f:
            json.dump({"version": 1, "first_seen": {k: now_ms - int(v * 1000) for k, v in ages_s.items()}}, f)

    def read_state(self):
        with open(self.state_file) as f:
            return json.load(f)["first_seen"]

    # -- running the daemon ------------------------------------------------
    def env(self, token=TOKEN):
        env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "NOTIFY_SOCKET",
                                                                "CREDENTIALS_DIRECTORY", "IVH_ACCESS_TOKEN")}
        if token is not None:
            env["IVH_ACCESS_TOKEN"] = token
        return env

    def run_daemon(self, *args, token=TOKEN, timeout=60, env=None):
        p = subprocess.run([BINARY, "--config", self.config_file, "--log-target", "console", *args],
                           env=env or self.env(token), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=timeout, text=True)
        run = Run(p.returncode, p.stdout, p.stderr)
        self.check_output(run)
        return run

    def start_daemon(self, *args, token=TOKEN, env=None):
        out = open(os.path.join(self.dir, "daemon.stderr"), "w+")
        p = subprocess.Popen([BINARY, "--config", self.config_file, "--log-target", "console", *args],
                             env=env or self.env(token), stdout=subprocess.PIPE, stderr=out, text=True)
        p.stderr_file = out
        self.procs.append(p)
        return p

    def stop_daemon(self, p, sig=signal.SIGTERM, timeout=15):
        p.send_signal(sig)
        rc = p.wait(timeout=timeout)
        p.stderr_file.seek(0)
        err = p.stderr_file.read()
        p.stderr_file.close()
        run = Run(rc, p.stdout.read(), err)
        p.stdout.close()
        self.check_output(run)
        return run

    def check_output(self, run):
        """What must hold for every run: no secret, no sanitizer report."""
        self.assertNotIn(TOKEN, run.stdout + run.stderr, "the access token leaked into the output")
        self.assertNotIn("Sanitizer", run.stderr, run)
        self.assertNotIn("runtime error:", run.stderr, run)

    def daemon_log(self, p):
        with open(p.stderr_file.name) as f:
            return [parse_logfmt(l) for l in f.read().splitlines() if l.startswith("ts=")]

    def assert_gateway_clean(self):
        """No call the simulator rejected as badly signed or shaped."""
        self.assertEqual(self.gw.rejected_calls(), [])
