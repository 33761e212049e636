#!/usr/bin/env bash
# Open-loop latency of the collector against nginx with each server on a
# core of its own, for the p99 at half the peak:
#
#   the server (one collector HTTP thread, or one nginx worker serving
#   empty_gif with its access log on) runs on CPU 1; the load generator,
#   with --precise-timer, and the collector's aggregator run on CPU 0.
#
# Each round starts a fresh collector and a fresh nginx and runs
# `edgetally-loadtest run --rate RATE --pixels-only --connections 64
# --precise-timer` against each in turn, printing p50, p90, p99 and
# p99.9. Run it after benches/compare.sh has found the peak (half of the
# pinned collector's closed-loop peak was 70,000/s on the 2-core
# development machine).
#
# Needs: two or more CPUs, taskset (util-linux), Debian's nginx, and
# release builds (`cargo build --release --bins`).
# Usage: benches/tail.sh [rate] [seconds] [rounds]
# Extra collector flags: COLLECTOR_ARGS="--journal-bytes-max 0" benches/tail.sh
set -euo pipefail
rate=${1:-70000}
seconds=${2:-10}
rounds=${3:-3}
root=$(cd "$(dirname "$0")/.." && pwd)
bin="$root/target/release"
PATH="$PATH:/usr/sbin:/sbin"
name=tail.sh
# shellcheck source=benches/lib.sh
source "$root/benches/lib.sh"
for tool in taskset nginx python3; do
    command -v "$tool" > /dev/null || die "$tool is missing"
done
[ "$(nproc)" -ge 2 ] || die "needs two CPUs: one for the server, one for the generator"
for binary in edgetally-aggregator edgetally-collector edgetally-loadtest; do
    [ -x "$bin/$binary" ] || die "$bin/$binary is missing: cargo build --release --bins"
done

stop() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; pids=(); }

# One open-loop run against $2, labelled $1.
measure() {
    taskset -c 0 "$bin/edgetally-loadtest" run --target "http://$2" --rate "$rate" --pixels-only \
        --connections 64 --duration-secs "$seconds" --precise-timer --no-metrics --ledger "$work/ledger.json" \
        --json > "$work/report.json"
    python3 - "$1" "$work/report.json" << 'PY'
import json, sys
report = json.load(open(sys.argv[2]))
latency = report["latency_ms"]
errors = report["errors"] or "none"
print(f"  {sys.argv[1]:<9} {report['achieved_rate']:>8.0f} req/s  p50 {latency['p50']:.3f}  p90 {latency['p90']:.3f}"
      f"  p99 {latency['p99']:.3f}  p99.9 {latency['p99_9']:.3f} ms  errors {errors}")
PY
}

echo "== open loop at $rate/s for ${seconds}s, 64 connections, --precise-timer; server on CPU 1, generator on CPU 0"
for round in $(seq "$rounds"); do
    echo "round $round"
    dir="$work/round-$round"
    mkdir -p "$dir"
    RUST_LOG=warn taskset -c 0 "$bin/edgetally-aggregator" --data-dir "$dir/aggregator" --quic-listen 127.0.0.1:0 \
        --flight-listen 127.0.0.1:0 --flight-sql-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 2> /dev/null & pids+=($!)
    wait_for "$dir/aggregator/aggregator.json"
    # shellcheck disable=SC2086 # extra flags are words
    RUST_LOG=warn taskset -c 1 "$bin/edgetally-collector" --data-dir "$dir/collector" --http-listen 127.0.0.1:0 \
        --aggregator-addr "$(json "$dir/aggregator/aggregator.json" quic)" \
        --aggregator-cert "$(json "$dir/aggregator/aggregator.json" quic_cert)" \
        --http-workers 1 ${COLLECTOR_ARGS:-} 2> /dev/null & pids+=($!)
    wait_for "$dir/collector/collector.json"
    collector=$(json "$dir/collector/collector.json" http)
    wait_port "$collector"
    measure collector "$collector"
    stop

    nginx="127.0.0.1:$(free_port)"
    nginx_conf "$dir/nginx.conf" "$nginx" 1
    taskset -c 1 nginx -e "$dir/nginx-error.log" -c "$dir/nginx.conf" & pids+=($!)
    wait_port "$nginx"
    measure nginx "$nginx"
    stop
done
