#!/usr/bin/env bash
# Plans and kinds changed by logical replication reach a subscriber's connections
# (`make logical-test`). A subscriber database takes tally.plans and
# tally.session_kinds from a publisher and writes sessions of its own. One of its
# connections counts a session (keeping the plan and kinds it read, see
# extension/src/store/catalog_cache.rs); the publisher then lowers the plan's limit and maps a
# kind that counted nothing to assessments. Once replicated, the same connection's
# next practice session is refused at the new limit, and its next session of the
# remapped kind counts as an assessment: the apply worker fires tally's row-level
# forget triggers, where the statement-level ones never fire.
#   tests/logical_subscriber.sh PORT DIR
set -euo pipefail
cd "$(dirname "$0")/.."
port=${1:?port}; dir=${2:?cluster directory}
fail() { echo "logical subscriber test: $*" >&2; exit 1; }
scripts/cluster.sh stop "$dir"
rm -rf "$dir"
scripts/cluster.sh start "$dir" "$port" "wal_level = logical" "fsync = off"
trap 'scripts/cluster.sh stop "$dir"' EXIT
base=postgres://postgres@127.0.0.1:$port
q() { psql -X -q -v ON_ERROR_STOP=1 -At "$@"; }

for db in tally_pub tally_sub; do
    q "$base/postgres" -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
    # The same plan and kinds on both sides; replication carries later changes.
    q "$base/$db" -c "CREATE EXTENSION tally" \
        -c "INSERT INTO tally.plans VALUES ('lr_plan', 'Replicated', 2, 5, '1 month')" \
        -c "INSERT INTO tally.session_kinds VALUES ('speaking', 'none')"
done
q "$base/tally_pub" -c "CREATE PUBLICATION tally_reference FOR TABLE tally.plans, tally.session_kinds" \
    -c "SELECT pg_create_logical_replication_slot('tally_sub', 'pgoutput')" >/dev/null
# A subscription within one cluster needs its slot made beforehand.
q "$base/tally_sub" -c "CREATE SUBSCRIPTION tally_sub CONNECTION 'host=127.0.0.1 port=$port dbname=tally_pub user=postgres'
                          PUBLICATION tally_reference WITH (create_slot = false, slot_name = 'tally_sub', copy_data = false)"
q "$base/tally_sub" -c "INSERT INTO tally.subscriptions (user_id, plan_id) VALUES ('lr_user', 'lr_plan')"

# One connection of the subscriber, across the publisher's change.
ready=$dir/ready; rm -f "$ready"
psql -X -q -At -v ON_ERROR_STOP=0 "$base/tally_sub" > "$dir/writer.out" 2> "$dir/writer.err" <<SQL &
\set VERBOSITY sqlstate
INSERT INTO tally.sessions (user_id, kind) VALUES ('lr_user', 'practice');
INSERT INTO tally.sessions (user_id, kind, status) VALUES ('lr_user', 'speaking', 'started');
\! touch $ready
DO \$\$
BEGIN
    FOR i IN 1..300 LOOP
        EXIT WHEN (SELECT practice_sessions_limit FROM tally.plans WHERE plan_id = 'lr_plan') = 1
              AND (SELECT counter FROM tally.session_kinds WHERE kind = 'speaking') = 'assessments';
        PERFORM pg_sleep(0.1);
    END LOOP;
END
\$\$;
SELECT 'replicated: ' || (SELECT practice_sessions_limit FROM tally.plans WHERE plan_id = 'lr_plan');
INSERT INTO tally.sessions (user_id, kind) VALUES ('lr_user', 'practice');
INSERT INTO tally.sessions (user_id, kind) VALUES ('lr_user', 'speaking');
SQL
writer=$!
for _ in $(seq 1 100); do [ -e "$ready" ] && break; sleep 0.1; done
[ -e "$ready" ] || fail "the subscriber's writer did not start"
q "$base/tally_pub" -c "UPDATE tally.plans SET practice_sessions_limit = 1 WHERE plan_id = 'lr_plan'" \
    -c "UPDATE tally.session_kinds SET counter = 'assessments' WHERE kind = 'speaking'"
wait "$writer" || true

grep -qx 'replicated: 1' "$dir/writer.out" || { cat "$dir/writer.err" >&2; fail "the change did not replicate within 30 s"; }
# Exactly one error: the practice session past the replicated limit.
[ "$(cat "$dir/writer.err")" = "ERROR:  TL001" ] \
    || { cat "$dir/writer.err" >&2; fail "expected exactly the quota error (TL001) at the replicated limit"; }
used=$(q "$base/tally_sub" -c "SELECT practice_sessions_used || '/' || assessments_used FROM tally.current_usage WHERE user_id = 'lr_user'")
[ "$used" = "1/1" ] || fail "usage is $used, expected 1 practice session and 1 assessment (the remapped kind)"
drift=$(q "$base/tally_sub" -c "SELECT count(*) FROM tally.verify()")
[ "$drift" = 0 ] || fail "tally.verify() reports $drift counters on the subscriber"
q "$base/tally_sub" -c "DROP SUBSCRIPTION tally_sub" >/dev/null
echo "logical subscriber test: passed"
