//! The API's one error type: every failure becomes `{"error": {"code", "message", ...}}`
//! with a stable code. Database errors are mapped by SQLSTATE (the table in the
//! README); anything unexpected is logged and reported as `internal` with no detail.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed request: bad JSON, unknown field, wrong type (400).
    #[error("{0}")]
    BadRequest(String),
    /// Well-formed but refused by the rules: unknown kind, negative duration... (422).
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    /// A session id reused with other content.
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    InvalidTransition(String),
    #[error("{}", .0.message)]
    QuotaExceeded(Box<Quota>),
    #[error("request body is larger than 64 KiB")]
    PayloadTooLarge,
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error")]
    Internal(String),
}

/// What a quota rejection reports, parsed from tally's error detail.
#[derive(Debug, Clone, PartialEq)]
pub struct Quota {
    pub message: String,
    pub counter: String,
    pub used: i64,
    pub limit: i64,
    pub in_progress: i64,
    pub period_end: String,
}

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// The stable, machine-readable error codes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 400 or 422: malformed, or refused by the rules
    #[default]
    InvalidRequest,
    /// 401: missing, bad or expired token
    Unauthorized,
    /// 403: someone else's data
    Forbidden,
    /// 404
    NotFound,
    /// 405
    MethodNotAllowed,
    /// 409: a session id reused with other content
    Conflict,
    /// 409: a status change that is not allowed
    InvalidTransition,
    /// 402: the plan limit is reached
    QuotaExceeded,
    /// 413: body over 64 KiB
    PayloadTooLarge,
    /// 503: database down or request over the time limit
    Unavailable,
    /// 500: a bug
    Internal,
}

#[derive(Debug, Default, Serialize, ToSchema)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    pub message: String,
    /// quota_exceeded only: practice_sessions or assessments
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counter: Option<String>,
    /// quota_exceeded only: completed sessions in the period before this request
    #[serde(skip_serializing_if = "Option::is_none")]
    pub used: Option<i64>,
    /// quota_exceeded only: the plan limit
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
    /// quota_exceeded only: started sessions holding a reservation
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_progress: Option<i64>,
    /// quota_exceeded only: when the period ends and the allowance renews (RFC 3339)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub period_end: Option<String>,
}

impl ApiError {
    pub fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) | ApiError::InvalidTransition(_) => StatusCode::CONFLICT,
            ApiError::QuotaExceeded(_) => StatusCode::PAYMENT_REQUIRED,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            ApiError::BadRequest(_) | ApiError::Unprocessable(_) => ErrorCode::InvalidRequest,
            ApiError::Unauthorized(_) => ErrorCode::Unauthorized,
            ApiError::Forbidden(_) => ErrorCode::Forbidden,
            ApiError::NotFound(_) => ErrorCode::NotFound,
            ApiError::Conflict(_) => ErrorCode::Conflict,
            ApiError::InvalidTransition(_) => ErrorCode::InvalidTransition,
            ApiError::QuotaExceeded(_) => ErrorCode::QuotaExceeded,
            ApiError::PayloadTooLarge => ErrorCode::PayloadTooLarge,
            ApiError::Unavailable(_) => ErrorCode::Unavailable,
            ApiError::Internal(_) => ErrorCode::Internal,
        }
    }

    /// True for failures worth retrying the whole transaction for.
    pub fn is_retryable(error: &tokio_postgres::Error) -> bool {
        // Read through sqlstate(): Citus rewraps a worker's deadlock as XX000.
        matches!(error.as_db_error().map(sqlstate), Some("40001" | "40P01"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(detail) = &self {
            tracing::error!(%detail, "internal error");
        }
        let mut detail = ErrorDetail {
            code: self.code(),
            message: self.to_string(),
            ..Default::default()
        };
        if let ApiError::QuotaExceeded(q) = &self {
            detail.counter = Some(q.counter.clone());
            detail.used = Some(q.used);
            detail.limit = Some(q.limit);
            detail.in_progress = Some(q.in_progress);
            detail.period_end = Some(q.period_end.clone());
        }
        (self.status_code(), Json(ErrorBody { error: detail })).into_response()
    }
}

/// The JSON envelope for a status produced outside the handlers: unknown routes,
/// wrong methods, oversized bodies, caught panics (500) and timeouts (503).
pub fn envelope_for(status: StatusCode) -> Response {
    let (code, message) = match status {
        StatusCode::METHOD_NOT_ALLOWED => (
            ErrorCode::MethodNotAllowed,
            "method not allowed on this route",
        ),
        StatusCode::PAYLOAD_TOO_LARGE => (
            ErrorCode::PayloadTooLarge,
            "request body is larger than 64 KiB",
        ),
        StatusCode::NOT_FOUND => (ErrorCode::NotFound, "no such route"),
        StatusCode::INTERNAL_SERVER_ERROR => (ErrorCode::Internal, "internal error"),
        s if s.is_server_error() => (
            ErrorCode::Unavailable,
            "the service cannot answer right now",
        ),
        _ => (ErrorCode::InvalidRequest, "the request was refused"),
    };
    let body = ErrorBody {
        error: ErrorDetail {
            code,
            message: message.into(),
            ..Default::default()
        },
    };
    (status, Json(body)).into_response()
}

impl From<deadpool_postgres::PoolError> for ApiError {
    fn from(error: deadpool_postgres::PoolError) -> Self {
        tracing::warn!(%error, "database pool");
        ApiError::Unavailable("the database is not reachable".into())
    }
}

/// What a client is told when a rule of the data refuses its request: what was
/// wrong and what it can do, never a constraint, table or SQL name.
fn constraint_message(constraint: &str) -> &'static str {
    match constraint {
        "sessions_kind_fkey" => {
            "unknown session kind: use one of the kinds this service is configured for (practice, learning_plan and assessment unless your operator added others)"
        }
        "sessions_user_id_fkey" => "the user has no subscription: subscribe the user first",
        "sessions_learning_plan_same_user" => {
            "the learning plan does not exist or belongs to another user: send one of the user's own learning_plan_id values, or none"
        }
        "sessions_started_at_not_in_future" => {
            "started_at is more than 5 minutes in the future: send the time the session started"
        }
        "sessions_started_at_finite" => "started_at must be a finite timestamp",
        "sessions_duration_not_negative" => "duration_seconds must not be negative",
        "sessions_completed_at_not_before_start" => {
            "completed_at is before started_at: send a completion time after the start"
        }
        "sessions_started_has_no_completed_at" => {
            "a started session has no completed_at: leave it out, or send status completed"
        }
        "sessions_completed_has_completed_at" => "a completed session needs completed_at",
        "sessions_status_known" => "status must be started, completed or abandoned",
        "sessions_pkey" => "a session with this session_id already exists",
        _ => "the request breaks a rule of the data it writes: check its fields against the API reference",
    }
}

/// What a client is told for tally's own refusals other than the quota. Fixed
/// texts: the database's messages name tables and columns.
fn tally_message(code: &str) -> &'static str {
    match code {
        "TL002" => "that status change is not allowed: a session goes from started to completed or abandoned, once",
        "TL003" => "that field of the session cannot change: a finished session may only change duration_seconds",
        _ => "the request conflicts with data the service keeps: it was not applied",
    }
}

/// Parses tally's quota DETAIL: `key=value` pairs, user_id last.
fn parse_quota(message: String, detail: &str) -> Quota {
    let mut quota = Quota {
        message,
        counter: String::new(),
        used: 0,
        limit: 0,
        in_progress: 0,
        period_end: String::new(),
    };
    for pair in detail.split(' ') {
        match pair.split_once('=') {
            Some(("user_id", _)) => break,
            Some(("counter", v)) => quota.counter = v.to_string(),
            Some(("used", v)) => quota.used = v.parse().unwrap_or_default(),
            Some(("limit", v)) => quota.limit = v.parse().unwrap_or_default(),
            Some(("in_progress", v)) => quota.in_progress = v.parse().unwrap_or_default(),
            Some(("period_end", v)) => quota.period_end = v.to_string(),
            _ => {}
        }
    }
    quota
}

/// tally's refusals by a fragment of their message, for errors that reach the client
/// as `XX000`: on Citus, an error raised on a worker during COPY or `INSERT … SELECT`
/// is rewrapped with that code, its message and DETAIL kept.
const TALLY_MESSAGES: &[(&str, &str)] = &[
    ("quota exceeded: user ", "TL001"),
    ("a session cannot change status from ", "TL002"),
    (" of a session never changes", "TL003"),
    (": only duration_seconds may change, not ", "TL003"),
    ("user_id of a subscription never changes", "TL003"),
    (
        " is maintained by tally and cannot be written directly",
        "TL004",
    ),
    (
        " cannot change while completed sessions of that kind exist",
        "TL005",
    ),
    (" completed session(s) and cannot be deleted", "TL006"),
    ("TRUNCATE of tally.sessions is not allowed", "TL007"),
    (" and the installed library (release ", "TL010"),
    // PostgreSQL's own refusals, rewrapped alike.
    (" violates foreign key constraint ", "23503"),
    (" violates check constraint ", "23514"),
    ("duplicate key value violates unique constraint ", "23505"),
    (" violates not-null constraint", "23502"),
    ("deadlock detected", "40P01"),
    ("could not serialize access due to ", "40001"),
];

/// The SQLSTATE a database error stands for: its own, or, for an `XX000` that is
/// one of tally's refusals (or a constraint's) rewrapped by Citus, the original.
pub fn sqlstate(db: &tokio_postgres::error::DbError) -> &str {
    let code = db.code().code();
    if code != "XX000" {
        return code;
    }
    TALLY_MESSAGES
        .iter()
        .find(|(fragment, _)| db.message().contains(fragment))
        .map_or(code, |(_, tally)| tally)
}

/// A constraint's name as declared: errors raised on a Citus shard name the shard's
/// copy, with the shard id appended (`sessions_kind_fkey_102041`).
fn declared_constraint(name: &str) -> &str {
    match name.rsplit_once('_') {
        Some((declared, shard))
            if !declared.is_empty()
                && !shard.is_empty()
                && shard.bytes().all(|b| b.is_ascii_digit()) =>
        {
            declared
        }
        _ => name,
    }
}

impl From<tokio_postgres::Error> for ApiError {
    fn from(error: tokio_postgres::Error) -> Self {
        let Some(db) = error.as_db_error() else {
            if error.is_closed() {
                return ApiError::Unavailable("the database connection was lost".into());
            }
            return ApiError::Internal(error.to_string());
        };
        let code = sqlstate(db);
        let constraint = declared_constraint(db.constraint().unwrap_or_default());
        match code {
            "TL001" => ApiError::QuotaExceeded(Box::new(parse_quota(
                db.message().to_string(),
                db.detail().unwrap_or(""),
            ))),
            "TL002" | "TL003" => ApiError::InvalidTransition(tally_message(code).into()),
            // The backdating bound of tally.record_session: its message names only
            // the request's started_at and the earliest time allowed.
            "TL008" => ApiError::Unprocessable(db.message().to_string()),
            // The database's tally is at a release its library does not serve: it
            // answers again once ALTER EXTENSION tally UPDATE has run.
            "TL010" => ApiError::Unavailable(
                "tally in the database is waiting for ALTER EXTENSION tally UPDATE".into(),
            ),
            c if c.starts_with("TL") => ApiError::Conflict(tally_message(code).into()),
            "23505" => ApiError::Conflict(constraint_message("sessions_pkey").into()),
            c if c.starts_with("23") => {
                ApiError::Unprocessable(constraint_message(constraint).into())
            }
            // data exceptions (bad text, out of range) and program limits (oversized keys)
            c if c.starts_with("22") || c.starts_with("54") => ApiError::Unprocessable(
                "a value in the request is out of range or not valid text".into(),
            ),
            c if c.starts_with("08") || c.starts_with("57") || c.starts_with("53") => {
                ApiError::Unavailable("the database is not available".into())
            }
            _ => ApiError::Internal(format!("{code}: {}", db.message())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn statuses_made_outside_handlers_get_the_documented_codes() {
        use http_body_util::BodyExt;
        for (status, expected) in [
            (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            (StatusCode::NOT_FOUND, "not_found"),
        ] {
            let response = envelope_for(status);
            assert_eq!(response.status(), status);
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(body["error"]["code"], expected, "{status}");
        }
    }

    #[test]
    fn shard_suffixes_come_off_constraint_names() {
        assert_eq!(
            declared_constraint("sessions_kind_fkey_102041"),
            "sessions_kind_fkey"
        );
        assert_eq!(
            declared_constraint("sessions_kind_fkey"),
            "sessions_kind_fkey"
        );
        assert_eq!(declared_constraint("sessions_pkey_7"), "sessions_pkey");
        assert_eq!(declared_constraint(""), "");
        // Every constraint the API explains keeps its message with a suffix.
        for name in [
            "sessions_kind_fkey",
            "sessions_user_id_fkey",
            "sessions_learning_plan_same_user",
            "sessions_duration_not_negative",
        ] {
            assert_eq!(
                constraint_message(declared_constraint(&format!("{name}_102033"))),
                constraint_message(name)
            );
        }
    }

    #[test]
    fn quota_detail_parses_even_with_spaces_in_the_user_id() {
        let q = parse_quota(
            "quota exceeded".into(),
            "counter=assessments used=2 in_progress=1 limit=2 adding=1 period_start=2026-03-01T00:00:00Z period_end=2026-04-01T00:00:00Z user_id=a b used=99",
        );
        assert_eq!(
            (q.counter.as_str(), q.used, q.limit, q.in_progress),
            ("assessments", 2, 2, 1)
        );
        assert_eq!(q.period_end, "2026-04-01T00:00:00Z");
    }
}
