#!/usr/bin/env bash
# The main job, end to end: build vmctl, build (or reuse) the guest kernel and root image,
# `vmctl start`, then `docker run` a locally made busybox image through the forwarded socket.
# No container registry is needed: the image is imported from Debian's busybox-static.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "==> building vmctl and the guest agent (release)"
cargo build --release --workspace --exclude vmctl-tests
cargo build --release -p guest-agent --target x86_64-unknown-linux-musl
export PATH="$PWD/target/release:$PATH"

echo "==> vmctl start"
vmctl start
sock="$(vmctl status --json | sed -n 's/.*"docker_socket": "\(.*\)".*/\1/p')"
export DOCKER_HOST="unix://$sock"

if ! docker image inspect vmctl-busybox >/dev/null 2>&1; then
    echo "==> importing a busybox image made from Debian's busybox-static"
    root=$(mktemp -d)
    mkdir -p "$root/bin"
    cp /bin/busybox "$root/bin/busybox"
    for app in sh echo cat ls uname wget httpd; do ln -s busybox "$root/bin/$app"; done
    tar -C "$root" -c . | docker import - vmctl-busybox
    rm -rf "$root"
fi

echo "==> docker run --rm vmctl-busybox echo hello from the vmctl VM"
docker run --rm vmctl-busybox echo "hello from the vmctl VM"
echo
echo "The VM keeps running: use 'docker --context vmctl ...' or DOCKER_HOST=$DOCKER_HOST; 'vmctl stop' stops it."
