#!/usr/bin/env bash
# The in-place upgrade test (`make upgrade-test`): a database created at each earlier
# release and filled with data (tests/upgrade/fill.sql), then ALTER EXTENSION tally
# UPDATE. Afterwards its counters and tally.verify() are what they were (the drift made
# on purpose and nothing else), writers keep working, and its schema is the one a
# fresh install of the current version creates (tests/upgrade/schema_fingerprint.sql).
# The library serves the last RELEASE before the update; at every other release it
# refuses tally's functions with TL010, naming the update, and writes nothing.
#   tests/upgrade.sh ADMIN_URL CURRENT_VERSION RELEASE...
set -euo pipefail
cd "$(dirname "$0")/.."
admin=${1:?admin url}; current=${2:?current version}; shift 2
base=${admin%/*}
psql_at() { psql -X -q -v ON_ERROR_STOP=1 -At "$@"; }
fail() { echo "upgrade test: $*" >&2; exit 1; }
fresh() { psql_at "$admin" -c "DROP DATABASE IF EXISTS $1 WITH (FORCE)" -c "CREATE DATABASE $1" >/dev/null; }
mkdir -p target/upgrade
# A run stopped half-way leaves its databases and the fill's role: they go first.
for db in $(psql_at "$admin" -c "SELECT datname FROM pg_database WHERE datname LIKE 'tally\_upgrade\_%'"); do
    psql_at "$admin" -c "DROP DATABASE $db WITH (FORCE)" >/dev/null
done
psql_at "$admin" -c "DROP ROLE IF EXISTS up_writer" >/dev/null

fresh tally_upgrade_fresh
psql_at "$base/tally_upgrade_fresh" -c "CREATE EXTENSION tally" >/dev/null
psql_at "$base/tally_upgrade_fresh" -f tests/upgrade/schema_fingerprint.sql > target/upgrade/fresh.txt

source tests/upgrade/state.sh
previous=${!#}
# The drift the fill makes, as verify() reports it at the current release: what every
# updated database must report.
fresh tally_upgrade_expected
psql_at "$base/tally_upgrade_expected" -c "CREATE EXTENSION tally" -f tests/upgrade/fill.sql >/dev/null
expected_drift=$(psql_at "$base/tally_upgrade_expected" -c "$verify_rows")
[ -n "$expected_drift" ] || fail "the fill made no drift"
psql_at "$admin" -c "DROP DATABASE tally_upgrade_expected" -c "DROP ROLE up_writer" >/dev/null

# What a connection knows of the release is forgotten when pg_extension changes: a
# connection served at the current release is refused once its database is at an
# older one.
fresh tally_upgrade_forget
forget=$(psql -X -q -At -v VERBOSITY=verbose "$base/tally_upgrade_forget" 2>&1 <<SQL
CREATE EXTENSION tally;
INSERT INTO tally.plans (plan_id, display_name) VALUES ('p', 'P');
INSERT INTO tally.subscriptions (user_id, plan_id) VALUES ('u', 'p');
INSERT INTO tally.sessions (user_id, kind) VALUES ('u', 'practice');
SELECT 'served ' || count(*) FROM tally.sessions;
DROP EXTENSION tally;
CREATE EXTENSION tally VERSION '$1';
INSERT INTO tally.plans (plan_id, display_name) VALUES ('p', 'P');
SET session_replication_role = replica;
INSERT INTO tally.subscriptions (user_id, plan_id) VALUES ('u', 'p');
RESET session_replication_role;
INSERT INTO tally.sessions (user_id, kind) VALUES ('u', 'practice');
SELECT 'left ' || count(*) FROM tally.sessions;
SQL
)
case $forget in
    *"served 1"*"ERROR:  TL010:"*"release $1"*"left 0"*) ;;
    *) fail "a connection served before the database went back to $1 was not refused after: $forget" ;;
esac
psql_at "$admin" -c "DROP DATABASE tally_upgrade_forget" >/dev/null
# Counters that disagree with a recount by calendar month, made without tally's code.
recount="WITH actual AS (
    SELECT x.user_id, date_trunc('month', x.started_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS period_start,
           count(*) FILTER (WHERE k.counter = 'practice_sessions') AS practice,
           count(*) FILTER (WHERE k.counter = 'assessments') AS assessments
      FROM tally.sessions x JOIN tally.session_kinds k USING (kind) WHERE x.status = 'completed' GROUP BY 1, 2)
SELECT coalesce(u.user_id, a.user_id) FROM tally.usage u FULL JOIN actual a USING (user_id, period_start)
 WHERE coalesce(u.practice_sessions_used, 0) <> coalesce(a.practice, 0) OR coalesce(u.assessments_used, 0) <> coalesce(a.assessments, 0)
UNION ALL
SELECT lp.learning_plan_id::text FROM tally.learning_plans lp
 WHERE lp.completed_sessions <> (SELECT count(*) FROM tally.sessions x WHERE x.learning_plan_id = lp.learning_plan_id AND x.status = 'completed')
ORDER BY 1"

for release in "$@"; do
    db=tally_upgrade_from_${release//./_}
    url="$base/$db"
    fresh "$db"
    psql_at "$admin" -c "DROP ROLE IF EXISTS up_writer" >/dev/null
    psql_at "$url" -c "CREATE EXTENSION tally VERSION '$release'" >/dev/null
    psql_at "$url" -f tests/upgrade/schema_fingerprint.sql > "target/upgrade/$release.txt"
    # The comparison below must see what an upgrade changes, or it proves nothing.
    if cmp -s "target/upgrade/$release.txt" target/upgrade/fresh.txt; then
        fail "release $release and $current print the same schema fingerprint"
    fi
    psql_at "$url" -f tests/upgrade/fill.sql >/dev/null
    if [ "$release" = "$previous" ]; then
        # The release before this library's is served: the API's call answers with the
        # document the release's view reads, for a user with a learning plan, and
        # verify() sees the drift made.
        same=$(psql_at "$url" -c "CREATE TEMP TABLE recorded AS SELECT tally.record_session('up_kamile', 'learning_plan',
                                         learning_plan_id => '0b000000-0000-4000-8000-000000000001') AS r" \
                              -c "SELECT (r->'usage')::text = tally.usage_document('up_kamile')::text FROM recorded")
        [ "$same" = t ] || fail "record_session at $release answers with another usage document than the view's"
        [ "$(psql_at "$url" -c "$verify_rows")" = "$expected_drift" ] || fail "verify() at $release reports other drift than the fill made"
    else
        # Any older release is refused, with the update named, and nothing is written.
        sessions_before=$(psql_at "$url" -c "SELECT count(*) FROM tally.sessions")
        for statement in "INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('up_ruta', 'practice', '2026-04-21 10:00+00')" \
                         "UPDATE tally.sessions SET status = 'completed' WHERE user_id = 'up_jonas' AND status = 'started'" \
                         "SET ROLE up_writer; INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('up_ruta', 'practice', '2026-04-22 10:00+00')" \
                         "SELECT * FROM tally.verify()" "SELECT tally.repair()"; do
            refusal=$(psql -X -q -At -v ON_ERROR_STOP=1 -v VERBOSITY=verbose "$url" -c "$statement" 2>&1) \
                && fail "at $release, this library served: $statement"
            case $refusal in
                *"ERROR:  TL010:"*"release $release"*"ALTER EXTENSION tally UPDATE"*) ;;
                *) fail "at $release, '$statement' was not refused with TL010 naming the update: $refusal" ;;
            esac
        done
        [ "$(psql_at "$url" -c "SELECT count(*) FROM tally.sessions")" = "$sessions_before" ] \
            || fail "a refused write at $release left sessions"
        # Its tables and views stay readable, by the writer role as by an analyst.
        [ "$(psql_at "$url" -c "SET ROLE up_writer" -c "SELECT count(*) FROM tally.current_usage WHERE user_id LIKE 'up_%'")" = 4 ] \
            || fail "tally.current_usage is not readable at $release"
    fi
    counters_before=$(psql_at "$url" -c "$counters")

    psql_at "$url" -c "ALTER EXTENSION tally UPDATE" >/dev/null
    [ "$(psql_at "$url" -c "SELECT extversion FROM pg_extension WHERE extname = 'tally'")" = "$current" ] \
        || fail "$release did not update to $current"
    [ "$(psql_at "$url" -c "$verify_rows")" = "$expected_drift" ] || fail "verify() after the update from $release reports other drift than the fill made"
    [ "$(psql_at "$url" -c "$counters")" = "$counters_before" ] || fail "counters changed across the update from $release"
    # The independent recount disagrees exactly where the drift was made.
    [ "$(psql_at "$url" -c "$recount" | sort -u)" = "$(psql_at "$url" -c "SELECT DISTINCT id FROM tally.verify() ORDER BY 1")" ] \
        || fail "the recount disagrees with more than the drift made (from $release)"

    psql_at "$url" -f tests/upgrade/schema_fingerprint.sql > "target/upgrade/$release-updated.txt"
    if ! diff -u target/upgrade/fresh.txt "target/upgrade/$release-updated.txt" > "target/upgrade/$release.diff"; then
        cat "target/upgrade/$release.diff" >&2
        fail "a database updated from $release differs from a fresh $current (above: - fresh, + updated)"
    fi

    # The writer role granted at the old release keeps working, and repair fixes
    # exactly the drift.
    psql_at "$url" -c "SET ROLE up_writer" \
        -c "INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('up_ruta', 'practice', '2026-04-20 10:00+00')" >/dev/null
    fixed=$(psql_at "$url" -c "SELECT tally.repair()")
    [ "$fixed" = "$(printf '%s\n' "$expected_drift" | wc -l)" ] || fail "repair fixed $fixed counters, not the drift made"
    [ -z "$(psql_at "$url" -c "$verify_rows")" ] || fail "drift left after repair (from $release)"
    [ -z "$(psql_at "$url" -c "$recount")" ] || fail "counters disagree with a recount after repair (from $release)"
    psql_at "$url" -c "REASSIGN OWNED BY up_writer TO postgres" -c "DROP OWNED BY up_writer" -c "DROP ROLE up_writer" >/dev/null
    echo "upgrade from $release to $current: counters, drift and schema as expected"
done
