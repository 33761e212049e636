#!/usr/bin/env bash
# The collector's two whole-process ratios, in one run on this machine:
#
#   1. overhead over a bare server: wrk's requests/s against a release
#      collector divided by its requests/s against bare-gif (the same hyper
#      stack answering only the GIF, benches/src/bin/bare-gif.rs), medians of
#      alternating rounds; goal >= 0.90;
#   2. CPU per request against nginx: the collector's CPU time (utime +
#      stime from /proc) per answered request at a fixed open-loop rate,
#      divided by that of nginx with one worker serving empty_gif with its
#      default access log on; goal <= 1.0.
#
# Every server runs on loopback with a temp dir and shares the cores with
# the load generator, as in loadtest/perf/*.sh. The collector ships to a
# release aggregator as in production; the aggregator's CPU is shown but
# not counted.
#
# Needs: Debian's nginx and wrk (installed with apt-get when missing), and
# release builds: `cargo build --release --bins` (bare-gif alone:
# `cargo build --release -p edgetally-benches --bins`), built when missing.
# Usage: benches/compare.sh [rate] [seconds] [wrk-rounds] [cpu-rounds] [connections]
# Extra collector flags: COLLECTOR_ARGS="--lean-pixels false" benches/compare.sh
# Like for like: THREADS=N gives the collector N HTTP threads, bare-gif N
# threads and nginx N workers. Without it the collector and bare-gif take
# one thread per core and nginx one worker, the cheapest nginx per
# request at a fixed rate (one worker wakes least often).
set -euo pipefail
rate=${1:-50000}
seconds=${2:-10}
wrk_rounds=${3:-3}
cpu_rounds=${4:-2}
connections=${5:-64}
threads=${THREADS:-}
root=$(cd "$(dirname "$0")/.." && pwd)
bin="$root/target/release"
name=compare.sh
# shellcheck source=benches/lib.sh
source "$root/benches/lib.sh"

# --- tools and builds

for tool in python3 getconf; do
    command -v "$tool" > /dev/null || die "$tool is missing"
done
PATH="$PATH:/usr/sbin:/sbin"
if ! command -v nginx > /dev/null || ! command -v wrk > /dev/null; then
    echo "installing nginx and wrk from Debian"
    { apt-get install -y --no-install-recommends nginx wrk > /dev/null \
        || { apt-get update > /dev/null && apt-get install -y --no-install-recommends nginx wrk > /dev/null; }; } \
        || die "nginx or wrk is missing and apt-get could not install them (run as root on Debian)"
fi
command -v nginx > /dev/null || die "nginx is missing"
command -v wrk > /dev/null || die "wrk is missing"
for binary in edgetally-aggregator edgetally-collector edgetally-loadtest bare-gif; do
    if [ ! -x "$bin/$binary" ]; then
        echo "release binaries missing: cargo build --release --bins"
        (cd "$root" && cargo build --release --bins) || die "release build failed"
        break
    fi
done
for binary in edgetally-aggregator edgetally-collector edgetally-loadtest bare-gif; do
    [ -x "$bin/$binary" ] || die "$bin/$binary is missing after the build"
done
clk_tck=$(getconf CLK_TCK)

# --- helpers

# Summed utime + stime of the given pids, in clock ticks (fields 14 and 15
# of /proc/PID/stat, counted after the command name, which may hold spaces).
cpu_ticks() {
    local total=0 pid line fields
    for pid in "$@"; do
        read -r line < "/proc/$pid/stat" || die "process $pid is gone"
        read -ra fields <<< "${line##*) }"
        total=$((total + fields[11] + fields[12]))
    done
    echo "$total"
}
# Pids whose parent is $1.
children() {
    local stat line fields
    for stat in /proc/[0-9]*/stat; do
        read -r line < "$stat" 2> /dev/null || continue
        read -ra fields <<< "${line##*) }"
        if [ "${fields[1]}" = "$1" ]; then
            stat=${stat#/proc/}
            echo "${stat%/stat}"
        fi
    done
}
alive() { for pid in "$@"; do kill -0 "$pid" 2> /dev/null || die "server process $pid died"; done; }
median() { python3 -c 'import statistics,sys; print(statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }
mean() { python3 -c 'import statistics,sys; print(statistics.fmean(float(x) for x in sys.argv[1:]))' "$@"; }
fmt() { python3 -c 'import sys; print(format(float(sys.argv[2]), sys.argv[1]))' "$2" "$1"; }

# --- servers

RUST_LOG=warn "$bin/edgetally-aggregator" --data-dir "$work/aggregator" \
    --quic-listen 127.0.0.1:0 --flight-listen 127.0.0.1:0 --flight-sql-listen 127.0.0.1:0 \
    --http-listen 127.0.0.1:0 & pids+=($!)
aggregator_pid=$!
wait_for "$work/aggregator/aggregator.json"
quic=$(json "$work/aggregator/aggregator.json" quic)
cert=$(json "$work/aggregator/aggregator.json" quic_cert)
# shellcheck disable=SC2086 # extra flags are words
RUST_LOG=warn "$bin/edgetally-collector" --data-dir "$work/collector" --http-listen 127.0.0.1:0 \
    --aggregator-addr "$quic" --aggregator-cert "$cert" ${threads:+--http-workers "$threads"} ${COLLECTOR_ARGS:-} \
    & pids+=($!)
collector_pid=$!
wait_for "$work/collector/collector.json"
collector=$(json "$work/collector/collector.json" http)
wait_port "$collector"

"$bin/bare-gif" --listen 127.0.0.1:0 ${threads:+--workers "$threads"} > "$work/bare-gif.out" & pids+=($!)
bare_pid=$!
bare=$(bare_gif_address "$work/bare-gif.out")

# One worker (or THREADS), access log on (see nginx_conf).
nginx_port=$(free_port)
nginx="127.0.0.1:$nginx_port"
nginx_conf "$work/nginx.conf" "$nginx" "${threads:-1}"
nginx -e "$work/nginx-error.log" -c "$work/nginx.conf" & pids+=($!)
nginx_pid=$!
wait_port "$nginx"
nginx_workers=$(children "$nginx_pid")
[ -n "$nginx_workers" ] || die "nginx has no worker process"
# shellcheck disable=SC2206 # pids are words
nginx_pids=("$nginx_pid" $nginx_workers)

machine="$(nproc) cores, $(uname -r)"
echo "machine: $machine; collector $collector, bare-gif $bare, nginx $nginx (${threads:-1} worker(s), access_log on); collector and bare-gif threads: ${threads:-one per core}"
echo

# --- 1. overhead over a bare server

wrk_cmd="wrk -t1 -c$connections -d${seconds}s --latency"
declare -A wrk_rps=([bare]="" [collector]="")
# One wrk turn against $1 (bare or collector): requests/s, p99, CPU per request.
wrk_turn() {
    local name=$1 url pid before after out n_requests rps p99 cpu_us
    case $name in
        bare) url="http://$bare/p.gif?aff=1&cmp=1" pid=$bare_pid ;;
        collector) url="http://$collector/p.gif?aff=1&cmp=1" pid=$collector_pid ;;
    esac
    before=$(cpu_ticks "$pid")
    out=$($wrk_cmd "$url")
    after=$(cpu_ticks "$pid")
    alive "$pid"
    rps=$(awk '/^Requests\/sec:/ {print $2}' <<< "$out")
    n_requests=$(awk '/ requests in / {print $1}' <<< "$out")
    p99=$(awk '$1 == "99%" {print $2}' <<< "$out")
    [ -n "$rps" ] && [ -n "$n_requests" ] || die "unexpected wrk output: $out"
    cpu_us=$(python3 -c "print(($after - $before) * 1e6 / $clk_tck / $n_requests)")
    wrk_rps[$name]+=" $rps"
    printf '  round %d %-9s %9.0f req/s  p99 %-8s CPU %5.2f us/req' "$2" "$name" "$rps" "$p99" "$cpu_us"
    grep -E 'Non-2xx|Socket errors' <<< "$out" | tr -s ' ' | sed 's/^/  !/' | tr -d '\n' || true
    echo
}
echo "== 1. overhead over a bare server: $wrk_cmd, GET /p.gif?aff=1&cmp=1, alternating"
for round in $(seq "$wrk_rounds"); do
    wrk_turn bare "$round"
    wrk_turn collector "$round"
done
# shellcheck disable=SC2086 # lists of numbers
bare_median=$(median ${wrk_rps[bare]})
# shellcheck disable=SC2086
collector_median=$(median ${wrk_rps[collector]})
throughput_ratio=$(python3 -c "print($collector_median / $bare_median)")
printf '  medians: bare %.0f req/s, collector %.0f req/s; collector/bare %.3f (goal >= 0.90)\n' \
    "$bare_median" "$collector_median" "$throughput_ratio"
echo

# --- 2. CPU per request against nginx

loadtest_cmd="edgetally-loadtest run --rate $rate --pixels-only --connections $connections --duration-secs $seconds --no-metrics --json"
declare -A cpu_us=([nginx]="" [collector]="") p99_ms=([nginx]="" [collector]="")
# One open-loop run against $1 (collector or nginx).
cpu_turn() {
    local name=$1 target cpu_pids before after aggregator_before aggregator_after report answered
    case $name in
        collector) target=$collector cpu_pids=("$collector_pid") ;;
        nginx) target=$nginx cpu_pids=("${nginx_pids[@]}") ;;
    esac
    report="$work/report-$name-$2.json"
    before=$(cpu_ticks "${cpu_pids[@]}")
    aggregator_before=$(cpu_ticks "$aggregator_pid")
    # Metrics are off for both: nginx has none, and the collector's scrape
    # and drain wait are not the requests measured. The pause after lets the
    # collector seal and ship its last batch inside the measurement.
    # shellcheck disable=SC2086 # the command is words
    "$bin/edgetally-loadtest" ${loadtest_cmd#edgetally-loadtest } --target "http://$target" --ledger "$work/ledger.json" > "$report" \
        || die "edgetally-loadtest failed against $name"
    sleep 1
    after=$(cpu_ticks "${cpu_pids[@]}")
    aggregator_after=$(cpu_ticks "$aggregator_pid")
    alive "${cpu_pids[@]}"
    answered=$(json "$report" requests_answered)
    [ "$answered" -gt 0 ] || die "no request answered by $name"
    local us p99 achieved errors extra=""
    us=$(python3 -c "print(($after - $before) * 1e6 / $clk_tck / $answered)")
    p99=$(json "$report" latency_ms.p99)
    achieved=$(json "$report" achieved_rate)
    errors=$(python3 -c 'import json,sys; e = json.load(open(sys.argv[1]))["errors"]; print(", ".join(f"{k} {v}" for k, v in e.items()))' "$report")
    if [ "$name" = collector ]; then
        extra=$(python3 -c "print(f'  (aggregator {($aggregator_after - $aggregator_before) * 1e6 / $clk_tck / $answered:.2f} us/req, not counted)')")
    fi
    cpu_us[$name]+=" $us"
    p99_ms[$name]+=" $p99"
    printf '  round %d %-9s %9d answered at %7.0f req/s  CPU %5.2f us/req  p99 %6.3f ms%s%s\n' "$2" "$name" \
        "$answered" "$achieved" "$us" "$p99" "$extra" "${errors:+  ! errors: $errors}"
}
echo "== 2. CPU per request against nginx: $loadtest_cmd, alternating"
for round in $(seq "$cpu_rounds"); do
    cpu_turn collector "$round"
    cpu_turn nginx "$round"
done
# shellcheck disable=SC2086
collector_cpu=$(mean ${cpu_us[collector]})
# shellcheck disable=SC2086
nginx_cpu=$(mean ${cpu_us[nginx]})
cpu_ratio=$(python3 -c "print($collector_cpu / $nginx_cpu)")
printf '  means: collector %.2f us/req, nginx %.2f us/req; collector/nginx %.3f (goal <= 1.0)\n' \
    "$collector_cpu" "$nginx_cpu" "$cpu_ratio"
echo "  nginx access log: $(wc -l < "$work/nginx-access.log") lines"
echo

# --- table

join() { local IFS=/; echo "$*"; }
echo "| figure | value | command |"
echo "|---|---|---|"
echo "| requests/s, collector / bare-gif (medians of $wrk_rounds alternating rounds) | $(fmt "$throughput_ratio" .3f) (goal ≥ 0.90): collector $(fmt "$collector_median" ,.0f)/s, bare $(fmt "$bare_median" ,.0f)/s | \`$wrk_cmd http://ADDR/p.gif?aff=1&cmp=1\` |"
# shellcheck disable=SC2086
echo "| CPU per request, collector / nginx empty_gif with access_log (means of $cpu_rounds alternating rounds at $rate/s) | $(fmt "$cpu_ratio" .3f) (goal ≤ 1.0): collector $(fmt "$collector_cpu" .2f) µs, nginx $(fmt "$nginx_cpu" .2f) µs; p99 ms collector $(join ${p99_ms[collector]}), nginx $(join ${p99_ms[nginx]}) | \`$loadtest_cmd --target http://ADDR\` |"
echo
echo "machine: $machine; command: benches/compare.sh $rate $seconds $wrk_rounds $cpu_rounds $connections"
