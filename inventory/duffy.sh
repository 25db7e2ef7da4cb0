#!/bin/sh
# Ansible / AWX inventory source: `ansible-playbook -i inventory/duffy.sh …`.
# Runs the duffy-inventory binary (the Rust code in src/inventory.rs) with the arguments Ansible
# gives (--list or --host NAME). The binary is looked up in this order:
#   $DUFFY_INVENTORY_BIN, `duffy-inventory` in PATH, <repo>/target/release, <repo>/target/debug.
# Configuration: $DUFFY_CONFIG (else /etc/duffy, ~/.config/duffy) and $DUFFY_DATABASE_URL.
# Nothing is printed on stderr unless it fails: Ansible shows any stderr as an error.
# See inventory/README.md.
set -eu

if [ -n "${DUFFY_INVENTORY_BIN:-}" ]; then
    if [ -x "$DUFFY_INVENTORY_BIN" ]; then
        exec "$DUFFY_INVENTORY_BIN" "$@"
    fi
    echo "duffy inventory: DUFFY_INVENTORY_BIN=$DUFFY_INVENTORY_BIN is not an executable file" >&2
    exit 1
fi

if bin="$(command -v duffy-inventory 2>/dev/null)" && [ -n "$bin" ]; then
    exec "$bin" "$@"
fi

# <repo> is the parent of the folder holding this script (symlinks resolved)
self="$0"
case "$self" in */*) ;; *) self="$(command -v -- "$self" 2>/dev/null || echo "./$self")" ;; esac
self="$(readlink -f -- "$self" 2>/dev/null || echo "$self")"
repo="$(cd -- "$(dirname -- "$self")/.." && pwd -P)"

for bin in "$repo/target/release/duffy-inventory" "$repo/target/debug/duffy-inventory"; do
    if [ -x "$bin" ]; then
        exec "$bin" "$@"
    fi
done

echo "duffy inventory: the duffy-inventory binary is not built: run \`cargo build --release --bin duffy-inventory\` in $repo, put duffy-inventory in PATH, or set DUFFY_INVENTORY_BIN" >&2
exit 1
