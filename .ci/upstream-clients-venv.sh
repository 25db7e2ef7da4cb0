#!/usr/bin/env bash
# Installs the REAL upstream clients into a Python venv, for the compatibility tests
# (tests/upstream_clients.rs: upstream's `duffy client` against `duffy serve`; python-cicoclient's
# `cico` against the legacy API):
#
#   * `duffy[client]==3.4.0`  -> $VENV/bin/duffy  (only the client extra: httpx, pyxdg, PyYAML)
#   * `python-cicoclient`     -> $VENV/bin/cico
#
#   venv: ${DUFFY_CLIENTS_VENV:-<repo>/.venv-clients}     python: ${PYTHON:-python3}
#
# Idempotent: does nothing when "$VENV/bin/duffy --version" reports 3.4.0, the client extra
# imports and `cico` exists. Safe to run concurrently (several test binaries may start it at
# once): the install is serialised by a lock file inside the venv directory.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${DUFFY_CLIENTS_VENV:-$REPO/.venv-clients}"
PYTHON="${PYTHON:-python3}"
export PIP_DISABLE_PIP_VERSION_CHECK=1

ready() {
    "$VENV/bin/duffy" --version 2>/dev/null | grep -q 'version 3\.4\.0$' &&
        "$VENV/bin/python" -c 'import duffy.client, httpx, xdg, yaml, cicoclient' 2>/dev/null &&
        [ -x "$VENV/bin/cico" ]
}

if ready; then
    exit 0
fi

mkdir -p "$VENV"
exec 9>"$VENV/.install.lock"
flock 9
if ready; then # another process finished the install while we waited
    exit 0
fi

if ! "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
    echo "upstream-clients-venv: creating $VENV" >&2
    "$PYTHON" -m venv "$VENV"
fi
echo "upstream-clients-venv: installing duffy[client] 3.4.0 and python-cicoclient into $VENV" >&2
"$VENV/bin/python" -m pip install --quiet 'duffy[client]==3.4.0' python-cicoclient

if ! ready; then
    echo "upstream-clients-venv: the clients in $VENV do not work after the install" >&2
    "$VENV/bin/duffy" --version >&2 || true
    "$VENV/bin/python" -c 'import duffy.client, httpx, xdg, yaml, cicoclient' >&2 || true
    exit 1
fi
"$VENV/bin/duffy" --version >&2
