//! Which table, event, timing and level each trigger function of tally serves.
//!
//! EXECUTE on a trigger function is all CREATE TRIGGER asks for, and the functions
//! that write counters run with the extension owner's rights. A function bound
//! anywhere else (a temporary table of a hostile role, another event of tally's
//! own table) would run those rights against rows the caller chose. So every entry
//! point first checks the binding it was fired through and refuses, before reading
//! a single row, when it is not its own.

use std::ffi::CStr;

use pgrx::{pg_sys, PgTrigger};

use crate::errors::{TallyCode, TallyError, TallyResult};

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Timing {
    Before,
    After,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Row,
    Statement,
}

/// Events, as a set of bits (one per operation).
pub const INSERT: u8 = 1;
pub const UPDATE: u8 = 2;
pub const DELETE: u8 = 4;
pub const TRUNCATE: u8 = 8;

/// The one binding a trigger function of tally may be fired through.
pub struct Binding {
    /// A table of schema tally.
    pub table: &'static CStr,
    pub timing: Timing,
    pub level: Level,
    /// The events it serves (bits above).
    pub events: u8,
}

/// `Binding` in one line: `on(c"sessions", After, Statement, INSERT)`.
pub const fn on(table: &'static CStr, timing: Timing, level: Level, events: u8) -> Binding {
    Binding {
        table,
        timing,
        level,
        events,
    }
}

impl Binding {
    /// Refuses (SQLSTATE 39P01) unless `trigger` fired for this binding. `symbol`
    /// is the C symbol, `tally_<function name>`.
    pub fn check(&self, symbol: &str, trigger: &PgTrigger<'_>) -> TallyResult<()> {
        let data = trigger.trigger_data();
        let event = data.tg_event;
        let timing = if event & pg_sys::TRIGGER_EVENT_TIMINGMASK == pg_sys::TRIGGER_EVENT_BEFORE {
            Timing::Before
        } else {
            Timing::After
        };
        let instead = event & pg_sys::TRIGGER_EVENT_TIMINGMASK == pg_sys::TRIGGER_EVENT_INSTEAD;
        let level = if event & pg_sys::TRIGGER_EVENT_ROW != 0 {
            Level::Row
        } else {
            Level::Statement
        };
        let operation = match event & pg_sys::TRIGGER_EVENT_OPMASK {
            pg_sys::TRIGGER_EVENT_INSERT => INSERT,
            pg_sys::TRIGGER_EVENT_UPDATE => UPDATE,
            pg_sys::TRIGGER_EVENT_DELETE => DELETE,
            _ => TRUNCATE,
        };
        let own_table = is_tally_table(data.tg_relation, self.table);
        if own_table
            && !instead
            && timing == self.timing
            && level == self.level
            && self.events & operation != 0
        {
            return Ok(());
        }
        Err(TallyError::new(
            TallyCode::TriggerProtocolViolated,
            format!(
                "tally.{}() serves only tally's own trigger on tally.{}",
                symbol.trim_start_matches("tally_"),
                self.table.to_string_lossy()
            ),
        )
        .hint("tally's trigger functions cannot be bound to other tables or events"))
    }
}

/// True when `relation` is `tally.<name>`. Compared by namespace OID and name, so a
/// table of the same name in another schema (pg_temp included) never matches.
/// Whether `relation` is `tally.<name>` or, on Citus, one of its shards (Citus copies
/// a distributed or reference table's triggers to its shards, `tally.<name>_<shard
/// id>`, and fires them there).
fn is_tally_table(relation: pg_sys::Relation, name: &CStr) -> bool {
    // SAFETY: the trigger's relation is open and locked for the whole call.
    let (namespace, relname, oid) = unsafe {
        let form = (*relation).rd_rel;
        (
            (*form).relnamespace,
            CStr::from_ptr((*form).relname.data.as_ptr()),
            (*relation).rd_id,
        )
    };
    // SAFETY: a catalog lookup by name; missing_ok returns InvalidOid.
    let schema = unsafe { pg_sys::get_namespace_oid(c"tally".as_ptr(), true) };
    if schema == pg_sys::Oid::INVALID || namespace != schema {
        return false;
    }
    if relname == name {
        return true;
    }
    let shard_id = relname
        .to_bytes()
        .strip_prefix(name.to_bytes())
        .and_then(|rest| rest.strip_prefix(b"_"))
        .and_then(|digits| std::str::from_utf8(digits).ok())
        .filter(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|digits| digits.parse::<i64>().ok());
    shard_id.is_some_and(|shard_id| is_shard_of(oid, shard_id, name))
}

thread_local! {
    /// Relations already found to be shards of tally's tables (a trigger fires per
    /// statement; the catalog lookup is done once per backend and shard).
    static KNOWN_SHARDS: std::cell::RefCell<std::collections::HashSet<(pg_sys::Oid, i64)>> =
        std::cell::RefCell::new(std::collections::HashSet::new());
}

/// Whether Citus's metadata records shard `shard_id` of `tally.<name>`.
fn is_shard_of(oid: pg_sys::Oid, shard_id: i64, name: &CStr) -> bool {
    if KNOWN_SHARDS.with(|known| known.borrow().contains(&(oid, shard_id))) {
        return true;
    }
    let table = format!("tally.{}", name.to_string_lossy());
    let shard = pgrx::Spi::get_one_with_args::<bool>(
        "SELECT to_regclass('pg_catalog.pg_dist_shard') IS NOT NULL
            AND EXISTS (SELECT FROM pg_catalog.pg_dist_shard
                         WHERE shardid = $1 AND logicalrelid = pg_catalog.to_regclass($2))",
        &[shard_id.into(), table.into()],
    )
    .ok()
    .flatten()
    .unwrap_or(false);
    if shard {
        KNOWN_SHARDS.with(|known| known.borrow_mut().insert((oid, shard_id)));
    }
    shard
}
