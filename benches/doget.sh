#!/usr/bin/env bash
# Reading a 10-million-row conversions ledger back from the aggregator
# over Arrow Flight on loopback, against pyarrow reading the same Parquet
# partition file directly, in one run (benches/doget.py), and the time of
# a group-by through Flight SQL. The ledger is written by seed-conversions
# (benches/src/bin/seed-conversions.rs) and loaded by a release aggregator
# at start, as after a restart.
#
# Needs release builds (built here) and .venv (made here by
# `scripts/test venv`). Usage: benches/doget.sh [rows] [rounds]
set -euo pipefail
rows=${1:-10000000}
rounds=${2:-5}
root=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
bin="$target/release"
work=$(mktemp -d)
pid=
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cd "$root"
cargo build --release -p edgetally-aggregator --bin edgetally-aggregator -p edgetally-benches --bin seed-conversions
scripts/test venv

echo "seeding $rows conversions..." >&2
mapfile -t files < <("$bin/seed-conversions" --data-dir "$work/aggregator" --rows "$rows")
conversions=()
for file in "${files[@]}"; do
    case "$file" in */parquet/conversions/*) conversions+=("$file") ;; esac
done
"$bin/edgetally-aggregator" --data-dir "$work/aggregator" --quic-listen 127.0.0.1:0 \
    --flight-listen 127.0.0.1:0 --flight-sql-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 \
    --retention-days 0 2>"$work/aggregator.log" &
pid=$!
for _ in $(seq 3000); do
    [ -s "$work/aggregator/aggregator.json" ] && break
    kill -0 "$pid" 2>/dev/null || { cat "$work/aggregator.log" >&2; exit 1; }
    sleep 0.1
done
addresses=$(cat "$work/aggregator/aggregator.json")
field() { .venv/bin/python -c "import json, sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$addresses" "$1"; }

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), $(uname -sr)"
echo "parquet: $(du -ch "${conversions[@]}" | tail -1 | cut -f1) in ${#conversions[@]} file(s)"
.venv/bin/python benches/doget.py --flight "grpc://$(field flight)" --flight-sql "grpc://$(field flight_sql)" \
    --parquet "${conversions[@]}" --rounds "$rounds"
echo "aggregator RSS: $(awk '/VmHWM/ {printf "%.1f GiB", $2 / 1048576}' /proc/$pid/status) peak"
