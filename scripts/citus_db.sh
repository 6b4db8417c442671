#!/usr/bin/env bash
# A fresh database on the local Citus cluster of scripts/citus_cluster.sh:
#   scripts/citus_db.sh PORT DBNAME
# Drops DBNAME on every node if it exists, creates it with citus, then on the
# coordinator (PORT) registers itself and adds the workers (PORT+1, PORT+2).
# Citus keeps its node list per database, hence a step per database.
set -euo pipefail
port=${1:?coordinator port}
db=${2:?database name}
psql_on() { PGOPTIONS="-c client_min_messages=warning" psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -U postgres -p "$1" "${@:2}"; }
for p in $((port + 2)) $((port + 1)) "$port"; do
    psql_on "$p" -d postgres -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" -c "CREATE DATABASE \"$db\""
    psql_on "$p" -d "$db" -c "CREATE EXTENSION citus"
done
psql_on "$port" -d "$db" \
    -c "SELECT citus_set_coordinator_host('127.0.0.1', $port)" \
    -c "SELECT citus_add_node('127.0.0.1', $((port + 1)))" \
    -c "SELECT citus_add_node('127.0.0.1', $((port + 2)))" >/dev/null
