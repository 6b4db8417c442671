//! The usage document after a session was recorded (`tally.record_session`).
//!
//! The document is `tally.current_usage_document` for the session's user. Reading that
//! view again right after the INSERT repeats what the counting trigger has just
//! looked up: the subscription and plan, the usage row it raised (and holds locked
//! until commit) and the reservations its limit check counted. When the trigger's
//! figures cover the document, it is built from them and only the learning plans are
//! read; otherwise the view is read. Both give the same document, which
//! `record_session.sql` checks case by case.

use pgrx::datum::{DatumWithOid, JsonString};
use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::counted::{take_counted, Counted};
use crate::limits::IndexOnlyPlanning;
use crate::privilege::AsExtensionOwner;
use crate::spi::{run_cached, INT4, TEXT, TIMESTAMPTZ};

/// The view's document, from figures already known. Same keys, types and order as
/// `tally.current_usage_document`. Runs as the view's owner with a search path of
/// pg_catalog only, as the view itself would.
const FROM_COUNTS_SQL: &str = r#"
SELECT pg_catalog.json_build_object(
           'user_id', $1,
           'plan_id', $2,
           'period_start', $3,
           'period_end', $4,
           'practice_sessions', pg_catalog.json_build_object('used', $5, 'limit', $6, 'remaining', $7),
           'assessments', pg_catalog.json_build_object('used', $8, 'limit', $9, 'remaining', $10),
           'learning_plans', coalesce((
               SELECT pg_catalog.json_agg(plan.item)
                 FROM (SELECT pg_catalog.json_build_object('learning_plan_id', lp.learning_plan_id,
                                                           'title', lp.title,
                                                           'completed_sessions', lp.completed_sessions,
                                                           'total_sessions', lp.total_sessions) AS item
                         FROM tally.learning_plans lp
                        WHERE lp.user_id = $1
                        ORDER BY lp.created_at, lp.learning_plan_id) plan), '[]'::pg_catalog.json))
"#;

/// The view, read as the caller.
const FROM_VIEW_SQL: &str =
    "SELECT d.document FROM tally.current_usage_document d WHERE d.user_id = $1";

/// `tally.current_usage_document` of `user_id`, read right after the INSERT of
/// `session_id` in the same transaction; NULL when the user has no subscription.
///
/// Declared by hand to return `json`: the text the Rust side returns is already
/// json, and json is stored as text, so it is passed on without being parsed again.
#[pg_extern(sql = r#"
CREATE FUNCTION tally.session_usage_document(user_id text, session_id uuid) RETURNS json
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
COMMENT ON FUNCTION tally.session_usage_document(text, uuid) IS
    'tally.current_usage_document of user_id, right after the INSERT of session_id in this transaction (used by tally.record_session).';
"#)]
fn session_usage_document(user_id: &str, session_id: pgrx::Uuid) -> Option<String> {
    let counted = take_counted(session_id).filter(|c| c.user_id == user_id && covers_document(c));
    // The plans are cached for the connection: keep them index lookups (see
    // IndexOnlyPlanning) whatever the statistics said when they were made.
    let _planning = IndexOnlyPlanning::begin(false);
    Spi::connect_mut(|client| match counted {
        Some(counted) => {
            let view = document_view();
            check_select(view);
            let _owner = AsExtensionOwner::of_relation(view);
            let (practice_in_progress, assessments_in_progress) =
                counted.in_progress.unwrap_or((0, 0));
            let [practice_used, practice_limit, practice_remaining] = counter_args(
                counted.practice_used,
                counted.practice_limit,
                practice_in_progress,
            );
            let [assessments_used, assessments_limit, assessments_remaining] = counter_args(
                counted.assessments_used,
                counted.assessments_limit,
                assessments_in_progress,
            );
            run_cached(
                client,
                FROM_COUNTS_SQL,
                &[
                    TEXT,
                    TEXT,
                    TIMESTAMPTZ,
                    TIMESTAMPTZ,
                    INT4,
                    INT4,
                    INT4,
                    INT4,
                    INT4,
                    INT4,
                ],
                &[
                    counted.user_id.clone().into(),
                    counted.plan_id.clone().into(),
                    counted.period_start.into(),
                    counted.period_end.into(),
                    practice_used,
                    practice_limit,
                    practice_remaining,
                    assessments_used,
                    assessments_limit,
                    assessments_remaining,
                ],
            )
            .next()
            .and_then(json_text)
        }
        None => run_cached(client, FROM_VIEW_SQL, &[TEXT], &[user_id.into()])
            .next()
            .and_then(json_text),
    })
}

/// One counter's `used`, `limit` and `remaining` parameters. `remaining` is computed
/// as `tally.current_usage` does: limit - used - in progress, never below 0, and
/// NULL when the plan has no limit.
fn counter_args(used: i32, limit: Option<i32>, in_progress: i32) -> [DatumWithOid<'static>; 3] {
    let remaining = limit.map(|limit| (limit - used - in_progress).max(0));
    [used.into(), limit.into(), remaining.into()]
}

fn json_text(row: pgrx::spi::SpiHeapTupleData<'_>) -> Option<String> {
    row.get::<JsonString>(1)
        .unwrap_or_else(|e| panic!("tally: bad usage document: {e}"))
        .map(|json| json.0)
}

/// True when the trigger's figures are the document's: its period is the current
/// one, and it counted the reservations whenever a limit needs them.
fn covers_document(counted: &Counted) -> bool {
    let current =
        crate::period::period_bounds(counted.anchor, &counted.period, pgrx::datetime::now());
    let needs_reservations =
        counted.practice_limit.is_some() || counted.assessments_limit.is_some();
    current == (counted.period_start, counted.period_end)
        && (counted.in_progress.is_some() || !needs_reservations)
}

/// The OID of `tally.current_usage_document`.
fn document_view() -> pg_sys::Oid {
    // SAFETY: catalog lookups by name; get_namespace_oid raises if the schema is missing.
    let view = unsafe {
        let schema = pg_sys::get_namespace_oid(c"tally".as_ptr(), false);
        pg_sys::get_relname_relid(c"current_usage_document".as_ptr(), schema)
    };
    if view == pg_sys::Oid::INVALID {
        error!("tally.current_usage_document does not exist");
    }
    view
}

/// The caller must be allowed to read the view, as when reading it.
fn check_select(view: pg_sys::Oid) {
    // SAFETY: an ACL check of an existing relation for the current user; raises the
    // standard 42501 error when it fails.
    unsafe {
        let result = pg_sys::pg_class_aclcheck(view, pg_sys::GetUserId(), pg_sys::ACL_SELECT as _);
        if result != pg_sys::AclResult::ACLCHECK_OK {
            pg_sys::aclcheck_error(
                result,
                pg_sys::ObjectType::OBJECT_VIEW,
                pg_sys::get_rel_name(view),
            );
        }
    }
}
