//! `tally.verify()` proves the counters agree with the sessions; `tally.repair()` fixes
//! every one that does not and records each fix in `tally.adjustments`.

use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;

use crate::domain::meter::Slot;
use crate::pg::privilege::CatalogSearchPath;
use crate::pg::write_mark::InternalWrite;

/// Every counter that disagrees with a recount from tally.sessions.
const VERIFY_SQL: &str = r#"
WITH compared AS (
    SELECT coalesce(u.user_id, a.user_id) AS user_id,
           coalesce(u.period_start, a.period_start) AS period_start,
           coalesce(u.practice_sessions_used, 0)::bigint AS stored_practice,
           coalesce(a.practice_sessions_used, 0)::bigint AS actual_practice,
           coalesce(u.assessments_used, 0)::bigint AS stored_assessments,
           coalesce(a.assessments_used, 0)::bigint AS actual_assessments
    FROM tally.usage u
    -- Joined on the view itself: on Citus both sides are then co-located by user_id.
    FULL JOIN tally.usage_recount a ON a.user_id = u.user_id AND a.period_start = u.period_start
),
plans AS (
    SELECT lp.user_id, lp.learning_plan_id, lp.completed_sessions, coalesce(done.actual, 0) AS actual
    FROM tally.learning_plans lp
    LEFT JOIN (SELECT x.user_id, x.learning_plan_id, count(*) AS actual
                 FROM tally.sessions x
                WHERE x.status = 'completed' AND x.learning_plan_id IS NOT NULL
                GROUP BY 1, 2) done
           ON done.user_id = lp.user_id AND done.learning_plan_id = lp.learning_plan_id
)
SELECT 'usage' AS object, user_id AS id, period_start, 'practice_sessions_used' AS counter,
       stored_practice AS stored, actual_practice AS actual, user_id
FROM compared WHERE stored_practice <> actual_practice
UNION ALL
SELECT 'usage', user_id, period_start, 'assessments_used', stored_assessments, actual_assessments, user_id
FROM compared WHERE stored_assessments <> actual_assessments
UNION ALL
SELECT 'learning_plan', learning_plan_id::text, NULL, 'completed_sessions', completed_sessions::bigint, actual, user_id
FROM plans WHERE completed_sessions <> actual
ORDER BY 1, 2, 3, 4
"#;

struct Drift {
    object: String,
    id: String,
    period_start: Option<TimestampWithTimeZone>,
    counter: String,
    stored: i64,
    actual: i64,
    /// The user the counter belongs to (every key on Citus leads with it).
    user_id: String,
}

fn find_drift(client: &mut SpiClient<'_>) -> Vec<Drift> {
    client
        .update(VERIFY_SQL, None, &[])
        .unwrap_or_else(|e| panic!("tally: verify query failed: {e}"))
        .map(|row| Drift {
            object: row.get(1).ok().flatten().unwrap_or_default(),
            id: row.get(2).ok().flatten().unwrap_or_default(),
            period_start: row.get(3).ok().flatten(),
            counter: row.get(4).ok().flatten().unwrap_or_default(),
            stored: row.get(5).ok().flatten().unwrap_or_default(),
            actual: row.get(6).ok().flatten().unwrap_or_default(),
            user_id: row.get(7).ok().flatten().unwrap_or_default(),
        })
        .collect()
}

/// One row per counter that disagrees with the sessions; no rows means consistent.
#[pg_extern(volatile)]
pub fn verify() -> TableIterator<
    'static,
    (
        name!(object, String),
        name!(id, String),
        name!(period_start, Option<TimestampWithTimeZone>),
        name!(counter, String),
        name!(stored, i64),
        name!(actual, i64),
    ),
> {
    crate::entry::served::require();
    let rows = {
        let _path = CatalogSearchPath::push();
        Spi::connect_mut(find_drift)
    };
    TableIterator::new(rows.into_iter().map(|d| {
        (
            d.object,
            d.id,
            d.period_start,
            d.counter,
            d.stored,
            d.actual,
        )
    }))
}

/// The one value of a one-column query; None when it returns no row (a period
/// without completed sessions has no recount row) or NULL.
fn one_i64(client: &mut SpiClient<'_>, sql: &str, args: &[DatumWithOid<'_>]) -> Option<i64> {
    let rows = client
        .update(sql, Some(1), args)
        .unwrap_or_else(|e| panic!("tally: repair query failed: {e}"));
    if rows.is_empty() {
        return None;
    }
    rows.first()
        .get_one::<i64>()
        .unwrap_or_else(|e| panic!("tally: repair query returned an unexpected value: {e}"))
}

/// Locks the counter, recounts it under the lock and fixes it. Returns the stored
/// and actual values seen under the lock.
fn fix_usage(client: &mut SpiClient<'_>, d: &Drift) -> (i64, i64) {
    let period_start = d.period_start.expect("usage drift has a period");
    let key = || -> Vec<DatumWithOid<'static>> { vec![d.id.clone().into(), period_start.into()] };
    // The slot whose column drifted; its name in the statements below is tally's own.
    let column = Slot::ALL
        .into_iter()
        .map(Slot::used_column)
        .find(|column| *column == d.counter)
        .expect("tally: verify names a usage column");
    // Read, then write with plain values: each statement is routed by user_id on
    // Citus (an INSERT … SELECT with parameters would be sent to every shard).
    let period_end = crate::store::sql::subscription(client, &d.id)
        .map(|s| crate::domain::period::period_bounds(s.anchor, &s.period, period_start).1);
    if let Some(period_end) = period_end {
        client
            .update(
                "INSERT INTO tally.usage (user_id, period_start, period_end) VALUES ($1, $2, $3)
                 ON CONFLICT (user_id, period_start) DO NOTHING",
                None,
                &[d.id.clone().into(), period_start.into(), period_end.into()],
            )
            .unwrap_or_else(|e| panic!("tally: repair could not create a usage row: {e}"));
    }
    let stored = one_i64(
        client,
        &format!(
            "SELECT {column}::bigint FROM tally.usage
              WHERE user_id = $1 AND period_start = $2 FOR UPDATE"
        ),
        &key(),
    );
    let Some(stored) = stored else {
        // No usage row and no subscription: nothing is stored and nothing counts.
        return (0, 0);
    };
    let actual = one_i64(
        client,
        &format!(
            "SELECT {column}::bigint FROM tally.usage_recount
              WHERE user_id = $1 AND period_start = $2"
        ),
        &key(),
    )
    .unwrap_or(0);
    if stored != actual {
        client
            .update(
                &format!(
                    "UPDATE tally.usage SET {column} = $3::int
                      WHERE user_id = $1 AND period_start = $2"
                ),
                None,
                &[d.id.clone().into(), period_start.into(), actual.into()],
            )
            .unwrap_or_else(|e| panic!("tally: repair could not update usage: {e}"));
    }
    (stored, actual)
}

fn fix_learning_plan(client: &mut SpiClient<'_>, d: &Drift) -> (i64, i64) {
    let key =
        || -> Vec<DatumWithOid<'static>> { vec![d.user_id.clone().into(), d.id.clone().into()] };
    let Some(stored) = one_i64(
        client,
        "SELECT completed_sessions::bigint FROM tally.learning_plans
          WHERE user_id = $1 AND learning_plan_id = $2::uuid FOR UPDATE",
        &key(),
    ) else {
        return (0, 0);
    };
    let actual = one_i64(
        client,
        "SELECT count(*) FROM tally.sessions
          WHERE user_id = $1 AND learning_plan_id = $2::uuid AND status = 'completed'",
        &key(),
    )
    .unwrap_or(0);
    if stored != actual {
        client
            .update(
                "UPDATE tally.learning_plans SET completed_sessions = $3::int
                  WHERE user_id = $1 AND learning_plan_id = $2::uuid",
                None,
                &[d.user_id.clone().into(), d.id.clone().into(), actual.into()],
            )
            .unwrap_or_else(|e| panic!("tally: repair could not update a learning plan: {e}"));
    }
    (stored, actual)
}

/// Locks, recounts and fixes one counter, recording the fix in tally.adjustments as
/// made by `adjusted_by`. False when it needed no fix (fixed meanwhile by the writes
/// that were in flight).
fn fix_one(client: &mut SpiClient<'_>, drift: &Drift, adjusted_by: &str) -> bool {
    let (stored, actual) = match drift.object.as_str() {
        "usage" => fix_usage(client, drift),
        _ => fix_learning_plan(client, drift),
    };
    if stored == actual {
        return false;
    }
    client
        .update(
            "INSERT INTO tally.adjustments (adjusted_by, object, object_id, period_start, counter, old_value, new_value, user_id)
             VALUES ($8, $1, $2, $3, $4, $5, $6, $7)",
            None,
            &[
                drift.object.clone().into(),
                drift.id.clone().into(),
                drift.period_start.into(),
                drift.counter.clone().into(),
                stored.into(),
                actual.into(),
                drift.user_id.clone().into(),
                adjusted_by.into(),
            ],
        )
        .unwrap_or_else(|e| panic!("tally: repair could not record an adjustment: {e}"));
    true
}

/// On Citus, each fix runs on the node that holds the user's shards, reached by a
/// query Citus routes there: the counters' guards accept only writes from tally's
/// own code in the backend that makes them, and a write sent from the coordinator
/// is not one.
const ROUTED_FIX_SQL: &str = "SELECT tally.repair_counter(s.user_id, $2, $3, $4, $5, $6)
  FROM tally.subscriptions s WHERE s.user_id = $1";

/// Fixes every counter `verify()` reports, records each fix in tally.adjustments and
/// returns how many it fixed. Each counter is locked and recounted under its lock, so
/// sessions written concurrently are neither lost nor counted twice. Run it in READ
/// COMMITTED (the default); under REPEATABLE READ a concurrent write makes it fail
/// with a serialization error instead.
#[pg_extern(volatile, security_definer)]
#[search_path(pg_catalog, pg_temp)]
pub fn repair() -> i64 {
    crate::entry::served::require();
    let _internal = InternalWrite::begin();
    let distributed = crate::citus::distributed();
    Spi::connect_mut(|client| {
        let caller: String = client
            .select("SELECT session_user::text", None, &[])
            .unwrap_or_else(|e| panic!("tally: repair cannot read session_user: {e}"))
            .first()
            .get_one()
            .ok()
            .flatten()
            .unwrap_or_default();
        let mut fixed = 0;
        for drift in find_drift(client) {
            let done = if distributed {
                // A user without a subscription has no shard row to route by; its
                // usage rows are dropped with the subscription, so none are left.
                client
                    .update(
                        ROUTED_FIX_SQL,
                        None,
                        &[
                            drift.user_id.clone().into(),
                            drift.object.clone().into(),
                            drift.id.clone().into(),
                            drift.period_start.into(),
                            drift.counter.clone().into(),
                            caller.clone().into(),
                        ],
                    )
                    .unwrap_or_else(|e| panic!("tally: repair could not reach a shard: {e}"))
                    .filter_map(|row| row.get::<bool>(1).ok().flatten())
                    .any(|fixed| fixed)
            } else {
                fix_one(client, &drift, &caller)
            };
            fixed += i64::from(done);
        }
        // Sessions written while counting was off may be started ones the bounds
        // never saw (a distributed tally keeps none).
        if !distributed {
            crate::store::sql::forget_started_bounds();
        }
        fixed
    })
}

/// `tally.repair()`'s fix of one counter on a distributed tally, run on the node that
/// holds `user_id`'s shards (see ROUTED_FIX_SQL). It recounts from the sessions
/// itself: it can only set a counter to what the sessions say.
#[pg_extern(volatile, security_definer)]
#[search_path(pg_catalog, pg_temp)]
pub fn repair_counter(
    user_id: String,
    object: String,
    id: String,
    period_start: Option<TimestampWithTimeZone>,
    counter: String,
    adjusted_by: String,
) -> bool {
    let _internal = InternalWrite::begin();
    // Statements for this user's rows stay on this node; Citus refuses them inside a
    // query it sent here unless told that nested execution is expected.
    let _nested = crate::citus::AllowNestedExecution::begin();
    let drift = Drift {
        object,
        id,
        period_start,
        counter,
        stored: 0,
        actual: 0,
        user_id,
    };
    Spi::connect_mut(|client| fix_one(client, &drift, &adjusted_by))
}
