//! Hostile users, at random: many connections as the README's writer role (SQL) and
//! with end users' API tokens send a mix of valid and adversarial requests for a
//! bounded time: backdating, expired reservations, replays and reused ids, other
//! users' ids, invented methods, oversized and malformed bodies, setting changes.
//! Afterwards no counter disagrees with a recount, no user is past a limit, and the
//! API answered no 5xx.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tally_api::Role;
use tally_e2e::{assert_consistent, connect, fresh_database, sqlstate, url_for, Api};
use uuid::Uuid;

const USERS: usize = 6;
const SQL_CLIENTS: usize = 4;
const API_CLIENTS: usize = 6;
const OPS_PER_CLIENT: usize = 400;
const TIME_BOUND: Duration = Duration::from_secs(40);

fn user(rng: &mut StdRng) -> String {
    format!("h{}", rng.random_range(0..USERS))
}

/// A session id from a small shared pool, so that ids collide across clients.
fn pooled_id(rng: &mut StdRng) -> Uuid {
    Uuid::from_u128(0x4000_0000_0000_0000_8000_0000_0000_0000 | rng.random_range(0..60u128))
}

fn kind(rng: &mut StdRng) -> &'static str {
    [
        "practice",
        "learning_plan",
        "assessment",
        "assessment",
        "karaoke",
    ][rng.random_range(0..5)]
}

/// One adversarial or ordinary SQL statement as the writer role. Refusals by the
/// rules are expected; anything else is a failure.
async fn sql_operation(client: &tokio_postgres::Client, rng: &mut StdRng) {
    let u = user(rng);
    let hours_ago = rng.random_range(0..6);
    let result = match rng.random_range(0..9) {
        // started sessions dated past the reservation timeout, and fresh ones
        0 | 1 => {
            client
                .execute(
                    "INSERT INTO tally.sessions (session_id, user_id, kind, status, started_at)
                     VALUES ($1, $2, $3, 'started', now() - make_interval(hours => $4))",
                    &[&pooled_id(rng), &u, &kind(rng), &hours_ago],
                )
                .await
        }
        // complete one started session, or all of a user's at once
        2 => {
            client
                .execute(
                    "UPDATE tally.sessions SET status = 'completed' WHERE session_id = $1",
                    &[&pooled_id(rng)],
                )
                .await
        }
        3 => {
            client
                .execute(
                    "UPDATE tally.sessions SET status = 'completed' WHERE user_id = $1 AND status = 'started'",
                    &[&u],
                )
                .await
        }
        // completed sessions, backdated anywhere (SQL writers may import history)
        4 => {
            let n = rng.random_range(1..4);
            client
                .execute(
                    "INSERT INTO tally.sessions (user_id, kind, started_at)
                     SELECT $1, $2, now() - make_interval(days => $3) FROM generate_series(1, $4)",
                    &[&u, &kind(rng), &rng.random_range(0..90), &n],
                )
                .await
        }
        5 => {
            client
                .execute(
                    "DELETE FROM tally.sessions WHERE session_id = $1",
                    &[&pooled_id(rng)],
                )
                .await
        }
        6 => {
            client
                .execute(
                    "UPDATE tally.sessions SET status = 'abandoned' WHERE session_id = $1",
                    &[&pooled_id(rng)],
                )
                .await
        }
        // settings and tables only tally or a superuser may touch
        7 => {
            let attempt = [
                "SET tally.reservation_timeout = '0'",
                "SET tally.enforce_limits = off",
                "UPDATE tally.usage SET practice_sessions_used = 0",
                "DELETE FROM tally.usage",
                "UPDATE tally.learning_plans SET completed_sessions = 0",
                "TRUNCATE tally.sessions",
            ][rng.random_range(0..6)];
            let error = client
                .batch_execute(attempt)
                .await
                .expect_err(&format!("the writer role could run {attempt}"));
            // The writer holds no privilege for any of these, and each is refused
            // for that before anything is locked or any trigger runs, on one node
            // and on Citus (whose TRUNCATE would lock first: tally checks earlier).
            assert_eq!(sqlstate(&error), Some("42501"), "{attempt}: {error:?}");
            return;
        }
        _ => {
            client
                .execute(
                    "UPDATE tally.sessions SET duration_seconds = $2 WHERE session_id = $1",
                    &[&pooled_id(rng), &rng.random_range(0..3600)],
                )
                .await
        }
    };
    if let Err(error) = result {
        assert!(
            matches!(
                sqlstate(&error),
                Some("TL001" | "TL002" | "TL003" | "23503" | "23505" | "23514" | "40001" | "40P01")
            ),
            "unexpected SQL error: {error:?}"
        );
    }
}

/// One request with an end user's token.
async fn api_operation(api: &Api, tokens: &[String], rng: &mut StdRng) -> StatusCode {
    let me = rng.random_range(0..USERS);
    let token = &tokens[me];
    let other = format!("h{}", (me + 1 + rng.random_range(0..USERS - 1)) % USERS);
    let started_at = (chrono::Utc::now()
        - chrono::Duration::minutes(rng.random_range(0..150 * 24 * 60)))
    .to_rfc3339();
    let (method, path, body): (Method, String, Option<Value>) = match rng.random_range(0..10) {
        0 | 1 => (
            Method::POST,
            "/v1/sessions".into(),
            Some(json!({"kind": kind(rng)})),
        ),
        2 => (
            Method::POST,
            "/v1/sessions".into(),
            Some(json!({"kind": kind(rng), "status": "started", "session_id": pooled_id(rng)})),
        ),
        // backdating, up to 150 days
        3 => (
            Method::POST,
            "/v1/sessions".into(),
            Some(
                json!({"kind": kind(rng), "started_at": started_at, "session_id": pooled_id(rng)}),
            ),
        ),
        // someone else's data
        4 => (
            Method::POST,
            "/v1/sessions".into(),
            Some(json!({"kind": "practice", "user_id": other})),
        ),
        5 => (Method::GET, format!("/v1/users/{other}/usage"), None),
        6 => {
            let status = ["completed", "abandoned"][rng.random_range(0..2)];
            (
                Method::PATCH,
                format!("/v1/sessions/{}", pooled_id(rng)),
                Some(json!({ "status": status })),
            )
        }
        7 => (
            Method::from_bytes(format!("HACK{}", rng.random_range(0..1000)).as_bytes()).unwrap(),
            "/v1/sessions".into(),
            None,
        ),
        8 => {
            // oversized or malformed bodies, sent raw
            let raw = if rng.random_bool(0.5) {
                format!("{{\"kind\": \"{}\"}}", "x".repeat(70 * 1024))
            } else {
                "{\"kind\": [".to_string()
            };
            let response = api
                .http
                .post(format!("{}/v1/sessions", api.base))
                .bearer_auth(token)
                .header("content-type", "application/json")
                .body(raw)
                .send()
                .await
                .expect("request");
            return response.status();
        }
        _ => (Method::GET, format!("/v1/users/h{me}/usage"), None),
    };
    api.send(method, &path, Some(token), body).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_users_cannot_break_counters_or_limits() {
    let url = fresh_database("tally_e2e_hostile").await;
    let admin = connect(&url).await;
    admin
        .batch_execute(&format!(
            "INSERT INTO tally.plans (plan_id, display_name, practice_sessions_limit, assessments_limit)
             VALUES ('small', 'Small', 5, 2);
             INSERT INTO tally.subscriptions (user_id, plan_id, period_anchor)
                  SELECT 'h' || i, 'small', '2026-01-01 00:00+00' FROM generate_series(0, {last}) i;
             DROP ROLE IF EXISTS hostile_writer;
             CREATE ROLE hostile_writer LOGIN;
             GRANT USAGE ON SCHEMA tally TO hostile_writer;
             GRANT SELECT ON ALL TABLES IN SCHEMA tally TO hostile_writer;
             GRANT INSERT, UPDATE, DELETE ON tally.sessions TO hostile_writer;",
            last = USERS - 1
        ))
        .await
        .expect("fixtures");
    let writer_url = url_for("tally_e2e_hostile").replace("postgres@", "hostile_writer@");
    let api = Arc::new(Api::start(&url).await);
    let tokens: Arc<Vec<String>> = Arc::new(
        (0..USERS)
            .map(|i| api.token(&format!("h{i}"), Role::User))
            .collect(),
    );

    let seed: u64 = std::env::var("TALLY_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("seed {seed} (set TALLY_TEST_SEED to replay)");
    let started = Instant::now();
    let server_errors = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for n in 0..SQL_CLIENTS {
        let writer_url = writer_url.clone();
        tasks.push(tokio::spawn(async move {
            let client = connect(&writer_url).await;
            let mut rng = StdRng::seed_from_u64(seed.wrapping_add(n as u64));
            for _ in 0..OPS_PER_CLIENT {
                if started.elapsed() > TIME_BOUND {
                    break;
                }
                sql_operation(&client, &mut rng).await;
            }
        }));
    }
    for n in 0..API_CLIENTS {
        let (api, tokens, server_errors) = (api.clone(), tokens.clone(), server_errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed.wrapping_add(1000 + n as u64));
            for _ in 0..OPS_PER_CLIENT {
                if started.elapsed() > TIME_BOUND {
                    break;
                }
                let status = api_operation(&api, &tokens, &mut rng).await;
                if status.is_server_error() {
                    eprintln!("server error: {status}");
                    server_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("client task");
    }
    assert_eq!(
        server_errors.load(Ordering::Relaxed),
        0,
        "the API answered 5xx"
    );

    assert_consistent(&admin).await;
    let over_limit: Vec<String> = admin
        .query(
            "SELECT u.user_id || ' ' || u.period_start || ': ' || u.practice_sessions_used || '/' || u.assessments_used
               FROM tally.usage u
               JOIN tally.subscriptions s ON s.user_id = u.user_id
               JOIN tally.plans p ON p.plan_id = s.plan_id
              WHERE u.practice_sessions_used > p.practice_sessions_limit
                 OR u.assessments_used > p.assessments_limit",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        over_limit.is_empty(),
        "users past their limit: {over_limit:?}"
    );
    let counted: i64 = admin
        .query_one(
            "SELECT coalesce(sum(practice_sessions_used + assessments_used), 0) FROM tally.usage",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        counted > 20,
        "the run counted too little to mean anything: {counted}"
    );
    drop(admin);
    let cleanup = connect(&tally_e2e::admin_url()).await;
    cleanup
        .batch_execute("DROP DATABASE tally_e2e_hostile WITH (FORCE); DROP ROLE hostile_writer;")
        .await
        .ok();
}
