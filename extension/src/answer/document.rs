//! The usage document: what the API returns for a user (`GET /v1/users/{id}/usage`,
//! and with every recorded session).
//!
//! Its shape is defined once, by `tally.build_usage_document` here. The view
//! `tally.current_usage_document` calls it with `tally.current_usage` and the user's
//! list from `tally.learning_plan_lists`; `tally.session_usage_document` (the
//! document `tally.record_session` returns) calls the same Rust with the figures the
//! INSERT's counting trigger has just seen, which spares reading again what the
//! trigger read: the subscription and plan, the usage row it raised (and holds
//! locked until commit) and the reservations its limit check counted. Only the
//! learning plans are read, and not even those when the user has none.

use std::ffi::CStr;

use pgrx::datum::JsonString;
use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::answer::last_insert::{take_counted, Counted};
use crate::domain::meter::PerSlot;
use crate::pg::planning::IndexOnlyPlanning;
use crate::pg::privilege::{AsExtensionOwner, CatalogSearchPath};
use crate::pg::spi::{run_cached, TEXT};
use crate::store::Store;

/// One meter of the document.
struct CounterFigures {
    used: Option<i32>,
    limit: Option<i32>,
    remaining: Option<i32>,
}

/// What the document says, in its order.
struct UsageDocument<'a> {
    user_id: Option<&'a str>,
    plan_id: Option<&'a str>,
    period_start: Option<TimestampWithTimeZone>,
    period_end: Option<TimestampWithTimeZone>,
    /// Each meter slot's figures, under its meter's name.
    meters: PerSlot<CounterFigures>,
    /// The list from `tally.learning_plan_lists` (JSON); None when the user has no
    /// plans.
    learning_plans: Option<&'a str>,
}

impl UsageDocument<'_> {
    /// The JSON text, encoded by PostgreSQL's own JSON functions, laid out as
    /// `json_build_object` lays out its objects.
    fn to_json(&self) -> String {
        let mut out = JsonText::new();
        out.raw("{");
        out.key("user_id", true);
        out.text(self.user_id);
        out.key("plan_id", false);
        out.text(self.plan_id);
        out.key("period_start", false);
        out.timestamptz(self.period_start);
        out.key("period_end", false);
        out.timestamptz(self.period_end);
        for (slot, counter) in self.meters.iter() {
            out.key(slot.meter(), false);
            out.raw("{");
            out.key("used", true);
            out.int(counter.used);
            out.key("limit", false);
            out.int(counter.limit);
            out.key("remaining", false);
            out.int(counter.remaining);
            out.raw("}");
        }
        out.key("learning_plans", false);
        out.raw(self.learning_plans.unwrap_or("[]"));
        out.raw("}");
        out.finish()
    }
}

/// JSON text, written as PostgreSQL's JSON functions write it. Built in a Rust
/// string: each call into PostgreSQL costs a guarded FFI call, and this runs for
/// every session `tally.record_session` records.
struct JsonText {
    out: String,
    /// The last timestamp encoded, and where its text lies in `out`: a session's
    /// started_at, completed_at and created_at are most often the same now().
    last_timestamp: Option<(pg_sys::TimestampTz, std::ops::Range<usize>)>,
}

impl JsonText {
    /// Room for record_session's answer (a session and its usage document, about
    /// 700 bytes) without growing.
    fn new() -> Self {
        JsonText {
            out: String::with_capacity(1024),
            last_timestamp: None,
        }
    }

    fn raw(&mut self, text: &str) {
        self.out.push_str(text);
    }

    /// `"name" : `, after `, ` unless it is the object's first key.
    fn key(&mut self, name: &str, first: bool) {
        self.raw(if first { "\"" } else { ", \"" });
        self.name(name);
        self.raw("\" : ");
    }

    /// A key's name, one of the document's own: nothing in it needs escaping.
    fn name(&mut self, name: &str) {
        debug_assert!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
        self.raw(name);
    }

    /// A string, escaped as `escape_json` escapes it; `null` for NULL.
    fn text(&mut self, value: Option<&str>) {
        match value {
            Some(value) => escape_json(&mut self.out, value),
            None => self.raw("null"),
        }
    }

    /// A timestamptz as the JSON functions write one (ISO 8601, the session's
    /// time zone); `null` for NULL.
    fn timestamptz(&mut self, value: Option<TimestampWithTimeZone>) {
        let Some(value) = value else {
            return self.raw("null");
        };
        // Within one call (one time zone) the same instant is written the same way.
        if let Some((last, text)) = &self.last_timestamp {
            if *last == value.into_inner() {
                let text = text.clone();
                return self.out.extend_from_within(text);
            }
        }
        // SAFETY: JsonEncodeDateTime returns a palloc'd NUL-terminated string for a
        // timestamptz datum (infinite ones included).
        let encoded = unsafe {
            let text = pg_sys::JsonEncodeDateTime(
                std::ptr::null_mut(),
                value.into_datum().expect("a timestamptz is a datum"),
                pg_sys::TIMESTAMPTZOID,
                std::ptr::null(),
            );
            CStr::from_ptr(text)
        };
        let start = self.out.len();
        self.raw("\"");
        self.raw(
            encoded
                .to_str()
                .expect("tally: an encoded timestamp is ASCII"),
        );
        self.raw("\"");
        self.last_timestamp = Some((value.into_inner(), start..self.out.len()));
    }

    /// `"name":` after `,` unless it is the object's first key: the compact layout
    /// of `row_to_json`.
    fn compact_key(&mut self, name: &str, first: bool) {
        self.raw(if first { "\"" } else { ",\"" });
        self.name(name);
        self.raw("\":");
    }

    /// A uuid as a string, as `uuid_out` writes it (lower-case hex in 8-4-4-4-12
    /// groups); `null` for NULL.
    fn uuid(&mut self, value: Option<pgrx::Uuid>) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let Some(value) = value else {
            return self.raw("null");
        };
        self.raw("\"");
        for (i, byte) in value.as_bytes().iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                self.out.push('-');
            }
            self.out.push(char::from(HEX[usize::from(byte >> 4)]));
            self.out.push(char::from(HEX[usize::from(byte & 0xf)]));
        }
        self.raw("\"");
    }

    fn boolean(&mut self, value: Option<bool>) {
        self.raw(match value {
            Some(true) => "true",
            Some(false) => "false",
            None => "null",
        });
    }

    fn int(&mut self, value: Option<i32>) {
        match value {
            Some(value) => self.raw(itoa::Buffer::new().format(value)),
            None => self.raw("null"),
        }
    }

    fn finish(self) -> String {
        self.out
    }
}

/// `value` as a JSON string, escaped as PostgreSQL 15's `escape_json` escapes it:
/// the two-character escapes for `\b \f \n \r \t " \\`, `\u00XX` (lower-case hex)
/// for the other control characters, everything else as it is.
pub(crate) fn escape_json(out: &mut String, value: &str) {
    use std::fmt::Write;
    out.push('"');
    // Every character escaped is ASCII, so the text between two of them is copied
    // as it is, in one piece (UTF-8 sequences never contain ASCII bytes).
    let mut copied = 0;
    for (at, byte) in value.bytes().enumerate() {
        let short = match byte {
            0x08 => Some("\\b"),
            0x0c => Some("\\f"),
            b'\n' => Some("\\n"),
            b'\r' => Some("\\r"),
            b'\t' => Some("\\t"),
            b'"' => Some("\\\""),
            b'\\' => Some("\\\\"),
            byte if byte < 0x20 => None,
            _ => continue,
        };
        out.push_str(&value[copied..at]);
        match short {
            Some(escape) => out.push_str(escape),
            None => write!(out, "\\u{byte:04x}").expect("writing to a String cannot fail"),
        }
        copied = at + 1;
    }
    out.push_str(&value[copied..]);
    out.push('"');
}

/// The usage document from its figures: the one definition of its shape.
///
/// Declared by hand to take and return `json`: json is stored as text, so the list
/// comes in and the document goes out as text, without being parsed again.
#[allow(clippy::too_many_arguments)]
#[pg_extern(sql = r#"
CREATE FUNCTION tally.build_usage_document(
    user_id text, plan_id text, period_start timestamptz, period_end timestamptz,
    practice_sessions_used integer, practice_sessions_limit integer, practice_sessions_remaining integer,
    assessments_used integer, assessments_limit integer, assessments_remaining integer,
    learning_plans json) RETURNS json
STABLE PARALLEL SAFE
LANGUAGE c AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
COMMENT ON FUNCTION tally.build_usage_document(text, text, timestamptz, timestamptz, integer, integer, integer, integer, integer, integer, json) IS
    'The usage document (tally.current_usage_document) from its figures; learning_plans is the user''s list from tally.learning_plan_lists, NULL for none. STABLE: timestamps are written in the session''s time zone.';
"#)]
fn build_usage_document(
    user_id: Option<&str>,
    plan_id: Option<&str>,
    period_start: Option<TimestampWithTimeZone>,
    period_end: Option<TimestampWithTimeZone>,
    practice_sessions_used: Option<i32>,
    practice_sessions_limit: Option<i32>,
    practice_sessions_remaining: Option<i32>,
    assessments_used: Option<i32>,
    assessments_limit: Option<i32>,
    assessments_remaining: Option<i32>,
    // json, read as the text it is stored as.
    learning_plans: Option<&str>,
) -> Option<String> {
    Some(
        UsageDocument {
            user_id,
            plan_id,
            period_start,
            period_end,
            meters: PerSlot::new([
                CounterFigures {
                    used: practice_sessions_used,
                    limit: practice_sessions_limit,
                    remaining: practice_sessions_remaining,
                },
                CounterFigures {
                    used: assessments_used,
                    limit: assessments_limit,
                    remaining: assessments_remaining,
                },
            ]),
            learning_plans,
        }
        .to_json(),
    )
}

/// A row of `tally.sessions`, as `tally.record_session` answers with it.
struct SessionRow<'a> {
    session_id: Option<pgrx::Uuid>,
    user_id: Option<&'a str>,
    kind: Option<&'a str>,
    learning_plan_id: Option<pgrx::Uuid>,
    status: Option<&'a str>,
    started_at: Option<TimestampWithTimeZone>,
    completed_at: Option<TimestampWithTimeZone>,
    duration_seconds: Option<i32>,
    created_at: Option<TimestampWithTimeZone>,
}

impl SessionRow<'_> {
    /// The row as `row_to_json` writes it: its columns in the table's order, without
    /// spaces.
    fn write(&self, out: &mut JsonText) {
        out.raw("{");
        out.compact_key("session_id", true);
        out.uuid(self.session_id);
        out.compact_key("user_id", false);
        out.text(self.user_id);
        out.compact_key("kind", false);
        out.text(self.kind);
        out.compact_key("learning_plan_id", false);
        out.uuid(self.learning_plan_id);
        out.compact_key("status", false);
        out.text(self.status);
        out.compact_key("started_at", false);
        out.timestamptz(self.started_at);
        out.compact_key("completed_at", false);
        out.timestamptz(self.completed_at);
        out.compact_key("duration_seconds", false);
        out.int(self.duration_seconds);
        out.compact_key("created_at", false);
        out.timestamptz(self.created_at);
        out.raw("}");
    }
}

/// What `tally.record_session` returns, `{"created", "session", "usage"}`: the one
/// definition of its shape, laid out as `json_build_object` lays out an object.
/// `usage` is `tally.session_usage_document` of the session's user; for a session
/// this transaction has just inserted it comes from what the INSERT's counting saw.
///
/// Any role may call it: it writes back the session it is given and reads the
/// usage with the caller's rights, as `tally.session_usage_document` does.
#[allow(clippy::too_many_arguments)]
#[pg_extern(sql = r#"
CREATE FUNCTION tally.record_session_answer(
    created boolean, session_id uuid, user_id text, kind text, learning_plan_id uuid, status text,
    started_at timestamptz, completed_at timestamptz, duration_seconds integer, created_at timestamptz)
RETURNS json
VOLATILE PARALLEL UNSAFE
LANGUAGE c AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
COMMENT ON FUNCTION tally.record_session_answer(boolean, uuid, text, text, uuid, text, timestamptz, timestamptz, integer, timestamptz) IS
    'What tally.record_session returns: {created, session, usage}, the session as row_to_json writes a tally.sessions row with these columns and usage as tally.session_usage_document gives it.';
"#)]
pub(crate) fn record_session_answer(
    created: Option<bool>,
    session_id: Option<pgrx::Uuid>,
    user_id: Option<&str>,
    kind: Option<&str>,
    learning_plan_id: Option<pgrx::Uuid>,
    status: Option<&str>,
    started_at: Option<TimestampWithTimeZone>,
    completed_at: Option<TimestampWithTimeZone>,
    duration_seconds: Option<i32>,
    created_at: Option<TimestampWithTimeZone>,
) -> Option<String> {
    let usage = user_id
        .zip(session_id)
        .and_then(|(user_id, session_id)| session_usage_document(user_id, session_id));
    let mut out = JsonText::new();
    out.raw("{");
    out.key("created", true);
    out.boolean(created);
    out.key("session", false);
    SessionRow {
        session_id,
        user_id,
        kind,
        learning_plan_id,
        status,
        started_at,
        completed_at,
        duration_seconds,
        created_at,
    }
    .write(&mut out);
    out.key("usage", false);
    out.raw(usage.as_deref().unwrap_or("null"));
    out.raw("}");
    Some(out.finish())
}

/// The user's list of learning plans, read as the view's owner.
const LEARNING_PLANS_SQL: &str =
    "SELECT l.learning_plans FROM tally.learning_plan_lists l WHERE l.user_id = $1";

/// The view, read as the caller.
const FROM_VIEW_SQL: &str =
    "SELECT d.document FROM tally.current_usage_document d WHERE d.user_id = $1";

/// `tally.current_usage_document` of `user_id`, read right after the INSERT of
/// `session_id` in the same transaction; NULL when the user has no subscription.
#[pg_extern(sql = r#"
CREATE FUNCTION tally.session_usage_document(user_id text, session_id uuid) RETURNS json
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
COMMENT ON FUNCTION tally.session_usage_document(text, uuid) IS
    'tally.current_usage_document of user_id, right after the INSERT of session_id in this transaction (used by tally.record_session).';
"#)]
fn session_usage_document(user_id: &str, session_id: pgrx::Uuid) -> Option<String> {
    crate::entry::served::require();
    let counted = take_counted(session_id).filter(|c| c.user_id == user_id && covers_document(c));
    // The plans are cached for the connection: keep them index lookups (see
    // IndexOnlyPlanning) whatever the statistics said when they were made. Begun
    // after the search path below, so that its settings (a GUC nest level) end
    // before the path's, which on 18 is a nest level too (crate::pg::majors).
    let Some(counted) = counted else {
        // Read with the caller's rights, as the view is; the names in the statement
        // are resolved in pg_catalog (record_session, the caller, has no search path
        // of its own). The read below runs as the view's owner, with the same path.
        let _path = CatalogSearchPath::push();
        let _planning = IndexOnlyPlanning::begin(false);
        return Spi::connect_mut(|client| {
            run_cached(client, FROM_VIEW_SQL, &[TEXT], &[user_id.into()])
                .next()
                .and_then(json_text)
        });
    };
    let view = relation_named(c"current_usage_document")
        .unwrap_or_else(|| error!("tally.current_usage_document does not exist"));
    check_select(view);
    let _owner = AsExtensionOwner::of_relation(view);
    let _planning = IndexOnlyPlanning::begin(false);
    let has_plans = (!counted.on_shard)
        .then(Store::open)
        .and_then(|mut store| store.has_learning_plans(&counted.user_id));
    let learning_plans = match has_plans {
        Some(false) => None,
        _ => Spi::connect_mut(|client| {
            run_cached(client, LEARNING_PLANS_SQL, &[TEXT], &[user_id.into()])
                .next()
                .and_then(json_text)
        }),
    };
    Some(from_counts(&counted, learning_plans.as_deref()))
}

/// The document from the trigger's figures. `remaining` is computed as
/// `tally.current_usage` does: limit - used - in progress, never below 0, and NULL
/// when the plan has no limit.
fn from_counts(counted: &Counted, learning_plans: Option<&str>) -> String {
    let in_progress = counted.in_progress.unwrap_or_default();
    let meters = PerSlot::from_fn(|slot| {
        let (used, limit) = (counted.used[slot], counted.limits[slot]);
        CounterFigures {
            used: Some(used),
            limit,
            remaining: limit.map(|limit| (limit - used - in_progress[slot]).max(0)),
        }
    });
    UsageDocument {
        user_id: Some(&counted.user_id),
        plan_id: Some(&counted.plan_id),
        period_start: Some(counted.period_start),
        period_end: Some(counted.period_end),
        meters,
        learning_plans,
    }
    .to_json()
}

fn json_text(row: pgrx::spi::SpiHeapTupleData<'_>) -> Option<String> {
    row.get::<JsonString>(1)
        .unwrap_or_else(|e| panic!("tally: bad usage document: {e}"))
        .map(|json| json.0)
}

/// True when the trigger's figures are the document's: its period is the current
/// one, and it counted the reservations whenever a limit needs them.
fn covers_document(counted: &Counted) -> bool {
    // The trigger's period is [start, end) of the subscription's partition of time,
    // so it is the current one exactly when it contains now().
    let now = pgrx::datetime::now().into_inner();
    let current = counted.period_start.into_inner() <= now && now < counted.period_end.into_inner();
    let needs_reservations = counted.limits.any(Option::is_some);
    current && (counted.in_progress.is_some() || !needs_reservations)
}

/// The OID of the relation `tally.<name>`, if there is one.
fn relation_named(name: &CStr) -> Option<pg_sys::Oid> {
    // SAFETY: catalog lookups by name; get_namespace_oid raises if the schema is missing.
    let oid = unsafe {
        let schema = pg_sys::get_namespace_oid(c"tally".as_ptr(), false);
        pg_sys::get_relname_relid(name.as_ptr(), schema)
    };
    (oid != pg_sys::Oid::INVALID).then_some(oid)
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
