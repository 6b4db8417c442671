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

use crate::citus;
use crate::entry::errors::{TallyCode, TallyError, TallyResult};

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

/// Whether `relation` is `tally.<name>` or, on Citus, one of its shards (Citus copies
/// a distributed or reference table's triggers to its shards, `tally.<name>_<shard
/// id>`, and fires them there).
fn is_tally_table(relation: pg_sys::Relation, name: &CStr) -> bool {
    let relname = relation_name(relation);
    is_local_tally_table(relation, name)
        || (in_tally_schema(relation)
            && citus::shard_id_in_name(relname.to_bytes(), name.to_bytes()).is_some_and(
                |shard_id| {
                    // SAFETY: the relation is open.
                    citus::is_shard_of(unsafe { (*relation).rd_id }, shard_id, name)
                },
            ))
}

/// Whether `relation` is `tally.<name>` itself (not a Citus shard of it). Compared by
/// namespace OID and name, so a table of the same name in another schema (pg_temp
/// included) never matches. The name is compared first: it spares the namespace
/// lookup for every other table.
pub(crate) fn is_local_tally_table(relation: pg_sys::Relation, name: &CStr) -> bool {
    relation_name(relation) == name && in_tally_schema(relation)
}

fn relation_name<'a>(relation: pg_sys::Relation) -> &'a CStr {
    // SAFETY: the caller's relation is open; its name lives in its relcache entry.
    unsafe { CStr::from_ptr((*(*relation).rd_rel).relname.data.as_ptr()) }
}

fn in_tally_schema(relation: pg_sys::Relation) -> bool {
    // SAFETY: the relation is open; a catalog lookup by name, whose missing_ok
    // returns InvalidOid.
    unsafe {
        let schema = pg_sys::get_namespace_oid(c"tally".as_ptr(), true);
        schema != pg_sys::Oid::INVALID && (*(*relation).rd_rel).relnamespace == schema
    }
}
