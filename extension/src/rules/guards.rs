//! Triggers that keep derived data and history out of reach of direct writes:
//! `tally.usage`, `learning_plans.completed_sessions`, learning plans with completed
//! sessions, and the counter of a kind in use.

use pgrx::prelude::*;
use pgrx::{pg_sys, PgTrigger};

use crate::citus;
use crate::entry::binding::{on, Level::*, Timing::*, DELETE, INSERT, TRUNCATE, UPDATE};
use crate::entry::entry;
use crate::entry::errors::{TallyCode, TallyError, TallyResult};
use crate::pg::write_mark;
use crate::rules::sessions::column;
use pgrx::spi;

fn maintained_by_tally(what: &str) -> TallyError {
    TallyError::new(
        TallyCode::CounterMaintainedByTally,
        format!("{what} is maintained by tally and cannot be written directly"),
    )
    .hint("write tally.sessions and the counters follow; to fix drift, run SELECT tally.repair()")
}

/// BEFORE INSERT/UPDATE/DELETE/TRUNCATE on tally.usage, per statement.
fn usage_reject_direct_write(_trigger: &PgTrigger<'_>) -> TallyResult<pg_sys::Datum> {
    if write_mark::active() {
        Ok(pg_sys::Datum::null())
    } else {
        Err(maintained_by_tally("tally.usage"))
    }
}
entry!(
    tally_usage_reject_direct_write,
    pg_finfo_tally_usage_reject_direct_write,
    usage_reject_direct_write,
    on(
        c"usage",
        Before,
        Statement,
        INSERT | UPDATE | DELETE | TRUNCATE
    )
);

/// BEFORE INSERT/UPDATE on tally.learning_plans, per row. A new plan starts at zero
/// completed sessions whatever the INSERT says (so a restored dump is recounted from
/// its sessions, not counted twice); afterwards only tally changes the count.
fn learning_plans_guard_counter(trigger: &PgTrigger<'_>) -> TallyResult<pg_sys::Datum> {
    let new = trigger.new().expect("row trigger has a new row");
    let completed: Option<i32> = column(&new, "completed_sessions");
    let old = trigger.old();
    let is_update = old.is_some();
    match old {
        None if completed != Some(0) => {
            let mut row = new.into_owned();
            row.set_by_name("completed_sessions", 0i32)
                .unwrap_or_else(|e| panic!("tally: cannot set completed_sessions: {e}"));
            Ok(row.into_trigger_datum().unwrap_or(pg_sys::Datum::null()))
        }
        Some(old)
            if column::<i32>(&old, "completed_sessions") != completed && !write_mark::active() =>
        {
            Err(maintained_by_tally(
                "tally.learning_plans.completed_sessions",
            ))
        }
        _ => Ok(pg_sys::Datum::from(if is_update {
            trigger.trigger_data().tg_newtuple
        } else {
            trigger.trigger_data().tg_trigtuple
        })),
    }
}
entry!(
    tally_learning_plans_guard_counter,
    pg_finfo_tally_learning_plans_guard_counter,
    learning_plans_guard_counter,
    on(c"learning_plans", Before, Row, INSERT | UPDATE)
);

/// BEFORE DELETE on tally.learning_plans, per row: completed sessions happened, so a
/// plan that has them stays. Deleting the whole subscription still removes it.
fn learning_plans_keep_completed(trigger: &PgTrigger<'_>) -> TallyResult<pg_sys::Datum> {
    let old = trigger.old().expect("row trigger has an old row");
    let plan: pgrx::Uuid = column(&old, "learning_plan_id").expect("learning_plan_id is NOT NULL");
    let user: String = column(&old, "user_id").expect("user_id is NOT NULL");
    let completed = Spi::get_one_with_args::<i64>(
        "SELECT count(*) FROM tally.sessions
          WHERE user_id = $2 AND learning_plan_id = $1 AND status = 'completed'
            AND EXISTS (SELECT 1 FROM tally.subscriptions WHERE user_id = $2)",
        &[plan.into(), user.clone().into()],
    )
    .unwrap_or_else(|e| panic!("tally: cannot count learning plan sessions: {e}"))
    .unwrap_or(0);
    if completed > 0 {
        return Err(TallyError::new(
            TallyCode::LearningPlanHasCompletedSessions,
            format!("learning plan {plan} has {completed} completed session(s) and cannot be deleted"),
        )
        .detail(format!("user_id={user}"))
        .hint("completed sessions happened and keep counting; delete the subscription to remove everything of a user"));
    }
    Ok(pg_sys::Datum::from(trigger.trigger_data().tg_trigtuple))
}
entry!(
    tally_learning_plans_keep_completed,
    pg_finfo_tally_learning_plans_keep_completed,
    learning_plans_keep_completed,
    on(c"learning_plans", Before, Row, DELETE)
);

/// BEFORE UPDATE on tally.session_kinds when counter changes.
fn session_kinds_check_counter(trigger: &PgTrigger<'_>) -> TallyResult<pg_sys::Datum> {
    let old = trigger.old().expect("row trigger has an old row");
    let kind: String = column(&old, "kind").expect("kind is NOT NULL");
    // The UPDATE itself locks the kind row FOR NO KEY UPDATE, which does not
    // conflict with the KEY SHARE lock a concurrent session insert's foreign key
    // check takes: that insert could commit a completed session of this kind right
    // after the check below and be counted under the old counter. FOR UPDATE does
    // conflict, so such inserts finish first (and the check sees them) or wait for
    // this transaction (and count under the new counter).
    //
    // On Citus this fires once per node, on its copy of session_kinds, where the
    // foreign key checks of that node's session shards take their locks: each node
    // locks its copy of the row and checks the session shards it holds.
    let relation = trigger.trigger_data().tg_relation;
    let (kinds, sessions) = if citus::on_shard(relation, c"session_kinds") {
        // SAFETY: the trigger's relation is open and locked for the whole call.
        let placement = unsafe { pgrx::name_data_to_str(&(*(*relation).rd_rel).relname) };
        (
            format!("tally.{}", spi::quote_identifier(placement)),
            citus::local_shards("sessions"),
        )
    } else {
        (
            "tally.session_kinds".to_string(),
            vec!["tally.sessions".to_string()],
        )
    };
    // A completion takes no lock on the kind at all (its UPDATE leaves the foreign
    // key alone), and reads the counter with its own snapshot: a session table
    // locked in SHARE mode makes this change wait for every write in flight (and
    // then see its completed sessions) and every later write wait for this change
    // (and count under the new counter). Taken before the kind row's lock, so that
    // an insert holding the table and waiting for that row cannot close a cycle.
    // Kind changes are rare; session writes wait for them to commit.
    for table in &sessions {
        Spi::run(&format!("LOCK TABLE {table} IN SHARE MODE"))
            .unwrap_or_else(|e| panic!("tally: cannot lock {table}: {e}"));
    }
    Spi::run_with_args(
        &format!("SELECT 1 FROM {kinds} WHERE kind = $1 FOR UPDATE"),
        &[kind.clone().into()],
    )
    .unwrap_or_else(|e| panic!("tally: cannot lock kind: {e}"));
    // Whether a session of the kind with this status exists in the session tables here.
    let any_session = |status: &str| {
        sessions.iter().any(|table| {
            Spi::get_one_with_args::<bool>(
                &format!("SELECT EXISTS (SELECT 1 FROM {table} WHERE kind = $1 AND status = $2)"),
                &[kind.clone().into(), status.into()],
            )
            .unwrap_or_else(|e| panic!("tally: cannot check kind usage: {e}"))
            .unwrap_or(false)
        })
    };
    if any_session("completed") {
        return Err(TallyError::new(
            TallyCode::KindInUse,
            format!("the counter of kind \"{kind}\" cannot change while completed sessions of that kind exist"),
        )
        .hint("map a new kind instead and use it for new sessions"));
    }
    // A kind that counted nothing starts counting: its started sessions were never
    // in the bounds on started sessions (tally.usage.started_bound, one node only),
    // which then become unknown. Sessions of the kind inserted meanwhile wait for
    // this transaction (their foreign key check's lock conflicts with the row lock
    // above); tally.usage is locked against counter writes until commit, so that no
    // write counts these sessions under the old counter and keeps the result.
    let new = trigger.new().expect("row trigger has a new row");
    let starts_counting = column::<String>(&old, "counter").as_deref() == Some("none")
        && column::<String>(&new, "counter").as_deref() != Some("none");
    if starts_counting
        && !citus::on_shard(relation, c"session_kinds")
        && crate::store::usage_keeps_started_bound()
        && any_session("started")
    {
        let _internal = write_mark::InternalWrite::begin();
        Spi::run("LOCK TABLE tally.usage IN SHARE MODE")
            .unwrap_or_else(|e| panic!("tally: cannot lock tally.usage: {e}"));
        crate::store::sql::forget_started_bounds();
    }
    Ok(pg_sys::Datum::from(trigger.trigger_data().tg_newtuple))
}
entry!(
    tally_session_kinds_check_counter,
    pg_finfo_tally_session_kinds_check_counter,
    session_kinds_check_counter,
    on(c"session_kinds", Before, Row, UPDATE)
);
