//! The HTTP API end to end: a real server on a real port, over a real PostgreSQL with
//! the extension. Every route, every error code, idempotent retries, cross-user access,
//! quota, and the database going down and coming back.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use tally_api::{AppConfig, Keys, Role};
use tally_e2e::{assert_consistent, assert_error_body, connect, fresh_database, Api, SECRET};
use uuid::Uuid;

async fn seeded_api(db: &str) -> (Api, String, Uuid) {
    seeded_api_with(db, AppConfig::default()).await
}

async fn seeded_api_with(db: &str, config: AppConfig) -> (Api, String, Uuid) {
    let url = fresh_database(db).await;
    let client = connect(&url).await;
    client
        .batch_execute(
            "INSERT INTO tally.plans VALUES ('fluency_builder', 'Fluency Builder', 30, 2, '1 month');
             INSERT INTO tally.subscriptions (user_id, plan_id, period_anchor) VALUES ('kamile', 'fluency_builder', '2026-01-01 00:00+00'), ('jonas', 'fluency_builder', '2026-01-01 00:00+00');",
        )
        .await
        .unwrap();
    let lp: Uuid = client
        .query_one(
            "INSERT INTO tally.learning_plans (user_id, title, total_sessions) VALUES ('kamile', 'Job interview English', 12) RETURNING learning_plan_id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    client
        .batch_execute(
            "INSERT INTO tally.learning_plans (user_id, title) VALUES ('jonas', 'Travel')",
        )
        .await
        .unwrap();
    (Api::start_with(&url, config).await, url, lp)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sessions_usage_and_every_error_code() {
    let (api, url, plan) = seeded_api("tally_e2e_api").await;
    let kamile = api.token("kamile", Role::User);
    let service = api.token("ops", Role::Service);
    let get = reqwest::Method::GET;
    let patch = reqwest::Method::PATCH;

    // The motivating case through HTTP: 3 learning-plan sessions and 1 assessment.
    for _ in 0..3 {
        let (status, body) = api
            .post(
                &kamile,
                json!({"kind": "learning_plan", "learning_plan_id": plan, "duration_seconds": 900}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let (status, body) = api.post(&kamile, json!({"kind": "assessment"})).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        body["usage"]["practice_sessions"],
        json!({"used": 3, "limit": 30, "remaining": 27})
    );
    assert_eq!(
        body["usage"]["assessments"],
        json!({"used": 1, "limit": 2, "remaining": 1})
    );
    assert_eq!(body["usage"]["learning_plans"][0]["completed_sessions"], 3);
    assert_eq!(body["session"]["status"], "completed");
    assert!(
        chrono::DateTime::parse_from_rfc3339(body["session"]["started_at"].as_str().unwrap())
            .is_ok()
    );

    // GET usage, and someone else's: 403; a service token reads anyone's.
    let (status, usage) = api
        .send(get.clone(), "/v1/users/kamile/usage", Some(&kamile), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(usage["plan_id"], "fluency_builder");
    assert_eq!(
        usage, body["usage"],
        "POST returns the usage document GET returns"
    );
    for key in [
        "user_id",
        "period_start",
        "period_end",
        "practice_sessions",
        "assessments",
        "learning_plans",
    ] {
        assert!(usage.get(key).is_some(), "usage has {key}");
    }
    assert_eq!(
        api.send(get.clone(), "/v1/users/jonas/usage", Some(&kamile), None)
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        api.send(get.clone(), "/v1/users/jonas/usage", Some(&service), None)
            .await
            .0,
        StatusCode::OK
    );
    let (status, body) = api
        .send(get.clone(), "/v1/users/nobody/usage", Some(&service), None)
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );

    // Started, then completed via PATCH; repeating the applied change is a 200.
    let id = Uuid::new_v4();
    let (status, created) = api
        .post(
            &kamile,
            json!({"session_id": id, "kind": "practice", "status": "started"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        created["usage"]["practice_sessions"]["remaining"], 26,
        "the started session holds a slot"
    );
    let path = format!("/v1/sessions/{id}");
    let (status, done) = api
        .send(
            patch.clone(),
            &path,
            Some(&kamile),
            Some(json!({"status": "completed", "duration_seconds": 600})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["session"]["status"], "completed");
    assert_eq!(done["usage"]["practice_sessions"]["used"], 4);
    let (status, again) = api
        .send(
            patch.clone(),
            &path,
            Some(&kamile),
            Some(json!({"status": "completed"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        again["usage"]["practice_sessions"]["used"], 4,
        "counted once"
    );
    let (status, body) = api
        .send(
            patch.clone(),
            &path,
            Some(&kamile),
            Some(json!({"status": "abandoned"})),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("invalid_transition"))
    );
    let (status, session) = api.send(get.clone(), &path, Some(&kamile), None).await;
    assert_eq!(
        (status, session["session_id"].as_str()),
        (StatusCode::OK, Some(id.to_string().as_str()))
    );
    let jonas = api.token("jonas", Role::User);
    assert_eq!(
        api.send(get.clone(), &path, Some(&jonas), None).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        api.send(
            patch.clone(),
            &path,
            Some(&jonas),
            Some(json!({"status": "abandoned"}))
        )
        .await
        .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        api.send(
            get.clone(),
            &format!("/v1/sessions/{}", Uuid::new_v4()),
            Some(&kamile),
            None
        )
        .await
        .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.send(get.clone(), "/v1/sessions/not-a-uuid", Some(&kamile), None)
            .await
            .0,
        StatusCode::NOT_FOUND
    );

    // Idempotency: same id and content -> 200 and the same session; other content -> 409.
    let retry_id = Uuid::new_v4();
    // (A fixed past start: sent with a service token, which may import history.)
    let body = json!({"session_id": retry_id, "user_id": "kamile", "kind": "practice", "duration_seconds": 60, "started_at": "2026-11-01T10:00:00Z"});
    let _ = api.post(&kamile, json!({"kind": "practice"})).await;
    let (first_status, first) = api.post(&service, body.clone()).await;
    let (second_status, second) = api.post(&service, body.clone()).await;
    assert_eq!(
        (first_status, second_status),
        (StatusCode::CREATED, StatusCode::OK)
    );
    assert_eq!(first, second, "a retry returns the same body");
    let (status, conflict) = api
        .post(
            &kamile,
            json!({"session_id": retry_id, "kind": "assessment"}),
        )
        .await;
    assert_eq!(
        (status, conflict["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("conflict"))
    );
    // Another user's session id is a conflict too, and shows nothing of theirs.
    let jonas_id = Uuid::new_v4();
    let (status, _) = api
        .post(
            &service,
            json!({"session_id": jonas_id, "user_id": "jonas", "kind": "practice"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, conflict) = api
        .post(&kamile, json!({"session_id": jonas_id, "kind": "practice"}))
        .await;
    if tally_e2e::on_citus() {
        // Distributed, session ids are unique per user (README, Scaling out): the same
        // id is a new session of kamile's, and jonas's stays his.
        assert_eq!(status, StatusCode::CREATED, "{conflict}");
        assert_eq!(conflict["session"]["user_id"], "kamile");
    } else {
        assert_eq!(
            (status, conflict["error"]["code"].as_str()),
            (StatusCode::CONFLICT, Some("conflict"))
        );
        assert!(conflict.get("usage").is_none() && conflict.get("session").is_none());
    }

    // Bad input: 400 for malformed requests, 422 for what the rules refuse.
    let raw = |body: &'static str| {
        let http = api.http.clone();
        let url = format!("{}/v1/sessions", api.base);
        let token = kamile.clone();
        async move {
            let r = http
                .post(url)
                .bearer_auth(token)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            let status = r.status();
            let value: Value = r.json().await.unwrap();
            assert_error_body(&value);
            (status, value["error"]["code"].as_str().unwrap().to_string())
        }
    };
    assert_eq!(
        raw("{\"kind\": ").await,
        (StatusCode::BAD_REQUEST, "invalid_request".into())
    );
    assert_eq!(
        raw("{\"kind\": \"practice\", \"colour\": \"red\"}").await,
        (StatusCode::BAD_REQUEST, "invalid_request".into())
    );
    assert_eq!(
        raw("{\"kind\": \"practice\", \"duration_seconds\": 99999999999}").await,
        (StatusCode::BAD_REQUEST, "invalid_request".into())
    );
    assert_eq!(
        raw("{\"kind\": \"practice\", \"status\": \"abandoned\"}").await,
        (StatusCode::BAD_REQUEST, "invalid_request".into())
    );
    for (body, why) in [
        (json!({"kind": "karaoke"}), "unknown kind"),
        (
            json!({"kind": "practice", "duration_seconds": -5}),
            "negative duration",
        ),
        (
            json!({"kind": "practice", "started_at": (chrono::Utc::now() + chrono::Duration::minutes(30)).to_rfc3339()}),
            "future start",
        ),
        (
            json!({"kind": "learning_plan", "learning_plan_id": plan, "user_id": "jonas"}),
            "learning plan of another user",
        ),
        (json!({"kind": "practice\u{0}"}), "NUL byte"),
    ] {
        let (status, body) = api.post(&service, body).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_request")),
            "{why}: {body}"
        );
    }
    let (status, _) = api
        .post(&kamile, json!({"kind": "practice", "user_id": "jonas"}))
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "a user token cannot write for another user"
    );
    let big = "x".repeat(70 * 1024);
    let (status, body) = api.post(&kamile, json!({"kind": big})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("payload_too_large"))
    );

    // Auth: missing, malformed, bad signature, expired.
    assert_eq!(
        api.send(get.clone(), "/v1/users/kamile/usage", None, None)
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        api.send(
            get.clone(),
            "/v1/users/kamile/usage",
            Some("not-a-jwt"),
            None
        )
        .await
        .0,
        StatusCode::UNAUTHORIZED
    );
    let forged =
        Keys::new(b"some-other-secret-that-is-also-long-enough").mint("kamile", Role::Service, 600);
    assert_eq!(
        api.send(get.clone(), "/v1/users/kamile/usage", Some(&forged), None)
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    let expired = {
        let claims = json!({"sub": "kamile", "role": "user", "exp": jsonwebtoken::get_current_timestamp() - 120});
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET),
        )
        .unwrap()
    };
    let (status, body) = api
        .send(get.clone(), "/v1/users/kamile/usage", Some(&expired), None)
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("unauthorized"))
    );

    // Quota: the second assessment fits, the third is a 402 with the numbers.
    let (status, _) = api.post(&kamile, json!({"kind": "assessment"})).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = api.post(&kamile, json!({"kind": "assessment"})).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    let error = &body["error"];
    assert_eq!(
        (error["code"].as_str(), error["counter"].as_str()),
        (Some("quota_exceeded"), Some("assessments"))
    );
    assert_eq!(
        (error["used"].as_i64(), error["limit"].as_i64()),
        (Some(2), Some(2))
    );
    assert!(chrono::DateTime::parse_from_rfc3339(error["period_end"].as_str().unwrap()).is_ok());

    // Operations routes.
    assert_eq!(
        api.send(get.clone(), "/healthz", None, None).await.0,
        StatusCode::OK
    );
    assert_eq!(
        api.send(get.clone(), "/readyz", None, None).await,
        (StatusCode::OK, json!({"status": "ready"}))
    );
    let (status, metrics) = api.send(get.clone(), "/metrics", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let metrics = metrics.as_str().unwrap().to_string();
    assert!(
        metrics.contains(
            "tally_http_requests_total{method=\"POST\",route=\"/v1/sessions\",status=\"201\"}"
        ),
        "{metrics}"
    );
    assert!(metrics.contains("tally_http_request_duration_seconds_bucket"));
    assert!(metrics.contains("tally_db_pool_connections"));
    let (status, doc) = api.send(get.clone(), "/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    for path in [
        "/v1/sessions",
        "/v1/sessions/{session_id}",
        "/v1/users/{user_id}/usage",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
    ] {
        assert!(doc["paths"].get(path).is_some(), "OpenAPI documents {path}");
    }
    let (status, body) = api
        .send(reqwest::Method::DELETE, "/v1/sessions", Some(&kamile), None)
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::METHOD_NOT_ALLOWED, Some("method_not_allowed"))
    );
    assert_eq!(
        api.send(get, "/v2/nothing", None, None).await.0,
        StatusCode::NOT_FOUND
    );

    assert_consistent(&connect(&url).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_identical_posts_make_one_session_counted_once() {
    // What this test asserts is the answer of each of the 50 calls, not how fast they
    // come: through a pool of 8, the last of them wait for a connection through 6
    // rounds of calls, which on a distributed database with a debug build under a
    // loaded machine took longer than 5 s. A minute keeps a slow run from failing on
    // time and still fails a call that hangs.
    let config = AppConfig {
        request_timeout: Duration::from_secs(60),
        ..AppConfig::default()
    };
    let (api, url, _) = seeded_api_with("tally_e2e_api_idem", config).await;
    let api = std::sync::Arc::new(api);
    let token = api.token("kamile", Role::User);
    let id = Uuid::new_v4();
    let body = json!({"session_id": id, "kind": "practice", "duration_seconds": 300});
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (api, token, body) = (api.clone(), token.clone(), body.clone());
        tasks.push(tokio::spawn(async move { api.post(&token, body).await }));
    }
    let mut statuses = Vec::new();
    let mut sessions = Vec::new();
    for task in tasks {
        let (status, body) = task.await.unwrap();
        statuses.push(status);
        sessions.push(body["session"].clone());
    }
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::CREATED)
            .count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == StatusCode::OK).count(),
        49,
        "{statuses:?}"
    );
    assert!(
        sessions.windows(2).all(|w| w[0] == w[1]),
        "every answer describes the same session"
    );
    let client = connect(&url).await;
    let rows: i64 = client
        .query_one(
            "SELECT count(*) FROM tally.sessions WHERE session_id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    let used: i32 = client
        .query_one(
            "SELECT practice_sessions_used FROM tally.current_usage WHERE user_id = 'kamile'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!((rows, used), (1, 1));
    assert_consistent(&client).await;
}

/// Waiting for a pooled connection is part of a request, bounded by its request
/// timeout (README, configuration): a request that waits longer than the pool's
/// own default wait (5 s) still gets its answer within its timeout, not a 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_waits_for_a_pooled_connection_as_long_as_its_timeout_allows() {
    let config = AppConfig {
        request_timeout: Duration::from_secs(30),
        ..AppConfig::default()
    };
    let (api, url, _) = seeded_api_with("tally_e2e_api_pool_wait", config).await;
    let api = std::sync::Arc::new(api);
    let token = api.token("jonas", Role::User);
    // Every POST blocks on this lock holding its connection: the pool's 8 are taken,
    // and the other 2 POSTs wait for one for as long as the lock is held.
    let mut locker = connect(&url).await;
    let lock = locker.transaction().await.unwrap();
    lock.batch_execute("LOCK TABLE tally.sessions IN SHARE MODE")
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (api, token) = (api.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            api.post(&token, json!({"kind": "practice"})).await.0
        }));
    }
    tokio::time::sleep(Duration::from_secs(7)).await;
    lock.commit().await.unwrap();
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.unwrap());
    }
    assert!(
        statuses.iter().all(|s| *s == StatusCode::CREATED),
        "{statuses:?}"
    );
    let client = connect(&url).await;
    let used: i32 = client
        .query_one(
            "SELECT practice_sessions_used FROM tally.current_usage WHERE user_id = 'jonas'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(used, 10);
    assert_consistent(&client).await;
}

/// Each of the API's pooled connections keeps the plans it has counted with
/// (extension/src/store/catalog_cache.rs): a limit the plan's owner lowers or raises applies
/// to the next POST on every one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_changed_plan_applies_to_the_next_post_on_every_pooled_connection() {
    let (api, url, _) = seeded_api("tally_e2e_api_kept_plan").await;
    let api = std::sync::Arc::new(api);
    let jonas = api.token("jonas", Role::User);
    let usage = |body: &Value| body["usage"]["practice_sessions"].clone();
    // Concurrent POSTs, so that every connection of the pool counts one and keeps
    // the plan.
    let concurrent = |count: usize| {
        let (api, jonas) = (api.clone(), jonas.clone());
        async move {
            let tasks: Vec<_> = (0..count)
                .map(|_| {
                    let (api, jonas) = (api.clone(), jonas.clone());
                    tokio::spawn(async move { api.post(&jonas, json!({"kind": "practice"})).await })
                })
                .collect();
            let mut answers = Vec::new();
            for task in tasks {
                answers.push(task.await.unwrap());
            }
            answers
        }
    };
    for (status, body) in concurrent(16).await {
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let owner = connect(&url).await;
    owner
        .batch_execute(
            "UPDATE tally.plans SET practice_sessions_limit = 16 WHERE plan_id = 'fluency_builder'",
        )
        .await
        .unwrap();
    for (status, body) in concurrent(16).await {
        assert_eq!(status, StatusCode::PAYMENT_REQUIRED, "{body}");
        assert_eq!(body["error"]["code"], "quota_exceeded", "{body}");
    }
    let (status, body) = api
        .send(
            reqwest::Method::GET,
            "/v1/users/jonas/usage",
            Some(&jonas),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body["practice_sessions"],
        json!({"used": 16, "limit": 16, "remaining": 0})
    );
    owner
        .batch_execute(
            "UPDATE tally.plans SET practice_sessions_limit = 18 WHERE plan_id = 'fluency_builder'",
        )
        .await
        .unwrap();
    let answers = concurrent(4).await;
    let created: Vec<_> = answers
        .iter()
        .filter(|(status, _)| *status == StatusCode::CREATED)
        .collect();
    assert_eq!(created.len(), 2, "{answers:?}");
    assert!(
        created.iter().all(|(_, body)| usage(body)["limit"] == 18),
        "{answers:?}"
    );
    assert_consistent(&owner).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn database_down_then_up() {
    // A cluster of its own, so stopping it disturbs no other test.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/e2e-down-cluster");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/cluster.sh");
    let cluster = |action: &str| {
        let mut cmd = std::process::Command::new(&script);
        cmd.arg(action).arg(&dir);
        if action == "start" {
            cmd.arg("55439");
        }
        let out = cmd.output().expect("cluster.sh");
        assert!(
            out.status.success(),
            "cluster.sh {action}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    cluster("stop");
    let _ = std::fs::remove_dir_all(&dir);
    cluster("start");
    // Stopped however the test ends: a failed assertion must not leave the cluster
    // holding its port for the next run.
    struct StopOnDrop<'a>(&'a std::path::Path, &'a std::path::Path);
    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new(self.0)
                .arg("stop")
                .arg(self.1)
                .output();
        }
    }
    let _stop = StopOnDrop(&script, &dir);
    let admin = connect("postgres://postgres@127.0.0.1:55439/postgres").await;
    admin.batch_execute("CREATE EXTENSION tally").await.unwrap();
    admin
        .batch_execute(
            "INSERT INTO tally.plans VALUES ('p', 'P', NULL, NULL, '1 month');
             INSERT INTO tally.subscriptions (user_id, plan_id) VALUES ('kamile', 'p');",
        )
        .await
        .unwrap();
    let api = Api::start("postgres://postgres@127.0.0.1:55439/postgres").await;
    let token = api.token("kamile", Role::User);
    let get = reqwest::Method::GET;
    assert_eq!(
        api.send(get.clone(), "/readyz", None, None).await.0,
        StatusCode::OK
    );
    assert_eq!(
        api.post(&token, json!({"kind": "practice"})).await.0,
        StatusCode::CREATED
    );

    cluster("stop");
    let (status, body) = api.send(get.clone(), "/readyz", None, None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("unavailable"))
    );
    let (status, body) = api.post(&token, json!({"kind": "practice"})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("unavailable"))
    );
    assert_eq!(
        api.send(get.clone(), "/healthz", None, None).await.0,
        StatusCode::OK,
        "the process stays up"
    );

    cluster("start");
    let mut ready = false;
    for _ in 0..50 {
        if api.send(get.clone(), "/readyz", None, None).await.0 == StatusCode::OK {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        ready,
        "/readyz recovers by itself when the database is back"
    );
    let (status, body) = api.post(&token, json!({"kind": "practice"})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["usage"]["practice_sessions"]["used"], 2);

    // Without the extension the API is not ready either.
    let bare = connect("postgres://postgres@127.0.0.1:55439/postgres").await;
    bare.batch_execute("CREATE DATABASE no_tally")
        .await
        .unwrap();
    let unready = Api::start("postgres://postgres@127.0.0.1:55439/no_tally").await;
    assert_eq!(
        unready.send(get.clone(), "/readyz", None, None).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    // Nor with the extension at a release older than the one it calls, until updated.
    bare.batch_execute("CREATE DATABASE old_tally")
        .await
        .unwrap();
    let old = connect("postgres://postgres@127.0.0.1:55439/old_tally").await;
    old.batch_execute("CREATE EXTENSION tally VERSION '0.1.0'")
        .await
        .unwrap();
    let outdated = Api::start("postgres://postgres@127.0.0.1:55439/old_tally").await;
    let (status, body) = outdated.send(get.clone(), "/readyz", None, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("0.1.0") && m.contains("ALTER EXTENSION tally UPDATE")),
        "{body}"
    );
    old.batch_execute("ALTER EXTENSION tally UPDATE")
        .await
        .unwrap();
    let (status, _) = outdated.send(get.clone(), "/readyz", None, None).await;
    assert_eq!(status, StatusCode::OK);

    // A database at a release the library does not serve (older than the one before
    // the library's, though new enough for the API's calls): writes answer 503 and
    // name the update, nothing is written, and the same call succeeds once updated.
    bare.batch_execute("CREATE DATABASE unserved_tally")
        .await
        .unwrap();
    let unserved = connect("postgres://postgres@127.0.0.1:55439/unserved_tally").await;
    unserved
        .batch_execute(
            "CREATE EXTENSION tally VERSION '0.5.0';
             SET session_replication_role = replica;
             INSERT INTO tally.plans VALUES ('p', 'P', NULL, NULL, '1 month');
             INSERT INTO tally.subscriptions (user_id, plan_id) VALUES ('kamile', 'p');
             RESET session_replication_role;",
        )
        .await
        .unwrap();
    let waiting = Api::start("postgres://postgres@127.0.0.1:55439/unserved_tally").await;
    let token = waiting.token("kamile", Role::User);
    let (status, body) = waiting.post(&token, json!({"kind": "practice"})).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("ALTER EXTENSION tally UPDATE")),
        "{body}"
    );
    let written: i64 = unserved
        .query_one("SELECT count(*) FROM tally.sessions", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(written, 0, "a refused write left a session");
    unserved
        .batch_execute("ALTER EXTENSION tally UPDATE")
        .await
        .unwrap();
    let (status, body) = waiting.post(&token, json!({"kind": "practice"})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["usage"]["practice_sessions"]["used"], 1);
    cluster("stop");
}
