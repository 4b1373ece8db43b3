#!/usr/bin/env bash
# The standard raftnode benchmark: a fresh local 3-node cluster (fsync on, the
# default), then raftbench rows, one table.
#
#   bin/bench.sh                      clients spread over all three nodes
#   BENCH_LEADER_ONLY=1 bin/bench.sh  every client talks to the leader
#
# Rows: 8-byte keys, 256-byte values, unique keys, writes only, at 1, 4, 16,
# 64, 256 and 1000 clients; then linearizable GETs at 64 clients over a
# prefilled keyspace. Each row runs BENCH_SECS after a BENCH_WARMUP warmup
# and reports the nodes' CPU seconds and RSS over the measured interval, and
# the leader's and a follower's CPU time and context switches per operation.
#
# TLS rows: then a second fresh cluster with mutual TLS between peers and
# TLS on the client port (certificates from bin/certs.sh, TLS 1.3), the
# same write and GET rows at BENCH_TLS_CLIENTS, labelled "TLS"; a line after
# the table states their cost against the plain rows with the same clients:
# the throughput ratio and the ratio of node CPU seconds per operation.
#
# Environment (defaults in brackets):
#   BENCH_SECS [10]            measured seconds per row
#   BENCH_WARMUP [2]           warmup seconds per row
#   BENCH_CLIENTS [1 4 16 64 256 1000]   the write rows
#   BENCH_GET_CLIENTS [64]     clients of the GET row (empty: no GET row)
#   BENCH_GET_KEYS [10000]     keys prefilled for the GET row
#   BENCH_TLS_CLIENTS [64]     the write rows on the TLS cluster, plus the GET
#                              row at BENCH_GET_CLIENTS (empty: no TLS rows)
#   BENCH_LEADER_ONLY [0]      1: send to the leader only
#   BENCH_FRESH [0]            1: a new cluster for every row (by default the
#                              rows share one, so its store grows row by row)
#   BENCH_PORT_BASE [17000]    peers on BASE+1..3, clients on BASE+1001..1003;
#                              if taken, the next free block of 10 is used
#   BENCH_PERF_FSYNC [0]       1: count the leader's fdatasync calls with perf
#                              (root, tracepoints) for the entries/fsync column
#                              while the node does not log that figure itself
#   BENCH_CSV [unset]          also append raftbench's CSV lines to this file
#   BENCH_KEEP [0]             1: keep the data dir and logs (path is printed)
#   BENCH_NO_BUILD [0]         1: use the binaries in target/release as they are
#   BENCH_NODE_BIN [target/release/raftnode]  the node binary (another build, for
#                              before/after comparisons)
#   RAFTNODE_ARGS              extra flags for every node
# The cluster and its data (a temp dir under /tmp) are removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

SECS=${BENCH_SECS:-10}
WARMUP=${BENCH_WARMUP:-2}
CLIENT_ROWS=${BENCH_CLIENTS:-1 4 16 64 256 1000}
GET_CLIENTS=${BENCH_GET_CLIENTS-64}
GET_KEYS=${BENCH_GET_KEYS:-10000}
TLS_CLIENTS=${BENCH_TLS_CLIENTS-64}
LEADER_ONLY=${BENCH_LEADER_ONLY:-0}
FRESH=${BENCH_FRESH:-0}
NODES=3
NODE_BIN=${BENCH_NODE_BIN:-target/release/raftnode}
BENCH_BIN=target/release/raftbench

if [ "${BENCH_NO_BUILD:-0}" != 1 ]; then
  cargo build --release --quiet --bin raftnode --bin raftbench
fi

# 1,000 clients need 1,000 sockets here and up to 1,000 per node.
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 8192 ]; then
  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
fi

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# A block of ports nobody listens on: peers BASE+i, clients BASE+1000+i.
BASE=${BENCH_PORT_BASE:-17000}
for _ in $(seq 1 50); do
  busy=0
  for i in $(seq 1 $NODES); do
    if port_busy $((BASE + i)) || port_busy $((BASE + 1000 + i)); then busy=1; fi
  done
  [ $busy = 0 ] && break
  BASE=$((BASE + 10))
done
[ $busy = 0 ] || { echo "bench.sh: no free ports near ${BENCH_PORT_BASE:-17000}" >&2; exit 1; }

ROOT=$(mktemp -d /tmp/raftbench.XXXXXX)
# TLS=1 while the TLS rows run: the nodes, STATUS and raftbench use TLS.
TLS=0
CERTS=$ROOT/certs
if [ -n "$TLS_CLIENTS" ]; then
  # Made now, so a missing openssl stops the bench before the first row.
  bin/certs.sh "$CERTS" "$NODES" >/dev/null || { echo "bench.sh: certificates for the TLS rows failed (BENCH_TLS_CLIENTS= skips them)" >&2; exit 1; }
fi
PIDS=()
stop_cluster() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  PIDS=()
}
cleanup() {
  stop_cluster
  if [ "${BENCH_KEEP:-0}" = 1 ]; then
    echo "bench.sh: data and logs kept in $ROOT" >&2
  else
    rm -rf "$ROOT"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

status_line() {
  local line="" pid
  if [ "$TLS" = 1 ]; then
    # openssl keeps the session open after its input ends: read the one
    # reply line, then stop it.
    read -r -t 2 line < <(exec openssl s_client -quiet -connect "127.0.0.1:$1" \
      -CAfile "$CERTS/ca.pem" -verify_return_error -verify_hostname localhost \
      <<<STATUS 2>/dev/null) || true
    pid=$!
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  elif exec 3<>"/dev/tcp/127.0.0.1/$1" 2>/dev/null; then
    printf 'STATUS\n' >&3
    read -r -t 2 line <&3 || true
    exec 3<&- 3>&-
  fi
  echo "$line"
}

# The leader every node agrees on, or nothing.
agreed_leader() {
  local i s l leader=""
  for i in $(seq 1 $NODES); do
    s=$(status_line $((BASE + 1000 + i)))
    l=$(sed -n 's/.* leader=\([0-9]*\).*/\1/p' <<<"$s")
    [ -n "$l" ] && [ "$l" != 0 ] || return 0
    [ -z "$leader" ] || [ "$leader" = "$l" ] || return 0
    leader=$l
  done
  echo "$leader"
}

# Starts nodes 1-3 with empty data dirs under $ROOT/cluster-N, waits until
# they agree on a leader; sets DIR, PIDS, PIDLIST, LEADER and ENDPOINTS.
CLUSTERS=0
start_cluster() {
  local i peers="" tls_args=()
  CLUSTERS=$((CLUSTERS + 1))
  DIR=$ROOT/cluster-$CLUSTERS
  mkdir -p "$DIR"
  for i in $(seq 1 $NODES); do peers+="${peers:+,}$i=127.0.0.1:$((BASE + i))"; done
  for i in $(seq 1 $NODES); do
    if [ "$TLS" = 1 ]; then
      tls_args=(--peer-cert-file "$CERTS/node-$i.pem" --peer-key-file "$CERTS/node-$i.key"
        --peer-trusted-ca-file "$CERTS/ca.pem" --cert-file "$CERTS/node-$i.pem" --key-file "$CERTS/node-$i.key")
    fi
    # shellcheck disable=SC2086
    RUST_LOG=${RUST_LOG:-info} "$NODE_BIN" --id "$i" --peers "$peers" \
      --client-addr "127.0.0.1:$((BASE + 1000 + i))" --data-dir "$DIR/node-$i" "${tls_args[@]}" ${RAFTNODE_ARGS:-} \
      >"$DIR/node-$i.log" 2>&1 &
    PIDS+=($!)
  done
  PIDLIST=$(IFS=,; echo "${PIDS[*]}")
  LEADER=""
  for _ in $(seq 1 300); do
    LEADER=$(agreed_leader)
    [ -n "$LEADER" ] && break
    check_alive
    sleep 0.1
  done
  [ -n "$LEADER" ] || { echo "bench.sh: no leader after 30 s; logs in $DIR" >&2; BENCH_KEEP=1; exit 1; }
  if [ "$LEADER_ONLY" = 1 ]; then
    ENDPOINTS="127.0.0.1:$((BASE + 1000 + LEADER))"
  else
    ENDPOINTS=""
    for i in $(seq 1 $NODES); do ENDPOINTS+="${ENDPOINTS:+,}127.0.0.1:$((BASE + 1000 + i))"; done
  fi
}

check_alive() {
  local pid
  for pid in "${PIDS[@]}"; do
    kill -0 "$pid" 2>/dev/null && continue
    echo "bench.sh: node pid $pid has exited; logs kept in $DIR:" >&2
    tail -n 3 "$DIR"/node-*.log >&2
    BENCH_KEEP=1
    exit 1
  done
}

# The ready thread logs its group commit in lines such as
#   fsync stats: 1234 fsyncs, 5678 entries, 4.6 entries/fsync
# fsync_stats prints the last "<X> entries/fsync" the leader logged during
# the row (log lines after line $2). Without such a line the column shows
# n/a, or with BENCH_PERF_FSYNC=1 an outside estimate: measured writes / the
# leader's fdatasync+fsync calls over the measured interval, marked "~" ("-"
# for a row without writes; wrong if leadership moves during the row, which
# the table then says).
fsync_stats() { # leader-log first-line perf-output ops
  local x n
  x=$(tail -n +"$(($2 + 1))" "$1" | grep -o '[0-9.]\+ entries/fsync' | tail -n 1 | cut -d' ' -f1 || true)
  if [ -z "$x" ] && [ "$4" = 0 ]; then
    x=-
  elif [ -z "$x" ] && [ -s "$3" ]; then
    n=$(awk -F, '$1 ~ /^[0-9]+$/ {n += $1} END {print n + 0}' "$3")
    [ "$n" -gt 0 ] && x="~$(awk -v o="$4" -v n="$n" 'BEGIN{printf "%.1f", o/n}')"
  fi
  echo "${x:-n/a}"
}

# With BENCH_PERF_FSYNC=1: counts the leader's fsyncs over the measured
# interval into $1, in the background.
FSYNC_PERF_PID=""
fsync_perf() {
  FSYNC_PERF_PID=""
  [ "${BENCH_PERF_FSYNC:-0}" = 1 ] && command -v perf >/dev/null || return 0
  (sleep "$WARMUP"; perf stat -x, -o "$1" -e syscalls:sys_enter_fdatasync,syscalls:sys_enter_fsync \
    -p "${PIDS[$((LEADER - 1))]}" -- sleep "$SECS" 2>/dev/null) &
  FSYNC_PERF_PID=$!
}

HEADER=$("$BENCH_BIN" --csv-header)
[ -z "${BENCH_CSV:-}" ] || [ -s "$BENCH_CSV" ] || echo "label,$HEADER" >>"$BENCH_CSV"

# Pulls named columns out of one raftbench CSV line.
col() { awk -F, -v h="$HEADER" -v want="$2" 'BEGIN{n=split(h,names,",")} {for(i=1;i<=n;i++) if(names[i]==want) print $i}' <<<"$1"; }
ms() { awk -v us="$1" 'BEGIN{printf "%.2f", us/1000}'; }
# "<CPU us>, <context switches>" per operation of node $2 (1-based, the
# order of --pids) in one raftbench CSV line.
per_op() {
  local cpu ctx
  cpu=$(col "$1" node_cpu_us_per_op | cut -d';' -f"$2")
  ctx=$(col "$1" node_ctx_per_op | cut -d';' -f"$2")
  echo "${cpu:--}, ${ctx:--}"
}
# The lowest node id that is not the leader.
a_follower() {
  local i
  for i in $(seq 1 $NODES); do
    [ "$i" = "$LEADER" ] || { echo "$i"; return; }
  done
}

ROWS=()
LEADERS=()
declare -A OUTS   # label -> raftbench's CSV line
ROW_LABELS=()     # the labels of OUTS in row order
row_no=0
run_row() { # label clients extra-args...
  local label=$1 clients=$2; shift 2
  local lines prefix out tls_args=()
  row_no=$((row_no + 1))
  prefix=$(printf "\\$(printf '%03o' $((96 + row_no)))") # a, b, c, ...: no key is reused
  if [ "$FRESH" = 1 ] || [ ${#PIDS[@]} = 0 ]; then
    stop_cluster
    if [ -n "${DIR:-}" ] && [ "${BENCH_KEEP:-0}" != 1 ]; then rm -rf "$DIR"; fi
    start_cluster
    LEADERS+=("$LEADER")
  fi
  check_alive
  # Leadership may have moved during an earlier row: follow it.
  local now
  now=$(agreed_leader)
  LEADER=${now:-$LEADER}
  lines=$(wc -l <"$DIR/node-$LEADER.log")
  echo "bench.sh: $label: $clients clients ..." >&2
  fsync_perf "$DIR/fsync-$row_no.txt"
  [ "$TLS" = 0 ] || tls_args=(--tls-ca "$CERTS/ca.pem")
  out=$("$BENCH_BIN" --endpoints "$ENDPOINTS" --clients "$clients" --duration "${SECS}s" \
    --warmup "${WARMUP}s" --key-size 8 --value-size 256 --key-prefix "$prefix" \
    --pids "$PIDLIST" "${tls_args[@]}" --csv "$@") || true
  [ -z "$FSYNC_PERF_PID" ] || wait "$FSYNC_PERF_PID" || true
  if [ -z "$out" ]; then
    ROWS+=("$(printf '%-10s | %s' "$label" "raftbench failed")")
    return
  fi
  OUTS[$label]=$out
  ROW_LABELS+=("$label")
  [ -z "${BENCH_CSV:-}" ] || echo "$label,$out" >>"$BENCH_CSV"
  ROWS+=("$(printf '%-10s | %9s | %7s | %7s | %7s | %8s | %8s | %6s | %-17s | %-17s | %-13s | %-13s | %s' \
    "$label" "$(col "$out" ops_per_s)" \
    "$(ms "$(col "$out" p50_us)")" "$(ms "$(col "$out" p90_us)")" "$(ms "$(col "$out" p99_us)")" \
    "$(ms "$(col "$out" p999_us)")" "$(ms "$(col "$out" max_us)")" \
    "$(col "$out" errors)" "$(col "$out" node_cpu_s | tr ';' /)" "$(col "$out" node_rss_mib | tr ';' /)" \
    "$(per_op "$out" "$LEADER")" "$(per_op "$out" "$(a_follower)")" \
    "$(fsync_stats "$DIR/node-$LEADER.log" "$lines" "$DIR/fsync-$row_no.txt" "$(col "$out" puts)")")")
  if [ "$(col "$out" errors)" != 0 ]; then
    ROWS+=("           errors: $(col "$out" error_codes)")
  fi
  now=$(agreed_leader)
  if [ "${now:-0}" != "$LEADER" ]; then
    ROWS+=("           leader changed during the row: node $LEADER -> ${now:-none agreed yet}")
  fi
}

for c in $CLIENT_ROWS; do
  run_row "$c" "$c" --ratio 1 --keyspace 0
done
if [ -n "$GET_CLIENTS" ]; then
  run_row "$GET_CLIENTS GET" "$GET_CLIENTS" --ratio 0 --keyspace "$GET_KEYS" --prefill
fi
PLAIN_LEADER=$(agreed_leader)

if [ -n "$TLS_CLIENTS" ]; then
  # A fresh cluster for the TLS rows, whatever BENCH_FRESH says: the plain
  # one is stopped and the next row starts one with TLS on.
  stop_cluster
  if [ -n "${DIR:-}" ] && [ "${BENCH_KEEP:-0}" != 1 ]; then rm -rf "$DIR"; fi
  TLS=1
  for c in $TLS_CLIENTS; do
    run_row "$c TLS" "$c" --ratio 1 --keyspace 0
  done
  if [ -n "$GET_CLIENTS" ]; then
    run_row "$GET_CLIENTS GET TLS" "$GET_CLIENTS" --ratio 0 --keyspace "$GET_KEYS" --prefill
  fi
fi

# Node CPU microseconds per operation of one raftbench CSV line.
cpu_per_op() {
  awk -v c="$(col "$1" node_cpu_s)" -v n="$(col "$1" ops)" 'BEGIN{
    k = split(c, a, ";"); s = 0
    for (i = 1; i <= k; i++) s += a[i]
    if (n > 0 && s > 0) printf "%.1f", s * 1e6 / n; else print "-" }'
}

# One line: the cost of TLS for each TLS row, against the plain row with
# the same clients.
tls_cost() {
  local label plain tls parts=""
  for label in "${ROW_LABELS[@]}"; do
    [[ $label == *" TLS" ]] || continue
    tls=${OUTS[$label]}
    plain=${OUTS[${label% TLS}]:-}
    if [ -z "$plain" ]; then
      parts+="${parts:+; }${label% TLS}: no plain row to compare"
      continue
    fi
    parts+="${parts:+; }$(awk -v label="${label% TLS}" \
      -v pt="$(col "$plain" ops_per_s)" -v tt="$(col "$tls" ops_per_s)" \
      -v pc="$(cpu_per_op "$plain")" -v tc="$(cpu_per_op "$tls")" 'BEGIN{
        t = pt > 0 ? sprintf("%.2fx", tt / pt) : "n/a"
        c = (pc != "-" && tc != "-") ? sprintf("%.2fx", tc / pc) : "n/a"
        printf "%s: %s the ops/s, %s the node CPU per op (%s -> %s us)", label, t, c, pc, tc }')"
  done
  [ -z "$parts" ] || echo "TLS cost (TLS / plain, same clients): $parts"
}

NOW_LEADER=$(agreed_leader)
if [ "$LEADER_ONLY" = 1 ]; then
  WHERE="the leader only"
else
  WHERE="all $NODES nodes, clients round-robin"
fi
if [ "$FRESH" = 1 ]; then
  CLUSTER="a fresh cluster per row, leaders: ${LEADERS[*]}"
elif [ "$TLS" = 1 ]; then
  CLUSTER="one cluster for the plain rows, leader: node ${LEADERS[0]}${PLAIN_LEADER:+, at their end: node $PLAIN_LEADER}"
  CLUSTER+="; one for the TLS rows, leader: node ${LEADERS[-1]}${NOW_LEADER:+, at the end: node $NOW_LEADER}"
else
  CLUSTER="one cluster for all rows, leader: node ${LEADERS[0]}${NOW_LEADER:+, at the end: node $NOW_LEADER}"
fi
echo
echo "raftnode benchmark: 3 nodes on 127.0.0.1 (fsync on), $(nproc) CPUs, endpoints: $WHERE"
echo "8 B keys, 256 B values, unique keys for writes; ${SECS} s measured per row after ${WARMUP} s warmup"
[ "$TLS" = 0 ] || echo "TLS rows: a fresh cluster with mutual TLS 1.3 between peers and TLS 1.3 on the client port"
echo "$CLUSTER; latencies in ms; CPU s (over the measured ${SECS} s) and RSS MiB per node 1/2/3"
echo "leader/follower \"us, cs\": that node's CPU microseconds and context switches (all its threads) per operation"
printf '%-10s | %9s | %7s | %7s | %7s | %8s | %8s | %6s | %-17s | %-17s | %-13s | %-13s | %s\n' \
  clients writes/s p50 p90 p99 p99.9 max errors "CPU s per node" "RSS per node" "leader us, cs" "follower us, cs" entries/fsync
printf '%s\n' "${ROWS[@]}"
if [ -n "$GET_CLIENTS" ]; then
  echo "(the GET rows count linearizable reads/s over $GET_KEYS prefilled keys in the writes/s column)"
fi
tls_cost
