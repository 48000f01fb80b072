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
n, base_mem = int(os.environ["N"]), int(os.environ["MEM_MIB"])
rss_file = tempfile.NamedTemporaryFile(prefix="vmm-bench-rss-")

def args(cmdline, mem, cpus):
    return [vmm, "--kernel", guest, "--cmdline", cmdline, "--mem", str(mem),
            "--cpus", str(cpus), "--serial", "stdio"]

def one_run(mem, cpus, timed=True):
    # Peak RSS through /usr/bin/time -f %M: a Python child's ru_maxrss would include the
    # interpreter's pre-exec image. Timed runs start vmm directly (no extra fork+exec).
    cmd = args("tests=none", mem, cpus)
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

def resident_guest_kib(mem, cpus):
    """Run an idle guest; sample VmHWM and the guest-memory mapping's Rss meanwhile."""
    p = subprocess.Popen(args("tests=none idle=1500", mem, cpus), stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL)
    p.stdout.read(1)
    time.sleep(0.3)
    guest_rss, hwm, size = None, None, None
    with open(f"/proc/{p.pid}/smaps") as f:
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

def row(label, mem, cpus):
    one_run(mem, cpus)  # warm the page cache
    runs = [one_run(mem, cpus) for _ in range(n)]
    first = statistics.median(r[0] for r in runs)
    total = statistics.median(r[1] for r in runs)
    rss = statistics.median(one_run(mem, cpus, timed=False)[2] for _ in range(max(3, n // 4)))
    guest_rss, hwm = resident_guest_kib(mem, cpus)
    over = f"{(hwm - guest_rss) / 1024:.1f}" if guest_rss is not None and hwm else "n/a"
    print(f"{label:<40}{first:>16.1f}{total:>10.1f}{rss / 1024:>14.1f}{over:>15}", flush=True)

print(f"vmm process start -> first COM1 byte / -> exit after the guest's reset; median of {n} runs")
print(f"{'VMM (guest --mem, --cpus)':<40}{'first output ms':>16}{'exit ms':>10}{'peak RSS MiB':>14}{'RSS-guest MiB':>15}")
row(f"vmm, this build ({base_mem} MiB, 1 vCPU)", base_mem, 1)
row("vmm, this build (1024 MiB, 1 vCPU)", 1024, 1)
row(f"vmm, this build ({base_mem} MiB, 4 vCPUs)", base_mem, 4)
print(f"{'firecracker (reference, not run: TESTING.md)':<40}{'-':>16}{'15':>10}{'3.7':>14}{'-':>15}")
print("RSS-guest: VmHWM minus the guest-RAM mapping's resident size, sampled while an idle guest runs.")
PY
