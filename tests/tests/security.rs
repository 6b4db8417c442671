//! The API against hostile end users, on a real server over a real PostgreSQL:
//! backdating into past billing periods, queries left running after a timeout,
//! stored values that JSON cannot carry, and the demo's own set-up.

use std::time::Duration;

use chrono::Utc;
use reqwest::{Method, StatusCode};
use serde_json::json;
use tally_api::{AppConfig, Role};
use tally_e2e::{connect, fresh_database, Api};
use uuid::Uuid;

/// A plan of 3 practice sessions a month and a user whose current period began an
/// hour ago (and one whose period began 40 days ago, for the 24-hour window).
async fn seeded(db: &str, config: AppConfig) -> (Api, String) {
    let url = fresh_database(db).await;
    connect(&url)
        .await
        .batch_execute(
            "INSERT INTO tally.plans (plan_id, display_name, practice_sessions_limit, assessments_limit)
             VALUES ('three', 'Three', 3, 1);
             INSERT INTO tally.subscriptions (user_id, plan_id, period_anchor) VALUES
                 ('newcomer', 'three', now() - interval '1 hour'),
                 ('regular', 'three', now() - interval '40 days');",
        )
        .await
        .unwrap();
    (Api::start_with(&url, config).await, url)
}

async fn session_count(url: &str, user: &str) -> i64 {
    connect(url)
        .await
        .query_one(
            "SELECT count(*) FROM tally.sessions WHERE user_id = $1",
            &[&user],
        )
        .await
        .unwrap()
        .get(0)
}

fn ago(duration: chrono::Duration) -> String {
    (Utc::now() - duration).to_rfc3339()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_tokens_cannot_backdate_into_fresh_quotas() {
    let (api, url) = seeded("tally_e2e_backdate", AppConfig::default()).await;
    let regular = api.token("regular", Role::User);
    // 40, 70 and 100 days ago lie in earlier periods, each with a fresh quota.
    for days in [40, 70, 100] {
        let (status, body) = api
            .post(
                &regular,
                json!({"kind": "practice", "started_at": ago(chrono::Duration::days(days))}),
            )
            .await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{days} days: {body}"
        );
        assert_eq!(body["error"]["code"], "invalid_request");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("too far in the past"), "{message}");
    }
    // Past the 24-hour window, even inside the current period.
    let (status, _) = api
        .post(
            &regular,
            json!({"kind": "practice", "started_at": ago(chrono::Duration::hours(25))}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    // Inside the window but before the user's current period began (an hour ago).
    let newcomer = api.token("newcomer", Role::User);
    let (status, _) = api
        .post(
            &newcomer,
            json!({"kind": "practice", "started_at": ago(chrono::Duration::hours(2))}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(session_count(&url, "regular").await, 0);
    assert_eq!(session_count(&url, "newcomer").await, 0);

    // A session that started ten minutes ago and is completed now is ordinary.
    let (status, body) = api
        .post(
            &regular,
            json!({"kind": "practice", "started_at": ago(chrono::Duration::minutes(10)),
                   "completed_at": Utc::now().to_rfc3339()}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["usage"]["practice_sessions"]["used"], 1);

    // A service token imports history.
    let service = api.token("importer", Role::Service);
    let (status, body) = api
        .post(
            &service,
            json!({"user_id": "regular", "kind": "practice", "started_at": ago(chrono::Duration::days(70))}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    // The window is configurable (TALLY_MAX_BACKDATE).
    let strict = Api::start_with(
        &url,
        AppConfig {
            max_backdate: Duration::from_secs(60),
            ..AppConfig::default()
        },
    )
    .await;
    let (status, _) = strict
        .post(
            &strict.token("regular", Role::User),
            json!({"kind": "practice", "started_at": ago(chrono::Duration::minutes(10))}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    // (The recount oracle assumes periods on the 1st; these anchors are not.)
    assert_no_drift(&url).await;
}

async fn assert_no_drift(url: &str) {
    let drift: i64 = connect(url)
        .await
        .query_one("SELECT count(*) FROM tally.verify()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(drift, 0, "tally.verify() reports drift");
}

/// A request that times out must not leave its query waiting in the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_request_leaves_no_query_behind() {
    let config = AppConfig {
        request_timeout: Duration::from_millis(500),
        ..AppConfig::default()
    };
    let (api, url) = seeded("tally_e2e_timeout", config).await;
    let regular = api.token("regular", Role::User);
    let (status, _) = api.post(&regular, json!({"kind": "practice"})).await;
    assert_eq!(status, StatusCode::CREATED);

    // Hold the user's usage row: the next insert for that user waits on it.
    let holder = connect(&url).await;
    holder
        .batch_execute("BEGIN; SELECT 1 FROM tally.usage WHERE user_id = 'regular' FOR UPDATE;")
        .await
        .unwrap();
    let (status, body) = api.post(&regular, json!({"kind": "practice"})).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");

    let observer = connect(&url).await;
    let mut waiting = -1;
    for _ in 0..50 {
        waiting = observer
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                  WHERE application_name = 'tally-api' AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0);
        if waiting == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        waiting, 0,
        "the timed-out insert still waits in the database"
    );
    holder.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(session_count(&url, "regular").await, 1);
}

/// Timestamps before year 1 cannot travel as RFC 3339: the API refuses them, and a
/// retry of a session stored with one (by SQL) still gets the stored session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_json_cannot_carry_are_refused_or_read_back_in_binary() {
    let (api, url) = seeded("tally_e2e_bc", AppConfig::default()).await;
    let service = api.token("importer", Role::Service);
    for started_at in ["0000-06-01T00:00:00Z", "-0044-03-15T00:00:00Z"] {
        let (status, body) = api
            .post(
                &service,
                json!({"user_id": "regular", "kind": "practice", "started_at": started_at}),
            )
            .await;
        assert!(
            status == StatusCode::UNPROCESSABLE_ENTITY || status == StatusCode::BAD_REQUEST,
            "{started_at}: {status} {body}"
        );
    }
    assert_eq!(session_count(&url, "regular").await, 0);

    let id = Uuid::new_v4();
    connect(&url)
        .await
        .execute(
            "INSERT INTO tally.sessions (session_id, user_id, kind, started_at)
             VALUES ($1, 'regular', 'practice', '0001-06-01 00:00+00 BC')",
            &[&id],
        )
        .await
        .unwrap();
    for _ in 0..2 {
        let (status, body) = api
            .post(
                &service,
                json!({"session_id": id, "user_id": "regular", "kind": "practice"}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["session"]["session_id"], id.to_string());
    }
    let (status, _) = api
        .send(
            Method::GET,
            &format!("/v1/sessions/{id}"),
            Some(&service),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(session_count(&url, "regular").await, 1);
}
