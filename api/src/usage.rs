//! /v1/users/{user_id}/usage: counters for the current billing period.

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};

use crate::auth::Caller;
use crate::db;
use crate::error::{ApiError, ErrorBody};
use crate::model::Usage;
use crate::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/users/{user_id}/usage", get(get_usage))
}

/// Read a user's usage
///
/// The billing period that contains now, with reservations held by started sessions
/// subtracted from what remains, and the user's learning plans.
#[utoipa::path(
    get, path = "/v1/users/{user_id}/usage", tag = "usage",
    params(("user_id" = String, Path)),
    responses(
        (status = 200, body = Usage),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, description = "No subscription for this user", body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get_usage(
    State(state): State<AppState>,
    caller: Caller,
    Path(user_id): Path<String>,
) -> Result<Json<Usage>, ApiError> {
    caller.may_act_for(&user_id)?;
    let client = state.pool.get().await?;
    Ok(Json(db::usage(&client, &user_id).await?))
}
