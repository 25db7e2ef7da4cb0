#!/usr/bin/env bash
# Provides `promtool` (Prometheus' rule and exposition-format checker) for tests/metrics.rs:
# `promtool check metrics` on the real /metrics of `duffy serve` and `duffy scheduler`,
# `promtool check rules` / `test rules` on etc/prometheus/.
#
# Prints the path of the promtool to use. A `promtool` on PATH is used as is; otherwise the one
# of Debian's `prometheus` package is extracted (not installed: no Prometheus server, no service
# started) into $DUFFY_PROMTOOL_DIR (default <repo>/.venv-promtool, gitignored), once.
# Idempotent, safe to run concurrently (flock), no stdin; `apt-get update` only when the package
# lists lack `prometheus` (needs root then).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${DUFFY_PROMTOOL_DIR:-$REPO/.venv-promtool}"
BIN="$DIR/bin/promtool"

if command -v promtool >/dev/null 2>&1; then
    command -v promtool
    exit 0
fi
if [ -x "$BIN" ]; then
    echo "$BIN"
    exit 0
fi

mkdir -p "$DIR"
exec 9>"$DIR/.lock"
flock 9
if [ -x "$BIN" ]; then # another process finished while we waited
    echo "$BIN"
    exit 0
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
export DEBIAN_FRONTEND=noninteractive
if ! apt-get download -qq prometheus >/dev/null 2>&1; then
    if [ "${EUID:-$(id -u)}" != 0 ]; then
        echo "promtool.sh: cannot download Debian's prometheus package and not root to run apt-get update; install promtool (apt-get install prometheus) or put it on PATH" >&2
        exit 1
    fi
    # a bare machine has no package lists yet (or stale ones)
    apt-get -o DPkg::Lock::Timeout=600 update -qq >/dev/null
    apt-get download -qq prometheus >/dev/null
fi
dpkg-deb -x prometheus_*.deb x
mkdir -p "$DIR/bin"
install -m 0755 x/usr/bin/promtool "$BIN.tmp"
mv "$BIN.tmp" "$BIN"
"$BIN" --version >/dev/null
echo "$BIN"
