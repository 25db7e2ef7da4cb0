#!/usr/bin/env bash
# Installs a REAL ansible-core from PyPI into a Python venv, for the tests that run Ansible
# (tests/inventory.rs: `ansible-inventory` / `ansible` against inventory/duffy.sh;
# tests/ansible_modules.rs: playbooks with the binary modules) and bench/inventory.
#
#   venv: ${DUFFY_ANSIBLE_VENV:-<repo>/.venv-ansible}     python: ${PYTHON:-python3}
#   version: ${DUFFY_ANSIBLE_CORE:-ansible-core==2.19.*}  (the version the spec's facts were verified on)
#
# Idempotent: does nothing when "$VENV/bin/ansible-inventory --version" already works and
# reports the wanted series. Safe to run concurrently (several test binaries may start it): the
# install is serialised by a lock file inside the venv directory.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${DUFFY_ANSIBLE_VENV:-$REPO/.venv-ansible}"
PYTHON="${PYTHON:-python3}"
SPEC="${DUFFY_ANSIBLE_CORE:-ansible-core==2.19.*}"

ready() {
    local v
    v="$("$VENV/bin/ansible-inventory" --version 2>/dev/null)" || return 1
    v="${v%%$'\n'*}"
    case "$SPEC" in
    'ansible-core==2.19.*') [[ "$v" == *"[core 2.19."* ]] ;;
    *) [ -n "$v" ] ;;
    esac
}

ready && exit 0
source "$REPO/.ci/lib/venv.sh"
venv_install ansible-venv "$VENV" ready -- "$SPEC"
v="$("$VENV/bin/ansible-inventory" --version)"
echo "ansible-venv: ${v%%$'\n'*}" >&2
