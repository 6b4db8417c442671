//! Malformed and hostile values through SQL and HTTP: each gets a clear error, the
//! server stays up, and nothing partial is written.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use tally_api::{app, pool, AppConfig, AppState, Keys, Role};
use tally_e2e::{assert_consistent, connect, fresh_database};
use tokio_postgres::Client;

const INJECTION: &str = "x'); DROP TABLE tally.usage; --";

async fn counts(client: &Client) -> (i64, i64) {
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM tally.sessions),
                    (SELECT coalesce(sum(practice_sessions_used + assessments_used), 0)::bigint FROM tally.usage)",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

async fn fixtures(url: &str) -> Client {
    let client = connect(url).await;
    client
        .batch_execute(
            "INSERT INTO tally.plans VALUES ('fluency_builder', 'Fluency Builder', 30, 2, '1 month');
             INSERT INTO tally.subscriptions (user_id, plan_id, period_anchor) VALUES ('kamile', 'fluency_builder', '2026-01-01 00:00+00');
             INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('kamile', 'practice', '2026-03-01 10:00+00');",
        )
        .await
        .unwrap();
    client
}

#[tokio::test]
async fn hostile_sql_values_are_refused_cleanly() {
    let url = fresh_database("tally_e2e_bad_sql").await;
    let client = fixtures(&url).await;
    let before = counts(&client).await;
    let huge = "k".repeat(1_000_000);
    let cases: Vec<(&str, String, &[&str])> = vec![
        ("huge kind", format!("INSERT INTO tally.sessions (user_id, kind) VALUES ('kamile', '{huge}')"), &["23503", "54000"]),
        ("huge user", format!("INSERT INTO tally.sessions (user_id, kind) VALUES ('{huge}', 'practice')"), &["23503", "54000"]),
        ("injection in user", format!("INSERT INTO tally.sessions (user_id, kind) VALUES ($${INJECTION}$$, 'practice')"), &["23503"]),
        ("injection in kind", format!("INSERT INTO tally.sessions (user_id, kind) VALUES ('kamile', $${INJECTION}$$)"), &["23503"]),
        ("NUL byte", "INSERT INTO tally.sessions (user_id, kind) VALUES ('kamile', E'prac\\x00tice')".into(), &["22021", "54000"]),
        ("invalid UTF-8", "INSERT INTO tally.sessions (user_id, kind) VALUES ('kamile', convert_from('\\xc328'::bytea, 'UTF8'))".into(), &["22021"]),
        ("integer overflow", "INSERT INTO tally.sessions (user_id, kind, duration_seconds) VALUES ('kamile', 'practice', 2147483648)".into(), &["22003"]),
        ("wrong type", "INSERT INTO tally.sessions (user_id, kind, duration_seconds) VALUES ('kamile', 'practice', 'long')".into(), &["22P02"]),
        ("far future", "INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('kamile', 'practice', '294276-01-01 00:00+00')".into(), &["23514"]),
        ("infinity", "INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('kamile', 'practice', 'infinity')".into(), &["23514"]),
        ("before the timestamp range", "INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('kamile', 'practice', '4800-01-01 00:00+00 BC')".into(), &["22008"]),
        ("bad uuid", "INSERT INTO tally.sessions (session_id, user_id, kind) VALUES ('not-a-uuid', 'kamile', 'practice')".into(), &["22P02"]),
        ("bad status", format!("INSERT INTO tally.sessions (user_id, kind, status) VALUES ('kamile', 'practice', $${INJECTION}$$)"), &["23514"]),
        ("huge period", "UPDATE tally.plans SET period = '1000000 years'".into(), &["22008"]),
        ("anchor at the end of time", "UPDATE tally.subscriptions SET period_anchor = '294276-12-31 00:00+00'".into(), &["22008"]),
    ];
    for (what, sql, expected) in &cases {
        let error = client.batch_execute(sql).await.expect_err(what);
        let code = error
            .code()
            .map(|c| c.code().to_string())
            .unwrap_or_default();
        assert!(
            expected.contains(&code.as_str()),
            "{what}: expected one of {expected:?}, got {code}: {error}"
        );
        let message = error
            .as_db_error()
            .map(|e| e.message().to_string())
            .unwrap_or_default();
        assert!(
            !message.is_empty() && message.len() < 2000,
            "{what}: a short, clear message"
        );
        // The connection is still usable and nothing partial was written.
        assert_eq!(counts(&client).await, before, "{what}: nothing written");
    }
    // The far past is a legal value: counted in its own period, consistently.
    client
        .batch_execute("INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('kamile', 'practice', '4713-01-01 00:00+00 BC')")
        .await
        .expect("a session in 4713 BC is odd but legal");
    assert_consistent(&client).await;
    let usage_exists: bool = client
        .query_one("SELECT to_regclass('tally.usage') IS NOT NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert!(usage_exists);
    // Values that are odd but legal are stored verbatim, never executed.
    client
        .execute(
            "INSERT INTO tally.session_kinds VALUES ($1, 'none')",
            &[&INJECTION],
        )
        .await
        .unwrap();
    client
        .execute("INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('kamile', $1, '2026-03-02 10:00+00')", &[&INJECTION])
        .await
        .unwrap();
    let stored: String = client
        .query_one(
            "SELECT kind FROM tally.sessions WHERE kind <> 'practice'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, INJECTION);
    assert_consistent(&client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_http_requests_get_4xx_and_the_server_stays_up() {
    let url = fresh_database("tally_e2e_bad_http").await;
    let client = fixtures(&url).await;
    let secret = b"bad-input-secret-that-is-long-enough-1234";
    let state = AppState {
        pool: pool(&url, 4, Duration::from_secs(10)).unwrap(),
        keys: Keys::new(secret),
        config: AppConfig {
            request_timeout: Duration::from_secs(10),
            ..AppConfig::default()
        },
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app(state)).await.unwrap() });
    let http = reqwest::Client::new();
    let service = Keys::new(secret).mint("ops", Role::Service, 600);
    let before = counts(&client).await;

    let raw_bodies: Vec<(&str, Vec<u8>)> = vec![
        ("invalid UTF-8", b"{\"kind\": \"pr\xc3\x28ctice\"}".to_vec()),
        ("not JSON", b"kind=practice".to_vec()),
        ("JSON array", b"[1, 2, 3]".to_vec()),
        (
            "deep nesting",
            format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)).into_bytes(),
        ),
        ("empty", Vec::new()),
    ];
    for (what, body) in raw_bodies {
        let r = http
            .post(format!("{base}/v1/sessions"))
            .bearer_auth(&service)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_client_error(), "{what}: {}", r.status());
        let body: Value = r.json().await.expect("a JSON error body");
        assert!(body["error"]["code"].is_string(), "{what}");
    }

    let huge = "k".repeat(60 * 1024);
    let json_cases = vec![
        (
            "NUL byte",
            json!({"kind": "prac\u{0}tice", "user_id": "kamile"}),
        ),
        (
            "huge kind under the body limit",
            json!({"kind": huge, "user_id": "kamile"}),
        ),
        (
            "injection in kind",
            json!({"kind": INJECTION, "user_id": "kamile"}),
        ),
        (
            "injection in user_id",
            json!({"kind": "practice", "user_id": INJECTION}),
        ),
        (
            "wrong type",
            json!({"kind": ["practice"], "user_id": "kamile"}),
        ),
        (
            "overflowing integer",
            json!({"kind": "practice", "user_id": "kamile", "duration_seconds": 4294967296u64}),
        ),
        (
            "negative duration",
            json!({"kind": "practice", "user_id": "kamile", "duration_seconds": -1}),
        ),
        (
            "far future",
            json!({"kind": "practice", "user_id": "kamile", "started_at": "9999-12-31T23:59:59Z"}),
        ),
        (
            "not a timestamp",
            json!({"kind": "practice", "user_id": "kamile", "started_at": "yesterday"}),
        ),
        (
            "bad uuid",
            json!({"kind": "practice", "user_id": "kamile", "session_id": "'; DROP TABLE x; --"}),
        ),
        (
            "bad learning plan id",
            json!({"kind": "learning_plan", "user_id": "kamile", "learning_plan_id": "zzz"}),
        ),
    ];
    for (what, body) in json_cases {
        let r = http
            .post(format!("{base}/v1/sessions"))
            .bearer_auth(&service)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body: Value = r.json().await.expect("a JSON error body");
        assert!(status.is_client_error(), "{what}: {status} {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            !message.contains("SELECT") && !message.contains("tally.sessions"),
            "{what}: leaks {message}"
        );
    }
    for path in [
        format!("/v1/users/{}/usage", urlencode(INJECTION)),
        format!("/v1/sessions/{}", urlencode(INJECTION)),
        format!("/v1/users/{}/usage", "u".repeat(5000)),
    ] {
        let r = http
            .get(format!("{base}{path}"))
            .bearer_auth(&service)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_client_error(), "{path}: {}", r.status());
    }
    let forged =
        "eyJhbGciOiJub25lIn0.eyJzdWIiOiJrYW1pbGUiLCJyb2xlIjoic2VydmljZSIsImV4cCI6OTk5OTk5OTk5OX0.";
    let r = http
        .get(format!("{base}/v1/users/kamile/usage"))
        .bearer_auth(forged)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::UNAUTHORIZED,
        "alg=none tokens are refused"
    );

    // The far past is legal: stored and counted in its own period.
    let r = http
        .post(format!("{base}/v1/sessions"))
        .bearer_auth(&service)
        .json(
            &json!({"kind": "practice", "user_id": "kamile", "started_at": "0001-01-01T00:00:00Z"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let before = (before.0 + 1, before.1 + 1);

    assert_eq!(
        http.get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        http.get(format!("{base}/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_eq!(counts(&client).await, before, "nothing was written");
    assert_consistent(&client).await;
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
