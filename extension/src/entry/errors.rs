//! tally's own errors, each with a SQLSTATE of class `TL` that clients can branch on.
//!
//! pgrx reports errors through its fixed table of PostgreSQL codes, which has no
//! room for an extension's own class. tally's rule errors are therefore returned as
//! values up to a thin C entry point (see `entry!`) and raised there with
//! errstart/errcode/errfinish, the same calls pgrx itself makes, once no Rust value
//! with a destructor is left on the stack.

use std::ffi::CString;
use std::os::raw::{c_char, c_int};

use pgrx::pg_sys;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TallyCode {
    /// A metered session would take used + in progress past the plan limit.
    QuotaExceeded,
    /// A status change other than started→completed or started→abandoned.
    InvalidStatusTransition,
    /// A change to a column that never changes (or to a finished session).
    ImmutableColumn,
    /// A direct write to a counter that only tally maintains.
    CounterMaintainedByTally,
    /// A kind's counter changed while completed sessions of that kind exist.
    KindInUse,
    /// A learning plan with completed sessions cannot be deleted.
    LearningPlanHasCompletedSessions,
    /// TRUNCATE of tally.sessions.
    TruncateRejected,
    /// A trigger function of tally fired through a binding other than its own
    /// (PostgreSQL's own code for a trigger called in the wrong context).
    TriggerProtocolViolated,
    /// The database's tally schema is at a release this library does not serve
    /// (crate::entry::served).
    ReleaseNotServed,
}

impl TallyCode {
    pub const fn sqlstate(self) -> &'static [u8; 5] {
        match self {
            TallyCode::QuotaExceeded => b"TL001",
            TallyCode::InvalidStatusTransition => b"TL002",
            TallyCode::ImmutableColumn => b"TL003",
            TallyCode::CounterMaintainedByTally => b"TL004",
            TallyCode::KindInUse => b"TL005",
            TallyCode::LearningPlanHasCompletedSessions => b"TL006",
            TallyCode::TruncateRejected => b"TL007",
            TallyCode::TriggerProtocolViolated => b"39P01",
            TallyCode::ReleaseNotServed => b"TL010",
        }
    }
}

/// A rule violation reported to the client with tally's SQLSTATE.
#[derive(Debug)]
pub struct TallyError {
    pub code: TallyCode,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl TallyError {
    pub fn new(code: TallyCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

pub type TallyResult<T> = Result<T, TallyError>;

/// PostgreSQL's MAKE_SQLSTATE: six bits per character, first character lowest.
const fn make_sqlstate(code: &[u8; 5]) -> c_int {
    let mut value = 0;
    let mut i = 0;
    while i < 5 {
        value |= ((code[i].wrapping_sub(b'0') & 0x3F) as c_int) << (6 * i);
        i += 1;
    }
    value
}

// Declared here because pgrx keeps them out of its bindings; they are exported by
// the postgres binary.
unsafe extern "C-unwind" {
    fn errstart(elevel: c_int, domain: *const c_char) -> bool;
    fn errcode(sqlerrcode: c_int) -> c_int;
    fn errmsg(fmt: *const c_char, ...) -> c_int;
    fn errdetail(fmt: *const c_char, ...) -> c_int;
    fn errhint(fmt: *const c_char, ...) -> c_int;
    fn errfinish(filename: *const c_char, lineno: c_int, funcname: *const c_char);
}

fn c_text(text: String) -> CString {
    CString::new(text.replace('\0', "\\0")).expect("NUL bytes were escaped")
}

/// Raise `error` as a PostgreSQL ERROR. Never returns.
///
/// # Safety
/// Must be called from the top of an `extern "C-unwind"` entry point with no live
/// values that need dropping: errfinish longjmps into PostgreSQL.
pub unsafe fn raise(error: TallyError) -> ! {
    let TallyError {
        code,
        message,
        detail,
        hint,
    } = error;
    let (message, detail, hint) = (c_text(message), detail.map(c_text), hint.map(c_text));
    unsafe {
        if errstart(pg_sys::elog::PgLogLevel::ERROR as c_int, std::ptr::null()) {
            // errmsg & co. copy the text into PostgreSQL's error context at once.
            errcode(make_sqlstate(code.sqlstate()));
            errmsg(c"%s".as_ptr(), message.as_ptr());
            if let Some(detail) = &detail {
                errdetail(c"%s".as_ptr(), detail.as_ptr());
            }
            if let Some(hint) = &hint {
                errhint(c"%s".as_ptr(), hint.as_ptr());
            }
        }
        drop((message, detail, hint));
        errfinish(c"tally".as_ptr(), 0, c"tally".as_ptr());
    }
    unreachable!("errfinish returned from an ERROR")
}

#[cfg(test)]
mod unit_tests {
    #[test]
    fn sqlstate_encoding_matches_postgres() {
        // ERRCODE_UNIQUE_VIOLATION is MAKE_SQLSTATE('2','3','5','0','5').
        assert_eq!(
            super::make_sqlstate(b"23505"),
            pgrx::pg_sys::errcodes::PgSqlErrorCode::ERRCODE_UNIQUE_VIOLATION as i32
        );
    }
}
