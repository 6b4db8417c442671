#!/usr/bin/env bash
# A local Citus cluster for tally: a coordinator and two workers on 127.0.0.1.
#   scripts/citus_cluster.sh start DIR PORT   coordinator on PORT, workers on PORT+1, PORT+2
#   scripts/citus_cluster.sh stop DIR
# Every node preloads citus, then tally (Citus must come first). Starting an existing
# cluster again only starts its servers; a new one gets citus on every node and the
# workers added to the coordinator. Databases are created by the caller, on the
# coordinator, with citus created in them (see scripts/citus_db.sh).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cmd=${1:?usage: citus_cluster.sh start|stop DIR [PORT]}
dir=$(realpath -m "${2:?cluster directory}")
nodes="coordinator worker1 worker2"

case "$cmd" in
start)
    port=${3:?port}
    i=0
    for node in $nodes; do
        PRELOAD=citus,tally "$here/cluster.sh" start "$dir/$node" $((port + i)) \
            "citus.node_conninfo = 'sslmode=disable'" \
            "citus.enable_unsafe_triggers = on" \
            "citus.propagate_set_commands = 'local'" \
            "max_prepared_transactions = 200" "max_worker_processes = 64" \
            "deadlock_timeout = '100ms'" \
            "fsync = off" "synchronous_commit = off" "full_page_writes = off"
        i=$((i + 1))
    done
    ;;
stop)
    for node in $nodes; do "$here/cluster.sh" stop "$dir/$node"; done
    ;;
*)
    echo "usage: citus_cluster.sh start|stop DIR [PORT]" >&2
    exit 2
    ;;
esac
