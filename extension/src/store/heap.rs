//! Tables and index scans without the executor: tally's tables on this node opened
//! and resolved once per connection, a statement's snapshot, index scans by key and
//! the rows they return. `store::rows` builds counting's reads and the counter write
//! on these.
//!
//! Through SPI each read of the single-row counting path (the API's and every ORM's)
//! is a statement whose executor start-up costs more than the index lookup it runs;
//! here they are index scans through PostgreSQL's access methods, with what SPI
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
//! Anywhere else (`serves_here`) the reads of `store::rows` return None and counting
//! runs its SPI statements instead: those are the reference, and the correctness
//! suites run against both (`make test-spi`).

use std::ffi::CStr;

use pgrx::datum::FromDatum;
use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::citus::ShardTables;

/// A snapshot as a new SPI statement takes it, registered until dropped.
pub(crate) struct StatementSnapshot(pub(super) pg_sys::Snapshot);

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
    crate::pg::settings::fast_path() && ShardTables::all_local()
}

/// A table opened under AccessShareLock (kept to the end of the transaction), with
/// the indexes tally reads it through.
pub(super) struct Table {
    pub(super) relation: pg_sys::Relation,
    pub(super) found: Resolved,
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
pub(super) struct Resolved {
    pub(super) table: pg_sys::Oid,
    pub(super) primary_key: Option<pg_sys::Oid>,
    pub(super) reservations: Option<pg_sys::Oid>,
    /// The primary key is the table's only index.
    pub(super) only_primary_key: bool,
    /// Every trigger on the table is tally's guard against direct writes
    /// (`tally.usage_reject_direct_write()`, on a shard too), which accepts tally's
    /// own writes: a write by key may skip it.
    pub(super) guard_triggers_only: bool,
    /// (tally.usage and its shards only; false elsewhere) An update of the table needs
    /// nothing from the executor beyond the heap and its indexes: no CHECK constraint, stored
    /// generated column, rule or row security, and no publication of updates (whose
    /// replica identity the executor checks).
    pub(super) executor_adds_nothing: bool,
    /// The table carries its forget triggers (`Table::forgets_on_write`), enabled
    /// ALWAYS: what is read from it may be kept (crate::store::catalog_cache).
    pub(super) forgets_on_write: bool,
    /// tally.usage's `started_bound` column (see `add_to_usage`), on one node only:
    /// not used on a Citus shard (a distributed tally keeps no bound;
    /// `tally.distribute()` makes it NULL).
    pub(super) started_bound: Option<pg_sys::AttrNumber>,
}

thread_local! {
    /// Tables found by (local) name, each kept until a relcache invalidation of the
    /// table or of an index kept with it (or of every relation): a table or index
    /// dropped, renamed, re-created or altered (triggers, constraints, policies,
    /// publications, an index built or failed) sends one for the table, and it is
    /// processed when the table is next locked, before the kept OIDs are used.
    static RESOLVED: std::cell::RefCell<std::collections::HashMap<String, Resolved>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// Forgets the tables resolved from `relation` (InvalidOid: every relation, after an
/// overflowed queue or a publication for all tables), and the table or index kept
/// with them. True when plans or kinds kept by crate::store::catalog_cache came from one of
/// them (or from any table): they are kept only while their table's entry here says
/// it carries its forget trigger, so they go with it.
pub(super) fn forget_resolved(relation: pg_sys::Oid) -> bool {
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
    every || kept_from
}

/// The names of the tables kept resolved (the tests' view of RESOLVED).
#[cfg(any(test, feature = "pg_test"))]
pub(crate) fn resolved_names() -> Vec<String> {
    let mut names: Vec<String> = RESOLVED.with(|r| r.borrow().keys().cloned().collect());
    names.sort();
    names
}

pub(super) fn resolved(name: &str) -> Option<Resolved> {
    RESOLVED.with(|resolved| resolved.borrow().get(name).copied())
}

/// An index key: the table's column, a btree strategy, the comparison function and
/// the value.
pub(super) struct Key {
    pub(super) column: pg_sys::AttrNumber,
    pub(super) strategy: u32,
    pub(super) function: u32,
    pub(super) value: pg_sys::Datum,
}

impl Table {
    /// `tally.<table>`, or its co-located shard in a trigger on a Citus shard, to read.
    pub(super) fn open(name: &'static str) -> Option<Table> {
        Self::open_locked(name, pg_sys::AccessShareLock as _)
    }

    /// `Table::open` under `lock`.
    pub(super) fn open_locked(name: &'static str, lock: pg_sys::LOCKMODE) -> Option<Table> {
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
        RESOLVED.with(|resolved| resolved.borrow_mut().insert(local.to_string(), table.found));
        Some(table)
    }

    /// Looks up `local`, the node's table (or shard) for `name`, and its indexes.
    pub(super) fn find(name: &str, local: &str, lock: pg_sys::LOCKMODE) -> Option<Table> {
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
    pub(super) fn column(&self, name: &str) -> pg_sys::AttrNumber {
        column_of(self.relation, name)
    }

    /// The table's primary key index.
    pub(super) fn primary_key_index(&self) -> Option<pg_sys::Oid> {
        // SAFETY: the relation is open; the index list is cached in its relcache entry.
        let oid = unsafe {
            pg_sys::list_free(pg_sys::RelationGetIndexList(self.relation));
            crate::pg::majors::primary_key_index(self.relation)
        };
        (oid != pg_sys::Oid::INVALID).then_some(oid)
    }

    /// Whether every trigger on the table runs `tally.usage_reject_direct_write()`.
    /// Told by the function, not the trigger's name: Citus names a shard's copy of a
    /// trigger `<name>_<shard id>`. (Creating, dropping or renaming a trigger
    /// invalidates the table's relcache entry, which empties RESOLVED.)
    pub(super) fn guard_triggers_only(&self) -> bool {
        self.triggers()
            .iter()
            .all(|t| runs_tally_function(t, &[c"usage_reject_direct_write"]))
    }

    /// Whether an update of the table needs nothing the executor would add to a heap
    /// update: a DBA's CHECK constraint, generated column, rule, row security
    /// or publication of updates each makes the counter write take the SQL path,
    /// where PostgreSQL applies it. (Adding any of them invalidates the relcache
    /// entry, which makes the table be resolved again.)
    pub(super) fn executor_adds_nothing(&self) -> bool {
        // SAFETY: the relation is open; its descriptor, rules and class row are read,
        // and the publication descriptor is built into a local value.
        unsafe {
            let relation = self.relation;
            let constraints = (*(*relation).rd_att).constr;
            let checks_or_generated = !constraints.is_null()
                && ((*constraints).num_check > 0
                    || crate::pg::majors::has_generated_columns(constraints));
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
    /// or while the owner has either disabled (crate::store::catalog_cache).
    pub(super) fn forgets_on_write(&self) -> bool {
        let always = |names: &[&CStr]| {
            self.triggers().iter().any(|t| {
                t.tgenabled as u8 == pg_sys::TRIGGER_FIRES_ALWAYS && runs_tally_function(t, names)
            })
        };
        always(&[c"forget_plans", c"forget_session_kinds"])
            && always(&[c"forget_plan_rows", c"forget_session_kind_rows"])
    }

    /// The table's triggers.
    pub(super) fn triggers(&self) -> &[pg_sys::Trigger] {
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
    pub(super) fn index_named(&self, name: &str) -> Option<pg_sys::Oid> {
        // SAFETY: the relation is open; the list and the names are read, not kept.
        unsafe {
            let list = pg_sys::RelationGetIndexList(self.relation);
            let found = (0..list.as_ref()?.length)
                .map(|i| pg_sys::list_nth_oid(list, i))
                .find(|&index| {
                    let relname = pg_sys::get_rel_name(index);
                    !relname.is_null() && {
                        let n = CStr::from_ptr(relname).to_bytes();
                        n == name.as_bytes()
                            || crate::citus::shard_id_in_name(n, name.as_bytes()).is_some()
                    }
                });
            pg_sys::list_free(list);
            found.filter(|&index| index_usable(index))
        }
    }

    /// Calls `each` with every row found through `index` by `keys` and visible to
    /// `snapshot`, until it returns false.
    pub(super) fn scan(
        &self,
        index: pg_sys::Oid,
        keys: &[Key],
        snapshot: &StatementSnapshot,
        mut each: impl FnMut(&TupleSlot) -> bool,
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
                if !each(&TupleSlot(slot)) {
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
    pub(super) fn find_for_update(
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
    pub(super) fn by_text_key<R>(
        &self,
        column: &str,
        value: &str,
        snapshot: &StatementSnapshot,
        read: impl FnOnce(&TupleSlot) -> R,
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
pub(super) struct IndexScan {
    pub(super) index: pg_sys::Relation,
    pub(super) scan: pg_sys::IndexScanDesc,
}

impl IndexScan {
    /// # Safety
    /// `relation` is open; `index` is one of its indexes, and every key's column is
    /// one of the index's.
    pub(super) unsafe fn begin(
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
            let scan =
                crate::pg::majors::index_beginscan(relation, index, snapshot.0, keys.len() as _);
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
pub(super) fn runs_tally_function(trigger: &pg_sys::Trigger, names: &[&CStr]) -> bool {
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
pub(super) fn column_if_any(relation: pg_sys::Relation, name: &str) -> Option<pg_sys::AttrNumber> {
    // SAFETY: the relation is open; its tuple descriptor is read, not kept.
    unsafe {
        let desc = (*relation).rd_att;
        (0..(*desc).natts as usize)
            .map(|i| crate::pg::majors::attribute(desc, i))
            .position(|a| {
                !a.attisdropped
                    && CStr::from_ptr(a.attname.data.as_ptr()).to_bytes() == name.as_bytes()
            })
            .map(|i| (i + 1) as pg_sys::AttrNumber)
    }
}

/// A row in a slot.
pub(crate) struct TupleSlot(pub(super) *mut pg_sys::TupleTableSlot);

impl TupleSlot {
    /// Column `column` (an attribute number), converted to `T`.
    pub(super) fn get<T: FromDatum>(&self, column: pg_sys::AttrNumber) -> Option<T> {
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

/// Whether the index is valid and ready, as the planner requires of an index it uses.
pub(super) fn index_usable(index: pg_sys::Oid) -> bool {
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
