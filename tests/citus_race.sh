#!/usr/bin/env bash
# The limit race on a distributed tally (make test-citus): 8 connections insert 50
# sessions each, one statement per transaction, for one user whose plan allows 50 per
# period. Exactly 50 commit, the counter says 50, and tally.verify() finds nothing.
#   tests/citus_race.sh PORT
set -euo pipefail
cd "$(dirname "$0")/.."
port=${1:?coordinator port}
db=tally_race
url="postgres://postgres@127.0.0.1:$port/$db"
fail() { echo "citus race: $*" >&2; exit 1; }
scripts/citus_db.sh "$port" "$db"
psql -X -q -v ON_ERROR_STOP=1 "$url" >/dev/null <<'SQL'
SET client_min_messages = warning;
CREATE EXTENSION tally;
SELECT tally.distribute();
INSERT INTO tally.plans (plan_id, display_name, practice_sessions_limit, assessments_limit) VALUES ('fifty', 'Fifty', 50, 2);
INSERT INTO tally.subscriptions (user_id, plan_id) VALUES ('racer', 'fifty');
SQL
insert="INSERT INTO tally.sessions (user_id, kind) VALUES ('racer', 'practice');"
for client in $(seq 8); do
    for _ in $(seq 50); do echo "$insert"; done |
        PGOPTIONS="-c statement_timeout=120s" psql -X -q "$url" >"target/citus-race-$client.log" 2>&1 &
done
wait
refused=$(cat target/citus-race-*.log | grep -c "quota exceeded" || true)
others=$(cat target/citus-race-*.log | grep "ERROR" | grep -vc "quota exceeded" || true)
[ "$others" = 0 ] || fail "errors other than the quota: $(grep -h ERROR target/citus-race-*.log | grep -v 'quota exceeded' | head -3)"
count() { psql -X -At "$url" -c "$1"; }
sessions=$(count "SELECT count(*) FROM tally.sessions WHERE user_id = 'racer'")
used=$(count "SELECT sum(practice_sessions_used) FROM tally.usage WHERE user_id = 'racer'")
drift=$(count "SELECT count(*) FROM tally.verify()")
[ "$sessions" = 50 ] || fail "$sessions sessions committed, not 50"
[ "$used" = 50 ] || fail "the counter says $used, not 50"
[ "$refused" = 350 ] || fail "$refused inserts refused with TL001, not 350"
[ "$drift" = 0 ] || fail "tally.verify() reports $drift counters"
echo "citus race: 400 inserts from 8 connections at a limit of 50: 50 committed, 350 refused, counter 50, no drift"

# Limits off for an import reach the workers with SET LOCAL in a transaction; a plain
# SET would stay on the coordinator, and is refused.
refusal=$(psql -X -q -At "$url" -c "SET tally.enforce_limits = off" 2>&1 || true)
case "$refusal" in
    *"would reach only the coordinator"*) ;;
    *) fail "a plain SET of tally.enforce_limits was not refused: $refusal" ;;
esac
psql -X -q -v ON_ERROR_STOP=1 "$url" >/dev/null <<'SQL'
BEGIN;
SET LOCAL tally.enforce_limits = off;
INSERT INTO tally.sessions (user_id, kind) SELECT 'racer', 'practice' FROM generate_series(1, 5);
COMMIT;
SQL
[ "$(count "SELECT sum(practice_sessions_used) FROM tally.usage WHERE user_id = 'racer'")" = 55 ] \
    || fail "an import with SET LOCAL tally.enforce_limits = off did not count 5 past the limit"
[ "$(count "SELECT count(*) FROM tally.verify()")" = 0 ] || fail "drift after the import"
echo "citus race: a plain SET of tally.enforce_limits is refused; SET LOCAL imports past the limit, counted"

# A role without the TRUNCATE privilege is refused before anything is locked: Citus
# locks a distributed table on every node before PostgreSQL's privilege check, so
# without tally's earlier check the TRUNCATE below would wait for the open insert
# (and end in lock_timeout's 55P03, or stall every writer behind it).
psql -X -q -v ON_ERROR_STOP=1 "$url" >/dev/null <<'SQL'
SET client_min_messages = warning;
DROP ROLE IF EXISTS race_writer;
CREATE ROLE race_writer LOGIN;
GRANT USAGE ON SCHEMA tally TO race_writer;
GRANT SELECT ON ALL TABLES IN SCHEMA tally TO race_writer;
GRANT INSERT, UPDATE, DELETE ON tally.sessions TO race_writer;
SQL
psql -X -q "$url" -c "BEGIN" -c "SET LOCAL tally.enforce_limits = off" \
    -c "INSERT INTO tally.sessions (user_id, kind) VALUES ('racer', 'practice')" -c "SELECT pg_sleep(4)" -c "COMMIT" >/dev/null &
sleep 1
refusal=$(PGOPTIONS="-c lock_timeout=2s" psql -X -q "postgres://race_writer@127.0.0.1:$port/$db" \
    -v VERBOSITY=verbose -c "TRUNCATE tally.sessions" 2>&1 || true)
wait
case "$refusal" in
    *"42501"*"permission denied for table sessions"*) ;;
    *) fail "an unprivileged TRUNCATE was not refused at once with 42501: $refusal" ;;
esac
echo "citus race: an unprivileged TRUNCATE during an open write is refused at once (42501)"
