#!/usr/bin/env bash
# Upgrading a distributed tally in place (make test-citus): a database created at the
# newest earlier release, filled (tests/upgrade/fill.sql, drift made on purpose
# included) and distributed, then ALTER EXTENSION tally UPDATE on the coordinator.
# Every node is at the current version afterwards; counters, verify() and every
# user's usage document are what they were; the views tally.distribute() took out
# of the extension stay out; writes and tally.record_session go on working.
#   tests/citus_upgrade.sh PORT FROM_RELEASE CURRENT_VERSION
set -euo pipefail
cd "$(dirname "$0")/.."
port=${1:?coordinator port}; from=${2:?release to upgrade from}; current=${3:?current version}
db=tally_citus_upgrade
url="postgres://postgres@127.0.0.1:$port/$db"
fail() { echo "citus upgrade: $*" >&2; exit 1; }
q() { PGOPTIONS="-c client_min_messages=warning" psql -X -q -At -v ON_ERROR_STOP=1 "$url" -c "$1"; }
scripts/citus_db.sh "$port" "$db"
# The fill's role (roles belong to the whole cluster) is granted privileges in the
# in-place test's database, which goes first on every node.
for p in $((port + 2)) $((port + 1)) "$port"; do
    PGOPTIONS="-c client_min_messages=warning" psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -U postgres -p "$p" -d postgres \
        -c "DROP DATABASE IF EXISTS tally_inplace WITH (FORCE)"
done
q "DROP ROLE IF EXISTS up_writer" >/dev/null
q "CREATE EXTENSION tally VERSION '$from'" >/dev/null
PGOPTIONS="-c client_min_messages=warning" psql -X -q -v ON_ERROR_STOP=1 "$url" -f tests/upgrade/fill.sql >/dev/null
q "SELECT tally.distribute(4)" >/dev/null

source tests/upgrade/state.sh
documents="SELECT user_id || ' ' || document::text FROM tally.current_usage_document ORDER BY user_id"
versions="SELECT string_agg(result, ' ') FROM run_command_on_all_nodes(\$\$SELECT extversion FROM pg_extension WHERE extname = 'tally'\$\$)"
members="SELECT count(*) FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid
          WHERE e.extname = 'tally' AND d.deptype = 'e' AND d.classid = 'pg_class'::regclass"
drift_before=$(q "$verify_rows"); counters_before=$(q "$counters"); documents_before=$(q "$documents")
[ -n "$drift_before" ] || fail "the fill made no drift"
[ "$(echo "$documents_before" | wc -l)" -ge 3 ] || fail "the fill made fewer than 3 usage documents"
[ "$(q "$versions")" = "$from $from $from" ] || fail "the nodes are not all at $from: $(q "$versions")"
[ "$(q "$members")" = 0 ] || fail "tables or views are still extension members after tally.distribute()"

q "ALTER EXTENSION tally UPDATE" >/dev/null
[ "$(q "$versions")" = "$current $current $current" ] || fail "the nodes are not all at $current: $(q "$versions")"
[ "$(q "$members")" = 0 ] || fail "the update made tables or views extension members again"
views="SELECT string_agg(result, ' ') FROM run_command_on_all_nodes(\$\$SELECT pg_get_viewdef('tally.current_usage_document') LIKE '%build_usage_document%' AND to_regclass('tally.learning_plan_lists') IS NOT NULL\$\$)"
[ "$(q "$views")" = "t t t" ] || fail "not every node has the new views: $(q "$views")"
[ "$(q "$verify_rows")" = "$drift_before" ] || fail "verify() changed across the update"
[ "$(q "$counters")" = "$counters_before" ] || fail "counters changed across the update"
[ "$(q "$documents")" = "$documents_before" ] || fail "usage documents changed across the update:
$(diff <(echo "$documents_before") <(q "$documents") || true)"

# Writes are counted, and record_session answers with the document the view reads.
user=$(q "SELECT user_id FROM tally.subscriptions s JOIN tally.plans p USING (plan_id) WHERE p.practice_sessions_limit IS NULL ORDER BY 1 LIMIT 1")
[ -n "$user" ] || fail "the fill has no unlimited subscriber"
before=$(q "SELECT coalesce(sum(practice_sessions_used), 0) FROM tally.usage WHERE user_id = '$user'")
same=$(q "SELECT (r->'usage')::text = tally.usage_document('$user')::text FROM tally.record_session('$user', 'practice') AS r")
[ "$same" = t ] || fail "record_session's usage differs from tally.usage_document after the update"
after=$(q "SELECT coalesce(sum(practice_sessions_used), 0) FROM tally.usage WHERE user_id = '$user'")
[ "$after" = $((before + 1)) ] || fail "a session recorded after the update counted $((after - before)), not 1"
# The fill's role has privileges here: the database goes, so that the next run of
# the in-place test can drop the role.
for p in "$port" $((port + 1)) $((port + 2)); do
    PGOPTIONS="-c client_min_messages=warning" psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -U postgres -p "$p" -d postgres \
        -c "DROP DATABASE IF EXISTS $db WITH (FORCE)"
done
echo "citus upgrade: $from to $current on a distributed database; every node updated, counters, verify() and usage documents unchanged, writes counted"
