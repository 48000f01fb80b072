#!/usr/bin/env bash
# Benchmark: usernet vs pasta (Debian passt) vs slirp4netns, same namespace harness.
# Each engine serves a fresh network namespace; the "guest" is the namespace's Linux
# stack. Host servers listen on 127.0.0.1 and are reached through the engine's gateway
# address. Prints one table: iperf3 guest->host and host->guest, TCP connections/s
# (connect + 1-byte request/answer + close) and 1-byte request/response latency p50/p99,
# plus each engine's own CPU time per GB moved (utime+stime of the engine process during
# the iperf3 runs): a figure that stays meaningful on a busy machine, where throughput
# does not. ROUNDS rounds interleave the engines; the table shows medians.
#
#   sudo bench/usernet.sh [SECONDS_PER_IPERF_RUN]     (default 5; needs root)
#   ROUNDS=3                      rounds (default 3)
#   USERNET_BIN=path/to/usernet  to use a prebuilt binary
#   ENGINES="usernet pasta"      to pick engines
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-5}
ENGINES=${ENGINES:-"usernet pasta slirp4netns"}
ROUNDS=${ROUNDS:-3}
RESULTS=$(mktemp)
[ "$(id -u)" = 0 ] || { echo "bench/usernet.sh: needs root (network namespaces)" >&2; exit 1; }
for t in ip iperf3 python3 pasta slirp4netns; do
    command -v "$t" >/dev/null || { echo "missing $t (scripts/apt-packages/usernet.txt)" >&2; exit 1; }
done
BIN=${USERNET_BIN:-}
if [ -z "$BIN" ]; then
    export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
    cargo build --release -q -p usernet
    BIN=$CARGO_TARGET_DIR/release/usernet
fi

PIDS=()
NS=""
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [ -n "$NS" ] && ip netns delete "$NS" 2>/dev/null || true
    [ -n "$NS" ] && rm -rf "/etc/netns/$NS"
    rm -f "$RESULTS" "$RESULTS.json"
}
trap cleanup EXIT

IPERF_PORT=$((20000 + RANDOM % 10000))
TCP_PORT=$((IPERF_PORT + 1))
iperf3 -s -B 127.0.0.1 -p "$IPERF_PORT" >/dev/null 2>&1 &
PIDS+=($!)
python3 bench/usernet/tcpbench.py server "$TCP_PORT" &
PIDS+=($!)
sleep 0.5

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# iperf3 run: prints "Gbit/s CPU-seconds-per-GB" for engine process $1.
iperf_run() {
    local epid=$1; shift
    local t0 t1
    t0=$(cpu_ticks "$epid")
    ip netns exec "$NS" iperf3 -J "$@" >"$RESULTS.json" || { echo "fail fail"; return; }
    t1=$(cpu_ticks "$epid")
    python3 - "$RESULTS.json" "$((t1 - t0))" "$(getconf CLK_TCK)" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))["end"]["sum_received"]
cpu = int(sys.argv[2]) / int(sys.argv[3])
print("%.2f %.2f" % (d["bits_per_second"] / 1e9, cpu / (d["bytes"] / 1e9)))
PY
}

for round in $(seq "$ROUNDS"); do
for eng in $ENGINES; do
    NS="unbench-$eng-$$"
    ip netns add "$NS"
    case "$eng" in
    usernet)
        "$BIN" tap --netns "/run/netns/$NS" 2>/dev/null &
        EPID=$!
        GW=10.0.2.2 ;;
    pasta)
        pasta --config-net -f --runas 0 --netns "/run/netns/$NS" >/dev/null 2>&1 &
        EPID=$!
        GW="" ;;
    slirp4netns)
        ip netns exec "$NS" sleep infinity &
        SPID=$!
        PIDS+=($SPID)
        slirp4netns --configure --mtu=65520 "$SPID" tap0 >/dev/null 2>&1 &
        EPID=$!
        GW=10.0.2.2 ;;
    esac
    PIDS+=($EPID)
    for _ in $(seq 100); do
        ip netns exec "$NS" ip route 2>/dev/null | grep -q default && break
        sleep 0.05
    done
    [ -z "$GW" ] && GW=$(ip netns exec "$NS" ip route | awk '/^default/ {print $3; exit}')
    sleep 0.3
    read -r up upcpu <<<"$(iperf_run "$EPID" -c "$GW" -p "$IPERF_PORT" -t "$DUR")"
    read -r down downcpu <<<"$(iperf_run "$EPID" -c "$GW" -p "$IPERF_PORT" -t "$DUR" -R)"
    crr=$(ip netns exec "$NS" python3 bench/usernet/tcpbench.py crr "$GW" "$TCP_PORT" 3 || echo fail)
    rr=$(ip netns exec "$NS" python3 bench/usernet/tcpbench.py rr "$GW" "$TCP_PORT" 5000 || echo "fail fail")
    echo "$eng $up $down $upcpu $downcpu $crr $rr" >>"$RESULTS"
    echo "round $round $eng: $up $down $upcpu $downcpu $crr $rr" >&2
    kill "$EPID" 2>/dev/null || true
    [ "$eng" = slirp4netns ] && kill "$SPID" 2>/dev/null || true
    wait "$EPID" 2>/dev/null || true
    ip netns delete "$NS"
    rm -rf "/etc/netns/$NS"
    NS=""
done
done

printf '\nusernet benchmark: %s rounds x %s s iperf3 runs, medians; %s cores, load %s, %s\n' \
    "$ROUNDS" "$DUR" "$(nproc)" "$(cut -d' ' -f1-3 /proc/loadavg)" "$(uname -r)"
python3 - "$RESULTS" $ENGINES <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    f = line.split()
    rows.setdefault(f[0], []).append(f[1:])
cols = ["g->h Gbit/s", "h->g Gbit/s", "g->h CPU s/GB", "h->g CPU s/GB", "conn/s", "p50 us", "p99 us"]
print("%-12s" % "engine" + "".join("%15s" % c for c in cols))
for eng in sys.argv[2:]:
    out = []
    for i in range(len(cols)):
        vals = []
        for r in rows.get(eng, []):
            try:
                vals.append(float(r[i]))
            except (ValueError, IndexError):
                pass
        out.append("%.2f" % statistics.median(vals) if vals else "fail")
        if vals and i >= 4:
            out[-1] = "%.0f" % statistics.median(vals)
    print("%-12s" % eng + "".join("%15s" % v for v in out))
PY
