#!/usr/bin/env bash
# Benchmark: usernet vs pasta (Debian passt) vs slirp4netns, same namespace harness.
# Each engine serves a fresh network namespace; the "guest" is the namespace's Linux
# stack. Host servers listen on 127.0.0.1 and are reached through the engine's gateway
# address. Prints one table: iperf3 guest->host and host->guest, TCP connections/s
# (connect + 1-byte request/answer + close) and 1-byte request/response latency p50/p99.
#
#   sudo bench/usernet.sh [SECONDS_PER_IPERF_RUN]     (default 5; needs root)
#   USERNET_BIN=path/to/usernet  to use a prebuilt binary
#   ENGINES="usernet pasta"      to pick engines
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-5}
ENGINES=${ENGINES:-"usernet pasta slirp4netns"}
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
}
trap cleanup EXIT

IPERF_PORT=$((20000 + RANDOM % 10000))
TCP_PORT=$((IPERF_PORT + 1))
iperf3 -s -B 127.0.0.1 -p "$IPERF_PORT" >/dev/null 2>&1 &
PIDS+=($!)
python3 bench/usernet/tcpbench.py server "$TCP_PORT" &
PIDS+=($!)
sleep 0.5

gbits() { python3 -c 'import json,sys; d=json.load(sys.stdin); print("%.2f" % (d["end"]["sum_received"]["bits_per_second"]/1e9))'; }

declare -A RES
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
    up=$(ip netns exec "$NS" iperf3 -c "$GW" -p "$IPERF_PORT" -t "$DUR" -J | gbits || echo fail)
    down=$(ip netns exec "$NS" iperf3 -c "$GW" -p "$IPERF_PORT" -t "$DUR" -R -J | gbits || echo fail)
    crr=$(ip netns exec "$NS" python3 bench/usernet/tcpbench.py crr "$GW" "$TCP_PORT" 3 || echo fail)
    rr=$(ip netns exec "$NS" python3 bench/usernet/tcpbench.py rr "$GW" "$TCP_PORT" 5000 || echo "fail fail")
    RES[$eng]="$up $down $crr $rr"
    kill "$EPID" 2>/dev/null || true
    [ "$eng" = slirp4netns ] && kill "$SPID" 2>/dev/null || true
    wait "$EPID" 2>/dev/null || true
    ip netns delete "$NS"
    rm -rf "/etc/netns/$NS"
    NS=""
done

printf '\nusernet benchmark (%s s iperf3 runs, %s cores, %s)\n' "$DUR" "$(nproc)" "$(uname -r)"
printf '%-12s %14s %14s %10s %10s %10s\n' engine "g->h Gbit/s" "h->g Gbit/s" "conn/s" "p50 us" "p99 us"
for eng in $ENGINES; do
    read -r up down crr p50 p99 <<<"${RES[$eng]}"
    printf '%-12s %14s %14s %10s %10s %10s\n' "$eng" "$up" "$down" "$crr" "$p50" "$p99"
done
