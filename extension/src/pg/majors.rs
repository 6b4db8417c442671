//! What differs between the PostgreSQL majors tally builds for (15 and 18), chosen at
//! compile time by the crate's `pg15` / `pg18` feature. Everything else in the
//! library calls PostgreSQL through APIs both majors share; each item here names the
//! PostgreSQL change that made it differ.

use std::os::raw::c_int;

use pgrx::pg_sys;

/// A search path of pg_catalog only, in effect until the token is dropped (unless
/// unwinding from an error: the (sub)transaction's abort undoes it).
///
/// PostgreSQL 15 has `PushOverrideSearchPath`, which swaps the path without touching
/// the GUC. PostgreSQL 17 removed it (commit "Remove PushOverrideSearchPath and
/// PopOverrideSearchPath"), leaving what a function's `SET search_path` does: the
/// setting made in a GUC nest level of its own, whose parsed form 17's search path
/// cache keeps, so switching back and forth does not parse it again.
#[cfg(feature = "pg15")]
pub(crate) struct SearchPathToken(());
/// The GUC nest level the path was set in (crate::pg::guc::SettingsLevel).
#[cfg(feature = "pg18")]
pub(crate) struct SearchPathToken {
    _level: crate::pg::guc::SettingsLevel,
}

#[cfg(feature = "pg15")]
pub(crate) fn push_catalog_search_path() -> SearchPathToken {
    let mut path = pg_sys::OverrideSearchPath {
        schemas: std::ptr::null_mut(),
        addCatalog: true,
        addTemp: false,
        generation: 0,
    };
    // SAFETY: PostgreSQL copies the path; it is popped when the token is dropped at
    // the same transaction nesting level, or discarded by PostgreSQL if the
    // transaction aborts first.
    unsafe { pg_sys::PushOverrideSearchPath(&mut path) };
    SearchPathToken(())
}

#[cfg(feature = "pg18")]
pub(crate) fn push_catalog_search_path() -> SearchPathToken {
    SearchPathToken {
        _level: crate::pg::guc::SettingsLevel::open(&[(c"search_path", c"pg_catalog, pg_temp")]),
    }
}

#[cfg(feature = "pg15")]
impl Drop for SearchPathToken {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        // SAFETY: pops the entry push_catalog_search_path pushed.
        unsafe { pg_sys::PopOverrideSearchPath() };
    }
}

/// `simple_heap_update`, and whether the new version needs index entries (it is not
/// a heap-only tuple).
///
/// PostgreSQL 16 gave `simple_heap_update` an out parameter saying which indexes
/// need new entries (`TU_UpdateIndexes`, for summarizing indexes); before, the new
/// tuple's `HEAP_ONLY_TUPLE` flag said it. tally's fast path writes only to a table
/// whose one index is its btree primary key, so "all" or "none" is the answer.
///
/// # Safety
/// `relation` is open and locked for writing, `otid` is the version this
/// transaction holds locked, `tuple` the new version.
pub(crate) unsafe fn heap_update_needs_index_entries(
    relation: pg_sys::Relation,
    otid: pg_sys::ItemPointer,
    tuple: pg_sys::HeapTuple,
) -> bool {
    #[cfg(feature = "pg15")]
    // SAFETY: the caller's contract.
    unsafe {
        pg_sys::simple_heap_update(relation, otid, tuple);
        (*(*tuple).t_data).t_infomask2 as u32 & pg_sys::HEAP_ONLY_TUPLE == 0
    }
    #[cfg(feature = "pg18")]
    // SAFETY: the caller's contract.
    unsafe {
        let mut update = pg_sys::TU_UpdateIndexes::TU_None;
        pg_sys::simple_heap_update(relation, otid, tuple, &mut update);
        update == pg_sys::TU_UpdateIndexes::TU_All
    }
}

/// `index_beginscan` for a plain scan.
///
/// PostgreSQL 18 added the scan's instrumentation (`IndexScanInstrumentation`, for
/// EXPLAIN ANALYZE's index searches); tally's scans report none.
///
/// # Safety
/// As `index_beginscan`: both relations open, the snapshot registered.
pub(crate) unsafe fn index_beginscan(
    relation: pg_sys::Relation,
    index: pg_sys::Relation,
    snapshot: pg_sys::Snapshot,
    keys: c_int,
) -> pg_sys::IndexScanDesc {
    #[cfg(feature = "pg15")]
    // SAFETY: the caller's contract.
    unsafe {
        pg_sys::index_beginscan(relation, index, snapshot, keys, 0)
    }
    #[cfg(feature = "pg18")]
    // SAFETY: the caller's contract.
    unsafe {
        pg_sys::index_beginscan(relation, index, snapshot, std::ptr::null_mut(), keys, 0)
    }
}

/// Attribute `i` (from 0) of a tuple descriptor.
///
/// PostgreSQL 18 put a compact copy of every attribute first in `TupleDescData`
/// (`compact_attrs`), so the full attributes are no longer a plain member array and
/// are reached through `TupleDescAttr`.
///
/// # Safety
/// `desc` is a valid descriptor and `i < natts`.
pub(crate) unsafe fn attribute<'a>(
    desc: pg_sys::TupleDesc,
    i: usize,
) -> &'a pg_sys::FormData_pg_attribute {
    #[cfg(feature = "pg15")]
    // SAFETY: the caller's contract.
    unsafe {
        &(*desc).attrs.as_slice((*desc).natts as usize)[i]
    }
    #[cfg(feature = "pg18")]
    // SAFETY: the caller's contract.
    unsafe {
        &*pg_sys::TupleDescAttr(desc, i as c_int)
    }
}

/// The result relation's slots for its CHECK constraints' prepared expressions, one
/// per constraint in the relcache's order, as `ExecRelCheck` fills them.
///
/// PostgreSQL 18 renamed the member `ri_ConstraintExprs` to `ri_CheckConstraintExprs`
/// (beside the new `ri_GenVirtualNotNullConstraintExprs`).
///
/// # Safety
/// `info` is an opened result relation.
pub(crate) unsafe fn check_constraint_slots(
    info: *mut pg_sys::ResultRelInfo,
) -> *mut *mut *mut pg_sys::ExprState {
    #[cfg(feature = "pg15")]
    // SAFETY: the caller's contract.
    unsafe {
        &mut (*info).ri_ConstraintExprs
    }
    #[cfg(feature = "pg18")]
    // SAFETY: the caller's contract.
    unsafe {
        &mut (*info).ri_CheckConstraintExprs
    }
}

/// Whether `ExecRelCheck` prepares these constraints as tally's prebuilt
/// expressions are (each stored expression as it is, every one of them).
///
/// PostgreSQL 18 added constraints that are NOT ENFORCED (their slot stays empty) and
/// virtual generated columns (expanded into the expression before it is prepared,
/// `expand_generated_columns_in_expr`); for a table with either, PostgreSQL prepares
/// the expressions itself.
///
/// # Safety
/// `constr` is the relcache's, of an open relation.
pub(crate) unsafe fn checks_prepared_as_stored(
    constr: *const pg_sys::TupleConstr,
    checks: &[pg_sys::ConstrCheck],
) -> bool {
    #[cfg(feature = "pg15")]
    {
        let _ = (constr, checks);
        true
    }
    #[cfg(feature = "pg18")]
    // SAFETY: the caller's contract.
    unsafe {
        !(*constr).has_generated_virtual && checks.iter().all(|check| check.ccenforced)
    }
}

/// The table's primary key index, or InvalidOid; a deferrable one does not count (it
/// is not an arbiter for ON CONFLICT, which the fast path stands in for).
///
/// PostgreSQL 18 added the `deferrable_ok` argument (deferrable primary keys serve
/// some callers there); before, a deferrable primary key was never returned.
///
/// # Safety
/// `relation` is open and its index list was read (`RelationGetIndexList`).
pub(crate) unsafe fn primary_key_index(relation: pg_sys::Relation) -> pg_sys::Oid {
    #[cfg(feature = "pg15")]
    // SAFETY: the caller's contract.
    unsafe {
        pg_sys::RelationGetPrimaryKeyIndex(relation)
    }
    #[cfg(feature = "pg18")]
    // SAFETY: the caller's contract.
    unsafe {
        pg_sys::RelationGetPrimaryKeyIndex(relation, false)
    }
}

/// Whether a table has generated columns whose rules the executor applies on every
/// write: stored ones (computed), and on 18 virtual ones too, which may carry NOT
/// NULL (checked through `ri_GenVirtualNotNullConstraintExprs`).
///
/// PostgreSQL 18 added virtual generated columns (and made them the default kind).
///
/// # Safety
/// `constr` is the relcache's, of an open relation, and not NULL.
pub(crate) unsafe fn has_generated_columns(constr: *const pg_sys::TupleConstr) -> bool {
    #[cfg(feature = "pg15")]
    // SAFETY: the caller's contract.
    unsafe {
        (*constr).has_generated_stored
    }
    #[cfg(feature = "pg18")]
    // SAFETY: the caller's contract.
    unsafe {
        (*constr).has_generated_stored || (*constr).has_generated_virtual
    }
}
