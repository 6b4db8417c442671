#!/usr/bin/env bash
# A distributed tally that grows, shrinks and loses nodes under load (make test-citus).
#   tests/citus_grow.sh PORT CLUSTER_DIR
# The cluster of scripts/citus_cluster.sh runs on PORT (coordinator), PORT+1 and
# PORT+2; this test starts a fourth node on PORT+3 with Citus and tally's library and
# nothing else, then, with writes running from four connections all along:
#   1. citus_add_node of that node, citus_rebalance_start/wait onto it;
#   2. the limit race (8 x 50 at a limit of 50) for a user whose shards moved there;
#   3. citus_drain_node and citus_remove_node of it as docs/citus.md says (the
#      drain's leftover placements dropped before the removal), and the race again;
#      then three more rounds of add, rebalance, drain and remove, each followed by
#      moving the drained shards again; then the stuck state of a node removed with
#      drops still pending (no move of its shards can start) and the documented way
#      out of it;
#   4. a node an operator had already run CREATE EXTENSION tally on joins too, and
#      one whose own tally tables hold data is refused with a message;
#   5. kill -9 of a worker, then of the coordinator, restart, 2PC recovery.
# After each step: no error but the expected ones in the writers' logs, counters equal
# a recount from tally.sessions, tally.verify() empty, no prepared transaction left,
# and amcheck (B-tree indexes with heapallindexed, and the heap) clean on every node.
# Every wait has a bound: a rebalance, drain or move that outlasts it fails the test
# with the rebalance job's tasks and Citus's pending cleanup records.
set -euo pipefail
cd "$(dirname "$0")/.."
port=${1:?coordinator port}
dir=$(realpath -m "${2:?cluster directory}")
new_port=$((port + 3))
db=tally_grow
url="postgres://postgres@127.0.0.1:$port/$db"
logs=target/citus-grow
rm -rf "$logs" && mkdir -p "$logs"
fail() { echo "citus grow: $*" >&2; exit 1; }
say() { echo "citus grow: $*"; }
q() { psql -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -U postgres -p "$1" -d "$db" "${@:2}"; }
nodes() { echo "$port $((port + 1)) $((port + 2))" "$@"; }

scripts/citus_cluster.sh node "$dir" worker3 "$new_port"
fresh_node_db() {
    psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -U postgres -p "$new_port" -d postgres \
        -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db" >/dev/null
    q "$new_port" -c "SET client_min_messages = warning" -c "CREATE EXTENSION citus" "$@" >/dev/null
}
fresh_node_db
scripts/citus_db.sh "$port" "$db"

# 200 users on a plan their load never reaches, 20,000 sessions, then distributed.
q "$port" >/dev/null <<'SQL'
SET client_min_messages = warning;
CREATE EXTENSION tally;
SELECT tally.distribute();
INSERT INTO tally.plans (plan_id, display_name, practice_sessions_limit, assessments_limit)
VALUES ('roomy', 'Roomy', 1000000, 1000000), ('fifty', 'Fifty', 50, 2);
INSERT INTO tally.subscriptions (user_id, plan_id) SELECT 'u' || i, 'roomy' FROM generate_series(1, 200) i;
INSERT INTO tally.sessions (user_id, kind, status)
SELECT 'u' || (i % 200 + 1), (ARRAY['practice', 'assessment', 'learning_plan'])[i % 3 + 1],
       (ARRAY['completed', 'completed', 'started', 'abandoned'])[i % 4 + 1]
  FROM generate_series(1, 20000) i;
SQL

# The writers: single-row inserts, started sessions completed, a multi-row insert
# across users (several shards: two-phase commit), a COPY, deletes. Each round is one
# psql script that goes on after an error and logs it. They stop when the stop file
# appears, and after 600 rounds at most; a statement that waits past 120 s is
# cancelled, and its error fails the step.
load_round() {
    local client=$1 round=$2 u1 u2 u3
    # Each writer has its own 50 users: statements of several users lock their usage
    # rows shard by shard, in no order across shards, so two writers sharing users
    # would deadlock each other (40P01) whatever the cluster does.
    u1="u$(( (round * 11 % 50) * 4 + client ))"
    u2="u$(( (round * 7 % 50) * 4 + client ))"
    u3="u$(( (round * 3 % 50) * 4 + client ))"
    cat <<SQL
INSERT INTO tally.sessions (user_id, kind) VALUES ('$u1', 'practice');
INSERT INTO tally.sessions (user_id, kind, status) VALUES ('$u2', 'assessment', 'started');
UPDATE tally.sessions SET status = 'completed' WHERE user_id = '$u2' AND status = 'started'
   AND session_id = (SELECT session_id FROM tally.sessions WHERE user_id = '$u2' AND status = 'started' LIMIT 1);
INSERT INTO tally.sessions (user_id, kind) VALUES ('$u1', 'learning_plan'), ('$u2', 'practice'), ('$u3', 'assessment');
COPY tally.sessions (user_id, kind) FROM STDIN;
$u3	practice
$u1	assessment
\.
DELETE FROM tally.sessions WHERE user_id = '$u3'
   AND session_id = (SELECT session_id FROM tally.sessions WHERE user_id = '$u3' AND status = 'completed' LIMIT 1);
SQL
}
start_load() {
    rm -f "$logs/stop"
    for client in 1 2 3 4; do
        (
            for round in $(seq 600); do
                [ -e "$logs/stop" ] && break
                load_round "$client" "$round" | PGOPTIONS="-c statement_timeout=120s" psql -X -q -h 127.0.0.1 -U postgres -p "$port" -d "$db" \
                    >>"$logs/$1-$client.log" 2>&1 || sleep 0.2
                echo "round $round" >>"$logs/$1-$client.rounds"
            done
        ) &
    done
}
stop_load() {
    touch "$logs/stop"
    wait
    local rounds
    rounds=$(cat "$logs/$1"-*.rounds 2>/dev/null | wc -l)
    [ "$rounds" -ge 4 ] || fail "$1: the writers ran only $rounds rounds"
    say "$1: the writers ran $rounds rounds of 7 statements"
    [ "${2:-}" = any-errors ] && return 0
    # The one error Citus may give a writer while shards move: at a move's cleanup,
    # the old placements are dropped in an order that can close a lock cycle with a
    # statement still writing there (its foreign-key check and counting read the
    # co-located subscriptions shard), and the distributed deadlock detector
    # cancels the statement (40P01, which the API retries). Counted, not hidden.
    local cancelled
    cancelled=$(cat "$logs/$1"-*.log | grep -c "involved in a distributed deadlock" || true)
    if grep -h "ERROR\|FATAL" "$logs/$1"-*.log | grep -v "involved in a distributed deadlock" >/dev/null 2>&1; then
        fail "$1: the writers got errors: $(grep -h 'ERROR\|FATAL' "$logs/$1"-*.log | sort | uniq -c | head -5)"
    fi
    [ "$cancelled" -le 3 ] || fail "$1: $cancelled statements cancelled as distributed deadlocks"
    say "$1: no errors but $cancelled statements cancelled by Citus's distributed deadlock detector"
}

# Counters against a recount from tally.sessions, verify(), prepared transactions and
# amcheck on every node.
check() {
    local what=$1 mismatched drift prepared p
    shift
    mismatched=$(q "$port" <<'SQL'
WITH actual AS (
    SELECT s.user_id, tally.period_start_for(sub.period_anchor, p.period, s.started_at) AS period_start,
           count(*) FILTER (WHERE k.counter = 'practice_sessions') AS practice,
           count(*) FILTER (WHERE k.counter = 'assessments') AS assessments
      FROM tally.sessions s
      JOIN tally.subscriptions sub ON sub.user_id = s.user_id
      JOIN tally.plans p ON p.plan_id = sub.plan_id
      JOIN tally.session_kinds k ON k.kind = s.kind
     WHERE s.status = 'completed'
     GROUP BY 1, 2)
SELECT count(*)
  FROM actual a FULL JOIN tally.usage u ON u.user_id = a.user_id AND u.period_start = a.period_start
 WHERE coalesce(a.practice, 0) <> coalesce(u.practice_sessions_used, 0)
    OR coalesce(a.assessments, 0) <> coalesce(u.assessments_used, 0);
SQL
)
    [ "$mismatched" = 0 ] || fail "$what: $mismatched usage rows differ from a recount of tally.sessions"
    drift=$(q "$port" -c "SELECT count(*) FROM tally.verify()")
    [ "$drift" = 0 ] || fail "$what: tally.verify() reports $drift counters"
    for p in $(nodes "$@"); do
        prepared=$(q "$p" -c "SELECT count(*) FROM pg_prepared_xacts")
        [ "$prepared" = 0 ] || fail "$what: $prepared prepared transactions left on port $p"
        q "$p" >/dev/null <<'SQL' || fail "$what: amcheck failed on port $p"
SET client_min_messages = warning;
SET citus.enable_ddl_propagation = off;
CREATE EXTENSION IF NOT EXISTS amcheck;
SELECT bt_index_check(c.oid, true)
  FROM pg_class c JOIN pg_am am ON am.oid = c.relam
 WHERE c.relnamespace = 'tally'::regnamespace AND c.relkind = 'i' AND am.amname = 'btree';
DO $$
DECLARE bad bigint;
BEGIN
    SELECT count(*) INTO bad
      FROM pg_class c, LATERAL verify_heapam(c.oid)
     WHERE c.relnamespace = 'tally'::regnamespace AND c.relkind = 'r';
    IF bad > 0 THEN RAISE EXCEPTION '% heap pages fail verify_heapam', bad; END IF;
END $$;
SQL
    done
    say "$what: counters equal a recount, verify() empty, no prepared transactions, amcheck clean on every node"
}

# The limit race for one user of the 'fifty' plan whose shards sit on the node at
# $1 (any node when empty): exactly 50 of 400 concurrent inserts commit.
race() {
    local what=$1 on=${2:-} user="" i
    for i in $(seq 300); do
        local candidate="racer-$what-$i"
        if [ -z "$on" ] || [ "$(q "$port" -c "SELECT nodeport FROM pg_dist_shard_placement
                WHERE shardid = get_shard_id_for_distribution_column('tally.subscriptions', '$candidate')")" = "$on" ]; then
            user=$candidate
            break
        fi
    done
    [ -n "$user" ] || fail "$what: no user id among 300 hashes to the node at port $on"
    q "$port" -c "INSERT INTO tally.subscriptions (user_id, plan_id) VALUES ('$user', 'fifty')" >/dev/null
    for client in $(seq 8); do
        for _ in $(seq 50); do echo "INSERT INTO tally.sessions (user_id, kind) VALUES ('$user', 'practice');"; done |
            PGOPTIONS="-c statement_timeout=120s" psql -X -q -h 127.0.0.1 -U postgres -p "$port" -d "$db" >"$logs/race-$what-$client.log" 2>&1 &
    done
    wait
    local refused others used
    refused=$(cat "$logs/race-$what"-*.log | grep -c "quota exceeded" || true)
    others=$(cat "$logs/race-$what"-*.log | grep "ERROR" | grep -vc "quota exceeded" || true)
    [ "$others" = 0 ] || fail "$what: race errors other than the quota: $(grep -h ERROR "$logs/race-$what"-*.log | grep -v 'quota exceeded' | head -3)"
    used=$(q "$port" -c "SELECT sum(practice_sessions_used) FROM tally.usage WHERE user_id = '$user'")
    [ "$used" = 50 ] && [ "$refused" = 350 ] || fail "$what: the race for $user committed $used of 400 ($refused refused), not 50"
    say "$what: 8 x 50 inserts at a limit of 50 for $user${on:+ (shards on port $on)}: 50 committed, 350 refused"
}

placements_on() {
    q "$port" -c "SELECT count(DISTINCT s.logicalrelid) FROM pg_dist_shard s JOIN pg_dist_shard_placement p USING (shardid)
                   WHERE p.nodeport = $1 AND s.logicalrelid::text LIKE 'tally.%'"
}

# How long a rebalance, a drain or one shard move may take before the test gives up
# (seconds). Each takes a few seconds here; the bound only stops a wait that would
# never end, and says why.
MOVE_BOUND=${TALLY_CITUS_MOVE_BOUND:-300}
# Citus's view of what is still moving or waiting to be dropped, for a failure message.
citus_pending() {
    echo "--- rebalance jobs and their tasks (newest job first):"
    q "$port" -c "SELECT j.job_id, j.state, t.task_id, t.status, t.retry_count, left(coalesce(t.message, ''), 200)
                    FROM pg_dist_background_job j LEFT JOIN pg_dist_background_task t USING (job_id)
                   ORDER BY j.job_id DESC, t.task_id LIMIT 20" 2>&1 || true
    echo "--- pg_dist_cleanup (records of placements still to be dropped):"
    q "$port" -c "SELECT record_id, object_name, node_group_id, policy_type FROM pg_dist_cleanup ORDER BY record_id" 2>&1 || true
    echo "--- pg_dist_node:"
    q "$port" -c "SELECT nodeid, groupid, nodeport, isactive FROM pg_dist_node ORDER BY groupid" 2>&1 || true
}
# A statement that waits on shards moving, run with statement_timeout = MOVE_BOUND.
bounded() {
    local what=$1 out
    shift
    if ! out=$(q "$port" -c "SET statement_timeout = '${MOVE_BOUND}s'" "$@" 2>&1); then
        q "$port" -c "SELECT citus_rebalance_stop()" >/dev/null 2>&1 || true
        fail "$what did not finish within ${MOVE_BOUND}s or failed: $out
$(citus_pending)"
    fi
}
# rebalance WHAT [MODE]: every move by MODE (Citus's default: logical replication
# while writes go on; block_writes is quicker and leaves the same deferred drops).
rebalance() {
    local mode=${2:+"shard_transfer_mode => '$2'"}
    bounded "$1: citus_rebalance_start/wait" -c "SELECT citus_rebalance_start($mode)" -c "SELECT citus_rebalance_wait()"
    # A job whose tasks failed for good ends too; it must have moved everything.
    local state
    state=$(q "$port" -c "SELECT state FROM pg_dist_background_job ORDER BY job_id DESC LIMIT 1")
    [ -z "$state" ] || [ "$state" = finished ] || fail "$1: the rebalance job ended $state
$(citus_pending)"
}
# The records of placements still to be dropped on the node at port $1.
pending_on() {
    q "$port" -c "SELECT count(*) FROM pg_dist_cleanup c JOIN pg_dist_node n ON n.groupid = c.node_group_id
                   WHERE n.nodeport = $1"
}
# Records no node will ever drop: their node group is no longer in the cluster.
orphaned_records() {
    q "$port" -c "SELECT count(*) FROM pg_dist_cleanup WHERE node_group_id NOT IN (SELECT groupid FROM pg_dist_node)"
}
# docs/citus.md's procedure for removing a node: drain it, drop the placements the
# drain left behind on it (a move only marks its source for a deferred drop, and
# Citus drops those only on nodes still in the cluster), then remove it.
# Every record of placements still to be dropped.
all_pending() {
    q "$port" -c "SELECT count(*) FROM pg_dist_cleanup"
}
# cleanup_until_dropped WHAT COUNT...: citus_cleanup_orphaned_resources() until the
# command COUNT... prints 0 (60 times at most, a second apart; each skips a placement
# a statement still locks).
cleanup_until_dropped() {
    local what=$1 i left=""
    shift
    for i in $(seq 60); do
        q "$port" -c "SET client_min_messages = warning" -c "CALL citus_cleanup_orphaned_resources()" >/dev/null
        left=$("$@")
        [ "$left" = 0 ] && return 0
        sleep 1
    done
    fail "$what: $left placements still to drop after 60 cleanups
$(citus_pending)"
}
drain_and_remove() {
    local node_port=$1 mode=${2:+", shard_transfer_mode => '$2'"}
    bounded "draining the node at port $node_port" -c "SELECT citus_drain_node('127.0.0.1', $node_port$mode)"
    cleanup_until_dropped "the drained node at port $node_port" pending_on "$node_port"
    q "$port" -c "SELECT citus_remove_node('127.0.0.1', $node_port)" >/dev/null
    [ "$(orphaned_records)" = 0 ] || fail "removing the node at port $node_port left cleanup records no node will run
$(citus_pending)"
}
# The colocation groups (by their tally.subscriptions shard) with a placement on the
# node at port $1.
groups_on() {
    q "$port" -c "SELECT shardid FROM pg_dist_shard JOIN pg_dist_shard_placement USING (shardid)
                   WHERE logicalrelid = 'tally.subscriptions'::regclass AND nodeport = $1 ORDER BY shardid"
}
# Moves each of the groups $2... from the worker it is on to the other worker: the
# moves a later rebalance would make, which a cleanup record left behind refuses.
move_sql() {
    local shard=$1 from to
    from=$(q "$port" -c "SELECT nodeport FROM pg_dist_shard_placement WHERE shardid = $shard")
    if [ "$from" = $((port + 1)) ]; then to=$((port + 2)); else to=$((port + 1)); fi
    echo "SELECT citus_move_shard_placement($shard, '127.0.0.1', $from, '127.0.0.1', $to, shard_transfer_mode => 'block_writes')"
}
move_again() {
    local what=$1 shard
    shift
    for shard in "$@"; do
        bounded "$what: moving shard $shard" -c "$(move_sql "$shard")"
    done
}
# Drops every placement a move left to a deferred drop, as an operator would after
# moves (docs/citus.md): until then a statement over every shard (the checks below)
# can close a lock cycle with Citus's background drop and be cancelled with 40P01.
drop_moved_placements() {
    cleanup_until_dropped "$1" all_pending
}

# 1. A fresh node joins; shards move onto it while the writers run.
start_load grow
sleep 2
q "$port" -c "SELECT citus_add_node('127.0.0.1', $new_port)" >/dev/null || fail "citus_add_node of a fresh node failed"
rebalance "growing onto the fresh node"
sleep 2
stop_load grow
# Citus 14 drops a moved group's old placements later, from its maintenance daemon;
# until then a statement over every shard (verify() below) can close a lock cycle
# with that drop and be cancelled with 40P01 (docs/citus.md). Dropped now, as an
# operator would after a rebalance.
q "$port" -c "CALL citus_cleanup_orphaned_resources()" >/dev/null
tables=$(placements_on "$new_port")
[ "$tables" = 7 ] || fail "after rebalancing, the new node holds placements of $tables tally tables, not 7"
say "a fresh node joined with citus_add_node and took shards of every tally table by rebalancing, writes running"
check "after the rebalance" "$new_port"
race grown "$new_port"

# 3. The node is drained and removed while the writers run.
start_load drain
sleep 2
drain_and_remove "$new_port"
sleep 1
stop_load drain
[ "$(q "$port" -c "SELECT count(*) FROM pg_dist_node WHERE nodeport = $new_port")" = 0 ] || fail "the drained node is still listed"
say "the node was drained and removed, writes running; no placement was left to drop"
check "after the drain"
race drained

# 3b. Drained and removed again and again, writes running: after each removal the
# shards that were on the node move again, and the next rebalance finishes. These
# moves block writes instead of replicating them (quicker; a move leaves its old
# placements to a deferred drop either way).
for cycle in 1 2 3; do
    start_load "cycle-$cycle"
    fresh_node_db
    q "$port" -c "SELECT citus_add_node('127.0.0.1', $new_port)" >/dev/null || fail "cycle $cycle: citus_add_node failed"
    rebalance "cycle $cycle" block_writes
    # shellcheck disable=SC2046
    set -- $(groups_on "$new_port")
    [ $# -gt 0 ] || fail "cycle $cycle: the rebalance moved nothing onto the node"
    drain_and_remove "$new_port" block_writes
    move_again "cycle $cycle" "$@"
    stop_load "cycle-$cycle"
    say "cycle $cycle: rebalanced onto the node, drained and removed it, then moved its $# shard groups again"
done
drop_moved_placements "after three drain cycles"
check "after three drain cycles"

# 3c. A node removed while the drops of its last moves were still pending (drain then
# remove, before Citus's background cleanup ran): no move of those shards can start
# again, so a rebalance that picks one retries for ever. docs/citus.md's way
# out: delete the records of the removed node group; then the shards move again.
q "$port" -c "ALTER SYSTEM SET citus.defer_shard_delete_interval = -1" -c "SELECT pg_reload_conf()" >/dev/null
fresh_node_db
q "$port" -c "SELECT citus_add_node('127.0.0.1', $new_port)" >/dev/null || fail "stuck state: citus_add_node failed"
rebalance "stuck state" block_writes
# shellcheck disable=SC2046
set -- $(groups_on "$new_port")
bounded "stuck state: draining" -c "SELECT citus_drain_node('127.0.0.1', $new_port, shard_transfer_mode => 'block_writes')"
[ "$(pending_on "$new_port")" -gt 0 ] || fail "stuck state: the drain left no drop pending to reproduce it with"
q "$port" -c "SELECT citus_remove_node('127.0.0.1', $new_port)" >/dev/null
orphans=$(orphaned_records)
[ "$orphans" -gt 0 ] || fail "stuck state: removing the node left no orphaned cleanup record"
stuck=$(q "$port" -c "SELECT object_name FROM pg_dist_cleanup WHERE node_group_id NOT IN (SELECT groupid FROM pg_dist_node)
                       AND object_name LIKE 'tally.subscriptions\_%' LIMIT 1")
stuck_shard=${stuck##*_}
refused=$(q "$port" -c "SET statement_timeout = '${MOVE_BOUND}s'" -c "$(move_sql "$stuck_shard")" 2>&1 || true)
case "$refused" in
    *"leftover from the previous move could not be cleaned up"*) ;;
    *) fail "stuck state: moving shard $stuck_shard was not refused as Citus refuses it: $refused" ;;
esac
say "stuck state: a node removed with $orphans drops pending leaves shard $stuck_shard unmovable: $(echo "$refused" | grep -o 'shard move failed[^"]*' | head -1)"
q "$port" -c "DELETE FROM pg_dist_cleanup WHERE node_group_id NOT IN (SELECT groupid FROM pg_dist_node)" >/dev/null
q "$port" -c "ALTER SYSTEM RESET citus.defer_shard_delete_interval" -c "SELECT pg_reload_conf()" >/dev/null
move_again "after the way out" "$@"
say "stuck state: after deleting the removed node group's cleanup records, its $# shard groups moved again"
drop_moved_placements "after the way out of the stuck state"
check "after the way out of the stuck state"

# 4. An operator ran CREATE EXTENSION tally on the node before adding it: it joins.
# With data in its own tally tables it is refused, saying what to do.
fresh_node_db -c "CREATE EXTENSION tally" -c "INSERT INTO tally.plans (plan_id, display_name) VALUES ('local', 'Local')"
refusal=$(q "$port" -c "SELECT citus_add_node('127.0.0.1', $new_port)" 2>&1 || true)
case "$refusal" in
    *"tally tables hold data"*) ;;
    *) fail "a node whose own tally tables hold data was not refused: $refusal" ;;
esac
[ "$(q "$port" -c "SELECT count(*) FROM pg_dist_node WHERE nodeport = $new_port")" = 0 ] || fail "the refused node was added"
[ "$(q "$new_port" -c "SELECT count(*) FROM tally.plans")" = 1 ] || fail "the refused node's own rows were touched"
say "a node whose own tally tables hold data is refused: $(echo "$refusal" | grep -o "this node's own tally tables hold data[^\"]*" | head -1)"
fresh_node_db -c "CREATE EXTENSION tally"
q "$port" -c "SELECT citus_add_node('127.0.0.1', $new_port)" >/dev/null || fail "citus_add_node of a node with tally created failed"
rebalance "adding a node with tally created"
q "$port" -c "CALL citus_cleanup_orphaned_resources()" >/dev/null
[ "$(placements_on "$new_port")" = 7 ] || fail "the node with tally created took no shards"
check "after adding a node with CREATE EXTENSION tally done" "$new_port"
race precreated "$new_port"

# 5. kill -9 of a worker, then of the coordinator, in the middle of the writes.
crash() {
    local node=$1 node_port=$2 pid kids i alive k
    pid=$(head -1 "$dir/$node/data/postmaster.pid")
    kids=$(pgrep -P "$pid" || true)
    # shellcheck disable=SC2086
    kill -9 "$pid" $kids 2>/dev/null || true
    for i in $(seq 100); do
        alive=0
        for k in $pid $kids; do
            if kill -0 "$k" 2>/dev/null && [ "$(ps -o stat= -p "$k" | cut -c1)" != Z ]; then alive=1; fi
        done
        [ "$alive" = 0 ] && break
        sleep 0.1
    done
    rm -f "$dir/$node/data/postmaster.pid" "$dir/$node/.s.PGSQL.$node_port" "$dir/$node/.s.PGSQL.$node_port.lock"
    scripts/citus_cluster.sh node "$dir" "$node" "$node_port"
}
recover() {
    local i left
    for i in $(seq 30); do
        q "$port" -c "SELECT recover_prepared_transactions()" >/dev/null 2>&1 || true
        left=0
        for p in $(nodes "$new_port"); do
            left=$((left + $(q "$p" -c "SELECT count(*) FROM pg_prepared_xacts" 2>/dev/null || echo 1)))
        done
        [ "$left" = 0 ] && return 0
        sleep 1
    done
    fail "$1: prepared transactions left after 30 recovery attempts"
}
for victim in "worker1 $((port + 1))" "coordinator $port"; do
    set -- $victim
    start_load "crash-$1"
    sleep 3
    crash "$1" "$2"
    sleep 2
    stop_load "crash-$1" any-errors
    recover "kill -9 of the $1"
    check "after kill -9 of the $1 mid-load and restart" "$new_port"
done
race recovered
say "passed"
