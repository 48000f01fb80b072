#!/usr/bin/env bash
# Benchmark: the forwarded Docker socket (host unix socket -> hybrid vsock -> agent ->
# /var/run/docker.sock) against a TCP forward of the guest's daemon (host 127.0.0.1:PORT ->
# usernet NAT -> agent TCP bridge -> /var/run/docker.sock), in one VM, one run:
#   - `GET /_ping` round trip, p50/p99 over N requests (python, one connection each)
#   - `docker version` wall time, median over N CLI runs
#   - `docker load` of a SIZE_MB image (random bytes, so nothing compresses it away)
# Usage: bench/docker-socket.sh [N] [SIZE_MB]   (defaults 30 and 500; needs root, qemu, docker)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-30}
SIZE_MB=${2:-500}

cargo build --bins -p vmctl -p usernet -p fs-share -p vmm >&2
cargo build --release -p guest-agent --target x86_64-unknown-linux-musl >&2
export PATH="$PWD/target/debug:$PATH"
work=$(mktemp -d)
export VMCTL_HOME="$work/instances" DOCKER_CONFIG="$work/docker"
mkdir -p "$DOCKER_CONFIG"
tcp_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export VMCTL_DOCKER_TCP_PORT=$tcp_port
cleanup() { vmctl --name bench stop --force >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT

vmctl --name bench config set share_home false
vmctl --name bench start --engine qemu --cpus 2 --memory 2GiB --disk-size 8GiB \
    --agent target/x86_64-unknown-linux-musl/release/guest-agent >&2
sock="$VMCTL_HOME/bench/docker.sock"
UNIX="unix://$sock"
TCP="tcp://127.0.0.1:$tcp_port"
for i in $(seq 100); do DOCKER_HOST=$TCP docker version >/dev/null 2>&1 && break; sleep 0.2; done

echo "==> making a ${SIZE_MB} MB image" >&2
mkdir -p "$work/root"
head -c "$((SIZE_MB << 20))" /dev/urandom > "$work/root/blob"
tar -C "$work/root" -cf "$work/root.tar" .
DOCKER_HOST=$UNIX docker import "$work/root.tar" bench-blob >/dev/null
DOCKER_HOST=$UNIX docker save -o "$work/image.tar" bench-blob
DOCKER_HOST=$UNIX docker rmi bench-blob >/dev/null

SOCK="$sock" TCP_PORT="$tcp_port" N="$N" python3 - <<'PY' > "$work/ping.txt"
import os, socket, statistics, time
n = int(os.environ["N"])
def ping(connect):
    lat = []
    for _ in range(n):
        t = time.perf_counter()
        s = connect()
        s.sendall(b"GET /_ping HTTP/1.0\r\nHost: d\r\n\r\n")
        data = b""
        while True:
            b = s.recv(65536)
            if not b:
                break
            data += b
        s.close()
        assert data.endswith(b"OK"), data
        lat.append((time.perf_counter() - t) * 1000)
    lat.sort()
    return statistics.median(lat), lat[min(len(lat) - 1, int(len(lat) * 0.99))]
def unix():
    s = socket.socket(socket.AF_UNIX); s.connect(os.environ["SOCK"]); return s
def tcp():
    return socket.create_connection(("127.0.0.1", int(os.environ["TCP_PORT"])))
for name, f in (("unix", unix), ("tcp", tcp)):
    p50, p99 = ping(f)
    print(f"{name} {p50:.2f} {p99:.2f}")
PY

cli_median() {
    local host=$1 times=()
    for i in $(seq "$N"); do
        local t0=$(date +%s%N)
        DOCKER_HOST=$host docker version >/dev/null
        times+=($(( ($(date +%s%N) - t0) / 1000000 )))
    done
    printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'
}
load_secs() {
    local host=$1
    local t0=$(date +%s%N)
    DOCKER_HOST=$host docker load -i "$work/image.tar" >/dev/null
    local t=$(( $(date +%s%N) - t0 ))
    DOCKER_HOST=$host docker rmi bench-blob >/dev/null
    echo "$t"
}
unix_cli=$(cli_median "$UNIX"); tcp_cli=$(cli_median "$TCP")
unix_load=$(load_secs "$UNIX"); tcp_load=$(load_secs "$TCP")

read -r _ up50 up99 < <(grep '^unix' "$work/ping.txt")
read -r _ tp50 tp99 < <(grep '^tcp' "$work/ping.txt")
mbps() { python3 -c "print(f'{$SIZE_MB / ($1 / 1e9):.1f}')"; }
secs() { python3 -c "print(f'{$1 / 1e9:.1f}')"; }
echo
echo "Docker API through the VM ($(vmctl --name bench status --json | sed -n 's/.*"engine_reason": "\(.*\)".*/\1/p'))"
printf '%-44s %12s %12s %16s %14s\n' "path" "_ping p50 ms" "_ping p99 ms" "docker version ms" "load ${SIZE_MB}MB s"
printf '%-44s %12s %12s %16s %14s\n' "docker.sock (vsock, vmctl)" "$up50" "$up99" "$unix_cli" "$(secs "$unix_load") ($(mbps "$unix_load") MB/s)"
printf '%-44s %12s %12s %16s %14s\n' "TCP forward (usernet NAT + agent bridge)" "$tp50" "$tp99" "$tcp_cli" "$(secs "$tcp_load") ($(mbps "$tcp_load") MB/s)"
