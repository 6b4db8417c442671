//! /v1/sessions: record a session (idempotent on session_id), read it, finish it.

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Datelike, Utc};
use uuid::Uuid;

use crate::auth::{Caller, Role};
use crate::db;
use crate::error::{ApiError, ErrorBody};
use crate::extract::ApiJson;
use crate::model::{NewSession, Session, SessionUpdate, SessionWithUsage};
use crate::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/sessions", post(create_session))
        .route(
            "/v1/sessions/{session_id}",
            get(get_session).patch(finish_session),
        )
}

/// Timestamps the API stores must come back in RFC 3339, whose years run from 1 to
/// 9999 here (PostgreSQL writes earlier years with a `BC` suffix).
fn check_timestamps(fields: &[(&str, Option<DateTime<Utc>>)]) -> Result<(), ApiError> {
    for (name, value) in fields {
        if let Some(t) = value {
            if !(1..=9999).contains(&t.year()) {
                return Err(ApiError::Unprocessable(format!(
                    "{name} must lie between the years 1 and 9999"
                )));
            }
        }
    }
    Ok(())
}

fn parse_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::NotFound(format!("no session {raw:?}")))
}

/// Record a session
///
/// Counting happens in the database, in the same transaction. Sending the same
/// `session_id` with the same content again returns 200 and counts once; the same
/// `session_id` with other content is a 409.
#[utoipa::path(
    post, path = "/v1/sessions", tag = "sessions",
    request_body = NewSession,
    responses(
        (status = 201, description = "Recorded and counted", body = SessionWithUsage,
         headers(("location" = String, description = "/v1/sessions/{session_id}"))),
        (status = 200, description = "The same session was already recorded; counted once", body = SessionWithUsage),
        (status = 400, description = "Malformed JSON or unknown field", body = ErrorBody),
        (status = 401, description = "Missing, bad or expired token", body = ErrorBody),
        (status = 402, description = "Plan limit reached (quota_exceeded)", body = ErrorBody),
        (status = 403, description = "The token may not act for this user", body = ErrorBody),
        (status = 409, description = "session_id reused with other content", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = ErrorBody),
        (status = 422, description = "Refused by the rules: unknown kind, negative duration, future start, learning plan of another user", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn create_session(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(request): ApiJson<NewSession>,
) -> Result<Response, ApiError> {
    let user_id = request
        .user_id
        .clone()
        .unwrap_or_else(|| caller.0.sub.clone());
    caller.may_act_for(&user_id)?;
    check_timestamps(&[
        ("started_at", request.started_at),
        ("completed_at", request.completed_at),
    ])?;
    // A user may date a session back a little (it started a while ago), never into
    // an earlier billing period with a fresh quota; a service may import history.
    let not_before = match caller.0.role {
        Role::User => Some(
            Utc::now()
                - chrono::Duration::from_std(state.config.max_backdate)
                    .unwrap_or(chrono::Duration::MAX),
        ),
        Role::Service => None,
    };
    let client = state.pool.get().await?;
    // One call, committed on its own: the counters move in the same transaction as
    // the row, inside the database, and come back with it.
    let db::Recorded {
        created,
        session,
        usage,
    } = db::record_session(&client, &request, &user_id, not_before)
        .await?
        .ok_or_else(|| {
            ApiError::Conflict("the session_id was taken and released meanwhile; retry".into())
        })?;
    if !created && !session.matches(&request, &user_id) {
        return Err(ApiError::Conflict(format!(
            "session {} already exists with other content",
            session.session_id
        )));
    }
    let body = SessionWithUsage { session, usage };
    if created {
        let location = format!("/v1/sessions/{}", body.session.session_id);
        Ok((
            StatusCode::CREATED,
            [(header::LOCATION, location)],
            Json(body),
        )
            .into_response())
    } else {
        Ok((StatusCode::OK, Json(body)).into_response())
    }
}

/// Read a session
#[utoipa::path(
    get, path = "/v1/sessions/{session_id}", tag = "sessions",
    params(("session_id" = Uuid, Path, description = "Session id")),
    responses(
        (status = 200, body = Session),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "On Citus, where session ids are unique per user: a service token read an id two users share (conflict)", body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get_session(
    State(state): State<AppState>,
    caller: Caller,
    Path(raw_id): Path<String>,
) -> Result<Json<Session>, ApiError> {
    let id = parse_id(&raw_id)?;
    let client = state.pool.get().await?;
    let session = db::find_session(&client, id, caller.own_user())
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no session {id}")))?;
    caller.may_act_for(&session.user_id)?;
    Ok(Json(session))
}

/// Complete or abandon a session
///
/// Allowed changes are started → completed and started → abandoned; repeating a
/// change that is already applied returns 200.
#[utoipa::path(
    patch, path = "/v1/sessions/{session_id}", tag = "sessions",
    params(("session_id" = Uuid, Path, description = "Session id")),
    request_body = SessionUpdate,
    responses(
        (status = 200, body = SessionWithUsage),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "Not an allowed status change (invalid_transition)", body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 422, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn finish_session(
    State(state): State<AppState>,
    caller: Caller,
    Path(raw_id): Path<String>,
    ApiJson(update): ApiJson<SessionUpdate>,
) -> Result<Json<SessionWithUsage>, ApiError> {
    let id = parse_id(&raw_id)?;
    check_timestamps(&[("completed_at", update.completed_at)])?;
    let client = state.pool.get().await?;
    // The owner is part of the UPDATE (its key on Citus), so a user token can never
    // touch another user's session, even for an instant. A service token names no
    // user: the session's own is looked up first.
    let owner = match caller.own_user() {
        Some(user) => user.to_string(),
        None => {
            db::find_session(&client, id, None)
                .await?
                .ok_or_else(|| ApiError::NotFound(format!("no session {id}")))?
                .user_id
        }
    };
    let finished = db::with_retries(|| db::finish_session(&client, id, &owner, &update)).await?;
    let session = match finished {
        Some(session) => session,
        None => {
            // Not updated: tell a missing session from someone else's.
            let existing = db::find_session(&client, id, caller.own_user())
                .await?
                .ok_or_else(|| ApiError::NotFound(format!("no session {id}")))?;
            caller.may_act_for(&existing.user_id)?;
            return Err(ApiError::NotFound(format!("no session {id}")));
        }
    };
    let usage = db::usage(&client, &session.user_id).await?;
    Ok(Json(SessionWithUsage { session, usage }))
}
