#!/usr/bin/env bash
# A private PostgreSQL 15 cluster for tally: tests, benchmarks and `make run`.
#   tests/cluster.sh start DIR PORT [extra postgresql.conf lines...]
#   tests/cluster.sh stop DIR
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
    as_owner "$PGBIN/pg_ctl" -D "$dir/data" -w -t 60 -l "$dir/server.log" \
        -o "-p $port -k $dir -c listen_addresses=127.0.0.1" start >/dev/null
    ;;
stop)
    if [ -f "$dir/data/PG_VERSION" ]; then
        as_owner "$PGBIN/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
    fi
    ;;
*)
    echo "usage: cluster.sh start|stop DIR [PORT]" >&2
    exit 2
    ;;
esac
