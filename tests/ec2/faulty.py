"""An EC2 endpoint that fails the way AWS does: forwards every request to moto's server, except
the first COUNT RunInstances calls (-1: all of them), which get AWS's error CODE (HTTP 400 for
InsufficientInstanceCapacity, 503 for RequestLimitExceeded, as AWS answers them). Prints one line
per RunInstances call: "RunInstances CODE" or "RunInstances forwarded".

  faulty.py PORT UPSTREAM CODE COUNT
"""
import sys
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT, UPSTREAM, CODE, COUNT = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
STATUS = {"RequestLimitExceeded": 503}.get(CODE, 400)
failed = 0

ERROR = """<?xml version="1.0" encoding="UTF-8"?>
<Response><Errors><Error><Code>{code}</Code><Message>{msg}</Message></Error></Errors><RequestID>5ec2-fault</RequestID></Response>"""
MESSAGES = {
    "InsufficientInstanceCapacity": "We currently do not have sufficient capacity in the Availability Zone you requested.",
    "RequestLimitExceeded": "Request limit exceeded.",
    "InstanceLimitExceeded": "You have requested more instances than your current instance limit allows.",
}


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _forward(self):
        global failed
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if b"Action=RunInstances" in body:
            if COUNT < 0 or failed < COUNT:
                failed += 1
                print(f"RunInstances {CODE}", flush=True)
                data = ERROR.format(code=CODE, msg=MESSAGES.get(CODE, CODE)).encode()
                self.send_response(STATUS)
                self.send_header("Content-Type", "text/xml")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
            print("RunInstances forwarded", flush=True)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
        req = urllib.request.Request(UPSTREAM + self.path, data=body or None, headers=headers, method=self.command)
        try:
            with urllib.request.urlopen(req) as r:
                status, rheaders, data = r.status, r.headers.items(), r.read()
        except urllib.error.HTTPError as e:
            status, rheaders, data = e.code, e.headers.items(), e.read()
        self.send_response(status)
        for k, v in rheaders:
            if k.lower() not in ("content-length", "transfer-encoding", "connection", "date", "server"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _forward


ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
