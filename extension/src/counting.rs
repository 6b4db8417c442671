//! Statement-level counting: every INSERT, UPDATE and DELETE on `tally.sessions`
//! (COPY, INSERT … SELECT, ON CONFLICT and cascades included) is aggregated from its
//! transition table into one counter write per (user, period) and per learning plan.
//!
//! Limits ride on the same write: the upsert of the usage row takes its row lock, so
//! inserts for one user and period serialize there, and the reservation count that
//! follows runs with a fresh snapshot taken after the lock was granted.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiClient, SpiTupleTable};
use pgrx::{pg_sys, PgOid, PgTrigger};

use crate::errors::{entry, TallyCode, TallyError, TallyResult};
use crate::internal::InternalWrite;
use crate::settings;

thread_local! {
    static PLANS: RefCell<HashMap<&'static str, Rc<OwnedPreparedStatement>>> = RefCell::new(HashMap::new());
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
                    .unwrap_or_else(|e| panic!("tally: cannot prepare counting query: {e}"))
                    .keep(),
            );
            PLANS.with(|plans| plans.borrow_mut().insert(sql, Rc::clone(&plan)));
            plan
        }
    };
    client
        .update(&*plan, None, args)
        .unwrap_or_else(|e| panic!("tally: counting query failed: {e}"))
}

/// Makes the statement's transition tables (tally_new, tally_old) visible to SPI.
fn register_transition_tables(trigger: &PgTrigger<'_>) {
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
           count(*) FILTER (WHERE k.counter = 'assessments')::int AS assessments_added
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
SELECT up.user_id, up.period_start, up.period_end, c.counter, c.used, c.done, c.added, c.lim
FROM upserted up
JOIN counted cn ON cn.user_id = up.user_id AND cn.period_start = up.period_start
CROSS JOIN LATERAL (VALUES
    ('practice_sessions', up.practice_sessions_used, cn.practice_done, cn.practice_added, cn.practice_sessions_limit),
    ('assessments', up.assessments_used, cn.assessments_done, cn.assessments_added, cn.assessments_limit)
) AS c(counter, used, done, added, lim)
WHERE $1 AND c.added > 0 AND c.lim IS NOT NULL
ORDER BY up.user_id, up.period_start, c.counter
"#;

/// Started sessions still holding a reservation, per candidate (user, period, counter).
/// A separate statement so that its snapshot is taken after the usage row lock.
const RESERVATIONS_SQL: &str = r#"
SELECT (SELECT count(*)
          FROM tally.sessions x
          JOIN tally.session_kinds k ON k.kind = x.kind
         WHERE x.user_id = t.user_id AND x.status = 'started' AND k.counter = t.counter
           AND x.started_at >= t.period_start AND x.started_at < t.period_end
           AND x.started_at > now() - tally.reservation_timeout())::int AS in_progress
FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[], $4::text[])
     WITH ORDINALITY AS t(user_id, period_start, period_end, counter, ord)
ORDER BY t.ord
"#;

/// Signed changes to completed sessions, applied to usage and learning plans.
/// `{changed}` yields (user_id, kind, started_at, learning_plan_id, sign).
macro_rules! delta_sql {
    ($changed:literal) => {
        concat!(
            "WITH changed AS (",
            $changed,
            r#"),
counted AS (
    SELECT c.user_id,
           tally.period_start_for(s.period_anchor, p.period, c.started_at) AS period_start,
           s.period_anchor, p.period,
           coalesce(sum(c.sign) FILTER (WHERE k.counter = 'practice_sessions'), 0)::int AS practice,
           coalesce(sum(c.sign) FILTER (WHERE k.counter = 'assessments'), 0)::int AS assessments
    FROM changed c
    JOIN tally.session_kinds k ON k.kind = c.kind
    JOIN tally.subscriptions s ON s.user_id = c.user_id
    JOIN tally.plans p ON p.plan_id = s.plan_id
    WHERE k.counter <> 'none'
    GROUP BY c.user_id, 2, s.period_anchor, p.period
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
SELECT 1"#
        )
    };
}

const UPDATE_SQL: &str = delta_sql!(
    "SELECT user_id, kind, started_at, learning_plan_id, 1 AS sign FROM tally_new WHERE status = 'completed'
     UNION ALL
     SELECT user_id, kind, started_at, learning_plan_id, -1 FROM tally_old WHERE status = 'completed'"
);

const DELETE_SQL: &str = delta_sql!(
    "SELECT user_id, kind, started_at, learning_plan_id, -1 AS sign FROM tally_old WHERE status = 'completed'"
);

/// A (user, period, counter) that this statement added metered sessions to, under a limit.
struct LimitCheck {
    user_id: String,
    period_start: TimestampWithTimeZone,
    period_end: TimestampWithTimeZone,
    counter: String,
    used: i32,
    done: i32,
    added: i32,
    limit: i32,
}

fn get<T: pgrx::datum::FromDatum + pgrx::datum::IntoDatum>(
    row: &pgrx::spi::SpiHeapTupleData<'_>,
    ordinal: usize,
) -> T {
    row.get::<T>(ordinal)
        .unwrap_or_else(|e| panic!("tally: bad counting result column {ordinal}: {e}"))
        .unwrap_or_else(|| panic!("tally: NULL counting result column {ordinal}"))
}

fn count_insert(trigger: &PgTrigger<'_>) -> TallyResult<pg_sys::Datum> {
    let _internal = InternalWrite::begin();
    Spi::connect_mut(|client| {
        register_transition_tables(trigger);
        let checks: Vec<LimitCheck> = run_cached(
            client,
            INSERT_SQL,
            &[PgOid::BuiltIn(PgBuiltInOids::BOOLOID)],
            &[settings::enforce_limits().into()],
        )
        .map(|row| LimitCheck {
            user_id: get(&row, 1),
            period_start: get(&row, 2),
            period_end: get(&row, 3),
            counter: get(&row, 4),
            used: get(&row, 5),
            done: get(&row, 6),
            added: get(&row, 7),
            limit: get(&row, 8),
        })
        .collect();
        if checks.is_empty() {
            return Ok(());
        }
        let in_progress = reservations(client, &checks);
        for (check, in_progress) in checks.iter().zip(in_progress) {
            if check.used + in_progress > check.limit {
                return Err(quota_exceeded(check, in_progress));
            }
        }
        Ok(())
    })?;
    Ok(pg_sys::Datum::null())
}
entry!(
    tally_sessions_count_insert,
    pg_finfo_tally_sessions_count_insert,
    count_insert
);

fn reservations(client: &mut SpiClient<'_>, checks: &[LimitCheck]) -> Vec<i32> {
    let users: Vec<String> = checks.iter().map(|c| c.user_id.clone()).collect();
    let starts: Vec<TimestampWithTimeZone> = checks.iter().map(|c| c.period_start).collect();
    let ends: Vec<TimestampWithTimeZone> = checks.iter().map(|c| c.period_end).collect();
    let counters: Vec<String> = checks.iter().map(|c| c.counter.clone()).collect();
    let text_array = PgOid::BuiltIn(PgBuiltInOids::TEXTARRAYOID);
    let ts_array = PgOid::BuiltIn(PgBuiltInOids::TIMESTAMPTZARRAYOID);
    run_cached(
        client,
        RESERVATIONS_SQL,
        &[text_array, ts_array, ts_array, text_array],
        &[users.into(), starts.into(), ends.into(), counters.into()],
    )
    .map(|row| get::<i32>(&row, 1))
    .collect()
}

fn quota_exceeded(check: &LimitCheck, in_progress: i32) -> TallyError {
    // Report the state before this statement: the statement is rejected whole.
    let used_before = check.used - check.done;
    let in_progress_before = in_progress - (check.added - check.done);
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
    apply_delta(trigger, UPDATE_SQL)
}
entry!(
    tally_sessions_count_update,
    pg_finfo_tally_sessions_count_update,
    count_update
);

fn count_delete(trigger: &PgTrigger<'_>) -> TallyResult<pg_sys::Datum> {
    apply_delta(trigger, DELETE_SQL)
}
entry!(
    tally_sessions_count_delete,
    pg_finfo_tally_sessions_count_delete,
    count_delete
);

fn apply_delta(trigger: &PgTrigger<'_>, sql: &'static str) -> TallyResult<pg_sys::Datum> {
    let _internal = InternalWrite::begin();
    Spi::connect_mut(|client| {
        register_transition_tables(trigger);
        run_cached(client, sql, &[], &[]);
    });
    Ok(pg_sys::Datum::null())
}
