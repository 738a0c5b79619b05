#!/usr/bin/env python3
"""A simulator of the IVH session-manager gateway, standard library only.

It behaves as ../shared/ivh-gateway-api.md describes and is no stricter than
the documentation: it checks the signature, the 5-minute timestamp window,
ReqId and the body shape; keeps sessions with their states; answers list,
close, stat, create and start; records every call; counts TCP connections;
and can serve HTTPS with a test CA.

Used in-process by the integration tests (import Gateway, serve()) and as a
program by the demo and the benchmarks (see --help). It answers with the
error codes Tencent publishes (the E_* constants below; see
../shared/ivh-gateway-api.md) and lives the documented session lifecycle:
createsession returns status 3 (preparing), the session becomes 1 (or 4, on
request) by itself after a delay, startsession works only on status 1.
"""

import argparse
import base64
import hashlib
import hmac
import json
import random
import re
import socket
import ssl
import struct
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PREFIX = "/v2/ivh/sessionmanager/sessionmanagerservice/"
ENDPOINTS = ("listsessionofuin", "listsessionofprojectid", "listsessionofassetvk", "closesession",
             "statsession", "createsession", "createsessionbyasset", "startsession")

# The published Header.Code values (Tencent's "Error Code Description" page).
E_PARAM = 100001            # request parameter error
E_UNAUTHORIZED = 100005     # unauthorized operation
E_CONCURRENCY = 100008      # concurrency limit exceeded (on create)
E_TOO_FREQUENT = 100012     # request too frequent
E_ALREADY_CLOSED = 110013   # session already closed
E_NOT_READY = 110014        # session not ready (status must be 1)
E_NO_SESSION = 110018       # session does not exist
E_INTERNAL = -101000        # internal system error
E_STREAM_TIMEOUT = -111004  # stream creation timed out (an ErrorCode in statsession)
E_QUOTA = 100014            # concurrency quota insufficient or expired
E_AVATAR_EXPIRED = 100015   # avatar (image) expired
E_DRIVE_TIMING = 110015     # drive command sent at the wrong time
E_DRIVE_NOT_STARTED = 110016  # drive command on a session that has not started
E_TRTC_ARREARS = 110021     # TRTC account in arrears
E_REPLACED = 110022         # closed because another session was created with the same UserId
E_RESOURCES = -101001       # digital human compute resources insufficient
E_IMAGE_DOWNLOAD = -101002  # image download failed

# No code is published for a bad signature or an expired timestamp: the
# simulator answers "unauthorized operation" for both, and for a malformed
# body "request parameter error". The names below say which check failed.
E_AUTH = E_UNAUTHORIZED
E_TIMESTAMP = E_UNAUTHORIZED
E_BAD_REQUEST = E_PARAM
E_CLOSED = E_ALREADY_CLOSED
E_FAULT = E_INTERNAL

REQID_RE = re.compile(r"^[0-9a-f]{32}$")

IN_PROGRESS, CLOSED, PREPARING, STREAM_FAILED = 1, 2, 3, 4


def sign(appkey, token, timestamp):
    msg = "appkey=%s&timestamp=%s" % (appkey, timestamp)
    mac = hmac.new(token.encode(), msg.encode(), hashlib.sha256).digest()
    return base64.b64encode(mac).decode()


class Gateway:
    """Session store, request validation and the call log. Thread-safe."""

    def __init__(self, appkey, token, latency=0.0, list_closed=False, ready_delay=0.2,
                 rate_limit=None, rate_limit_http=None, auth_failure=None, random_refusal=None,
                 seed=1):
        self.appkey = appkey
        self.token = token
        self.ready_delay = ready_delay    # seconds from create until status 1 (or 4)
        self.max_sessions = None          # purchased concurrency: create answers 100008 beyond it
        # Rate-limit mode: at most rate_limit calls per second (a token bucket
        # with one second of burst); beyond it, Code 100012 in an HTTP 200
        # reply, or HTTP rate_limit_http (429 or 503) when set.
        self.rate_limit = rate_limit
        self.rate_limit_http = rate_limit_http
        self._bucket = None
        # Random-refusal mode: this share of closesession calls is refused
        # with Code 100012 at random (a seeded generator), whatever the rate.
        self.random_refusal = random_refusal
        self._random = random.Random(seed)
        # Auth-failure mode: None, "code" (Code 100005) or an HTTP status (401, 403).
        self.auth_failure = auth_failure
        self.latency = latency            # seconds added to every call
        self.list_closed = list_closed    # also list sessions with status 2
        self.lock = threading.Lock()
        self.sessions = {}                # SessionId -> dict as listed
        self.calls = []                   # one dict per call, in arrival order
        self.faults = []                  # see add_fault()
        self.reqids = set()
        self.connections = 0
        self.open_connections = 0
        self.in_flight = {}               # endpoint -> current
        self.max_in_flight = {}           # endpoint -> highest seen
        self.next_id = 1
        self.clock_offset = 0.0           # seconds added to the simulator's clock (skew)
        self.due_check = None             # callable(session) -> bool, see closes_of_undue()
        self.undue_closes = []            # closes of sessions due_check refused
        # The five fields of the Chinese listsessionofuin page (product 1240,
        # page 100393); the English page omits them, and so does a gateway
        # with owner_fields False.
        self.owner_fields = True
        # The cloud closes sessions on its own (pages 1211/62111, 62117): a
        # started session whose long connection sent no heartbeat and no
        # drive command is disconnected after 3 minutes and closed after 10.
        # time_scale speeds that clock up for tests (60: a minute a second).
        self.idle_disconnect_s = 180.0
        self.idle_close_s = 600.0
        self.time_scale = 1.0
        self.idle_closed = []             # SessionIds the idle rule closed

    # -- state -------------------------------------------------------------
    def add_session(self, user_id, status=IN_PROGRESS, started=True, session_id=None,
                    driver_type=1, project_id="proj-1", asset_vk=None, **extra):
        with self.lock:
            if session_id is None:
                session_id = self._new_id()
            s = {"UserId": user_id, "SessionId": session_id, "SessionStatus": status,
                 "DriverType": driver_type, "IsSessionStarted": started,
                 "_project": None if asset_vk else project_id, "_asset": asset_vk,
                 "_active_at": time.time()}
            if status == STREAM_FAILED:
                s["_error"] = (E_STREAM_TIMEOUT, "stream creation timed out")
            if status == IN_PROGRESS:
                s["PlayStreamAddr"] = "rtmp://live.example/live/%s" % session_id
            s.update(extra)
            self.sessions[session_id] = s
            return session_id

    @staticmethod
    def _owner_fields(s):
        """What the Chinese page lists per session: made from a project
        (CreateType 0) or from a personal asset (1)."""
        f = {"VirtualmanType": "2d_half_body", "CreateType": 1 if s.get("_asset") else 0,
             "VirtualmanKey": "vk-%s" % s["SessionId"][-6:]}
        if s.get("_asset"):
            f["AssetVirtualmanKey"] = s["_asset"]
        elif s.get("_project"):
            f["VirtualmanProjectId"] = s["_project"]
        return f

    def status_of(self, session_id):
        with self.lock:
            s = self.sessions.get(session_id)
            return s["SessionStatus"] if s else None

    def closed_ids(self):
        """SessionIds that a successful closesession closed, in order."""
        with self.lock:
            return [c["session_id"] for c in self.calls
                    if c["endpoint"] == "closesession" and c["outcome"] == "closed"]

    def calls_to(self, endpoint):
        with self.lock:
            return [c for c in self.calls if c["endpoint"] == endpoint]

    def throttled_calls(self):
        with self.lock:
            return [c for c in self.calls if c.get("throttled")]

    def _new_id(self):
        """A SessionId as the cloud makes them: m and 20 digits, such as
        m14272810838917134688 (in creation order, so they sort by age)."""
        sid = "m%020d" % (14272810838917134688 + self.next_id)
        self.next_id += 1
        return sid

    def touch(self, session_id):
        """A heartbeat or drive command on the session's long connection."""
        with self.lock:
            self.sessions[session_id]["_active_at"] = time.time()

    def _idle_rule(self, s, now):
        """A started session with no activity is disconnected, then closed."""
        if s["SessionStatus"] != IN_PROGRESS or s.get("IsSessionStarted") is not True:
            return
        idle = (now - s.get("_active_at", now)) * self.time_scale
        if idle >= self.idle_close_s:
            s["SessionStatus"] = CLOSED
            s["_closed_by"] = "idle"
            self.idle_closed.append(s["SessionId"])
        elif idle >= self.idle_disconnect_s:
            s["_disconnected"] = True

    def _advance(self):
        """The cloud's own transitions: a preparing session becomes ready (or
        fails) once its delay has passed; an idle started session is closed
        (see _idle_rule). Called with the lock held."""
        now = time.time()
        for s in self.sessions.values():
            self._idle_rule(s, now)
            if s["SessionStatus"] == PREPARING and s.get("_ready_at") is not None and now >= s["_ready_at"]:
                s["SessionStatus"] = s.pop("_ready_status")
                s.pop("_ready_at")
                if s["SessionStatus"] == IN_PROGRESS:
                    s["PlayStreamAddr"] = "rtmp://live.example/live/%s" % s["SessionId"]
                else:
                    s["_error"] = (E_STREAM_TIMEOUT, "stream creation timed out")

    def _rate_limited(self):
        """Takes a token from the bucket; False when the call is over the rate."""
        if not self.rate_limit:
            return False
        now = time.monotonic()
        if self._bucket is None:
            self._bucket = [float(self.rate_limit), now]
        tokens, last = self._bucket
        tokens = min(float(self.rate_limit), tokens + (now - last) * self.rate_limit)
        if tokens < 1.0:
            self._bucket = [tokens, now]
            return True
        self._bucket = [tokens - 1.0, now]
        return False

    def rejected_calls(self):
        with self.lock:
            return [c for c in self.calls if c.get("rejected")]

    def add_fault(self, endpoint, kind, count=1, session_id=None, **params):
        """Makes the next `count` matching calls misbehave.

        kind: "http_status" (status=, retry_after=), "api_error" (code=,
        message=), "hang" (seconds=), "garbage" (body=), "vanish" (the session
        disappears just before the call, as if its client closed it),
        "mutate" (updates=: fields set on the session before the call is
        answered, e.g. a client starting it), "reset" (the connection is
        reset without a response), "trickle" (seconds=: the real response,
        sent a byte at a time over that long), "truncate" (the real response
        cut in half, with a Content-Length that matches the cut),
        "huge" (megabytes=: a valid list padded to that size),
        "duplicate" (the list names every session twice), "null_sessions"
        (the list says "Sessions": null), "no_sessions" (Code 0 and no
        "Sessions" at all), "wrong_types" (the list sends SessionStatus as a
        list).
        """
        with self.lock:
            self.faults.append(dict(endpoint=endpoint, kind=kind, count=count,
                                    session_id=session_id, **params))

    def _take_fault(self, endpoint, session_id):
        for f in self.faults:
            if f["endpoint"] == endpoint and f["count"] > 0 and \
                    (f["session_id"] is None or f["session_id"] == session_id):
                f["count"] -= 1
                return f
        return None

    # -- requests ----------------------------------------------------------
    def handle(self, path, query, headers, body):
        """Returns (http_status, response_bytes, delay_seconds, transport) where
        transport is a dict of extra behaviour for the handler: "headers",
        "reset", "trickle" (seconds)."""
        endpoint = path[len(PREFIX):] if path.startswith(PREFIX) else None
        record = {"endpoint": endpoint or path, "time": time.time(), "session_id": None,
                  "code": None, "outcome": None, "http_status": 200}
        delay = self.latency
        transport = {}

        def reply(code, message="", payload=None, http_status=200, raw=None, rejected=False):
            record["code"] = code
            if rejected:
                record["rejected"] = True
            record["http_status"] = http_status
            if raw is not None:
                return http_status, raw, delay, transport
            # As real replies: a RequestID such as bjed97692a17164350740778646,
            # and Header keys the daemon does not read.
            doc = {"Header": {"Code": code, "Message": message,
                              "RequestID": "bj%025x" % (0xed97692a17164350740778 + len(self.calls)),
                              "SessionID": "", "DialogID": ""},
                   "Payload": payload if payload is not None else {}}
            return http_status, json.dumps(doc).encode(), delay, transport

        with self.lock:
            self.calls.append(record)
            if endpoint not in ENDPOINTS:
                # The gateway answers an unknown path with its JSON envelope.
                return reply(E_PARAM, "unknown action: %s" % path, http_status=404)
            ctype = headers.get("Content-Type", "")
            if not ctype.lower().startswith("application/json"):
                return reply(E_BAD_REQUEST, "Content-Type must be application/json", rejected=True)
            if self.auth_failure is not None:
                record["auth_failure"] = True
                if self.auth_failure == "code":
                    return reply(E_UNAUTHORIZED, "unauthorized operation")
                return reply(None, raw=b'{"error":"unauthorized"}', http_status=self.auth_failure)
            if self._rate_limited() or (self.random_refusal and endpoint == "closesession" and
                                        self._random.random() < self.random_refusal):
                record["throttled"] = True
                if self.rate_limit_http:
                    transport["headers"] = {"Retry-After": "1"}
                    return reply(None, raw=b'{"error":"too many requests"}', http_status=self.rate_limit_http)
                return reply(E_TOO_FREQUENT, "request too frequent")

            q = urllib.parse.parse_qs(query, keep_blank_values=True)
            params = {k: v[0] for k, v in q.items()}
            if any(len(v) != 1 for v in q.values()) or \
                    not {"appkey", "timestamp", "signature"} <= params.keys():
                return reply(E_AUTH, "appkey, timestamp and signature are required", rejected=True)
            if params["appkey"] != self.appkey:
                return reply(E_AUTH, "unknown appkey", rejected=True)
            signed = "&".join("%s=%s" % (k, params[k]) for k in sorted(params) if k != "signature")
            want = base64.b64encode(hmac.new(self.token.encode(), signed.encode(),
                                             hashlib.sha256).digest()).decode()
            if not hmac.compare_digest(want, params["signature"]):
                return reply(E_AUTH, "signature mismatch", rejected=True)
            try:
                ts = int(params["timestamp"])
            except ValueError:
                return reply(E_TIMESTAMP, "timestamp is not a number", rejected=True)
            if abs(time.time() + self.clock_offset - ts) > 300:
                return reply(E_TIMESTAMP, "timestamp expired", rejected=True)

            try:
                doc = json.loads(body)
            except ValueError:
                return reply(E_BAD_REQUEST, "body is not JSON", rejected=True)
            # The documentation allows RequestID and the like in the request
            # Header: any object is accepted.
            if not isinstance(doc, dict) or not isinstance(doc.get("Header"), dict) or \
                    not isinstance(doc.get("Payload"), dict):
                return reply(E_BAD_REQUEST, "body must be {\"Header\": {...}, \"Payload\": {...}}",
                             rejected=True)
            payload = doc["Payload"]
            if isinstance(payload.get("SessionId"), str):
                record["session_id"] = payload["SessionId"]
            reqid = payload.get("ReqId")
            if not isinstance(reqid, str) or not REQID_RE.match(reqid):
                return reply(E_BAD_REQUEST, "ReqId must be 32 lowercase hex digits", rejected=True)
            if reqid in self.reqids:
                return reply(E_BAD_REQUEST, "ReqId already used", rejected=True)
            self.reqids.add(reqid)
            sid = payload.get("SessionId")
            record["session_id"] = sid

            fault = self._take_fault(endpoint, sid)
            post = None
            if fault:
                record["fault"] = fault["kind"]
                if fault["kind"] == "http_status":
                    if fault.get("retry_after") is not None:
                        transport["headers"] = {"Retry-After": str(fault["retry_after"])}
                    return reply(None, raw=b'{"error":"injected"}', http_status=fault["status"])
                if fault["kind"] == "reset":
                    # Dropped before it was processed: a client may send the
                    # same request (same ReqId) again, as libcurl does on a
                    # reused connection that died.
                    self.reqids.discard(reqid)
                    transport["reset"] = True
                    return reply(None, raw=b"", http_status=0)
                if fault["kind"] == "mutate" and sid in self.sessions:
                    self.sessions[sid].update(fault["updates"])
                if fault["kind"] in ("trickle", "truncate", "huge", "duplicate", "null_sessions",
                                     "no_sessions", "wrong_types"):
                    post = fault
                if fault["kind"] == "api_error":
                    record["outcome"] = "error"
                    return reply(fault.get("code", E_FAULT), fault.get("message", "injected error"),
                                 {"ReqId": reqid})
                if fault["kind"] == "hang":
                    delay += fault["seconds"]
                    if endpoint == "closesession":
                        record["outcome"] = "hung"
                        return reply(0, "", {"ReqId": reqid})
                elif fault["kind"] == "garbage":
                    return reply(None, raw=fault.get("body", b"{\"Header\": {\"Co"))
                elif fault["kind"] == "vanish":
                    self.sessions.pop(sid, None)

            status, data, delay, transport = self._dispatch(endpoint, payload, reqid, record, reply)
            if post:
                data = self._spoil(post, data, transport)
            return status, data, delay, transport

    def _spoil(self, fault, data, transport):
        kind = fault["kind"]
        if kind == "trickle":
            transport["trickle"] = fault.get("seconds", 5)
            return data
        if kind == "truncate":
            return data[:len(data) // 2]
        doc = json.loads(data)
        sessions = doc["Payload"].get("Sessions")
        if kind == "huge":
            # A syntactically valid list that no sane gateway would send.
            pad = "x" * 1024
            doc["Payload"]["Padding"] = [pad] * (fault.get("megabytes", 32) * 1024)
        elif kind == "duplicate" and sessions is not None:
            doc["Payload"]["Sessions"] = sessions + [dict(s) for s in sessions]
        elif kind == "null_sessions":
            doc["Payload"]["Sessions"] = None
        elif kind == "no_sessions":
            del doc["Payload"]["Sessions"]
        elif kind == "wrong_types" and sessions:
            sessions[0]["SessionStatus"] = [sessions[0]["SessionStatus"]]
        return json.dumps(doc).encode()

    def _dispatch(self, endpoint, payload, reqid, record, reply):
        self._advance()
        sid = payload.get("SessionId")
        if endpoint in ("listsessionofuin", "listsessionofprojectid", "listsessionofassetvk"):
            project = payload.get("VirtualmanProjectId")
            asset = payload.get("AssetVirtualmanKey")
            if endpoint == "listsessionofprojectid" and not isinstance(project, str):
                return reply(E_PARAM, "VirtualmanProjectId is required", rejected=True)
            if endpoint == "listsessionofassetvk" and not isinstance(asset, str):
                return reply(E_PARAM, "AssetVirtualmanKey is required", rejected=True)
            out = []
            for s in self.sessions.values():
                if s["SessionStatus"] == CLOSED and not self.list_closed:
                    continue
                if endpoint == "listsessionofprojectid" and s["_project"] != project:
                    continue
                if endpoint == "listsessionofassetvk" and s.get("_asset") != asset:
                    continue
                entry = {k: v for k, v in s.items() if not k.startswith("_")}
                if self.owner_fields:
                    entry.update(self._owner_fields(s))
                out.append(entry)
            record["outcome"] = "listed"
            record["listed"] = len(out)
            return reply(0, "", {"ReqId": reqid, "Sessions": out})

        if endpoint in ("createsession", "createsessionbyasset"):
            user = payload.get("UserId")
            scope_key = "VirtualmanProjectId" if endpoint == "createsession" else "AssetVirtualmanKey"
            if not isinstance(user, str) or not isinstance(payload.get(scope_key), str):
                return reply(E_PARAM, "UserId and %s are required" % scope_key, rejected=True)
            # A new session for a UserId closes that user's older one (110022 explains it).
            for s in self.sessions.values():
                if s["UserId"] == user and s["SessionStatus"] != CLOSED:
                    s["SessionStatus"] = CLOSED
                    s["_closed_by"] = "replaced"
            live = sum(1 for s in self.sessions.values() if s["SessionStatus"] != CLOSED)
            if self.max_sessions is not None and live >= self.max_sessions:
                record["outcome"] = "concurrency"
                return reply(E_CONCURRENCY, "concurrency limit exceeded")
            new_id = self._new_id()
            fail = payload.get("_SimFail") is True   # the simulator's own knob: the stream will fail
            self.sessions[new_id] = {"UserId": user, "SessionId": new_id, "SessionStatus": PREPARING,
                                     "DriverType": payload.get("DriverType", 1),
                                     "IsSessionStarted": False,
                                     "_project": payload.get("VirtualmanProjectId"),
                                     "_asset": payload.get("AssetVirtualmanKey"),
                                     "_ready_at": time.time() + self.ready_delay,
                                     "_ready_status": STREAM_FAILED if fail else IN_PROGRESS,
                                     "_active_at": time.time()}
            record["outcome"] = "created"
            record["session_id"] = new_id
            created = {"ReqId": reqid, "SessionId": new_id, "SessionStatus": PREPARING}
            # Replies seen in public client code: a play address while still
            # preparing, and none when the caller pushes to its own CDN.
            if not payload.get("CssCustomPushUrl"):
                created["PlayStreamAddr"] = "rtmp://live.example/live/%s" % new_id
            return reply(0, "", created)

        if not isinstance(sid, str) or not sid:
            return reply(E_PARAM, "SessionId is required", rejected=True)
        s = self.sessions.get(sid)
        if s is None:
            record["outcome"] = "unknown"
            return reply(E_NO_SESSION, "session does not exist")

        if endpoint == "closesession":
            if s["SessionStatus"] == CLOSED:
                record["outcome"] = "already_closed"
                return reply(E_ALREADY_CLOSED, "session already closed")
            if self.due_check is not None and not self.due_check(s):
                self.undue_closes.append(dict(s))
            s["SessionStatus"] = CLOSED
            s.pop("PlayStreamAddr", None)
            s.pop("_ready_at", None)
            record["outcome"] = "closed"
            return reply(0, "", {"ReqId": reqid})
        if endpoint == "statsession":
            record["outcome"] = "stat"
            code, message = s.get("_error", (0, ""))
            return reply(0, "", {"ReqId": reqid, "SessionStatus": s["SessionStatus"],
                                 "PlayStreamAddr": s.get("PlayStreamAddr", ""),
                                 "SpeakStatus": "Error" if code else "Initial",
                                 "IsSessionStarted": s["IsSessionStarted"],
                                 "ErrorCode": code, "ErrorMessage": message})
        # startsession: only on a ready session (status 1)
        if s["SessionStatus"] == CLOSED:
            return reply(E_ALREADY_CLOSED, "session already closed")
        if s["SessionStatus"] != IN_PROGRESS:
            record["outcome"] = "not_ready"
            return reply(E_NOT_READY, "session not ready")
        s["IsSessionStarted"] = True
        s["_active_at"] = time.time()
        record["outcome"] = "started"
        return reply(0, "", {"ReqId": reqid})


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"   # keep-alive, as the real gateway
    server_version = "ivh-gateway-sim"

    def setup(self):
        gw = self.server.gateway
        with gw.lock:
            gw.connections += 1
            gw.open_connections += 1
        # Headers and body go out in two writes: without this, Nagle and the
        # client's delayed ACK add 40 ms to every response.
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(10)
            try:
                self.request.do_handshake()
            except (ssl.SSLError, OSError):
                pass  # the client refused our certificate; reading fails next
        super().setup()

    def finish(self):
        try:
            super().finish()
        finally:
            with self.server.gateway.lock:
                self.server.gateway.open_connections -= 1

    def log_message(self, fmt, *args):
        pass

    def do_POST(self):
        gw = self.server.gateway
        url = urllib.parse.urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        endpoint = url.path[len(PREFIX):]
        with gw.lock:
            gw.in_flight[endpoint] = gw.in_flight.get(endpoint, 0) + 1
            gw.max_in_flight[endpoint] = max(gw.max_in_flight.get(endpoint, 0), gw.in_flight[endpoint])
        try:
            status, data, delay, transport = gw.handle(url.path, url.query, self.headers, body)
            if delay > 0:
                time.sleep(delay)
        finally:
            with gw.lock:
                gw.in_flight[endpoint] -= 1
        try:
            if transport.get("reset"):
                # SO_LINGER 0: close() sends a RST instead of a FIN.
                self.request.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
                return
            self.send_response(status)
            self.send_header("Content-Type", "application/json;charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            for k, v in transport.get("headers", {}).items():
                self.send_header(k, v)
            self.end_headers()
            trickle = transport.get("trickle")
            if trickle:
                step = trickle / max(len(data), 1)
                for i in range(len(data)):
                    self.wfile.write(data[i:i + 1])
                    self.wfile.flush()
                    time.sleep(step)
            else:
                self.wfile.write(data)
        except OSError:
            self.close_connection = True

    do_GET = do_POST


class QuietServer(ThreadingHTTPServer):
    """A threading HTTP server for tests: clients that time out or reset
    are not reported (tests/notify_receiver.py serves with it too)."""
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def handle_error(self, request, client_address):
        # Clients that time out or reset are part of the tests, not errors.
        if isinstance(sys.exc_info()[1], (OSError, ssl.SSLError)):
            return
        super().handle_error(request, client_address)


def serve(gateway, host="127.0.0.1", port=0, cert=None, key=None):
    """Starts serving in a thread. Returns the server; server.server_address[1] is the port."""
    server = QuietServer((host, port), _Handler)
    server.gateway = gateway
    if cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        server.socket = ctx.wrap_socket(server.socket, server_side=True,
                                        do_handshake_on_connect=False)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    return server


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--appkey", required=True)
    ap.add_argument("--token-file", required=True, help="file holding the access token")
    ap.add_argument("--cert")
    ap.add_argument("--key")
    ap.add_argument("--latency-ms", type=float, default=0)
    ap.add_argument("--seed", help="JSON file: a list of {UserId, SessionStatus, IsSessionStarted[, SessionId]}")
    ap.add_argument("--port-file", help="write the port here once listening")
    ap.add_argument("--stats-file", help="on SIGTERM/SIGINT write call statistics here as JSON")
    ap.add_argument("--verbose", action="store_true", help="print every call on stdout")
    ap.add_argument("--rate-limit", type=float, help="rate-limit mode: calls per second; beyond, Code 100012")
    ap.add_argument("--rate-limit-http", type=int, choices=(429, 503),
                    help="with --rate-limit: answer HTTP 429 or 503 instead of Code 100012")
    ap.add_argument("--auth-failure", choices=("code", "401", "403"),
                    help="auth-failure mode: every call answers Code 100005, or that HTTP status")
    ap.add_argument("--ready-delay-ms", type=float, default=200,
                    help="how long a created session stays preparing (status 3)")
    args = ap.parse_args()

    with open(args.token_file) as f:
        token = f.read().strip()
    gw = Gateway(args.appkey, token, latency=args.latency_ms / 1000.0, ready_delay=args.ready_delay_ms / 1000.0,
                 rate_limit=args.rate_limit, rate_limit_http=args.rate_limit_http,
                 auth_failure=None if args.auth_failure is None else
                 ("code" if args.auth_failure == "code" else int(args.auth_failure)))
    if args.seed:
        with open(args.seed) as f:
            for s in json.load(f):
                gw.add_session(s["UserId"], s.get("SessionStatus", IN_PROGRESS),
                               s.get("IsSessionStarted", True), s.get("SessionId"))
    server = serve(gw, port=args.port, cert=args.cert, key=args.key)
    port = server.server_address[1]
    if args.port_file:
        with open(args.port_file + ".tmp", "w") as f:
            f.write("%d\n" % port)
        import os
        os.rename(args.port_file + ".tmp", args.port_file)
    print("gateway simulator listening on %s://127.0.0.1:%d with %d sessions"
          % ("https" if args.cert else "http", port, len(gw.sessions)), flush=True)

    import signal
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    signal.signal(signal.SIGINT, lambda *a: stop.set())
    seen = 0
    while not stop.wait(0.1):
        if args.verbose:
            with gw.lock:
                new, seen = gw.calls[seen:], len(gw.calls)
            for c in new:
                print("gateway: %-16s %-10s code=%s %s" % (c["endpoint"], c["session_id"] or "",
                                                           c["code"], c["outcome"] or ""), flush=True)
    if args.stats_file:
        with gw.lock:
            stats = {"connections": gw.connections, "calls": len(gw.calls),
                     "closed": sum(1 for c in gw.calls if c["outcome"] == "closed"),
                     "max_in_flight": gw.max_in_flight,
                     "throttled": sum(1 for c in gw.calls if c.get("throttled")),
                     "rejected": sum(1 for c in gw.calls if c.get("rejected"))}
        with open(args.stats_file, "w") as f:
            json.dump(stats, f)
    # The server's threads are daemon threads: exiting ends them. No
    # shutdown() handshake, which can wait on a busy serve_forever loop.
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
