//! Liveness, readiness and Prometheus metrics.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::Serialize;
use utoipa::ToSchema;

use crate::db;
use crate::error::{ApiError, ErrorBody};
use crate::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
}

#[derive(Serialize, ToSchema)]
pub struct Status {
    pub status: &'static str,
}

/// Liveness: 200 while the process runs
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, body = Status)))]
pub async fn healthz() -> Json<Status> {
    Json(Status { status: "ok" })
}

/// Readiness: 200 when the database answers and has the tally extension
#[utoipa::path(
    get, path = "/readyz", tag = "operations",
    responses((status = 200, body = Status), (status = 503, body = ErrorBody))
)]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Status>, ApiError> {
    let check = async {
        let client = state.pool.get().await?;
        match db::ready(&client).await? {
            db::Readiness::Ready => Ok(Json(Status { status: "ready" })),
            db::Readiness::NoExtension => Err(ApiError::Unavailable(
                "the tally extension is not installed in this database".into(),
            )),
            db::Readiness::OutdatedExtension(version) => Err(ApiError::Unavailable(format!(
                "the tally extension in this database is version {version}, older than this API needs: run ALTER EXTENSION tally UPDATE"
            ))),
        }
    };
    tokio::time::timeout(Duration::from_secs(2), check)
        .await
        .unwrap_or_else(|_| {
            Err(ApiError::Unavailable(
                "the database did not answer in time".into(),
            ))
        })
}

/// Prometheus metrics in text format
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, content_type = "text/plain", body = String)))]
pub async fn render_metrics(State(state): State<AppState>) -> Response {
    let pool = state.pool.status();
    metrics::gauge!("tally_db_pool_connections").set(pool.size as f64);
    metrics::gauge!("tally_db_pool_available").set(pool.available as f64);
    metrics::gauge!("tally_db_pool_waiting").set(pool.waiting as f64);
    metrics::gauge!("tally_db_pool_max_size").set(pool.max_size as f64);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        prometheus().render(),
    )
        .into_response()
}

/// The process-wide Prometheus recorder, installed on first use.
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full("tally_http_request_duration_seconds".into()),
                &[
                    0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
                ],
            )
            .expect("bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder may be installed already (tests build several apps).
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// Folds recorded histogram samples into their buckets every few seconds. The
/// recorder does this only when /metrics is rendered; without it, an API nobody
/// scrapes would keep every latency sample in memory.
pub async fn metrics_upkeep() {
    let mut every = tokio::time::interval(Duration::from_secs(5));
    loop {
        every.tick().await;
        prometheus().run_upkeep();
    }
}

/// Counts requests and records latency by route template and status.
pub async fn track(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    // Labels come from fixed sets, so that no client can grow the metrics without
    // bound: invented methods count as `other`, unknown paths as `unmatched`.
    let method = method_label(request.method());
    let start = Instant::now();
    let response = next.run(request).await;
    let labels = [
        ("method", method.to_string()),
        ("route", route),
        ("status", response.status().as_u16().to_string()),
    ];
    metrics::counter!("tally_http_requests_total", &labels).increment(1);
    metrics::histogram!("tally_http_request_duration_seconds", &labels)
        .record(start.elapsed().as_secs_f64());
    response
}

/// The metrics label of an HTTP method: the standard ones by name, any other as `other`.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PATCH => "PATCH",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Gives responses made outside the handlers (405, timeouts, unknown routes) the
/// same JSON error body as the rest of the API.
pub async fn json_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if (status.is_client_error() || status.is_server_error()) && !is_json {
        let mut replaced = crate::error::envelope_for(status);
        if let Some(allow) = response.headers().get(header::ALLOW) {
            replaced.headers_mut().insert(header::ALLOW, allow.clone());
        }
        return replaced;
    }
    response
}

pub async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}

pub const TIMEOUT_STATUS: StatusCode = StatusCode::SERVICE_UNAVAILABLE;
