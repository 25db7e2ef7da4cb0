#!/usr/bin/env python3
"""Idle-connection and slowloris load for bench/api (stdlib only), issue 12: CONNS connections
that connect and never send a byte, plus SLOWLORIS clients that trickle a request head one header
line every second, all held for SECONDS while wrk measures a normal request beside them.

Connections are spread over loopback source addresses 127.0.2.N (one address has only ~28 000
ephemeral ports and a server may count per address). The process raises its own open-file limit
to the hard limit. Prints one JSON object: how many connections were opened, how many failed to
open, and how many of each kind the server had closed by the end of the hold (an idle timeout
shorter than the hold closes them: that is the defence working, not an error).
"""

import argparse
import json
import resource
import select
import socket
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--conns", type=int, default=2000)
    ap.add_argument("--slowloris", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=12.0)
    ap.add_argument("--sources", type=int, default=8)
    a = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = a.conns + a.slowloris + 64
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))

    def connect(i):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.2.%d" % (i % a.sources + 1), 0))
        s.settimeout(10)
        s.connect((a.host, a.port))
        s.setblocking(False)
        return s

    idle, slow, failed = [], [], {}
    for i in range(a.conns):
        try:
            idle.append(connect(i))
        except OSError as e:
            failed[type(e).__name__] = failed.get(type(e).__name__, 0) + 1
    for i in range(a.slowloris):
        try:
            s = connect(a.conns + i)
            s.send(b"GET /api/v1/pools HTTP/1.1\r\nHost: bench\r\n")
            slow.append(s)
        except OSError as e:
            failed[type(e).__name__] = failed.get(type(e).__name__, 0) + 1

    closed = {"idle": 0, "slowloris": 0}
    kind = {s.fileno(): ("idle", s) for s in idle}
    kind.update({s.fileno(): ("slowloris", s) for s in slow})
    poller = select.poll()  # not select(): descriptors above 1024
    for fd in kind:
        poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    end = time.monotonic() + a.seconds
    n = 0
    while time.monotonic() < end:
        for fd, _ in poller.poll(0):
            k, s = kind[fd]
            try:
                data = s.recv(4096)
            except OSError:
                data = b""
            if not data or k == "slowloris":  # closed by the server (a 408 or a close)
                poller.unregister(fd)
                del kind[fd]
                closed[k] += 1
                s.close()
        for fd, (k, s) in list(kind.items()):
            if k != "slowloris":
                continue
            try:
                s.send(b"X-Trickle-%d: x\r\n" % n)
            except OSError:
                poller.unregister(fd)
                del kind[fd]
                closed[k] += 1
                s.close()
        n += 1
        time.sleep(1.0)
    for _, s in kind.values():
        s.close()
    print(json.dumps({"idle_opened": len(idle), "slowloris_opened": len(slow), "open_failed": failed,
                      "idle_closed_by_server": closed["idle"],
                      "slowloris_closed_by_server": closed["slowloris"]}))


if __name__ == "__main__":
    main()
