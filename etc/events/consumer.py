#!/usr/bin/env python3
"""Example consumer of duffy's event bus (README: "Operating duffy -> Events").

Reads duffy's events from a beanstalkd tube and prints one JSON object per line, in the order
duffy committed them. Standard library only (beanstalkd's protocol is a few text lines).

Delivery is at least once: after a crash of duffy between beanstalkd's INSERTED and its
cursor update, or of this consumer between handling a job and deleting it, an event comes
again. Events arrive in increasing (seq, id) order, so one consumer dedupes by remembering the
last pair it handled (keep it with the data you write, to survive restarts); several consumers
of one tube dedupe by `id`.

    python3 consumer.py --address 127.0.0.1:11300 --tube duffy [--count N]
"""

import argparse
import json
import socket
import sys
import time


class Beanstalk:
    def __init__(self, host, port, timeout=30):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""

    def _line(self):
        while b"\r\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("beanstalkd closed the connection")
            self.buf += data
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line.decode()

    def _exact(self, n):
        while len(self.buf) < n + 2:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("beanstalkd closed the connection")
            self.buf += data
        body, self.buf = self.buf[:n], self.buf[n + 2 :]
        return body

    def cmd(self, text):
        self.sock.sendall(text.encode() + b"\r\n")
        return self._line()

    def reserve(self, timeout):
        reply = self.cmd(f"reserve-with-timeout {timeout}")
        if reply == "TIMED_OUT":
            return None
        kind, job_id, size = reply.split(" ")
        if kind != "RESERVED":
            raise RuntimeError(f"reserve: {reply}")
        return int(job_id), self._exact(int(size))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--address", default="127.0.0.1:11300", help="beanstalkd host:port")
    ap.add_argument("--tube", default="duffy", help="events.beanstalkd.tube of duffy")
    ap.add_argument("--count", type=int, default=0, help="exit after this many events")
    a = ap.parse_args()
    host, _, port = a.address.rpartition(":")
    last = (0, 0)  # (seq, id) of the last event handled
    handled = 0
    while True:
        try:
            bs = Beanstalk(host.strip("[]"), int(port))
            bs.cmd(f"watch {a.tube}")
            bs.cmd("ignore default")
            while True:
                job = bs.reserve(5)
                if job is None:
                    continue
                job_id, body = job
                event = json.loads(body)
                key = (event["seq"], event["id"])
                if key > last:
                    # handle the event here: this example prints it
                    print(json.dumps(event), flush=True)
                    last = key
                    handled += 1
                bs.cmd(f"delete {job_id}")
                if a.count and handled >= a.count:
                    return 0
        except (OSError, ConnectionError) as e:
            print(f"beanstalkd {a.address}: {e}; reconnecting", file=sys.stderr)
            time.sleep(1)


if __name__ == "__main__":
    sys.exit(main())
