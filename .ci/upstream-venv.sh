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

ready() {
    "$VENV/bin/duffy" --version 2>/dev/null | grep -q 'version 3\.4\.0$' &&
        "$VENV/bin/python" -c 'import psycopg, psycopg2, asyncpg, bcrypt' 2>/dev/null
}

# psycopg2 builds from source: pg_config (libpq-dev) and a C compiler
need_pg_config() {
    command -v pg_config >/dev/null && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "upstream-venv: installing libpq-dev (pg_config, needed to build psycopg2)" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libpq-dev gcc >/dev/null
    else
        echo "upstream-venv: pg_config not found; install libpq-dev (psycopg2 builds from source)" >&2
        return 1
    fi
}

ready && exit 0
source "$REPO/.ci/lib/venv.sh"
venv_install upstream-venv "$VENV" ready --before need_pg_config -- \
    'duffy[app,database,postgresql]==3.4.0' 'psycopg[binary]'
"$VENV/bin/duffy" --version >&2
