//! tally: subscription usage counters that PostgreSQL keeps exact.
//!
//! Schema lives in `sql/`; this crate holds the logic: billing-period arithmetic,
//! the statement-level counting triggers, the rule triggers, and verify/repair.
//!
//! The library is installed before `ALTER EXTENSION tally UPDATE` runs, so it also
//! meets databases at the release before its own: it serves that release and its
//! own, and refuses every other with an error that names the update (`served.rs`).
//! The one difference between the two it serves is read from the schema itself:
//! whether the reference tables carry both forget triggers (`keyed.rs`).

use pgrx::prelude::*;

#[cfg(not(any(feature = "pg15", feature = "pg18")))]
compile_error!("tally builds for PostgreSQL 15 or 18: build with the feature pg15 or pg18");

mod binding;
mod citus;
mod counted;
mod counter;
mod counting;
mod document;
mod errors;
mod expressions;
mod guards;
mod internal;
mod keyed;
mod limits;
mod majors;
mod period;
mod privilege;
mod rebucket;
mod record;
mod reference;
mod repair;
mod served;
mod sessions;
mod settings;
mod spi;

::pgrx::pg_module_magic!(name, version);

extension_sql_file!(
    "../sql/schema.sql",
    name = "schema",
    requires = [
        period::period_is_valid,
        period::period_start_for,
        period::period_end_for,
        settings::reservation_timeout,
        document::build_usage_document
    ]
);
extension_sql_file!(
    "../sql/triggers.sql",
    name = "triggers",
    requires = ["schema", repair::repair]
);
extension_sql_file!(
    "../sql/distribute.sql",
    name = "distribute",
    requires = ["triggers", repair::repair_counter]
);

/// RFC 3339 text of a timestamp, in UTC, for messages.
pub(crate) fn format_timestamp(ts: TimestampWithTimeZone) -> String {
    match period::to_datetime(ts.into_inner()) {
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
        internal::reset();
        citus::reset();
        limits::IndexOnlyPlanning::reset();
    }
    if event == pg_sys::XactEvent::XACT_EVENT_ABORT || event == pg_sys::XactEvent::XACT_EVENT_COMMIT
    {
        counted::forget_counted();
    }
    if event == pg_sys::XactEvent::XACT_EVENT_ABORT
        || event == pg_sys::XactEvent::XACT_EVENT_COMMIT
        || event == pg_sys::XactEvent::XACT_EVENT_PREPARE
    {
        expressions::free_retired();
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
        counted::forget_counted();
    }
}

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    settings::register();
    // SAFETY: registers a callback that lives as long as the library.
    unsafe { pg_sys::RegisterXactCallback(Some(on_transaction_event), std::ptr::null_mut()) };
    // SAFETY: as above.
    unsafe { pg_sys::RegisterSubXactCallback(Some(on_subtransaction_event), std::ptr::null_mut()) };
    // Reserve the prefix so a typo such as tally.enforce_limit is an error, not a new setting.
    unsafe { pg_sys::MarkGUCPrefixReserved(c"tally".as_ptr()) };
    citus::guard_session_settings();
    expressions::install();
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
