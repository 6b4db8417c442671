//! Running tally's SPI statements: plans prepared once per backend, the parameter
//! types they take, the transition tables they read, and typed result columns.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiClient, SpiTupleTable};
use pgrx::{pg_sys, PgOid, PgTrigger};

thread_local! {
    static PLANS: RefCell<HashMap<Box<str>, Rc<OwnedPreparedStatement>>> = RefCell::new(HashMap::new());
}

/// Runs `sql` through a plan prepared once per backend, planned for index lookups
/// (crate::pg::planning::IndexOnlyPlanning). The plan cache re-plans by itself when the
/// tables change. In a trigger on a Citus shard, `sql` names the co-located shards
/// instead of tally's tables (crate::citus::ShardTables).
pub(crate) fn run_cached<'conn>(
    client: &mut SpiClient<'conn>,
    sql: &'static str,
    types: &[PgOid],
    args: &[DatumWithOid<'_>],
) -> SpiTupleTable<'conn> {
    crate::pg::planning::IndexOnlyPlanning::apply();
    run_cached_as_planned(client, sql, types, args)
}

/// run_cached_as_planned for a statement over a whole bulk load (BULK_ROWS rows or
/// more of a transition table), planned with sorts disabled. A transition table has
/// no statistics, so its joins look selective and the planner would sort every row
/// to group them (an external merge sort of the whole load); hashed, only the groups
/// are sorted. `sql` groups in a MATERIALIZED CTE, planned apart from the outer sort
/// that puts the groups in key order. That sort, disabled but the only one possible,
/// makes the plan's cost look huge: JIT compilation is turned off with it, or every
/// bulk statement would compile and optimize its expressions first (and on Citus
/// every shard's statement of a COPY).
pub(crate) fn run_cached_for_bulk<'conn>(
    client: &mut SpiClient<'conn>,
    sql: &'static str,
) -> SpiTupleTable<'conn> {
    let _settings =
        crate::pg::guc::SettingsLevel::open(&[(c"enable_sort", c"off"), (c"jit", c"off")]);
    // The statement has run when the level closes: SPI keeps its rows.
    run_cached_as_planned(client, sql, &[], &[])
}

/// run_cached without IndexOnlyPlanning's settings: for a statement that scans no
/// table (an INSERT of given values, whose ON CONFLICT probes the arbiter index
/// whatever the settings).
pub(crate) fn run_cached_as_planned<'conn>(
    client: &mut SpiClient<'conn>,
    sql: &'static str,
    types: &[PgOid],
    args: &[DatumWithOid<'_>],
) -> SpiTupleTable<'conn> {
    let sql = crate::citus::ShardTables::local(sql);
    let cached = PLANS.with(|plans| plans.borrow().get(&*sql).cloned());
    let plan = match cached {
        Some(plan) => plan,
        None => {
            let plan = Rc::new(
                client
                    .prepare_mut(&*sql, types)
                    .unwrap_or_else(|e| panic!("tally: cannot prepare query: {e}"))
                    .keep(),
            );
            PLANS.with(|plans| {
                plans
                    .borrow_mut()
                    .insert(Box::from(&*sql), Rc::clone(&plan))
            });
            plan
        }
    };
    client
        .update(&*plan, None, args)
        .unwrap_or_else(|e| panic!("tally: query failed: {e}"))
}

// Parameter types of the prepared statements.
pub(crate) const TEXT: PgOid = PgOid::BuiltIn(PgBuiltInOids::TEXTOID);
pub(crate) const TEXT_ARRAY: PgOid = PgOid::BuiltIn(PgBuiltInOids::TEXTARRAYOID);
pub(crate) const TIMESTAMPTZ: PgOid = PgOid::BuiltIn(PgBuiltInOids::TIMESTAMPTZOID);
pub(crate) const TIMESTAMPTZ_ARRAY: PgOid = PgOid::BuiltIn(PgBuiltInOids::TIMESTAMPTZARRAYOID);
pub(crate) const INTERVAL_ARRAY: PgOid = PgOid::BuiltIn(PgBuiltInOids::INTERVALARRAYOID);
pub(crate) const INT4: PgOid = PgOid::BuiltIn(PgBuiltInOids::INT4OID);
pub(crate) const INT4_ARRAY: PgOid = PgOid::BuiltIn(PgBuiltInOids::INT4ARRAYOID);
pub(crate) const UUID: PgOid = PgOid::BuiltIn(PgBuiltInOids::UUIDOID);

/// Makes the statement's transition tables (tally_new, tally_old) visible to SPI.
pub(crate) fn register_transition_tables(trigger: &PgTrigger<'_>) {
    let data = trigger.trigger_data() as *const pg_sys::TriggerData as *mut pg_sys::TriggerData;
    // SAFETY: called inside an SPI connection with the trigger data PostgreSQL passed in.
    let rc = unsafe { pg_sys::SPI_register_trigger_data(data) };
    assert!(rc >= 0, "tally: SPI_register_trigger_data failed ({rc})");
}

pub(crate) fn get<T: pgrx::datum::FromDatum + pgrx::datum::IntoDatum>(
    row: &pgrx::spi::SpiHeapTupleData<'_>,
    ordinal: usize,
) -> T {
    get_nullable(row, ordinal)
        .unwrap_or_else(|| panic!("tally: NULL counting result column {ordinal}"))
}

/// A column of a counting query that may be NULL.
pub(crate) fn get_nullable<T: pgrx::datum::FromDatum + pgrx::datum::IntoDatum>(
    row: &pgrx::spi::SpiHeapTupleData<'_>,
    ordinal: usize,
) -> Option<T> {
    row.get::<T>(ordinal)
        .unwrap_or_else(|e| panic!("tally: bad counting result column {ordinal}: {e}"))
}
