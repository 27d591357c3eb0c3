#!/usr/bin/env bash
# Live delivery under a resume wave (docs/benchmarks.md): a standalone node on loopback
# with 30,000 records in its replay window, 1,000 subscribers at 100 msg/s, first
# alone (baseline), then while 20 connections resume `/topic/#` from the window's start
# over and over. RUNS runs of each, a fresh node per run; prints each run's live p99 and
# the node's longest lock holds of the run's last 10-20 s (after the prefill), then the
# medians. Stops by itself.
#
#   cargo build --release -p pushcenter && deploy/bench-resume-wave.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

BIN=${BIN:-target/release/pushcenter}
RUNS=${RUNS:-5}
DURATION=${DURATION:-20s}
RESUMERS=${RESUMERS:-20}
ulimit -n "$(ulimit -Hn)"
out=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$out"' EXIT

run() { # run NAME RESUMERS
    local log="$out/node.log"
    "$BIN" standalone --http-addr 127.0.0.1:0 >"$log" 2>/dev/null &
    local node=$!
    local addr=""
    for _ in $(seq 100); do
        addr=$(sed -n 's/.*listening http=\([^ ]*\).*/\1/p' "$log")
        [ -n "$addr" ] && break
        sleep 0.05
    done
    "$BIN" bench fanout --url "ws://$addr/ws" --publish-url "http://$addr" \
        --subscribers 1000 --rate 100 --duration "$DURATION" --prefill 30000 \
        --resumers "$2" --server-pid "$node" >"$out/$1.json" 2>/dev/null
    kill "$node"
    wait "$node" 2>/dev/null || true
    python3 - "$out/$1.json" "$1" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"{sys.argv[2]:>12}: live p99 {r['latency_ms_p99']:7.2f} ms, p50 {r['latency_ms_p50']:6.2f} ms, "
      f"missed {r['missed']}, resumes {r['resumes']}, replayed {r['replayed']}, "
      f"lock max routing {r['routing_lock_hold_max_us']} us, window {r['window_lock_hold_max_us']} us")
EOF
}

for i in $(seq "$RUNS"); do run "baseline-$i" 0; done
for i in $(seq "$RUNS"); do run "wave-$i" "$RESUMERS"; done
python3 - "$out" "$RUNS" <<'EOF'
import json, statistics, sys
d, n = sys.argv[1], int(sys.argv[2])
load = lambda k: [json.load(open(f"{d}/{k}-{i}.json")) for i in range(1, n + 1)]
base, wave = load("baseline"), load("wave")
b = statistics.median(r["latency_ms_p99"] for r in base)
w = statistics.median(r["latency_ms_p99"] for r in wave)
locks = [max(r["routing_lock_hold_max_us"] or 0, r["window_lock_hold_max_us"] or 0) for r in wave]
goal = max(2 * b, b + 20)
print(f"median live p99: baseline {b:.2f} ms, under the wave {w:.2f} ms (goal <= {goal:.2f} ms)")
print(f"longest lock hold per wave run, median: {statistics.median(locks)} us, worst: {max(locks)} us (goal <= 5000 us)")
print(f"resumes per wave run (median): {statistics.median(r['resumes'] for r in wave)}")
EOF
