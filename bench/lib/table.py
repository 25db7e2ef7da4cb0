#!/usr/bin/env python3
"""Render bench/api's results file ("side.key value" lines) as a Markdown table with ratios."""

import sys


def load(path):
    r = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            k, _, v = line.partition(" ")
            r[k] = v
    return r


def num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def fmt(v, digits=1):
    x = num(v)
    if x is None:
        return v if v not in (None, "") else "–"
    if abs(x) >= 100:
        return f"{x:,.0f}".replace(",", " ")
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.{digits + 1}f}" if abs(x) < 1 else f"{x:.{digits}f}"


def ratio(o, u):
    o, u = num(o), num(u)
    if o is not None and o > 0 and u == 0:
        return "∞ (upstream: 0)"
    if o is None or u is None or u == 0:
        return "–"
    r = o / u
    if r >= 10:
        return f"{r:.0f}×"
    if r >= 1:
        return f"{r:.1f}×"
    if r >= 0.01:
        return f"{r:.2f}×"
    return f"{r:.4f}×"


def main():
    r = load(sys.argv[1])
    g = lambda side, k: r.get(f"{side}.{k}")  # noqa: E731

    def us(side, k):
        """a wrk latency in ms; none when the run completed no request (wrk then reports 0)"""
        v = num(g(side, k))
        if v is None or num(g(side, k.split(".")[0] + ".requests")) == 0:
            return None
        return v / 1000.0

    rows = []  # (label, upstream, ours, better)

    for key, label in (("pools", "GET /api/v1/pools"),
                       ("pool", "GET /api/v1/pools/bench-a"),
                       ("sessions", "GET /api/v1/sessions (basic auth)"),
                       ("sessions_flood", "GET /api/v1/sessions (basic auth) during a wrong-key flood"),
                       ("pool_idle", "GET /api/v1/pools/bench-a beside 2 000 idle + 16 slowloris connections")):
        rows.append((f"{label}: req/s", g("up", f"{key}.rps"), g("ours", f"{key}.rps"), "higher"))
        rows.append((f"{label}: p50 ms", us("up", f"{key}.p50_us"), us("ours", f"{key}.p50_us"), "lower"))
        rows.append((f"{label}: p99 ms", us("up", f"{key}.p99_us"), us("ours", f"{key}.p99_us"), "lower"))
        errs = lambda s: (  # noqa: E731
            f"{g(s, key + '.requests')} / {g(s, key + '.non2xx')} / {g(s, key + '.timeout')}"
            if g(s, key + ".requests") is not None else None)
        rows.append((f"{label}: requests / non-2xx / timeouts", errs("up"), errs("ours"), "info"))

    rows.append(("wrong-key flood: achieved req/s", g("up", "flood.rate"), g("ours", "flood.rate"), "info"))
    rows.append(("wrong-key flood: answers by status", g("up", "flood.statuses"), g("ours", "flood.statuses"), "info"))

    i = lambda s, k: g(s, f"idle.{k}")  # noqa: E731
    opened = lambda s: (f"{i(s, 'idle_opened')} + {i(s, 'slowloris_opened')} (failed: {i(s, 'open_failed')})"  # noqa: E731
                        if i(s, "idle_opened") is not None else None)
    rows.append(("idle + slowloris connections opened", opened("up"), opened("ours"), "info"))
    shut = lambda s: (f"{i(s, 'idle_closed_by_server')} / {i(s, 'slowloris_closed_by_server')}"  # noqa: E731
                      if i(s, "idle_opened") is not None else None)
    rows.append(("… closed by the server during the hold (idle / slowloris)", shut("up"), shut("ours"), "info"))
    fds = lambda s: (f"{i(s, 'fds_before')} / {i(s, 'fds_during')} / {i(s, 'fds_after')}"  # noqa: E731
                     if i(s, "fds_before") is not None else None)
    rows.append(("server descriptors before / during / after", fds("up"), fds("ours"), "info"))

    c = lambda s, k: g(s, f"cycle.{k}")  # noqa: E731
    rows.append(("create+retire cycle: ok cycles/s", c("up", "ok_cycles_per_s"), c("ours", "ok_cycles_per_s"), "higher"))
    okf = lambda s: (f"{c(s, 'ok')} / {c(s, 'failed')}" if c(s, "ok") is not None else None)  # noqa: E731
    rows.append(("create+retire cycle: ok / failed", okf("up"), okf("ours"), "info"))
    rows.append(("create+retire cycle: create statuses", c("up", "create_status"), c("ours", "create_status"), "info"))
    rows.append(("create+retire cycle: wall time s", c("up", "elapsed_s"), c("ours", "elapsed_s"), "lower"))
    for k, label in (("create_p50_ms", "create p50 ms"), ("create_p99_ms", "create p99 ms"),
                     ("retire_p50_ms", "retire p50 ms"), ("retire_p99_ms", "retire p99 ms")):
        rows.append((f"create+retire cycle: {label}", c("up", k), c("ours", k), "lower"))
    rows.append(("`duffy client list-pools` cold start ms (mean)", g("up", "cold_ms"), g("ours", "cold_ms"), "lower"))
    mb = lambda s, k: (None if num(g(s, k)) is None else num(g(s, k)) / 1024.0)  # noqa: E731
    rows.append(("server RSS idle MB", mb("up", "rss_idle_kb"), mb("ours", "rss_idle_kb"), "lower"))
    rows.append(("server RSS after load MB", mb("up", "rss_load_kb"), mb("ours", "rss_load_kb"), "lower"))
    rows.append(("server RSS peak (VmHWM) MB", mb("up", "rss_peak_kb"), mb("ours", "rss_peak_kb"), "lower"))

    print("| measure | upstream 3.4.0 | duffy | ours/upstream | better |")
    print("|---|---:|---:|---:|---|")
    for label, u, o, better in rows:
        rt = "–" if better == "info" else ratio(o, u)
        print(f"| {label} | {fmt(u)} | {fmt(o)} | {rt} | {'' if better == 'info' else better} |")

    # the targets (issue 4, "Done when")
    def check(ok):
        return "met" if ok else "NOT met"

    print()
    u_rps, o_rps = num(g("up", "pool.rps")), num(g("ours", "pool.rps"))
    o_p99 = us("ours", "pool.p99_us")
    u_cyc, o_cyc = num(c("up", "ok_cycles_per_s")), num(c("ours", "ok_cycles_per_s"))
    if u_rps and o_rps is not None:
        print(f"- target GET /api/v1/pools/POOL ≥ 20× upstream req/s: {o_rps / u_rps:.1f}× — {check(o_rps / u_rps >= 20)}")
    if o_p99 is not None:
        print(f"- target GET /api/v1/pools/POOL p99 < 5 ms: {o_p99:.2f} ms — {check(o_p99 < 5)}")
    o_fp99 = us("ours", "sessions_flood.p99_us")
    if o_fp99 is not None:
        print(f"- target valid GET /api/v1/sessions p99 < 50 ms during a wrong-key flood: {o_fp99:.2f} ms — {check(o_fp99 < 50)}")
    o_ip99 = us("ours", "pool_idle.p99_us")
    if o_ip99 is not None:
        print(f"- target a normal request < 50 ms beside 2 000 idle connections and slowloris clients (p99): {o_ip99:.2f} ms — {check(o_ip99 < 50)}")
        b, a = num(i("ours", "fds_before")), num(i("ours", "fds_after"))
        if b is not None and a is not None:
            print(f"- target descriptors back to idle after they go: {int(b)} → {int(a)} — {check(a <= b)}")
    if u_cyc and o_cyc is not None:
        print(f"- target session cycle ≥ 10× upstream: {o_cyc / u_cyc:.1f}× — {check(o_cyc / u_cyc >= 10)}")


if __name__ == "__main__":
    main()
