#!/usr/bin/env bash
# A local Citus cluster for tally: a coordinator and two workers on 127.0.0.1.
#   scripts/citus_cluster.sh start DIR PORT        coordinator on PORT, workers on PORT+1, PORT+2
#   scripts/citus_cluster.sh node DIR NAME PORT    one more node (not added to any database)
#   scripts/citus_cluster.sh stop DIR              every node under DIR
# Every node preloads citus, then tally (Citus must come first), and writes logical
# WAL, which Citus's shard moves (rebalancing, draining) replicate by. Starting an
# existing cluster again only starts its servers; a new one gets citus on every node
# and the workers added to the coordinator. Databases are created by the caller, on
# the coordinator, with citus created in them (see scripts/citus_db.sh).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cmd=${1:?usage: citus_cluster.sh start|node|stop DIR ...}
dir=$(realpath -m "${2:?cluster directory}")

start_node() {
    PRELOAD=citus,tally "$here/cluster.sh" start "$dir/$1" "$2" \
        "citus.node_conninfo = 'sslmode=disable'" \
        "citus.enable_unsafe_triggers = on" \
        "citus.propagate_set_commands = 'local'" \
        "wal_level = logical" \
        "max_prepared_transactions = 200" "max_worker_processes = 64" \
        "deadlock_timeout = '100ms'" \
        "fsync = off" "synchronous_commit = off" "full_page_writes = off"
}

case "$cmd" in
start)
    port=${3:?port}
    i=0
    for node in coordinator worker1 worker2; do
        start_node "$node" $((port + i))
        i=$((i + 1))
    done
    ;;
node)
    start_node "${3:?node name}" "${4:?port}"
    ;;
stop)
    for node in "$dir"/*/; do
        [ -d "$node/data" ] && "$here/cluster.sh" stop "$node"
    done
    true
    ;;
*)
    echo "usage: citus_cluster.sh start|node|stop DIR ..." >&2
    exit 2
    ;;
esac
