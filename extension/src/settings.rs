//! Settings: `tally.enforce_limits` and `tally.reservation_timeout`.

use std::ffi::CString;

use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};

pub static ENFORCE_LIMITS: GucSetting<bool> = GucSetting::<bool>::new(true);
pub static RESERVATION_TIMEOUT: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"2 hours"));

pub fn register() {
    GucRegistry::define_bool_guc(
        c"tally.enforce_limits",
        c"Reject metered sessions that would exceed the plan limit.",
        c"Only a superuser may turn this off, e.g. for a historical import.",
        &ENFORCE_LIMITS,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"tally.reservation_timeout",
        c"How long a started session holds a reservation against the plan limit (an interval).",
        c"A started session older than this no longer counts as in progress.",
        &RESERVATION_TIMEOUT,
        GucContext::Userset,
        GucFlags::default(),
    );
}

pub fn enforce_limits() -> bool {
    ENFORCE_LIMITS.get()
}
