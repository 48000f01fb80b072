#!/usr/bin/env bash
# Builds (once) the vsock test guest: Debian's cloud kernel + a busybox initramfs with the
# virtio-vsock modules and vsock-util (vsock-util.c, built static here).
# Output: $CACHE/vsock-guest/<hash>/{vmlinuz,initramfs.cpio.gz}; prints that directory. The hash
# covers this script, vsock-util.c and the kernel package version.
#
# The guest's /init serves vsock ports 1234 (echo), 1235 (sink) and 1236 (source) (and TCP
# 7001-7003 likewise when it has a NIC) and 1299 (a connection reboots the guest), then
# connects to the host: port 5000 with "guest-hello <vsock_token>" (printing
# "GUEST-CONNECT <reply>") and port 5001, where nothing listens ("GUEST-REFUSED <result>"),
# prints "GUEST-READY" and waits to be killed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${VMCTL_CACHE:-$HOME/.cache/vmctl}/vsock-guest
kpkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-/{print $2; exit}')
[ -n "$kpkg" ] || { echo "cannot resolve linux-image-cloud-amd64" >&2; exit 1; }
key=$( { cat "$0" "$here/vsock-util.c"; echo "$kpkg"; } | sha256sum | cut -c1-16)
out=$cache/$key
if [ -f "$out/initramfs.cpio.gz" ] && [ -f "$out/vmlinuz" ]; then echo "$out"; exit 0; fi
command -v gcc >/dev/null || { echo "gcc is needed to build vsock-util" >&2; exit 1; }
[ -x /bin/busybox ] || { echo "busybox-static is needed (/bin/busybox)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
( cd "$work" && apt-get download "$kpkg" >/dev/null 2>&1 ) || { echo "apt-get download $kpkg failed" >&2; exit 1; }
dpkg-deb -x "$work"/*.deb "$work/k"
kver=${kpkg#linux-image-}
root=$work/root
mkdir -p "$root"/{bin,sbin,etc,proc,sys,dev,tmp,lib/modules,usr/bin,usr/sbin}
cp /bin/busybox "$root/bin/busybox"
gcc -O2 -static -Wall -o "$root/usr/bin/vsock-util" "$here/vsock-util.c"
mods="virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci vsock vmw_vsock_virtio_transport_common vmw_vsock_virtio_transport failover net_failover virtio_net"
for m in $mods; do
    f=$(find "$work/k/lib/modules/$kver" -name "$m.ko*" | head -n1)
    [ -n "$f" ] || { echo "module $m not found" >&2; exit 1; }
    case "$f" in
        *.xz) xz -dc "$f" > "$root/lib/modules/$m.ko" ;;
        *.zst) zstd -dqc "$f" > "$root/lib/modules/$m.ko" ;;
        *) cp "$f" "$root/lib/modules/$m.ko" ;;
    esac
done
cat > "$root/init" <<I
#!/bin/busybox sh
/bin/busybox --install -s
export PATH=/usr/bin:/bin:/sbin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $mods; do
    insmod /lib/modules/\$m.ko || echo "GUEST-INSMOD-FAILED \$m"
done
vsock-util echo 1234 &
vsock-util sink 1235 &
vsock-util source 1236 &
vsock-util reboot 1299 &
# With a NIC (the benchmark's QEMU user networking): the same services on TCP 7001-7003.
if ip link set eth0 up 2>/dev/null; then
    ip addr add 10.0.2.15/24 dev eth0
    vsock-util echo tcp:7001 &
    vsock-util sink tcp:7002 &
    vsock-util source tcp:7003 &
fi
token=\$(sed -n 's/.*vsock_token=\([^ ]*\).*/\1/p' /proc/cmdline)
echo "GUEST-CONNECT \$(vsock-util connect 5000 "guest-hello \$token")"
echo "GUEST-REFUSED \$(vsock-util connect 5001 x)"
echo "GUEST-READY"
while :; do sleep 3600; done
I
chmod +x "$root/init"
mkdir -p "$out.tmp"
( cd "$root" && find . | cpio -o -H newc --quiet | gzip -1 ) > "$out.tmp/initramfs.cpio.gz"
cp "$work/k/boot/vmlinuz-$kver" "$out.tmp/vmlinuz"
rm -rf "$out"
mv "$out.tmp" "$out"
echo "$out"
