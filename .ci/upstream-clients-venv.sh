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

ready() {
    "$VENV/bin/duffy" --version 2>/dev/null | grep -q 'version 3\.4\.0$' &&
        "$VENV/bin/python" -c 'import duffy.client, httpx, xdg, yaml, cicoclient' 2>/dev/null &&
        [ -x "$VENV/bin/cico" ]
}

ready && exit 0
source "$REPO/.ci/lib/venv.sh"
venv_install upstream-clients-venv "$VENV" ready -- 'duffy[client]==3.4.0' python-cicoclient
"$VENV/bin/duffy" --version >&2
