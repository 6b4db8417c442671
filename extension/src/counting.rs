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

use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::{pg_sys, PgTrigger};

use crate::binding::{on, Level::*, Timing::*, DELETE, INSERT, UPDATE};
use crate::counted::{command_id, remember, Counted};
use crate::counter::Counter;
use crate::errors::{entry, TallyResult};
use crate::internal::InternalWrite;
use crate::limits::{check_limits, LimitCheck};
use crate::privilege::AsExtensionOwner;
use crate::settings;
use crate::spi::{
    get, get_nullable, register_transition_tables, run_cached, BOOL, INT4, TEXT, TIMESTAMPTZ, UUID,
};

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

/// What applying one row did: the limit check it needs, and the usage row it raised.
struct Applied {
    checks: Vec<LimitCheck>,
    usage: Option<UsageAfter>,
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

fn one_row(client: &mut SpiClient<'_>, sql: &'static str) -> Option<RowFacts> {
    run_cached(client, sql, &[], &[])
        .next()
        .map(|row| RowFacts {
            user_id: get(&row, 1),
            status: get(&row, 2),
            started_at: get(&row, 3),
            learning_plan_id: get_nullable(&row, 4),
            counter: Counter::from_sql(&get::<String>(&row, 5)),
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
    if let Some(facts) = new.or(old).filter(|r| r.counter.metered()) {
        let sign = counted(new) - counted(old);
        let (practice, assessments) = facts.counter.deltas(sign);
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
            let used = facts.counter.of(practice_used, assessments_used);
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
                    counter: facts.counter,
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
