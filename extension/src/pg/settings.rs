//! Settings: `tally.enforce_limits`, `tally.reservation_timeout` and `tally.fast_path`.

use std::ffi::{c_char, c_void, CStr, CString};

use pgrx::pg_sys::{self, PgTryBuilder};
use pgrx::prelude::*;
use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};

pub static ENFORCE_LIMITS: GucSetting<bool> = GucSetting::<bool>::new(true);
pub static RESERVATION_TIMEOUT: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"2 hours"));

pub static FAST_PATH: GucSetting<bool> = GucSetting::<bool>::new(true);

pub fn register() {
    GucRegistry::define_bool_guc(
        c"tally.fast_path",
        c"Count single-row writes through direct index and heap access (crate::store::heap).",
        c"Off, every read and counter write runs as an SQL statement through SPI, the reference path. Only a superuser may change it.",
        &FAST_PATH,
        // Both paths count the same; the reference path exists to compare with, and
        // to step around the fast path should it ever misbehave.
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"tally.enforce_limits",
        c"Reject metered sessions that would exceed the plan limit.",
        c"Only a superuser may turn this off, e.g. for a historical import.",
        &ENFORCE_LIMITS,
        GucContext::Suset,
        GucFlags::default(),
    );
    // SAFETY: the hook is a guarded extern fn that only reads its argument.
    unsafe {
        GucRegistry::define_string_guc_with_hooks(
            c"tally.reservation_timeout",
            c"How long a started session holds a reservation against the plan limit (an interval).",
            c"A started session older than this no longer counts as in progress. Only a superuser may change it.",
            &RESERVATION_TIMEOUT,
            // Like enforce_limits: a role that could shorten it would free slots its
            // started sessions still hold, and pass the limit with them.
            GucContext::Suset,
            GucFlags::default(),
            Some(check_reservation_timeout),
            None,
            None,
        );
    }
}

/// The text of an interval setting, parsed as PostgreSQL does (`interval_in`).
fn parse_interval(text: &CStr) -> Option<Interval> {
    // SAFETY: interval_in reads a C string argument; it raises on bad input.
    unsafe {
        pgrx::direct_function_call::<Interval>(
            pg_sys::interval_in,
            &[
                Some(pg_sys::Datum::from(text.as_ptr())),
                Some(pg_sys::Datum::from(0u32)),
                Some(pg_sys::Datum::from(-1i32)),
            ],
        )
    }
}

/// Accepts a value only if it reads as a non-negative interval, so a typo fails at SET.
#[pg_guard]
unsafe extern "C-unwind" fn check_reservation_timeout(
    newval: *mut *mut c_char,
    _extra: *mut *mut c_void,
    _source: pg_sys::GucSource::Type,
) -> bool {
    let text = unsafe { newval.as_ref().copied() }.filter(|p| !p.is_null());
    let Some(text) = text else { return true };
    let text = unsafe { CStr::from_ptr(text) }.to_owned();
    PgTryBuilder::new(move || {
        parse_interval(&text).is_some_and(|i| i.months() >= 0 && i.days() >= 0 && i.micros() >= 0)
    })
    .catch_others(|_| false)
    .execute()
}

/// How long a started session holds a reservation: setting
/// `tally.reservation_timeout`, read from the setting this library registered (so
/// a value is always the checked one, whether or not the library is preloaded).
#[pg_extern(stable, parallel_safe)]
pub fn reservation_timeout() -> Interval {
    thread_local! {
        /// The setting's text and its value, as last parsed.
        static PARSED: std::cell::RefCell<Option<(Option<CString>, Interval)>> =
            const { std::cell::RefCell::new(None) };
    }
    let text = RESERVATION_TIMEOUT.get();
    if let Some(value) = PARSED.with(|p| {
        p.borrow()
            .as_ref()
            .filter(|(t, _)| *t == text)
            .map(|(_, v)| *v)
    }) {
        return value;
    }
    let value = text
        .as_deref()
        .and_then(parse_interval)
        .unwrap_or_else(|| parse_interval(c"2 hours").expect("2 hours is an interval"));
    PARSED.with(|p| *p.borrow_mut() = Some((text, value)));
    value
}

pub fn enforce_limits() -> bool {
    ENFORCE_LIMITS.get()
}

/// Setting `tally.fast_path`: whether crate::store::heap may serve reads and writes.
pub fn fast_path() -> bool {
    FAST_PATH.get()
}
