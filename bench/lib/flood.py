#!/usr/bin/env python3
"""Wrong-key flood for bench/api (stdlib only): an open-loop load of RATE requests/s in all,
GET /api/v1/sessions with a known tenant name and a random wrong key, spread round-robin over
ATTACKERS loopback source addresses (127.0.1.N, so that per-address back-off applies per
attacker as it would on a network). Open loop: each request is sent on schedule on its own
connection whether or not earlier ones were answered (a real attacker does not wait for
bcrypt), at most MAX_IN_FLIGHT at once. Prints one JSON object: requests sent, the rate
achieved, answers by status (or the error's name), and how many were skipped because
MAX_IN_FLIGHT requests were still unanswered.
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
    ap.add_argument("--max-in-flight", type=int, default=400)
    a = ap.parse_args()
    u = urllib.parse.urlparse(a.url)
    statuses = Counter()
    lock = threading.Lock()
    sent = [0]
    skipped = [0]
    slots = threading.BoundedSemaphore(a.max_in_flight)

    def one(i):
        src = ("127.0.1.%d" % (i % a.attackers + 1), 0)
        auth = base64.b64encode(f"{a.name}:{uuid.uuid4()}".encode()).decode()
        try:
            c = http.client.HTTPConnection(u.hostname, u.port, timeout=60, source_address=src)
            c.request("GET", "/api/v1/sessions", headers={"Authorization": "Basic " + auth})
            st = c.getresponse().status
            c.close()
        except OSError as e:
            st = type(e).__name__
        finally:
            slots.release()
        with lock:
            statuses[str(st)] += 1

    t0 = time.monotonic()
    end = t0 + a.seconds
    threads = []
    i = 0
    while True:
        due = t0 + i / a.rate
        now = time.monotonic()
        if due >= end:
            break
        if due > now:
            time.sleep(due - now)
        if slots.acquire(blocking=False):
            t = threading.Thread(target=one, args=(i,), daemon=True)
            t.start()
            threads.append(t)
            sent[0] += 1
        else:
            skipped[0] += 1
        i += 1
    took = time.monotonic() - t0
    for t in threads:
        t.join(timeout=max(0.0, 60 - (time.monotonic() - end)))
    if skipped[0]:
        statuses["skipped"] = skipped[0]
    print(json.dumps({"sent": sent[0], "rate": round(sent[0] / took, 1), "skipped": skipped[0],
                      "statuses": dict(statuses)}))


if __name__ == "__main__":
    main()
