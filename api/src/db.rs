//! The statements the API runs. The extension does the counting; these only write
//! sessions and read counters, through prepared statements cached per connection.

use deadpool_postgres::GenericClient;
use tokio_postgres::types::Json;
use uuid::Uuid;

use crate::error::ApiError;
use crate::model::{NewSession, Session, SessionUpdate, Usage, SESSION_COLUMNS};

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
pub async fn record_session(
    client: &impl GenericClient,
    request: &NewSession,
    user_id: &str,
) -> Result<Option<Recorded>, tokio_postgres::Error> {
    let statement = client
        .prepare_cached("SELECT tally.record_session($1, $2, $3, $4, $5, $6, $7, $8)")
        .await?;
    let status = request
        .status
        .unwrap_or(crate::model::NewStatus::Completed)
        .as_str();
    let row = client
        .query_one(
            &statement,
            &[
                &user_id,
                &request.kind,
                &request.session_id,
                &request.learning_plan_id,
                &status,
                &request.started_at,
                &request.completed_at,
                &request.duration_seconds,
            ],
        )
        .await?;
    Ok(row
        .get::<_, Option<Json<Recorded>>>(0)
        .map(|recorded| recorded.0))
}

pub async fn find_session(
    client: &impl GenericClient,
    id: Uuid,
) -> Result<Option<Session>, tokio_postgres::Error> {
    let statement = client
        .prepare_cached(&format!(
            "SELECT {SESSION_COLUMNS} FROM tally.sessions WHERE session_id = $1"
        ))
        .await?;
    Ok(client
        .query_opt(&statement, &[&id])
        .await?
        .as_ref()
        .map(Session::from))
}

/// Finishes the session if `owner` may touch it (None: any owner). None when no
/// such session is visible to the caller.
pub async fn finish_session(
    client: &impl GenericClient,
    id: Uuid,
    owner: Option<&str>,
    update: &SessionUpdate,
) -> Result<Option<Session>, tokio_postgres::Error> {
    let statement = client
        .prepare_cached(&format!(
            "UPDATE tally.sessions
                SET status = $2,
                    completed_at = coalesce($3, completed_at),
                    duration_seconds = coalesce($4, duration_seconds)
              WHERE session_id = $1 AND ($5::text IS NULL OR user_id = $5)
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

/// What the database offers the API.
pub enum Readiness {
    Ready,
    NoExtension,
    /// The extension is there but older than the functions this API calls.
    OutdatedExtension,
}

/// Whether the database has the extension, and one new enough for this API.
pub async fn ready(client: &impl GenericClient) -> Result<Readiness, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'tally'),
                    to_regprocedure('tally.record_session(text, text, uuid, uuid, text, timestamptz, timestamptz, integer)') IS NOT NULL
                    AND to_regprocedure('tally.usage_document(text)') IS NOT NULL",
            &[],
        )
        .await?;
    Ok(match (row.get(0), row.get(1)) {
        (false, _) => Readiness::NoExtension,
        (true, false) => Readiness::OutdatedExtension,
        (true, true) => Readiness::Ready,
    })
}
