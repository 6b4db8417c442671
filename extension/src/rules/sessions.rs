//! Row rules for `tally.sessions`: the completed_at fill-in and what an UPDATE may change.

use pgrx::datum::{FromDatum, IntoDatum, UnboxDatum};
use pgrx::heap_tuple::PgHeapTuple;
use pgrx::prelude::*;
use pgrx::{pg_sys, PgTrigger, WhoAllocated};

use crate::entry::binding::{on, Level::*, Timing::*, INSERT, TRUNCATE, UPDATE};
use crate::entry::entry;
use crate::entry::errors::{TallyCode, TallyError, TallyResult};
use crate::store::heap::column_of;

pub fn column<T>(row: &PgHeapTuple<'_, impl WhoAllocated>, name: &str) -> Option<T>
where
    T: FromDatum + IntoDatum + for<'t> UnboxDatum<As<'t> = T> + 'static,
{
    row.get_by_name::<T>(name)
        .unwrap_or_else(|e| panic!("tally: cannot read column {name}: {e}"))
}

fn transaction_start() -> TimestampWithTimeZone {
    // SAFETY: reads a backend-local timestamp.
    let now = unsafe { pg_sys::GetCurrentTransactionStartTimestamp() };
    TimestampWithTimeZone::try_from(now).expect("the transaction start is a valid timestamp")
}

/// completed_at for a session that becomes completed without one: now(), but never
/// before started_at (which may lie up to 5 minutes ahead).
fn default_completed_at(started_at: Option<TimestampWithTimeZone>) -> TimestampWithTimeZone {
    let now = transaction_start();
    match started_at {
        Some(started) if started.into_inner() > now.into_inner() => started,
        _ => now,
    }
}

/// `row`, a row of `relation` (tally.sessions), with completed_at set to its default:
/// a modified copy in the current memory context. Read and written in place, without
/// copying the row into a Rust value: this runs for every session
/// `tally.record_session` records.
fn with_default_completed_at(row: pg_sys::HeapTuple, relation: pg_sys::Relation) -> pg_sys::Datum {
    let column = |name| i32::from(column_of(relation, name));
    // SAFETY: the caller passes a row trigger's row and its open relation; the
    // columns read are those of the relation's descriptor, and started_at is a
    // NOT NULL timestamptz.
    unsafe {
        let desc = (*relation).rd_att;
        let mut is_null = false;
        let started_at = pg_sys::heap_getattr(row, column("started_at"), desc, &mut is_null);
        let completed_at =
            default_completed_at(TimestampWithTimeZone::from_datum(started_at, is_null));
        let mut replaced = [column("completed_at")];
        let mut values = [completed_at.into_datum().expect("a timestamptz is a datum")];
        let mut nulls = [false];
        pg_sys::Datum::from(pg_sys::heap_modify_tuple_by_cols(
            row,
            desc,
            1,
            replaced.as_mut_ptr(),
            values.as_mut_ptr(),
            nulls.as_mut_ptr(),
        ))
    }
}

/// BEFORE INSERT: a completed session without completed_at gets one. Only rows
/// without completed_at reach it (the trigger's WHEN clause; a row that has one is
/// still returned as it came); the status is checked here.
fn fill_completed_at(trigger: &PgTrigger<'_>) -> TallyResult<pg_sys::Datum> {
    let data = trigger.trigger_data();
    let (row, relation) = (data.tg_trigtuple, data.tg_relation);
    let column = |name| i32::from(column_of(relation, name));
    // SAFETY: the binding check made this a BEFORE ROW INSERT trigger of
    // tally.sessions, called with the new row and the open relation it belongs to;
    // the columns read are those of that relation's descriptor, and status is a
    // NOT NULL text.
    let completed = unsafe {
        let desc = (*relation).rd_att;
        if !pg_sys::heap_attisnull(row, column("completed_at"), desc) {
            return Ok(pg_sys::Datum::from(row));
        }
        let mut is_null = false;
        let status = pg_sys::heap_getattr(row, column("status"), desc, &mut is_null);
        <&str>::from_datum(status, is_null) == Some("completed")
    };
    Ok(if completed {
        with_default_completed_at(row, relation)
    } else {
        pg_sys::Datum::from(row)
    })
}
entry!(
    tally_sessions_fill_completed_at,
    pg_finfo_tally_sessions_fill_completed_at,
    fill_completed_at,
    on(c"sessions", Before, Row, INSERT)
);

/// The status changes a session may make.
fn transition_allowed(from: &str, to: &str) -> bool {
    matches!(
        (from, to),
        ("started", "completed") | ("started", "abandoned")
    )
}

fn immutable(session: &str, message: String) -> TallyError {
    TallyError::new(TallyCode::ImmutableColumn, message).detail(format!("session {session}"))
}

/// BEFORE UPDATE: status may only move forward; user_id, kind, started_at (and the
/// keys) never change; a completed or abandoned session may change only duration_seconds.
fn check_update(trigger: &PgTrigger<'_>) -> TallyResult<pg_sys::Datum> {
    let old = trigger
        .old()
        .expect("BEFORE UPDATE row trigger has an old row");
    let new = trigger
        .new()
        .expect("BEFORE UPDATE row trigger has a new row");
    let id = column::<pgrx::Uuid>(&old, "session_id")
        .map(|u| u.to_string())
        .unwrap_or_default();

    let same_text = |name: &str| column::<String>(&old, name) == column::<String>(&new, name);
    let same_uuid =
        |name: &str| column::<pgrx::Uuid>(&old, name) == column::<pgrx::Uuid>(&new, name);
    let same_ts = |name: &str| {
        column::<TimestampWithTimeZone>(&old, name).map(|t| t.into_inner())
            == column::<TimestampWithTimeZone>(&new, name).map(|t| t.into_inner())
    };

    for (name, same) in [
        ("session_id", same_uuid("session_id")),
        ("user_id", same_text("user_id")),
        ("kind", same_text("kind")),
        ("started_at", same_ts("started_at")),
        ("created_at", same_ts("created_at")),
    ] {
        if !same {
            return Err(immutable(&id, format!("{name} of a session never changes")));
        }
    }

    let old_status = column::<String>(&old, "status").unwrap_or_default();
    let new_status = column::<String>(&new, "status").unwrap_or_default();
    if old_status != new_status && !transition_allowed(&old_status, &new_status) {
        return Err(TallyError::new(
            TallyCode::InvalidStatusTransition,
            format!("a session cannot change status from {old_status} to {new_status}"),
        )
        .detail(format!("session {id}"))
        .hint("allowed changes: started -> completed, started -> abandoned"));
    }

    if old_status != "started" {
        for (name, same) in [
            ("learning_plan_id", same_uuid("learning_plan_id")),
            ("completed_at", same_ts("completed_at")),
        ] {
            if !same {
                return Err(immutable(
                    &id,
                    format!(
                        "session is {old_status}: only duration_seconds may change, not {name}"
                    ),
                ));
            }
        }
    }

    if new_status == "completed" && column::<TimestampWithTimeZone>(&new, "completed_at").is_none()
    {
        let data = trigger.trigger_data();
        return Ok(with_default_completed_at(
            data.tg_newtuple,
            data.tg_relation,
        ));
    }
    Ok(pg_sys::Datum::from(trigger.trigger_data().tg_newtuple))
}
entry!(
    tally_sessions_check_update,
    pg_finfo_tally_sessions_check_update,
    check_update,
    on(c"sessions", Before, Row, UPDATE)
);

fn reject_truncate(_trigger: &PgTrigger<'_>) -> TallyResult<pg_sys::Datum> {
    Err(TallyError::new(
        TallyCode::TruncateRejected,
        "TRUNCATE of tally.sessions is not allowed: it would bypass the usage counters",
    )
    .hint("DELETE the sessions instead; their usage is given back"))
}
entry!(
    tally_sessions_reject_truncate,
    pg_finfo_tally_sessions_reject_truncate,
    reject_truncate,
    on(c"sessions", Before, Statement, TRUNCATE)
);
