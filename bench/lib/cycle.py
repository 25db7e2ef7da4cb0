#!/usr/bin/env python3
"""Session create+retire cycle load generator for bench/api (stdlib only).

N client threads share a fixed budget of cycles. One cycle is
  POST /api/v1/sessions {"nodes_specs": [{"pool": POOL, "quantity": Q}]}   (expects 201)
  PUT  /api/v1/sessions/ID {"active": false}                               (expects 200)
over a keep-alive connection per thread, with HTTP basic auth. A cycle counts as ok when
both answers are the expected ones. A fixed budget (not a fixed duration) makes both servers
consume the same number of nodes. Prints one JSON object on stdout.
"""

import argparse
import base64
import http.client
import json
import math
import threading
import time
import urllib.parse
from collections import Counter


def pct(values, p):
    if not values:
        return None
    v = sorted(values)
    # nearest-rank percentile
    k = max(0, min(len(v) - 1, math.ceil(p / 100.0 * len(v)) - 1))
    return v[k]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True, help="http://127.0.0.1:PORT")
    ap.add_argument("--name", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--pool", required=True)
    ap.add_argument("--quantity", type=int, default=2)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--cycles", type=int, default=200)
    ap.add_argument("--max-seconds", type=float, default=600.0,
                    help="stop taking new cycles after this long")
    ap.add_argument("--timeout", type=float, default=120.0, help="per request")
    a = ap.parse_args()

    u = urllib.parse.urlsplit(a.url)
    host, port = u.hostname, u.port or 80
    auth = "Basic " + base64.b64encode(f"{a.name}:{a.key}".encode()).decode()
    headers = {"Authorization": auth, "Content-Type": "application/json",
               "Accept": "application/json"}
    create_body = json.dumps({"nodes_specs": [{"pool": a.pool, "quantity": a.quantity}]})
    retire_body = json.dumps({"active": False})

    lock = threading.Lock()
    state = {"next": 0}
    create_lat, retire_lat = [], []
    create_status, retire_status = Counter(), Counter()
    errors = Counter()
    ok = [0]
    failed = [0]
    start = time.perf_counter()
    deadline = start + a.max_seconds

    def take():
        with lock:
            if state["next"] >= a.cycles or time.perf_counter() > deadline:
                return False
            state["next"] += 1
            return True

    def request(conn_box, method, path, body):
        """Returns (status, body bytes, seconds); reconnects once on a dropped keep-alive."""
        for attempt in (0, 1):
            if conn_box[0] is None:
                conn_box[0] = http.client.HTTPConnection(host, port, timeout=a.timeout)
            t0 = time.perf_counter()
            try:
                conn_box[0].request(method, path, body=body, headers=headers)
                r = conn_box[0].getresponse()
                data = r.read()
                dt = time.perf_counter() - t0
                if r.getheader("connection", "").lower() == "close":
                    conn_box[0].close()
                    conn_box[0] = None
                return r.status, data, dt
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as e:
                conn_box[0].close()
                conn_box[0] = None
                if attempt == 1:
                    raise
            except Exception:
                conn_box[0].close()
                conn_box[0] = None
                raise

    def worker():
        conn = [None]
        while take():
            cycle_ok = False
            try:
                st, data, dt = request(conn, "POST", "/api/v1/sessions", create_body)
                with lock:
                    create_status[st] += 1
                    create_lat.append(dt)
                if st == 201:
                    sid = json.loads(data)["session"]["id"]
                    st2, _, dt2 = request(conn, "PUT", f"/api/v1/sessions/{sid}", retire_body)
                    with lock:
                        retire_status[st2] += 1
                        retire_lat.append(dt2)
                    cycle_ok = st2 == 200
            except Exception as e:  # timeouts, refused connections, bad JSON
                with lock:
                    errors[type(e).__name__] += 1
            with lock:
                if cycle_ok:
                    ok[0] += 1
                else:
                    failed[0] += 1
        if conn[0] is not None:
            conn[0].close()

    threads = [threading.Thread(target=worker) for _ in range(a.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start

    ms = lambda v: None if v is None else round(v * 1000.0, 2)  # noqa: E731
    print(json.dumps({
        "clients": a.clients,
        "cycles": ok[0] + failed[0],
        "ok": ok[0],
        "failed": failed[0],
        "elapsed_s": round(elapsed, 3),
        "ok_cycles_per_s": round(ok[0] / elapsed, 3) if elapsed > 0 else 0,
        "create_p50_ms": ms(pct(create_lat, 50)),
        "create_p99_ms": ms(pct(create_lat, 99)),
        "retire_p50_ms": ms(pct(retire_lat, 50)),
        "retire_p99_ms": ms(pct(retire_lat, 99)),
        "create_status": {str(k): v for k, v in sorted(create_status.items())},
        "retire_status": {str(k): v for k, v in sorted(retire_status.items())},
        "errors": dict(errors),
    }))


if __name__ == "__main__":
    main()
