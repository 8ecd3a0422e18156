#!/usr/bin/env bash
# Run N apipod processes on this host behind HAProxy (Debian's package), the local
# counterpart of docker-compose.scale.yml.   Usage: scripts/replicas.sh [N]   (make replicas N=2)
#
# HAProxy listens on $PORT (default 8081); replica i listens on $PORT+i. All share
# DATABASE_PATH (SQLite in WAL mode), or DATABASE_URL and REDIS_URL when .env sets them
# (docs/scaling.md, "Scaling out"). Ctrl-C or SIGTERM stops everything, letting the
# replicas drain their in-flight requests.
set -euo pipefail
cd "$(dirname "$0")/.."
replicas=${1:-2}
port=${PORT:-$(grep -s '^PORT=' .env | cut -d= -f2- || true)}
port=${port:-8081}
python=.venv/bin/python
command -v haproxy >/dev/null || {
  echo "replicas.sh: haproxy not found; installing it with apt-get" >&2
  apt-get update -qq && apt-get install -y -qq haproxy
}
workdir=$(mktemp -d)
config="$workdir/haproxy.cfg"
{
  printf 'global\n    maxconn 4096\n'
  printf 'defaults\n    mode http\n    timeout connect 5s\n    timeout client 600s\n'
  printf '    timeout server 600s\n    timeout check 5s\n'
  printf '    retries 2\n    option redispatch\n    http-reuse never\n'
  printf 'frontend apipod\n    bind 0.0.0.0:%s\n    default_backend replicas\n' "$port"
  printf 'backend replicas\n    balance leastconn\n    option httpchk GET /health\n'
  for i in $(seq 1 "$replicas"); do
    printf '    server apipod%s 127.0.0.1:%s check inter 2s\n' "$i" $((port + i))
  done
} > "$config"

pids=()
stop() {
  trap - INT TERM EXIT
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
  rm -rf "$workdir"
}
trap stop INT TERM EXIT
# Each child in its own session: a Ctrl-C reaches only this script, which then sends
# one SIGTERM (a second one would make a replica skip draining).
for i in $(seq 1 "$replicas"); do
  PORT=$((port + i)) setsid "$python" -m apipod_proxy.serve &
  pids+=($!)
done
# 200 from URL within 60 s, else a line saying what did not come up, and exit 1.
healthy() {
  for _ in $(seq 1 240); do
    "$python" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)' \
      "$1" 2>/dev/null && return 0
    for pid in "${pids[@]}"; do
      kill -0 "$pid" 2>/dev/null || { echo "replicas.sh: $2 exited; see its lines above" >&2; exit 1; }
    done
    sleep 0.25
  done
  echo "replicas.sh: $2 did not answer $1 within 60 s" >&2
  exit 1
}
# HAProxy starts once every replica answers, so its health checks never see one down
# (no ALERT/DOWN lines at start); after that a DOWN line is news.
for i in $(seq 1 "$replicas"); do
  healthy "http://127.0.0.1:$((port + i))/health" "replica $i"
done
setsid haproxy -W -db -q -f "$config" &
pids+=($!)
healthy "http://127.0.0.1:$port/health" "HAProxy"
echo "replicas.sh: ready: http://127.0.0.1:$port (HAProxy) in front of $replicas replicas on :$((port + 1))-:$((port + replicas)); Ctrl-C stops them" >&2
wait -n "${pids[@]}"
