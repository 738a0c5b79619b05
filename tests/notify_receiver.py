#!/usr/bin/env python3
"""A webhook receiver for ivh-reclaimd's notify: section, standard library only.

It listens on loopback (HTTP, or HTTPS with a test CA from pki.py), records
every request (path, headers, raw body, parsed JSON, when it came, what it
was answered) and verifies the signature of every request it is given a
secret for:

    X-Ivh-Reclaimd-Timestamp: <unix seconds>
    X-Ivh-Reclaimd-Signature: sha256=<lowercase hex HMAC-SHA256(secret, timestamp + "." + body)>

A request whose signature is missing, malformed or wrong is recorded in
`bad_signatures` (the tests assert that list stays empty); so is a
timestamp more than five minutes away from the receiver's clock.

Its behaviour can be switched while it runs:
    ok()                          answer 200 (or 204: ok(status=204))
    status(n, retry_after=None)   answer n, with a Retry-After header when given
    hang(seconds)                 read the request and answer nothing for that
                                  long (then 200); a mode change before then
                                  closes the connection without an answer
    redirect(location)            answer 302 with Location: location
    refuse()                      close the listening socket and every open
                                  connection: connections are refused
    resume()                      listen again, on the same port, in ok mode

Used in-process by tests/integration/test_notify.py:

    r = Receiver(secret="...")      # or Receiver(secret=None) for format: slack
    r.start()
    ... r.url("/hook") ...
    r.wait_for_events(lambda evs: len(evs) >= 3, timeout=10)
    r.stop()
"""

import hashlib
import hmac
import json
import re
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler

from gateway_sim import QuietServer

SIG_RE = re.compile(r"^sha256=([0-9a-f]{64})$")
TIMESTAMP_RE = re.compile(r"^[0-9]{1,12}$")
REPLAY_WINDOW_S = 300


def signature(secret, timestamp, body):
    """What X-Ivh-Reclaimd-Signature must say for this timestamp and body."""
    if isinstance(secret, str):
        secret = secret.encode()
    if isinstance(timestamp, str):
        timestamp = timestamp.encode()
    return "sha256=" + hmac.new(secret, timestamp + b"." + body, hashlib.sha256).hexdigest()


class Request:
    """One POST (or other method) as received."""

    def __init__(self, method, path, headers, body, received):
        self.method = method
        self.path = path
        self.headers = headers          # an email.message.Message: case-insensitive get()
        self.body = body                # raw bytes
        self.received = received        # time.time() when the whole body had been read
        self.received_mono = time.monotonic()
        self.answered = None            # the HTTP status answered; None: no answer (hang, refused)
        self.json = None
        self.json_error = None
        try:
            self.json = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            self.json_error = str(e)
        self.signature_ok = None        # True/False when verified, None when not (no secret)

    @property
    def delivered(self):
        return self.answered is not None and 200 <= self.answered < 300

    def events(self):
        if isinstance(self.json, dict) and isinstance(self.json.get("events"), list):
            return self.json["events"]
        return []

    def __repr__(self):
        return "Request(%s %s answered=%s, %d bytes, %d events)" % (
            self.method, self.path, self.answered, len(self.body), len(self.events()))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"   # keep-alive, as a real receiver
    server_version = "notify-receiver"

    def setup(self):
        rcv = self.server.receiver
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(10)
            try:
                self.request.do_handshake()
            except (ssl.SSLError, OSError) as e:
                with rcv.lock:
                    rcv.tls_errors.append(repr(e))
        with rcv.lock:
            rcv.connections += 1
            rcv.open_sockets.add(self.request)
        super().setup()

    def finish(self):
        try:
            super().finish()
        finally:
            with self.server.receiver.lock:
                self.server.receiver.open_sockets.discard(self.request)

    def log_message(self, fmt, *args):
        pass

    def _answer(self, status, headers=(), body=b""):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)

    def do_POST(self):
        rcv = self.server.receiver
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        req = Request(self.command, self.path, self.headers, body, time.time())
        rcv._verify(req)
        with rcv.lock:
            rcv.requests.append(req)
            mode, arg, gen = rcv.mode, rcv.mode_arg, rcv.generation
            rcv.cond.notify_all()
        try:
            if mode == "hang":
                # Nothing until the time is up or the test changes the mode.
                deadline = time.monotonic() + arg
                with rcv.lock:
                    while rcv.generation == gen and not rcv.stopping and time.monotonic() < deadline:
                        rcv.cond.wait(min(0.1, max(0.0, deadline - time.monotonic())))
                    abandoned = rcv.generation != gen or rcv.stopping
                if abandoned:
                    # The test moved on: this request never gets an answer
                    # (the connection closes), as if the hang went on.
                    self.close_connection = True
                    try:
                        self.request.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    return
                status, hdrs = 200, ()
            elif mode == "ok":
                status, hdrs = arg, ()
            elif mode == "status":
                status, retry_after = arg
                hdrs = () if retry_after is None else (("Retry-After", str(retry_after)),)
            elif mode == "redirect":
                status, hdrs = 302, (("Location", arg),)
            else:
                status, hdrs = 500, ()
            reply = b"" if status == 204 else b'{"ok": true}' if 200 <= status < 300 else b'{"error": "no"}'
            if reply:
                hdrs = tuple(hdrs) + (("Content-Type", "application/json"),)
            self._answer(status, hdrs, reply)
            with rcv.lock:
                req.answered = status
                rcv.cond.notify_all()
        except OSError:
            self.close_connection = True

    do_PUT = do_POST
    do_GET = do_POST


class Receiver:
    def __init__(self, secret=None, tls=None, host="127.0.0.1"):
        """secret: the notify secret (str or bytes), or None to verify nothing
        (format: slack; then any signature header present is recorded in
        `unexpected_signatures`). tls: None, or a dict from pki.make_pki()."""
        self.secret = secret
        self.tls = tls
        self.host = host
        self.port = 0
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.requests = []              # every Request, in arrival order
        self.bad_signatures = []        # (Request, why)
        self.unexpected_signatures = []  # signature headers when no secret was given
        self.tls_errors = []
        self.connections = 0
        self.open_sockets = set()
        self.mode, self.mode_arg = "ok", 200
        self.generation = 0             # bumped on every mode change (ends a hang)
        self.refusing = False
        self.stopping = False
        self._server = None
        self._thread = None

    # -- lifecycle -----------------------------------------------------------
    def start(self):
        self._listen()
        return self

    def _listen(self):
        last = None
        for _ in range(50):
            try:
                server = QuietServer((self.host, self.port), _Handler)
                break
            except OSError as e:    # the port is briefly in use elsewhere: try again
                last = e
                time.sleep(0.1)
        else:
            raise RuntimeError("cannot listen on %s:%d again: %s" % (self.host, self.port, last))
        server.receiver = self
        if self.tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(self.tls["server_cert"], self.tls["server_key"])
            server.socket = ctx.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()

    def _close_listener(self):
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        self._thread.join(5)
        # Established connections too: a keep-alive connection would
        # otherwise still reach the handler.
        with self.lock:
            socks = list(self.open_sockets)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def stop(self):
        with self.lock:
            self.stopping = True
            self.generation += 1
            self.cond.notify_all()
        self._close_listener()

    def url(self, path="/hook"):
        return "%s://127.0.0.1:%d%s" % ("https" if self.tls else "http", self.port, path)

    # -- modes ---------------------------------------------------------------
    def _set(self, mode, arg):
        with self.lock:
            self.mode, self.mode_arg = mode, arg
            self.generation += 1
            self.cond.notify_all()

    def ok(self, status=200):
        self._set("ok", status)

    def status(self, n, retry_after=None):
        self._set("status", (n, retry_after))

    def hang(self, seconds):
        self._set("hang", seconds)

    def redirect(self, location):
        self._set("redirect", location)

    def refuse(self):
        """Connections are refused until resume()."""
        with self.lock:
            self.refusing = True
            self.generation += 1
            self.cond.notify_all()
        self._close_listener()

    def resume(self):
        """Listens again on the same port, answering 200."""
        with self.lock:
            self.refusing = False
        self._set("ok", 200)
        self._listen()

    # -- verification --------------------------------------------------------
    def _verify(self, req):
        ts = req.headers.get("X-Ivh-Reclaimd-Timestamp")
        sig = req.headers.get("X-Ivh-Reclaimd-Signature")
        if self.secret is None:
            if ts is not None or sig is not None:
                with self.lock:
                    self.unexpected_signatures.append(req)
            return
        why = None
        if ts is None or sig is None:
            why = "missing X-Ivh-Reclaimd-Timestamp or X-Ivh-Reclaimd-Signature"
        elif not TIMESTAMP_RE.match(ts):
            why = "timestamp %r is not unix seconds" % ts
        elif not SIG_RE.match(sig):
            why = "signature %r is not sha256=<64 lowercase hex digits>" % sig
        elif not hmac.compare_digest(sig, signature(self.secret, ts, req.body)):
            why = "signature does not match the body"
        elif abs(time.time() - int(ts)) > REPLAY_WINDOW_S:
            why = "timestamp %s is more than %d s from now" % (ts, REPLAY_WINDOW_S)
        req.signature_ok = why is None
        if why:
            with self.lock:
                self.bad_signatures.append((req, why))

    # -- what was received ---------------------------------------------------
    def all_requests(self, path=None):
        with self.lock:
            return [r for r in self.requests if path is None or r.path == path]

    def delivered_requests(self):
        """Requests answered 2xx: their events count as delivered."""
        with self.lock:
            return [r for r in self.requests if r.delivered]

    def events(self, delivered_only=True):
        """Every event received, flattened, in arrival order. By default only
        those of requests answered 2xx (delivered); delivered_only=False adds
        those of requests answered otherwise or not at all."""
        with self.lock:
            reqs = list(self.requests)
        return [e for r in reqs if r.delivered or not delivered_only for e in r.events()]

    def events_by_type(self, t, delivered_only=True):
        return [e for e in self.events(delivered_only) if e.get("type") == t]

    def ids(self, delivered_only=True):
        return [e.get("id") for e in self.events(delivered_only)]

    def wait_for_events(self, pred, timeout=10.0, what="events", delivered_only=True):
        """Waits until pred(events()) is true; returns the events."""
        deadline = time.monotonic() + timeout
        while True:
            evs = self.events(delivered_only)
            if pred(evs):
                return evs
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("timed out after %.1fs waiting for %s; received %d events in %r"
                                     % (timeout, what, len(evs), self.all_requests()))
            with self.lock:
                self.cond.wait(min(left, 0.1))

    def wait_for_requests(self, pred, timeout=10.0, what="requests"):
        deadline = time.monotonic() + timeout
        while True:
            reqs = self.all_requests()
            if pred(reqs):
                return reqs
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("timed out after %.1fs waiting for %s; got %r" % (timeout, what, reqs))
            with self.lock:
                self.cond.wait(min(left, 0.1))


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser(description="A loopback webhook receiver that prints what it gets.")
    ap.add_argument("--secret-file")
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    secret = None
    if args.secret_file:
        with open(args.secret_file) as f:
            secret = f.read().strip()
    r = Receiver(secret=secret)
    r.port = args.port
    r.start()
    print("listening on %s" % r.url("/"), flush=True)
    seen = 0
    try:
        while True:
            time.sleep(0.2)
            reqs = r.all_requests()
            for q in reqs[seen:]:
                print("%s %s signature_ok=%s %s" % (q.method, q.path, q.signature_ok, q.body.decode(errors="replace")),
                      flush=True)
            seen = len(reqs)
    except KeyboardInterrupt:
        r.stop()
