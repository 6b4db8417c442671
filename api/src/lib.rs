//! tally-api: a thin HTTP API over the tally PostgreSQL extension. It writes sessions
//! and reads counters; all counting and limits live in the database.

pub mod auth;
pub mod config;
mod db;
pub mod error;
mod extract;
pub mod health;
pub mod jwks;
pub mod model;
pub mod openapi;
mod sessions;
mod usage;

use std::str::FromStr;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderName, HeaderValue, Method, Request};
use axum::{middleware, Router};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

pub use auth::{Keys, Role};

/// Largest request body accepted.
pub const BODY_LIMIT_BYTES: usize = 64 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub pool: Pool,
    pub keys: Keys,
    pub config: AppConfig,
}

#[derive(Clone, Debug)]
pub struct AppConfig {
    pub request_timeout: Duration,
    pub cors_origins: Vec<String>,
    /// How far in the past a user token may date a session's `started_at`.
    pub max_backdate: Duration,
}

impl Default for AppConfig {
    fn default() -> Self {
        AppConfig {
            request_timeout: Duration::from_secs(10),
            cors_origins: Vec::new(),
            max_backdate: Duration::from_secs(24 * 60 * 60),
        }
    }
}

/// A connection pool for `database_url`. Connections are made lazily, so the API
/// starts (and reports 503 on /readyz) while the database is down.
///
/// `request_timeout` bounds both ends of a request's time in the database: how long
/// it waits for a pooled connection (waiting is part of the request, which the
/// request timeout answers with 503 anyway) and, as every connection's
/// `statement_timeout`, how long its query runs: a request that timed out must not
/// leave its query running (and holding locks) in the database.
pub fn pool(database_url: &str, max_size: u32, request_timeout: Duration) -> Result<Pool, String> {
    let mut config = tokio_postgres::Config::from_str(database_url)
        .map_err(|e| format!("DATABASE_URL is not valid: {e}"))?;
    let options = format!(
        "{} -c statement_timeout={}",
        config.get_options().unwrap_or_default(),
        request_timeout.as_millis().max(1)
    );
    config.options(options.trim());
    if config.get_application_name().is_none() {
        config.application_name("tally-api");
    }
    let manager = Manager::from_config(
        config,
        tokio_postgres::NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(max_size as usize)
        .wait_timeout(Some(request_timeout))
        .create_timeout(Some(Duration::from_secs(5)))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .map_err(|e| format!("cannot build the connection pool: {e}"))
}

/// CORS for the configured origins; `*` among them allows any origin. Tokens travel
/// in the Authorization header, never in cookies, so no credentials are allowed.
fn cors(origins: &[String]) -> Option<CorsLayer> {
    let origins: Vec<&str> = origins
        .iter()
        .map(|o| o.trim())
        .filter(|o| !o.is_empty())
        .collect();
    let allowed = if origins.contains(&"*") {
        AllowOrigin::any()
    } else {
        let listed: Vec<HeaderValue> = origins
            .iter()
            .filter_map(|o| HeaderValue::from_str(o).ok())
            .collect();
        if listed.is_empty() {
            return None;
        }
        AllowOrigin::list(listed)
    };
    Some(
        CorsLayer::new()
            .allow_origin(allowed)
            .allow_methods([Method::GET, Method::POST, Method::PATCH])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
            .expose_headers([header::LOCATION, HeaderName::from_static("x-request-id")]),
    )
}

/// The whole API, used by `main` and by tests.
pub fn app(state: AppState) -> Router {
    // Install the recorder before the first request so that no measurement is lost.
    health::prometheus();
    let x_request_id = HeaderName::from_static("x-request-id");
    let mut router = Router::new()
        .merge(sessions::router())
        .merge(usage::router())
        .merge(health::router())
        .merge(openapi::router())
        .fallback(health::not_found)
        // After the fallback, so that unknown paths are counted too (as one label).
        .layer(middleware::from_fn(health::track))
        .layer(DefaultBodyLimit::max(BODY_LIMIT_BYTES))
        .layer(TimeoutLayer::with_status_code(
            health::TIMEOUT_STATUS,
            state.config.request_timeout,
        ));
    if let Some(cors) = cors(&state.config.cors_origins) {
        router = router.layer(cors);
    }
    router
        // A panic is a bug: answer 500 (made JSON by json_errors) instead of dropping the connection.
        .layer(CatchPanicLayer::new())
        .layer(middleware::from_fn(health::json_errors))
        .layer(PropagateRequestIdLayer::new(x_request_id.clone()))
        .layer(TraceLayer::new_for_http().make_span_with(|request: &Request<_>| {
            let id = request.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("-");
            tracing::info_span!("request", method = %request.method(), uri = %request.uri(), request_id = %id)
        }))
        .layer(SetRequestIdLayer::new(x_request_id, MakeRequestUuid))
        .with_state(state)
}
