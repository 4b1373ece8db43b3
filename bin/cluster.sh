#!/usr/bin/env bash
# Start, stop or inspect a local 3-node raftnode cluster.
#
#   bin/cluster.sh start    build (release) and start nodes 1-3 in the background
#   bin/cluster.sh status   ask every node for STATUS
#   bin/cluster.sh stop     stop the nodes started by this script
#   bin/cluster.sh clean    stop and delete their data dirs
#
# Node i listens for peers on 127.0.0.1:700i, for line clients on 127.0.0.1:800i
# and for Redis clients (RESP2, e.g. redis-cli -p 6380) on 127.0.0.1:<6379+i>,
# serves Prometheus metrics on http://127.0.0.1:900i/metrics, keeps its data
# in data/cluster/node-i and logs to data/cluster/node-i.log.
# Environment: NODES (default 3), RAFTNODE_ARGS (extra flags for every node),
# PEER_TLS=1 (mutual TLS between the nodes, with a test CA that bin/certs.sh
# makes in data/cluster/certs).
set -euo pipefail
cd "$(dirname "$0")/.."
NODES=${NODES:-3}
DIR=data/cluster
BIN=target/release/raftnode

peers() {
  local list="" i
  for i in $(seq 1 "$NODES"); do list+="${list:+,}$i=127.0.0.1:$((7000 + i))"; done
  echo "$list"
}

status_line() {
  # One request on a fresh connection, with bash's /dev/tcp (no nc needed).
  local port=$1
  if exec 3<>"/dev/tcp/127.0.0.1/$port" 2>/dev/null; then
    printf 'STATUS\n' >&3
    local line=""
    read -r -t 2 line <&3 || true
    exec 3<&- 3>&-
    echo "${line:-no answer}"
  else
    echo "not reachable"
  fi
}

case "${1:-}" in
  start)
    cargo build --release --quiet --bin raftnode
    mkdir -p "$DIR"
    if [ "${PEER_TLS:-0}" = 1 ] && [ ! -f "$DIR/certs/ca.pem" ]; then
      bin/certs.sh "$DIR/certs" "$NODES"
    fi
    for i in $(seq 1 "$NODES"); do
      if [ -f "$DIR/node-$i.pid" ] && kill -0 "$(cat "$DIR/node-$i.pid")" 2>/dev/null; then
        echo "node $i already running (pid $(cat "$DIR/node-$i.pid"))"; continue
      fi
      tls=()
      if [ "${PEER_TLS:-0}" = 1 ]; then
        tls=(--peer-cert-file "$DIR/certs/node-$i.pem" --peer-key-file "$DIR/certs/node-$i.key"
             --peer-trusted-ca-file "$DIR/certs/ca.pem")
      fi
      # shellcheck disable=SC2086
      "$BIN" --id "$i" --peers "$(peers)" --data-dir "$DIR/node-$i" \
        --metrics-addr "127.0.0.1:$((9000 + i))" --resp-addr "127.0.0.1:$((6379 + i))" "${tls[@]}" ${RAFTNODE_ARGS:-} \
        >"$DIR/node-$i.log" 2>&1 &
      echo $! >"$DIR/node-$i.pid"
      echo "node $i: pid $!, clients on 127.0.0.1:$((8000 + i)), Redis clients on 127.0.0.1:$((6379 + i)), metrics on http://127.0.0.1:$((9000 + i))/metrics, log $DIR/node-$i.log"
    done
    sleep 2
    "$0" status
    ;;
  status)
    for i in $(seq 1 "$NODES"); do echo "node $i: $(status_line $((8000 + i)))"; done
    ;;
  stop)
    for i in $(seq 1 "$NODES"); do
      if [ -f "$DIR/node-$i.pid" ]; then
        kill "$(cat "$DIR/node-$i.pid")" 2>/dev/null && echo "stopped node $i" || true
        rm -f "$DIR/node-$i.pid"
      fi
    done
    ;;
  clean)
    "$0" stop
    rm -rf "$DIR"
    ;;
  *)
    sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
