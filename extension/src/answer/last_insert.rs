//! What the last single-row INSERT's counting left behind for the usage document
//! (`tally.session_usage_document`), and when it stops being valid.

use std::cell::RefCell;

use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::domain::meter::PerSlot;

thread_local! {
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
    pub period_start: TimestampWithTimeZone,
    pub period_end: TimestampWithTimeZone,
    /// Each meter slot after the write.
    pub used: PerSlot<i32>,
    /// The plan's limit of each slot.
    pub limits: PerSlot<Option<i32>>,
    /// Reservations per slot, when the limit check or the counter write counted them.
    pub in_progress: Option<PerSlot<i32>>,
    /// Counted on a Citus shard: tally's tables under their own names are not the
    /// ones the trigger read.
    pub on_shard: bool,
}

pub(crate) fn remember(counted: Option<Counted>) {
    LAST_COUNTED.with(|last| *last.borrow_mut() = counted);
}

/// What the last counting statement left behind, if it was the single-row INSERT of
/// `session_id` and nothing was written since. Taken, so it is used at most once.
pub(crate) fn take_counted(session_id: pgrx::Uuid) -> Option<Counted> {
    LAST_COUNTED
        .with(|last| last.borrow_mut().take())
        .filter(|counted| counted.session_id == session_id && counted.command_id == command_id())
}

pub(crate) fn command_id() -> pg_sys::CommandId {
    // SAFETY: reads the backend's current command counter without marking it used.
    unsafe { pg_sys::GetCurrentCommandId(false) }
}

/// Forgets what counting left behind (transaction end, subtransaction rollback).
pub(crate) fn forget_counted() {
    remember(None);
}
