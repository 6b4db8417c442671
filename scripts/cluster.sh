#!/usr/bin/env bash
# A private PostgreSQL 15 cluster for tally: tests, benchmarks and `make run`.
#   scripts/cluster.sh start DIR PORT [extra postgresql.conf lines...]
#   scripts/cluster.sh stop DIR
# Runs the server as the postgres OS user when invoked as root (initdb refuses root),
# listens on 127.0.0.1:PORT and on a socket in DIR, trusts local connections.
# PRELOAD sets shared_preload_libraries at initdb (default tally; Citus nodes use citus,tally).
set -euo pipefail
PGBIN=${PGBIN:-$("${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}" --bindir)}
cmd=${1:?usage: cluster.sh start|stop DIR [PORT]}
dir=$(realpath -m "${2:?cluster directory}")

as_owner() {
    if [ "$(id -u)" = 0 ]; then sudo -u postgres "$@"; else "$@"; fi
}

case "$cmd" in
start)
    port=${3:?port}
    shift 3
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown postgres "$dir"
    if [ ! -f "$dir/data/PG_VERSION" ]; then
        as_owner "$PGBIN/initdb" -D "$dir/data" -A trust -U postgres --no-sync -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log"
        {
            echo "shared_preload_libraries = '${PRELOAD:-tally}'"
            echo "max_connections = 200"
            echo "timezone = 'UTC'"
            for line in "$@"; do echo "$line"; done
        } | as_owner tee -a "$dir/data/postgresql.conf" >/dev/null
    fi
    if as_owner "$PGBIN/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
        exit 0
    fi
    # The ports are inside Linux's ephemeral range (32768-60999), so a client
    # connection made elsewhere on the machine can hold the port as its local end
    # for a moment: the server then cannot bind it and stops at once. Such a
    # connection is short-lived; retry a bounded number of times, and only for that.
    for attempt in 1 2 3 4 5 6 7 8 9 10; do
        if as_owner "$PGBIN/pg_ctl" -D "$dir/data" -w -t 60 -l "$dir/server.log" \
            -o "-p $port -k $dir -c listen_addresses=127.0.0.1" start >/dev/null; then
            exit 0
        fi
        if [ "$attempt" = 10 ] || ! tail -n 5 "$dir/server.log" | grep -q "Address already in use"; then
            echo "cluster.sh: pg_ctl could not start the server on port $port; see $dir/server.log" >&2
            exit 1
        fi
        echo "cluster.sh: port $port is in use, retrying ($attempt/10)" >&2
        sleep 1
    done
    ;;
stop)
    # Bounded: a fast shutdown that outlasts 60 seconds (a backend that does not
    # answer its cancel) is reported with what still runs, then made immediate.
    if [ -f "$dir/data/PG_VERSION" ] && as_owner "$PGBIN/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
        if ! as_owner "$PGBIN/pg_ctl" -D "$dir/data" -m fast -w -t 60 stop >/dev/null 2>&1; then
            pid=$(head -1 "$dir/data/postmaster.pid" 2>/dev/null || true)
            echo "cluster.sh: the server in $dir did not stop within 60 s; still running:" >&2
            [ -n "$pid" ] && ps -o pid,stat,etime,args --no-headers --ppid "$pid" >&2 || true
            as_owner "$PGBIN/pg_ctl" -D "$dir/data" -m immediate -w -t 30 stop >/dev/null 2>&1 || {
                echo "cluster.sh: an immediate shutdown of $dir failed too" >&2
                exit 1
            }
        fi
    fi
    ;;
*)
    echo "usage: cluster.sh start|stop DIR [PORT]" >&2
    exit 2
    ;;
esac
