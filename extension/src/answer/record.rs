//! `tally.record_session`, the API's call: record a session unless its id exists, and
//! answer with the stored session and its user's usage (`{created, session, usage}`).
//!
//! It is written here rather than in PL/pgSQL because the call is the API's path for
//! every session: a PL/pgSQL function initialises its expressions again in every
//! transaction, keeps its row variable as an expanded record and starts one more
//! statement for its answer, all of it work that repeats on every call. Its
//! statements are the ones the PL/pgSQL function ran, prepared once per connection;
//! it runs with the caller's rights and search path, so every name in them is
//! qualified and every parameter typed by OID.
//!
//! The statements run through SPI calls declared here without pgrx's guard. pgrx turns
//! an error raised inside a guarded call into a Rust panic and raises it again with
//! its code, message, detail and hint only; an error of the INSERT (a CHECK or foreign
//! key violated, a limit refused by the counting trigger) must reach the caller as
//! PostgreSQL raised it, with the constraint's name, which the API reads, as it left
//! the PL/pgSQL function. Such an error leaves these functions directly, so they hold
//! nothing that needs dropping while a statement runs; the SPI connection left open
//! is closed by the transaction's (or subtransaction's) abort, as for any C function.

use std::cell::Cell;
use std::ffi::CStr;
use std::os::raw::{c_char, c_int, c_long};

use pgrx::datum::{FromDatum, IntoDatum};
use pgrx::pg_sys;
use pgrx::prelude::*;

// Unguarded (see the module's comment): each may raise, and the error leaves through
// the caller, which holds nothing to drop.
unsafe extern "C-unwind" {
    fn SPI_connect() -> c_int;
    fn SPI_finish() -> c_int;
    fn SPI_prepare(
        src: *const c_char,
        nargs: c_int,
        argtypes: *mut pg_sys::Oid,
    ) -> pg_sys::SPIPlanPtr;
    fn SPI_keepplan(plan: pg_sys::SPIPlanPtr) -> c_int;
    fn SPI_execute_plan(
        plan: pg_sys::SPIPlanPtr,
        values: *mut pg_sys::Datum,
        nulls: *const c_char,
        read_only: bool,
        tcount: c_long,
    ) -> c_int;
    fn GetCurrentTransactionStartTimestamp() -> pg_sys::TimestampTz;
}

/// The session's columns, in the order every statement here returns them.
macro_rules! session_columns {
    ($prefix:literal) => {
        concat!(
            $prefix,
            "session_id, ",
            $prefix,
            "user_id, ",
            $prefix,
            "kind, ",
            $prefix,
            "learning_plan_id, ",
            $prefix,
            "status, ",
            $prefix,
            "started_at, ",
            $prefix,
            "completed_at, ",
            $prefix,
            "duration_seconds, ",
            $prefix,
            "created_at"
        )
    };
}

/// A statement prepared once per connection (a plan kept by SPI, which re-plans it
/// when what it reads changes). Kept here rather than by crate::pg::spi::run_cached: that
/// cache holds pgrx's prepared statements, which run only through pgrx's guarded
/// calls and do not hand out the plan for an unguarded SPI_execute_plan.
struct Statement {
    sql: &'static CStr,
    types: &'static [pg_sys::Oid],
    plan: &'static std::thread::LocalKey<Cell<pg_sys::SPIPlanPtr>>,
}

thread_local! {
    static BACKDATING_PLAN: Cell<pg_sys::SPIPlanPtr> = const { Cell::new(std::ptr::null_mut()) };
    static INSERT_NEW_PLAN: Cell<pg_sys::SPIPlanPtr> = const { Cell::new(std::ptr::null_mut()) };
    static INSERT_WITH_ID_PLAN: Cell<pg_sys::SPIPlanPtr> = const { Cell::new(std::ptr::null_mut()) };
    static EXISTING_PLAN: Cell<pg_sys::SPIPlanPtr> = const { Cell::new(std::ptr::null_mut()) };
}

const TEXT: pg_sys::Oid = pg_sys::TEXTOID;
const UUID: pg_sys::Oid = pg_sys::UUIDOID;
const TIMESTAMPTZ: pg_sys::Oid = pg_sys::TIMESTAMPTZOID;
const INT4: pg_sys::Oid = pg_sys::INT4OID;

/// The backdating bound, for a caller that may not import history.
static BACKDATING: Statement = Statement {
    sql: c"SELECT tally.refuse_backdating($1, $2, $3)",
    types: &[TEXT, TIMESTAMPTZ, TIMESTAMPTZ],
    plan: &BACKDATING_PLAN,
};

/// A session without an id: a new id cannot conflict, so a plain INSERT, without the
/// speculative insertion ON CONFLICT costs.
static INSERT_NEW: Statement = Statement {
    sql: const_cstr(concat!(
        "INSERT INTO tally.sessions AS x (user_id, kind, learning_plan_id, status, started_at, completed_at, duration_seconds) ",
        "VALUES ($1, $2, $3, $4, coalesce($5, pg_catalog.now()), $6, $7) RETURNING ",
        session_columns!("x."),
        "\0"
    )),
    types: &[TEXT, TEXT, UUID, TEXT, TIMESTAMPTZ, TIMESTAMPTZ, INT4],
    plan: &INSERT_NEW_PLAN,
};

/// A session with its id: inserted unless the id exists.
static INSERT_WITH_ID: Statement = Statement {
    sql: const_cstr(concat!(
        "INSERT INTO tally.sessions AS x (session_id, user_id, kind, learning_plan_id, status, started_at, completed_at, duration_seconds) ",
        "VALUES ($1, $2, $3, $4, $5, coalesce($6, pg_catalog.now()), $7, $8) ON CONFLICT DO NOTHING RETURNING ",
        session_columns!("x."),
        "\0"
    )),
    types: &[UUID, TEXT, TEXT, UUID, TEXT, TIMESTAMPTZ, TIMESTAMPTZ, INT4],
    plan: &INSERT_WITH_ID_PLAN,
};

/// The stored session with the id, for a retry (or a reuse the caller must refuse).
static EXISTING: Statement = Statement {
    sql: const_cstr(concat!(
        "SELECT ",
        session_columns!("e.stored_"),
        " FROM tally.existing_session($1, $2) AS e\0"
    )),
    types: &[TEXT, UUID],
    plan: &EXISTING_PLAN,
};

/// Raises an SPI failure (a result code, not an error PostgreSQL raised) through
/// pgrx's guard, which holds the message until it is raised.
fn fail(sql: &CStr, code: c_int) -> ! {
    // SAFETY: raises an ERROR; nothing of the caller's needs dropping.
    unsafe {
        pg_sys::panic::pgrx_extern_c_guard(|| -> () {
            pgrx::error!("tally: SPI failed ({code}) for {}", sql.to_string_lossy())
        })
    };
    unreachable!("an ERROR was raised")
}

const fn const_cstr(text: &'static str) -> &'static CStr {
    match CStr::from_bytes_with_nul(text.as_bytes()) {
        Ok(text) => text,
        Err(_) => panic!("a statement is NUL-terminated and has no other NUL"),
    }
}

impl Statement {
    /// Runs the statement with `args` (None for NULL), inside an SPI connection;
    /// returns the number of rows it returned (in SPI_tuptable).
    ///
    /// # Safety
    /// Inside an SPI connection; the caller holds nothing that needs dropping, as an
    /// error raised by the statement leaves through it.
    unsafe fn run(&self, args: &[Option<pg_sys::Datum>]) -> u64 {
        debug_assert_eq!(args.len(), self.types.len());
        let mut values = [pg_sys::Datum::from(0); 8];
        let mut nulls = [b' ' as c_char; 8];
        for (i, arg) in args.iter().enumerate() {
            match arg {
                Some(value) => values[i] = *value,
                None => nulls[i] = b'n' as c_char,
            }
        }
        // SAFETY: the caller's contract; the plan is prepared with these argument types,
        // and values and nulls hold one entry per argument.
        unsafe {
            let mut plan = self.plan.with(Cell::get);
            if plan.is_null() {
                let mut types = [pg_sys::Oid::INVALID; 8];
                types[..self.types.len()].copy_from_slice(self.types);
                plan = SPI_prepare(
                    self.sql.as_ptr(),
                    self.types.len() as c_int,
                    types.as_mut_ptr(),
                );
                if plan.is_null() || SPI_keepplan(plan) != 0 {
                    fail(self.sql, pg_sys::SPI_result);
                }
                self.plan.with(|kept| kept.set(plan));
            }
            let result = SPI_execute_plan(plan, values.as_mut_ptr(), nulls.as_ptr(), false, 0);
            if result < 0 {
                fail(self.sql, result);
            }
            pg_sys::SPI_processed
        }
    }
}

/// The function's arguments, in its declaration's order.
#[derive(Clone, Copy)]
struct Arguments {
    user_id: Option<pg_sys::Datum>,
    kind: Option<pg_sys::Datum>,
    session_id: Option<pg_sys::Datum>,
    learning_plan_id: Option<pg_sys::Datum>,
    status: Option<pg_sys::Datum>,
    started_at: Option<pg_sys::Datum>,
    completed_at: Option<pg_sys::Datum>,
    duration_seconds: Option<pg_sys::Datum>,
    not_before: Option<pg_sys::Datum>,
}

impl Arguments {
    /// # Safety
    /// `fcinfo` is a call of tally.record_session, with its nine arguments.
    unsafe fn of(fcinfo: pg_sys::FunctionCallInfo) -> Self {
        // SAFETY: the caller's contract: nine arguments.
        let args = unsafe { (*fcinfo).args.as_slice(9) };
        let arg = |i: usize| (!args[i].isnull).then_some(args[i].value);
        Arguments {
            user_id: arg(0),
            kind: arg(1),
            session_id: arg(2),
            learning_plan_id: arg(3),
            status: arg(4),
            started_at: arg(5),
            completed_at: arg(6),
            duration_seconds: arg(7),
            not_before: arg(8),
        }
    }
}

/// Records the session (see the module's comment); returns whether it inserted it, and
/// leaves the stored row in SPI_tuptable, or no row when the id existed but its row
/// is gone.
///
/// # Safety
/// Inside an SPI connection; holds nothing that needs dropping while a statement runs.
unsafe fn record(args: Arguments) -> bool {
    // SAFETY: statements with their own argument types; see the caller's contract.
    unsafe {
        // Only a session dated in the past can be backdated: the bound is read for
        // those alone. (A timestamptz datum is its value.)
        if let (Some(not_before), Some(started_at)) = (args.not_before, args.started_at) {
            if (started_at.value() as i64) < GetCurrentTransactionStartTimestamp() {
                BACKDATING.run(&[args.user_id, Some(started_at), Some(not_before)]);
            }
        }
        let inserted = match args.session_id {
            None => INSERT_NEW.run(&[
                args.user_id,
                args.kind,
                args.learning_plan_id,
                args.status,
                args.started_at,
                args.completed_at,
                args.duration_seconds,
            ]),
            Some(session_id) => INSERT_WITH_ID.run(&[
                Some(session_id),
                args.user_id,
                args.kind,
                args.learning_plan_id,
                args.status,
                args.started_at,
                args.completed_at,
                args.duration_seconds,
            ]),
        } > 0;
        if !inserted {
            // The id exists: a retry, or a reuse the caller must refuse.
            EXISTING.run(&[args.user_id, args.session_id]);
        }
        inserted
    }
}

/// The answer for the session SPI_tuptable holds: None when it holds no session.
fn answer(created: bool) -> Option<String> {
    // SAFETY: called right after `record`, inside its SPI connection: SPI_tuptable
    // holds the last statement's rows, with the session's columns in their order.
    unsafe {
        let table = pg_sys::SPI_tuptable;
        if table.is_null() || pg_sys::SPI_processed == 0 {
            return None;
        }
        let row = *(*table).vals;
        let desc = (*table).tupdesc;
        let column = |n: c_int| {
            let mut is_null = false;
            let value = pg_sys::SPI_getbinval(row, desc, n, &mut is_null);
            (value, is_null)
        };
        let uuid = |n| {
            let (value, is_null) = column(n);
            pgrx::Uuid::from_datum(value, is_null)
        };
        let text = |n| {
            let (value, is_null) = column(n);
            <&str>::from_datum(value, is_null)
        };
        let timestamp = |n| {
            let (value, is_null) = column(n);
            TimestampWithTimeZone::from_datum(value, is_null)
        };
        // No id: the id existed but its row is gone (deleted meanwhile), nothing to
        // return.
        let session_id = Some(uuid(1)?);
        let (duration, duration_null) = column(8);
        crate::answer::document::record_session_answer(
            Some(created),
            session_id,
            text(2),
            text(3),
            uuid(4),
            text(5),
            timestamp(6),
            timestamp(7),
            i32::from_datum(duration, duration_null),
            timestamp(9),
        )
    }
}

#[doc(hidden)]
#[no_mangle]
pub extern "C" fn pg_finfo_tally_record_session() -> &'static pg_sys::Pg_finfo_record {
    const V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}

/// The C entry point of `tally.record_session` (declared in `sql/schema.sql`).
///
/// # Safety
/// Called by PostgreSQL's function manager for tally.record_session.
#[doc(hidden)]
#[no_mangle]
pub unsafe extern "C-unwind" fn tally_record_session(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    // SAFETY: the function manager's call of tally.record_session. Until the answer
    // is written nothing here needs dropping (see the module's comment): the
    // statements' errors leave through this frame as PostgreSQL raised them.
    unsafe {
        crate::entry::served::require();
        let args = Arguments::of(fcinfo);
        let connected = SPI_connect();
        if connected < 0 {
            fail(c"SPI_connect", connected);
        }
        let created = record(args);
        // From here on Rust values are made: errors go through pgrx's guard.
        let answer = pg_sys::panic::pgrx_extern_c_guard(|| answer(created));
        SPI_finish();
        match answer {
            // The answer, allocated in the caller's memory (SPI's is gone).
            Some(answer) => pg_sys::panic::pgrx_extern_c_guard(|| {
                pgrx::datum::JsonString(answer)
                    .into_datum()
                    .expect("json text is a datum")
            }),
            None => {
                (*fcinfo).isnull = true;
                pg_sys::Datum::from(0)
            }
        }
    }
}
