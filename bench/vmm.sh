#!/usr/bin/env bash
# Benchmark: `vmm` process start -> first guest byte on COM1 (wall time, median of N runs),
# start -> exit on the guest's reset, and memory: peak RSS, and peak RSS minus the guest
# memory the VMM has resident (sampled from /proc/PID/smaps while an idle guest runs).
# Guest: the freestanding test guest (vmm/test-guests), which prints "BOOT ..." first.
# Peer: Firecracker cannot be built here without its source; its row is the number measured
# on this machine earlier (shared/TESTING.md), printed as a reference, not re-run.
#
# Usage: bench/vmm.sh [N]     (N runs, default 20; needs /dev/kvm)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-${N:-20}}
MEM_MIB=${MEM_MIB:-128}

if ! [ -r /dev/kvm ] || ! [ -w /dev/kvm ]; then
    echo "bench/vmm.sh: /dev/kvm is not usable here" >&2
    exit 1
fi
target=${CARGO_TARGET_DIR:-target}
echo "==> building vmm (release) and the test guest" >&2
cargo build --release -p vmm --bin vmm >&2
cargo build --release --manifest-path vmm/test-guests/Cargo.toml --target x86_64-unknown-none \
    --target-dir target/test-guests >&2
VMM="$target/release/vmm" GUEST=target/test-guests/x86_64-unknown-none/release/testguest \
    N="$N" MEM_MIB="$MEM_MIB" python3 - <<'PY'
import os, statistics, subprocess, tempfile, time

vmm, guest = os.environ["VMM"], os.environ["GUEST"]
n, mem = int(os.environ["N"]), int(os.environ["MEM_MIB"])

def args(cmdline):
    return [vmm, "--kernel", guest, "--cmdline", cmdline, "--mem", str(mem),
            "--cpus", "1", "--serial", "stdio"]

rss_file = tempfile.NamedTemporaryFile(prefix="vmm-bench-rss-")

def one_run(timed=True):
    # Peak RSS through /usr/bin/time -f %M: a Python child's ru_maxrss would include the
    # interpreter's pre-exec image. Timed runs start vmm directly (no extra fork+exec).
    cmd = args("tests=none")
    if not timed:
        cmd = ["/usr/bin/time", "-f", "%M", "-o", rss_file.name] + cmd
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    first = p.stdout.read(1)
    t1 = time.perf_counter()
    rest = p.stdout.read()
    status = p.wait()
    t2 = time.perf_counter()
    out = first + rest
    if not out.startswith(b"BOOT") or b"DONE" not in out or status != 0:
        raise SystemExit(f"bad run: status={status} output={out[:200]!r}")
    rss = int(open(rss_file.name).read().split()[-1]) if not timed else 0
    return (t1 - t0) * 1e3, (t2 - t0) * 1e3, rss  # ms, ms, KiB

def resident_guest_kib():
    """Run an idle guest, sample VmHWM and the guest-memory mapping's Rss."""
    p = subprocess.Popen(args("tests=none idle=1500"), stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL)
    p.stdout.read(1)
    time.sleep(0.3)
    guest_rss, hwm = None, None
    with open(f"/proc/{p.pid}/smaps") as f:
        size = None
        for line in f:
            if line.startswith("Size:"):
                size = int(line.split()[1])
            elif line.startswith("Rss:") and size == mem * 1024:
                guest_rss = (guest_rss or 0) + int(line.split()[1])
    with open(f"/proc/{p.pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    p.stdout.read()
    p.wait()
    return guest_rss, hwm

one_run()  # warm the page cache
runs = [one_run() for _ in range(n)]
first = statistics.median(r[0] for r in runs)
total = statistics.median(r[1] for r in runs)
rss = statistics.median(one_run(timed=False)[2] for _ in range(max(3, n // 4)))
guest_rss, hwm = resident_guest_kib()
overhead = f"{(hwm - guest_rss) / 1024:.1f}" if guest_rss is not None and hwm else "n/a"
print(f"vmm start -> first COM1 byte, {n} runs, guest --mem {mem} MiB, 1 vCPU")
print(f"{'VMM':<34}{'first output ms':>16}{'exit ms':>10}{'peak RSS MiB':>14}{'RSS-guest MiB':>15}")
print(f"{'vmm (this build, median)':<34}{first:>16.1f}{total:>10.1f}{rss / 1024:>14.1f}{overhead:>15}")
print(f"{'firecracker (reference, TESTING.md)':<34}{'-':>16}{'15':>10}{'3.7':>14}{'-':>15}")
if guest_rss is not None:
    print(f"(idle guest sample: VmHWM {hwm} KiB, guest memory resident {guest_rss} KiB)")
PY
