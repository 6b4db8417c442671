//! Reservations: a started session holds a slot of its plan's limit until it
//! completes or is abandoned, or until `tally.reservation_timeout` has passed since
//! it started.

use pgrx::pg_sys;
use pgrx::prelude::*;

/// The cutoff in tally's own SQL statements (`concat!`ed into them): a started
/// session holds a reservation while it started after it. `tally.current_usage`
/// (schema.sql) writes the same; `reservation_cutoff` is its value in Rust.
macro_rules! cutoff_sql {
    () => {
        "now() - tally.reservation_timeout()"
    };
}
pub(crate) use cutoff_sql;

/// `now() - tally.reservation_timeout()` (cutoff_sql!): started sessions from before
/// it no longer hold a reservation.
pub(crate) fn reservation_cutoff() -> TimestampWithTimeZone {
    let now: TimestampWithTimeZone = pgrx::datetime::now();
    let timeout = crate::pg::settings::reservation_timeout();
    // SAFETY: timestamptz - interval, as the SQL operator (session time zone included).
    unsafe {
        pgrx::direct_function_call::<TimestampWithTimeZone>(
            pg_sys::timestamptz_mi_interval,
            &[now.into_datum(), timeout.into_datum()],
        )
    }
    .expect("timestamptz - interval is not NULL")
}
