#!/usr/bin/env bash
# Measures how fast edgetally-loadtest drives HTTP compared with wrk, in one
# run on one machine: both send keep-alive GETs to nginx's empty_gif (a bare
# server that only answers the 43-byte GIF) with the same connection and
# thread counts, taking turns, several rounds.
#
# Needs: Debian's nginx and wrk, and `cargo build --release --bins`.
# Usage: loadtest/perf/compare-wrk.sh [connections] [threads] [seconds] [rounds]
set -euo pipefail
connections=${1:-32}
threads=${2:-1}
seconds=${3:-10}
rounds=${4:-3}
root=$(cd "$(dirname "$0")/../.." && pwd)
loadtest="$root/target/release/edgetally-loadtest"
work=$(mktemp -d)
port=18080
trap 'kill $(cat "$work/nginx.pid" 2>/dev/null) 2>/dev/null || true; rm -rf "$work"' EXIT

cat > "$work/nginx.conf" <<CONF
worker_processes 1;
pid $work/nginx.pid;
error_log $work/error.log;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 100000000;
    server {
        listen 127.0.0.1:$port;
        location / { empty_gif; }
    }
}
CONF
nginx -c "$work/nginx.conf"
sleep 0.5

echo "machine: $(nproc) cores, $(uname -r); nginx 1 worker; $connections connections, $threads thread(s), ${seconds}s per turn"
for round in $(seq "$rounds"); do
    wrk_rps=$(wrk -t"$threads" -c"$connections" -d"${seconds}s" "http://127.0.0.1:$port/p.gif?aff=1&cmp=1" | awk '/Requests\/sec/ {print $2}')
    ours_rps=$("$loadtest" run --target "http://127.0.0.1:$port" --max --pixels-only --no-metrics \
        --connections "$connections" --threads "$threads" --duration-secs "$seconds" \
        --ledger "$work/ledger.json" --json | awk -F': ' '/"achieved_rate"/ {gsub(",", "", $2); print $2}')
    awk -v r="$round" -v w="$wrk_rps" -v o="$ours_rps" \
        'BEGIN { printf "round %d: wrk %.0f req/s, edgetally-loadtest %.0f req/s, ratio %.3f\n", r, w, o, o / w }'
done
