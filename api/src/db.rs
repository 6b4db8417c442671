//! The statements the API runs. The extension does the counting; these only write
//! sessions and read counters, through prepared statements cached per connection.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use tokio_postgres::types::Json;
use uuid::Uuid;

use crate::error::ApiError;
use crate::model::{NewSession, Session, SessionUpdate, Usage, SESSION_COLUMNS};

/// How many times a write is tried when it fails to serialize or deadlocks.
const ATTEMPTS: usize = 3;

/// Runs `write`, again when PostgreSQL says that trying again may succeed.
pub async fn with_retries<T, Fut>(mut write: impl FnMut() -> Fut) -> Result<T, ApiError>
where
    Fut: std::future::Future<Output = Result<T, tokio_postgres::Error>>,
{
    let mut attempt = 1;
    loop {
        match write().await {
            Err(e) if attempt < ATTEMPTS && ApiError::is_retryable(&e) => attempt += 1,
            other => return Ok(other?),
        }
    }
}

/// What `tally.record_session` did: whether it inserted, the stored session and the
/// user's usage read after the write.
#[derive(serde::Deserialize)]
pub struct Recorded {
    pub created: bool,
    pub session: Session,
    pub usage: Usage,
}

/// Inserts the session unless its id exists and reads the counters, in one call to
/// the extension (one round trip). None when the id existed but the row is gone.
///
/// `not_before` bounds a backdated `started_at` (and the user's current billing
/// period does too); None lets the caller import history.
pub async fn record_session(
    client: &impl GenericClient,
    request: &NewSession,
    user_id: &str,
    not_before: Option<DateTime<Utc>>,
) -> Result<Option<Recorded>, ApiError> {
    let statement = client
        .prepare_cached("SELECT tally.record_session($1, $2, $3, $4, $5, $6, $7, $8, $9)")
        .await?;
    let status = request
        .status
        .unwrap_or(crate::model::NewStatus::Completed)
        .as_str();
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 9] = [
        &user_id,
        &request.kind,
        &request.session_id,
        &request.learning_plan_id,
        &status,
        &request.started_at,
        &request.completed_at,
        &request.duration_seconds,
        &not_before,
    ];
    let row = with_retries(|| client.query_one(&statement, &params)).await?;
    if let Ok(recorded) = row.try_get::<_, Option<Json<Recorded>>>(0) {
        return Ok(recorded.map(|recorded| recorded.0));
    }
    // The stored session holds a value JSON cannot carry in RFC 3339 (a timestamp
    // before year 1, written with SQL). It is committed, and a retry must get it
    // back, not the same failure: read the session and the usage in binary instead.
    let Json(raw) = row
        .try_get::<_, Json<serde_json::Value>>(0)
        .map_err(|e| ApiError::Internal(format!("record_session returned no JSON: {e}")))?;
    let id = raw["session"]["session_id"]
        .as_str()
        .and_then(|id| Uuid::parse_str(id).ok())
        .ok_or_else(|| ApiError::Internal("record_session returned no session_id".into()))?;
    let session = find_session(client, id, Some(user_id))
        .await?
        .ok_or_else(|| ApiError::Conflict("the session was deleted meanwhile; retry".into()))?;
    let usage = usage(client, &session.user_id).await?;
    Ok(Some(Recorded {
        created: raw["created"].as_bool().unwrap_or(false),
        session,
        usage,
    }))
}

/// The session with this id: the caller's own first when `preferred` names a user
/// (a user token). On one node ids are unique; on Citus they are unique per user,
/// and an id two users share is a conflict for a caller who names neither.
pub async fn find_session(
    client: &impl GenericClient,
    id: Uuid,
    preferred: Option<&str>,
) -> Result<Option<Session>, ApiError> {
    let statement = client
        .prepare_cached(&format!(
            "SELECT {SESSION_COLUMNS} FROM tally.sessions WHERE session_id = $1
              ORDER BY user_id IS NOT DISTINCT FROM $2 DESC, user_id LIMIT 2"
        ))
        .await?;
    let rows = client.query(&statement, &[&id, &preferred]).await?;
    match rows.as_slice() {
        [] => Ok(None),
        [only] => Ok(Some(Session::from(only))),
        // A user token gets its own session, or another user's to be refused (403).
        [first, ..] if preferred.is_some() => Ok(Some(Session::from(first))),
        _ => Err(ApiError::Conflict(format!(
            "session id {id} is used by more than one user: a service caller cannot tell which is meant"
        ))),
    }
}

/// Finishes `owner`'s session with this id. None when `owner` has no such session.
pub async fn finish_session(
    client: &impl GenericClient,
    id: Uuid,
    owner: &str,
    update: &SessionUpdate,
) -> Result<Option<Session>, tokio_postgres::Error> {
    let statement = client
        .prepare_cached(&format!(
            "UPDATE tally.sessions
                SET status = $2,
                    completed_at = coalesce($3, completed_at),
                    duration_seconds = coalesce($4, duration_seconds)
              WHERE user_id = $5 AND session_id = $1
             RETURNING {SESSION_COLUMNS}"
        ))
        .await?;
    let row = client
        .query_opt(
            &statement,
            &[
                &id,
                &update.status.as_str(),
                &update.completed_at,
                &update.duration_seconds,
                &owner,
            ],
        )
        .await?;
    Ok(row.as_ref().map(Session::from))
}

/// The user's counters for the current period and learning plans, as the extension
/// builds them (the same document `tally.record_session` returns).
pub async fn usage(client: &impl GenericClient, user_id: &str) -> Result<Usage, ApiError> {
    let statement = client
        .prepare_cached("SELECT tally.usage_document($1)")
        .await?;
    let row = client.query_one(&statement, &[&user_id]).await?;
    row.get::<_, Option<Json<Usage>>>(0)
        .map(|usage| usage.0)
        .ok_or_else(|| ApiError::NotFound(format!("no subscription for user {user_id:?}")))
}

/// The extension version whose SQL this API calls (`tally.record_session` with
/// `not_before`).
pub const REQUIRED_EXTENSION_VERSION: (u64, u64, u64) = (0, 2, 0);

/// What the database offers the API.
pub enum Readiness {
    Ready,
    NoExtension,
    /// The extension is there but older than the version this API calls.
    OutdatedExtension(String),
}

/// `major.minor.patch` of an extension version, for comparing.
fn version_triple(version: &str) -> Option<(u64, u64, u64)> {
    let mut parts = version.split('.').map(|p| p.parse::<u64>().ok());
    Some((parts.next()??, parts.next()??, parts.next()??))
}

/// Whether the database has the extension, and one new enough for this API.
pub async fn ready(client: &impl GenericClient) -> Result<Readiness, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'tally'",
            &[],
        )
        .await?;
    Ok(match row.map(|r| r.get::<_, String>(0)) {
        None => Readiness::NoExtension,
        Some(version) if version_triple(&version) >= Some(REQUIRED_EXTENSION_VERSION) => {
            Readiness::Ready
        }
        Some(version) => Readiness::OutdatedExtension(version),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn versions_compare_by_number() {
        use super::version_triple as v;
        assert!(v("0.10.0") > v("0.2.0"));
        assert!(v("0.2.0") >= Some(super::REQUIRED_EXTENSION_VERSION));
        assert!(v("0.1.0") < Some(super::REQUIRED_EXTENSION_VERSION));
        assert_eq!(v("unknown"), None);
    }
}
