#!/usr/bin/env bash
# The host-side steps of roles/lab_node that Ansible has no module for (ip(8), sshd in a
# network + mount namespace), each idempotent and able to run in check mode.
#
#   lab-node.sh up    CHECK STATE_DIR NETNS BRIDGE NETWORK GATEWAY PREFIXLEN ADDRESS
#   lab-node.sh sshd  CHECK STATE_DIR NETNS HOSTNAME RESTART SSHD
#   lab-node.sh down  CHECK STATE_DIR NETNS
#
# CHECK is 1 in check mode (report, change nothing). Every change is printed as a line starting
# with "CHANGED:" (the role's changed_when); errors go to stderr with exit status 1.
#
# What belongs to the role is recorded in STATE_DIR: a node directory STATE_DIR/NETNS per node
# (its bridge, address, host key, sshd_config, pid file, /root), and STATE_DIR/bridges/BRIDGE for
# a bridge the role created. A namespace or link of that name without a node directory is not
# the role's and is never touched. Bridge creation/deletion and node directory creation/removal
# happen under one lock (STATE_DIR/.lock), so concurrent playbooks never delete a bridge another
# node is being added to.
set -euo pipefail

die() {
    echo "lab-node: $*" >&2
    exit 1
}
changed() { echo "CHANGED: $*"; }

[ $# -ge 4 ] || die "usage: lab-node.sh up|sshd|down CHECK STATE_DIR NETNS …"
action=$1 check=$2 state=$3 ns=$4
shift 4
case "$state" in
/?*) ;;
*) die "state dir must be an absolute path, got '$state'" ;;
esac
[ "$state" != / ] || die "state dir must not be /"
[[ "$ns" =~ ^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$ ]] || die "bad netns name '$ns'"
dir="$state/$ns"
lock="$state/.lock"

netns_exists() { [ -e "/run/netns/$1" ] && ip netns list | awk '{print $1}' | grep -qxF -- "$1"; }
link_exists() { ip link show dev "$1" >/dev/null 2>&1; }

# is $1 the node's sshd listener (its command line, its netns)?
is_node_sshd() {
    tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -qF -- "-f $dir/sshd_config " &&
        [ "$(ip netns identify "$1" 2>/dev/null)" = "$ns" ]
}

# pid of the node's sshd listener, if it runs: from the pid file, else (a run interrupted
# between sshd's start and its pid file) found among the netns' processes
sshd_pid() {
    local pid
    pid=$(cat "$dir/sshd.pid" 2>/dev/null) || pid=
    if [[ "$pid" =~ ^[0-9]+$ ]] && is_node_sshd "$pid"; then
        echo "$pid"
        return 0
    fi
    netns_exists "$ns" || return 1
    for pid in $(ip netns pids "$ns" 2>/dev/null); do
        if is_node_sshd "$pid"; then
            echo "$pid"
            return 0
        fi
    done
    return 1
}

# send TERM to the pids, then KILL to those still alive after 5 s
stop_pids() {
    [ $# -gt 0 ] || return 0
    kill -TERM "$@" 2>/dev/null || true
    local p alive
    for _ in $(seq 50); do
        alive=()
        for p in "$@"; do
            kill -0 "$p" 2>/dev/null && alive+=("$p")
        done
        [ ${#alive[@]} -gt 0 ] || return 0
        sleep 0.1
    done
    kill -KILL "${alive[@]}" 2>/dev/null || true
}

up() {
    [ $# -eq 5 ] || die "usage: lab-node.sh up CHECK STATE_DIR NETNS BRIDGE NETWORK GATEWAY PREFIXLEN ADDRESS"
    local br=$1 network=$2 gw=$3 plen=$4 addr=$5 other f
    [ -d "$dir" ] || ! { netns_exists "$ns" || link_exists "$ns"; } ||
        die "network namespace or link '$ns' exists but was not created by lab_node (no $dir): not touching it"
    if [ "$check" = 1 ]; then
        if ! link_exists "$br"; then
            changed "(check) create bridge $br with $gw/$plen"
        elif [ ! -e "$state/bridges/$br" ] && ! ip -o -4 addr show dev "$br" | grep -q " inet $gw/$plen "; then
            die "bridge $br exists (not created by lab_node) without address $gw/$plen: add it or choose another lab_bridge"
        fi
        [ -d "$dir" ] || changed "(check) create node directory $dir"
        netns_exists "$ns" || changed "(check) create network namespace $ns"
        link_exists "$ns" || changed "(check) create veth $ns on $br, $addr/$plen inside"
        return 0
    fi
    if [ ! -d "$state" ]; then
        mkdir -p -- "$state"
        chmod 700 -- "$state"
    fi
    mkdir -p "$state/bridges"
    exec 9>"$lock"
    flock 9
    # the address must not be another node's (ids that wrap around a small lab_subnet)
    for f in "$state"/*/address; do
        if [ ! -e "$f" ] || [ "$f" = "$dir/address" ]; then
            continue
        fi
        if [ "$(cat "$f")" = "$addr" ]; then
            die "address $addr of $ns is already used by $(basename "$(dirname "$f")"): lab_subnet $network/$plen is too small for the node ids in use"
        fi
    done
    # the bridge (and its gateway address), and this node's directory, under the lock
    if ! link_exists "$br"; then
        other=$(ip -o -4 addr show to "$network/$plen" | awk '{print $2}' | sort -u | tr '\n' ' ')
        [ -z "$other" ] || die "lab_subnet $network/$plen overlaps addresses on $other: choose another lab_subnet"
        ip link add name "$br" type bridge
        : >"$state/bridges/$br"
        changed "created bridge $br"
    fi
    if [ -e "$state/bridges/$br" ]; then
        if ! ip -o -4 addr show dev "$br" | grep -q " inet $gw/$plen "; then
            ip addr add "$gw/$plen" dev "$br"
            changed "address $gw/$plen on $br"
        fi
        if ! ip -o link show dev "$br" | grep -q '[<,]UP[,>]'; then
            ip link set dev "$br" up
            changed "bridge $br up"
        fi
    elif ! ip -o -4 addr show dev "$br" | grep -q " inet $gw/$plen "; then
        die "bridge $br exists (not created by lab_node) without address $gw/$plen: add it or choose another lab_bridge"
    fi
    if [ ! -d "$dir" ]; then
        mkdir -m 700 "$dir"
        changed "created node directory $dir"
    fi
    [ "$(cat "$dir/bridge" 2>/dev/null)" = "$br" ] || echo "$br" >"$dir/bridge"
    [ "$(cat "$dir/address" 2>/dev/null)" = "$addr" ] || echo "$addr" >"$dir/address"
    flock -u 9
    exec 9>&-

    if ! netns_exists "$ns"; then
        ip netns add "$ns"
        changed "created network namespace $ns"
    fi
    if ! ip -n "$ns" -o link show dev lo | grep -q '[<,]UP[,>]'; then
        ip -n "$ns" link set dev lo up
        changed "lo up in $ns"
    fi
    if ! link_exists "$ns"; then
        ip link add name "$ns" type veth peer name eth0 netns "$ns"
        changed "created veth $ns"
    fi
    if ! ip -o link show dev "$ns" | grep -q " master $br "; then
        ip link set dev "$ns" master "$br"
        changed "$ns enslaved to $br"
    fi
    if ! ip -o link show dev "$ns" | grep -q '[<,]UP[,>]'; then
        ip link set dev "$ns" up
        changed "$ns up"
    fi
    if ! ip -n "$ns" -o -4 addr show dev eth0 | grep -q " inet $addr/$plen "; then
        ip -n "$ns" addr flush dev eth0 scope global
        ip -n "$ns" addr add "$addr/$plen" dev eth0
        changed "address $addr/$plen in $ns"
    fi
    if ! ip -n "$ns" -o link show dev eth0 | grep -q '[<,]UP[,>]'; then
        ip -n "$ns" link set dev eth0 up
        changed "eth0 up in $ns"
    fi
    if ! ip -n "$ns" route show default | grep -q "^default via $gw dev eth0"; then
        ip -n "$ns" route replace default via "$gw" dev eth0
        changed "default route via $gw in $ns"
    fi
}

sshd() {
    [ $# -eq 3 ] || die "usage: lab-node.sh sshd CHECK STATE_DIR NETNS HOSTNAME RESTART SSHD"
    local hostname=$1 restart=$2 sshd_bin=$3 pid
    pid=$(sshd_pid) || pid=
    if [ -n "$pid" ] && [ "$restart" != 1 ]; then
        return 0
    fi
    if [ "$check" = 1 ]; then
        changed "(check) ${pid:+re}start sshd in $ns"
        return 0
    fi
    netns_exists "$ns" || die "network namespace $ns missing"
    if [ -n "$pid" ]; then
        stop_pids "$pid"
    fi
    rm -f "$dir/sshd.pid"
    # sshd's privilege separation directory (the role's task made it; /run may have been
    # emptied since, and sshd refuses a group- or world-writable one)
    install -d -o root -g root -m 755 /run/sshd
    # In the node's netns and a private mount (and UTS) namespace where the node's directory is
    # /root: the API's contextualization writes ~root/.ssh/authorized_keys of the node, not the
    # host's. sshd daemonizes (fork + setsid), so it is in no process group of the playbook and
    # outlives it; its pid file is in the node directory.
    # shellcheck disable=SC2016 # $1… are the inner shell's arguments
    ip netns exec "$ns" unshare --mount --uts --propagation private \
        sh -c 'hostname "$2" && mount --bind "$1/root" /root && exec "$3" -f "$1/sshd_config" -E "$1/sshd.log"' \
        sh "$dir" "$hostname" "$sshd_bin" </dev/null >/dev/null 2>>"$dir/sshd.log" ||
        die "sshd for $ns did not start: $(tail -n 3 "$dir/sshd.log" 2>/dev/null | tr '\n' ' ')"
    for _ in $(seq 100); do
        sshd_pid >/dev/null && break
        sleep 0.1
    done
    sshd_pid >/dev/null ||
        die "sshd for $ns did not start: $(tail -n 3 "$dir/sshd.log" 2>/dev/null | tr '\n' ' ')"
    changed "${pid:+re}started sshd in $ns"
}

down() {
    [ $# -eq 0 ] || die "usage: lab-node.sh down CHECK STATE_DIR NETNS"
    local pids pid br left f
    if [ ! -d "$dir" ]; then
        if netns_exists "$ns" || link_exists "$ns"; then
            echo "lab-node: $ns exists but was not created by lab_node (no $dir): left alone" >&2
        fi
        return 0
    fi
    if [ "$check" = 1 ]; then
        changed "(check) tear down $ns and remove $dir"
        return 0
    fi
    # every process of the node: whatever runs in its netns (sshd, tenants' sessions), and the
    # sshd of the pid file should the netns be gone already
    pids=()
    if netns_exists "$ns"; then
        for pid in $(ip netns pids "$ns" 2>/dev/null); do pids+=("$pid"); done
    fi
    if pid=$(sshd_pid) && [[ " ${pids[*]} " != *" $pid "* ]]; then
        pids+=("$pid")
    fi
    if [ ${#pids[@]} -gt 0 ]; then
        stop_pids "${pids[@]}"
        changed "stopped ${#pids[@]} process(es) of $ns"
    fi
    if netns_exists "$ns"; then
        ip netns del "$ns"
        changed "deleted network namespace $ns"
    fi
    # the veth pair goes with the netns (asynchronously); delete it if it is still there
    if link_exists "$ns" && ip -d -o link show dev "$ns" | grep -q ' veth '; then
        ip link del dev "$ns" 2>/dev/null || true
        changed "deleted veth $ns"
    fi
    for _ in $(seq 50); do
        link_exists "$ns" || break
        sleep 0.1
    done
    ! link_exists "$ns" || die "veth $ns still exists after its netns was deleted"

    mkdir -p "$state/bridges"
    exec 9>"$lock"
    flock 9
    br=$(cat "$dir/bridge" 2>/dev/null) || br=
    rm -rf -- "$dir"
    changed "removed $dir (host key, authorized_keys, sshd_config)"
    # the bridge goes with the last node, if this role created it and nothing else is on it
    if [ -n "$br" ] && [ -e "$state/bridges/$br" ]; then
        left=0
        for f in "$state"/*/bridge; do
            [ -e "$f" ] && [ "$(cat "$f")" = "$br" ] && left=$((left + 1))
        done
        if [ "$left" = 0 ]; then
            if ! link_exists "$br"; then
                rm -f "$state/bridges/$br"
            elif [ -z "$(ip -o link show master "$br")" ]; then
                ip link del dev "$br"
                rm -f "$state/bridges/$br"
                changed "deleted bridge $br (no lab node left)"
            else
                echo "lab-node: bridge $br kept: interfaces not made by lab_node are on it" >&2
            fi
        fi
    fi
}

case "$action" in
up) up "$@" ;;
sshd) sshd "$@" ;;
down) down "$@" ;;
*) die "unknown action '$action' (up, sshd, down)" ;;
esac
