#!/usr/bin/env bash
# Installs schemathesis (PyPI) into a Python venv, for tests/schemathesis.rs (property-based
# fuzzing of `duffy serve` against its own OpenAPI document).
#
#   venv: ${DUFFY_ST_VENV:-<repo>/.venv-schemathesis}
#   python: ${PYTHON}, else the newest of python3.13 / python3.12 (also pyenv's), else python3
#
# Why not simply python3: with CPython 3.11 (<= 3.11.7 at least) hypothesis' lambda-source
# parsing dies with "SystemError: AST constructor recursion depth mismatch" (CPython
# gh-106905) during schemathesis' coverage phase; 3.12+/3.13 are fine.
#
# Idempotent: does nothing when "$VENV/bin/st --version" already reports the pinned version.
# Safe to run concurrently: the install is serialised by a lock file inside the venv directory.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${DUFFY_ST_VENV:-$REPO/.venv-schemathesis}"
pick_python() {
    if [ -n "${PYTHON:-}" ]; then
        echo "$PYTHON"
        return
    fi
    local c
    for c in python3.13 python3.12; do
        if "$c" -c 'import venv' >/dev/null 2>&1; then
            command -v "$c"
            return
        fi
    done
    for c in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.13*/bin/python3 \
        "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3; do
        if [ -x "$c" ] && "$c" -c 'import venv' >/dev/null 2>&1; then
            echo "$c"
            return
        fi
    done
    echo python3
}
VERSION="${DUFFY_ST_VERSION:-4.32.5}"

ready() {
    "$VENV/bin/st" --version 2>/dev/null | grep -q "version $VERSION\$"
}

ready && exit 0
source "$REPO/.ci/lib/venv.sh"
venv_install schemathesis-venv "$VENV" ready --python "$(pick_python)" -- "schemathesis==$VERSION"
"$VENV/bin/st" --version >&2
