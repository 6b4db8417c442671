//! The CHECK constraints and trigger WHEN clauses of `tally.sessions`, built once
//! per connection instead of once per statement.
//!
//! PostgreSQL builds a table's CHECK constraints for every statement that inserts or
//! updates rows (`ExecRelCheck`: each stored expression read back from its text with
//! `stringToNode`, then planned), and a trigger's WHEN clause likewise
//! (`TriggerEnabled`). For a single-row INSERT into tally.sessions, whose seven
//! rules are CHECK constraints, that was an eighth of the backend's work per
//! statement, more than tally's counting trigger spent on its usage row.
//!
//! An `ExecutorStart` hook gives each statement that writes tally.sessions the
//! expressions this connection has already read and planned: the statement only
//! initialises them (`ExecInitExpr`, `ExecInitQual`, as PostgreSQL's own
//! `ExecPrepareExpr` and `ExecPrepareQual` do after planning) into the slots
//! PostgreSQL would otherwise fill on first use. PostgreSQL still evaluates them,
//! and raises its own errors (23514 with the constraint's name).
//!
//! What is built is kept only while it is what PostgreSQL would build:
//! - each use compares the stored texts (`pg_constraint.conbin`, `pg_trigger.tgqual`
//!   as the relcache has them) with those it was built from, so an added, dropped
//!   or changed constraint or trigger is seen by the next statement;
//! - planning inlines SQL functions and folds immutable ones, so any change to a
//!   function or a type (a syscache invalidation of `pg_proc` or `pg_type`) has it
//!   built again.
//!
//! A statement uses the planned trees until it ends, and statements nest (a trigger's
//! INSERT inside another INSERT): a replaced build is freed at the end of the
//! transaction, never while a statement may still read it.

use std::cell::{Cell, RefCell};
use std::ffi::CStr;

use pgrx::pg_guard;
use pgrx::pg_sys;

/// What one connection built for `tally.sessions`, in a memory context of its own.
struct Built {
    relation: pg_sys::Oid,
    /// Per CHECK constraint, in the relcache's order: its stored text and the
    /// planned expression.
    checks: Vec<(Vec<u8>, *mut pg_sys::Expr)>,
    /// Per trigger, in the trigger descriptor's order: its WHEN clause's text and
    /// the planned qual (implicit-AND list), or None without a WHEN clause.
    whens: Vec<Option<(Vec<u8>, *mut pg_sys::List)>>,
    context: pg_sys::MemoryContext,
}

thread_local! {
    static BUILT: RefCell<Option<Built>> = const { RefCell::new(None) };
    /// Memory of builds replaced in this transaction, freed when it ends.
    static RETIRED: RefCell<Vec<pg_sys::MemoryContext>> = const { RefCell::new(Vec::new()) };
    /// A function or type changed since the build.
    static STALE: Cell<bool> = const { Cell::new(false) };
}

/// Builds replaced in one transaction before PostgreSQL is left to build for each
/// statement again (each replaced build is kept until the transaction ends).
const MAX_BUILDS_PER_TRANSACTION: usize = 16;

static mut PREVIOUS_EXECUTOR_START: pg_sys::ExecutorStart_hook_type = None;

/// Installs the hook (from `_PG_init`).
pub(crate) fn install() {
    // SAFETY: _PG_init runs once per backend, before any statement; the previous
    // hook is kept and called first.
    unsafe {
        PREVIOUS_EXECUTOR_START = pg_sys::ExecutorStart_hook;
        pg_sys::ExecutorStart_hook = Some(executor_start);
    }
    watch_catalogs();
}

#[pg_guard]
unsafe extern "C-unwind" fn executor_start(query: *mut pg_sys::QueryDesc, eflags: i32) {
    // SAFETY: the hook's contract: the QueryDesc is valid, and after the standard
    // start its EState holds the statement's opened result relations.
    unsafe {
        match PREVIOUS_EXECUTOR_START {
            Some(previous) => previous(query, eflags),
            None => pg_sys::standard_ExecutorStart(query, eflags),
        }
        let operation = (*query).operation;
        // With tally.fast_path off PostgreSQL builds every expression itself.
        if !crate::pg::settings::fast_path()
            || eflags & pg_sys::EXEC_FLAG_EXPLAIN_ONLY as i32 != 0
            || (operation != pg_sys::CmdType::CMD_INSERT
                && operation != pg_sys::CmdType::CMD_UPDATE)
        {
            return;
        }
        let estate = (*query).estate;
        let opened = (*estate).es_opened_result_relations;
        if opened.is_null() {
            return;
        }
        for i in 0..(*opened).length as usize {
            let info = (*(*opened).elements.add(i)).ptr_value as *mut pg_sys::ResultRelInfo;
            if is_sessions(info) {
                give_built(info, estate);
            }
        }
    }
}

/// Whether the result relation is `tally.sessions` (the local table, not a Citus
/// shard of it, whose triggers and constraints Citus copies under another name).
unsafe fn is_sessions(info: *mut pg_sys::ResultRelInfo) -> bool {
    // SAFETY: an opened result relation of a started statement.
    let relation = unsafe { (*info).ri_RelationDesc };
    // SAFETY: as above.
    let oid = unsafe { (*relation).rd_id };
    BUILT.with(|b| b.borrow().as_ref().map(|b| b.relation)) == Some(oid)
        || crate::entry::binding::is_local_tally_table(relation, c"sessions")
}

/// Fills the statement's empty CHECK and WHEN slots of `info` from this
/// connection's build, building first if needed.
unsafe fn give_built(info: *mut pg_sys::ResultRelInfo, estate: *mut pg_sys::EState) {
    // SAFETY: `info` is an opened result relation of the statement of `estate`;
    // its relation is open and locked, so its relcache entry (constraints and
    // triggers) stays as read here for the statement. The slots are sized by
    // PostgreSQL (`ri_TrigWhenExprs`, one per trigger of `ri_TrigDesc`) or by this
    // function (the CHECK slots of crate::pg::majors, one per constraint, as ExecRelCheck sizes it),
    // and filled in the statement's memory as PostgreSQL fills them.
    unsafe {
        let relation = (*info).ri_RelationDesc;
        let constr = (*(*relation).rd_att).constr;
        let checks: &[pg_sys::ConstrCheck] = if constr.is_null() || (*constr).num_check == 0 {
            &[]
        } else {
            std::slice::from_raw_parts((*constr).check, (*constr).num_check as usize)
        };
        let trigdesc = (*info).ri_TrigDesc;
        let triggers: &[pg_sys::Trigger] = if trigdesc.is_null() {
            &[]
        } else {
            std::slice::from_raw_parts((*trigdesc).triggers, (*trigdesc).numtriggers as usize)
        };
        let check_slots = crate::pg::majors::check_constraint_slots(info);
        let fill_checks = !checks.is_empty()
            && (*check_slots).is_null()
            && crate::pg::majors::checks_prepared_as_stored(constr, checks);
        let fill_whens =
            !(*info).ri_TrigWhenExprs.is_null() && triggers.iter().any(|t| !t.tgqual.is_null());
        if !fill_checks && !fill_whens {
            return;
        }
        if STALE.with(|s| s.replace(false))
            || !BUILT.with(|b| matches(b.borrow().as_ref(), checks, triggers))
        {
            if RETIRED.with(|r| r.borrow().len()) >= MAX_BUILDS_PER_TRANSACTION {
                // Built again and again in one transaction (DDL between statements):
                // the replaced builds stay allocated until it ends, so from here on
                // PostgreSQL builds for each statement, in the statement's memory.
                retire_built();
                return;
            }
            rebuild((*relation).rd_id, checks, triggers);
        }
        BUILT.with(|built| {
            let built = built.borrow();
            let built = built.as_ref().expect("tally: built above");
            let old = pg_sys::MemoryContextSwitchTo((*estate).es_query_cxt);
            if fill_checks {
                let slots = pg_sys::palloc(checks.len() * size_of::<*mut pg_sys::ExprState>())
                    as *mut *mut pg_sys::ExprState;
                for (i, (_, expr)) in built.checks.iter().enumerate() {
                    *slots.add(i) = pg_sys::ExecInitExpr(*expr, std::ptr::null_mut());
                }
                *check_slots = slots;
            }
            if fill_whens {
                for (i, when) in built.whens.iter().enumerate() {
                    let slot = (*info).ri_TrigWhenExprs.add(i);
                    if let (Some((_, qual)), true) = (when, (*slot).is_null()) {
                        *slot = pg_sys::ExecInitQual(*qual, std::ptr::null_mut());
                    }
                }
            }
            pg_sys::MemoryContextSwitchTo(old);
        });
    }
}

/// A stored expression's text (a NUL-terminated C string), or None for NULL.
unsafe fn stored_text<'a>(text: *const std::ffi::c_char) -> Option<&'a [u8]> {
    // SAFETY: the caller passes NULL or a NUL-terminated string that outlives 'a.
    (!text.is_null()).then(|| unsafe { CStr::from_ptr(text) }.to_bytes())
}

/// Whether `built` was built from exactly these constraints and WHEN clauses.
unsafe fn matches(
    built: Option<&Built>,
    checks: &[pg_sys::ConstrCheck],
    triggers: &[pg_sys::Trigger],
) -> bool {
    let Some(built) = built else {
        return false;
    };
    // SAFETY: the relcache's strings, valid while the relation is open.
    unsafe {
        built.checks.len() == checks.len()
            && built.whens.len() == triggers.len()
            && built
                .checks
                .iter()
                .zip(checks)
                .all(|((kept, _), check)| stored_text(check.ccbin) == Some(kept.as_slice()))
            && built.whens.iter().zip(triggers).all(|(kept, trigger)| {
                kept.as_ref().map(|(kept, _)| kept.as_slice()) == stored_text(trigger.tgqual)
            })
    }
}

/// Reads and plans the constraints and WHEN clauses as `ExecRelCheck` and
/// `TriggerEnabled` do, into a new memory context under CacheMemoryContext.
unsafe fn rebuild(
    relation: pg_sys::Oid,
    checks: &[pg_sys::ConstrCheck],
    triggers: &[pg_sys::Trigger],
) {
    // SAFETY: the strings are the relcache's, valid while the relation is open. The
    // new context is retired (freed at transaction end) until the build is complete,
    // so that an error while planning leaks nothing; the previous build is retired,
    // not freed, as a running statement may still use it.
    unsafe {
        let context = pg_sys::AllocSetContextCreateInternal(
            pg_sys::CacheMemoryContext,
            c"tally sessions expressions".as_ptr(),
            0,
            1024,
            8 * 1024,
        );
        RETIRED.with(|r| r.borrow_mut().push(context));
        let old = pg_sys::MemoryContextSwitchTo(context);
        let built_checks = checks
            .iter()
            .map(|check| {
                let text =
                    stored_text(check.ccbin).expect("tally: a CHECK constraint has an expression");
                let expr = pg_sys::stringToNode(check.ccbin) as *mut pg_sys::Expr;
                (text.to_vec(), pg_sys::expression_planner(expr))
            })
            .collect();
        let built_whens = triggers
            .iter()
            .map(|trigger| {
                let text = stored_text(trigger.tgqual)?;
                let qual = pg_sys::stringToNode(trigger.tgqual) as *mut pg_sys::Node;
                pg_sys::ChangeVarNodes(qual, pg_sys::PRS2_OLD_VARNO as i32, pg_sys::INNER_VAR, 0);
                pg_sys::ChangeVarNodes(qual, pg_sys::PRS2_NEW_VARNO as i32, pg_sys::OUTER_VAR, 0);
                let qual = pg_sys::make_ands_implicit(qual as *mut pg_sys::Expr);
                let qual =
                    pg_sys::expression_planner(qual as *mut pg_sys::Expr) as *mut pg_sys::List;
                Some((text.to_vec(), qual))
            })
            .collect();
        pg_sys::MemoryContextSwitchTo(old);
        RETIRED.with(|r| r.borrow_mut().retain(|&c| c != context));
        retire_built();
        BUILT.with(|b| {
            *b.borrow_mut() = Some(Built {
                relation,
                checks: built_checks,
                whens: built_whens,
                context,
            })
        });
    }
}

/// Forgets the current build; its memory is freed when the transaction ends.
fn retire_built() {
    if let Some(built) = BUILT.with(|b| b.borrow_mut().take()) {
        RETIRED.with(|r| r.borrow_mut().push(built.context));
    }
}

/// Registers the invalidation callbacks that mark the build stale (changed
/// functions and types), when the library is loaded (`install`): before any build.
fn watch_catalogs() {
    for cache in [
        pg_sys::SysCacheIdentifier::PROCOID,
        pg_sys::SysCacheIdentifier::TYPEOID,
    ] {
        // SAFETY: registers, once per process, a callback that only sets a flag.
        unsafe {
            pg_sys::CacheRegisterSyscacheCallback(
                cache as i32,
                Some(mark_stale),
                pg_sys::Datum::from(0),
            )
        };
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn mark_stale(_arg: pg_sys::Datum, _cache: i32, _hash: u32) {
    STALE.with(|s| s.set(true));
}

/// Frees the builds replaced in the transaction that is ending (no statement of it
/// runs any more).
pub(crate) fn free_retired() {
    for context in RETIRED.with(|r| std::mem::take(&mut *r.borrow_mut())) {
        // SAFETY: a context this module created and no longer references.
        unsafe { pg_sys::MemoryContextDelete(context) };
    }
}
