#!/usr/bin/env bash
# Builds (once) the tiny virtio-fs test guest: Debian's cloud kernel + an initramfs made of
# busybox-static, the virtio-fs modules and optional extra host binaries (with their shared
# libraries). Output: $CACHE/<hash>/{vmlinuz,initramfs.cpio.gz}; prints that directory.
# The hash covers this script, the kernel package version and the extra binaries.
#
# Usage: build-guest.sh [extra-binary ...]
# The guest's /init mounts tag "share" at /mnt/share, runs /mnt/share/.guest-run (if any)
# with output on the serial console, prints "GUEST-EXIT <status>" and powers off.
set -euo pipefail
cache=${VMCTL_CACHE:-$HOME/.cache/vmctl}/fs-share-guest
resolve() { apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-/{print $2; exit}'; }
kpkg=$(resolve)
if [ -z "$kpkg" ] && [ "$(id -u)" = 0 ]; then
    apt-get update -qq >&2 || true   # fresh images may have empty apt lists
    kpkg=$(resolve)
fi
[ -n "$kpkg" ] || { echo "cannot resolve linux-image-cloud-amd64 (apt lists missing?)" >&2; exit 1; }
key=$( { cat "$0"; echo "$kpkg"; for b in "$@"; do sha256sum "$b"; done; } | sha256sum | cut -c1-16)
out=$cache/$key
if [ -f "$out/initramfs.cpio.gz" ] && [ -f "$out/vmlinuz" ]; then echo "$out"; exit 0; fi
[ -x /bin/busybox ] || { echo "/bin/busybox missing (Debian busybox-static)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
( cd "$work" && apt-get download "$kpkg" >/dev/null 2>&1 ) || { echo "apt-get download $kpkg failed" >&2; exit 1; }
dpkg-deb -x "$work"/*.deb "$work/k"
kver=${kpkg#linux-image-}
root=$work/root
mkdir -p "$root"/{bin,sbin,etc,proc,sys,dev,tmp,mnt/share,lib/modules,usr/bin,usr/sbin,lib64,lib/x86_64-linux-gnu}
cp /bin/busybox "$root/bin/busybox"
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci fuse virtiofs; do
    f=$(find "$work/k/lib/modules/$kver" -name "$m.ko*" | head -n1)
    [ -n "$f" ] || { echo "module $m not found" >&2; exit 1; }
    case "$f" in
        *.xz) xz -dc "$f" > "$root/lib/modules/$m.ko" ;;
        *.zst) zstd -dqc "$f" > "$root/lib/modules/$m.ko" ;;
        *) cp "$f" "$root/lib/modules/$m.ko" ;;
    esac
done
for b in "$@"; do
    cp "$b" "$root/usr/bin/"
    for lib in $(ldd "$b" 2>/dev/null | grep -o '/[^ ]*' | sort -u); do
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done
done
cat > "$root/etc/passwd" <<'P'
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/sh
P
cat > "$root/etc/group" <<'G'
root:x:0:
daemon:x:1:
nogroup:x:65534:
G
cat > "$root/init" <<'I'
#!/bin/busybox sh
/bin/busybox --install -s
export PATH=/usr/bin:/bin:/sbin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci fuse virtiofs; do
    insmod /lib/modules/$m.ko || echo "GUEST-INSMOD-FAILED $m"
done
status=1
for i in 1 2 3 4 5 6 7 8 9 10; do
    mount -t virtiofs share /mnt/share 2>/dev/null && { status=0; break; }
    sleep 0.2
done
if [ $status = 0 ]; then
    echo "GUEST-MOUNTED"
    if [ -f /mnt/share/.guest-run ]; then
        cp /mnt/share/.guest-run /tmp/run.sh
        sh /tmp/run.sh
        status=$?
    fi
else
    echo "GUEST-MOUNT-FAILED"
    mount -t virtiofs share /mnt/share
    dmesg | tail -n 20
fi
echo "GUEST-EXIT $status"
sync
poweroff -f
I
chmod +x "$root/init"
# Build in a private dir and rename it into place, so concurrent test processes never see a
# half-written asset (the loser of the race just discards its copy).
mkdir -p "$cache"
stage=$(mktemp -d "$cache/.stage.XXXXXX")
( cd "$root" && find . | cpio -o -H newc --quiet | gzip -1 ) > "$stage/initramfs.cpio.gz"
cp "$work/k/boot/vmlinuz-$kver" "$stage/vmlinuz"
if ! mv -T "$stage" "$out" 2>/dev/null; then
    if [ -f "$out/initramfs.cpio.gz" ] && [ -f "$out/vmlinuz" ]; then
        rm -rf "$stage"
    else
        rm -rf "$out" && mv -T "$stage" "$out"
    fi
fi
echo "$out"
