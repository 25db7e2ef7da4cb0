#!/usr/bin/env python3
"""The measuring part of bench/ec2 (see its header). Usage: ec2_bench.py REPO"""

import collections
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

REPO = sys.argv[1]
ROUNDS = int(os.environ.get("DUFFY_BENCH_ROUNDS", "5"))
PGURL = os.environ.get("DUFFY_BENCH_PGURL", "postgresql://postgres@127.0.0.1:5432")
EC2 = os.environ["DUFFY_EC2_VENV"]
MOTO = os.environ["DUFFY_MOTO_VENV"]
DUFFY = os.path.join(REPO, "target/release/duffy")
POOL = "virt-ec2-t2-centos-9s-x86_64"
NET = 200


def log(msg):
    print(f"bench/ec2: {msg}", file=sys.stderr, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(host, port, what, timeout=60):
    deadline = time.time() + timeout
    while True:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            if time.time() > deadline:
                sys.exit(f"bench/ec2: {what} did not start")
            time.sleep(0.1)


CALLS = collections.Counter()
CALLS_LOCK = threading.Lock()


def proxy(upstream):
    """An EC2 endpoint forwarding to moto, counting Actions."""

    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            action = "?"
            for part in body.split(b"&"):
                if part.startswith(b"Action="):
                    action = part[7:].decode()
            with CALLS_LOCK:
                CALLS[action] += 1
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
            req = urllib.request.Request(upstream + self.path, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(req) as r:
                    status, rh, data = r.status, r.headers.items(), r.read()
            except urllib.error.HTTPError as e:
                status, rh, data = e.code, e.headers.items(), e.read()
            self.send_response(status)
            for k, v in rh:
                if k.lower() not in ("content-length", "transfer-encoding", "connection", "date", "server"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    port = free_port()
    srv = ThreadingHTTPServer(("127.0.0.1", port), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{port}"


def calls_snapshot():
    with CALLS_LOCK:
        return collections.Counter(CALLS)


def run(*args, **kw):
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw).stdout


def main():
    tmp = tempfile.mkdtemp(prefix="duffy-bench-ec2-")
    procs = []
    db = f"duffy_bench_ec2_{uuid.uuid4().hex[:8]}"
    url = f"{PGURL}/{db}"
    try:
        moto_port = free_port()
        procs.append(subprocess.Popen([os.path.join(MOTO, "bin/moto_server"), "-H", "127.0.0.1", "-p", str(moto_port)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_port("127.0.0.1", moto_port, "moto_server")
        moto = f"http://127.0.0.1:{moto_port}"
        setup = json.loads(run(os.path.join(MOTO, "bin/python"), os.path.join(REPO, "tests/ec2/aws.py"),
                               moto, "us-east-1", "setup", f"127.77.{NET}.0/24"))
        endpoint = proxy(moto)
        # the instances' "boot": a real sshd on their loopback addresses, duffy's key let in
        key = os.path.join(tmp, "duffy_key")
        run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key)
        run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", os.path.join(tmp, "host_key"))
        shutil.copy(key + ".pub", os.path.join(tmp, "authorized_keys"))
        ssh_port = free_port()
        with open(os.path.join(tmp, "sshd_config"), "w") as f:
            f.write(f"Port {ssh_port}\nHostKey {tmp}/host_key\nAuthorizedKeysFile {tmp}/authorized_keys\n"
                    "PermitRootLogin prohibit-password\nPasswordAuthentication no\nUsePAM no\nStrictModes no\n"
                    "PidFile none\nLogLevel ERROR\n")
            for h in range(4, 20):
                f.write(f"ListenAddress 127.77.{NET}.{h}\n")
        os.makedirs("/run/sshd", exist_ok=True)
        procs.append(subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", os.path.join(tmp, "sshd_config")],
                                      stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, "sshd.log"), "w")))
        wait_port(f"127.77.{NET}.4", ssh_port, "sshd")

        conf = os.path.join(tmp, "config")
        os.makedirs(conf)
        with open(os.path.join(conf, "00_duffy.yaml"), "w") as f:
            f.write(f"database:\n  sqlalchemy:\n    sync_url: {url}\n"
                    "defaults: {session-lifetime: 6h, session-lifetime-max: 12h, node-quota: 10}\n"
                    f"scheduler:\n  ansible-playbook: {EC2}/bin/ansible-playbook\n  job-log-dir: {tmp}/jobs\n"
                    f"  state-dir: {tmp}/state\n  fill-interval: 5m\n  expire-interval: 1m\n")
        shutil.copy(os.path.join(REPO, "etc/pools/70_nodepools-ec2.yaml"), conf)
        amis = setup["amis"]
        with open(os.path.join(conf, "90_bench.yaml"), "w") as f:
            f.write("nodepools:\n  abstract:\n    ec2:\n      contextualize: none\n      mechanism:\n        ansible:\n"
                    f"          extra-vars:\n            aws_ec2_endpoint_url: {endpoint}\n"
                    f"            aws_ec2_subnets: [{setup['subnet']}]\n"
                    f"            aws_ec2_security_groups: [{setup['security_group']}]\n"
                    f"            aws_ec2_ssh_port: {ssh_port}\n            aws_ec2_ssh_key_file: {key}\n"
                    "            aws_ec2_ssh_poll: 1\n  concrete:\n")
            for pool, ami in [(POOL, "centos-9s-x86_64"), ("virt-ec2-t2-centos-10s-x86_64", "centos-10s-x86_64"),
                              ("virt-ec2-c6g-centos-9s-aarch64", "centos-9s-aarch64"),
                              ("virt-ec2-c6g-centos-10s-aarch64", "centos-10s-aarch64"),
                              ("metal-ec2-c5n-centos-9s-x86_64", "centos-9s-x86_64"),
                              ("metal-ec2-c5n-centos-10s-x86_64", "centos-10s-x86_64")]:
                f.write(f"    {pool}:\n      image_id: {amis[ami]}\n")
                if pool == POOL:
                    f.write("      fill-level: 1\n")
        env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.path.join(EC2, "collections"),
                   AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
        for k in ("DUFFY_CONFIG", "DUFFY_DATABASE_URL", "DUFFY_LOG"):
            env.pop(k, None)
        duffy = lambda *a: run(DUFFY, "-c", conf, *a, env=env, cwd=REPO)  # noqa: E731
        duffy("migrate")
        with open(os.path.join(tmp, "tenant_key.pub"), "w") as f:
            f.write("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFiBq493m1tooYiALmd9PJpwszntYIJ62bvnYyaDsrQA demo@ci\n")
        api_key = duffy("admin", "create-tenant", "bench", open(os.path.join(tmp, "tenant_key.pub")).read().strip())
        api_key = api_key.strip().split(": ")[-1]
        api_port = free_port()
        procs.append(subprocess.Popen([DUFFY, "-c", conf, "serve", "-p", str(api_port)], env=env, cwd=REPO,
                                      stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, "serve.log"), "w")))
        wait_port("127.0.0.1", api_port, "duffy serve")
        procs.append(subprocess.Popen([DUFFY, "-c", conf, "scheduler", "--pool", POOL], env=env, cwd=REPO,
                                      stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, "scheduler.log"), "w")))

        def sql(q):
            return run("psql", "-X", "-A", "-t", "-q", "-d", url, "-c", q).split()

        def ready():
            return sql(f"SELECT id FROM nodes WHERE pool = '{POOL}' AND state = 'ready'")

        def wait(what, f, timeout=300):
            deadline = time.time() + timeout
            while not f():
                if time.time() > deadline:
                    sys.exit(f"bench/ec2: timed out waiting for {what} (logs in {tmp})")
                time.sleep(0.05)

        def client(*a):
            return json.loads(run(DUFFY, "client", "--url", f"http://127.0.0.1:{api_port}/api/v1",
                                  "--auth-name", "bench", "--auth-key", api_key, *a, env=env))

        wait("the pool filled", lambda: len(ready()) == 1)
        refill, retire, prov_calls, deprov_calls = [], [], [], []
        for i in range(ROUNDS):
            before = calls_snapshot()
            s = client("request-session", f"pool={POOL},quantity=1")
            t0 = time.monotonic()
            node = s["session"]["nodes"][0]["id"]
            wait("the refill", lambda: len(ready()) == 1)
            refill.append(time.monotonic() - t0)
            mid = calls_snapshot()
            prov_calls.append(mid - before)
            client("retire-session", str(s["session"]["id"]))
            t1 = time.monotonic()
            wait("the node done", lambda: sql(f"SELECT state FROM nodes WHERE id = {node}") == ["done"])
            retire.append(time.monotonic() - t1)
            deprov_calls.append(calls_snapshot() - mid)
            log(f"round {i + 1}: refill {refill[-1]:.2f} s ({sum(prov_calls[-1].values())} EC2 calls), "
                f"retire {retire[-1]:.2f} s ({sum(deprov_calls[-1].values())} EC2 calls)")

        def calls(cs):
            total = collections.Counter()
            for c in cs:
                total.update(c)
            return ", ".join(f"{k} {v / len(cs):g}" for k, v in sorted(total.items()))

        commit = run("git", "-C", REPO, "rev-parse", "--short", "HEAD").strip()
        load = open("/proc/loadavg").read().split()[:3]
        lines = [
            f"# bench/ec2 ({datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M')} UTC, commit {commit}, "
            f"{os.cpu_count()} cores, load {' '.join(load)}, {ROUNDS} rounds, moto, pool {POOL})",
            "",
            "| phase | p50 | max | EC2 API calls per node (by Action, mean) |",
            "|---|---:|---:|---|",
            f"| request-session → pool ready again (refill) | {statistics.median(refill):.2f} s | {max(refill):.2f} s | "
            f"{sum(sum(c.values()) for c in prov_calls) / ROUNDS:g}: {calls(prov_calls)} |",
            f"| retire-session → node done (instance terminated) | {statistics.median(retire):.2f} s | "
            f"{max(retire):.2f} s | {sum(sum(c.values()) for c in deprov_calls) / ROUNDS:g}: {calls(deprov_calls)} |",
            "",
        ]
        text = "\n".join(lines)
        print(text)
        os.makedirs(os.path.join(REPO, "bench/results"), exist_ok=True)
        out = os.path.join(REPO, "bench/results", f"ec2-{datetime.now(timezone.utc).strftime('%Y-%m-%dT%H%MZ')}.md")
        with open(out, "w") as f:
            f.write(text)
        log(f"written {out}")
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
        subprocess.run(["psql", "-X", "-q", "-d", f"{PGURL}/postgres", "-c", f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"],
                       capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


main()
