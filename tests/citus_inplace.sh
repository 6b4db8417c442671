#!/usr/bin/env bash
# Moving onto Citus in place (make test-citus): a database filled on the coordinator
# at the current release (tests/upgrade/fill.sql, which also leaves drift made on
# purpose), then tally.distribute(). Every counter, learning plan and tally.verify()
# row is what it was, and writes go on being counted.
#   tests/citus_inplace.sh PORT
set -euo pipefail
cd "$(dirname "$0")/.."
port=${1:?coordinator port}
db=tally_inplace
url="postgres://postgres@127.0.0.1:$port/$db"
fail() { echo "citus in-place: $*" >&2; exit 1; }
q() { psql -X -q -At -v ON_ERROR_STOP=1 "$url" -c "$1"; }
scripts/citus_db.sh "$port" "$db"
# The fill's role, left by an earlier run (roles belong to the whole cluster).
q "DROP ROLE IF EXISTS up_writer" >/dev/null
q "CREATE EXTENSION tally" >/dev/null
PGOPTIONS="-c client_min_messages=warning" psql -X -q -v ON_ERROR_STOP=1 "$url" -f tests/upgrade/fill.sql >/dev/null
source tests/upgrade/state.sh
rows="SELECT (SELECT count(*) FROM tally.sessions) || ' ' || (SELECT count(*) FROM tally.subscriptions) || ' ' || (SELECT count(*) FROM tally.adjustments)"
drift_before=$(q "$verify_rows"); counters_before=$(q "$counters"); rows_before=$(q "$rows")
[ -n "$drift_before" ] || fail "the fill made no drift"
[ -n "$counters_before" ] || fail "the fill made no counters"

PGOPTIONS="-c client_min_messages=warning" q "SELECT tally.distribute(4)" >/dev/null
[ "$(q "SELECT count(*) FROM pg_dist_partition WHERE logicalrelid::text LIKE 'tally.%'")" = 7 ] || fail "not every table is distributed"
[ "$(q "$verify_rows")" = "$drift_before" ] || fail "verify() changed: $(q "$verify_rows")"
[ "$(q "$counters")" = "$counters_before" ] || fail "counters changed"
[ "$(q "$rows")" = "$rows_before" ] || fail "rows changed: $(q "$rows"), was $rows_before"
# Still counted afterwards, on the distributed tables.
user=$(q "SELECT user_id FROM tally.subscriptions s JOIN tally.plans p USING (plan_id) WHERE p.practice_sessions_limit IS NULL ORDER BY 1 LIMIT 1")
[ -n "$user" ] || fail "the fill has no unlimited subscriber"
before=$(q "SELECT coalesce(sum(practice_sessions_used), 0) FROM tally.usage WHERE user_id = '$user'")
q "INSERT INTO tally.sessions (user_id, kind) VALUES ('$user', 'practice')" >/dev/null
after=$(q "SELECT coalesce(sum(practice_sessions_used), 0) FROM tally.usage WHERE user_id = '$user'")
[ "$after" = $((before + 1)) ] || fail "an insert after distributing counted $((after - before)), not 1"
echo "citus in-place: distributed a filled database; counters, learning plans and verify() unchanged ($(echo "$drift_before" | wc -l) drift rows kept), new writes counted"
