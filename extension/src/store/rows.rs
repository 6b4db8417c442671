//! Reads and the counter update by key, without the executor: the single changed row
//! of a statement out of its transition table, a user's subscription and plan, a
//! kind's counter, the reservations in one (user, period), and the update of an
//! existing usage row (`add_to_usage`), on the tables and index scans of
//! `store::heap`.
//!
//! Where tally's tables are not this node's own (`heap::serves_here`),
//! `Tables::here`, `Reservations::here` and `add_to_usage` return None and counting
//! runs its SPI statements instead.

use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::domain::meter::{Feeds, PerSlot, Slot, SLOTS};
use crate::domain::reservation::reservation_cutoff;
use crate::store::catalog_cache;

use crate::store::heap::{column_of, serves_here, Key, StatementSnapshot, Table, TupleSlot};

/// The changed row of a single-row statement, as counting reads it.
pub(crate) struct ChangedRow {
    pub user_id: String,
    pub kind: String,
    pub status: String,
    pub started_at: TimestampWithTimeZone,
    pub learning_plan_id: Option<pgrx::Uuid>,
    pub session_id: pgrx::Uuid,
}

/// The first row of a transition table of `relation` (tally.sessions or a shard of it).
pub(crate) fn transition_row(
    relation: pg_sys::Relation,
    table: *mut pg_sys::Tuplestorestate,
) -> Option<ChangedRow> {
    let column = |name| column_of(relation, name);
    // SAFETY: the transition table of this trigger call holds rows of `relation`.
    // Read pointer 0 is rewound before and after (every scan of a transition table
    // selects and rewinds its own pointer); the slot is dropped before returning.
    unsafe {
        let slot =
            pg_sys::MakeSingleTupleTableSlot((*relation).rd_att, &pg_sys::TTSOpsMinimalTuple);
        pg_sys::tuplestore_select_read_pointer(table, 0);
        pg_sys::tuplestore_rescan(table);
        let row = if pg_sys::tuplestore_gettupleslot(table, true, false, slot) {
            let slot = TupleSlot(slot);
            let required = |name| -> String {
                slot.get(column(name))
                    .unwrap_or_else(|| panic!("tally: NULL {name}"))
            };
            Some(ChangedRow {
                user_id: required("user_id"),
                kind: required("kind"),
                status: required("status"),
                started_at: slot
                    .get(column("started_at"))
                    .expect("tally: NULL started_at"),
                learning_plan_id: slot.get(column("learning_plan_id")),
                session_id: slot
                    .get(column("session_id"))
                    .expect("tally: NULL session_id"),
            })
        } else {
            None
        };
        pg_sys::tuplestore_rescan(table);
        pg_sys::ExecDropSingleTupleTableSlot(slot);
        row
    }
}

/// What counting needs of a user's subscription and plan.
pub(crate) struct Subscription {
    pub anchor: TimestampWithTimeZone,
    pub period: Interval,
    /// The plan's limit of each slot; None for no limit.
    pub limits: PerSlot<Option<i32>>,
    pub plan_id: String,
}

/// Reads by key in tally's tables on this node, with one statement snapshot; plans
/// and kinds are answered from crate::store::catalog_cache once read.
pub(crate) struct Tables {
    /// Taken before the snapshot: what is read with it may be kept.
    since: catalog_cache::Generation,
    snapshot: StatementSnapshot,
}

impl Tables {
    /// None where tally's tables are not this node's own (counting then uses SPI).
    pub(crate) fn here() -> Option<Tables> {
        serves_here().then(|| {
            let since = catalog_cache::Generation::now();
            let snapshot = StatementSnapshot::take();
            catalog_cache::catch_up();
            Tables { since, snapshot }
        })
    }

    /// The subscription of `user_id` and its plan: Some(None) when there is none
    /// (its deletion cascades to the user's rows), None when a table cannot be read
    /// here.
    pub(crate) fn subscription(&self, user_id: &str) -> Option<Option<Subscription>> {
        let subscriptions = Table::open("tally.subscriptions")?;
        let (anchor, plan) = (
            subscriptions.column("period_anchor"),
            subscriptions.column("plan_id"),
        );
        let found = subscriptions.by_text_key("user_id", user_id, &self.snapshot, |row| {
            (
                row.get::<TimestampWithTimeZone>(anchor),
                row.get::<String>(plan),
            )
        })?;
        let Some((Some(anchor), Some(plan_id))) = found else {
            return Some(None);
        };
        let plan = match catalog_cache::plan(&plan_id) {
            Some(kept) => kept,
            None => {
                let (plan, keep) = self.plan(&plan_id)?;
                if keep {
                    catalog_cache::keep_plan(self.since, &plan_id, plan);
                }
                plan
            }
        };
        Some(Some(Subscription {
            anchor,
            period: plan.period,
            limits: plan.limits,
            plan_id,
        }))
    }

    /// The plan `plan_id`, read, and whether it may be kept; None when it cannot be
    /// read here.
    fn plan(&self, plan_id: &str) -> Option<(catalog_cache::Plan, bool)> {
        let plans = Table::open("tally.plans")?;
        let period = plans.column("period");
        let limits = PerSlot::from_fn(|slot| plans.column(slot.limit_column()));
        // A subscription's plan exists (foreign key): anything else is left to SPI.
        let (Some(period), limits) =
            plans.by_text_key("plan_id", plan_id, &self.snapshot, |row| {
                (
                    row.get::<Interval>(period),
                    limits.map(|column| row.get::<i32>(column)),
                )
            })??
        else {
            return None;
        };
        let plan = catalog_cache::Plan { period, limits };
        Some((plan, plans.found.forgets_on_write))
    }

    /// The slots session kind `kind` feeds; None when it cannot be read here.
    pub(crate) fn feeds(&self, kind: &str) -> Option<Feeds> {
        if let Some(kept) = catalog_cache::feeds(kind) {
            return Some(kept);
        }
        let kinds = Table::open("tally.session_kinds")?;
        let feeds = feeds_of(&kinds, kind, &self.snapshot)?;
        if kinds.found.forgets_on_write {
            catalog_cache::keep_feeds(self.since, kind, feeds);
        }
        Some(feeds)
    }

    /// Whether `user_id` has learning plans; None when it cannot be read here.
    pub(crate) fn has_learning_plans(&self, user_id: &str) -> Option<bool> {
        let plans = Table::open("tally.learning_plans")?;
        plans
            .by_text_key("user_id", user_id, &self.snapshot, |_| ())
            .map(|found| found.is_some())
    }
}

/// Counts reservations by key (crate::store::sql::RESERVATIONS_SQL, without the
/// executor), all with one snapshot taken when it is made: after the usage row locks
/// of the statement being checked.
pub(crate) struct Reservations {
    snapshot: StatementSnapshot,
    sessions: Table,
    kinds: Table,
    index: pg_sys::Oid,
    /// What session kinds feed, as read with the snapshot.
    feeds: std::collections::HashMap<String, Feeds>,
}

impl Reservations {
    /// None where the sessions table or its reservation index cannot be read here.
    pub(crate) fn here() -> Option<Reservations> {
        if !serves_here() {
            return None;
        }
        let snapshot = StatementSnapshot::take();
        let sessions = Table::open("tally.sessions")?;
        let kinds = Table::open("tally.session_kinds")?;
        let index = sessions.found.reservations?;
        Some(Reservations {
            snapshot,
            sessions,
            kinds,
            index,
            feeds: std::collections::HashMap::new(),
        })
    }

    /// Started sessions holding a reservation in one (user, period) (started in the
    /// period, after `cutoff`), per slot.
    pub(crate) fn count(
        &mut self,
        user_id: &str,
        start: TimestampWithTimeZone,
        end: TimestampWithTimeZone,
        cutoff: TimestampWithTimeZone,
    ) -> PerSlot<i32> {
        self.count_started(user_id, start, end, cutoff).held
    }

    /// `count`, and every started session of a metered kind in the period, holding a
    /// reservation or not (what tally.usage.started_bound bounds).
    pub(crate) fn count_started(
        &mut self,
        user_id: &str,
        start: TimestampWithTimeZone,
        end: TimestampWithTimeZone,
        cutoff: TimestampWithTimeZone,
    ) -> StartedSessions {
        let sessions = &self.sessions;
        let (user, started, status, kind) = (
            sessions.column("user_id"),
            sessions.column("started_at"),
            sessions.column("status"),
            sessions.column("kind"),
        );
        let datum = |value: Option<pg_sys::Datum>| value.expect("tally: a key is not NULL");
        let keys = [
            Key {
                column: user,
                strategy: pg_sys::BTEqualStrategyNumber,
                function: pg_sys::F_TEXTEQ,
                value: datum(user_id.into_datum()),
            },
            Key {
                column: started,
                strategy: pg_sys::BTGreaterEqualStrategyNumber,
                function: pg_sys::F_TIMESTAMPTZ_GE,
                value: datum(start.into_datum()),
            },
            Key {
                column: started,
                strategy: pg_sys::BTLessStrategyNumber,
                function: pg_sys::F_TIMESTAMPTZ_LT,
                value: datum(end.into_datum()),
            },
        ];
        // (kind, whether it holds a reservation) of every started session in the period.
        let mut open: Vec<(String, bool)> = Vec::new();
        sessions.scan(self.index, &keys, &self.snapshot, |row| {
            // The index holds started sessions only; the row is checked all the same.
            if row.get::<String>(status).as_deref() == Some("started") {
                let holds = row
                    .get::<TimestampWithTimeZone>(started)
                    .is_some_and(|at| at > cutoff);
                open.extend(row.get::<String>(kind).map(|kind| (kind, holds)));
            }
            true
        });
        let mut found = StartedSessions::default();
        for (kind, holds) in open {
            if !self.feeds.contains_key(&kind) {
                // A session's kind exists (foreign key), and kinds in use keep what
                // they feed (tally.session_kinds' rule).
                let feeds = feeds_of(&self.kinds, &kind, &self.snapshot)
                    .expect("tally: a session's kind exists");
                self.feeds.insert(kind.clone(), feeds);
            }
            let feeds = self.feeds[&kind];
            if feeds.metered() {
                found.metered += 1;
            }
            if holds {
                for slot in feeds.slots() {
                    found.held[slot] += 1;
                }
            }
        }
        found
    }
}

/// Started sessions in one (user, period): those holding a reservation per slot,
/// and every one of a metered kind.
#[derive(Default)]
pub(crate) struct StartedSessions {
    pub held: PerSlot<i32>,
    pub metered: i32,
}

/// The slots session kind `kind` feeds.
fn feeds_of(kinds: &Table, kind: &str, snapshot: &StatementSnapshot) -> Option<Feeds> {
    let column = kinds.column("counter");
    kinds
        .by_text_key("kind", kind, snapshot, |row| row.get::<String>(column))??
        .map(|counter| Feeds::from_counter(&counter))
}

/// Whether tally.usage here keeps `started_bound` (one node, not a shard): a write to
/// it through SQL must then make the bound unknown.
pub(crate) fn usage_keeps_started_bound() -> bool {
    Table::open("tally.usage").is_some_and(|usage| usage.found.started_bound.is_some())
}

/// A change to one usage row: its slots, and what the statement did to the
/// period's started sessions.
pub(crate) struct UsageChange {
    pub used: PerSlot<i32>,
    /// Started sessions of a metered kind added (1: one inserted started) or taken
    /// away (-1: one completed); None when not known (a statement of many rows),
    /// which leaves the row's bound unknown (NULL).
    pub started: Option<i32>,
    /// The caller checks a limit: the reservations are wanted.
    pub reservations_wanted: bool,
}

/// A usage row after `add_to_usage`.
pub(crate) struct UsageWritten {
    /// Each slot after the write.
    pub used: PerSlot<i32>,
    /// Reservations held in the period per slot, when known under the row lock:
    /// counted, or none because the row's bound is 0.
    pub reservations: Option<PerSlot<i32>>,
}

/// Adds `change` to the existing usage row of (user, period) without the executor,
/// as `INSERT … ON CONFLICT DO UPDATE` updates it: the row's latest version locked
/// (waiting for a concurrent writer and following its update, as READ COMMITTED
/// does), then updated in place of the executor's ExecUpdate (a HOT update when the
/// page has room, else with its index entry).
///
/// The row's `started_bound` (one node only) is an upper bound on the period's
/// started sessions of metered kinds, or NULL when unknown; it is changed only here,
/// under the row lock every writer of a started session takes (set-based counting,
/// re-bucketing and repair set it NULL). A bound of 0 means no reservation is held:
/// the limit check needs no count. Where a count is wanted (or the bound is
/// unknown), the reservations are counted here, under the lock and with a snapshot
/// taken after it was granted, and the exact number of started sessions is written
/// back with the counters, in the same row version.
///
/// None, having written nothing, wherever the executor is needed for it to mean the
/// same: no row yet (an insert, with its speculative insertion), a REPEATABLE READ
/// or SERIALIZABLE transaction (serialization failures), a row deleted meanwhile,
/// triggers other than tally's guard or indexes other than the primary key on the
/// table, another table access method, or tables that are not this node's own. The
/// caller then runs the upsert through SPI.
pub(crate) fn add_to_usage(
    user_id: &str,
    period_start: TimestampWithTimeZone,
    period_end: TimestampWithTimeZone,
    change: &UsageChange,
) -> Option<UsageWritten> {
    // SAFETY: reads the backend's isolation level.
    let snapshot_isolation =
        unsafe { pg_sys::XactIsoLevel } >= pg_sys::XACT_REPEATABLE_READ as std::os::raw::c_int;
    if snapshot_isolation || !serves_here() {
        return None;
    }
    let usage = Table::open_locked("tally.usage", pg_sys::RowExclusiveLock as _)?;
    let index = usage
        .found
        .primary_key
        .filter(|_| usage.found.only_primary_key)?;
    // SAFETY: the relation is open; its access method is read. tally's own guard is
    // the only trigger a write by key skips: it accepts tally's writes.
    let plain = unsafe { (*(*usage.relation).rd_rel).relam == pg_sys::HEAP_TABLE_AM_OID }
        && usage.found.guard_triggers_only
        && usage.found.executor_adds_nothing;
    if !plain {
        return None;
    }
    let (user, start) = (usage.column("user_id"), usage.column("period_start"));
    let used_columns = PerSlot::from_fn(|slot| usage.column(slot.used_column()));
    let user_datum = user_id.into_datum()?;
    let start_datum = period_start.into_datum()?;
    let keys = [
        Key {
            column: user,
            strategy: pg_sys::BTEqualStrategyNumber,
            function: pg_sys::F_TEXTEQ,
            value: user_datum,
        },
        Key {
            column: start,
            strategy: pg_sys::BTEqualStrategyNumber,
            function: pg_sys::F_TIMESTAMPTZ_EQ,
            value: start_datum,
        },
    ];
    // The row as of now; its latest version is what gets locked.
    let snapshot = StatementSnapshot::take();
    let mut tid = usage.find_for_update(index, &keys, &snapshot)?;
    // SAFETY: the executor's steps for ON CONFLICT DO UPDATE on a heap table, in READ
    // COMMITTED: lock the latest version of the row (table_tuple_lock with
    // TUPLE_LOCK_FLAG_FIND_LAST_VERSION, waiting), then heap-update that version,
    // which this transaction now holds locked, so nothing can update it first
    // (simple_heap_update raises if anything did); a non-HOT version gets its
    // primary key entry, the table's only index. Slot, tuples and index are released
    // here, or by the resource owner and memory context at abort.
    unsafe {
        let relation = usage.relation;
        let slot = pg_sys::table_slot_create(relation, std::ptr::null_mut());
        let mut failure = pg_sys::TM_FailureData::default();
        let lock = (*(*relation).rd_tableam)
            .tuple_lock
            .expect("heap locks tuples");
        let result = lock(
            relation,
            &mut tid,
            snapshot.0,
            slot,
            pg_sys::GetCurrentCommandId(false),
            pg_sys::LockTupleMode::LockTupleNoKeyExclusive,
            pg_sys::LockWaitPolicy::LockWaitBlock,
            pg_sys::TUPLE_LOCK_FLAG_FIND_LAST_VERSION as u8,
            &mut failure,
        );
        if result != pg_sys::TM_Result::TM_Ok {
            pg_sys::ExecDropSingleTupleTableSlot(slot);
            return None;
        }
        let row = TupleSlot(slot);
        let before = used_columns.map(|column| {
            row.get::<i32>(column)
                .expect("tally: usage counters are not NULL")
        });
        let after = before
            .checked_add(change.used)
            .expect("tally: usage counter overflow");
        // The bound: kept up to date by the change, else counted under the lock.
        let bound_column = usage.found.started_bound;
        let bound_before = bound_column.and_then(|column| row.get::<i32>(column));
        // A bound that would fall below zero is not a bound any more (sessions were
        // written past this path): unknown, so the reservations are counted below.
        let mut bound = bound_before
            .zip(change.started)
            .and_then(|(bound, started)| bound.checked_add(started).filter(|n| *n >= 0));
        let mut reservations = None;
        if bound == Some(0) {
            reservations = Some(PerSlot::default());
        } else if bound_column.is_some()
            && change.started.is_some()
            && (change.reservations_wanted || bound.is_none())
        {
            if let Some(mut counting) = Reservations::here() {
                let found =
                    counting.count_started(user_id, period_start, period_end, reservation_cutoff());
                reservations = Some(found.held);
                bound = Some(found.metered);
            }
        }
        if after == before && bound == bound_before {
            // Nothing to write: the row lock is what the caller needs (it serializes
            // limit checks), as ON CONFLICT's lock would.
            pg_sys::ExecDropSingleTupleTableSlot(slot);
            return Some(UsageWritten {
                used: before,
                reservations,
            });
        }
        let mut should_free = false;
        let old = pg_sys::ExecFetchSlotHeapTuple(slot, true, &mut should_free);
        // Every slot's column, and the bound when it changed (the last entry, else
        // unused).
        let mut columns = [0 as std::os::raw::c_int; SLOTS + 1];
        let mut values = [pg_sys::Datum::from(0); SLOTS + 1];
        let mut nulls = [false; SLOTS + 1];
        for (i, slot) in Slot::ALL.into_iter().enumerate() {
            columns[i] = used_columns[slot] as _;
            values[i] = pg_sys::Datum::from(after[slot]);
        }
        let mut changed = SLOTS;
        if let (Some(column), true) = (bound_column, bound != bound_before) {
            columns[SLOTS] = column as _;
            values[SLOTS] = pg_sys::Datum::from(bound.unwrap_or(0));
            nulls[SLOTS] = bound.is_none();
            changed = SLOTS + 1;
        }
        let new = pg_sys::heap_modify_tuple_by_cols(
            old,
            (*relation).rd_att,
            changed as _,
            columns.as_mut_ptr(),
            values.as_mut_ptr(),
            nulls.as_mut_ptr(),
        );
        let mut locked = (*slot).tts_tid;
        if crate::pg::majors::heap_update_needs_index_entries(relation, &mut locked, new) {
            let index = pg_sys::index_open(index, pg_sys::RowExclusiveLock as _);
            let info = pg_sys::BuildIndexInfo(index);
            // The index tuple as the executor forms it (ExecInsertIndexTuples), from
            // the new row: key and INCLUDE columns alike, whatever the key's shape.
            // A primary key has no expressions or predicate, so no EState is needed.
            let new_slot =
                pg_sys::MakeSingleTupleTableSlot((*relation).rd_att, &pg_sys::TTSOpsHeapTuple);
            pg_sys::ExecStoreHeapTuple(new, new_slot, false);
            let mut key_values = [pg_sys::Datum::from(0); pg_sys::INDEX_MAX_KEYS as usize];
            let mut key_nulls = [false; pg_sys::INDEX_MAX_KEYS as usize];
            pg_sys::FormIndexDatum(
                info,
                new_slot,
                std::ptr::null_mut(),
                key_values.as_mut_ptr(),
                key_nulls.as_mut_ptr(),
            );
            pg_sys::index_insert(
                index,
                key_values.as_mut_ptr(),
                key_nulls.as_mut_ptr(),
                &mut (*new).t_self,
                relation,
                pg_sys::IndexUniqueCheck::UNIQUE_CHECK_YES,
                true,
                info,
            );
            // The slot does not own the tuple, freed below.
            pg_sys::ExecDropSingleTupleTableSlot(new_slot);
            pg_sys::index_close(index, pg_sys::NoLock as _);
        }
        pg_sys::heap_freetuple(new);
        if should_free {
            pg_sys::heap_freetuple(old);
        }
        pg_sys::ExecDropSingleTupleTableSlot(slot);
        // The write made visible to what follows, as after a statement: the command
        // counter a single-row INSERT's figures are kept under (crate::answer::last_insert) is
        // then the one its statement ends with.
        pg_sys::CommandCounterIncrement();
        Some(UsageWritten {
            used: after,
            reservations,
        })
    }
}
