#!/usr/bin/env bash
# A local rill cluster: N `rill serve` replicas behind HAProxy (deploy/haproxy/haproxy.cfg).
#
#   deploy/local/cluster.sh up N PORT   start N replicas (ports PORT+1..PORT+N, replica ids
#                                       r1..rN) and HAProxy on PORT; returns once all are ready
#   deploy/local/cluster.sh restart I   restart replica I as a rolling update does: SIGTERM (it
#                                       stops being ready, HAProxy stops sending to it, its
#                                       streams finish within the grace period), then start it
#                                       again and wait until HAProxy sees it ready
#   deploy/local/cluster.sh down        stop everything `up` started (by pid)
#
# Environment: RILL_BIN (default target/release/rill), RILL_ARGS (extra `rill serve` flags,
# default "-t 1 --kv-cache-mib 256"), RILL_GRACE (shutdown grace seconds, default 15),
# RILL_CLUSTER_DIR (pids, ports and logs; default target/cluster). Installs nothing: it says
# what is missing. HAProxy's stats page (CSV at /stats;csv) listens on PORT+N+1.
set -euo pipefail
cd "$(dirname "$0")/../.."
dir=${RILL_CLUSTER_DIR:-target/cluster}
bin=${RILL_BIN:-target/release/rill}
args=${RILL_ARGS:--t 1 --kv-cache-mib 256}
grace=${RILL_GRACE:-15}

die() { echo "cluster.sh: $*" >&2; exit 1; }
need() {
  command -v haproxy >/dev/null || die "haproxy is not installed (Debian: apt-get install haproxy)"
  command -v curl >/dev/null || die "curl is not installed (Debian: apt-get install curl)"
  [ -x "$bin" ] || die "no rill binary at $bin (cargo build --release -p rill, or set RILL_BIN)"
}

# Waits until URL answers 200 (at most $2 seconds).
wait_ready() {
  local url=$1 limit=$2 t=0
  until curl -fsS -o /dev/null "$url" 2>/dev/null; do
    sleep 0.2; t=$((t + 1))
    [ $t -lt $((limit * 5)) ] || return 1
  done
}

start_replica() {
  local i=$1 port
  port=$(cat "$dir/port.$i")
  # shellcheck disable=SC2086 # RILL_ARGS is a list of flags
  "$bin" serve --host 127.0.0.1 --port "$port" --replica-id "r$i" --shutdown-grace-s "$grace" \
    $args >>"$dir/replica.$i.log" 2>&1 &
  echo $! >"$dir/pid.$i"
}

# HAProxy's view of replica I: UP, DOWN, ... (its CSV stats page).
lb_status() {
  curl -fsS "http://127.0.0.1:$(cat "$dir/stats_port")/stats;csv" 2>/dev/null \
    | awk -F, -v s="r$1" '$1 == "rill" && $2 == s { print $18 }'
}

# Waits until HAProxy has replica I in rotation.
wait_in_rotation() {
  local i=$1 t=0
  until [ "$(lb_status "$i")" = UP ]; do
    sleep 0.2; t=$((t + 1))
    [ $t -lt 150 ] || return 1
  done
}

up() {
  local n=$1 port=$2
  need
  [ ! -e "$dir/pid.haproxy" ] || die "a cluster is already up ($dir); run: $0 down"
  mkdir -p "$dir"
  echo "$n" >"$dir/n"
  {
    echo "backend rill"
    for i in $(seq "$n"); do
      echo "    use-server r$i if { path_reg ^/v1/streams/[^/?]+\\.r$i\$ }"
    done
    for i in $(seq "$n"); do
      echo "    server r$i 127.0.0.1:$((port + i))"
    done
  } >"$dir/backend.cfg"
  echo $((port + n + 1)) >"$dir/stats_port"
  printf 'frontend stats\n    bind 127.0.0.1:%s\n    stats enable\n    stats uri /stats\n' \
    "$((port + n + 1))" >"$dir/stats.cfg"
  for i in $(seq "$n"); do
    echo $((port + i)) >"$dir/port.$i"
    start_replica "$i"
  done
  for i in $(seq "$n"); do
    wait_ready "http://127.0.0.1:$((port + i))/ready" 300 || die "replica $i did not become ready (see $dir/replica.$i.log)"
  done
  RILL_LB_BIND="127.0.0.1:$port" haproxy -f deploy/haproxy/haproxy.cfg -f "$dir/stats.cfg" \
    -f "$dir/backend.cfg" >>"$dir/haproxy.log" 2>&1 &
  echo $! >"$dir/pid.haproxy"
  for i in $(seq "$n"); do
    wait_in_rotation "$i" || die "HAProxy does not see replica $i up (see $dir/haproxy.log)"
  done
  echo "cluster up: $n replicas behind http://127.0.0.1:$port"
}

restart() {
  local i=$1 pid
  [ -e "$dir/pid.$i" ] || die "no replica $i (is the cluster up?)"
  pid=$(cat "$dir/pid.$i")
  kill -TERM "$pid" 2>/dev/null || true
  # The replica drains: it answers /ready with 503, HAProxy takes it out, its streams end.
  for _ in $(seq $(((grace + 10) * 5))); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  if kill -0 "$pid" 2>/dev/null; then
    kill -KILL "$pid"
    die "replica $i did not exit within its grace period; killed"
  fi
  start_replica "$i"
  wait_ready "http://127.0.0.1:$(cat "$dir/port.$i")/ready" 300 || die "replica $i did not come back"
  wait_in_rotation "$i" || die "HAProxy does not see replica $i up again"
  echo "replica $i restarted"
}

down() {
  [ -d "$dir" ] || { echo "no cluster"; return 0; }
  for f in "$dir"/pid.*; do
    [ -e "$f" ] || continue
    kill -TERM "$(cat "$f")" 2>/dev/null || true
  done
  for f in "$dir"/pid.*; do
    [ -e "$f" ] || continue
    local pid
    pid=$(cat "$f")
    for _ in $(seq $(((grace + 10) * 5))); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.2
    done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$f"
  done
  echo "cluster down"
}

case "${1:-}" in
  up) [ $# -eq 3 ] || die "usage: $0 up N PORT"; up "$2" "$3" ;;
  restart) [ $# -eq 2 ] || die "usage: $0 restart I"; restart "$2" ;;
  down) down ;;
  *) die "usage: $0 up N PORT | restart I | down" ;;
esac
