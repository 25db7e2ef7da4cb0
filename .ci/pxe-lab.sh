#!/usr/bin/env bash
# Installs and builds what the real PXE boot test (tests/reinstall.rs, pxe_boot_of_a_vm_in_a_netns)
# needs:
#   - Debian packages: qemu-system-x86 (TCG), ipxe-qemu (the NIC's iPXE boot ROM), dnsmasq-base
#     (DHCP + TFTP, no service started), busybox-static and cpio (the test initrd). qemu-img is
#     not needed, but the machine image ships qemu-utils (a backport, 10.x) that Breaks the
#     distribution's qemu-system-common (7.2), so apt refuses qemu-system-x86 beside it: the
#     install then asks for qemu-utils of qemu-system-x86's own version, an explicit downgrade
#     that is logged (qemu-img stays available), never a silent removal;
#   - in $LAB (${DUFFY_PXE_LAB:-<repo>/target/pxe-lab}): `vmlinuz`, Debian's cloud kernel
#     (`apt-get download` of linux-image-cloud-amd64's kernel + `dpkg-deb -x`), and `initrd.gz`:
#     busybox, the virtio-net modules and an /init that plays the installer: DHCP, fetch the
#     kickstart named by inst.ks=, print what it got on the serial console (lines starting
#     with DUFFY-PXE-LAB:), then greet on port 22 like OpenSSH.
#
# Idempotent: does nothing when the commands exist and $LAB was built by this version of the
# recipe. Safe to run concurrently (a lock file). Needs root to install packages; without root
# and without them it fails with a message saying what to install.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LAB="${DUFFY_PXE_LAB:-$REPO/target/pxe-lab}"
PKGS=(qemu-system-x86 ipxe-qemu dnsmasq-base busybox-static cpio)
MODULES=(virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci failover
    net_failover virtio_net)

INIT='#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
say() { echo "DUFFY-PXE-LAB: $*" > /dev/console; }
say "booted; cmdline: $(cat /proc/cmdline)"
for m in '"${MODULES[*]}"'; do insmod /lib/modules/$m.ko; done
ip link set lo up
i=0
while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
ip link set eth0 up
udhcpc -i eth0 -q -f -n -t 20 -T 1 -s /udhcpc.sh > /dev/console 2>&1
say "address $(ip -4 -o addr show eth0 | awk "{print \$4}")"
ks=$(sed -n "s/.*inst[.]ks=\([^ ]*\).*/\1/p" /proc/cmdline)
if wget -q -O /ks.cfg "$ks"; then
    say "kickstart fetched: $ks"
    grep -E "^(url|sshkey|network|rootpw) " /ks.cfg | while read -r l; do say "ks: $l"; done
else
    say "kickstart NOT fetched: $ks"
fi
say "installed, sshd up"
while true; do nc -ll -p 22 -e /greet.sh; sleep 1; done
'
UDHCPC='#!/bin/sh
case "$1" in
bound | renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    [ -n "$router" ] && ip route replace default via "${router%% *}"
    ;;
esac
exit 0
'
GREET='#!/bin/sh
echo "SSH-2.0-OpenSSH_9.6 duffy-pxe-lab"
sleep 1
'
STAMP="$(printf '%s\n%s\n%s\n%s\n' "${MODULES[*]}" "$INIT" "$UDHCPC" "$GREET" | sha256sum | cut -c1-16)"

have_pkgs() {
    command -v qemu-system-x86_64 >/dev/null 2>&1 &&
        [ -e /usr/lib/ipxe/qemu/efi-virtio.rom ] &&
        { command -v dnsmasq >/dev/null 2>&1 || [ -x /usr/sbin/dnsmasq ]; } &&
        dpkg-query -W -f '${Status}' busybox-static 2>/dev/null | grep -q 'ok installed' &&
        command -v cpio >/dev/null 2>&1
}
built() { [ -s "$LAB/vmlinuz" ] && [ -s "$LAB/initrd.gz" ] && [ "$(cat "$LAB/.stamp" 2>/dev/null)" = "$STAMP" ]; }

if have_pkgs && built; then
    exit 0
fi
if [ "${EUID:-$(id -u)}" != 0 ]; then
    echo "pxe-lab.sh: needs root (packages: apt-get install -y --no-install-recommends ${PKGS[*]})" >&2
    exit 1
fi

mkdir -p "$LAB"
exec 9>"$LAB/.lock"
flock 9

# installed version of package $1 (empty if not installed), candidate version of $1
installed() { dpkg-query -W -f '${Status} ${Version}\n' "$1" 2>/dev/null | awk '$3 == "installed" {print $4}'; }
candidate() { apt-cache policy "$1" 2>/dev/null | awk '$1 == "Candidate:" {print $2}'; }

if ! have_pkgs; then
    export DEBIAN_FRONTEND=noninteractive
    apt=(apt-get -o DPkg::Lock::Timeout=600 -y -qq --no-install-recommends)
    want="$(candidate qemu-system-x86)"
    if [ -z "$want" ] || [ "$want" = "(none)" ]; then
        # a bare machine has no package lists yet (or stale ones)
        apt-get -o DPkg::Lock::Timeout=600 update -qq
        want="$(candidate qemu-system-x86)"
    fi
    [ -n "$want" ] && [ "$want" != "(none)" ] || {
        echo "pxe-lab.sh: no installable qemu-system-x86 in the configured apt sources" >&2
        exit 1
    }
    pkgs=("${PKGS[@]/#qemu-system-x86/qemu-system-x86=$want}")
    utils="$(installed qemu-utils)"
    if [ -n "$utils" ] && [ "$utils" != "$want" ]; then
        # qemu-utils and qemu-system-* come from one source package and must match (the newer
        # one Breaks the older qemu-system-common): take qemu-utils to qemu-system-x86's version
        echo "pxe-lab.sh: qemu-utils $utils is installed, qemu-system-x86 $want needs qemu-utils $want: installing qemu-utils=$want (a downgrade; qemu-img stays available)" >&2
        pkgs+=("qemu-utils=$want")
        apt+=(--allow-downgrades)
    fi
    if ! "${apt[@]}" install "${pkgs[@]}" >/dev/null 2>&1; then
        apt-get -o DPkg::Lock::Timeout=600 update -qq
        "${apt[@]}" install "${pkgs[@]}"
    fi
    have_pkgs || {
        echo "pxe-lab.sh: ${pkgs[*]} installed but qemu-system-x86_64/dnsmasq/busybox/cpio missing" >&2
        exit 1
    }
    if [ -n "$utils" ] && ! command -v qemu-img >/dev/null 2>&1; then
        echo "pxe-lab.sh: qemu-img was installed before and is gone after the install" >&2
        exit 1
    fi
fi

if built; then
    exit 0
fi
work="$(mktemp -d "$LAB/.build.XXXXXX")"
trap 'rm -rf "$work"' EXIT
# the kernel package linux-image-cloud-amd64 points at (current for this Debian release)
kpkg="$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')"
if [ -z "$kpkg" ]; then
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    kpkg="$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')"
fi
[ -n "$kpkg" ] || {
    echo "pxe-lab.sh: cannot find the kernel package of linux-image-cloud-amd64" >&2
    exit 1
}
(cd "$work" && apt-get -o APT::Sandbox::User=root -qq download "$kpkg")
dpkg-deb -x "$work"/"$kpkg"_*.deb "$work/k"

root="$work/initrd"
mkdir -p "$root"/{bin,dev,proc,sys,lib/modules}
cp /bin/busybox "$root/bin/busybox"
for m in "${MODULES[@]}"; do
    f="$(find "$work/k/lib/modules" -name "$m.ko" -print -quit)"
    [ -n "$f" ] || {
        echo "pxe-lab.sh: module $m.ko not in $kpkg" >&2
        exit 1
    }
    cp "$f" "$root/lib/modules/"
done
printf '%s' "$INIT" >"$root/init"
printf '%s' "$UDHCPC" >"$root/udhcpc.sh"
printf '%s' "$GREET" >"$root/greet.sh"
chmod 0755 "$root/init" "$root/udhcpc.sh" "$root/greet.sh"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1 >"$work/initrd.gz")

cp "$work"/k/boot/vmlinuz-* "$work/vmlinuz"
mv -f "$work/vmlinuz" "$LAB/vmlinuz"
mv -f "$work/initrd.gz" "$LAB/initrd.gz"
echo "$kpkg" >"$LAB/kernel-package"
echo "$STAMP" >"$LAB/.stamp"
