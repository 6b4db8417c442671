#!/usr/bin/env bash
# pg_regress files of extension/tests/pg_regress against a distributed tally on the
# local Citus cluster (make test-citus), with their Citus expected outputs in
# extension/tests/pg_regress/citus_expected (its README explains every difference).
#   tests/citus_regress.sh PORT TEST...
# The files run as they are but for these changes: roles are created with LOGIN, since
# Citus opens its connections to the workers as the current role; and settings that
# must reach the triggers are set in a form Citus passes on to the workers (a plain
# SET stays on the coordinator, and tally refuses it there): tally.enforce_limits for
# an import and session_replication_role to make drift on purpose with SET LOCAL in a
# transaction block, the reservation timeout as a role setting. A file's helper
# functions in pg_temp are created with DDL propagation off: Citus would otherwise
# warn that they stay on the coordinator, naming the temporary schema, whose number
# depends on the backend's slot (and differs between PostgreSQL 15 and 18).
set -euo pipefail
cd "$(dirname "$0")/.."
port=${1:?coordinator port}; shift
out=target/citus-regress
rm -rf "$out" && mkdir -p "$out/sql" "$out/expected"
cp extension/tests/pg_regress/citus_expected/*.out "$out/expected/"
for f in extension/tests/pg_regress/sql/*.sql; do
    # A superuser's session SET of the reservation timeout (limits.sql; security.sql
    # past its non-superuser attempts) becomes a role setting, which Citus passes on
    # to the workers, taken up by a new connection (\c).
    from=0
    case "$(basename "$f")" in limits.sql) from=1 ;; security.sql) from=135 ;; esac
    sed -E 's/^CREATE ROLE ([a-z_]+);/CREATE ROLE \1 LOGIN;/' "$f" |
        FROM=$from perl -pe 'if ($ENV{FROM} > 0 && $. >= $ENV{FROM}) {
            s/^SET tally\.reservation_timeout = (.*);$/ALTER ROLE postgres SET tally.reservation_timeout = $1;\n\\c\nSET client_min_messages = warning;/;
            s/^RESET tally\.reservation_timeout;$/ALTER ROLE postgres RESET tally.reservation_timeout;\n\\c\nSET client_min_messages = warning;/ }' |
        perl -0pe 's/SET tally\.enforce_limits = off;\n((?:INSERT|SELECT)[^\n]*)\nRESET tally\.enforce_limits;/BEGIN;\nSET LOCAL tally.enforce_limits = off;\n$1\nCOMMIT;/g;
                   s/SET session_replication_role = replica;\n(.*?)RESET session_replication_role;/BEGIN;\nSET LOCAL session_replication_role = replica;\n$1COMMIT;/gs;
                   s/^(CREATE FUNCTION pg_temp\..*?\$\$;\n)/SET citus.enable_ddl_propagation = off;\n$1RESET citus.enable_ddl_propagation;\n/gms' \
        > "$out/sql/$(basename "$f")"
done
scripts/citus_db.sh "$port" tally_regress
psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d tally_regress \
    -c "CREATE EXTENSION tally" -c "SELECT tally.distribute()" >/dev/null
pgxs_src=$(dirname "$(${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config} --pgxs)")/..
"$pgxs_src/test/regress/pg_regress" --use-existing --host=127.0.0.1 --port="$port" --user=postgres \
    --inputdir="$out" --outputdir="$out" \
    --dbname=tally_regress setup "$@" || { cat "$out/regression.diffs"; exit 1; }
