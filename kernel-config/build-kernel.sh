#!/usr/bin/env bash
# Build the vmctl guest kernel from Debian's linux-source package, cached by input hash.
#
# Usage: build-kernel.sh [x86_64]        (arm64 fragments exist for the macOS path; they
#                                          are not built on x86_64 hosts)
# Prints progress on stderr and, last on stdout, the cache directory holding
# `bzImage` and `.config`. Idempotent: when ~/.cache/vmctl/kernel/<hash>/bzImage exists
# it is reused without building. The hash covers the fragments, the source tarball and
# RECIPE below (bump it when the build steps change what is produced), so changing any
# of them gives a new kernel; editing comments or progress output does not.
# Concurrent runs are serialised by a lock in the cache directory.
#
# Written as a script rather than Rust because it is a straight sequence of the kernel's
# own make targets; `vmctl image build` calls it and parses the last line.
set -euo pipefail
RECIPE=2

arch="${1:-x86_64}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
src_tar="${VMCTL_LINUX_SOURCE:-$(ls /usr/src/linux-source-*.tar.xz 2>/dev/null | sort -V | tail -n1)}"
cache_root="${VMCTL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vmctl}/kernel"
jobs="${VMCTL_KERNEL_JOBS:-$(nproc)}"

log() { printf '[kernel %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

[ -f "$src_tar" ] || { echo "error: no /usr/src/linux-source-*.tar.xz (apt-get install linux-source-6.1)" >&2; exit 1; }
case "$arch" in
  x86_64) karch=x86_64; image=arch/x86/boot/bzImage ;;
  *) echo "error: building a $arch kernel is not supported on this host" >&2; exit 1 ;;
esac

fragments=("$here/common/core.config" "$here/common/base.config" "$here/$arch/guest.config")
# Hash of everything that determines the output: tarball identity (name, size, mtime is
# not stable across installs, so its content hash), fragments and this script.
tar_sum_file="$cache_root/.tarsum-$(basename "$src_tar")-$(stat -c %s "$src_tar")"
mkdir -p "$cache_root"
exec 9>"$cache_root/.build.lock"
flock 9
if [ ! -s "$tar_sum_file" ]; then
  log "hashing $src_tar"
  sha256sum "$src_tar" | cut -d' ' -f1 > "$tar_sum_file.tmp" && mv "$tar_sum_file.tmp" "$tar_sum_file"
fi
hash="$( { echo "recipe $RECIPE $arch"; cat "$tar_sum_file"; cat "${fragments[@]}"; } | sha256sum | cut -c1-16)"
out="$cache_root/$hash"

if [ -s "$out/bzImage" ] && [ -s "$out/.config" ]; then
  log "cached: $out"
  echo "$out"
  exit 0
fi

work="$cache_root/build-$hash"
rm -rf "$work"
mkdir -p "$work"
trap 'rm -rf "$work"' EXIT
log "extracting $(basename "$src_tar") into $work"
tar -C "$work" --strip-components=1 -xaf "$src_tar"
cd "$work"

# Reproducible build identity.
export KBUILD_BUILD_USER=vmctl KBUILD_BUILD_HOST=vmctl KBUILD_BUILD_VERSION=1
export KBUILD_BUILD_TIMESTAMP="${SOURCE_DATE_EPOCH:+@$SOURCE_DATE_EPOCH}"
[ -n "$KBUILD_BUILD_TIMESTAMP" ] || export KBUILD_BUILD_TIMESTAMP="1970-01-01"

# LinuxKit-style lean kernel: start from nothing (allnoconfig) and turn on only what the
# fragments ask for; their dependencies come with their defaults (olddefconfig).
log "configuring: allnoconfig + ${fragments[*]##*/kernel-config/}"
make -s ARCH="$karch" allnoconfig >&2
scripts/kconfig/merge_config.sh -m .config "${fragments[@]}" >/dev/null
# Kconfig notes each fragment that picks a non-default choice entry (preemption, tick);
# that is the point of the fragments, so those notes are not shown.
conf_out=$(make -s ARCH="$karch" olddefconfig 2>&1) || { echo "$conf_out" >&2; exit 1; }
grep -v 'changes choice state' <<<"$conf_out" >&2 || true

# Every explicit fragment value must have survived olddefconfig (a dependency that is not
# met silently drops an option); report each that did not.
dropped=0
while IFS= read -r line; do
  case "$line" in
    CONFIG_*=*) key="${line%%=*}"; grep -qxF "$line" .config || { log "warning: $line requested, .config has: $(grep -E "^(# )?$key[= ]" .config || echo unset)"; dropped=1; } ;;
    "# CONFIG_"*" is not set") key="${line#\# }"; key="${key%% *}"; grep -qE "^$key=" .config && { log "warning: $key requested off but is on"; dropped=1; } ;;
  esac
done < <(cat "${fragments[@]}")
[ "$dropped" = 0 ] || log "some fragment options did not apply (see warnings above)"

"$here/check-config.sh" .config >&2

# Progress with a percentage and an ETA: the total is the object count of the last build
# here (1800 for our config on the first one), so the estimate holds for this config.
count_file="$cache_root/.objects-$arch-r$RECIPE"
total=$(cat "$count_file" 2>/dev/null || echo 1800)
log "compiling bzImage with -j$jobs (~$total objects, progress every 100)"
start=$(date +%s)
make ARCH="$karch" -j"$jobs" "$(basename "$image")" 2>&1 | awk -v s="$start" -v total="$total" -v count_file="$count_file.new" '
  /^  CC / {
    n++
    if (n % 100 == 0) {
      t = systime() - s; pct = int(n * 100 / total); if (pct > 99) pct = 99
      left = (n < total) ? int(t * (total - n) / n) : 0
      printf "[kernel] %d/~%d objects (%d%%), %ds, about %ds left\n", n, total, pct, t, left > "/dev/stderr"
      fflush("/dev/stderr")
    }
  }
  /: error:|: fatal error:|\*\*\*|Error [0-9]/ { print > "/dev/stderr" }
  END { if (n > 0) print n > count_file }'
[ "${PIPESTATUS[0]}" = 0 ] || { log "make failed"; exit 1; }
mv -f "$count_file.new" "$count_file" 2>/dev/null || true
[ -s "$image" ] || { log "make produced no $image"; exit 1; }

mkdir -p "$out.tmp"
cp "$image" "$out.tmp/bzImage"
cp .config "$out.tmp/.config"
rm -rf "$out"
mv "$out.tmp" "$out"
log "built in $(( $(date +%s) - start ))s: $out/bzImage ($(stat -c %s "$out/bzImage") bytes)"
echo "$out"
