//! Statement-level counting: every INSERT, UPDATE and DELETE on `tally.sessions`
//! (COPY, INSERT … SELECT, ON CONFLICT and cascades included) is aggregated from its
//! transition table into one counter write per (user, period) and per learning plan.
//!
//! Limits ride on the same write: the upsert of the usage row takes its row lock, so
//! inserts for one user and period serialize there, and the reservation count that
//! follows runs with a fresh snapshot taken after the lock was granted.
//!
//! A statement that changed exactly one row (the API's case) takes a short path of
//! small prepared statements with scalar parameters; any other statement takes the
//! set-based path. Both apply the same deltas and the same limit check.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiClient, SpiTupleTable};
use pgrx::{pg_sys, PgOid, PgTrigger};

use crate::binding::{on, Level::*, Timing::*, DELETE, INSERT, UPDATE};
use crate::errors::{entry, TallyCode, TallyError, TallyResult};
use crate::internal::InternalWrite;
use crate::privilege::AsExtensionOwner;
use crate::settings;

thread_local! {
    static PLANS: RefCell<HashMap<&'static str, Rc<OwnedPreparedStatement>>> = RefCell::new(HashMap::new());
    static LAST_COUNTED: RefCell<Option<Counted>> = const { RefCell::new(None) };
}

/// The counters the last single-row INSERT of this backend left behind, as its
/// trigger saw them right after the write (it holds the usage row lock until commit).
/// `tally.session_usage_document` builds the usage document from them instead of
/// reading them again. Every counting statement replaces or clears it, any later
/// write in the transaction makes it stale (`command_id`), and rolling back a
/// subtransaction or ending the transaction forgets it.
pub(crate) struct Counted {
    /// The command counter right after the count: any later write advances it.
    pub command_id: pg_sys::CommandId,
    pub session_id: pgrx::Uuid,
    pub user_id: String,
    pub plan_id: String,
    pub anchor: TimestampWithTimeZone,
    pub period: Interval,
    pub period_start: TimestampWithTimeZone,
    pub period_end: TimestampWithTimeZone,
    pub practice_used: i32,
    pub assessments_used: i32,
    pub practice_limit: Option<i32>,
    pub assessments_limit: Option<i32>,
    /// Reservations (practice, assessments), when the limit check counted them.
    pub in_progress: Option<(i32, i32)>,
}

fn remember(counted: Option<Counted>) {
    LAST_COUNTED.with(|last| *last.borrow_mut() = counted);
}

/// What the last counting statement left behind, if it was the single-row INSERT of
/// `session_id` and nothing was written since. Taken, so it is used at most once.
pub(crate) fn take_counted(session_id: pgrx::Uuid) -> Option<Counted> {
    LAST_COUNTED
        .with(|last| last.borrow_mut().take())
        .filter(|counted| counted.session_id == session_id && counted.command_id == command_id())
}

fn command_id() -> pg_sys::CommandId {
    // SAFETY: reads the backend's current command counter without marking it used.
    unsafe { pg_sys::GetCurrentCommandId(false) }
}

/// Forgets what counting left behind (transaction end, subtransaction rollback).
pub(crate) fn forget_counted() {
    remember(None);
}

/// Runs `sql` through a plan prepared once per backend. The plan cache re-plans by
/// itself when the tables change.
pub(crate) fn run_cached<'conn>(
    client: &mut SpiClient<'conn>,
    sql: &'static str,
    types: &[PgOid],
    args: &[DatumWithOid<'_>],
) -> SpiTupleTable<'conn> {
    let cached = PLANS.with(|plans| plans.borrow().get(sql).cloned());
    let plan = match cached {
        Some(plan) => plan,
        None => {
            let plan = Rc::new(
                client
                    .prepare_mut(sql, types)
                    .unwrap_or_else(|e| panic!("tally: cannot prepare query: {e}"))
                    .keep(),
            );
            PLANS.with(|plans| plans.borrow_mut().insert(sql, Rc::clone(&plan)));
            plan
        }
    };
    client
        .update(&*plan, None, args)
        .unwrap_or_else(|e| panic!("tally: query failed: {e}"))
}

// Parameter types of the prepared statements.
pub(crate) const TEXT: PgOid = PgOid::BuiltIn(PgBuiltInOids::TEXTOID);
const TEXT_ARRAY: PgOid = PgOid::BuiltIn(PgBuiltInOids::TEXTARRAYOID);
pub(crate) const TIMESTAMPTZ: PgOid = PgOid::BuiltIn(PgBuiltInOids::TIMESTAMPTZOID);
const TIMESTAMPTZ_ARRAY: PgOid = PgOid::BuiltIn(PgBuiltInOids::TIMESTAMPTZARRAYOID);
pub(crate) const INT4: PgOid = PgOid::BuiltIn(PgBuiltInOids::INT4OID);
const UUID: PgOid = PgOid::BuiltIn(PgBuiltInOids::UUIDOID);
const BOOL: PgOid = PgOid::BuiltIn(PgBuiltInOids::BOOLOID);

/// Makes the statement's transition tables (tally_new, tally_old) visible to SPI.
pub(crate) fn register_transition_tables(trigger: &PgTrigger<'_>) {
    let data = trigger.trigger_data() as *const pg_sys::TriggerData as *mut pg_sys::TriggerData;
    // SAFETY: called inside an SPI connection with the trigger data PostgreSQL passed in.
    let rc = unsafe { pg_sys::SPI_register_trigger_data(data) };
    assert!(rc >= 0, "tally: SPI_register_trigger_data failed ({rc})");
}

const INSERT_SQL: &str = r#"
WITH counted AS (
    SELECT n.user_id,
           tally.period_start_for(s.period_anchor, p.period, n.started_at) AS period_start,
           s.period_anchor, p.period, p.practice_sessions_limit, p.assessments_limit,
           count(*) FILTER (WHERE k.counter = 'practice_sessions' AND n.status = 'completed')::int AS practice_done,
           count(*) FILTER (WHERE k.counter = 'assessments' AND n.status = 'completed')::int AS assessments_done,
           count(*) FILTER (WHERE k.counter = 'practice_sessions')::int AS practice_added,
           count(*) FILTER (WHERE k.counter = 'assessments')::int AS assessments_added,
           count(*) FILTER (WHERE k.counter = 'practice_sessions' AND n.status = 'started'
                              AND n.started_at <= now() - tally.reservation_timeout())::int AS practice_unheld,
           count(*) FILTER (WHERE k.counter = 'assessments' AND n.status = 'started'
                              AND n.started_at <= now() - tally.reservation_timeout())::int AS assessments_unheld
    FROM tally_new n
    JOIN tally.session_kinds k ON k.kind = n.kind
    JOIN tally.subscriptions s ON s.user_id = n.user_id
    JOIN tally.plans p ON p.plan_id = s.plan_id
    WHERE n.status <> 'abandoned' AND k.counter <> 'none'
    GROUP BY n.user_id, 2, s.period_anchor, p.period, p.practice_sessions_limit, p.assessments_limit
),
upserted AS (
    INSERT INTO tally.usage AS u (user_id, period_start, period_end, practice_sessions_used, assessments_used)
    SELECT user_id, period_start, tally.period_end_for(period_anchor, period, period_start),
           practice_done, assessments_done
    FROM counted
    ORDER BY user_id, period_start
    ON CONFLICT (user_id, period_start) DO UPDATE
       SET practice_sessions_used = u.practice_sessions_used + excluded.practice_sessions_used,
           assessments_used = u.assessments_used + excluded.assessments_used
    RETURNING u.user_id, u.period_start, u.period_end, u.practice_sessions_used, u.assessments_used
),
plans_done AS (
    UPDATE tally.learning_plans lp
       SET completed_sessions = lp.completed_sessions + d.done
      FROM (SELECT learning_plan_id, count(*)::int AS done
              FROM tally_new
             WHERE status = 'completed' AND learning_plan_id IS NOT NULL
             GROUP BY learning_plan_id) d
     WHERE lp.learning_plan_id = d.learning_plan_id
)
SELECT up.user_id, up.period_start, up.period_end, c.counter, c.used, c.done, c.added, c.lim, c.unheld
FROM upserted up
JOIN counted cn ON cn.user_id = up.user_id AND cn.period_start = up.period_start
CROSS JOIN LATERAL (VALUES
    ('practice_sessions', up.practice_sessions_used, cn.practice_done, cn.practice_added, cn.practice_sessions_limit, cn.practice_unheld),
    ('assessments', up.assessments_used, cn.assessments_done, cn.assessments_added, cn.assessments_limit, cn.assessments_unheld)
) AS c(counter, used, done, added, lim, unheld)
WHERE $1 AND c.added > 0 AND c.lim IS NOT NULL
ORDER BY up.user_id, up.period_start, c.counter
"#;

/// Started sessions still holding a reservation in one (user, period), per counter
/// (practice, assessments): the same index range either way, and the usage document
/// needs both. A separate statement so that its snapshot is taken after the usage row
/// lock; scalar parameters so that its plan is prepared once.
const RESERVATIONS_SQL: &str = r#"
SELECT count(*) FILTER (WHERE k.counter = 'practice_sessions')::int,
       count(*) FILTER (WHERE k.counter = 'assessments')::int
  FROM tally.sessions x
  JOIN tally.session_kinds k ON k.kind = x.kind
 WHERE x.user_id = $1 AND x.status = 'started'
   AND x.started_at >= $2 AND x.started_at < $3
   AND x.started_at > now() - tally.reservation_timeout()
"#;

/// The same count for many candidates at once, in one statement (bulk loads).
const RESERVATIONS_MANY_SQL: &str = r#"
SELECT (SELECT count(*)
          FROM tally.sessions x
          JOIN tally.session_kinds k ON k.kind = x.kind
         WHERE x.user_id = t.user_id AND x.status = 'started' AND k.counter = t.counter
           AND x.started_at >= t.period_start AND x.started_at < t.period_end
           AND x.started_at > now() - tally.reservation_timeout())::int
  FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[])
       WITH ORDINALITY AS t(user_id, counter, period_start, period_end, ord)
 ORDER BY t.ord
"#;

/// The single changed row of a statement, with what counting it needs.
macro_rules! one_row_sql {
    ($table:literal) => {
        concat!(
            "SELECT r.user_id, r.status, r.started_at, r.learning_plan_id, k.counter,
                    s.period_anchor, p.period, p.practice_sessions_limit, p.assessments_limit,
                    r.session_id, s.plan_id,
                    r.status = 'started' AND r.started_at <= now() - tally.reservation_timeout()
               FROM ",
            $table,
            " r
               JOIN tally.session_kinds k ON k.kind = r.kind
               JOIN tally.subscriptions s ON s.user_id = r.user_id
               JOIN tally.plans p ON p.plan_id = s.plan_id"
        )
    };
}
const NEW_ROW_SQL: &str = one_row_sql!("tally_new");
const OLD_ROW_SQL: &str = one_row_sql!("tally_old");

const RAISE_ONE_SQL: &str = r#"
INSERT INTO tally.usage AS u (user_id, period_start, period_end, practice_sessions_used, assessments_used)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (user_id, period_start) DO UPDATE
   SET practice_sessions_used = u.practice_sessions_used + excluded.practice_sessions_used,
       assessments_used = u.assessments_used + excluded.assessments_used
RETURNING practice_sessions_used, assessments_used
"#;

const LOWER_ONE_SQL: &str = r#"
UPDATE tally.usage
   SET practice_sessions_used = practice_sessions_used + $3,
       assessments_used = assessments_used + $4
 WHERE user_id = $1 AND period_start = $2
"#;

const PLAN_ONE_SQL: &str =
    "UPDATE tally.learning_plans SET completed_sessions = completed_sessions + $2 WHERE learning_plan_id = $1";

/// Signed changes to completed sessions, applied to usage and learning plans.
/// `{changed}` yields (user_id, kind, started_at, learning_plan_id, sign, unheld):
/// `unheld` marks a completion whose reservation had expired, which the limit
/// checks like a new session. Returns the limit checks those need (with `$1`,
/// tally.enforce_limits), in the shape of INSERT_SQL's.
macro_rules! delta_sql {
    ($changed:literal) => {
        concat!(
            "WITH changed AS (",
            $changed,
            r#"),
counted AS (
    SELECT c.user_id,
           tally.period_start_for(s.period_anchor, p.period, c.started_at) AS period_start,
           s.period_anchor, p.period, p.practice_sessions_limit, p.assessments_limit,
           coalesce(sum(c.sign) FILTER (WHERE k.counter = 'practice_sessions'), 0)::int AS practice,
           coalesce(sum(c.sign) FILTER (WHERE k.counter = 'assessments'), 0)::int AS assessments,
           count(*) FILTER (WHERE k.counter = 'practice_sessions' AND c.unheld)::int AS practice_unheld,
           count(*) FILTER (WHERE k.counter = 'assessments' AND c.unheld)::int AS assessments_unheld
    FROM changed c
    JOIN tally.session_kinds k ON k.kind = c.kind
    JOIN tally.subscriptions s ON s.user_id = c.user_id
    JOIN tally.plans p ON p.plan_id = s.plan_id
    WHERE k.counter <> 'none'
    GROUP BY c.user_id, 2, s.period_anchor, p.period, p.practice_sessions_limit, p.assessments_limit
),
raised AS (
    INSERT INTO tally.usage AS u (user_id, period_start, period_end, practice_sessions_used, assessments_used)
    SELECT user_id, period_start, tally.period_end_for(period_anchor, period, period_start), practice, assessments
    FROM counted
    WHERE practice > 0 OR assessments > 0
    ORDER BY user_id, period_start
    ON CONFLICT (user_id, period_start) DO UPDATE
       SET practice_sessions_used = u.practice_sessions_used + excluded.practice_sessions_used,
           assessments_used = u.assessments_used + excluded.assessments_used
    RETURNING u.user_id, u.period_start, u.period_end, u.practice_sessions_used, u.assessments_used
),
lowered AS (
    UPDATE tally.usage u
       SET practice_sessions_used = u.practice_sessions_used + c.practice,
           assessments_used = u.assessments_used + c.assessments
      FROM counted c
     WHERE u.user_id = c.user_id AND u.period_start = c.period_start
       AND c.practice <= 0 AND c.assessments <= 0 AND (c.practice < 0 OR c.assessments < 0)
),
plans_changed AS (
    UPDATE tally.learning_plans lp
       SET completed_sessions = lp.completed_sessions + d.delta
      FROM (SELECT learning_plan_id, sum(sign)::int AS delta
              FROM changed
             WHERE learning_plan_id IS NOT NULL
             GROUP BY learning_plan_id
            HAVING sum(sign) <> 0) d
     WHERE lp.learning_plan_id = d.learning_plan_id
)
SELECT up.user_id, up.period_start, up.period_end, c.counter, c.used, c.done, c.added, c.lim, 0
FROM raised up
JOIN counted cn ON cn.user_id = up.user_id AND cn.period_start = up.period_start
CROSS JOIN LATERAL (VALUES
    ('practice_sessions', up.practice_sessions_used, cn.practice, cn.practice_unheld, cn.practice_sessions_limit),
    ('assessments', up.assessments_used, cn.assessments, cn.assessments_unheld, cn.assessments_limit)
) AS c(counter, used, done, added, lim)
WHERE $1 AND c.added > 0 AND c.lim IS NOT NULL
ORDER BY up.user_id, up.period_start, c.counter"#
        )
    };
}

// session_id never changes (sessions_check_update), so it pairs each new row
// with its old one.
const UPDATE_SQL: &str = delta_sql!(
    "SELECT n.user_id, n.kind, n.started_at, n.learning_plan_id, 1 AS sign,
            o.status = 'started' AND o.started_at <= now() - tally.reservation_timeout() AS unheld
       FROM tally_new n JOIN tally_old o ON o.session_id = n.session_id
      WHERE n.status = 'completed'
     UNION ALL
     SELECT user_id, kind, started_at, learning_plan_id, -1, false FROM tally_old WHERE status = 'completed'"
);

const DELETE_SQL: &str = delta_sql!(
    "SELECT user_id, kind, started_at, learning_plan_id, -1 AS sign, false AS unheld
       FROM tally_old WHERE status = 'completed'"
);

/// A (user, period, counter) that this statement added metered sessions to, under a limit.
struct LimitCheck {
    user_id: String,
    period_start: TimestampWithTimeZone,
    period_end: TimestampWithTimeZone,
    counter: String,
    /// Completed sessions in the period after this statement.
    used: i32,
    /// How many of those this statement completed.
    done: i32,
    /// Sessions this statement adds to the limit: new started or completed ones,
    /// and completions whose reservation had expired.
    added: i32,
    limit: i32,
    /// New started sessions whose reservation expired at birth: they hold no slot
    /// (not in the reservation count) but each needs one free when inserted.
    unheld: i32,
}

impl LimitCheck {
    fn from_row(row: &pgrx::spi::SpiHeapTupleData<'_>) -> Self {
        LimitCheck {
            user_id: get(row, 1),
            period_start: get(row, 2),
            period_end: get(row, 3),
            counter: get(row, 4),
            used: get(row, 5),
            done: get(row, 6),
            added: get(row, 7),
            limit: get(row, 8),
            unheld: get(row, 9),
        }
    }
}

fn get<T: pgrx::datum::FromDatum + pgrx::datum::IntoDatum>(
    row: &pgrx::spi::SpiHeapTupleData<'_>,
    ordinal: usize,
) -> T {
    get_nullable(row, ordinal)
        .unwrap_or_else(|| panic!("tally: NULL counting result column {ordinal}"))
}

/// A column of a counting query that may be NULL.
fn get_nullable<T: pgrx::datum::FromDatum + pgrx::datum::IntoDatum>(
    row: &pgrx::spi::SpiHeapTupleData<'_>,
    ordinal: usize,
) -> Option<T> {
    row.get::<T>(ordinal)
        .unwrap_or_else(|e| panic!("tally: bad counting result column {ordinal}: {e}"))
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
    remember(None);
    let single = rows_in(trigger.trigger_data().tg_newtable) == 1;
    Spi::connect_mut(|client| {
        register_transition_tables(trigger);
        if single {
            let row = one_row(client, NEW_ROW_SQL);
            let applied = apply_one(client, None, row.as_ref());
            let in_progress = check_limits(client, &applied.checks)?;
            if let (Some(facts), Some(usage)) = (row, applied.usage) {
                remember(Some(Counted {
                    command_id: command_id(),
                    session_id: facts.session_id,
                    user_id: facts.user_id,
                    plan_id: facts.plan_id,
                    anchor: facts.anchor,
                    period: facts.period,
                    period_start: usage.period_start,
                    period_end: usage.period_end,
                    practice_used: usage.practice_used,
                    assessments_used: usage.assessments_used,
                    practice_limit: facts.practice_limit,
                    assessments_limit: facts.assessments_limit,
                    in_progress,
                }));
            }
            Ok(())
        } else {
            let checks = insert_many(client);
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

/// The set-based path: one aggregate over the whole transition table.
fn insert_many(client: &mut SpiClient<'_>) -> Vec<LimitCheck> {
    run_cached(
        client,
        INSERT_SQL,
        &[BOOL],
        &[settings::enforce_limits().into()],
    )
    .map(|row| LimitCheck::from_row(&row))
    .collect()
}

/// What counting needs to know of one session row.
struct RowFacts {
    user_id: String,
    status: String,
    started_at: TimestampWithTimeZone,
    learning_plan_id: Option<pgrx::Uuid>,
    counter: String,
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

/// What applying one row did: the limit check it needs, and the usage row it raised.
struct Applied {
    checks: Vec<LimitCheck>,
    usage: Option<UsageAfter>,
}

impl RowFacts {
    fn completed(&self) -> bool {
        self.status == "completed"
    }

    fn metered(&self) -> bool {
        self.counter != "none"
    }

    fn limit(&self) -> Option<i32> {
        of_counter(&self.counter, self.practice_limit, self.assessments_limit)
    }

    fn period_bounds(&self) -> (TimestampWithTimeZone, TimestampWithTimeZone) {
        crate::period::period_bounds(self.anchor, &self.period, self.started_at)
    }

    /// (practice, assessments) deltas for a change of `sign` to this session.
    fn deltas(&self, sign: i32) -> (i32, i32) {
        match self.counter.as_str() {
            "practice_sessions" => (sign, 0),
            "assessments" => (0, sign),
            _ => (0, 0),
        }
    }
}

/// The value of a metered `counter` out of a (practice, assessments) pair.
fn of_counter<T>(counter: &str, practice: T, assessments: T) -> T {
    if counter == "practice_sessions" {
        practice
    } else {
        assessments
    }
}

fn one_row(client: &mut SpiClient<'_>, sql: &'static str) -> Option<RowFacts> {
    run_cached(client, sql, &[], &[])
        .next()
        .map(|row| RowFacts {
            user_id: get(&row, 1),
            status: get(&row, 2),
            started_at: get(&row, 3),
            learning_plan_id: get_nullable(&row, 4),
            counter: get(&row, 5),
            anchor: get(&row, 6),
            period: get(&row, 7),
            practice_limit: get_nullable(&row, 8),
            assessments_limit: get_nullable(&row, 9),
            session_id: get(&row, 10),
            plan_id: get(&row, 11),
            expired: get(&row, 12),
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

    // user_id, kind and started_at never change, so both rows share one usage row.
    if let Some(facts) = new.or(old).filter(|r| r.metered()) {
        let sign = counted(new) - counted(old);
        let (practice, assessments) = facts.deltas(sign);
        let (start, end) = facts.period_bounds();
        let reserves = old.is_none() && new.is_some_and(|n| n.status != "abandoned");
        // Completing a session whose reservation expired takes a slot it no longer
        // held: it is checked like a new session.
        let retakes = old.is_some_and(|o| o.expired) && sign > 0;
        if sign > 0 || reserves {
            // The upsert also takes the row lock that serializes limit checks.
            let mut rows = run_cached(
                client,
                RAISE_ONE_SQL,
                &[TEXT, TIMESTAMPTZ, TIMESTAMPTZ, INT4, INT4],
                &[
                    facts.user_id.clone().into(),
                    start.into(),
                    end.into(),
                    practice.into(),
                    assessments.into(),
                ],
            );
            let row = rows.next().expect("an upsert returns its row");
            let (practice_used, assessments_used): (i32, i32) = (get(&row, 1), get(&row, 2));
            let used = of_counter(&facts.counter, practice_used, assessments_used);
            usage = Some(UsageAfter {
                period_start: start,
                period_end: end,
                practice_used,
                assessments_used,
            });
            let checked = (reserves || retakes) && settings::enforce_limits();
            if let (true, Some(limit)) = (checked, facts.limit()) {
                checks.push(LimitCheck {
                    user_id: facts.user_id.clone(),
                    period_start: start,
                    period_end: end,
                    counter: facts.counter.clone(),
                    used,
                    done: sign,
                    added: 1,
                    limit,
                    unheld: new.filter(|n| reserves && n.expired).map_or(0, |_| 1),
                });
            }
        } else if sign < 0 {
            run_cached(
                client,
                LOWER_ONE_SQL,
                &[TEXT, TIMESTAMPTZ, INT4, INT4],
                &[
                    facts.user_id.clone().into(),
                    start.into(),
                    practice.into(),
                    assessments.into(),
                ],
            );
        }
    }

    // Learning plans count completed sessions of any kind. A session that stays
    // completed keeps its plan (only duration_seconds may change), so its two
    // changes cancel out.
    let plan_change = |row: Option<&RowFacts>, sign: i32| {
        row.filter(|r| r.completed())
            .and_then(|r| r.learning_plan_id)
            .map(|id| (id, sign))
    };
    let changes = [plan_change(old, -1), plan_change(new, 1)];
    let cancel_out = matches!(changes, [Some((a, _)), Some((b, _))] if a == b);
    for (plan, delta) in changes.into_iter().flatten().filter(|_| !cancel_out) {
        run_cached(
            client,
            PLAN_ONE_SQL,
            &[UUID, INT4],
            &[plan.into(), delta.into()],
        );
    }
    Applied { checks, usage }
}

/// `enable_seqscan = off` while alive, undone at drop (or by PostgreSQL at abort).
///
/// The reservation count is a lookup in a partial index. Its plan is cached for the
/// life of the connection, and a plan made while tally.sessions is empty (a fresh
/// install, a test) would otherwise be a sequential scan kept as the table grows.
pub(crate) struct IndexOnlyPlanning(std::os::raw::c_int);

impl IndexOnlyPlanning {
    pub(crate) fn begin() -> Self {
        // SAFETY: a local GUC change inside a nest level, as a function's SET clause does.
        unsafe {
            let level = pg_sys::NewGUCNestLevel();
            pg_sys::set_config_option(
                c"enable_seqscan".as_ptr(),
                c"off".as_ptr(),
                pg_sys::GucContext::PGC_USERSET,
                pg_sys::GucSource::PGC_S_SESSION,
                pg_sys::GucAction::GUC_ACTION_SAVE,
                true,
                0,
                false,
            );
            IndexOnlyPlanning(level)
        }
    }
}

impl Drop for IndexOnlyPlanning {
    fn drop(&mut self) {
        // SAFETY: closes the nest level opened in begin().
        unsafe { pg_sys::AtEOXact_GUC(true, self.0) };
    }
}

/// Refuses the statement if any (user, period, counter) it added to is now past its
/// limit once reservations are counted. For a single check, returns the reservations
/// it counted in that user's period: (practice, assessments).
fn check_limits(
    client: &mut SpiClient<'_>,
    checks: &[LimitCheck],
) -> TallyResult<Option<(i32, i32)>> {
    let _planning = (!checks.is_empty()).then(IndexOnlyPlanning::begin);
    let mut both = None;
    let in_progress: Vec<i32> = match checks {
        [] => Vec::new(),
        [check] => {
            let row = run_cached(
                client,
                RESERVATIONS_SQL,
                &[TEXT, TIMESTAMPTZ, TIMESTAMPTZ],
                &[
                    check.user_id.clone().into(),
                    check.period_start.into(),
                    check.period_end.into(),
                ],
            )
            .next()
            .expect("a count returns a row");
            let (practice, assessments): (i32, i32) = (get(&row, 1), get(&row, 2));
            both = Some((practice, assessments));
            vec![of_counter(&check.counter, practice, assessments)]
        }
        many => {
            let users: Vec<String> = many.iter().map(|c| c.user_id.clone()).collect();
            let counters: Vec<String> = many.iter().map(|c| c.counter.clone()).collect();
            let starts: Vec<TimestampWithTimeZone> = many.iter().map(|c| c.period_start).collect();
            let ends: Vec<TimestampWithTimeZone> = many.iter().map(|c| c.period_end).collect();
            run_cached(
                client,
                RESERVATIONS_MANY_SQL,
                &[TEXT_ARRAY, TEXT_ARRAY, TIMESTAMPTZ_ARRAY, TIMESTAMPTZ_ARRAY],
                &[users.into(), counters.into(), starts.into(), ends.into()],
            )
            .map(|row| get(&row, 1))
            .collect()
        }
    };
    for (check, in_progress) in checks.iter().zip(in_progress) {
        // Checked one by one, a started session whose reservation expired at birth
        // needs one free slot but holds none after it, so any number of them
        // need just the one.
        if check.used + in_progress + check.unheld.min(1) > check.limit {
            return Err(quota_exceeded(check, in_progress));
        }
    }
    Ok(both)
}

fn quota_exceeded(check: &LimitCheck, in_progress: i32) -> TallyError {
    // Report the state before this statement: the statement is rejected whole.
    let used_before = check.used - check.done;
    let in_progress_before = in_progress - (check.added - check.done - check.unheld);
    TallyError::new(
        TallyCode::QuotaExceeded,
        format!(
            "quota exceeded: user \"{}\" has used {} of {} {} in the period ending {}",
            check.user_id,
            used_before,
            check.limit,
            check.counter,
            crate::format_timestamp(check.period_end)
        ),
    )
    // key=value pairs for clients to parse; user_id last because it may contain spaces
    .detail(format!(
        "counter={} used={} in_progress={} limit={} adding={} period_start={} period_end={} user_id={}",
        check.counter,
        used_before,
        in_progress_before,
        check.limit,
        check.added,
        crate::format_timestamp(check.period_start),
        crate::format_timestamp(check.period_end),
        check.user_id
    ))
    .hint(
        "Wait for the next billing period or move the subscription to a plan with a higher limit. \
         A superuser loading historical data can SET tally.enforce_limits = off.",
    )
}

fn count_update(trigger: &PgTrigger<'_>) -> TallyResult<pg_sys::Datum> {
    let data = trigger.trigger_data();
    let single = rows_in(data.tg_newtable) == 1 && rows_in(data.tg_oldtable) == 1;
    apply_delta(trigger, UPDATE_SQL, single.then_some((true, true)))
}
entry!(
    tally_sessions_count_update,
    pg_finfo_tally_sessions_count_update,
    count_update,
    on(c"sessions", After, Statement, UPDATE)
);

fn count_delete(trigger: &PgTrigger<'_>) -> TallyResult<pg_sys::Datum> {
    let single = rows_in(trigger.trigger_data().tg_oldtable) == 1;
    apply_delta(trigger, DELETE_SQL, single.then_some((true, false)))
}
entry!(
    tally_sessions_count_delete,
    pg_finfo_tally_sessions_count_delete,
    count_delete,
    on(c"sessions", After, Statement, DELETE)
);

/// Applies an UPDATE or DELETE: `single` says which transition tables (old, new) to
/// read on the one-row path; otherwise `sql` aggregates the whole statement.
fn apply_delta(
    trigger: &PgTrigger<'_>,
    sql: &'static str,
    single: Option<(bool, bool)>,
) -> TallyResult<pg_sys::Datum> {
    let _internal = InternalWrite::begin();
    let _owner = AsExtensionOwner::for_trigger(trigger);
    remember(None);
    Spi::connect_mut(|client| {
        register_transition_tables(trigger);
        match single {
            Some((has_old, has_new)) => {
                let old = if has_old {
                    one_row(client, OLD_ROW_SQL)
                } else {
                    None
                };
                let new = if has_new {
                    one_row(client, NEW_ROW_SQL)
                } else {
                    None
                };
                let applied = apply_one(client, old.as_ref(), new.as_ref());
                check_limits(client, &applied.checks).map(|_| ())
            }
            None => {
                let checks: Vec<LimitCheck> =
                    run_cached(client, sql, &[BOOL], &[settings::enforce_limits().into()])
                        .map(|row| LimitCheck::from_row(&row))
                        .collect();
                check_limits(client, &checks).map(|_| ())
            }
        }
    })?;
    Ok(pg_sys::Datum::null())
}
