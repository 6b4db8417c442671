//! Shared helpers for tally's end-to-end tests: each test gets its own database, with
//! the extension created, on the cluster named by TALLY_TEST_ADMIN_URL (`make e2e`).
//! With TALLY_TEST_CITUS_PORT set, that cluster is the coordinator of a local Citus
//! cluster (scripts/citus_cluster.sh): each database is created on every node and tally
//! is distributed in it (`make test-citus`).

use reqwest::StatusCode;
use serde_json::Value;
use tally_api::{app, pool, AppConfig, AppState, Keys, Role};
use tokio_postgres::{Client, NoTls};

pub fn admin_url() -> String {
    std::env::var("TALLY_TEST_ADMIN_URL").expect(
        "TALLY_TEST_ADMIN_URL is not set: run the end-to-end tests with `make e2e` or `make test`",
    )
}

/// `admin_url` with its database replaced by `db`.
pub fn url_for(db: &str) -> String {
    let admin = admin_url();
    let base = admin
        .rsplit_once('/')
        .map(|(base, _)| base)
        .unwrap_or(&admin);
    format!("{base}/{db}")
}

pub async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// The coordinator's port when the tests run against Citus.
fn citus_port() -> Option<String> {
    std::env::var("TALLY_TEST_CITUS_PORT")
        .ok()
        .filter(|p| !p.is_empty())
}

/// Drops and creates `name` as an empty database (DROP/CREATE DATABASE refuse to
/// share an implicit transaction, hence two calls). On Citus: on every node, with
/// citus created and the workers added (scripts/citus_db.sh).
pub async fn recreate_empty_database(admin: &Client, name: &str) {
    if let Some(port) = citus_port() {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/citus_db.sh");
        let status = std::process::Command::new(script)
            .args([&port, name])
            .status()
            .expect("run scripts/citus_db.sh");
        assert!(status.success(), "scripts/citus_db.sh {port} {name} failed");
        return;
    }
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await
        .expect("drop test database");
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create test database");
}

/// Drops and creates database `name` with the tally extension (distributed, on
/// Citus); returns its URL.
pub async fn fresh_database(name: &str) -> String {
    let admin = connect(&admin_url()).await;
    recreate_empty_database(&admin, name).await;
    // `make test-spi`: every connection to the database counts through SPI only.
    if std::env::var("TALLY_TEST_FAST_PATH").as_deref() == Ok("off") {
        admin
            .batch_execute(&format!("ALTER DATABASE {name} SET tally.fast_path = off"))
            .await
            .expect("turn the fast path off");
    }
    let url = url_for(name);
    let client = connect(&url).await;
    client
        .batch_execute("CREATE EXTENSION tally")
        .await
        .expect("create extension");
    if citus_port().is_some() {
        client
            .batch_execute("SET client_min_messages = warning; SELECT tally.distribute()")
            .await
            .expect("distribute tally");
    }
    url
}

/// Counters that disagree with a plain recount of tally.sessions, for plans whose
/// periods are calendar months starting at 00:00 UTC on the 1st (what these tests
/// use), computed without tally's own period code.
pub const RECOUNT_MISMATCHES: &str = r#"
SELECT coalesce(u.user_id, a.user_id) || ' ' || coalesce(u.period_start, a.period_start)::text
       || ': stored ' || coalesce(u.practice_sessions_used, 0) || '/' || coalesce(u.assessments_used, 0)
       || ' actual ' || coalesce(a.practice, 0) || '/' || coalesce(a.assessments, 0)
FROM tally.usage u
FULL JOIN (
    SELECT x.user_id, date_trunc('month', x.started_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS period_start,
           count(*) FILTER (WHERE k.counter = 'practice_sessions') AS practice,
           count(*) FILTER (WHERE k.counter = 'assessments') AS assessments
    FROM tally.sessions x JOIN tally.session_kinds k USING (kind)
    WHERE x.status = 'completed'
    GROUP BY 1, 2
) a ON a.user_id = u.user_id AND a.period_start = u.period_start
WHERE coalesce(u.practice_sessions_used, 0) <> coalesce(a.practice, 0)
   OR coalesce(u.assessments_used, 0) <> coalesce(a.assessments, 0)
UNION ALL
SELECT 'learning plan ' || lp.learning_plan_id || ': stored ' || lp.completed_sessions || ' actual ' || coalesce(d.done, 0)
FROM tally.learning_plans lp
LEFT JOIN (SELECT x.user_id, x.learning_plan_id, count(*) AS done
             FROM tally.sessions x
            WHERE x.status = 'completed' AND x.learning_plan_id IS NOT NULL
            GROUP BY 1, 2) d ON d.user_id = lp.user_id AND d.learning_plan_id = lp.learning_plan_id
WHERE lp.completed_sessions <> coalesce(d.done, 0)
"#;

/// Usage rows whose bound on started sessions (tally.usage.started_bound, kept on
/// one node) is below the started sessions of metered kinds in their period.
const STARTED_BOUND_VIOLATIONS: &str = r#"
SELECT 'usage ' || u.user_id || ' ' || u.period_start || ': started_bound ' || u.started_bound
       || ' below ' || count(*) || ' started sessions'
FROM tally.usage u
JOIN tally.sessions x ON x.user_id = u.user_id AND x.started_at >= u.period_start AND x.started_at < u.period_end
JOIN tally.session_kinds k ON k.kind = x.kind
WHERE x.status = 'started' AND k.counter <> 'none' AND u.started_bound IS NOT NULL
GROUP BY u.user_id, u.period_start, u.started_bound
HAVING count(*) > u.started_bound
"#;

/// Panics with `what` and the rows of `sql` (one text column each), if it returns any.
async fn assert_no_rows(client: &Client, sql: &str, what: &str) {
    let rows: Vec<String> = client
        .query(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"))
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(rows.is_empty(), "{what}:\n{}", rows.join("\n"));
}

/// Panics unless the independent recount and tally.verify() find nothing, and no
/// bound on started sessions is below what it bounds.
pub async fn assert_consistent(client: &Client) {
    let keeps_bound: bool = client
        .query_one(
            "SELECT EXISTS (SELECT FROM pg_attribute WHERE attrelid = 'tally.usage'::regclass
                             AND attname = 'started_bound' AND NOT attisdropped)",
            &[],
        )
        .await
        .expect("started_bound column")
        .get(0);
    // A distributed tally keeps no bound (the column stays, NULL).
    if keeps_bound && !on_citus() {
        let what = "bounds on started sessions below a recount of tally.sessions";
        assert_no_rows(client, STARTED_BOUND_VIOLATIONS, what).await;
    }
    let what = "counters disagree with a recount of tally.sessions";
    assert_no_rows(client, RECOUNT_MISMATCHES, what).await;
    let verify: i64 = client
        .query_one("SELECT count(*) FROM tally.verify()", &[])
        .await
        .expect("verify")
        .get(0);
    assert_eq!(verify, 0, "tally.verify() reports drift");
}

/// The SQLSTATE of a failed statement, if the database sent one.
/// On Citus, tally's refusals rewrapped as XX000 count as their own code (the API's
/// reading of them).
pub fn sqlstate(error: &tokio_postgres::Error) -> Option<&str> {
    error.as_db_error().map(tally_api::error::sqlstate)
}

/// Whether the tests run against a distributed tally (see `fresh_database`).
pub fn on_citus() -> bool {
    citus_port().is_some()
}

pub const SECRET: &[u8] = b"an-api-test-secret-that-is-long-enough";

/// A real tally-api server on a free port of 127.0.0.1, over `database_url`.
pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
    pub keys: Keys,
}

impl Api {
    pub async fn start(database_url: &str) -> Api {
        Api::start_with(database_url, AppConfig::default()).await
    }

    pub async fn start_with(database_url: &str, config: AppConfig) -> Api {
        // The API's internal errors (logged, never sent) show in a failing test's output.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "tally_api=error".into()),
            )
            .with_test_writer()
            .try_init();
        let state = AppState {
            pool: pool(database_url, 8, config.request_timeout).expect("pool"),
            keys: Keys::new(SECRET),
            config,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app(state)).await.expect("serve") });
        Api {
            base,
            http: reqwest::Client::new(),
            keys: Keys::new(SECRET),
        }
    }

    pub fn token(&self, sub: &str, role: Role) -> String {
        self.keys.mint(sub, role, 600)
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request");
        let status = response.status();
        let text = response.text().await.unwrap();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status.is_client_error() || status.is_server_error() {
            assert_error_body(&value);
        }
        (status, value)
    }

    pub async fn post(&self, token: &str, body: Value) -> (StatusCode, Value) {
        self.send(
            reqwest::Method::POST,
            "/v1/sessions",
            Some(token),
            Some(body),
        )
        .await
    }
}

/// Every error is `{"error": {"code", "message"}}` and carries no internals.
pub fn assert_error_body(value: &Value) {
    let code = value["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("not an error envelope: {value}"));
    let message = value["error"]["message"].as_str().expect("error message");
    assert!(!code.is_empty());
    for leak in [
        "SELECT",
        "INSERT",
        "UPDATE tally",
        "violates",
        "tally.sessions",
        "panicked",
        "SQLSTATE",
        "postgres",
        "tally.",
        "_fkey",
        "constraint",
        "session_kinds",
    ] {
        assert!(
            !message.contains(leak),
            "error message leaks {leak:?}: {message}"
        );
    }
}
