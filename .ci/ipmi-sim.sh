#!/usr/bin/env bash
# Installs the BMC simulator for the IPMI tests (tests/ipmi.rs): OpenIPMI's `ipmi_sim` (Debian
# package `openipmi`) and `ipmitool` (used to cross-check what duffy's IPMI client did).
#
# Idempotent: does nothing when both commands exist. Safe to run concurrently (the test binary
# may start it from several threads): apt is serialised by a lock file. Needs root to install;
# without root and without the packages it fails with a message saying what to install.
set -euo pipefail

have() { command -v ipmi_sim >/dev/null 2>&1 && command -v ipmitool >/dev/null 2>&1; }

if have; then
    exit 0
fi

if [ "${EUID:-$(id -u)}" != 0 ]; then
    echo "ipmi-sim.sh: ipmi_sim/ipmitool missing and not root: run 'apt-get install -y openipmi ipmitool' as root" >&2
    exit 1
fi

exec 9>/tmp/duffy-ipmi-sim-install.lock
flock 9
if have; then # another process finished the install while we waited
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
# wait for dpkg's lock rather than fail when another setup script installs at the same time
apt=(apt-get -o DPkg::Lock::Timeout=600 -y -qq --no-install-recommends)
if ! "${apt[@]}" install openipmi ipmitool >/dev/null 2>&1; then
    # a bare machine has no package lists yet (or stale ones)
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    "${apt[@]}" install openipmi ipmitool
fi

if ! have; then
    echo "ipmi-sim.sh: openipmi/ipmitool installed but ipmi_sim or ipmitool not on PATH" >&2
    exit 1
fi
