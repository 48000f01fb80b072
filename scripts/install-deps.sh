#!/usr/bin/env bash
# Installs what building and running vmctl needs on Debian/Ubuntu; with --tests, also what
# the test suite and benchmarks need (scripts/test-all.sh passes it). Idempotent.
# Packages come from scripts/apt-packages/*.txt (one per line, '#' comments): base, demo and
# guest for the main job, every list with --tests.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"
tests=0
case "${1:-}" in
    --tests) tests=1 ;;
    "") ;;
    *) echo "usage: $0 [--tests]" >&2; exit 2 ;;
esac
lists=("$here"/apt-packages/{base,demo,guest}.txt)
[ "$tests" = 0 ] || lists=("$here"/apt-packages/*.txt)

mapfile -t pkgs < <(cat "${lists[@]}" | sed 's/#.*//' | tr -s ' \t' '\n' | sed '/^$/d' | sort -u)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "==> apt-get install ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The root image is built as the user, in a user namespace (mmdebstrap --mode=unshare): that
# needs a range of subordinate uids and gids. Debian's adduser gives new users one; older
# accounts may have none.
user=${SUDO_USER:-$(id -un)}
if [ "$user" != root ] && ! { grep -q "^$user:" /etc/subuid 2>/dev/null && grep -q "^$user:" /etc/subgid 2>/dev/null; }; then
    # The first free 65536-id range above every range already handed out.
    start=$(cat /etc/subuid /etc/subgid 2>/dev/null | awk -F: 'BEGIN{m=100000} {e=$2+$3; if (e>m) m=e} END{print m}')
    echo "==> subordinate ids $start-$((start + 65535)) for $user (mmdebstrap's user namespace)"
    $sudo usermod --add-subuids "$start-$((start + 65535))" --add-subgids "$start-$((start + 65535))" "$user"
fi

# The docker CLI talks to the VM's daemon. A machine without one gets the client alone from
# Debian's docker.io package (unpacked, not installed: that package would also install and
# start a local dockerd and containerd, which vmctl users do not want).
if ! command -v docker >/dev/null; then
    echo "==> the docker CLI (client only, from Debian's docker.io package)"
    tmp=$(mktemp -d)
    dest=${VMCTL_DOCKER_CLI_DEST:-/usr/local/bin}
    (cd "$tmp" && { apt-get download -qq docker.io >/dev/null ||
        { $sudo apt-get update -qq && apt-get download -qq docker.io >/dev/null; }; })
    dpkg-deb -x "$tmp"/docker.io_*.deb "$tmp/root"
    $sudo install -m 0755 "$tmp/root/usr/bin/docker" "$dest/docker"
    rm -rf "$tmp"
    "$dest/docker" --version
fi

if ! command -v cargo >/dev/null; then
    echo "==> installing the Rust toolchain (rustup, from Debian)"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq rustup 2>/dev/null || true
    rustup default stable
fi
# The guest agent is a static musl binary; the tests also build freestanding test guests and
# type-check the macOS and Windows backends.
want_targets=(x86_64-unknown-linux-musl)
[ "$tests" = 0 ] || want_targets+=(x86_64-unknown-none aarch64-apple-darwin x86_64-pc-windows-msvc)
have=$(rustup target list --installed)
for t in "${want_targets[@]}"; do
    grep -qx "$t" <<<"$have" || rustup target add "$t"
done
if [ "$tests" = 1 ] && ! cargo nextest --version >/dev/null 2>&1; then
    echo "==> cargo install cargo-nextest"
    cargo install --locked cargo-nextest
fi
echo "==> dependencies ready"
