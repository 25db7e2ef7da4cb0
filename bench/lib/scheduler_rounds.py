#!/usr/bin/env python3
"""The measuring part of bench/scheduler: refill and expiry rounds against a running
`duffy serve` and `duffy scheduler` daemon, timestamps from the database (node history, job
rows), the scheduler's log and the client's return; prints and writes a Markdown report.

Usage: scheduler_rounds.py ENV_FILE   (KEY=VALUE lines written by bench/scheduler)
"""

import json
import os
import re
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone


def load_env(path):
    env = {}
    with open(path) as f:
        for line in f:
            k, _, v = line.rstrip("\n").partition("=")
            if k:
                env[k] = v
    return env


E = load_env(sys.argv[1])
POOL = E["POOL"]
LEVEL = int(E["LEVEL"])


def log(msg):
    print(f"bench/scheduler: {msg}", file=sys.stderr, flush=True)


def sql(q):
    out = subprocess.run(
        ["psql", "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-d", E["URL"], "-c", q],
        check=True, capture_output=True, text=True,
    ).stdout
    return [l.split("|") for l in out.splitlines() if l != ""]


def one(q):
    rows = sql(q)
    return rows[0][0] if rows else None


def client(tenant, key, *args):
    t0 = time.time()
    p = subprocess.run(
        [E["DUFFY"], "client", "--url", E["API"], "--auth-name", tenant, "--auth-key", "-", *args],
        input=key + "\n", capture_output=True, text=True,
    )
    t1 = time.time()
    if p.returncode != 0:
        raise SystemExit(f"duffy client {' '.join(args)} failed: {p.stdout}{p.stderr}")
    return t0, t1, p.stdout


def wait(what, cond, timeout):
    start = time.time()
    while True:
        v = cond()
        if v:
            return v
        if time.time() - start > timeout:
            raise SystemExit(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def settled():
    """The pool at its level with no open job."""
    return one(
        f"SELECT (SELECT count(*) FROM nodes WHERE pool = '{POOL}' AND state = 'ready' AND retired_at IS NULL) = {LEVEL}"
        " AND (SELECT count(*) FROM duffy_jobs WHERE state IN ('queued', 'running')) = 0"
    ) == "t"


LOG_RE = re.compile(r"^(\S+Z)\s+\w+\s+(.*)$")


def log_time(job, message):
    """Time of the scheduler log line `message … job=<job> …`."""
    with open(E["SCHED_LOG"]) as f:
        for line in f:
            m = LOG_RE.match(line.strip())
            if m and m.group(2).startswith(message) and re.search(rf"\bjob={job}\b", m.group(2)):
                return datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()
    return None


def pct(xs, p):
    xs = sorted(xs)
    k = (len(xs) - 1) * p
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def refill_rounds(n):
    rows = []
    for i in range(n):
        wait("the pool at its level", settled, 300)
        last_job = int(one("SELECT coalesce(max(id), 0) FROM duffy_jobs"))
        _, t_back, out = client(E["TENANT"], E["KEY"], "request-session", f"pool={POOL},quantity=1")
        sid = json.loads(out)["session"]["id"]
        job = wait(
            "the provision job",
            lambda: sql(f"SELECT id, node_ids[1], extract(epoch FROM created_at) FROM duffy_jobs "
                        f"WHERE kind = 'provision' AND id > {last_job} ORDER BY id LIMIT 1"),
            60,
        )[0]
        jid, node, t_queued = int(job[0]), int(job[1]), float(job[2])
        t_ready = float(wait(
            "the new node ready",
            lambda: one(f"SELECT extract(epoch FROM at) FROM duffy_node_history "
                        f"WHERE node_id = {node} AND to_state = 'ready' ORDER BY id DESC LIMIT 1"),
            600,
        ))
        t_fin = float(wait("the job finished", lambda: one(
            f"SELECT extract(epoch FROM finished_at) FROM duffy_jobs WHERE id = {jid} AND finished_at IS NOT NULL"), 60))
        t_alloc = float(one(
            f"SELECT extract(epoch FROM h.at) FROM duffy_node_history h JOIN sessions_nodes sn ON sn.node_id = h.node_id "
            f"WHERE sn.session_id = {sid} AND h.to_state = 'deployed' ORDER BY h.id LIMIT 1"))
        t_start = wait("the scheduler's log line", lambda: log_time(jid, "running provision playbook"), 10)
        t_claim = log_time(jid, "job claimed")
        r = {
            "queued": t_queued - t_back,
            "claimed": (t_claim - t_back) if t_claim else None,
            "start": t_start - t_back,
            "start_from_alloc": t_start - t_alloc,
            "level": t_ready - t_back,
            "playbook": t_fin - t_start,
        }
        rows.append(r)
        log(f"refill {i + 1}/{n}: session {sid}, job {jid}: queued {r['queued'] * 1000:.0f} ms, "
            f"playbook started {r['start'] * 1000:.0f} ms after request-session returned, pool full after "
            f"{r['level']:.2f} s (playbook {r['playbook']:.2f} s)")
        client(E["TENANT"], E["KEY"], "retire-session", str(sid))
    return rows


def expiry_rounds(n):
    rows = []
    for i in range(n):
        wait("the pool at its level", settled, 300)
        _, _, out = client(E["SHORT_TENANT"], E["SHORT_KEY"], "request-session", f"pool={POOL},quantity=1")
        sid = json.loads(out)["session"]["id"]
        wait("the session retired", lambda: one(
            f"SELECT 1 FROM sessions WHERE id = {sid} AND retired_at IS NOT NULL"), float(E["LIFETIME"]) + 30)
        # both naive UTC (upstream's columns); the node history is timestamptz
        late_retired = float(one(f"SELECT extract(epoch FROM retired_at - expires_at) FROM sessions WHERE id = {sid}"))
        late_node = float(wait("the node's state change", lambda: one(
            f"SELECT extract(epoch FROM h.at) - extract(epoch FROM s.expires_at AT TIME ZONE 'UTC') "
            f"FROM duffy_node_history h JOIN sessions s ON s.id = h.session_id "
            f"WHERE h.session_id = {sid} AND h.from_state = 'deployed' AND h.to_state = 'deprovisioning' "
            f"ORDER BY h.id LIMIT 1"), 10))
        rows.append({"retired": late_retired, "node": late_node})
        log(f"expiry {i + 1}/{n}: session {sid}: retired {late_retired * 1000:.0f} ms after expires_at, "
            f"node deprovisioning {late_node * 1000:.0f} ms after")
    return rows


def ms(x):
    return "–" if x is None else f"{x * 1000 + 0.0:.0f} ms".replace("-0 ms", "0 ms")


def s(x):
    return f"{x:.2f} s"


def main():
    n_refill, n_expiry = int(E["ROUNDS"]), int(E["EXPIRY_ROUNDS"])
    log(f"{n_refill} refill rounds, {n_expiry} expiry rounds on pool {POOL} ({E['MODE']}, fill-level {LEVEL})")
    rr = refill_rounds(n_refill)
    er = expiry_rounds(n_expiry)

    def col(rows, k):
        return [r[k] for r in rows if r[k] is not None]

    lines = []
    lines.append(f"# bench/scheduler — {E['WHEN']}")
    lines.append("")
    lines.append(f"commit {E['COMMIT']}, {E['MACHINE']}; load before: {E['LOAD_BEFORE']}; after: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")
    lines.append(f"pool `{POOL}` ({E['MODE']}), fill-level {LEVEL}; real `duffy serve` + `duffy scheduler` daemon "
                 f"(fill-interval {E['FILL_INTERVAL']}, expire-interval {E['EXPIRE_INTERVAL']}: the sweeps are not what reacts); "
                 f"{n_refill} refill rounds (1-node session, then retired), {n_expiry} sessions with a {E['LIFETIME']} s lifetime.")
    lines.append("")
    lines.append("| measurement | p50 | max | target | upstream 3.4.0 |")
    lines.append("|---|---:|---:|---|---|")
    rows = [
        ("refill: provision job queued, after request-session returned", col(rr, "queued"), ms, "", "fill_pools enqueued by the API at session creation (Celery queue)"),
        ("refill: job claimed, after request-session returned", col(rr, "claimed"), ms, "", ""),
        ("**refill start**: provision playbook started, after request-session returned", col(rr, "start"), ms, "< 1 s",
         "a Celery worker picks fill_pools up; periodic safety net every 300 s"),
        ("refill start, after the node was allocated (deployed, DB time)", col(rr, "start_from_alloc"), ms, "", ""),
        ("pool back at fill level, after request-session returned", col(rr, "level"), s, "", ""),
        ("  of which the provision playbook (playbook started → job finished)", col(rr, "playbook"), s, "", "same playbook cost"),
        ("**expiry lateness**: session retired_at − expires_at", col(er, "retired"), ms, "< 1 s",
         "up to 300 s (expire-sessions every 300 s)"),
        ("expiry: node → deprovisioning − expires_at", col(er, "node"), ms, "", "up to 300 s + queueing"),
    ]
    for name, xs, f, target, up in rows:
        if xs:
            lines.append(f"| {name} | {f(statistics.median(xs))} | {f(max(xs))} | {target} | {up} |")
        else:
            lines.append(f"| {name} | – | – | {target} | {up} |")
    ok_start = rr and max(col(rr, "start")) < 1.0
    ok_exp = er and max(col(er, "retired")) < 1.0
    lines.append("")
    lines.append(f"Targets: refill start < 1 s: {'met' if ok_start else 'NOT met'} (max); "
                 f"expiry < 1 s: {'met' if ok_exp else 'NOT met'} (max).")
    lines.append("Upstream's figure is its poll interval: `tasks.periodic.expire-sessions.interval` and "
                 "`fill-pools.interval`, 300 s by default and in production — a session expires up to 300 s late; "
                 "its API also enqueues `fill_pools` at session creation, so a refill starts after the Celery "
                 "queueing, with the 300 s sweep as safety net (compat spec §9.1). Upstream's worker was not run here.")
    lines.append("Times: the client's return (this script's clock), job rows and node history (PostgreSQL's "
                 "clock_timestamp), the scheduler's log lines (its clock): one machine, one clock. A negative "
                 "value means the scheduler acted before the client process had exited.")
    text = "\n".join(lines) + "\n"
    with open(E["RESULT"], "w") as f:
        f.write(text)
    print(text)


main()
