#!/usr/bin/env bash
# Runs a test command, shows its output as it comes and keeps a copy in LOG with each line
# prefixed by the time it arrived (seconds since the epoch), then prints a one-screen summary
# (.ci/test-summary.sh LOG) and exits with the command's status.
#
#   .ci/test-log.sh LOG COMMAND [ARG]…
set -uo pipefail
[ $# -ge 2 ] || { echo "usage: test-log.sh LOG COMMAND [ARG]…" >&2; exit 2; }
log=$1
shift
mkdir -p "$(dirname "$log")"
: >"$log"
"$@" 2>&1 | while IFS= read -r line; do
    printf '%s\n' "$line"
    printf '%s %s\n' "$EPOCHREALTIME" "$line" >>"$log"
done
status=${PIPESTATUS[0]}
bash "$(dirname "${BASH_SOURCE[0]}")/test-summary.sh" "$log" "$status"
exit "$status"
