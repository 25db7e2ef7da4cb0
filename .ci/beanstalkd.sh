#!/usr/bin/env bash
# Installs beanstalkd (Debian package `beanstalkd`) for the event bus tests (tests/events_bus.rs).
# The tests start their own `beanstalkd -l 127.0.0.1 -p PORT [-b DIR]` on a free port; the
# package's own service is NOT started (a policy-rc.d denying it is put in place for the install
# when the machine has none).
#
# Idempotent: does nothing when `beanstalkd` exists. Safe to run concurrently (apt is
# serialised by a lock file). Needs root to install; without root and without the package it
# fails with a message saying what to install.
set -euo pipefail

have() { command -v beanstalkd >/dev/null 2>&1; }

if have; then
    exit 0
fi

if [ "${EUID:-$(id -u)}" != 0 ]; then
    echo "beanstalkd.sh: beanstalkd missing and not root: run 'apt-get install -y beanstalkd' as root" >&2
    exit 1
fi

exec 9>/tmp/duffy-beanstalkd-install.lock
flock 9
if have; then # another process finished the install while we waited
    exit 0
fi

policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
    # keep dpkg from starting the package's beanstalkd on port 11300
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    trap 'rm -f "$policy"' EXIT
fi

export DEBIAN_FRONTEND=noninteractive
apt=(apt-get -o DPkg::Lock::Timeout=600 -y -qq --no-install-recommends)
if ! "${apt[@]}" install beanstalkd >/dev/null 2>&1; then
    # a bare machine has no package lists yet (or stale ones)
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    "${apt[@]}" install beanstalkd
fi

if ! have; then
    echo "beanstalkd.sh: beanstalkd installed but not on PATH" >&2
    exit 1
fi
