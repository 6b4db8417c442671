//! The three counting triggers on `tally.sessions` (AFTER INSERT, UPDATE and DELETE,
//! FOR EACH STATEMENT): each sends a statement that changed one row down the
//! single-row path and any other down the set-based path, then checks limits.

use pgrx::prelude::*;
use pgrx::{pg_sys, PgTrigger};

use crate::answer::last_insert::{command_id, remember, Counted};
use crate::citus::ShardTables;
use crate::counting::limits::check_limits;
use crate::entry::binding::{on, Level::*, Timing::*, DELETE, INSERT, UPDATE};
use crate::entry::entry;
use crate::entry::errors::TallyResult;
use crate::pg::planning::IndexOnlyPlanning;
use crate::pg::privilege::AsExtensionOwner;
use crate::pg::spi::register_transition_tables;
use crate::pg::write_mark::InternalWrite;
use crate::store::Store;

use super::set_based::{apply_many, Changes, DELETED, INSERTED, UPDATED};
use super::single_row::{apply_one, one_row, Transition};

/// Rows in a transition table, without reading it.
pub(super) fn rows_in(table: *mut pg_sys::Tuplestorestate) -> i64 {
    if table.is_null() {
        0
    } else {
        // SAFETY: PostgreSQL's transition table for this trigger call.
        unsafe { pg_sys::tuplestore_tuple_count(table) }
    }
}

pub(super) fn count_insert(trigger: &PgTrigger<'_>) -> TallyResult<pg_sys::Datum> {
    let _internal = InternalWrite::begin();
    let _owner = AsExtensionOwner::for_trigger(trigger);
    let _shard = ShardTables::enter(trigger.trigger_data().tg_relation, c"sessions");
    let _planning = IndexOnlyPlanning::begin(ShardTables::all_local());
    remember(None);
    let single = rows_in(trigger.trigger_data().tg_newtable) == 1;
    Spi::connect_mut(|client| {
        register_transition_tables(trigger);
        let mut store = Store::open();
        if single {
            let row = one_row(&mut store, client, trigger.trigger_data(), Transition::New);
            let applied = apply_one(&mut store, client, None, row.as_ref());
            let in_progress = check_limits(&mut store, client, &applied.checks)?;
            if let (Some(facts), Some(usage)) = (row, applied.usage) {
                remember(Some(Counted {
                    command_id: command_id(),
                    session_id: facts.session_id,
                    user_id: facts.user_id,
                    plan_id: facts.plan_id,
                    period_start: usage.period_start,
                    period_end: usage.period_end,
                    used: usage.used,
                    limits: facts.limits,
                    in_progress: in_progress.or(applied.reservations),
                    on_shard: ShardTables::in_shard(),
                }));
            }
            Ok(())
        } else {
            let rows = rows_in(trigger.trigger_data().tg_newtable);
            let checks = apply_many(&mut store, client, &INSERTED, rows);
            check_limits(&mut store, client, &checks).map(|_| ())
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

pub(super) fn count_update(trigger: &PgTrigger<'_>) -> TallyResult<pg_sys::Datum> {
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

pub(super) fn count_delete(trigger: &PgTrigger<'_>) -> TallyResult<pg_sys::Datum> {
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
pub(super) fn apply_delta(
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
        let mut store = Store::open();
        let checks = match single {
            Some((has_old, has_new)) => {
                let data = trigger.trigger_data();
                let old = has_old
                    .then(|| one_row(&mut store, client, data, Transition::Old))
                    .flatten();
                let new = has_new
                    .then(|| one_row(&mut store, client, data, Transition::New))
                    .flatten();
                apply_one(&mut store, client, old.as_ref(), new.as_ref()).checks
            }
            None => {
                let data = trigger.trigger_data();
                let rows = rows_in(data.tg_newtable).max(rows_in(data.tg_oldtable));
                apply_many(&mut store, client, changes, rows)
            }
        };
        check_limits(&mut store, client, &checks).map(|_| ())
    })?;
    Ok(pg_sys::Datum::null())
}
