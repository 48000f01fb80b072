#!/usr/bin/env bash
# Guest boot benchmark: boot → dockerd-ready under the qemu engine, split by phase
# (kernel, agent, containerd, dockerd), first boot (formats the data disk) and second
# boot side by side. Builds/reuses the cached kernel and root image first.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo run --quiet --release -p vmctl-tests --example guest_boot
