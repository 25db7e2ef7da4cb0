#!/usr/bin/env bash
# Installs what the lab pool (roles/lab_node, playbooks/lab-*.yml) and its end-to-end test
# (tests/e2e_lab.rs) need on the host: OpenSSH's server (`/usr/sbin/sshd`, Debian package
# `openssh-server`; each lab node runs its own sshd inside its network namespace), the ssh
# client and ssh-keygen (`openssh-client`), `ip` (`iproute2`) and `unshare`/`setsid`/`nsenter`
# (`util-linux`); for tests/deploy_role.rs, which deploys onto a lab node, also `strip`
# (`binutils`) and `systemd-analyze` (`systemd`: the units are verified offline, nothing is
# started).
#
# Idempotent: does nothing when all of them exist. Safe to run concurrently (several tests may
# start it): the install is serialised by a lock file. The package's own sshd service is NOT
# started (a policy-rc.d denying it is put in place for the install when the machine has none):
# lab nodes start their own sshd, the host's port 22 is left alone. Needs root to install;
# without root and without the packages it fails with a message saying what to install.
set -euo pipefail

have() {
    [ -x /usr/sbin/sshd ] &&
        command -v ssh >/dev/null 2>&1 &&
        command -v ssh-keygen >/dev/null 2>&1 &&
        command -v ip >/dev/null 2>&1 &&
        command -v unshare >/dev/null 2>&1 &&
        command -v setsid >/dev/null 2>&1 &&
        command -v nsenter >/dev/null 2>&1 &&
        command -v strip >/dev/null 2>&1 &&
        command -v systemd-analyze >/dev/null 2>&1
}

if have; then
    exit 0
fi

if [ "${EUID:-$(id -u)}" != 0 ]; then
    echo "lab-deps.sh: sshd/ssh/ip/unshare missing and not root: run 'apt-get install -y openssh-server openssh-client iproute2 util-linux binutils systemd' as root" >&2
    exit 1
fi

exec 9>/tmp/duffy-lab-deps-install.lock
flock 9
if have; then # another process finished the install while we waited
    exit 0
fi

policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
    # keep dpkg from starting the package's sshd on the host's port 22
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    trap 'rm -f "$policy"' EXIT
fi

export DEBIAN_FRONTEND=noninteractive
# wait for dpkg's lock rather than fail when another setup script installs at the same time
apt=(apt-get -o DPkg::Lock::Timeout=600 -y -qq --no-install-recommends)
pkgs=(openssh-server openssh-client iproute2 util-linux binutils systemd)
if ! "${apt[@]}" install "${pkgs[@]}" >/dev/null 2>&1; then
    # a bare machine has no package lists yet (or stale ones)
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    "${apt[@]}" install "${pkgs[@]}"
fi

if ! have; then
    echo "lab-deps.sh: packages installed but /usr/sbin/sshd, ssh, ssh-keygen, ip, unshare, setsid or nsenter still missing" >&2
    exit 1
fi
