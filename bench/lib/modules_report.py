#!/usr/bin/env python3
"""bench/modules' table: each binary module's own run (hyperfine, direct exec with an args file)
and its per-task wall time in a playbook next to `ansible.builtin.ping`, with the issue's targets.

    modules_report.py HYPERFINE_JSON TIMINGS_JSON WARMUP_ROUNDS MODULE=SIZE_BYTES…

HYPERFINE_JSON holds, per module, a run with the args file of the measured task ("<m> …/<m>.json")
and a run with an args file it rejects at once ("<m> …/<m>.reject.json": process start, args
validation, the JSON answer - no database, no BMC).

TIMINGS_JSON is what callback_plugins/duffy_bench_timer.py wrote for the benchmark playbook:
rounds of `<module>` then `ping after <module>` tasks (task names "<module> #<round>" and
"ping after <module> #<round>"); the first WARMUP_ROUNDS rounds are not counted.
Prints Markdown; exit 0 whatever the figures (the verdict is in the text).
"""

import json
import math
import re
import sys

OWN_TARGET_MS = 5.0


def mean(xs):
    return sum(xs) / len(xs)


def p95(xs):
    s = sorted(xs)
    return s[max(0, math.ceil(0.95 * len(s)) - 1)]


def f(x):
    return f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def main():
    hf_path, timings_path, warmup = sys.argv[1], sys.argv[2], int(sys.argv[3])
    sizes = dict(a.split("=", 1) for a in sys.argv[4:])
    modules = list(sizes)

    own, start_only, pooled = {}, {}, {}
    for r in json.load(open(hf_path))["results"]:
        exe, args = r["command"].split()[:2]
        name = exe.rsplit("/", 1)[-1]
        kind = (start_only if args.endswith(".reject.json")
                else pooled if args.endswith(".pooled.json") else own)
        kind[name] = [t * 1000 for t in r["times"]]

    per_task = {m: [] for m in modules}
    ping = {m: [] for m in modules}
    gaps = []  # result of a task -> start of the next one (the strategy's bookkeeping)
    pat = re.compile(r"^(ping after )?(\w+) #(\d+)$")
    for t in json.load(open(timings_path))["tasks"]:
        m = pat.match(t["name"])
        if not m or m.group(2) not in sizes or int(m.group(3)) <= warmup:
            continue
        if t["status"] != "ok" or t["changed"]:
            raise SystemExit(f"task {t['name']!r}: status {t['status']}, changed {t['changed']}")
        wall = (t["end"] - t["start"]) * 1000
        gaps.append((t["next"] - t["end"]) * 1000)
        (ping if m.group(1) else per_task)[m.group(2)].append(wall)

    print("| module | size MiB | own run ms: mean / p95 | (start + args only) | (through pgbouncer) "
          "| per task ms: mean / p95 | `ansible.builtin.ping` per task ms: mean / p95 "
          "| ratio module/ping (means) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    verdicts = []
    all_ping = []
    for m in modules:
        o, t, p = own.get(m), per_task[m], ping[m]
        if not o or not t or not p:
            raise SystemExit(f"{m}: missing measurements (own {len(o or [])}, task {len(t)}, ping {len(p)})")
        all_ping += p
        ratio = mean(t) / mean(p)
        so = f(mean(start_only[m])) if start_only.get(m) else "–"
        po = f"{f(mean(pooled[m]))} / {f(p95(pooled[m]))}" if pooled.get(m) else "–"
        print(f"| `{m}` | {int(sizes[m]) / 1048576:.1f} | {f(mean(o))} / {f(p95(o))} | {so} | {po} | "
              f"{f(mean(t))} / {f(p95(t))} | {f(mean(p))} / {f(p95(p))} | {ratio:.2f}× |")
        verdicts.append((m, mean(o), p95(o), ratio, mean(t), mean(p)))
    n = len(per_task[modules[0]])
    print()
    print(f"Own run: the binary exec'ed directly with the args file Ansible wrote for the task "
          f"(start to exit, {len(own[modules[0]])} runs); in the (start + args only) column the same binary with an args "
          f"file it rejects at once (unknown option: no database, no BMC); in the (through "
          f"pgbouncer) column the database modules with the same task through pgbouncer "
          f"(transaction pooling), which spares them PostgreSQL's per-connection backend start. "
          f"Per task: from the "
          f"task's start to its result in the controller (`v2_playbook_on_task_start` → "
          f"`v2_runner_on_ok`), {n} tasks of each module, each followed by one `ping` task (its "
          f"column); every task ok and `changed: false`. Not included, the same for both kinds: "
          f"{f(mean(gaps))} ms (mean) from a result to the next task's start. All {len(all_ping)} "
          f"pings: mean {f(mean(all_ping))} ms, p95 {f(p95(all_ping))} ms.")
    print()
    own_ok = all(o <= OWN_TARGET_MS for _, o, _, _, _, _ in verdicts)
    task_ok = all(r <= 1.0 for _, _, _, r, _, _ in verdicts)
    print(f"- target: each module's own run ≤ {OWN_TARGET_MS:g} ms (mean) — "
          + ("**met**" if own_ok else "**NOT met**") + ": "
          + ", ".join(f"{m} {f(o)} ms (p95 {f(p)})" for m, o, p, _, _, _ in verdicts))
    print("- target: per-task time no worse than a Python module (mean ratio ≤ 1) — "
          + ("**met**" if task_ok else "**NOT met**") + ": "
          + ", ".join(f"{m} {r:.2f}×" for m, _, _, r, _, _ in verdicts))


if __name__ == "__main__":
    main()
