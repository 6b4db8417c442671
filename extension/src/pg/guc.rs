//! Settings made for the length of one of tally's own steps, in a GUC nest level of
//! their own, as a function's SET clause makes them.

use std::ffi::CStr;
use std::os::raw::c_int;

use pgrx::pg_sys;

/// Makes `settings` in a new GUC nest level, as a function's SET clause does, and
/// returns the level, which the caller closes with `AtEOXact_GUC(true, level)`.
pub(crate) fn settings_level(settings: &[(&CStr, &CStr)]) -> c_int {
    // SAFETY: local GUC changes inside a nest level.
    unsafe {
        let level = pg_sys::NewGUCNestLevel();
        for (name, value) in settings {
            pg_sys::set_config_option(
                name.as_ptr(),
                value.as_ptr(),
                pg_sys::GucContext::PGC_USERSET,
                pg_sys::GucSource::PGC_S_SESSION,
                pg_sys::GucAction::GUC_ACTION_SAVE,
                true,
                0,
                false,
            );
        }
        level
    }
}
