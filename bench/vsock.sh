#!/usr/bin/env bash
# Benchmark: vsock through the hybrid socket (vmm-vsock-backend, vhost-user, QEMU TCG guest)
# side by side with a plain host unix socket (the floor: no VM at all) and a TCP forward of
# the same guest (QEMU user networking, hostfwd), in one table:
#   - round-trip latency: 1-byte ping-pong on one connection (median and p99 of N);
#   - host → guest bulk: SIZE MiB to a sink that answers with the byte count after EOF;
#   - guest → host bulk: SIZE MiB from a source;
#   - connect: new connection + first echo (median of 50).
# Guest: Debian's cloud kernel + busybox + vsock-util (vmm/tests/vsock_qemu/build-guest.sh),
# serving echo/sink/source on vsock 1234-1236 and TCP 7001-7003. The builtin engine's
# in-process device runs the same muxer, but on this PVM host only freestanding test guests
# boot there (no Linux network stack to compare against), so it has no row here.
#
# Second table, when the project's kernel and root image are cached (~/.cache/vmctl): the
# Docker socket path — `docker version` latency (median of DOCKER_N CLI runs) and `docker load`
# of a DOCKER_LOAD_MIB image (random bytes, one layer) — through a unix socket relayed to
# guest vsock port 2375 (as the supervisor's docker.sock does) versus the guest agent's TCP
# bridge (vmctl.docker_tcp=2375) behind a QEMU hostfwd. DOCKER=0 skips it.
#
# Usage: bench/vsock.sh [SIZE_MIB] [N]     (defaults 128 and 2000)
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${1:-${SIZE:-128}}
N=${2:-${N:-2000}}
target=${CARGO_TARGET_DIR:-target}
command -v qemu-system-x86_64 >/dev/null || { echo "bench/vsock.sh: qemu-system-x86_64 is missing" >&2; exit 1; }
echo "==> building vmm-vsock-backend (release) and the guest" >&2
cargo build --release -p vmm --bin vmm-vsock-backend >&2
assets=$(bash vmm/tests/vsock_qemu/build-guest.sh)
work=$(mktemp -d)
pids=()
# QEMU first (it is the last pid), then the backend, so QEMU does not report a lost backend.
cleanup() {
    for ((i=${#pids[@]}-1; i>=0; i--)); do kill "${pids[i]}" 2>/dev/null || true; wait "${pids[i]}" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
tcp_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

"$target/release/vmm-vsock-backend" --socket "$work/vhost.sock" --uds-path "$work/v.sock" \
    --guest-cid 3 --once &
pids+=($!)
for _ in $(seq 100); do [ -S "$work/vhost.sock" ] && break; sleep 0.05; done
qemu-system-x86_64 -accel tcg -smp 2 -m 512M \
    -object memory-backend-memfd,id=mem,size=512M,share=on -numa node,memdev=mem \
    -chardev socket,id=vs,path="$work/vhost.sock" -device vhost-user-vsock-pci,chardev=vs \
    -netdev "user,id=n0,hostfwd=tcp:127.0.0.1:$tcp_port-:7001,hostfwd=tcp:127.0.0.1:$((tcp_port+1))-:7002,hostfwd=tcp:127.0.0.1:$((tcp_port+2))-:7003" \
    -device virtio-net-pci,netdev=n0 \
    -kernel "$assets/vmlinuz" -initrd "$assets/initramfs.cpio.gz" \
    -append "console=ttyS0 quiet panic=-1" \
    -nographic -no-reboot -nodefaults -serial "file:$work/serial.log" </dev/null >/dev/null 2>"$work/qemu.err" &
pids+=($!)
for _ in $(seq 1800); do grep -q GUEST-READY "$work/serial.log" 2>/dev/null && break; sleep 0.1; done
grep -q GUEST-READY "$work/serial.log" 2>/dev/null || { echo "guest did not come up:"; cat "$work/serial.log" "$work/qemu.err" 2>&1; exit 1; }

WORK="$work" SIZE="$SIZE" N="$N" TCP_PORT="$tcp_port" python3 - <<'PY'
import os, socket, statistics, threading, time

work, size, n = os.environ["WORK"], int(os.environ["SIZE"]) << 20, int(os.environ["N"])
tcp = int(os.environ["TCP_PORT"])

# The floor: the same three services on a host unix socket, served by threads.
def host_services(path):
    def serve(listener, mode):
        while True:
            c, _ = listener.accept()
            threading.Thread(target=handle, args=(c, mode), daemon=True).start()
    def handle(c, mode):
        if mode == "echo":
            while (d := c.recv(65536)):
                c.sendall(d)
        elif mode == "sink":
            total = 0
            while (d := c.recv(65536)):
                total += len(d)
            c.sendall(b"%d\n" % total)
        else:
            line = b""
            while not line.endswith(b"\n"):
                line += c.recv(1)
            left, chunk = int(line), b"x" * 65536
            while left > 0:
                c.sendall(chunk[: min(left, len(chunk))])
                left -= min(left, len(chunk))
        c.close()
    for mode in ("echo", "sink", "source"):
        l = socket.socket(socket.AF_UNIX)
        l.bind(f"{path}-{mode}")
        l.listen(64)
        threading.Thread(target=serve, args=(l, mode), daemon=True).start()
host_services(f"{work}/plain")

def hybrid(port):
    s = socket.socket(socket.AF_UNIX)
    s.connect(f"{work}/v.sock")
    s.sendall(b"CONNECT %d\n" % port)
    line = b""
    while not line.endswith(b"\n"):
        b = s.recv(1)
        if not b:
            raise RuntimeError(f"CONNECT {port} refused")
        line += b
    return s

def plain(mode):
    s = socket.socket(socket.AF_UNIX)
    s.connect(f"{work}/plain-{mode}")
    return s

def tcpfwd(port):
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s

def latency(connect):
    s = connect("echo")
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        s.sendall(b"x")
        if not s.recv(1):
            raise RuntimeError("echo closed")
        samples.append(time.perf_counter() - t)
    s.close()
    samples.sort()
    return statistics.median(samples) * 1e6, samples[int(len(samples) * 0.99)] * 1e6

def to_guest(connect):
    s = connect("sink")
    chunk = b"y" * 65536
    t = time.perf_counter()
    left = size
    while left > 0:
        s.sendall(chunk[: min(left, len(chunk))])
        left -= min(left, len(chunk))
    s.shutdown(socket.SHUT_WR)
    got = int(s.makefile().readline())
    dt = time.perf_counter() - t
    assert got == size, (got, size)
    return size / dt / (1 << 20)

def from_guest(connect):
    s = connect("source")
    t = time.perf_counter()
    s.sendall(b"%d\n" % size)
    got = 0
    while (d := s.recv(1 << 20)):
        got += len(d)
    dt = time.perf_counter() - t
    assert got == size, (got, size)
    return size / dt / (1 << 20)

def connect_time(connect):
    samples = []
    for _ in range(50):
        t = time.perf_counter()
        s = connect("echo")
        s.sendall(b"x")
        s.recv(1)
        samples.append(time.perf_counter() - t)
        s.close()
    return statistics.median(samples) * 1e6

rows = [
    ("host unix socket (no VM)", lambda m: plain(m)),
    ("hybrid vsock (vhost-user)", lambda m: hybrid({"echo": 1234, "sink": 1235, "source": 1236}[m])),
    ("TCP forward (QEMU hostfwd)", lambda m: tcpfwd({"echo": tcp, "sink": tcp + 1, "source": tcp + 2}[m])),
]
print(f"vsock benchmark: QEMU TCG guest, {size >> 20} MiB bulk, {n} round trips")
print(f"{'path':<28} {'rtt p50 us':>11} {'rtt p99 us':>11} {'connect us':>11} {'host->guest MiB/s':>18} {'guest->host MiB/s':>18}")
for name, c in rows:
    p50, p99 = latency(c)
    conn = connect_time(c)
    up = to_guest(c)
    down = from_guest(c)
    print(f"{name:<28} {p50:>11.0f} {p99:>11.0f} {conn:>11.0f} {up:>18.1f} {down:>18.1f}")
PY

# ---- Docker through the hybrid socket vs a TCP forward --------------------------------------
[ "${DOCKER:-1}" = 1 ] || exit 0
newest() { ls -t "$@" 2>/dev/null | head -n1; }
cache=${VMCTL_CACHE:-$HOME/.cache/vmctl}
kernel=$(newest "$cache"/kernel/[0-9a-f]*[0-9a-f]/bzImage)
# Finished images only (a build in progress has no manifest yet).
rootfs=$(for m in "$cache"/rootfs/*/manifest.txt; do [ -f "$m" ] && echo "$(dirname "$m")/rootfs.squashfs"; done | xargs -r ls -t 2>/dev/null | head -n1)
if [ -z "$kernel" ] || [ -z "$rootfs" ] || ! command -v docker >/dev/null; then
    echo "docker table skipped: needs the project kernel + root image in $cache and the docker CLI"
    exit 0
fi
for ((i=${#pids[@]}-1; i>=0; i--)); do kill "${pids[i]}" 2>/dev/null || true; wait "${pids[i]}" 2>/dev/null || true; done
pids=()
rm -f "$work/vhost.sock" "$work/v.sock" "$work/serial.log"
"$target/release/vmm-vsock-backend" --socket "$work/vhost.sock" --uds-path "$work/v.sock" \
    --guest-cid 3 --once &
pids+=($!)
for _ in $(seq 100); do [ -S "$work/vhost.sock" ] && break; sleep 0.05; done
dport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
qemu-system-x86_64 -M pc -accel tcg -cpu max -smp 2 -m 2048M \
    -object memory-backend-memfd,id=mem,size=2048M,share=on -numa node,memdev=mem \
    -chardev socket,id=vs,path="$work/vhost.sock" -device vhost-user-vsock-pci,chardev=vs \
    -netdev "user,id=n0,hostfwd=tcp:127.0.0.1:$dport-:2375" -device virtio-net-pci,netdev=n0 \
    -drive "id=root,file=$rootfs,format=raw,if=none,readonly=on" -device virtio-blk-pci,drive=root \
    -kernel "$kernel" \
    -append "console=ttyS0 root=/dev/vda rootfstype=squashfs ro init=/sbin/init panic=-1 loglevel=4 ip=dhcp vmctl.docker_tcp=2375" \
    -nographic -no-reboot -nodefaults -serial "file:$work/serial.log" </dev/null >/dev/null 2>"$work/qemu.err" &
pids+=($!)
for _ in $(seq 1800); do grep -q "docker ready" "$work/serial.log" 2>/dev/null && break; sleep 0.1; done
grep -q "docker ready" "$work/serial.log" || { echo "dockerd did not come up:"; tail -20 "$work/serial.log"; exit 1; }

WORK="$work" DPORT="$dport" LOAD_MIB="${DOCKER_LOAD_MIB:-200}" DN="${DOCKER_N:-10}" python3 - <<'PY'
import hashlib, io, json, os, socket, statistics, subprocess, tarfile, threading, time

work, dport = os.environ["WORK"], int(os.environ["DPORT"])
load_mib, dn = int(os.environ["LOAD_MIB"]), int(os.environ["DN"])

# docker.sock relay: each client gets its own CONNECT 2375 on the hybrid socket.
def pump(a, b):
    try:
        while (d := a.recv(1 << 18)):
            b.sendall(d)
    except OSError:
        pass
    try:
        b.shutdown(socket.SHUT_WR)
    except OSError:
        pass

def relay(client):
    g = socket.socket(socket.AF_UNIX)
    g.connect(f"{work}/v.sock")
    g.sendall(b"CONNECT 2375\n")
    line = b""
    while not line.endswith(b"\n"):
        b = g.recv(1)
        if not b:
            client.close()
            return
        line += b
    threading.Thread(target=pump, args=(client, g), daemon=True).start()
    pump(g, client)

lsock = socket.socket(socket.AF_UNIX)
lsock.bind(f"{work}/docker.sock")
lsock.listen(64)
threading.Thread(target=lambda: [threading.Thread(target=relay, args=(lsock.accept()[0],), daemon=True).start() for _ in iter(int, 1)], daemon=True).start()

hosts = [("docker.sock → vsock 2375", f"unix://{work}/docker.sock"), ("TCP forward (hostfwd)", f"tcp://127.0.0.1:{dport}")]

def docker(host, *args, stdin=None):
    return subprocess.run(["docker", "-H", host, *args], stdin=stdin, capture_output=True, check=True)

# A one-layer image of random bytes (incompressible), in `docker save` format.
img = f"{work}/image.tar"
blob = os.urandom(1 << 20)
layer = io.BytesIO()
with tarfile.open(fileobj=layer, mode="w") as t:
    info = tarfile.TarInfo("blob")
    info.size = load_mib << 20
    class Rep(io.RawIOBase):
        def __init__(self): self.left = info.size
        def readable(self): return True
        def readinto(self, b):
            n = min(len(b), self.left, len(blob)); b[:n] = blob[:n]; self.left -= n; return n
    t.addfile(info, io.BufferedReader(Rep(), 1 << 20))
layer_bytes = layer.getvalue()
diff = hashlib.sha256(layer_bytes).hexdigest()
config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                     "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff}"]}}).encode()
cid = hashlib.sha256(config).hexdigest()
manifest = json.dumps([{"Config": f"{cid}.json", "RepoTags": ["vsockbench:latest"],
                        "Layers": [f"{diff}/layer.tar"]}]).encode()
with tarfile.open(img, "w") as t:
    for name, data in ((f"{cid}.json", config), (f"{diff}/layer.tar", layer_bytes), ("manifest.json", manifest)):
        ti = tarfile.TarInfo(name); ti.size = len(data); t.addfile(ti, io.BytesIO(data))
del layer_bytes, layer

print()
print(f"docker through the forwarded socket: QEMU TCG guest, dockerd in the project image")
print(f"{'path':<28} {'docker version p50 ms':>22} {'docker load ' + str(load_mib) + ' MiB s':>22} {'MiB/s':>8}")
for name, host in hosts:
    docker(host, "version")
    samples = []
    for _ in range(dn):
        t = time.perf_counter(); docker(host, "version"); samples.append(time.perf_counter() - t)
    try:
        docker(host, "rmi", "-f", "vsockbench:latest")
    except subprocess.CalledProcessError:
        pass
    t = time.perf_counter()
    with open(img, "rb") as f:
        docker(host, "load", stdin=f)
    dt = time.perf_counter() - t
    print(f"{name:<28} {statistics.median(samples) * 1e3:>22.0f} {dt:>22.1f} {load_mib / dt:>8.1f}")
PY
