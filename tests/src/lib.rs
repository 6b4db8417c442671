//! Shared helpers for tally's end-to-end tests: each test gets its own database, with
//! the extension created, on the cluster named by TALLY_TEST_ADMIN_URL (`make e2e`).

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

/// Drops and creates `name` as an empty database (DROP/CREATE DATABASE refuse to
/// share an implicit transaction, hence two calls).
pub async fn recreate_empty_database(admin: &Client, name: &str) {
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await
        .expect("drop test database");
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create test database");
}

/// Drops and creates database `name` with the tally extension; returns its URL.
pub async fn fresh_database(name: &str) -> String {
    let admin = connect(&admin_url()).await;
    recreate_empty_database(&admin, name).await;
    let url = url_for(name);
    connect(&url)
        .await
        .batch_execute("CREATE EXTENSION tally")
        .await
        .expect("create extension");
    url
}

/// Counters that disagree with a plain recount of tally.sessions, for plans whose
/// periods are calendar months starting at 00:00 UTC on the 1st (what these tests
/// use), computed without tally's own period code.
pub const RECOUNT_MISMATCHES: &str = r#"
WITH actual AS (
    SELECT x.user_id, date_trunc('month', x.started_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS period_start,
           count(*) FILTER (WHERE k.counter = 'practice_sessions') AS practice,
           count(*) FILTER (WHERE k.counter = 'assessments') AS assessments
    FROM tally.sessions x JOIN tally.session_kinds k USING (kind)
    WHERE x.status = 'completed'
    GROUP BY 1, 2
)
SELECT coalesce(u.user_id, a.user_id) || ' ' || coalesce(u.period_start, a.period_start)::text
       || ': stored ' || coalesce(u.practice_sessions_used, 0) || '/' || coalesce(u.assessments_used, 0)
       || ' actual ' || coalesce(a.practice, 0) || '/' || coalesce(a.assessments, 0)
FROM tally.usage u FULL JOIN actual a USING (user_id, period_start)
WHERE coalesce(u.practice_sessions_used, 0) <> coalesce(a.practice, 0)
   OR coalesce(u.assessments_used, 0) <> coalesce(a.assessments, 0)
UNION ALL
SELECT 'learning plan ' || lp.learning_plan_id || ': stored ' || lp.completed_sessions || ' actual ' || count(x.*)
FROM tally.learning_plans lp
LEFT JOIN tally.sessions x ON x.learning_plan_id = lp.learning_plan_id AND x.status = 'completed'
GROUP BY lp.learning_plan_id, lp.completed_sessions
HAVING lp.completed_sessions <> count(x.*)
"#;

/// Panics unless both the independent recount and tally.verify() find nothing.
pub async fn assert_consistent(client: &Client) {
    let recount: Vec<String> = client
        .query(RECOUNT_MISMATCHES, &[])
        .await
        .expect("recount")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        recount.is_empty(),
        "counters disagree with a recount of tally.sessions:\n{}",
        recount.join("\n")
    );
    let verify: i64 = client
        .query_one("SELECT count(*) FROM tally.verify()", &[])
        .await
        .expect("verify")
        .get(0);
    assert_eq!(verify, 0, "tally.verify() reports drift");
}

/// The SQLSTATE of a failed statement, if the database sent one.
pub fn sqlstate(error: &tokio_postgres::Error) -> Option<&str> {
    error.code().map(|c| c.code())
}
