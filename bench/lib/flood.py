#!/usr/bin/env python3
"""Wrong-key flood for bench/api (stdlib only): ATTACKERS threads, each from its own loopback
source address (127.0.1.N, so that per-address back-off applies per attacker as it would on a
network), send GET /api/v1/sessions with a known tenant name and a random wrong key at RATE
requests/s in all, for SECONDS. Prints one JSON object: requests sent, answers by status, and
the rate achieved. Runs until killed or SECONDS pass.
"""

import argparse
import base64
import http.client
import json
import threading
import time
import urllib.parse
import uuid
from collections import Counter


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--name", required=True, help="a tenant name that exists")
    ap.add_argument("--rate", type=float, default=50.0, help="wrong-key requests/s in all")
    ap.add_argument("--attackers", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=10.0)
    a = ap.parse_args()
    u = urllib.parse.urlparse(a.url)
    statuses = Counter()
    lock = threading.Lock()
    sent = [0]
    end = time.monotonic() + a.seconds
    interval = a.attackers / a.rate

    def attacker(i):
        src = ("127.0.1.%d" % (i + 1), 0)
        nxt = time.monotonic() + interval * i / a.attackers
        while True:
            now = time.monotonic()
            if now >= end:
                return
            if now < nxt:
                time.sleep(min(nxt - now, end - now))
                continue
            nxt += interval
            auth = base64.b64encode(f"{a.name}:{uuid.uuid4()}".encode()).decode()
            try:
                c = http.client.HTTPConnection(u.hostname, u.port, timeout=30, source_address=src)
                c.request("GET", "/api/v1/sessions", headers={"Authorization": "Basic " + auth})
                st = c.getresponse().status
                c.close()
            except OSError as e:
                st = type(e).__name__
            with lock:
                sent[0] += 1
                statuses[str(st)] += 1

    t0 = time.monotonic()
    ts = [threading.Thread(target=attacker, args=(i,), daemon=True) for i in range(a.attackers)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    took = time.monotonic() - t0
    print(json.dumps({"sent": sent[0], "rate": round(sent[0] / took, 1),
                      "statuses": dict(statuses)}))


if __name__ == "__main__":
    main()
