#!/usr/bin/env bash
# Builds duffy's Ansible modules (Cargo binaries src/bin/<module>.rs) in release mode and puts
# them here, next to their committed ansible-doc sidecars (<module>.yml), so that
#   ansible-playbook -M modules …     and     ansible-doc -M modules duffy_node
# work. Run from anywhere; CARGO_TARGET_DIR and CARGO_BUILD_TARGET are honoured, e.g. a static
# build for AWX execution environments:
#   CARGO_BUILD_TARGET=x86_64-unknown-linux-musl ./modules/install.sh
# Options: --debug (dev profile, faster to build), --strip (drop symbols: smaller uploads).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
MODULES=(duffy_node duffy_session duffy_tenant ipmi_power)

profile=release
strip=0
for a in "$@"; do
    case "$a" in
    --debug) profile=debug ;;
    --strip) strip=1 ;;
    -h | --help)
        sed -n '2,8p' "${BASH_SOURCE[0]}"
        exit 0
        ;;
    *)
        echo "install.sh: unknown argument $a" >&2
        exit 2
        ;;
    esac
done

cd "$REPO"
present=()
for m in "${MODULES[@]}"; do
    [ -f "src/bin/$m.rs" ] && present+=("$m")
done
args=()
for m in "${present[@]}"; do args+=(--bin "$m"); done
if [ "$profile" = release ]; then
    cargo build --release "${args[@]}"
else
    cargo build "${args[@]}"
fi

target="${CARGO_TARGET_DIR:-$REPO/target}"
[ -n "${CARGO_BUILD_TARGET:-}" ] && target="$target/$CARGO_BUILD_TARGET"
for m in "${present[@]}"; do
    src="$target/$profile/$m"
    # copy to a temp name, then rename: a playbook running meanwhile never sees half a file
    cp "$src" "$HERE/.$m.tmp"
    if [ "$strip" = 1 ]; then
        strip "$HERE/.$m.tmp"
    fi
    chmod 0755 "$HERE/.$m.tmp"
    mv -f "$HERE/.$m.tmp" "$HERE/$m"
    [ -f "$HERE/$m.yml" ] || echo "install.sh: warning: $m has no sidecar $m.yml" >&2
    printf 'installed %-14s %8s KiB\n' "$m" "$(($(stat -c %s "$HERE/$m") / 1024))"
done
