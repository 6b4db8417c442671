//! Which releases of tally's schema this library serves.
//!
//! A new library is installed (and loaded, after a restart) before `ALTER EXTENSION
//! tally UPDATE` runs, so for a while it meets a database still at the release
//! before. It serves exactly two schemas: its own release and the one before it, so
//! that the update of a running system loses no write. A database at any other
//! release gets, from every function of tally that reads or writes its tables, an
//! error that names the update (TL010) instead of whatever an unknown schema would
//! make the code do; its tables stay readable.
//!
//! The release a database is at is read from `pg_extension` once and kept until
//! PostgreSQL invalidates that catalog's cache (every CREATE, ALTER and DROP
//! EXTENSION does), so the check costs one flag test per call.
//!
//! While tally's own install or update script runs, everything is served: the
//! scripts of the update chain may run tally's triggers against the schema they are
//! building.

use std::cell::Cell;
use std::ffi::CStr;

use pgrx::pg_sys;

use crate::entry::errors::{TallyCode, TallyError, TallyResult};

/// This library's release (the version of its install script).
pub const CURRENT: &str = env!("CARGO_PKG_VERSION");
/// The release before it, whose schema this library also serves.
pub const PREVIOUS: &str = "0.10.0";

thread_local! {
    /// Known to be served, until pg_extension's cache is invalidated.
    static SERVED: Cell<bool> = const { Cell::new(false) };
}

/// Refuses (TL010) unless the database's tally is at a release this library serves.
pub fn check() -> TallyResult<()> {
    if SERVED.get() || in_own_script() {
        return Ok(());
    }
    match installed_release() {
        Some(release) if release == CURRENT || release == PREVIOUS => {
            SERVED.set(true);
            Ok(())
        }
        Some(release) => Err(refusal(&release)),
        // No tally here (a function called by OID after DROP EXTENSION): nothing to
        // read; what follows fails on the missing tables as it would.
        None => Ok(()),
    }
}

/// `check()` at the top of a function called from SQL: raises the refusal.
///
/// Call it first, before the function makes any value that needs dropping: the
/// error longjmps out as PostgreSQL's own errors do, past pgrx's wrapper (whose
/// memory context switch PostgreSQL's error recovery undoes).
pub fn require() {
    if let Err(error) = check() {
        // SAFETY: as said above; `raise` itself drops its strings before errfinish.
        unsafe { crate::entry::errors::raise(error) }
    }
}

fn refusal(release: &str) -> TallyError {
    let older = version_key(release) < version_key(PREVIOUS);
    let message = format!(
        "this database's tally schema is at release {release}, and the installed library \
         (release {CURRENT}) serves only {PREVIOUS} and {CURRENT}"
    );
    let hint = if older {
        "run ALTER EXTENSION tally UPDATE in this database; until then tally's tables can be read but not written".to_owned()
    } else {
        format!("install tally's package for release {release} (or later): its library serves this database")
    };
    TallyError::new(TallyCode::ReleaseNotServed, message).hint(hint)
}

/// A release's numbers, for ordering.
fn version_key(release: &str) -> Vec<u64> {
    release
        .split('.')
        .map(|part| part.parse().unwrap_or(0))
        .collect()
}

/// Whether tally's own CREATE or ALTER EXTENSION script is running.
fn in_own_script() -> bool {
    // SAFETY: backend globals PostgreSQL sets while an extension script runs.
    unsafe {
        pg_sys::creating_extension
            && pg_sys::CurrentExtensionObject != pg_sys::Oid::INVALID
            && pg_sys::CurrentExtensionObject == pg_sys::get_extension_oid(c"tally".as_ptr(), true)
    }
}

/// tally's `extversion` in this database, None when tally is not installed.
fn installed_release() -> Option<String> {
    // SAFETY: catalog lookups by OID and name; the syscache tuple is released before
    // return, and the text is copied out of it first.
    unsafe {
        let oid = pg_sys::get_extension_oid(c"tally".as_ptr(), true);
        if oid == pg_sys::Oid::INVALID {
            return None;
        }
        let cache = pg_sys::SysCacheIdentifier::EXTENSIONOID as i32;
        let tuple = pg_sys::SearchSysCache1(cache, pg_sys::Datum::from(oid));
        if tuple.is_null() {
            return None;
        }
        let mut is_null = false;
        let datum = pg_sys::SysCacheGetAttr(
            cache,
            tuple,
            pg_sys::Anum_pg_extension_extversion as pg_sys::AttrNumber,
            &mut is_null,
        );
        let release = (!is_null).then(|| {
            let text = pg_sys::text_to_cstring(datum.cast_mut_ptr());
            let release = CStr::from_ptr(text).to_string_lossy().into_owned();
            pg_sys::pfree(text.cast());
            release
        });
        pg_sys::ReleaseSysCache(tuple);
        release
    }
}

/// Registers the callback that forgets the answer when pg_extension changes, when
/// the library is loaded (`_PG_init`): before any answer is kept.
pub(crate) fn watch_extensions() {
    // SAFETY: registers, once per process, a callback that only clears a flag.
    unsafe {
        pg_sys::CacheRegisterSyscacheCallback(
            pg_sys::SysCacheIdentifier::EXTENSIONOID as i32,
            Some(forget),
            pg_sys::Datum::from(0),
        )
    };
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn forget(_arg: pg_sys::Datum, _cache: i32, _hash: u32) {
    SERVED.set(false);
}

#[cfg(test)]
mod unit_tests {
    use super::version_key;

    #[test]
    fn releases_order_by_number_not_text() {
        assert!(version_key("0.9.0") < version_key("0.10.0"));
        assert!(version_key("0.10.0") < version_key("1.0.0"));
        assert!(version_key("0.1.0") < version_key("0.10.0"));
    }
}
