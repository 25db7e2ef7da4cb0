#!/usr/bin/env bash
# One-screen summary of a `cargo test` run from its time-stamped log (.ci/test-log.sh): every
# test binary with its result, counts and wall time (from its "Running" line to the next one,
# so a binary that crashed without a result line is timed too), the failing tests by name, and
# the total.
#
#   .ci/test-summary.sh LOG [EXIT_STATUS]
set -euo pipefail
log=$1 status=${2:-}
awk -v status="$status" '
function flush(end,   t, r) {
    if (name == "") return
    t = end - start
    r = result
    if (r == "") r = "NO RESULT (crashed or killed)"
    rows[++n] = sprintf("%-36s %8.1f s  %s", name, t, r)
    if (r !~ /^ok/) bad[++nbad] = name
    name = ""
}
{
    ts = $1 + 0
    if (first == "") first = ts
    last = ts
    line = substr($0, length($1) + 2)
}
line ~ /^ *Running / || line ~ /^ *Doc-tests / {
    flush(ts)
    s = line
    sub(/^ *Running /, "", s)
    sub(/^ *Doc-tests /, "doc-tests ", s)
    sub(/ \(.*$/, "", s)
    name = s; start = ts; result = ""
    next
}
line ~ /^test result: / {
    # the last result line of a section is the binary own (a test that re-runs itself in a
    # fresh /run view prints the inner run result first)
    r = line
    sub(/^test result: /, "", r)
    sub(/; 0 measured.*$/, "", r)
    sub(/ 0 failed;/, "", r)
    sub(/;? ?0 ignored;?/, "", r)
    result = r
    next
}
line ~ /^test .* \.\.\. FAILED$/ {
    t = line
    sub(/^test /, "", t); sub(/ \.\.\. FAILED$/, "", t)
    if (!(t in failed)) { failed[t] = 1; order[++nf] = t }
}
END {
    flush(last)
    print ""
    print "=== test summary ==="
    for (i = 1; i <= n; i++) print rows[i]
    printf "%-36s %8.1f s\n", "total (build included)", last - first
    if (nbad > 0) {
        printf "\nFAILED binaries (%d):", nbad
        for (i = 1; i <= nbad; i++) printf " %s", bad[i]
        print ""
    }
    if (nf > 0) {
        printf "failed tests (%d):\n", nf
        for (i = 1; i <= nf; i++) print "  " order[i]
    }
    if (status != "") print (status == 0 ? "result: PASSED" : "result: FAILED (exit " status ")")
}' "$log"
