//! What tally needs to know of Citus, when tally's tables are distributed on it
//! (`tally.distribute()`): which relations are shards of tally's tables, and which
//! shards are on this node.
//!
//! Citus copies a table's triggers to its shards and fires them there. A trigger on a
//! shard may reach co-located shards on its own node through tally's table names
//! (Citus routes those statements locally) but nothing on another node. A reference
//! table (plans, session kinds) has a copy on every node, and its triggers fire once
//! on each: each firing then checks or fixes what lies on its own node, through the
//! shards placed there, and together they cover the cluster exactly once.

use std::cell::RefCell;
use std::collections::HashSet;
use std::ffi::CStr;

use pgrx::pg_sys;
use pgrx::prelude::*;

thread_local! {
    /// Relations already found to be shards of tally's tables (the lookup is done
    /// once per backend and shard).
    static KNOWN_SHARDS: RefCell<HashSet<(pg_sys::Oid, i64)>> = RefCell::new(HashSet::new());
}

/// The shard id when `name` reads `<base>_<digits>`, Citus's name for a shard's copy
/// of table, index or constraint `base`.
pub(crate) fn shard_id_in_name(name: &[u8], base: &[u8]) -> Option<i64> {
    name.strip_prefix(base)
        .and_then(|rest| rest.strip_prefix(b"_"))
        .and_then(|digits| std::str::from_utf8(digits).ok())
        .filter(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|digits| digits.parse().ok())
}

/// Whether Citus's metadata records relation `oid` as shard `shard_id` of
/// `tally.<table>`.
pub(crate) fn is_shard_of(oid: pg_sys::Oid, shard_id: i64, table: &CStr) -> bool {
    if KNOWN_SHARDS.with(|known| known.borrow().contains(&(oid, shard_id))) {
        return true;
    }
    let shard = citus_catalog("pg_dist_shard")
        && Spi::get_one_with_args::<bool>(
            "SELECT EXISTS (SELECT FROM pg_catalog.pg_dist_shard
                             WHERE shardid = $1 AND logicalrelid = pg_catalog.to_regclass($2))",
            &[
                shard_id.into(),
                format!("tally.{}", table.to_string_lossy()).into(),
            ],
        )
        .ok()
        .flatten()
        .unwrap_or(false);
    if shard {
        KNOWN_SHARDS.with(|known| known.borrow_mut().insert((oid, shard_id)));
    }
    shard
}

/// Whether a trigger fires on a Citus shard (a placement of a reference table
/// included) rather than on tally's table itself.
pub(crate) fn on_shard(relation: pg_sys::Relation, table: &CStr) -> bool {
    // SAFETY: the trigger's relation is open and locked for the whole call.
    let relname = unsafe { CStr::from_ptr((*(*relation).rd_rel).relname.data.as_ptr()) };
    relname != table
}

/// The qualified names of the shards of `tally.<table>` placed on this node.
pub(crate) fn local_shards(table: &str) -> Vec<String> {
    Spi::connect(|client| {
        client
            .select(
                "SELECT pg_catalog.shard_name(s.logicalrelid, s.shardid)
                   FROM pg_catalog.pg_dist_shard s
                   JOIN pg_catalog.pg_dist_placement p ON p.shardid = s.shardid
                  WHERE s.logicalrelid = pg_catalog.to_regclass($1)
                    AND p.groupid = (SELECT groupid FROM pg_catalog.pg_dist_local_group)
                  ORDER BY s.shardid",
                None,
                &[format!("tally.{table}").into()],
            )
            .unwrap_or_else(|e| panic!("tally: cannot list the shards on this node: {e}"))
            .filter_map(|row| row.get::<String>(1).ok().flatten())
            .collect()
    })
}

/// Whether tally's tables are distributed by Citus (`tally.distribute()` ran).
pub(crate) fn distributed() -> bool {
    citus_catalog("pg_dist_partition")
        && Spi::get_one::<bool>(
            "SELECT EXISTS (SELECT FROM pg_catalog.pg_dist_partition
                             WHERE logicalrelid = pg_catalog.to_regclass('tally.sessions'))",
        )
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// Whether Citus's catalog table `name` exists here (a query naming it would not
/// even parse without Citus).
fn citus_catalog(name: &str) -> bool {
    Spi::get_one_with_args::<bool>(
        "SELECT pg_catalog.to_regclass('pg_catalog.' || $1) IS NOT NULL",
        &[name.into()],
    )
    .ok()
    .flatten()
    .unwrap_or(false)
}

/// `citus.allow_nested_distributed_execution` on until dropped, for a function Citus
/// runs inside a query it routed to this node, whose own statements address the
/// same user's co-located shards (local ones).
/// Nothing where Citus is absent.
#[must_use]
pub(crate) struct AllowNestedExecution {
    _level: Option<crate::pg::guc::SettingsLevel>,
}

impl AllowNestedExecution {
    pub(crate) fn begin() -> Self {
        AllowNestedExecution {
            _level: crate::pg::guc::SettingsLevel::open_if_defined(&[(
                c"citus.allow_nested_distributed_execution",
                c"on",
            )]),
        }
    }
}

/// The ProcessUtility hook that ran before tally's (Citus's, when it is preloaded
/// first, or PostgreSQL's own).
static mut PREVIOUS_UTILITY_HOOK: pg_sys::ProcessUtility_hook_type = None;

/// Installs the checks of `SET tally.…` and of TRUNCATE below; called once, from
/// _PG_init.
pub(crate) fn guard_session_settings() {
    // SAFETY: _PG_init runs once per backend before any statement; the previous hook
    // is kept and called for every statement.
    unsafe {
        PREVIOUS_UTILITY_HOOK = pg_sys::ProcessUtility_hook;
        pg_sys::ProcessUtility_hook = Some(process_utility);
    }
}

// Declared here so that the call is not wrapped in pgrx's guard: an error raised
// below this hook (a trigger's own SQLSTATE, say) must reach PostgreSQL as it is.
unsafe extern "C-unwind" {
    #[link_name = "standard_ProcessUtility"]
    fn raw_standard_process_utility(
        pstmt: *mut pg_sys::PlannedStmt,
        query_string: *const std::os::raw::c_char,
        read_only_tree: bool,
        context: pg_sys::ProcessUtilityContext::Type,
        params: pg_sys::ParamListInfo,
        query_env: *mut pg_sys::QueryEnvironment,
        dest: *mut pg_sys::DestReceiver,
        qc: *mut pg_sys::QueryCompletion,
    );
}

/// tally's ProcessUtility hook: the check below, then the statement as usual. It
/// holds no value that needs dropping while the statement runs, so an error raised
/// there passes through it untouched.
#[allow(clippy::too_many_arguments)]
unsafe extern "C-unwind" fn process_utility(
    pstmt: *mut pg_sys::PlannedStmt,
    query_string: *const std::os::raw::c_char,
    read_only_tree: bool,
    context: pg_sys::ProcessUtilityContext::Type,
    params: pg_sys::ParamListInfo,
    query_env: *mut pg_sys::QueryEnvironment,
    dest: *mut pg_sys::DestReceiver,
    qc: *mut pg_sys::QueryCompletion,
) {
    // SAFETY: pstmt is the statement PostgreSQL is about to run.
    unsafe {
        refuse_session_set(pstmt);
        refuse_unprivileged_truncate(pstmt);
    }
    // SAFETY: the arguments PostgreSQL passed, handed on unchanged.
    unsafe {
        match PREVIOUS_UTILITY_HOOK {
            Some(previous) => previous(
                pstmt,
                query_string,
                read_only_tree,
                context,
                params,
                query_env,
                dest,
                qc,
            ),
            None => raw_standard_process_utility(
                pstmt,
                query_string,
                read_only_tree,
                context,
                params,
                query_env,
                dest,
                qc,
            ),
        }
    }
}

/// On a distributed tally, a plain `SET tally.<setting>` (or `SET … TO DEFAULT`)
/// would change the setting on the coordinator only: Citus passes on `SET LOCAL`
/// inside a transaction block (with `citus.propagate_set_commands = 'local'`) and
/// role or database settings, not session ones. The triggers that read tally's
/// settings run on the workers, so such a SET is refused instead of half applied.
#[pg_guard]
unsafe extern "C-unwind" fn refuse_session_set(pstmt: *mut pg_sys::PlannedStmt) {
    // SAFETY: a VariableSetStmt node is read only when its tag says so.
    let refused = unsafe {
        let statement = (*pstmt).utilityStmt;
        if !statement.is_null() && (*statement).type_ == pg_sys::NodeTag::T_VariableSetStmt {
            let set = statement as *mut pg_sys::VariableSetStmt;
            let name = (*set).name;
            let session_wide = !(*set).is_local
                && matches!(
                    (*set).kind,
                    pg_sys::VariableSetKind::VAR_SET_VALUE
                        | pg_sys::VariableSetKind::VAR_SET_DEFAULT
                );
            (session_wide && !name.is_null())
                .then(|| CStr::from_ptr(name).to_string_lossy().into_owned())
                // tally's own settings (a typo gets PostgreSQL's error), set by a
                // role allowed to (others get PostgreSQL's 42501).
                .filter(|name| {
                    matches!(
                        name.as_str(),
                        "tally.enforce_limits" | "tally.reservation_timeout"
                    )
                })
                .filter(|_| pg_sys::superuser() && pg_sys::IsTransactionState() && distributed())
        } else {
            None
        }
    };
    if let Some(name) = refused {
        pgrx::ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!("SET {name} would reach only the coordinator: tally is distributed with Citus; use SET LOCAL inside a transaction block, or ALTER ROLE/DATABASE ... SET"),
            "tally's triggers run on the workers, which see SET LOCAL inside a transaction block and role or database settings, not a session SET",
        );
    }
}

/// A TRUNCATE of one of tally's tables by a role without the TRUNCATE privilege is
/// refused here, with PostgreSQL's own error, before the statement runs. PostgreSQL
/// checks the privilege before it locks the table; Citus, whose hook runs before
/// PostgreSQL's, locks a distributed table on every node first, so a role that may
/// not truncate would otherwise wait behind every writer and stall them in turn
/// until the distributed deadlock detector cancels one. The name is resolved without
/// a lock: PostgreSQL checks again as it runs the statement.
#[pg_guard]
unsafe extern "C-unwind" fn refuse_unprivileged_truncate(pstmt: *mut pg_sys::PlannedStmt) {
    // SAFETY: a TruncateStmt node is read only when its tag says so; its relations
    // are a list of RangeVar.
    unsafe {
        let statement = (*pstmt).utilityStmt;
        if statement.is_null() || (*statement).type_ != pg_sys::NodeTag::T_TruncateStmt {
            return;
        }
        let tally = pg_sys::get_namespace_oid(c"tally".as_ptr(), true);
        let relations = (*(statement as *mut pg_sys::TruncateStmt)).relations;
        let Some(list) = relations.as_ref() else {
            return;
        };
        for i in 0..list.length {
            let range_var = pg_sys::list_nth(relations, i) as *const pg_sys::RangeVar;
            let relid = pg_sys::RangeVarGetRelidExtended(
                range_var,
                pg_sys::NoLock as pg_sys::LOCKMODE,
                pg_sys::RVROption::RVR_MISSING_OK,
                None,
                std::ptr::null_mut(),
            );
            if relid == pg_sys::InvalidOid || pg_sys::get_rel_namespace(relid) != tally {
                continue;
            }
            let allowed = pg_sys::pg_class_aclcheck(
                relid,
                pg_sys::GetUserId(),
                pg_sys::ACL_TRUNCATE as pg_sys::AclMode,
            );
            if allowed != pg_sys::AclResult::ACLCHECK_OK {
                pg_sys::aclcheck_error(
                    allowed,
                    pg_sys::ObjectType::OBJECT_TABLE,
                    pg_sys::get_rel_name(relid),
                );
            }
        }
    }
}

/// In a trigger on a Citus shard, the names of the shards co-located with it (and of
/// this node's copies of the reference tables): tally's statements there read and
/// write those directly, as PostgreSQL tables, instead of through Citus, which would
/// plan each one as a distributed query only to route it back to this node. They are
/// the very rows Citus would route to; locks and triggers are the same.
pub(crate) struct ShardTables {
    /// (`tally.<table>`, the local shard's qualified name)
    names: Vec<(&'static str, String)>,
    /// Statements already rewritten, by the address of their text.
    rewritten: RefCell<std::collections::HashMap<usize, std::rc::Rc<str>>>,
}

thread_local! {
    /// Shard names by the relation a trigger fired on.
    static SHARD_TABLES: RefCell<std::collections::HashMap<pg_sys::Oid, Option<std::rc::Rc<ShardTables>>>> =
        RefCell::new(std::collections::HashMap::new());
    /// The trigger calls running now: whether each runs on a shard, and the shard
    /// names it uses there (None: on tally's tables, or a shard whose co-located
    /// shards are not all here).
    static CURRENT: RefCell<Vec<(bool, Option<std::rc::Rc<ShardTables>>)>> = const { RefCell::new(Vec::new()) };
}

/// The tables tally's counting statements name.
const COUNTED_TABLES: [(&str, bool); 6] = [
    ("tally.subscriptions", false),
    ("tally.learning_plans", false),
    ("tally.sessions", false),
    ("tally.usage", false),
    ("tally.plans", true),
    ("tally.session_kinds", true),
];

/// Statement text for the running trigger: `sql` itself, or with tally's tables
/// replaced by the local shards when the trigger runs on a shard.
pub(crate) enum LocalSql {
    Static(&'static str),
    Shard(std::rc::Rc<str>),
}

impl std::ops::Deref for LocalSql {
    type Target = str;
    fn deref(&self) -> &str {
        match self {
            LocalSql::Static(sql) => sql,
            LocalSql::Shard(sql) => sql,
        }
    }
}

/// Marks the trigger call that holds it as running on `relation` until dropped.
#[must_use]
pub(crate) struct OnShard(());

impl Drop for OnShard {
    fn drop(&mut self) {
        CURRENT.with(|current| current.borrow_mut().pop());
    }
}

impl ShardTables {
    /// Enters a trigger call on `relation` (tally's `table` or one of its shards).
    pub(crate) fn enter(relation: pg_sys::Relation, table: &CStr) -> OnShard {
        let shard = on_shard(relation, table);
        let tables = if shard {
            // SAFETY: the trigger's relation is open for the whole call.
            let (oid, relname) = unsafe {
                (
                    (*relation).rd_id,
                    CStr::from_ptr((*(*relation).rd_rel).relname.data.as_ptr()),
                )
            };
            SHARD_TABLES.with(|cache| {
                if let Some(found) = cache.borrow().get(&oid) {
                    return found.clone();
                }
                let found = shard_id_in_name(relname.to_bytes(), table.to_bytes())
                    .and_then(Self::lookup)
                    .map(std::rc::Rc::new);
                cache.borrow_mut().insert(oid, found.clone());
                found
            })
        } else {
            None
        };
        CURRENT.with(|current| current.borrow_mut().push((shard, tables)));
        OnShard(())
    }

    /// Whether the running trigger fired on a Citus shard.
    pub(crate) fn in_shard() -> bool {
        CURRENT.with(|current| current.borrow().last().is_some_and(|(shard, _)| *shard))
    }

    /// Whether the running trigger reaches all of tally's tables as PostgreSQL
    /// tables of this node (one node, or a shard whose co-located shards are named
    /// here), so that one query may join them with a transition table.
    pub(crate) fn all_local() -> bool {
        #[cfg(any(test, feature = "pg_test"))]
        if routed_in_tests::ON.with(|on| on.get()) {
            return false;
        }
        CURRENT.with(|current| {
            current
                .borrow()
                .last()
                .is_none_or(|(shard, tables)| !shard || tables.is_some())
        })
    }

    /// The co-located shards of `shard_id` and the reference tables' copies, all on
    /// this node; None when any is missing here (Citus then routes as usual).
    fn lookup(shard_id: i64) -> Option<ShardTables> {
        let (tables, reference): (Vec<&str>, Vec<bool>) = COUNTED_TABLES.iter().copied().unzip();
        let found: std::collections::HashMap<String, String> = Spi::connect(|client| {
            client
                .select(
                    "SELECT t.name, pg_catalog.shard_name(s.logicalrelid, s.shardid)
                       FROM unnest($1::text[], $2::bool[]) AS t(name, reference)
                       JOIN pg_catalog.pg_dist_shard s ON s.logicalrelid = pg_catalog.to_regclass(t.name)
                       JOIN pg_catalog.pg_dist_placement p ON p.shardid = s.shardid
                      WHERE p.groupid = (SELECT groupid FROM pg_catalog.pg_dist_local_group)
                        AND (t.reference OR s.shardminvalue =
                             (SELECT shardminvalue FROM pg_catalog.pg_dist_shard WHERE shardid = $3))",
                    None,
                    &[tables.clone().into(), reference.into(), shard_id.into()],
                )
                .map(|rows| {
                    rows.filter_map(|row| Some((row.get::<String>(1).ok()??, row.get::<String>(2).ok()??)))
                        .collect()
                })
                .unwrap_or_default()
        });
        let names = tables
            .into_iter()
            .map(|table| found.get(table).map(|shard| (table, shard.clone())))
            .collect::<Option<Vec<_>>>()?;
        Some(ShardTables {
            names,
            rewritten: RefCell::new(std::collections::HashMap::new()),
        })
    }

    /// `sql` for the running trigger (see LocalSql).
    pub(crate) fn local(sql: &'static str) -> LocalSql {
        let tables = CURRENT.with(|current| current.borrow().last().and_then(|(_, t)| t.clone()));
        let Some(tables) = tables else {
            return LocalSql::Static(sql);
        };
        let key = sql.as_ptr() as usize;
        if let Some(done) = tables.rewritten.borrow().get(&key) {
            return LocalSql::Shard(done.clone());
        }
        let done: std::rc::Rc<str> = tables.rewrite(sql).into();
        tables.rewritten.borrow_mut().insert(key, done.clone());
        LocalSql::Shard(done)
    }

    /// Replaces each `tally.<table>` that names a whole word.
    fn rewrite(&self, sql: &str) -> String {
        let mut out = String::with_capacity(sql.len() + 64);
        let mut rest = sql;
        'scan: while let Some(at) = rest.find("tally.") {
            out.push_str(&rest[..at]);
            let tail = &rest[at..];
            for (table, shard) in &self.names {
                if let Some(after) = tail.strip_prefix(table) {
                    if !after.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
                        out.push_str(shard);
                        rest = after;
                        continue 'scan;
                    }
                }
            }
            out.push_str("tally.");
            rest = &tail["tally.".len()..];
        }
        out.push_str(rest);
        out
    }
}

/// Forgets which trigger runs (a transaction or subtransaction aborted inside one).
pub(crate) fn reset() {
    CURRENT.with(|current| current.borrow_mut().clear());
}

/// In the in-process tests: run counting as on a shard whose co-located shards are
/// elsewhere (every read and write a routed SPI statement), on one node.
#[cfg(any(test, feature = "pg_test"))]
pub(crate) mod routed_in_tests {
    thread_local! {
        pub(crate) static ON: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
}
