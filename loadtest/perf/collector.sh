#!/usr/bin/env bash
# Whole-system figures for the README's performance section, on this
# machine: a release aggregator and one release collector as separate
# processes on loopback, driven by edgetally-loadtest on one thread.
#
#   1. peak pixel throughput: closed loop, valid pixels only;
#   2. latency at half that rate: open loop, the default realistic mix;
#   3. bytes received and shipped per accepted event, from that run;
#   4. verify: the aggregator agrees exactly with the ledger of run 2.
#
# Needs: `cargo build --release --bins`.
# Usage: loadtest/perf/collector.sh [connections] [seconds]
set -euo pipefail
connections=${1:-32}
seconds=${2:-20}
root=$(cd "$(dirname "$0")/../.." && pwd)
bin="$root/target/release"
work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null; rm -rf "$work"' EXIT

wait_for() { for _ in $(seq 300); do [ -s "$1" ] && return; sleep 0.05; done; echo "no $1" >&2; exit 1; }
json() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$1" "$2"; }

# A fresh aggregator and collector; sets $http and $flight.
start_stack() {
    local dir="$work/$1"
    RUST_LOG=warn "$bin/edgetally-aggregator" --data-dir "$dir/aggregator" \
        --quic-listen 127.0.0.1:0 --flight-listen 127.0.0.1:0 --flight-sql-listen 127.0.0.1:0 \
        --http-listen 127.0.0.1:0 & pids+=($!)
    wait_for "$dir/aggregator/aggregator.json"
    local quic cert
    quic=$(json "$dir/aggregator/aggregator.json" quic)
    cert=$(json "$dir/aggregator/aggregator.json" quic_cert)
    flight=$(json "$dir/aggregator/aggregator.json" flight)
    RUST_LOG=warn "$bin/edgetally-collector" --data-dir "$dir/collector" --http-listen 127.0.0.1:0 \
        --aggregator-addr "$quic" --aggregator-cert "$cert" --campaigns "$work/campaigns.json" & pids+=($!)
    wait_for "$dir/collector/collector.json"
    http=$(json "$dir/collector/collector.json" http)
}
stop_stack() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; pids=(); }

# The 200 campaigns the mix draws from, so clicks redirect and conversions
# post back against real click IDs.
python3 -c 'import json; print(json.dumps({"campaigns": [{"id": i, "landing_url": f"https://shop.example/{i}?click_id={{click_id}}"} for i in range(1, 201)]}))' > "$work/campaigns.json"

echo "machine: $(nproc) cores, $(uname -r); $connections connections, 1 generator thread, ${seconds}s per run"
echo
echo "== peak pixel throughput (closed loop, valid pixels only)"
start_stack peak
"$bin/edgetally-loadtest" run --target "http://$http" --max --pixels-only --connections "$connections" \
    --duration-secs "$seconds" --ledger "$work/peak.json" --json > "$work/peak-report.json"
peak=$(json "$work/peak-report.json" achieved_rate)
python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(f\"{r['achieved_rate']:.0f} requests/s, latency ms {r['latency_ms']}\")" "$work/peak-report.json"
half=$(python3 -c "print(round($peak / 2))")
stop_stack
# A fresh stack, so verify reads only this run's traffic.
start_stack half
echo
echo "== realistic mix, open loop at half the peak: $half requests/s"
"$bin/edgetally-loadtest" run --target "http://$http" --rate "$half" --connections "$connections" \
    --duration-secs "$seconds" --ledger "$work/half.json"
echo
echo "== verify"
"$bin/edgetally-loadtest" verify --ledger "$work/half.json" --flight "http://$flight" --wait-secs 75
