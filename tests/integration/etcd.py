"""A real 3-member etcd cluster on loopback ports, for the HA tests (Debian
package etcd-server)."""

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request

ETCD = shutil.which("etcd") or "/usr/bin/etcd"


def free_ports(n):
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


class Cluster:
    def __init__(self, size=3, pki=None):
        """pki (tests/pki.py): clients speak TLS and must show a certificate."""
        self.pki = pki
        self.scheme = "https" if pki else "http"
        self.dir = tempfile.mkdtemp(prefix="ivh-etcd-")
        ports = free_ports(2 * size)
        self.members = []
        for i in range(size):
            self.members.append({"name": "m%d" % i, "client": ports[2 * i], "peer": ports[2 * i + 1],
                                 "proc": None})
        self.initial = ",".join("%s=http://127.0.0.1:%d" % (m["name"], m["peer"]) for m in self.members)
        try:
            for m in self.members:
                self.start(m)
            self.wait_healthy()
        except BaseException:
            self.close()  # no member outlives a cluster that failed to start
            raise

    @property
    def endpoints(self):
        return ["%s://127.0.0.1:%d" % (self.scheme, m["client"]) for m in self.members]

    def start(self, m):
        log = open(os.path.join(self.dir, m["name"] + ".log"), "a")
        m["proc"] = subprocess.Popen(
            [ETCD, "--name", m["name"], "--data-dir", os.path.join(self.dir, m["name"]),
             "--listen-client-urls", "%s://127.0.0.1:%d" % (self.scheme, m["client"]),
             "--advertise-client-urls", "%s://127.0.0.1:%d" % (self.scheme, m["client"]),
             "--listen-peer-urls", "http://127.0.0.1:%d" % m["peer"],
             "--initial-advertise-peer-urls", "http://127.0.0.1:%d" % m["peer"],
             "--initial-cluster", self.initial, "--initial-cluster-state", "new",
             "--initial-cluster-token", os.path.basename(self.dir),
             "--heartbeat-interval", "100", "--election-timeout", "1000", *self.tls_args()],
            stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def tls_args(self):
        if not self.pki:
            return []
        return ["--cert-file", self.pki["server_cert"], "--key-file", self.pki["server_key"],
                "--trusted-ca-file", self.pki["ca"], "--client-cert-auth"]

    def stop(self, m):
        if m["proc"] and m["proc"].poll() is None:
            m["proc"].send_signal(signal.SIGKILL)
            m["proc"].wait()

    def post(self, path, body, member=None, timeout=2):
        m = member or next(x for x in self.members if x["proc"] and x["proc"].poll() is None)
        req = urllib.request.Request("%s://127.0.0.1:%d%s" % (self.scheme, m["client"], path),
                                     data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        ctx = None
        if self.pki:
            ctx = ssl.create_default_context(cafile=self.pki["ca"])
            ctx.load_cert_chain(self.pki["client_cert"], self.pki["client_key"])
        with urllib.request.urlopen(req, timeout=timeout, context=ctx) as r:
            return json.loads(r.read())

    def wait_healthy(self, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.post("/v3/kv/range", {"key": "AA=="})  # a linearizable read needs a quorum
                return
            except OSError:
                time.sleep(0.2)
        raise AssertionError("etcd did not become healthy:\n" + self.logs())

    def logs(self):
        out = []
        for m in self.members:
            with open(os.path.join(self.dir, m["name"] + ".log"), errors="replace") as f:
                out.append("--- %s\n%s" % (m["name"], f.read()[-2000:]))
        return "\n".join(out)

    def close(self):
        for m in self.members:
            self.stop(m)
        shutil.rmtree(self.dir, ignore_errors=True)
