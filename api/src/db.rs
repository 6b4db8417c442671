//! The statements the API runs. The extension does the counting; these only write
//! sessions and read counters, through prepared statements cached per connection.

use deadpool_postgres::GenericClient;
use uuid::Uuid;

use crate::error::ApiError;
use crate::model::{
    Counter, LearningPlanProgress, NewSession, Session, SessionUpdate, Usage, SESSION_COLUMNS,
};

/// Inserts the session unless its id exists; None when it did.
pub async fn insert_session(
    client: &impl GenericClient,
    request: &NewSession,
    user_id: &str,
) -> Result<Option<Session>, tokio_postgres::Error> {
    let sql = format!(
        "INSERT INTO tally.sessions (session_id, user_id, kind, learning_plan_id, status, started_at, completed_at, duration_seconds)
         VALUES (coalesce($1, gen_random_uuid()), $2, $3, $4, $5, coalesce($6, now()), $7, $8)
         ON CONFLICT (session_id) DO NOTHING
         RETURNING {SESSION_COLUMNS}"
    );
    let statement = client.prepare_cached(&sql).await?;
    let status = request
        .status
        .unwrap_or(crate::model::NewStatus::Completed)
        .as_str();
    let row = client
        .query_opt(
            &statement,
            &[
                &request.session_id,
                &user_id,
                &request.kind,
                &request.learning_plan_id,
                &status,
                &request.started_at,
                &request.completed_at,
                &request.duration_seconds,
            ],
        )
        .await?;
    Ok(row.as_ref().map(Session::from))
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

/// The user's counters for the current period and learning plans, in one query.
pub async fn usage(client: &impl GenericClient, user_id: &str) -> Result<Usage, ApiError> {
    let statement = client
        .prepare_cached(
            "SELECT cu.user_id, cu.plan_id, cu.period_start, cu.period_end,
                    cu.practice_sessions_used, cu.practice_sessions_limit, cu.practice_sessions_remaining,
                    cu.assessments_used, cu.assessments_limit, cu.assessments_remaining,
                    coalesce((SELECT json_agg(json_build_object(
                                        'learning_plan_id', lp.learning_plan_id, 'title', lp.title,
                                        'completed_sessions', lp.completed_sessions, 'total_sessions', lp.total_sessions)
                                      ORDER BY lp.created_at, lp.learning_plan_id)
                                FROM tally.learning_plans lp WHERE lp.user_id = cu.user_id), '[]'::json)
               FROM tally.current_usage cu WHERE cu.user_id = $1",
        )
        .await?;
    let row = client
        .query_opt(&statement, &[&user_id])
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no subscription for user {user_id:?}")))?;
    let plans: serde_json::Value = row.get(10);
    let learning_plans: Vec<LearningPlanProgress> = serde_json::from_value(plans)
        .map_err(|e| ApiError::Internal(format!("learning plans: {e}")))?;
    Ok(Usage {
        user_id: row.get(0),
        plan_id: row.get(1),
        period_start: row.get(2),
        period_end: row.get(3),
        practice_sessions: Counter {
            used: row.get(4),
            limit: row.get(5),
            remaining: row.get(6),
        },
        assessments: Counter {
            used: row.get(7),
            limit: row.get(8),
            remaining: row.get(9),
        },
        learning_plans,
    })
}

/// True when the database answers and has the extension.
pub async fn ready(client: &impl GenericClient) -> Result<bool, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'tally')",
            &[],
        )
        .await?;
    Ok(row.get(0))
}
