//! Plans and session kinds, kept per connection for the single-row counting path.
//!
//! Every counted row needs its plan's period and limits and its kind's counter: two
//! index lookups per row through tally's tables, for rows that change rarely (a
//! handful of plans and kinds against millions of sessions). They are kept here
//! after the first read, and forgotten on any relcache invalidation:
//! - tally's triggers on `tally.plans` and `tally.session_kinds` send one for the
//!   table on every INSERT, UPDATE, DELETE or TRUNCATE: before each statement
//!   (`forget_plans`, `forget_session_kinds`) and before each row
//!   (`forget_plan_rows`, `forget_session_kind_rows`), all `ENABLE ALWAYS` so that
//!   they fire under `session_replication_role = replica` too. The row triggers are
//!   for a logical-replication subscriber: its apply worker fires row triggers only
//!   (and TRUNCATE's statement triggers). Other backends receive it when
//!   the writing transaction commits, before it releases its locks; this backend at
//!   its next command (`CommandCounterIncrement`), and again if it rolls back.
//! - DDL on either table (its triggers among it), an overflowed invalidation queue
//!   and the like send one too. Invalidations of other relations leave the cache
//!   alone (crate::store::heap forgets only the tables they name).
//!
//! A reader calls `AcceptInvalidationMessages` (`catch_up`) once before using the
//! cache, after the statement snapshot it reads tally's tables with. A committed change is answered
//! from the cache only in the moment between its commit becoming visible and its
//! invalidation being sent, before its writer is told it committed: as if it had
//! committed a moment later. The changes that counting must serialise with still
//! do: a plan's new period and a kind's new counter lock rows that the inserting
//! statement's foreign key checks lock too (crate::rules::rebucket, crate::rules::guards), and
//! the writer sends its invalidation before it releases those locks.
//!
//! A value read with a snapshot can be older than an invalidation processed while it
//! was read (a commit between the snapshot and the read): `Generation` counts the
//! invalidations, and a value is kept only if none arrived since before its
//! snapshot was taken.
//!
//! Values are kept only from a table that carries its forget trigger enabled ALWAYS
//! (crate::store::heap checks the trigger when it resolves the table): not from a database
//! whose release had no such trigger (see the crate's docs); not while the owner has
//! the trigger disabled or enabled otherwise; and not on Citus placements, where
//! `tally.distribute()` re-enables the copied triggers as ordinary ones, and where an
//! update cannot add them (Citus would create them on the workers before their own
//! update had created the functions).
//! Adding, altering or dropping a trigger invalidates the table, which empties the
//! cache.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::thread::LocalKey;

use pgrx::prelude::*;
use pgrx::{pg_sys, PgTrigger};

use crate::domain::meter::{Feeds, PerSlot};
use crate::entry::binding::{on, Level::*, Timing::*, DELETE, INSERT, TRUNCATE, UPDATE};
use crate::entry::entry;
use crate::entry::errors::TallyResult;

/// What counting needs of a plan.
#[derive(Clone, Copy)]
pub(crate) struct Plan {
    pub period: Interval,
    /// The limit of each meter slot; None for no limit.
    pub limits: PerSlot<Option<i32>>,
}

thread_local! {
    static PLANS: RefCell<HashMap<String, Plan>> = RefCell::new(HashMap::new());
    static FEEDS: RefCell<HashMap<String, Feeds>> = RefCell::new(HashMap::new());
    /// Invalidations processed so far.
    static INVALIDATIONS: Cell<u64> = const { Cell::new(0) };
}

/// Values kept by name.
type Kept<V> = LocalKey<RefCell<HashMap<String, V>>>;

/// The number of invalidations processed when it was taken. Take it before the
/// snapshot that the values to keep are read with.
#[derive(Clone, Copy)]
pub(crate) struct Generation(u64);

impl Generation {
    pub(crate) fn now() -> Generation {
        // The relcache callback that counts invalidations is registered when the
        // library is loaded (crate::store::watch_invalidations), so none goes uncounted.
        Generation(INVALIDATIONS.with(Cell::get))
    }

    /// No invalidation arrived since this generation was taken.
    fn current(self) -> bool {
        INVALIDATIONS.with(Cell::get) == self.0
    }
}

/// Forgets everything kept (crate::store's relcache callback calls it).
pub(crate) fn forget() {
    INVALIDATIONS.with(|n| n.set(n.get() + 1));
    PLANS.with(|plans| plans.borrow_mut().clear());
    FEEDS.with(|feeds| feeds.borrow_mut().clear());
}

/// Processes the invalidations that other transactions committed.
pub(crate) fn catch_up() {
    // SAFETY: what every lock acquisition does; it may call `forget`.
    unsafe { pg_sys::AcceptInvalidationMessages() };
}

/// Whether this transaction reads with a fresh snapshot per statement (READ
/// COMMITTED). Under REPEATABLE READ and SERIALIZABLE a value read with the
/// transaction's snapshot can be older than invalidations already processed, so
/// keeping it would serve it to later transactions; and a kept value read there
/// would skip the transaction's own snapshot (and, in SERIALIZABLE, its predicate
/// locks). There the cache is neither read nor filled.
fn statement_snapshots() -> bool {
    // SAFETY: reads the backend's isolation level, set at transaction start.
    unsafe { pg_sys::XactIsoLevel < pg_sys::XACT_REPEATABLE_READ as i32 }
}

fn kept<V: Copy + 'static>(kept: &'static Kept<V>, name: &str) -> Option<V> {
    if !statement_snapshots() {
        return None;
    }
    kept.with(|values| values.borrow().get(name).copied())
}

fn keep<V: 'static>(kept: &'static Kept<V>, since: Generation, name: &str, value: V) {
    if since.current() && statement_snapshots() {
        kept.with(|values| values.borrow_mut().insert(name.to_string(), value));
    }
}

/// The plan `plan_id`, if kept.
pub(crate) fn plan(plan_id: &str) -> Option<Plan> {
    kept(&PLANS, plan_id)
}

/// Keeps `plan`, read with a snapshot taken after `since`.
pub(crate) fn keep_plan(since: Generation, plan_id: &str, plan: Plan) {
    keep(&PLANS, since, plan_id, plan);
}

/// The slots session kind `kind` feeds, if kept.
pub(crate) fn feeds(kind: &str) -> Option<Feeds> {
    kept(&FEEDS, kind)
}

/// Keeps what `kind` feeds, read with a snapshot taken after `since`.
pub(crate) fn keep_feeds(since: Generation, kind: &str, feeds: Feeds) {
    keep(&FEEDS, since, kind, feeds);
}

/// Sends a relcache invalidation for the trigger's table: every backend forgets what
/// it kept (at this transaction's commit; this one at its next command). Right at
/// every release, so bound with `any_release`: an earlier release fires these
/// triggers ALWAYS too, and a database not yet updated must still be able to
/// change its plans and kinds past tally's other triggers (a restore does).
fn invalidate(trigger: &PgTrigger<'_>) -> TallyResult<pg_sys::Datum> {
    // SAFETY: the trigger's relation is open for the whole call; this queues an
    // invalidation message of the current transaction.
    unsafe { pg_sys::CacheInvalidateRelcache(trigger.trigger_data().tg_relation) };
    Ok(pg_sys::Datum::null())
}

entry!(
    any_release,
    tally_forget_plans,
    pg_finfo_tally_forget_plans,
    invalidate,
    on(
        c"plans",
        Before,
        Statement,
        INSERT | UPDATE | DELETE | TRUNCATE
    )
);
entry!(
    any_release,
    tally_forget_plan_rows,
    pg_finfo_tally_forget_plan_rows,
    invalidate_for_row,
    on(c"plans", Before, Row, INSERT | UPDATE | DELETE)
);
entry!(
    any_release,
    tally_forget_session_kind_rows,
    pg_finfo_tally_forget_session_kind_rows,
    invalidate_for_row,
    on(c"session_kinds", Before, Row, INSERT | UPDATE | DELETE)
);

/// `invalidate` for a row trigger, which returns the row it was given to go on with.
fn invalidate_for_row(trigger: &PgTrigger<'_>) -> TallyResult<pg_sys::Datum> {
    invalidate(trigger)?;
    let data = trigger.trigger_data();
    let row = if data.tg_event & pg_sys::TRIGGER_EVENT_OPMASK == pg_sys::TRIGGER_EVENT_UPDATE {
        data.tg_newtuple
    } else {
        data.tg_trigtuple
    };
    Ok(pg_sys::Datum::from(row))
}

entry!(
    any_release,
    tally_forget_session_kinds,
    pg_finfo_tally_forget_session_kinds,
    invalidate,
    on(
        c"session_kinds",
        Before,
        Statement,
        INSERT | UPDATE | DELETE | TRUNCATE
    )
);
