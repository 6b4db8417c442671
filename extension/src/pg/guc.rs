//! Settings made for the length of one of tally's own steps, in a GUC nest level of
//! their own, as a function's SET clause makes them. Every such level in tally is a
//! `SettingsLevel`, so levels close in the reverse order they opened.

use std::ffi::CStr;
use std::os::raw::c_int;

use pgrx::pg_sys;

/// `settings` made in a new GUC nest level until dropped, which restores what they
/// were (`AtEOXact_GUC(true, level)`, as at the end of a function with a SET clause).
/// Unwinding from an error does not close it: the (sub)transaction's abort does.
#[must_use]
pub(crate) struct SettingsLevel(c_int);

impl SettingsLevel {
    pub(crate) fn open(settings: &[(&CStr, &CStr)]) -> SettingsLevel {
        // SAFETY: local GUC changes inside a nest level closed by Drop.
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
            SettingsLevel(level)
        }
    }

    /// `open`, when every setting named is defined (an extension's settings exist
    /// only where it is loaded); None, having set nothing, otherwise.
    pub(crate) fn open_if_defined(settings: &[(&CStr, &CStr)]) -> Option<SettingsLevel> {
        // SAFETY: looks a setting up by name; missing_ok, so an unknown one is NULL.
        let defined = settings.iter().all(|(name, _)| unsafe {
            !pg_sys::GetConfigOption(name.as_ptr(), true, false).is_null()
        });
        defined.then(|| SettingsLevel::open(settings))
    }

    /// Leaves the level to the transaction's abort, which has closed it or will
    /// (after an error caught without unwinding through the holder).
    pub(crate) fn abandon(self) {
        std::mem::forget(self);
    }
}

impl Drop for SettingsLevel {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        // SAFETY: closes the nest level `open` opened; levels opened after it were
        // closed first (every level is a scoped SettingsLevel).
        unsafe { pg_sys::AtEOXact_GUC(true, self.0) };
    }
}
