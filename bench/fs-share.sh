#!/usr/bin/env bash
# fs-share vs virtiofsd (crates.io) vs the native filesystem, behind the same QEMU guest.
#
# Each virtio-fs server shares a fresh folder into the test guest (QEMU 7.2, TCG, Debian cloud
# kernel, tests/guest/build-guest.sh), which runs examples/fsbench.rs on the mount; fsbench also
# runs natively on the host. Two cache settings: none/never (every op reaches the server: the
# server's own speed) and auto (each server's default). Median of FS_SHARE_BENCH_ROUNDS (5) rounds,
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
# Every round's value of each metric, space-separated; the table shows their median.
collect() { # name file
    while read -r tag k v; do
        if [ "$tag" != RESULT ]; then continue; fi
        R["$1/$k"]+="$v "
    done < <(tr -d '\r' < "$2")
}
median() { tr ' ' '\n' <<<"$1" | sed '/^$/d' | sort -g | awk '{v[NR]=$1} END{if (NR) print v[int((NR+1)/2)]}'; }
spread() { tr ' ' '\n' <<<"$1" | sed '/^$/d' | sort -g | awk '{v[NR]=$1} END{if (NR) printf "%s-%s", v[1], v[NR]}'; }

echo "==> native" >&2
mkdir -p "$work/native"
"$fsbench" --mktree "$work/native"
for _ in 1 2 3; do
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
rounds=${FS_SHARE_BENCH_ROUNDS:-5}
for round in $(seq "$rounds"); do
echo "==> round $round of $rounds" >&2
rm -rf "$w/fsshare-none" "$w/virtiofsd-never" "$w/fsshare-auto" "$w/virtiofsd-auto"
# Odd rounds run fs-share first, even rounds virtiofsd first: no server always goes first.
for mode in none auto; do
    vmode=$mode; [ "$mode" = none ] && vmode=never
    order=(fs vfs); [ $((round % 2)) = 0 ] && order=(vfs fs)
    for who in "${order[@]}"; do
        if [ "$who" = fs ]; then
            run_guest "fsshare-$mode" "$fsshare" serve --socket "$w/fsshare-$mode/fs.sock" --shared-dir "$w/fsshare-$mode/share" --cache "$mode"
        else
            run_guest "virtiofsd-$vmode" "$virtiofsd" --socket-path "$w/virtiofsd-$vmode/fs.sock" --shared-dir "$w/virtiofsd-$vmode/share" --cache "$vmode" --sandbox none
        fi
    done
done
done

# A ratio > 1 means fs-share is better than virtiofsd on that row (faster, or less CPU).
ratio() { # metric fsshare-col virtiofsd-col
    local a b
    a=$(median "${R[$2/$1]:-}"); b=$(median "${R[$3/$1]:-}")
    [ -n "$a" ] && [ -n "$b" ] || { echo -; return; }
    if [[ $1 == *_ms || $1 == *lower_better ]]; then
        awk -v a="$a" -v b="$b" 'BEGIN{ if (a > 0) printf "%.2fx", b / a; else print "-" }'
    else
        awk -v a="$a" -v b="$b" 'BEGIN{ if (b > 0) printf "%.2fx", a / b; else print "-" }'
    fi
}
cols=(native fsshare-none virtiofsd-never fsshare-auto virtiofsd-auto)
printf '\n%-26s' "metric (guest: TCG)"
for c in "${cols[@]}"; do printf ' %24s' "$c"; done
printf ' %10s %10s\n' "none/never" "auto"
for m in seq_write_MBps seq_read_MBps rand_read_4k_IOPS create_ops stat_ops unlink_ops tree_walk_10k_ms \
    project_unpack_20k_ms project_find_stat_ms project_grep_r_ms project_rm_rf_ms server_cpu_ms_lower_better; do
    printf '%-26s' "$m"
    for c in "${cols[@]}"; do
        v=${R[$c/$m]:-}
        if [ -n "$v" ]; then printf ' %24s' "$(median "$v") [$(spread "$v")]"; else printf ' %24s' -; fi
    done
    printf ' %10s %10s\n' "$(ratio "$m" fsshare-none virtiofsd-never)" "$(ratio "$m" fsshare-auto virtiofsd-auto)"
done
printf '(median [min-max] of %s rounds, servers alternating; the last two columns: fs-share vs virtiofsd,\n > 1 = fs-share better; *_ms and server CPU: lower is better; native = host fs without a VM,\n host page cache not dropped; guest rows: QEMU TCG guest, guest page cache dropped between phases;\n load average at start: %s)\n' "$rounds" "$load"
