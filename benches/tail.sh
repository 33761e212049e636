#!/usr/bin/env bash
# Open-loop latency of the collector against a bare server and nginx,
# with each server on a core of its own, for the p99 at half the peak:
#
#   the server (one collector HTTP thread, one bare-gif thread, or one
#   nginx worker serving empty_gif with its access log on) runs on CPU 1;
#   the load generator, with --precise-timer, and the collector's
#   aggregator run on CPU 0.
#
# Each round starts a fresh collector, bare-gif and nginx and runs
# `edgetally-loadtest run --rate RATE --pixels-only --connections 64
# --precise-timer` against each in turn, printing p50, p90, p99 and
# p99.9, and the time the hypervisor took each CPU away during the run
# (steal, from /proc/stat, in 10 ms ticks). bare-gif answers the GIF and
# does nothing else, so its p99 is the floor this machine and generator
# set: a collector p99 near it is the machine's, not the collector's.
# After the last round it prints each server's median p99. Run it after
# benches/compare.sh has found the peak (half of the pinned collector's
# closed-loop peak was 70,000/s on the 2-core development machine).
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
for binary in edgetally-aggregator edgetally-collector edgetally-loadtest bare-gif; do
    [ -x "$bin/$binary" ] || die "$bin/$binary is missing: cargo build --release --bins"
done

stop() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; pids=(); }

# Steal ticks of each CPU so far, as "cpu0 cpu1".
steal() { awk '/^cpu[01] / {printf "%s ", $9}' /proc/stat; }

# One open-loop run against $2, labelled $1; its p99 is appended to
# $work/p99.
measure() {
    local before after
    before=$(steal)
    taskset -c 0 "$bin/edgetally-loadtest" run --target "http://$2" --rate "$rate" --pixels-only \
        --connections 64 --duration-secs "$seconds" --precise-timer --no-metrics --ledger "$work/ledger.json" \
        --json > "$work/report.json"
    after=$(steal)
    python3 - "$1" "$work/report.json" "$before" "$after" "$work/p99" << 'PY'
import json, sys
report = json.load(open(sys.argv[2]))
latency = report["latency_ms"]
errors = report["errors"] or "none"
steal = [after - before for before, after in zip(map(int, sys.argv[3].split()), map(int, sys.argv[4].split()))]
print(f"  {sys.argv[1]:<9} {report['achieved_rate']:>8.0f} req/s  p50 {latency['p50']:.3f}  p90 {latency['p90']:.3f}"
      f"  p99 {latency['p99']:.3f}  p99.9 {latency['p99_9']:.3f} ms  steal {steal[0]}/{steal[1]} ticks  errors {errors}")
with open(sys.argv[5], "a") as out:
    print(sys.argv[1], latency["p99"], file=out)
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

    taskset -c 1 "$bin/bare-gif" --listen 127.0.0.1:0 --workers 1 > "$dir/bare-gif.out" & pids+=($!)
    bare=$(bare_gif_address "$dir/bare-gif.out")
    measure bare-gif "$bare"
    stop

    nginx="127.0.0.1:$(free_port)"
    nginx_conf "$dir/nginx.conf" "$nginx" 1
    taskset -c 1 nginx -e "$dir/nginx-error.log" -c "$dir/nginx.conf" & pids+=($!)
    wait_port "$nginx"
    measure nginx "$nginx"
    stop
done

echo "== median p99 over $rounds round(s), ms"
python3 - "$work/p99" << 'PY'
import statistics, sys
by_server = {}
for line in open(sys.argv[1]):
    server, p99 = line.split()
    by_server.setdefault(server, []).append(float(p99))
for server, values in by_server.items():
    print(f"  {server:<9} {statistics.median(values):.3f}  (of {', '.join(f'{v:.2f}' for v in values)})")
PY
