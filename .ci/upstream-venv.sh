#!/usr/bin/env bash
# Installs the REAL upstream Duffy 3.4.0 into a Python venv, for the compatibility tests
# (tests/upstream_adopt.rs: upstream's `setup-db` / `admin` against duffy's database and back).
#
#   venv: ${DUFFY_UPSTREAM_VENV:-<repo>/.venv-upstream}     python: ${PYTHON:-python3}
#
# Idempotent: does nothing when "$VENV/bin/duffy --version" already reports 3.4.0 and the
# database drivers import. Safe to run concurrently (tests may start it from several test
# binaries at once): the install is serialised by a lock file inside the venv directory.
#
# The `postgresql` extra pulls psycopg2 (built from source: needs pg_config from libpq-dev and
# a C compiler) and asyncpg; `psycopg[binary]` adds psycopg 3 (`postgresql+psycopg://`).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${DUFFY_UPSTREAM_VENV:-$REPO/.venv-upstream}"
PYTHON="${PYTHON:-python3}"
export PIP_DISABLE_PIP_VERSION_CHECK=1

ready() {
    "$VENV/bin/duffy" --version 2>/dev/null | grep -q 'version 3\.4\.0$' &&
        "$VENV/bin/python" -c 'import psycopg, psycopg2, asyncpg, bcrypt' 2>/dev/null
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

if ! command -v pg_config >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "upstream-venv: installing libpq-dev (pg_config, needed to build psycopg2)" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libpq-dev gcc >/dev/null
    else
        echo "upstream-venv: pg_config not found; install libpq-dev (psycopg2 builds from source)" >&2
        exit 1
    fi
fi

if ! "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
    echo "upstream-venv: creating $VENV" >&2
    "$PYTHON" -m venv "$VENV"
fi
echo "upstream-venv: installing duffy 3.4.0 into $VENV" >&2
"$VENV/bin/python" -m pip install --quiet 'duffy[app,database,postgresql]==3.4.0' 'psycopg[binary]'

if ! ready; then
    echo "upstream-venv: $VENV/bin/duffy does not work after the install" >&2
    "$VENV/bin/duffy" --version >&2 || true
    exit 1
fi
"$VENV/bin/duffy" --version >&2
