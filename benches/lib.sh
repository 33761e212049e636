# Shared by benches/compare.sh and benches/tail.sh: a temporary directory
# and the child processes that die with the script, and small helpers.
# Source it after setting `name` (the script's name, for messages).

work=$(mktemp -d)
pids=()
cleanup() {
    kill "${pids[@]}" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
# An interrupted run cleans up too.
trap 'exit 130' INT TERM

die() { echo "$name: $*" >&2; exit 1; }
# Waits until a file is non-empty.
wait_for() { for _ in $(seq 300); do [ -s "$1" ] && return; sleep 0.05; done; die "timed out waiting for $1"; }
# Waits until HOST:PORT accepts a connection.
wait_port() {
    local host=${1%:*} port=${1##*:}
    for _ in $(seq 300); do (exec 3<> "/dev/tcp/$host/$port") 2> /dev/null && return; sleep 0.05; done
    die "nothing listening on $1"
}
# A key of a JSON file; dots walk into objects.
json() {
    python3 -c 'import json,sys
value = json.load(open(sys.argv[1]))
for key in sys.argv[2].split("."): value = value[key]
print(value)' "$1" "$2"
}
# The address a bare-gif writing its stdout to $1 listens on, once it
# answers connections.
bare_gif_address() {
    local address
    wait_for "$1"
    address=$(awk '/^listening on / {print $3}' "$1")
    [ -n "$address" ] || die "bare-gif printed no address: $(cat "$1")"
    wait_port "$address"
    echo "$address"
}
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# An nginx configuration in $1 for WORKERS ($3) workers serving empty_gif
# on ADDRESS ($2), in the foreground so that its master is our child,
# with the access log on in nginx's default (combined) format,
# unbuffered, as an nginx left at its defaults would run. Its pid, error
# and access logs go beside the file.
nginx_conf() {
    local dir
    dir=$(dirname "$1")
    cat > "$1" << CONF
daemon off;
worker_processes $3;
pid $dir/nginx.pid;
error_log $dir/nginx-error.log;
events { worker_connections 4096; }
http {
    access_log $dir/nginx-access.log;
    keepalive_requests 100000000;
    server {
        listen $2;
        location / { empty_gif; }
    }
}
CONF
}
