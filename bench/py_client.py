#!/usr/bin/env python3
"""Baseline 2: the strongest simple alternative. A concurrent client using
only Python's standard library: one list call, then a thread pool of
--parallel workers, each with its own keep-alive connection, closes every
failed session. The token comes from $IVH_ACCESS_TOKEN."""

import argparse
import base64
import hashlib
import hmac
import http.client
import json
import os
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

PREFIX = "/v2/ivh/sessionmanager/sessionmanagerservice/"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--appkey", required=True)
    ap.add_argument("--parallel", type=int, default=32)
    args = ap.parse_args()
    token = os.environ["IVH_ACCESS_TOKEN"].encode()
    host = urllib.parse.urlsplit(args.url)
    local = threading.local()

    def call(endpoint, payload):
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = http.client.HTTPConnection(host.hostname, host.port, timeout=30)
        ts = str(int(time.time()))
        sig = base64.b64encode(hmac.new(token, ("appkey=%s&timestamp=%s" % (args.appkey, ts)).encode(),
                                        hashlib.sha256).digest()).decode()
        path = "%s%s?appkey=%s&timestamp=%s&signature=%s" % (PREFIX, endpoint, args.appkey, ts,
                                                             urllib.parse.quote(sig, safe=""))
        payload = dict(payload, ReqId=os.urandom(16).hex())
        conn.request("POST", path, json.dumps({"Header": {}, "Payload": payload}),
                     {"Content-Type": "application/json;charset=utf-8"})
        resp = conn.getresponse()
        return json.loads(resp.read())

    listing = call("listsessionofuin", {})
    ids = [s["SessionId"] for s in listing["Payload"].get("Sessions") or [] if s["SessionStatus"] == 4]
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        results = list(pool.map(lambda i: call("closesession", {"SessionId": i})["Header"]["Code"], ids))
    failed = sum(1 for r in results if r != 0)
    print(json.dumps({"closed": len(results) - failed, "failed": failed}))


if __name__ == "__main__":
    main()
