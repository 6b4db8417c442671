//! tally: subscription usage counters that PostgreSQL keeps exact.
//!
//! Schema lives in `sql/`; this crate holds the logic: billing-period arithmetic,
//! the statement-level counting triggers, the rule triggers, and verify/repair.
//!
//! The library is installed before `ALTER EXTENSION tally UPDATE` runs, so it also
//! meets databases at the release before its own: it serves that release and its
//! own, and refuses every other with an error that names the update (`entry/served.rs`).
//! The one difference between the two it serves is read from the schema itself:
//! whether the reference tables carry both forget triggers (`store/heap.rs`).

use pgrx::prelude::*;

#[cfg(not(any(feature = "pg15", feature = "pg18")))]
compile_error!("tally builds for PostgreSQL 15 or 18: build with the feature pg15 or pg18");

// The map, in the order a write to tally.sessions meets it:
// where PostgreSQL calls in,
mod entry;
// what is counted,
mod domain;
// the counting triggers and limits,
mod counting;
// the reads and writes by key,
mod store;
// the rules around the counters,
mod rules;
// and the answers built from them;
mod answer;
// beside them, PostgreSQL plumbing and what differs on a Citus shard.
mod citus;
mod pg;

::pgrx::pg_module_magic!(name, version);

extension_sql_file!(
    "../sql/schema.sql",
    name = "schema",
    requires = [
        domain::period::period_is_valid,
        domain::period::period_start_for,
        domain::period::period_end_for,
        pg::settings::reservation_timeout,
        answer::document::build_usage_document
    ]
);
extension_sql_file!(
    "../sql/triggers.sql",
    name = "triggers",
    requires = ["schema", rules::repair::repair]
);
extension_sql_file!(
    "../sql/distribute.sql",
    name = "distribute",
    requires = ["triggers", rules::repair::repair_counter]
);

/// RFC 3339 text of a timestamp, in UTC, for messages.
pub(crate) fn format_timestamp(ts: TimestampWithTimeZone) -> String {
    match domain::period::to_datetime(ts.into_inner()) {
        Some(t) => t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        None => ts.to_string(),
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_transaction_event(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    if event == pg_sys::XactEvent::XACT_EVENT_ABORT
        || event == pg_sys::XactEvent::XACT_EVENT_PARALLEL_ABORT
    {
        pg::write_mark::reset();
        citus::reset();
        pg::planning::IndexOnlyPlanning::reset();
    }
    if event == pg_sys::XactEvent::XACT_EVENT_ABORT || event == pg_sys::XactEvent::XACT_EVENT_COMMIT
    {
        answer::last_insert::forget_counted();
    }
    if event == pg_sys::XactEvent::XACT_EVENT_ABORT
        || event == pg_sys::XactEvent::XACT_EVENT_COMMIT
        || event == pg_sys::XactEvent::XACT_EVENT_PREPARE
    {
        pg::expressions::free_retired();
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_subtransaction_event(
    event: pg_sys::SubXactEvent::Type,
    _my_subid: pg_sys::SubTransactionId,
    _parent_subid: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    if event == pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB {
        answer::last_insert::forget_counted();
    }
}

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    pg::settings::register();
    // SAFETY: registers a callback that lives as long as the library.
    unsafe { pg_sys::RegisterXactCallback(Some(on_transaction_event), std::ptr::null_mut()) };
    // SAFETY: as above.
    unsafe { pg_sys::RegisterSubXactCallback(Some(on_subtransaction_event), std::ptr::null_mut()) };
    // Reserve the prefix so a typo such as tally.enforce_limit is an error, not a new setting.
    unsafe { pg_sys::MarkGUCPrefixReserved(c"tally".as_ptr()) };
    citus::guard_session_settings();
    pg::expressions::install();
    store::watch_invalidations();
    entry::served::watch_extensions();
}

#[cfg(any(test, feature = "pg_test"))]
mod tests;

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec!["shared_preload_libraries = 'tally'"]
    }
}
