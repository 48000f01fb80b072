#!/usr/bin/env bash
# fs-share vs virtiofsd (crates.io) vs the native filesystem, behind the same QEMU guest.
#
# Each virtio-fs server shares a fresh folder into the test guest (QEMU 7.2, TCG, Debian cloud
# kernel, tests/guest/build-guest.sh), which runs examples/fsbench.rs on the mount; fsbench also
# runs natively on the host. Two cache settings: none/never (every op reaches the server: the
# server's own speed) and auto (each server's default). Best of FS_SHARE_BENCH_ROUNDS (2) rounds,
# alternating servers, because the machine is shared. Prints one table.
#
# Needs: qemu-system-x86, cpio, apt-get; builds virtiofsd into ~/.cache/vmctl/tools once
# (needs libseccomp-dev libcap-ng-dev). Run as root (virtiofsd and drop_caches want it).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$repo/target}
tools=${VMCTL_CACHE:-$HOME/.cache/vmctl}/tools

echo "==> building fs-share and fsbench (release)" >&2
cargo build -q --release -p fs-share --bin fs-share --example fsbench >&2
fsshare=$CARGO_TARGET_DIR/release/fs-share
fsbench=$CARGO_TARGET_DIR/release/examples/fsbench
if [ ! -x "$tools/bin/virtiofsd" ]; then
    echo "==> building virtiofsd into $tools (once)" >&2
    for p in libseccomp-dev libcap-ng-dev; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$p" >&2
    done
    cargo install -q virtiofsd --root "$tools" >&2
fi
virtiofsd=$tools/bin/virtiofsd
echo "==> guest assets" >&2
assets=$(bash "$repo/fs-share/tests/guest/build-guest.sh" "$fsbench")

work=$(mktemp -d /tmp/fs-share-bench.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

load=$(cut -d' ' -f1-3 /proc/loadavg)
declare -A R
# Keeps the best value over rounds (the machine is shared and noisy): max, or min for *_ms.
collect() { # name file
    while read -r tag k v; do
        if [ "$tag" != RESULT ]; then continue; fi
        local old=${R["$1/$k"]:-}
        if [ -z "$old" ]; then
            R["$1/$k"]=$v
        elif [[ $k == *_ms || $k == *lower_better ]]; then
            R["$1/$k"]=$(awk -v a="$old" -v b="$v" 'BEGIN{print (b<a)?b:a}')
        else
            R["$1/$k"]=$(awk -v a="$old" -v b="$v" 'BEGIN{print (b>a)?b:a}')
        fi
    done < <(tr -d '\r' < "$2")
}

echo "==> native" >&2
mkdir -p "$work/native"
"$fsbench" --mktree "$work/native"
for _ in 1 2; do
    "$fsbench" "$work/native" > "$work/native.out"
    collect native "$work/native.out"
done

only=${FS_SHARE_BENCH_ONLY:-}   # e.g. "fsshare-none virtiofsd-never" to run a subset
run_guest() { # name server-command...
    local name=$1; shift
    if [ -n "$only" ] && [[ " $only " != *" $name "* ]]; then return 0; fi
    local share=$work/$name/share sock=$work/$name/fs.sock
    mkdir -p "$share"
    "$fsbench" --mktree "$share"
    printf 'FSBENCH_DROP_CACHES=1 fsbench /mnt/share\n' > "$share/.guest-run"
    echo "==> $name" >&2
    /usr/bin/time -f "%U %S" -o "$work/$name/cpu" "$@" > "$work/$name/server.log" 2>&1 &
    local spid=$!
    pids+=("$spid")
    for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
    [ -S "$sock" ] || { echo "$name: no socket" >&2; cat "$work/$name/server.log" >&2; return 1; }
    timeout 900 qemu-system-x86_64 -accel tcg -m 1024 -smp 1 \
        -object memory-backend-memfd,id=mem,size=1024M,share=on -numa node,memdev=mem \
        -chardev "socket,id=fs,path=$sock" -device vhost-user-fs-pci,chardev=fs,tag=share \
        -kernel "$assets/vmlinuz" -initrd "$assets/initramfs.cpio.gz" \
        -append "console=ttyS0 quiet panic=-1" -nographic -no-reboot -nodefaults -serial stdio \
        < /dev/null > "$work/$name/console.out" 2>&1 || true
    # Both servers exit when the frontend disconnects; then GNU time has written their CPU
    # time (user+system for the whole guest run): the server's own cost, much less sensitive
    # to other load on this shared machine than the guest-side rates.
    for _ in $(seq 100); do kill -0 "$spid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$spid" 2>/dev/null; then pkill -P "$spid" 2>/dev/null || true; kill "$spid" 2>/dev/null || true; fi
    wait "$spid" 2>/dev/null || true
    if [ -s "$work/$name/cpu" ]; then
        echo "RESULT server_cpu_ms_lower_better $(awk 'NR==1{print ($1+$2)*1000}' "$work/$name/cpu")" >> "$work/$name/console.out"
    fi
    grep -q "GUEST-EXIT 0" "$work/$name/console.out" || { echo "$name: guest run failed" >&2; tail -20 "$work/$name/console.out" >&2; }
    collect "$name" "$work/$name/console.out"
}

w=$work
rounds=${FS_SHARE_BENCH_ROUNDS:-2}
for round in $(seq "$rounds"); do
echo "==> round $round of $rounds" >&2
rm -rf "$w/fsshare-none" "$w/virtiofsd-never" "$w/fsshare-auto" "$w/virtiofsd-auto"
run_guest fsshare-none "$fsshare" serve --socket "$w/fsshare-none/fs.sock" --shared-dir "$w/fsshare-none/share" --cache none
run_guest virtiofsd-never "$virtiofsd" --socket-path "$w/virtiofsd-never/fs.sock" --shared-dir "$w/virtiofsd-never/share" --cache never --sandbox none
run_guest fsshare-auto "$fsshare" serve --socket "$w/fsshare-auto/fs.sock" --shared-dir "$w/fsshare-auto/share" --cache auto
run_guest virtiofsd-auto "$virtiofsd" --socket-path "$w/virtiofsd-auto/fs.sock" --shared-dir "$w/virtiofsd-auto/share" --cache auto --sandbox none
done

cols=(native fsshare-none virtiofsd-never fsshare-auto virtiofsd-auto)
printf '\n%-22s' "metric (guest: TCG)"
for c in "${cols[@]}"; do printf ' %16s' "$c"; done
printf '\n'
for m in seq_write_MBps seq_read_MBps rand_read_4k_IOPS create_ops stat_ops unlink_ops tree_walk_10k_ms server_cpu_ms_lower_better; do
    printf '%-22s' "$m"
    for c in "${cols[@]}"; do printf ' %16s' "${R[$c/$m]:--}"; done
    printf '\n'
done
printf '(higher is better except tree_walk_10k_ms; native = host fs without a VM, host page cache not dropped;\n guest rows: QEMU TCG guest, guest page cache dropped between phases; load average at start: %s)\n' "$load"
