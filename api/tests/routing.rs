//! Routing, auth, limits and error mapping through `tower::ServiceExt::oneshot`, with
//! no database: the pool points at a closed port, so nothing here may need one.

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::Value;
use tally_api::{app, pool, AppConfig, AppState, Keys, Role};
use tower::ServiceExt;

const SECRET: &[u8] = b"a-routing-test-secret-of-32-bytes-or-more";

fn test_app(cors_origins: Vec<String>) -> Router {
    app(AppState {
        pool: pool(
            "postgres://postgres@127.0.0.1:1/none",
            2,
            Duration::from_secs(5),
        )
        .unwrap(),
        keys: Keys::new(SECRET),
        config: AppConfig {
            request_timeout: Duration::from_secs(5),
            cors_origins,
            ..AppConfig::default()
        },
    })
}

async fn call(app: Router, request: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Value) {
    let response = app.oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        headers,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn token(sub: &str, role: Role) -> String {
    format!("Bearer {}", Keys::new(SECRET).mint(sub, role, 60))
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<none>")
}

#[tokio::test]
async fn missing_or_bad_tokens_are_401() {
    for auth in [
        None,
        Some("Basic abc".to_string()),
        Some("Bearer nope".to_string()),
    ] {
        let mut request = Request::get("/v1/users/kamile/usage");
        if let Some(auth) = auth {
            request = request.header(header::AUTHORIZATION, auth);
        }
        let (status, _, body) = call(test_app(vec![]), request.body(Body::empty()).unwrap()).await;
        assert_eq!(
            (status, code(&body)),
            (StatusCode::UNAUTHORIZED, "unauthorized")
        );
    }
}

#[tokio::test]
async fn a_user_token_cannot_touch_another_users_data() {
    let request = Request::get("/v1/users/jonas/usage")
        .header(header::AUTHORIZATION, token("kamile", Role::User));
    let (status, _, body) = call(test_app(vec![]), request.body(Body::empty()).unwrap()).await;
    assert_eq!((status, code(&body)), (StatusCode::FORBIDDEN, "forbidden"));
    let request = Request::post("/v1/sessions")
        .header(header::AUTHORIZATION, token("kamile", Role::User))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(r#"{"kind": "practice", "user_id": "jonas"}"#))
        .unwrap();
    let (status, _, body) = call(test_app(vec![]), request).await;
    assert_eq!((status, code(&body)), (StatusCode::FORBIDDEN, "forbidden"));
}

#[tokio::test]
async fn malformed_bodies_are_400_and_oversized_ones_413() {
    for body in [
        r#"{"kind": "#,
        r#"{"kind": 5}"#,
        r#"{"kind": "practice", "extra": 1}"#,
        r#"[]"#,
    ] {
        let request = Request::post("/v1/sessions")
            .header(header::AUTHORIZATION, token("kamile", Role::User))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body))
            .unwrap();
        let (status, _, response) = call(test_app(vec![]), request).await;
        assert_eq!(
            (status, code(&response)),
            (StatusCode::BAD_REQUEST, "invalid_request"),
            "{body}"
        );
    }
    let request = Request::post("/v1/sessions")
        .header(header::AUTHORIZATION, token("kamile", Role::User))
        .body(Body::from(r#"{"kind": "practice"}"#))
        .unwrap();
    assert_eq!(
        call(test_app(vec![]), request).await.0,
        StatusCode::BAD_REQUEST,
        "no content type"
    );
    let big = format!(r#"{{"kind": "{}"}}"#, "x".repeat(65 * 1024));
    let request = Request::post("/v1/sessions")
        .header(header::AUTHORIZATION, token("kamile", Role::User))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(big))
        .unwrap();
    let (status, _, body) = call(test_app(vec![]), request).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
    );
}

#[tokio::test]
async fn unknown_routes_and_methods_get_json_errors_and_request_ids() {
    let (status, headers, body) = call(
        test_app(vec![]),
        Request::get("/nowhere").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, "not_found"));
    assert!(headers.get("x-request-id").is_some());
    let (status, headers, body) = call(
        test_app(vec![]),
        Request::delete("/v1/sessions").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
    );
    assert!(headers.get(header::ALLOW).is_some());
    let request = Request::get("/healthz")
        .header("x-request-id", "abc-123")
        .body(Body::empty())
        .unwrap();
    let (status, headers, _) = call(test_app(vec![]), request).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        headers.get("x-request-id").unwrap(),
        "abc-123",
        "a caller's request id is kept"
    );
}

#[tokio::test]
async fn database_unreachable_is_503_not_500() {
    let (status, _, body) = call(
        test_app(vec![]),
        Request::get("/readyz").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    );
    let request = Request::get("/v1/users/kamile/usage")
        .header(header::AUTHORIZATION, token("kamile", Role::User));
    let (status, _, body) = call(test_app(vec![]), request.body(Body::empty()).unwrap()).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    );
}

#[tokio::test]
async fn cors_only_for_configured_origins() {
    let preflight = |origin: &str| {
        Request::options("/v1/sessions")
            .header(header::ORIGIN, origin)
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
            .body(Body::empty())
            .unwrap()
    };
    let (_, headers, _) = call(test_app(vec![]), preflight("https://app.example")).await;
    assert!(
        headers.get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none(),
        "no CORS by default"
    );
    let configured = test_app(vec!["https://app.example".into()]);
    let (_, headers, _) = call(configured.clone(), preflight("https://app.example")).await;
    assert_eq!(
        headers.get(header::ACCESS_CONTROL_ALLOW_ORIGIN).unwrap(),
        "https://app.example"
    );
    let (_, headers, _) = call(configured, preflight("https://evil.example")).await;
    assert!(headers.get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
}

#[tokio::test]
async fn short_secrets_are_refused_with_a_message_saying_what_to_set() {
    let error = tally_api::config::parse_secret("short").unwrap_err();
    assert!(
        error.contains("TALLY_JWT_SECRET") && error.contains("32"),
        "{error}"
    );
    assert!(tally_api::config::parse_secret(&"k".repeat(32)).is_ok());
}

#[tokio::test]
async fn a_wildcard_cors_origin_allows_any_origin() {
    let app = test_app(vec!["*".into()]);
    let request = Request::options("/v1/users/kamile/usage")
        .header(header::ORIGIN, "https://anywhere.example")
        .header(header::ACCESS_CONTROL_REQUEST_METHOD, "GET")
        .header(
            header::ACCESS_CONTROL_REQUEST_HEADERS,
            "authorization,content-type",
        )
        .body(Body::empty())
        .unwrap();
    let (_, headers, _) = call(app, request).await;
    assert_eq!(
        headers.get(header::ACCESS_CONTROL_ALLOW_ORIGIN).unwrap(),
        "*"
    );
}

#[tokio::test]
async fn metrics_labels_come_from_fixed_sets_whatever_clients_send() {
    let app = test_app(vec![]);
    for i in 0..40 {
        for path in ["/v1/sessions".to_string(), format!("/invented/path/{i}")] {
            let request = Request::builder()
                .method(format!("INVENTED{i}").as_str())
                .uri(path)
                .body(Body::empty())
                .unwrap();
            let (status, _, _) = call(app.clone(), request).await;
            assert!(status.is_client_error(), "{status}");
        }
        let request = Request::get(format!("/invented/path/{i}"))
            .body(Body::empty())
            .unwrap();
        call(app.clone(), request).await;
    }
    let response = app
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let text = String::from_utf8(
        response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    assert!(
        !text.contains("INVENTED"),
        "a client-chosen method became a label"
    );
    assert!(
        !text.contains("/invented"),
        "a client-chosen path became a label"
    );
    assert!(text.contains(r#"method="other""#), "{text}");
    assert!(text.contains(r#"route="unmatched""#), "{text}");
}
