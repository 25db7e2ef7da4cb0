#!/usr/bin/env bash
# Installs what the EC2 pools' tests need (tests/ec2.rs, bench/ec2): the playbooks' side and an
# EC2 API to run them against, each in a venv of its own, light and cached.
#
#   ansible venv: ${DUFFY_EC2_VENV:-<repo>/.venv-ec2}   ansible-core (${DUFFY_ANSIBLE_CORE:-ansible-core==2.19.*})
#                 + boto3/botocore, importable by ansible-playbook's own Python (the playbooks run
#                 their AWS modules on `ansible_playbook_python`), and the amazon.aws collection
#                 in $DUFFY_EC2_VENV/collections (ANSIBLE_COLLECTIONS_PATH), taken out of the
#                 `ansible` wheel (${DUFFY_ANSIBLE_PKG:-ansible==12.*}, the release matching
#                 ansible-core 2.19): `pip download --no-deps`, then only
#                 ansible_collections/amazon/aws is unpacked — not the ~800 MB of every collection.
#   moto venv:    ${DUFFY_MOTO_VENV:-<repo>/.venv-moto}  moto[server] (${DUFFY_MOTO:-moto[server]==5.*}),
#                 the EC2 API the tests start on 127.0.0.1 (bin/moto_server).
#
# `--no-moto`: only the ansible venv (a scheduler host running the EC2 pools for real:
# playbooks/README.md, "Running the EC2 pools").
#
# Idempotent (nothing is done when both venvs already work) and safe to run concurrently: each
# install is serialised by a lock file inside its venv (.ci/lib/venv.sh).
set -euo pipefail
case "${1:-}" in
'' | --no-moto) ;;
*) echo "ec2-venv.sh: unknown argument $1 (expected --no-moto)" >&2; exit 2 ;;
esac

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
EC2="${DUFFY_EC2_VENV:-$REPO/.venv-ec2}"
MOTO="${DUFFY_MOTO_VENV:-$REPO/.venv-moto}"
CORE="${DUFFY_ANSIBLE_CORE:-ansible-core==2.19.*}"
PKG="${DUFFY_ANSIBLE_PKG:-ansible==12.*}"
MOTO_SPEC="${DUFFY_MOTO:-moto[server]==5.*}"
COLL="$EC2/collections/ansible_collections/amazon/aws"

ec2_ready() {
    [ -f "$COLL/MANIFEST.json" ] || return 1
    local v
    v="$("$EC2/bin/ansible-playbook" --version 2>/dev/null)" || return 1
    [[ "$CORE" != 'ansible-core==2.19.*' || "${v%%$'\n'*}" == *"[core 2.19."* ]] || return 1
    "$EC2/bin/python" -c 'import boto3, botocore' 2>/dev/null
}

# after pip: the amazon.aws collection out of the ansible wheel (a download cached by pip)
ec2_collection() {
    [ -f "$COLL/MANIFEST.json" ] && return 0
    local tmp
    tmp="$(mktemp -d)"
    "$EC2/bin/python" -m pip download --quiet --no-deps --dest "$tmp" "$PKG"
    rm -rf "$EC2/collections.new"
    mkdir -p "$EC2/collections.new"
    "$EC2/bin/python" - "$tmp"/ansible-*.whl "$EC2/collections.new" <<'PY'
import sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
prefix = "ansible_collections/amazon/aws/"
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n.startswith(prefix)]
    if not names:
        sys.exit(f"{wheel}: no {prefix}")
    z.extractall(dest, names)
PY
    rm -rf "$tmp" "$EC2/collections"
    mv "$EC2/collections.new" "$EC2/collections"
}

moto_ready() {
    "$MOTO/bin/python" -c 'import moto.server, flask, boto3' 2>/dev/null && [ -x "$MOTO/bin/moto_server" ]
}

source "$REPO/.ci/lib/venv.sh"
if ! ec2_ready; then
    ec2_pip_ready() {
        "$EC2/bin/ansible-playbook" --version >/dev/null 2>&1 && "$EC2/bin/python" -c 'import boto3' 2>/dev/null
    }
    venv_install ec2-venv "$EC2" ec2_pip_ready -- "$CORE" boto3 botocore
    exec 9>"$EC2/.install.lock"
    flock 9
    ec2_collection
    exec 9>&-
    ec2_ready || { echo "ec2-venv: $EC2 does not work after the install" >&2; exit 1; }
    v="$(grep -o '"version": *"[^"]*"' "$COLL/MANIFEST.json" | head -1)"
    echo "ec2-venv: amazon.aws $v in $EC2/collections" >&2
fi
[ "${1:-}" = --no-moto ] && exit 0
moto_ready || venv_install moto-venv "$MOTO" moto_ready -- "$MOTO_SPEC"
