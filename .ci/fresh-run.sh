#!/usr/bin/env bash
# Runs a command with a fresh machine's view of the host state that lives in /run: in a private
# mount namespace where /run is an empty tmpfs, except for
#   - /run/lock (1777) and /run/shm -> /dev/shm, which the base system makes at every boot, and
#   - the socket directories of the services this machine kind starts before any session or CI
#     run (/run/postgresql, /run/mysqld), bound in from the real /run.
# Everything else a fresh machine lacks until some service or earlier run made it (/run/sshd,
# /run/netns, pid files, …) is absent, so a test or role that needs it without creating it
# fails here as it would on a new machine. The real /run is not changed: what the command makes
# in /run lives in the tmpfs and goes with the namespace. Processes outside do not see it.
#
#   .ci/fresh-run.sh [--overlay DIR]… [--] COMMAND [ARG]…
#
# --overlay DIR (repeatable) also puts a throw-away overlay on DIR: the command sees DIR as it
# is, and whatever it writes there goes to a temporary upper layer that is deleted afterwards
# (used to run the README's quick start, which writes /etc/duffy and ~/.ssh, without touching
# the machine's). Sets DUFFY_FRESH_RUN=1 for the command. Needs root (mount namespaces).
set -euo pipefail

if [ "${1:-}" != --inside ]; then
    [ "${EUID:-$(id -u)}" = 0 ] || {
        echo "fresh-run.sh: needs root (mount namespace, tmpfs on /run)" >&2
        exit 1
    }
    exec unshare --mount --propagation private -- "$0" --inside "$@"
fi
shift

overlays=()
while [ $# -gt 0 ]; do
    case "$1" in
    --overlay)
        [ $# -ge 2 ] || { echo "fresh-run.sh: --overlay needs a directory" >&2; exit 2; }
        [ -d "$2" ] || { echo "fresh-run.sh: --overlay $2: not a directory" >&2; exit 2; }
        overlays+=("$2")
        shift 2
        ;;
    --) shift; break ;;
    -*) echo "fresh-run.sh: unknown option $1" >&2; exit 2 ;;
    *) break ;;
    esac
done
[ $# -gt 0 ] || { echo "usage: fresh-run.sh [--overlay DIR]… [--] COMMAND [ARG]…" >&2; exit 2; }

scratch="$(mktemp -d /tmp/duffy-fresh-run.XXXXXX)"
# the scratch directory holds the overlays' layers; it is removed when the command ends (the
# mounts go with the namespace, which ends with the last process in it)
mkdir "$scratch/real-run"
# recursive: when fresh-run.sh runs inside itself, /run/postgresql is a mount of its own
mount --rbind /run "$scratch/real-run"
mount -t tmpfs -o mode=755,nosuid,nodev duffy-fresh-run /run
mkdir -m 1777 /run/lock
ln -s /dev/shm /run/shm
for d in postgresql mysqld; do
    if [ -d "$scratch/real-run/$d" ]; then
        mkdir "/run/$d"
        mount --bind "$scratch/real-run/$d" "/run/$d"
    fi
done
umount -l "$scratch/real-run"
rmdir "$scratch/real-run"

i=0
for d in "${overlays[@]}"; do
    i=$((i + 1))
    mkdir -p "$scratch/o$i/upper" "$scratch/o$i/work"
    mount -t overlay "duffy-fresh-run-$i" \
        -o "lowerdir=$d,upperdir=$scratch/o$i/upper,workdir=$scratch/o$i/work" "$d"
done

export DUFFY_FRESH_RUN=1
status=0
"$@" || status=$?
for d in "${overlays[@]}"; do umount -l "$d" 2>/dev/null || true; done
rm -rf -- "$scratch"
exit "$status"
