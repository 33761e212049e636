#!/usr/bin/env bash
# Bytes on the wire per event received, for the README's shipping figures:
# a release aggregator and one release collector on loopback, driven by
# edgetally-loadtest at a fixed open-loop rate, in two mixes and two
# collector settings, each on a fresh stack:
#
#   mix     default: the load generator's defaults (10 % clicks, 1 % leads,
#           1 % sales, 2 % duplicates, 1 % malformed, 1 % bot pixels);
#           funnel: the same with an affiliate network's conversion rate,
#           3 % of clicks (0.15 % leads, 0.15 % sales of all requests),
#           and 0.1 % malformed;
#   ships   every flush (--rollup-interval-ms 250, the flush interval), or
#           traffic counters once a minute (the default).
#
# Each run waits for the collector to ship everything it counted, so the
# figure includes the last minute's counters, and ends with `verify`.
# Needs: `cargo build --release --bins`.
# Usage: loadtest/perf/wire.sh [rate] [seconds] ["mix:rollup_ms ..."]
set -euo pipefail
rate=${1:-40000}
seconds=${2:-90}
cases=${3:-"default:60000 default:250 funnel:60000 funnel:250"}
root=$(cd "$(dirname "$0")/../.." && pwd)
bin="$root/target/release"
work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null; rm -rf "$work"' EXIT

wait_for() { for _ in $(seq 300); do [ -s "$1" ] && return; sleep 0.05; done; echo "no $1" >&2; exit 1; }
json() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$1" "$2"; }

python3 -c 'import json; print(json.dumps({"campaigns": [{"id": i, "landing_url": f"https://shop.example/{i}?click_id={{click_id}}"} for i in range(1, 201)]}))' > "$work/campaigns.json"

# run NAME ROLLUP_INTERVAL_MS [loadtest mix flags...]
run() {
    local name=$1 rollup=$2
    shift 2
    local dir="$work/$name-$rollup"
    RUST_LOG=warn "$bin/edgetally-aggregator" --data-dir "$dir/aggregator" \
        --quic-listen 127.0.0.1:0 --flight-listen 127.0.0.1:0 --flight-sql-listen 127.0.0.1:0 \
        --http-listen 127.0.0.1:0 & pids+=($!)
    wait_for "$dir/aggregator/aggregator.json"
    local quic cert flight http
    quic=$(json "$dir/aggregator/aggregator.json" quic)
    cert=$(json "$dir/aggregator/aggregator.json" quic_cert)
    flight=$(json "$dir/aggregator/aggregator.json" flight)
    RUST_LOG=warn "$bin/edgetally-collector" --data-dir "$dir/collector" --http-listen 127.0.0.1:0 \
        --aggregator-addr "$quic" --aggregator-cert "$cert" --campaigns "$work/campaigns.json" \
        --rollup-interval-ms "$rollup" & pids+=($!)
    wait_for "$dir/collector/collector.json"
    http=$(json "$dir/collector/collector.json" http)
    "$bin/edgetally-loadtest" run --target "http://$http" --rate "$rate" --connections 32 \
        --duration-secs "$seconds" --ledger "$dir/ledger.json" --json "$@" > "$dir/report.json"
    python3 - "$dir/report.json" "$name" "$rollup" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
b = r["bytes"]
print(f"{sys.argv[2]:8s} rollup {int(sys.argv[3]):>6} ms: {r['events_accepted']:>9,} events at {r['achieved_rate']:,.0f}/s, "
      f"{b['received_per_event']:.1f} B received, {b['shipped_per_event']:.3f} B shipped per event: {b['reduction']:,.0f}x fewer")
PY
    "$bin/edgetally-loadtest" verify --ledger "$dir/ledger.json" --flight "http://$flight" --wait-secs 75 | tail -1
    kill "${pids[@]}" 2>/dev/null || true
    wait 2>/dev/null || true
    pids=()
}

funnel=(--lead-share 0.0015 --sale-share 0.0015 --malformed-share 0.001)
echo "machine: $(nproc) cores, $(uname -r); $rate requests/s for ${seconds}s per run, 32 connections"
for case in $cases; do
    name=${case%%:*}
    rollup=${case##*:}
    case $name in
        default) run default "$rollup" ;;
        funnel) run funnel "$rollup" "${funnel[@]}" ;;
        *) echo "unknown mix $name" >&2; exit 2 ;;
    esac
done
