//! Reads and the counter update by key, without the executor: the single changed row
//! of a statement out of its transition table, a user's subscription and plan, a
//! kind's counter, the reservations in one (user, period), and the update of an
//! existing usage row (`add_to_usage`).
//!
//! These serve the single-row counting path (the API's and every ORM's). Through SPI
//! each is a statement whose executor start-up costs more than the index lookup it
//! runs; here they are index scans through PostgreSQL's access methods, with what SPI
//! would have given them:
//! - the snapshot of a new statement (`StatementSnapshot`: the command counter
//!   advanced, then a fresh snapshot in READ COMMITTED, the transaction's otherwise),
//!   so the reservation count, taken after the usage row lock, sees every session
//!   committed before the lock was granted;
//! - AccessShareLock on each table and index, held to the end of the transaction;
//! - in SERIALIZABLE transactions, the predicate locks, which the access methods take.
//!
//! They read tally's tables on this node: one node, or in a trigger on a Citus shard
//! the co-located shards (crate::citus::ShardTables), while `tally.fast_path` is on.
//! Anywhere else (`serves_here`) `Tables::here`, `Reservations::here` and
//! `add_to_usage` return None and counting runs its SPI statements instead: those are
//! the reference, and the correctness suites run against both (`make test-spi`).

use std::ffi::CStr;

use pgrx::datum::FromDatum;
use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::citus::ShardTables;
use crate::counter::Counter;
use crate::reference;

/// A snapshot as a new SPI statement takes it, registered until dropped.
pub(crate) struct StatementSnapshot(pg_sys::Snapshot);

impl StatementSnapshot {
    pub(crate) fn take() -> Self {
        // SAFETY: what SPI does before a statement that may see earlier writes of this
        // transaction: advance the command counter, take the transaction snapshot
        // (fresh in READ COMMITTED) and keep a registered copy of it.
        unsafe {
            pg_sys::CommandCounterIncrement();
            StatementSnapshot(pg_sys::RegisterSnapshot(pg_sys::GetTransactionSnapshot()))
        }
    }
}

impl Drop for StatementSnapshot {
    fn drop(&mut self) {
        // Unwinding from an error: the (sub)transaction's abort releases it.
        if std::thread::panicking() {
            return;
        }
        // SAFETY: registered in take(); at abort the resource owner releases it instead.
        unsafe { pg_sys::UnregisterSnapshot(self.0) };
    }
}

/// Whether this module serves reads and writes here: tally's tables are this node's
/// own and `tally.fast_path` is on.
pub(crate) fn serves_here() -> bool {
    crate::settings::fast_path() && ShardTables::all_local()
}

/// A table opened under AccessShareLock (kept to the end of the transaction), with
/// the indexes tally reads it through.
struct Table {
    relation: pg_sys::Relation,
    found: Resolved,
}

impl Drop for Table {
    fn drop(&mut self) {
        // Unwinding from an error: the abort closes the relation (its resource owner).
        if std::thread::panicking() {
            return;
        }
        // SAFETY: opened in Table::open; the lock stays, as the executor's would.
        unsafe { pg_sys::relation_close(self.relation, pg_sys::NoLock as _) };
    }
}

/// A table of tally's as found by name, and its indexes.
#[derive(Clone, Copy)]
struct Resolved {
    table: pg_sys::Oid,
    primary_key: Option<pg_sys::Oid>,
    reservations: Option<pg_sys::Oid>,
    /// The primary key is the table's only index.
    only_primary_key: bool,
    /// Every trigger on the table is tally's guard against direct writes
    /// (`tally.usage_reject_direct_write()`, on a shard too), which accepts tally's
    /// own writes: a write by key may skip it.
    guard_triggers_only: bool,
    /// (tally.usage and its shards only; false elsewhere) An update of the table needs
    /// nothing from the executor beyond the heap and its indexes: no CHECK constraint, stored
    /// generated column, rule or row security, and no publication of updates (whose
    /// replica identity the executor checks).
    executor_adds_nothing: bool,
    /// The table carries its forget triggers (`Table::forgets_on_write`), enabled
    /// ALWAYS: what is read from it may be kept (crate::reference).
    forgets_on_write: bool,
    /// tally.usage's `started_bound` column (see `add_to_usage`), on one node only:
    /// not used on a Citus shard (a distributed tally keeps no bound;
    /// `tally.distribute()` makes it NULL).
    started_bound: Option<pg_sys::AttrNumber>,
}

thread_local! {
    /// Tables found by (local) name, each kept until a relcache invalidation of the
    /// table or of an index kept with it (or of every relation): a table or index
    /// dropped, renamed, re-created or altered (triggers, constraints, policies,
    /// publications, an index built or failed) sends one for the table, and it is
    /// processed when the table is next locked, before the kept OIDs are used.
    static RESOLVED: std::cell::RefCell<std::collections::HashMap<String, Resolved>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
    static WATCHING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Registers, once per backend, the one relcache callback that empties what is
/// kept by table: RESOLVED here, and the plans and kinds of crate::reference (which
/// are kept only while RESOLVED says their table carries its forget trigger, so
/// they go when that table's entry goes).
pub(crate) fn watch_relcache() {
    if !WATCHING.with(|w| w.replace(true)) {
        // SAFETY: registers a callback that only empties caches.
        unsafe {
            pg_sys::CacheRegisterRelcacheCallback(Some(forget_resolved), pg_sys::Datum::from(0))
        };
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn forget_resolved(_arg: pg_sys::Datum, relation: pg_sys::Oid) {
    // InvalidOid: every relation (an overflowed queue, a publication for all tables).
    let every = relation == pg_sys::InvalidOid;
    let mut kept_from = false;
    RESOLVED.with(|resolved| {
        resolved.borrow_mut().retain(|_, found| {
            let hit = every
                || found.table == relation
                || found.primary_key == Some(relation)
                || found.reservations == Some(relation);
            kept_from |= hit && found.forgets_on_write;
            !hit
        })
    });
    if every || kept_from {
        reference::forget();
    }
}

/// The names of the tables kept resolved (the tests' view of RESOLVED).
#[cfg(any(test, feature = "pg_test"))]
pub(crate) fn resolved_names() -> Vec<String> {
    let mut names: Vec<String> = RESOLVED.with(|r| r.borrow().keys().cloned().collect());
    names.sort();
    names
}

fn resolved(name: &str) -> Option<Resolved> {
    RESOLVED.with(|resolved| resolved.borrow().get(name).copied())
}

/// An index key: the table's column, a btree strategy, the comparison function and
/// the value.
struct Key {
    column: pg_sys::AttrNumber,
    strategy: u32,
    function: u32,
    value: pg_sys::Datum,
}

impl Table {
    /// `tally.<table>`, or its co-located shard in a trigger on a Citus shard, to read.
    fn open(name: &'static str) -> Option<Table> {
        Self::open_locked(name, pg_sys::AccessShareLock as _)
    }

    /// `Table::open` under `lock`.
    fn open_locked(name: &'static str, lock: pg_sys::LOCKMODE) -> Option<Table> {
        let local = ShardTables::local(name);
        if let Some(found) = resolved(&local) {
            // SAFETY: locking processes pending invalidations; the OID is used only if
            // none of them emptied the cache (see RESOLVED).
            unsafe { pg_sys::LockRelationOid(found.table, lock) };
            if resolved(&local).is_some_and(|again| again.table == found.table) {
                // SAFETY: locked above, and still the table of that name.
                let relation = unsafe { pg_sys::relation_open(found.table, pg_sys::NoLock as _) };
                return Some(Table { relation, found });
            }
        }
        let table = Self::find(name, &local, lock)?;
        watch_relcache();
        RESOLVED.with(|resolved| resolved.borrow_mut().insert(local.to_string(), table.found));
        Some(table)
    }

    /// Looks up `local`, the node's table (or shard) for `name`, and its indexes.
    fn find(name: &str, local: &str, lock: pg_sys::LOCKMODE) -> Option<Table> {
        let (schema, relname) = local.split_once('.')?;
        if relname.contains('"') || schema.contains('"') {
            return None;
        }
        let schema = std::ffi::CString::new(schema).ok()?;
        let relname = std::ffi::CString::new(relname).ok()?;
        // SAFETY: a name lookup that locks what it finds (and rechecks the name after
        // the lock, as every statement does); missing_ok, so an absent table is None.
        // makeRangeVar keeps the pointers it is given: the names are copied into the
        // current memory context, which frees them with the range var.
        unsafe {
            let range = pg_sys::makeRangeVar(
                pg_sys::pstrdup(schema.as_ptr()),
                pg_sys::pstrdup(relname.as_ptr()),
                -1,
            );
            let oid = pg_sys::RangeVarGetRelidExtended(
                range,
                lock,
                pg_sys::RVROption::RVR_MISSING_OK,
                None,
                std::ptr::null_mut(),
            );
            if oid == pg_sys::Oid::INVALID {
                return None;
            }
            let relation = pg_sys::relation_open(oid, pg_sys::NoLock as _);
            let mut table = Table {
                relation,
                found: Resolved {
                    table: oid,
                    primary_key: None,
                    reservations: None,
                    only_primary_key: false,
                    guard_triggers_only: false,
                    executor_adds_nothing: false,
                    forgets_on_write: false,
                    started_bound: None,
                },
            };
            table.found.primary_key = table.primary_key_index();
            table.found.only_primary_key = table.found.primary_key.is_some() && {
                let list = pg_sys::RelationGetIndexList(relation);
                let count = list.as_ref().map_or(0, |l| l.length);
                pg_sys::list_free(list);
                count == 1
            };
            table.found.reservations = table.index_named("sessions_reservations_idx");
            table.found.guard_triggers_only = table.guard_triggers_only();
            // Read only by the counter write, which updates tally.usage (or its shard)
            // alone.
            table.found.executor_adds_nothing =
                name == "tally.usage" && table.executor_adds_nothing();
            table.found.forgets_on_write = table.forgets_on_write();
            // Kept on one node only: a Citus shard's copy of the column is not read.
            table.found.started_bound =
                (local == "tally.usage").then(|| column_of(relation, "started_bound"));
            Some(table)
        }
    }

    /// The attribute number of a column.
    fn column(&self, name: &str) -> pg_sys::AttrNumber {
        column_of(self.relation, name)
    }

    /// The table's primary key index.
    fn primary_key_index(&self) -> Option<pg_sys::Oid> {
        // SAFETY: the relation is open; the index list is cached in its relcache entry.
        let oid = unsafe {
            pg_sys::list_free(pg_sys::RelationGetIndexList(self.relation));
            crate::majors::primary_key_index(self.relation)
        };
        (oid != pg_sys::Oid::INVALID).then_some(oid)
    }

    /// Whether every trigger on the table runs `tally.usage_reject_direct_write()`.
    /// Told by the function, not the trigger's name: Citus names a shard's copy of a
    /// trigger `<name>_<shard id>`. (Creating, dropping or renaming a trigger
    /// invalidates the table's relcache entry, which empties RESOLVED.)
    fn guard_triggers_only(&self) -> bool {
        self.triggers()
            .iter()
            .all(|t| runs_tally_function(t, &[c"usage_reject_direct_write"]))
    }

    /// Whether an update of the table needs nothing the executor would add to a heap
    /// update: a DBA's CHECK constraint, generated column, rule, row security
    /// or publication of updates each makes the counter write take the SQL path,
    /// where PostgreSQL applies it. (Adding any of them invalidates the relcache
    /// entry, which makes the table be resolved again.)
    fn executor_adds_nothing(&self) -> bool {
        // SAFETY: the relation is open; its descriptor, rules and class row are read,
        // and the publication descriptor is built into a local value.
        unsafe {
            let relation = self.relation;
            let constraints = (*(*relation).rd_att).constr;
            let checks_or_generated = !constraints.is_null()
                && ((*constraints).num_check > 0
                    || crate::majors::has_generated_columns(constraints));
            let mut publication = pg_sys::PublicationDesc::default();
            pg_sys::RelationBuildPublicationDesc(relation, &mut publication);
            !checks_or_generated
                && (*relation).rd_rules.is_null()
                && !(*(*relation).rd_rel).relrowsecurity
                && !publication.pubactions.pubupdate
        }
    }

    /// Whether the table carries both of its forget triggers enabled ALWAYS: the
    /// statement trigger (`tally.forget_plans()` or `tally.forget_session_kinds()`)
    /// and the row trigger (`tally.forget_plan_rows()` or
    /// `tally.forget_session_kind_rows()`, which a logical-replication apply worker
    /// fires). Not so on a database at a release without them, on a Citus placement,
    /// or while the owner has either disabled (crate::reference).
    fn forgets_on_write(&self) -> bool {
        let always = |names: &[&CStr]| {
            self.triggers().iter().any(|t| {
                t.tgenabled as u8 == pg_sys::TRIGGER_FIRES_ALWAYS && runs_tally_function(t, names)
            })
        };
        always(&[c"forget_plans", c"forget_session_kinds"])
            && always(&[c"forget_plan_rows", c"forget_session_kind_rows"])
    }

    /// The table's triggers.
    fn triggers(&self) -> &[pg_sys::Trigger] {
        // SAFETY: the relation is open (and locked) while self lives; its trigger
        // descriptor stays with its relcache entry until then.
        unsafe {
            let triggers = (*self.relation).trigdesc;
            if triggers.is_null() {
                return &[];
            }
            std::slice::from_raw_parts((*triggers).triggers, (*triggers).numtriggers as usize)
        }
    }

    /// The index called `name` (on a shard, `name_<shard id>`), if PostgreSQL itself
    /// would use it: valid and ready. A failed `CREATE INDEX CONCURRENTLY` leaves an
    /// index of the name that is neither, with no entries (and no pages) to scan.
    fn index_named(&self, name: &str) -> Option<pg_sys::Oid> {
        // SAFETY: the relation is open; the list and the names are read, not kept.
        unsafe {
            let list = pg_sys::RelationGetIndexList(self.relation);
            let found = (0..list.as_ref()?.length)
                .map(|i| pg_sys::list_nth_oid(list, i))
                .find(|&index| {
                    let relname = pg_sys::get_rel_name(index);
                    !relname.is_null()
                        && CStr::from_ptr(relname).to_str().is_ok_and(|n| {
                            n == name
                                || n.strip_prefix(name)
                                    .and_then(|rest| rest.strip_prefix('_'))
                                    .is_some_and(|id| {
                                        !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit())
                                    })
                        })
                });
            pg_sys::list_free(list);
            found.filter(|&index| index_usable(index))
        }
    }

    /// Calls `each` with every row found through `index` by `keys` and visible to
    /// `snapshot`, until it returns false.
    fn scan(
        &self,
        index: pg_sys::Oid,
        keys: &[Key],
        snapshot: &StatementSnapshot,
        mut each: impl FnMut(&Slot) -> bool,
    ) {
        // SAFETY: an index scan as the executor runs one (IndexScan::begin), with a
        // slot of the table's own kind, dropped at the end (or by the resource owner
        // and the memory context at abort).
        unsafe {
            let scan = IndexScan::begin(self.relation, index, keys, snapshot);
            let slot = pg_sys::table_slot_create(self.relation, std::ptr::null_mut());
            while pg_sys::index_getnext_slot(
                scan.scan,
                pg_sys::ScanDirection::ForwardScanDirection,
                slot,
            ) {
                if !each(&Slot(slot)) {
                    break;
                }
            }
            pg_sys::ExecDropSingleTupleTableSlot(slot);
        }
    }

    /// The TID of the first row found through `index` by `keys` and visible to
    /// `snapshot`, for the caller to lock and update: the row's heap page read
    /// without the executor's heap fetch, and pruned only when it has too little
    /// room left for the row's next version.
    ///
    /// The executor's fetch prunes a page whenever its free space is under the
    /// table's fillfactor margin (30% on tally.usage). A page filled to its
    /// fillfactor is back at that margin as soon as a prune has freed the dead
    /// versions, so a page of counter rows would be pruned at nearly every update,
    /// each prune a scan of the whole page with a WAL record. Pruned here only when
    /// fewer than PRUNE_ROOM versions of this row still fit, a page takes dozens of
    /// HOT updates between prunes, and a prune that cannot take its cleanup lock
    /// (another backend has the page pinned) is tried again at the next updates
    /// before the page is full. Other readers (the usage view, SPI statements,
    /// VACUUM) prune as PostgreSQL does.
    fn find_for_update(
        &self,
        index: pg_sys::Oid,
        keys: &[Key],
        snapshot: &StatementSnapshot,
    ) -> Option<pg_sys::ItemPointerData> {
        /// Versions of the row that must still fit for a page to go unpruned.
        const PRUNE_ROOM: usize = 4;
        // SAFETY: what heapam_index_fetch_tuple does for each TID of the index scan,
        // with the prune made conditional: the TID's heap page pinned and share-locked
        // while its HOT chain is searched for the version visible to the snapshot,
        // then unlocked, pruned (heap_page_prune_opt, which takes the cleanup lock
        // only if it can) with the pin alone held, and released. The TID returned is
        // locked afresh by the caller, which follows any later version.
        unsafe {
            let scan = IndexScan::begin(self.relation, index, keys, snapshot);
            loop {
                let entry = pg_sys::index_getnext_tid(
                    scan.scan,
                    pg_sys::ScanDirection::ForwardScanDirection,
                );
                if entry.is_null() {
                    return None;
                }
                let mut tid = *entry;
                let buffer = pg_sys::ReadBuffer(
                    self.relation,
                    pgrx::itemptr::item_pointer_get_block_number(&tid),
                );
                pg_sys::LockBuffer(buffer, pg_sys::BUFFER_LOCK_SHARE as _);
                let mut tuple = pg_sys::HeapTupleData::default();
                let mut all_dead = false;
                let visible = pg_sys::heap_hot_search_buffer(
                    &mut tid,
                    self.relation,
                    buffer,
                    snapshot.0,
                    &mut tuple,
                    &mut all_dead,
                    true,
                );
                // A version's room: the tuple, aligned, and its line pointer.
                let version = (tuple.t_len as usize)
                    .next_multiple_of(pg_sys::MAXIMUM_ALIGNOF as usize)
                    + std::mem::size_of::<pg_sys::ItemIdData>();
                let crowded = visible
                    && pg_sys::PageGetHeapFreeSpace(pg_sys::BufferGetPage(buffer))
                        < PRUNE_ROOM * version;
                pg_sys::LockBuffer(buffer, pg_sys::BUFFER_LOCK_UNLOCK as _);
                if crowded {
                    pg_sys::heap_page_prune_opt(self.relation, buffer);
                }
                pg_sys::ReleaseBuffer(buffer);
                if visible {
                    return Some(tid);
                }
            }
        }
    }

    /// `read` of the row whose primary key, the text column `column`, equals
    /// `value`: Some(None) when there is no such row, None when the table has no
    /// primary key to find it by.
    fn by_text_key<R>(
        &self,
        column: &str,
        value: &str,
        snapshot: &StatementSnapshot,
        read: impl FnOnce(&Slot) -> R,
    ) -> Option<Option<R>> {
        let index = self.found.primary_key?;
        let keys = [Key {
            column: self.column(column),
            strategy: pg_sys::BTEqualStrategyNumber,
            function: pg_sys::F_TEXTEQ,
            value: value.into_datum()?,
        }];
        let mut read = Some(read);
        let mut found = None;
        self.scan(index, &keys, snapshot, |slot| {
            found = read.take().map(|read| read(slot));
            false
        });
        Some(found)
    }
}

/// An index scan by `keys`, as the executor begins one: the index opened under
/// AccessShareLock, keys on its columns with its collations. Ended when dropped.
struct IndexScan {
    index: pg_sys::Relation,
    scan: pg_sys::IndexScanDesc,
}

impl IndexScan {
    /// # Safety
    /// `relation` is open; `index` is one of its indexes, and every key's column is
    /// one of the index's.
    unsafe fn begin(
        relation: pg_sys::Relation,
        index: pg_sys::Oid,
        keys: &[Key],
        snapshot: &StatementSnapshot,
    ) -> IndexScan {
        // SAFETY: the caller's contract; the scan keys are copied by index_rescan.
        unsafe {
            let index = pg_sys::index_open(index, pg_sys::AccessShareLock as _);
            let form = (*index).rd_index;
            let columns = (*form).indkey.values.as_slice((*form).indnkeyatts as usize);
            let collations =
                std::slice::from_raw_parts((*index).rd_indcollation, (*form).indnkeyatts as usize);
            let mut scankeys: Vec<pg_sys::ScanKeyData> = keys
                .iter()
                .map(|key| {
                    let position = columns
                        .iter()
                        .position(|&c| c == key.column)
                        .expect("tally: a key column is in its index");
                    let mut scankey = std::mem::zeroed::<pg_sys::ScanKeyData>();
                    pg_sys::ScanKeyEntryInitialize(
                        &mut scankey,
                        0,
                        (position + 1) as pg_sys::AttrNumber,
                        key.strategy as pg_sys::StrategyNumber,
                        pg_sys::Oid::INVALID,
                        collations[position],
                        pg_sys::Oid::from(key.function),
                        key.value,
                    );
                    scankey
                })
                .collect();
            let scan = crate::majors::index_beginscan(relation, index, snapshot.0, keys.len() as _);
            pg_sys::index_rescan(
                scan,
                scankeys.as_mut_ptr(),
                keys.len() as _,
                std::ptr::null_mut(),
                0,
            );
            IndexScan { index, scan }
        }
    }
}

impl Drop for IndexScan {
    fn drop(&mut self) {
        // An error raised inside the scan unwinds through here: the scan is left to
        // the transaction's abort, which releases what it holds, rather than ended
        // in a state the error may have left half-way.
        if std::thread::panicking() {
            return;
        }
        // SAFETY: begun in IndexScan::begin and not ended since.
        unsafe {
            pg_sys::index_endscan(self.scan);
            pg_sys::index_close(self.index, pg_sys::NoLock as _);
        }
    }
}

/// Whether `trigger` runs one of tally's functions `names`.
fn runs_tally_function(trigger: &pg_sys::Trigger, names: &[&CStr]) -> bool {
    // SAFETY: catalog lookups of the trigger's function; the name is read, not kept.
    unsafe {
        let name = pg_sys::get_func_name(trigger.tgfoid);
        !name.is_null()
            && names.contains(&CStr::from_ptr(name))
            && pg_sys::get_func_namespace(trigger.tgfoid)
                == pg_sys::get_namespace_oid(c"tally".as_ptr(), true)
    }
}

/// The attribute number of column `name` of `relation`.
pub(crate) fn column_of(relation: pg_sys::Relation, name: &str) -> pg_sys::AttrNumber {
    column_if_any(relation, name).unwrap_or_else(|| panic!("tally: no column {name}"))
}

/// The attribute number of a column, if the table has it.
fn column_if_any(relation: pg_sys::Relation, name: &str) -> Option<pg_sys::AttrNumber> {
    // SAFETY: the relation is open; its tuple descriptor is read, not kept.
    unsafe {
        let desc = (*relation).rd_att;
        (0..(*desc).natts as usize)
            .map(|i| crate::majors::attribute(desc, i))
            .position(|a| {
                !a.attisdropped
                    && CStr::from_ptr(a.attname.data.as_ptr()).to_bytes() == name.as_bytes()
            })
            .map(|i| (i + 1) as pg_sys::AttrNumber)
    }
}

/// A row in a slot.
pub(crate) struct Slot(*mut pg_sys::TupleTableSlot);

impl Slot {
    /// Column `column` (an attribute number), converted to `T`.
    fn get<T: FromDatum>(&self, column: pg_sys::AttrNumber) -> Option<T> {
        // SAFETY: the slot holds a row of the relation the column number came from;
        // its values are deformed up to the column, then copied out by from_datum.
        unsafe {
            let slot = self.0;
            if (*slot).tts_nvalid < column {
                pg_sys::slot_getsomeattrs_int(slot, column as _);
            }
            let at = (column - 1) as usize;
            T::from_datum(*(*slot).tts_values.add(at), *(*slot).tts_isnull.add(at))
        }
    }
}

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
            let slot = Slot(slot);
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
    pub practice_limit: Option<i32>,
    pub assessments_limit: Option<i32>,
    pub plan_id: String,
}

/// Reads by key in tally's tables on this node, with one statement snapshot; plans
/// and kinds are answered from crate::reference once read.
pub(crate) struct Tables {
    /// Taken before the snapshot: what is read with it may be kept.
    since: reference::Generation,
    snapshot: StatementSnapshot,
}

impl Tables {
    /// None where tally's tables are not this node's own (counting then uses SPI).
    pub(crate) fn here() -> Option<Tables> {
        serves_here().then(|| {
            let since = reference::Generation::now();
            let snapshot = StatementSnapshot::take();
            reference::catch_up();
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
        let plan = match reference::plan(&plan_id) {
            Some(kept) => kept,
            None => {
                let (plan, keep) = self.plan(&plan_id)?;
                if keep {
                    reference::keep_plan(self.since, &plan_id, plan);
                }
                plan
            }
        };
        Some(Some(Subscription {
            anchor,
            period: plan.period,
            practice_limit: plan.practice_limit,
            assessments_limit: plan.assessments_limit,
            plan_id,
        }))
    }

    /// The plan `plan_id`, read, and whether it may be kept; None when it cannot be
    /// read here.
    fn plan(&self, plan_id: &str) -> Option<(reference::Plan, bool)> {
        let plans = Table::open("tally.plans")?;
        let (period, practice, assessments) = (
            plans.column("period"),
            plans.column("practice_sessions_limit"),
            plans.column("assessments_limit"),
        );
        // A subscription's plan exists (foreign key): anything else is left to SPI.
        let (Some(period), practice_limit, assessments_limit) =
            plans.by_text_key("plan_id", plan_id, &self.snapshot, |row| {
                (
                    row.get::<Interval>(period),
                    row.get::<i32>(practice),
                    row.get::<i32>(assessments),
                )
            })??
        else {
            return None;
        };
        let plan = reference::Plan {
            period,
            practice_limit,
            assessments_limit,
        };
        Some((plan, plans.found.forgets_on_write))
    }

    /// The counter of session kind `kind`; None when it cannot be read here.
    pub(crate) fn counter(&self, kind: &str) -> Option<Counter> {
        if let Some(kept) = reference::counter(kind) {
            return Some(kept);
        }
        let kinds = Table::open("tally.session_kinds")?;
        let counter = counter_of(&kinds, kind, &self.snapshot)?;
        if kinds.found.forgets_on_write {
            reference::keep_counter(self.since, kind, counter);
        }
        Some(counter)
    }

    /// Whether `user_id` has learning plans; None when it cannot be read here.
    pub(crate) fn has_learning_plans(&self, user_id: &str) -> Option<bool> {
        let plans = Table::open("tally.learning_plans")?;
        plans
            .by_text_key("user_id", user_id, &self.snapshot, |_| ())
            .map(|found| found.is_some())
    }
}

/// Counts reservations by key (crate::limits::RESERVATIONS_SQL, without the
/// executor), all with one snapshot taken when it is made: after the usage row locks
/// of the statement being checked.
pub(crate) struct Reservations {
    snapshot: StatementSnapshot,
    sessions: Table,
    kinds: Table,
    index: pg_sys::Oid,
    /// Session kinds' counters, as read with the snapshot.
    counters: std::collections::HashMap<String, Counter>,
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
            counters: std::collections::HashMap::new(),
        })
    }

    /// Started sessions holding a reservation in one (user, period) (started in the
    /// period, after `cutoff`), per counter: (practice, assessments).
    pub(crate) fn count(
        &mut self,
        user_id: &str,
        start: TimestampWithTimeZone,
        end: TimestampWithTimeZone,
        cutoff: TimestampWithTimeZone,
    ) -> (i32, i32) {
        let found = self.count_started(user_id, start, end, cutoff);
        (found.practice, found.assessments)
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
            if !self.counters.contains_key(&kind) {
                // A session's kind exists (foreign key), and kinds in use keep their
                // counter (tally.session_kinds' rule).
                let counter = counter_of(&self.kinds, &kind, &self.snapshot)
                    .expect("tally: a session's kind exists");
                self.counters.insert(kind.clone(), counter);
            }
            let counter = self.counters[&kind];
            if counter.metered() {
                found.metered += 1;
            }
            match counter {
                Counter::PracticeSessions if holds => found.practice += 1,
                Counter::Assessments if holds => found.assessments += 1,
                _ => {}
            }
        }
        found
    }
}

/// Started sessions in one (user, period): those holding a reservation per counter,
/// and every one of a metered kind.
#[derive(Default)]
pub(crate) struct StartedSessions {
    pub practice: i32,
    pub assessments: i32,
    pub metered: i32,
}

/// The counter of session kind `kind`.
fn counter_of(kinds: &Table, kind: &str, snapshot: &StatementSnapshot) -> Option<Counter> {
    let column = kinds.column("counter");
    kinds
        .by_text_key("kind", kind, snapshot, |row| row.get::<String>(column))??
        .map(|counter| Counter::from_sql(&counter))
}

/// `now() - tally.reservation_timeout()`: started sessions from before it no longer
/// hold a reservation.
pub(crate) fn reservation_cutoff() -> TimestampWithTimeZone {
    let now: TimestampWithTimeZone = pgrx::datetime::now();
    let timeout = crate::settings::reservation_timeout();
    // SAFETY: timestamptz - interval, as the SQL operator (session time zone included).
    unsafe {
        pgrx::direct_function_call::<TimestampWithTimeZone>(
            pg_sys::timestamptz_mi_interval,
            &[now.into_datum(), timeout.into_datum()],
        )
    }
    .expect("timestamptz - interval is not NULL")
}

/// Whether the index is valid and ready, as the planner requires of an index it uses.
fn index_usable(index: pg_sys::Oid) -> bool {
    // SAFETY: the index's table is open and locked, so the index cannot be dropped
    // meanwhile; the relcache entry is released before returning.
    unsafe {
        let relation = pg_sys::RelationIdGetRelation(index);
        if relation.is_null() {
            return false;
        }
        let form = (*relation).rd_index;
        let usable = !form.is_null() && (*form).indisvalid && (*form).indisready;
        pg_sys::RelationClose(relation);
        usable
    }
}

/// Whether tally.usage here keeps `started_bound` (one node, not a shard): a write to
/// it through SQL must then make the bound unknown.
pub(crate) fn usage_keeps_started_bound() -> bool {
    Table::open("tally.usage").is_some_and(|usage| usage.found.started_bound.is_some())
}

/// A change to one usage row: its counters, and what the statement did to the
/// period's started sessions.
pub(crate) struct UsageChange {
    pub practice: i32,
    pub assessments: i32,
    /// Started sessions of a metered kind added (1: one inserted started) or taken
    /// away (-1: one completed); None when not known (a statement of many rows),
    /// which leaves the row's bound unknown (NULL).
    pub started: Option<i32>,
    /// The caller checks a limit: the reservations are wanted.
    pub reservations_wanted: bool,
}

/// A usage row after `add_to_usage`.
pub(crate) struct UsageWritten {
    /// (practice, assessments) after the write.
    pub used: (i32, i32),
    /// Reservations held in the period, (practice, assessments), when known under the
    /// row lock: counted, or none because the row's bound is 0.
    pub reservations: Option<(i32, i32)>,
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
    let (user, start, practice_used, assessments_used) = (
        usage.column("user_id"),
        usage.column("period_start"),
        usage.column("practice_sessions_used"),
        usage.column("assessments_used"),
    );
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
        let row = Slot(slot);
        let before = (
            row.get::<i32>(practice_used)
                .expect("tally: usage counters are not NULL"),
            row.get::<i32>(assessments_used)
                .expect("tally: usage counters are not NULL"),
        );
        let after = (
            before
                .0
                .checked_add(change.practice)
                .expect("tally: usage counter overflow"),
            before
                .1
                .checked_add(change.assessments)
                .expect("tally: usage counter overflow"),
        );
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
            reservations = Some((0, 0));
        } else if bound_column.is_some()
            && change.started.is_some()
            && (change.reservations_wanted || bound.is_none())
        {
            if let Some(mut counting) = Reservations::here() {
                let found =
                    counting.count_started(user_id, period_start, period_end, reservation_cutoff());
                reservations = Some((found.practice, found.assessments));
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
        // The two counters, and the bound when it changed (the third entry, else unused).
        let mut columns = [
            practice_used as std::os::raw::c_int,
            assessments_used as _,
            0,
        ];
        let mut values = [
            pg_sys::Datum::from(after.0),
            pg_sys::Datum::from(after.1),
            pg_sys::Datum::from(bound.unwrap_or(0)),
        ];
        let mut nulls = [false, false, bound.is_none()];
        let mut changed = 2;
        if let (Some(column), true) = (bound_column, bound != bound_before) {
            columns[2] = column as _;
            changed = 3;
        }
        let new = pg_sys::heap_modify_tuple_by_cols(
            old,
            (*relation).rd_att,
            changed,
            columns.as_mut_ptr(),
            values.as_mut_ptr(),
            nulls.as_mut_ptr(),
        );
        let mut locked = (*slot).tts_tid;
        if crate::majors::heap_update_needs_index_entries(relation, &mut locked, new) {
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
        // counter a single-row INSERT's figures are kept under (crate::counted) is
        // then the one its statement ends with.
        pg_sys::CommandCounterIncrement();
        Some(UsageWritten {
            used: after,
            reservations,
        })
    }
}
