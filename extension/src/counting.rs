//! Statement-level counting: every INSERT, UPDATE and DELETE on `tally.sessions`
//! (COPY, INSERT … SELECT, ON CONFLICT and cascades included) is aggregated from its
//! transition table into one counter write per (user, period) and per learning plan.
//!
//! Limits ride on the same write: the upsert of the usage row takes its row lock, so
//! inserts for one user and period serialize there, and the reservation count that
//! follows runs with a fresh snapshot taken after the lock was granted.
//!
//! Every query reads either a transition table alone or tally's tables alone, never
//! both: on Citus the trigger fires on a shard, where a transition table cannot be
//! joined with a distributed table, and tally's tables are reached by statements
//! routed by `user_id` (scalar parameters) to the co-located shards. The same path
//! runs on one node. A statement that changed exactly one row (the API's case) reads
//! that row and its subscription and applies it in Rust; any other statement
//! aggregates its transition tables into one change per (user, period) and per
//! learning plan first. Both apply the same deltas and the same limit check.

use std::collections::HashMap;

use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::{pg_sys, PgTrigger};

use crate::binding::{on, Level::*, Timing::*, DELETE, INSERT, UPDATE};
use crate::citus::ShardTables;
use crate::counted::{command_id, remember, Counted};
use crate::counter::Counter;
use crate::errors::{entry, TallyResult};
use crate::internal::InternalWrite;
use crate::keyed;
use crate::limits::{check_limits, IndexOnlyPlanning, LimitCheck};
use crate::privilege::AsExtensionOwner;
use crate::settings;
use crate::spi::{
    get, get_nullable, register_transition_tables, run_cached, run_cached_as_planned,
    run_cached_for_bulk, INT4, INT4_ARRAY, INTERVAL_ARRAY, TEXT, TEXT_ARRAY, TIMESTAMPTZ,
    TIMESTAMPTZ_ARRAY, UUID,
};

/// What a statement changed, one row per session row (for an UPDATE, the new completed
/// row and the old completed row apart): `done` is the change to completed sessions,
/// `added` the sessions that take a slot and need the limit check (new sessions that
/// are not abandoned; completions of started sessions whose reservation expired),
/// `unheld` new started sessions dated past the reservation timeout (they hold no
/// slot but need one free).
macro_rules! insert_changed {
    () => {
        "SELECT user_id, kind, started_at, learning_plan_id,
       (status = 'completed')::int AS done,
       (status <> 'abandoned')::int AS added,
       (status = 'started' AND started_at <= now() - tally.reservation_timeout())::int AS unheld
  FROM tally_new"
    };
}

// session_id never changes (sessions_check_update), so it pairs each new row with
// its old one.
macro_rules! update_changed { () => { "SELECT n.user_id, n.kind, n.started_at, n.learning_plan_id, 1 AS done,
       (o.status = 'started' AND o.started_at <= now() - tally.reservation_timeout())::int AS added,
       0 AS unheld
  FROM tally_new n JOIN tally_old o ON o.user_id = n.user_id AND o.session_id = n.session_id
 WHERE n.status = 'completed'
UNION ALL
SELECT user_id, kind, started_at, learning_plan_id, -1, 0, 0 FROM tally_old WHERE status = 'completed'" }; }

macro_rules! delete_changed {
    () => {
        "SELECT user_id, kind, started_at, learning_plan_id, -1 AS done, 0 AS added, 0 AS unheld
  FROM tally_old WHERE status = 'completed'"
    };
}

/// The queries of the set-based path.
struct Changes {
    /// The users a statement touched.
    users: &'static str,
    /// The change per (user, period), over the transition tables alone: $1..$3 the
    /// users' subscriptions, $4..$5 the kinds, as arrays (data, not tables). Columns
    /// 10 and 11 (the limits) are NULL: the caller has them.
    groups: &'static str,
    /// The same where tally's tables are this node's own (one node, or the shards
    /// co-located with the one the trigger fired on): joined with them in one pass,
    /// limits included.
    local_groups: &'static str,
    /// local_groups for statements of BULK_ROWS rows or more, planned without
    /// IndexOnlyPlanning and without sorts (crate::spi::run_cached_for_bulk): its
    /// plan is cached apart, made for a transition table that large (hash joins over
    /// tally's tables instead of one index lookup per row, groups hashed instead of
    /// every row sorted).
    local_groups_bulk: &'static str,
    /// The change per learning plan.
    plans: &'static str,
}

/// A group's changes to each counter (see insert_changed!).
macro_rules! group_sums {
    () => {
        "coalesce(sum(c.done) FILTER (WHERE k.counter = 'practice_sessions'), 0)::int,
       coalesce(sum(c.done) FILTER (WHERE k.counter = 'assessments'), 0)::int,
       coalesce(sum(c.added) FILTER (WHERE k.counter = 'practice_sessions'), 0)::int,
       coalesce(sum(c.added) FILTER (WHERE k.counter = 'assessments'), 0)::int,
       coalesce(sum(c.unheld) FILTER (WHERE k.counter = 'practice_sessions'), 0)::int,
       coalesce(sum(c.unheld) FILTER (WHERE k.counter = 'assessments'), 0)::int"
    };
}

/// The groups query joined with tally's tables, over `changed` (Changes::local_groups),
/// without its order.
macro_rules! local_groups_sql {
    () => {
        concat!(
            r#"SELECT c.user_id, b.period_start, tally.period_end_for(s.period_anchor, p.period, b.period_start),
       "#,
            group_sums!(),
            r#",
       p.practice_sessions_limit, p.assessments_limit
  FROM changed c
  JOIN tally.subscriptions s ON s.user_id = c.user_id
  JOIN tally.plans p ON p.plan_id = s.plan_id
  JOIN tally.session_kinds k ON k.kind = c.kind
 CROSS JOIN LATERAL (SELECT tally.period_start_for(s.period_anchor, p.period, c.started_at) AS period_start) b
 WHERE k.counter <> 'none'
 GROUP BY c.user_id, b.period_start, s.period_anchor, p.period, p.practice_sessions_limit, p.assessments_limit"#
        )
    };
}

macro_rules! changes {
    ($changed:expr) => {
        Changes {
            users: concat!("SELECT DISTINCT user_id FROM (", $changed, ") c ORDER BY 1"),
            groups: concat!(
                "WITH changed AS (",
                $changed,
                r#")
SELECT c.user_id, b.period_start, tally.period_end_for(f.anchor, f.period, b.period_start),
       "#,
                group_sums!(),
                r#",
       NULL::int, NULL::int
  FROM changed c
  JOIN unnest($1::text[], $2::timestamptz[], $3::interval[]) AS f(user_id, anchor, period) ON f.user_id = c.user_id
  JOIN unnest($4::text[], $5::text[]) AS k(kind, counter) ON k.kind = c.kind
 CROSS JOIN LATERAL (SELECT tally.period_start_for(f.anchor, f.period, c.started_at) AS period_start) b
 WHERE k.counter <> 'none'
 GROUP BY c.user_id, b.period_start, f.anchor, f.period
 ORDER BY 1, 2"#
            ),
            local_groups: concat!(
                "WITH changed AS (",
                $changed,
                ")\n",
                local_groups_sql!(),
                "\n ORDER BY 1, 2"
            ),
            local_groups_bulk: concat!(
                "WITH changed AS (",
                $changed,
                "), grouped AS MATERIALIZED (\n",
                local_groups_sql!(),
                ")\nSELECT * FROM grouped ORDER BY 1, 2"
            ),
            plans: concat!(
                "WITH changed AS (",
                $changed,
                ")
SELECT user_id, learning_plan_id, sum(done)::int
  FROM changed
 WHERE learning_plan_id IS NOT NULL
 GROUP BY 1, 2
HAVING sum(done) <> 0
 ORDER BY 1, 2"
            ),
        }
    };
}

const INSERTED: Changes = changes!(insert_changed!());
const UPDATED: Changes = changes!(update_changed!());
const DELETED: Changes = changes!(delete_changed!());

/// The single changed row of a statement, read through SPI where tally's tables are
/// not this node's own (else it is read directly, crate::keyed).
macro_rules! one_row_sql {
    ($table:literal) => {
        concat!(
            "SELECT user_id, kind, status, started_at, learning_plan_id, session_id,
                    status = 'started' AND started_at <= now() - tally.reservation_timeout()
               FROM ",
            $table
        )
    };
}

/// The transition table a single-row path reads.
#[derive(Clone, Copy)]
enum Transition {
    New,
    Old,
}

impl Transition {
    fn sql(self) -> &'static str {
        match self {
            Transition::New => one_row_sql!("tally_new"),
            Transition::Old => one_row_sql!("tally_old"),
        }
    }

    fn table(self, data: &pg_sys::TriggerData) -> *mut pg_sys::Tuplestorestate {
        match self {
            Transition::New => data.tg_newtable,
            Transition::Old => data.tg_oldtable,
        }
    }
}

/// A user's subscription and plan, routed by user_id (plans is a reference table on
/// Citus); read through SPI where tally's tables are not this node's own.
const SUBSCRIPTION_SQL: &str = "
SELECT s.period_anchor, p.period, p.practice_sessions_limit, p.assessments_limit, s.plan_id
  FROM tally.subscriptions s JOIN tally.plans p ON p.plan_id = s.plan_id
 WHERE s.user_id = $1";

const COUNTER_SQL: &str = "SELECT counter FROM tally.session_kinds WHERE kind = $1";

const KINDS_SQL: &str = "SELECT array_agg(kind), array_agg(counter) FROM tally.session_kinds";

/// The counter upsert of one (user, period). Where tally.usage has `started_bound`
/// (crate::keyed::add_to_usage), a write through SQL makes it unknown (NULL): only
/// the write by key keeps it.
macro_rules! raise_one_sql {
    ($bound:literal) => {
        concat!(
            r#"
INSERT INTO tally.usage AS u (user_id, period_start, period_end, practice_sessions_used, assessments_used)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (user_id, period_start) DO UPDATE
   SET practice_sessions_used = u.practice_sessions_used + excluded.practice_sessions_used,
       assessments_used = u.assessments_used + excluded.assessments_used"#,
            $bound,
            r#"
RETURNING practice_sessions_used, assessments_used
"#
        )
    };
}

/// raise_one_sql! for many (user, period) groups at once, in key order, where the
/// usage table is this node's own (one node, or a co-located shard): one statement
/// for a bulk load instead of one per group.
macro_rules! raise_many_sql {
    ($bound:literal) => {
        concat!(
            r#"
INSERT INTO tally.usage AS u (user_id, period_start, period_end, practice_sessions_used, assessments_used)
SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[], $4::int[], $5::int[])
 ORDER BY 1, 2
ON CONFLICT (user_id, period_start) DO UPDATE
   SET practice_sessions_used = u.practice_sessions_used + excluded.practice_sessions_used,
       assessments_used = u.assessments_used + excluded.assessments_used"#,
            $bound,
            r#"
RETURNING user_id, period_start, practice_sessions_used, assessments_used
"#
        )
    };
}

/// The upserts (raise_one_sql!, raise_many_sql!) for a usage table with or without
/// `started_bound`.
struct Upserts {
    one: &'static str,
    many: &'static str,
}

const UPSERTS_CLEARING_BOUND: Upserts = Upserts {
    one: raise_one_sql!(",\n       started_bound = NULL"),
    many: raise_many_sql!(",\n       started_bound = NULL"),
};

const UPSERTS: Upserts = Upserts {
    one: raise_one_sql!(""),
    many: raise_many_sql!(""),
};

fn upserts() -> &'static Upserts {
    if keyed::usage_keeps_started_bound() {
        &UPSERTS_CLEARING_BOUND
    } else {
        &UPSERTS
    }
}

const LOWER_ONE_SQL: &str = r#"
UPDATE tally.usage
   SET practice_sessions_used = practice_sessions_used + $3,
       assessments_used = assessments_used + $4
 WHERE user_id = $1 AND period_start = $2
"#;

const PLAN_ONE_SQL: &str =
    "UPDATE tally.learning_plans SET completed_sessions = completed_sessions + $3
 WHERE user_id = $1 AND learning_plan_id = $2";

/// Makes the bound on started sessions of every usage row unknown (NULL), where
/// tally.usage keeps one (crate::keyed::add_to_usage): after writes no trigger counted
/// (tally.repair()), or when a kind that counted nothing starts counting. The next
/// single-row write of each row counts its reservations and writes the bound again.
/// The caller holds an InternalWrite and runs as the tables' owner.
pub(crate) fn forget_started_bounds() {
    if keyed::usage_keeps_started_bound() {
        Spi::run("UPDATE tally.usage SET started_bound = NULL WHERE started_bound IS NOT NULL")
            .unwrap_or_else(|e| panic!("tally: cannot forget the bounds on started sessions: {e}"));
    }
}

/// Rows in a transition table, without reading it.
fn rows_in(table: *mut pg_sys::Tuplestorestate) -> i64 {
    if table.is_null() {
        0
    } else {
        // SAFETY: PostgreSQL's transition table for this trigger call.
        unsafe { pg_sys::tuplestore_tuple_count(table) }
    }
}

fn count_insert(trigger: &PgTrigger<'_>) -> TallyResult<pg_sys::Datum> {
    let _internal = InternalWrite::begin();
    let _owner = AsExtensionOwner::for_trigger(trigger);
    let _shard = ShardTables::enter(trigger.trigger_data().tg_relation, c"sessions");
    let _planning = IndexOnlyPlanning::begin(ShardTables::all_local());
    remember(None);
    let single = rows_in(trigger.trigger_data().tg_newtable) == 1;
    Spi::connect_mut(|client| {
        register_transition_tables(trigger);
        if single {
            let row = one_row(client, trigger.trigger_data(), Transition::New);
            let applied = apply_one(client, None, row.as_ref());
            let in_progress = check_limits(client, &applied.checks)?;
            if let (Some(facts), Some(usage)) = (row, applied.usage) {
                remember(Some(Counted {
                    command_id: command_id(),
                    session_id: facts.session_id,
                    user_id: facts.user_id,
                    plan_id: facts.plan_id,
                    period_start: usage.period_start,
                    period_end: usage.period_end,
                    practice_used: usage.practice_used,
                    assessments_used: usage.assessments_used,
                    practice_limit: facts.practice_limit,
                    assessments_limit: facts.assessments_limit,
                    in_progress: in_progress.or(applied.reservations),
                    on_shard: ShardTables::in_shard(),
                }));
            }
            Ok(())
        } else {
            let rows = rows_in(trigger.trigger_data().tg_newtable);
            let checks = apply_many(client, &INSERTED, rows);
            check_limits(client, &checks).map(|_| ())
        }
    })?;
    Ok(pg_sys::Datum::null())
}
entry!(
    tally_sessions_count_insert,
    pg_finfo_tally_sessions_count_insert,
    count_insert,
    on(c"sessions", After, Statement, INSERT)
);

/// Statements changing this many rows or more are counted with plans made for bulk
/// loads (Changes::local_groups_bulk).
const BULK_ROWS: i64 = 10_000;

/// The set-based path: the statement's changes aggregated per (user, period) and per
/// learning plan from its transition tables alone, then one routed counter write per
/// group, in key order (the order every writer takes these row locks in). Returns
/// the limit checks the groups need.
fn apply_many(client: &mut SpiClient<'_>, changes: &Changes, rows: i64) -> Vec<LimitCheck> {
    let groups: Vec<Group> = if ShardTables::all_local() && rows >= BULK_ROWS {
        run_cached_for_bulk(client, changes.local_groups_bulk)
            .map(Group::from_row)
            .collect()
    } else if ShardTables::all_local() {
        run_cached(client, changes.local_groups, &[], &[])
            .map(Group::from_row)
            .collect()
    } else {
        groups_by_arrays(client, changes)
    };
    let plans: Vec<(String, pgrx::Uuid, i32)> = run_cached(client, changes.plans, &[], &[])
        .map(|row| (get(&row, 1), get(&row, 2), get(&row, 3)))
        .collect();

    // One statement for all the raises when they are all this statement writes (an
    // INSERT or COPY; a DELETE only lowers): its rows are then locked in the same key
    // order as group by group.
    let batched = ShardTables::all_local()
        && groups.iter().filter(|g| g.raises()).count() > 1
        && groups.iter().all(|g| g.raises() || !g.lowers());
    let mut raised = if batched {
        raise_many(client, groups.iter().filter(|g| g.raises()))
    } else {
        HashMap::new()
    };
    let enforce = settings::enforce_limits();
    let mut checks = Vec::new();
    for group in groups {
        let (practice, assessments) = group.done;
        if group.raises() {
            let used =
                match raised.remove(&(group.user_id.clone(), group.period_start.into_inner())) {
                    Some(used) => used,
                    None => {
                        let change = keyed::UsageChange {
                            practice,
                            assessments,
                            started: None,
                            reservations_wanted: false,
                        };
                        raise(
                            client,
                            &group.user_id,
                            group.period_start,
                            group.period_end,
                            &change,
                        )
                        .used
                    }
                };
            for counter in [Counter::PracticeSessions, Counter::Assessments] {
                let added = counter.of(group.added.0, group.added.1);
                let limit = counter.of(group.limits.0, group.limits.1);
                if let (true, Some(limit)) = (enforce && added > 0, limit) {
                    checks.push(LimitCheck {
                        user_id: group.user_id.clone(),
                        period_start: group.period_start,
                        period_end: group.period_end,
                        counter,
                        used: counter.of(used.0, used.1),
                        done: counter.of(practice, assessments),
                        added,
                        limit,
                        unheld: counter.of(group.unheld.0, group.unheld.1),
                        in_progress: None,
                    });
                }
            }
        } else if group.lowers() {
            lower(
                client,
                &group.user_id,
                group.period_start,
                practice,
                assessments,
            );
        }
    }
    for (user, plan, delta) in plans {
        change_plan(client, user, plan, delta);
    }
    checks
}

/// The groups of a statement from its transition tables alone, the users'
/// subscriptions and the kinds passed in as arrays (where tally's tables are
/// distributed).
fn groups_by_arrays(client: &mut SpiClient<'_>, changes: &Changes) -> Vec<Group> {
    let users: Vec<String> = run_cached(client, changes.users, &[], &[])
        .map(|row| get(&row, 1))
        .collect();
    // Users whose subscription is gone (a cascade from its deletion) count nowhere.
    // Routed statements: tally's tables are not this node's own here.
    let mut subscriptions = HashMap::new();
    for user in users {
        if let Some(found) = subscription(client, None, &user) {
            subscriptions.insert(user, found);
        }
    }
    let (kinds, counters): (Vec<String>, Vec<String>) = {
        let row = run_cached(client, KINDS_SQL, &[], &[])
            .next()
            .expect("an aggregate returns a row");
        (
            get_nullable(&row, 1).unwrap_or_default(),
            get_nullable(&row, 2).unwrap_or_default(),
        )
    };
    let (user_ids, anchors, periods) = subscriptions.iter().fold(
        (Vec::new(), Vec::new(), Vec::new()),
        |(mut users, mut anchors, mut periods), (user, s)| {
            users.push(user.clone());
            anchors.push(s.anchor);
            periods.push(s.period);
            (users, anchors, periods)
        },
    );
    run_cached(
        client,
        changes.groups,
        &[
            TEXT_ARRAY,
            TIMESTAMPTZ_ARRAY,
            INTERVAL_ARRAY,
            TEXT_ARRAY,
            TEXT_ARRAY,
        ],
        &[
            user_ids.into(),
            anchors.into(),
            periods.into(),
            kinds.into(),
            counters.into(),
        ],
    )
    .map(|row| {
        let mut group = Group::from_row(row);
        let s = &subscriptions[&group.user_id];
        group.limits = (s.practice_limit, s.assessments_limit);
        group
    })
    .collect()
}

/// The change of one statement to one user's usage in one period.
struct Group {
    user_id: String,
    period_start: TimestampWithTimeZone,
    period_end: TimestampWithTimeZone,
    /// (practice sessions, assessments), here and below.
    done: (i32, i32),
    added: (i32, i32),
    unheld: (i32, i32),
    /// The plan's limits.
    limits: (Option<i32>, Option<i32>),
}

impl Group {
    /// A row of `Changes::groups` or `Changes::local_groups`.
    fn from_row(row: pgrx::spi::SpiHeapTupleData<'_>) -> Group {
        Group {
            user_id: get(&row, 1),
            period_start: get(&row, 2),
            period_end: get(&row, 3),
            done: (get(&row, 4), get(&row, 5)),
            added: (get(&row, 6), get(&row, 7)),
            unheld: (get(&row, 8), get(&row, 9)),
            limits: (get_nullable(&row, 10), get_nullable(&row, 11)),
        }
    }

    /// Adds to its usage row (completions, or sessions that take a slot).
    fn raises(&self) -> bool {
        self.done.0 > 0 || self.done.1 > 0 || self.added.0 > 0 || self.added.1 > 0
    }

    /// Takes completions away from its usage row.
    fn lowers(&self) -> bool {
        !self.raises() && (self.done.0 < 0 || self.done.1 < 0)
    }
}

/// raise_one_sql! for every group in one statement. Returns the counters after the
/// write by (user, period start).
fn raise_many<'a>(
    client: &mut SpiClient<'_>,
    groups: impl Iterator<Item = &'a Group>,
) -> HashMap<(String, i64), (i32, i32)> {
    let (mut users, mut starts, mut ends, mut practice, mut assessments) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for group in groups {
        users.push(group.user_id.clone());
        starts.push(group.period_start);
        ends.push(group.period_end);
        practice.push(group.done.0);
        assessments.push(group.done.1);
    }
    run_cached_as_planned(
        client,
        upserts().many,
        &[
            TEXT_ARRAY,
            TIMESTAMPTZ_ARRAY,
            TIMESTAMPTZ_ARRAY,
            INT4_ARRAY,
            INT4_ARRAY,
        ],
        &[
            users.into(),
            starts.into(),
            ends.into(),
            practice.into(),
            assessments.into(),
        ],
    )
    .map(|row| {
        let start: TimestampWithTimeZone = get(&row, 2);
        (
            (get(&row, 1), start.into_inner()),
            (get(&row, 3), get(&row, 4)),
        )
    })
    .collect()
}

/// Adds to a usage row, creating it if needed; the write takes the row lock that
/// serializes limit checks. An existing row is updated by key without the executor
/// where that means the same (crate::keyed::add_to_usage), else the upsert runs.
/// Returns the counters after the write, and the reservations when known.
fn raise(
    client: &mut SpiClient<'_>,
    user_id: &str,
    start: TimestampWithTimeZone,
    end: TimestampWithTimeZone,
    change: &keyed::UsageChange,
) -> keyed::UsageWritten {
    if let Some(written) = keyed::add_to_usage(user_id, start, end, change) {
        return written;
    }
    let row = run_cached_as_planned(
        client,
        upserts().one,
        &[TEXT, TIMESTAMPTZ, TIMESTAMPTZ, INT4, INT4],
        &[
            user_id.into(),
            start.into(),
            end.into(),
            change.practice.into(),
            change.assessments.into(),
        ],
    )
    .next()
    .expect("an upsert returns its row");
    keyed::UsageWritten {
        used: (get(&row, 1), get(&row, 2)),
        reservations: None,
    }
}

/// Subtracts from a usage row, which exists: the sessions it counted did.
fn lower(
    client: &mut SpiClient<'_>,
    user_id: &str,
    start: TimestampWithTimeZone,
    practice: i32,
    assessments: i32,
) {
    run_cached(
        client,
        LOWER_ONE_SQL,
        &[TEXT, TIMESTAMPTZ, INT4, INT4],
        &[
            user_id.into(),
            start.into(),
            practice.into(),
            assessments.into(),
        ],
    );
}

fn change_plan(client: &mut SpiClient<'_>, user_id: String, plan: pgrx::Uuid, delta: i32) {
    run_cached(
        client,
        PLAN_ONE_SQL,
        &[TEXT, UUID, INT4],
        &[user_id.into(), plan.into(), delta.into()],
    );
}

/// What counting needs to know of one session row.
struct RowFacts {
    user_id: String,
    status: String,
    started_at: TimestampWithTimeZone,
    learning_plan_id: Option<pgrx::Uuid>,
    counter: Counter,
    anchor: TimestampWithTimeZone,
    period: Interval,
    practice_limit: Option<i32>,
    assessments_limit: Option<i32>,
    session_id: pgrx::Uuid,
    plan_id: String,
    /// A started session whose reservation has expired (by tally.reservation_timeout).
    expired: bool,
}

/// The usage row of a session's period after an upsert.
struct UsageAfter {
    period_start: TimestampWithTimeZone,
    period_end: TimestampWithTimeZone,
    practice_used: i32,
    assessments_used: i32,
}

/// What applying one row did: the limit check it needs, the usage row it raised, and
/// the reservations in that row's period when they were known under its lock.
struct Applied {
    checks: Vec<LimitCheck>,
    usage: Option<UsageAfter>,
    reservations: Option<(i32, i32)>,
}

impl RowFacts {
    fn completed(&self) -> bool {
        self.status == "completed"
    }

    fn limit(&self) -> Option<i32> {
        self.counter.of(self.practice_limit, self.assessments_limit)
    }

    fn period_bounds(&self) -> (TimestampWithTimeZone, TimestampWithTimeZone) {
        crate::period::period_bounds(self.anchor, &self.period, self.started_at)
    }
}

/// A user's subscription and plan; None when there is none (its deletion cascades
/// to the user's rows).
fn subscription(
    client: &mut SpiClient<'_>,
    reads: Option<&keyed::Tables>,
    user_id: &str,
) -> Option<keyed::Subscription> {
    if let Some(found) = reads.and_then(|reads| reads.subscription(user_id)) {
        return found;
    }
    run_cached(client, SUBSCRIPTION_SQL, &[TEXT], &[user_id.into()])
        .next()
        .map(|row| keyed::Subscription {
            anchor: get(&row, 1),
            period: get(&row, 2),
            practice_limit: get_nullable(&row, 3),
            assessments_limit: get_nullable(&row, 4),
            plan_id: get(&row, 5),
        })
}

/// The counter of a session kind.
fn counter(client: &mut SpiClient<'_>, reads: Option<&keyed::Tables>, kind: &str) -> Counter {
    if let Some(found) = reads.and_then(|reads| reads.counter(kind)) {
        return found;
    }
    let row = run_cached(client, COUNTER_SQL, &[TEXT], &[kind.into()])
        .next()
        .expect("tally: a session's kind exists (foreign key)");
    Counter::from_sql(&get::<String>(&row, 1))
}

/// The one row of a transition table, then its subscription and kind. None when the
/// subscription is gone (the row is being deleted by its cascade).
fn one_row(
    client: &mut SpiClient<'_>,
    data: &pg_sys::TriggerData,
    transition: Transition,
) -> Option<RowFacts> {
    let reads = keyed::Tables::here();
    let row = match reads {
        // Read directly, without the executor (crate::keyed).
        Some(_) => keyed::transition_row(data.tg_relation, transition.table(data))?,
        None => {
            let row = run_cached(client, transition.sql(), &[], &[]).next()?;
            keyed::ChangedRow {
                user_id: get(&row, 1),
                kind: get(&row, 2),
                status: get(&row, 3),
                started_at: get(&row, 4),
                learning_plan_id: get_nullable(&row, 5),
                session_id: get(&row, 6),
            }
        }
    };
    let s = subscription(client, reads.as_ref(), &row.user_id)?;
    let counter = counter(client, reads.as_ref(), &row.kind);
    let expired = row.status == "started" && row.started_at <= keyed::reservation_cutoff();
    Some(RowFacts {
        user_id: row.user_id,
        status: row.status,
        started_at: row.started_at,
        learning_plan_id: row.learning_plan_id,
        counter,
        anchor: s.anchor,
        period: s.period,
        practice_limit: s.practice_limit,
        assessments_limit: s.assessments_limit,
        session_id: row.session_id,
        plan_id: s.plan_id,
        expired,
    })
}

/// Applies the change of one session row from `old` to `new` (either may be absent:
/// an INSERT has no old row, a DELETE no new one, and a row whose subscription is
/// being deleted has neither). Returns the limit check an inserted row needs and the
/// usage row it raised.
fn apply_one(
    client: &mut SpiClient<'_>,
    old: Option<&RowFacts>,
    new: Option<&RowFacts>,
) -> Applied {
    let counted = |row: Option<&RowFacts>| row.filter(|r| r.completed()).map_or(0, |_| 1);
    let mut checks = Vec::new();
    let mut usage = None;
    let mut reservations = None;

    // user_id, kind and started_at never change, so both rows share one usage row.
    if let Some(facts) = new.or(old).filter(|r| r.counter.metered()) {
        let sign = counted(new) - counted(old);
        let (practice, assessments) = facts.counter.deltas(sign);
        let (start, end) = facts.period_bounds();
        let reserves = old.is_none() && new.is_some_and(|n| n.status != "abandoned");
        // Completing a session whose reservation expired takes a slot it no longer
        // held: it is checked like a new session.
        let retakes = old.is_some_and(|o| o.expired) && sign > 0;
        if sign > 0 || reserves {
            let checked = (reserves || retakes) && settings::enforce_limits();
            let limit = facts.limit().filter(|_| checked);
            // The period's started sessions (tally.usage.started_bound): one more for
            // a session inserted started, one fewer for a started one completed.
            let started = if old.is_none() {
                i32::from(facts.status == "started")
            } else {
                -i32::from(old.is_some_and(|o| o.status == "started"))
            };
            let change = keyed::UsageChange {
                practice,
                assessments,
                started: Some(started),
                reservations_wanted: limit.is_some(),
            };
            let written = raise(client, &facts.user_id, start, end, &change);
            let (practice_used, assessments_used) = written.used;
            let used = facts.counter.of(practice_used, assessments_used);
            usage = Some(UsageAfter {
                period_start: start,
                period_end: end,
                practice_used,
                assessments_used,
            });
            reservations = written.reservations;
            if let Some(limit) = limit {
                checks.push(LimitCheck {
                    user_id: facts.user_id.clone(),
                    period_start: start,
                    period_end: end,
                    counter: facts.counter,
                    used,
                    done: sign,
                    added: 1,
                    limit,
                    unheld: new.filter(|n| reserves && n.expired).map_or(0, |_| 1),
                    in_progress: written.reservations,
                });
            }
        } else if sign < 0 {
            lower(client, &facts.user_id, start, practice, assessments);
        }
    }

    // Learning plans count completed sessions of any kind. A session that stays
    // completed keeps its plan (only duration_seconds may change), so its two
    // changes cancel out.
    let plan_change = |row: Option<&RowFacts>, sign: i32| {
        row.filter(|r| r.completed())
            .and_then(|r| r.learning_plan_id.map(|id| (r.user_id.clone(), id, sign)))
    };
    let changes = [plan_change(old, -1), plan_change(new, 1)];
    let cancel_out = matches!(&changes, [Some((_, a, _)), Some((_, b, _))] if a == b);
    for (user, plan, delta) in changes.into_iter().flatten().filter(|_| !cancel_out) {
        change_plan(client, user, plan, delta);
    }
    Applied {
        checks,
        usage,
        reservations,
    }
}

fn count_update(trigger: &PgTrigger<'_>) -> TallyResult<pg_sys::Datum> {
    let data = trigger.trigger_data();
    let single = rows_in(data.tg_newtable) == 1 && rows_in(data.tg_oldtable) == 1;
    apply_delta(trigger, &UPDATED, single.then_some((true, true)))
}
entry!(
    tally_sessions_count_update,
    pg_finfo_tally_sessions_count_update,
    count_update,
    on(c"sessions", After, Statement, UPDATE)
);

fn count_delete(trigger: &PgTrigger<'_>) -> TallyResult<pg_sys::Datum> {
    let single = rows_in(trigger.trigger_data().tg_oldtable) == 1;
    apply_delta(trigger, &DELETED, single.then_some((true, false)))
}
entry!(
    tally_sessions_count_delete,
    pg_finfo_tally_sessions_count_delete,
    count_delete,
    on(c"sessions", After, Statement, DELETE)
);

/// Applies an UPDATE or DELETE: `single` says which transition tables (old, new) to
/// read on the one-row path; otherwise `changes` aggregates the whole statement.
fn apply_delta(
    trigger: &PgTrigger<'_>,
    changes: &Changes,
    single: Option<(bool, bool)>,
) -> TallyResult<pg_sys::Datum> {
    let _internal = InternalWrite::begin();
    let _owner = AsExtensionOwner::for_trigger(trigger);
    let _shard = ShardTables::enter(trigger.trigger_data().tg_relation, c"sessions");
    let _planning = IndexOnlyPlanning::begin(ShardTables::all_local());
    remember(None);
    Spi::connect_mut(|client| {
        register_transition_tables(trigger);
        let checks = match single {
            Some((has_old, has_new)) => {
                let data = trigger.trigger_data();
                let old = has_old
                    .then(|| one_row(client, data, Transition::Old))
                    .flatten();
                let new = has_new
                    .then(|| one_row(client, data, Transition::New))
                    .flatten();
                apply_one(client, old.as_ref(), new.as_ref()).checks
            }
            None => {
                let data = trigger.trigger_data();
                let rows = rows_in(data.tg_newtable).max(rows_in(data.tg_oldtable));
                apply_many(client, changes, rows)
            }
        };
        check_limits(client, &checks).map(|_| ())
    })?;
    Ok(pg_sys::Datum::null())
}
