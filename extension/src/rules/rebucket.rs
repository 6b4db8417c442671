//! Keeping the invariant when billing periods move: a changed `period_anchor`, a move
//! to a plan with another period, or a plan's new `period` re-buckets the affected
//! users' usage from their sessions, in the same transaction.

use pgrx::prelude::*;
use pgrx::{pg_sys, PgTrigger};

use crate::citus;
use crate::entry::binding::{on, Level::*, Timing::*, DELETE, UPDATE};
use crate::entry::entry;
use crate::entry::errors::{TallyCode, TallyError, TallyResult};
use crate::pg::spi::get;
use crate::pg::write_mark::InternalWrite;
use crate::rules::sessions::column;

/// Recounts every usage row of `users` from their completed sessions. The subscription
/// rows are locked first, so that concurrent session inserts (whose foreign key checks
/// take KEY SHARE locks) finish before the recount or wait for the new periods. A
/// completion or a delete takes no lock on the subscription, so the user's sessions
/// that such a write could count or uncount (started and completed ones) are locked
/// FOR SHARE too: a write in flight finishes before the recount, and a later one
/// waits at its row, then counts into the new periods (its counting reads the
/// subscription with a snapshot taken after the wait).
pub fn rebuild_usage(users: Vec<String>) {
    let _internal = InternalWrite::begin();
    Spi::connect_mut(|client| {
        // One user at a time, in key order, and statements that each read or write one
        // table: on Citus each is routed to that user's shard (from a trigger on a
        // shard, Citus runs nothing else).
        for user in users {
            let key: pgrx::datum::DatumWithOid = user.clone().into();
            for sql in [
                "SELECT 1 FROM tally.subscriptions WHERE user_id = $1 FOR UPDATE",
                "SELECT 1 FROM tally.sessions WHERE user_id = $1 AND status <> 'abandoned' FOR SHARE",
                "DELETE FROM tally.usage WHERE user_id = $1",
            ] {
                client
                    .update(sql, None, std::slice::from_ref(&key))
                    .unwrap_or_else(|e| panic!("tally: cannot re-bucket usage: {e}"));
            }
            let recount: Vec<(TimestampWithTimeZone, TimestampWithTimeZone, i32, i32)> = client
                .select(
                    "SELECT period_start, period_end, practice_sessions_used, assessments_used
                       FROM tally.usage_recount WHERE user_id = $1",
                    None,
                    std::slice::from_ref(&key),
                )
                .unwrap_or_else(|e| panic!("tally: cannot recount usage: {e}"))
                .map(|row| (get(&row, 1), get(&row, 2), get(&row, 3), get(&row, 4)))
                .collect();
            for (start, end, practice, assessments) in recount {
                client
                    .update(
                        "INSERT INTO tally.usage (user_id, period_start, period_end, practice_sessions_used, assessments_used)
                         VALUES ($1, $2, $3, $4, $5)",
                        None,
                        &[
                            user.clone().into(),
                            start.into(),
                            end.into(),
                            practice.into(),
                            assessments.into(),
                        ],
                    )
                    .unwrap_or_else(|e| panic!("tally: cannot re-bucket usage: {e}"));
            }
        }
    });
}

fn subscriptions_rebucket(trigger: &PgTrigger<'_>) -> TallyResult<pg_sys::Datum> {
    let old = trigger.old().expect("row trigger has an old row");
    let new = trigger.new().expect("row trigger has a new row");
    let old_user: Option<String> = column(&old, "user_id");
    let new_user: Option<String> = column(&new, "user_id");
    if old_user != new_user {
        return Err(TallyError::new(
            TallyCode::ImmutableColumn,
            "user_id of a subscription never changes",
        )
        .detail(format!("user_id={}", old_user.unwrap_or_default()))
        .hint("create a new subscription instead"));
    }
    let anchor = |row: &pgrx::heap_tuple::PgHeapTuple<'_, _>| {
        column::<TimestampWithTimeZone>(row, "period_anchor").map(|t| t.into_inner())
    };
    let old_plan: Option<String> = column(&old, "plan_id");
    let new_plan: Option<String> = column(&new, "plan_id");
    let periods_moved = anchor(&old) != anchor(&new)
        || (old_plan != new_plan
            && Spi::get_one_with_args::<bool>(
                "SELECT (SELECT period FROM tally.plans WHERE plan_id = $1)
                        IS DISTINCT FROM (SELECT period FROM tally.plans WHERE plan_id = $2)",
                &[old_plan.into(), new_plan.into()],
            )
            .unwrap_or_else(|e| panic!("tally: cannot compare plan periods: {e}"))
            .unwrap_or(true));
    if periods_moved {
        rebuild_usage(new_user.into_iter().collect());
    }
    Ok(pg_sys::Datum::null())
}
entry!(
    tally_subscriptions_rebucket,
    pg_finfo_tally_subscriptions_rebucket,
    subscriptions_rebucket,
    on(c"subscriptions", After, Row, UPDATE)
);

/// AFTER UPDATE OF period on tally.plans, per row.
fn plans_rebucket(trigger: &PgTrigger<'_>) -> TallyResult<pg_sys::Datum> {
    let new = trigger.new().expect("row trigger has a new row");
    let plan: Option<String> = column(&new, "plan_id");
    // On Citus this fires once per node, on its copy of the plans table: each node
    // re-buckets the subscribers whose shards it holds (none on the coordinator).
    let subscriptions = if citus::on_shard(trigger.trigger_data().tg_relation, c"plans") {
        citus::local_shards("subscriptions")
    } else {
        vec!["tally.subscriptions".to_string()]
    };
    let users: Vec<String> = Spi::connect(|client| {
        let mut users = Vec::new();
        for table in &subscriptions {
            users.extend(
                client
                    .select(
                        &format!("SELECT user_id FROM {table} WHERE plan_id = $1 ORDER BY user_id"),
                        None,
                        &[plan.clone().into()],
                    )
                    .unwrap_or_else(|e| panic!("tally: cannot list subscriptions: {e}"))
                    .filter_map(|row| row.get::<String>(1).ok().flatten()),
            );
        }
        users
    });
    if !users.is_empty() {
        rebuild_usage(users);
    }
    Ok(pg_sys::Datum::null())
}
entry!(
    tally_plans_rebucket,
    pg_finfo_tally_plans_rebucket,
    plans_rebucket,
    on(c"plans", After, Row, UPDATE)
);

/// AFTER DELETE on tally.subscriptions, per statement: a deleted user's usage goes too
/// (sessions and learning plans follow by ON DELETE CASCADE).
fn subscriptions_drop_usage(trigger: &PgTrigger<'_>) -> TallyResult<pg_sys::Datum> {
    let _internal = InternalWrite::begin();
    Spi::connect_mut(|client| {
        crate::pg::spi::register_transition_tables(trigger);
        // The transition table alone, then one routed delete per user.
        let users: Vec<String> = client
            .select("SELECT user_id FROM tally_old ORDER BY 1", None, &[])
            .unwrap_or_else(|e| panic!("tally: cannot read deleted subscriptions: {e}"))
            .filter_map(|row| row.get::<String>(1).ok().flatten())
            .collect();
        for user in users {
            client
                .update(
                    "DELETE FROM tally.usage WHERE user_id = $1",
                    None,
                    &[user.into()],
                )
                .unwrap_or_else(|e| {
                    panic!("tally: cannot drop usage of deleted subscriptions: {e}")
                });
        }
    });
    Ok(pg_sys::Datum::null())
}
entry!(
    tally_subscriptions_drop_usage,
    pg_finfo_tally_subscriptions_drop_usage,
    subscriptions_drop_usage,
    on(c"subscriptions", After, Statement, DELETE)
);
