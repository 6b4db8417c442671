//! The storage of the counter rows: a usage row updated by key thousands of times
//! stays on its heap page. The single-row path prunes a page itself, and only when
//! the row's next versions no longer fit (extension/src/store/rows.rs); if it
//! pruned too late or never, the versions would spill to new pages and the table
//! would grow with every insert.

use tally_e2e::{assert_consistent, connect, fresh_database};

const INSERTS: usize = 3_000;

#[tokio::test]
async fn a_usage_row_updated_thousands_of_times_stays_on_its_page() {
    let url = fresh_database("tally_e2e_counter_storage").await;
    let client = connect(&url).await;
    // Autovacuum off: nothing but this test's statements holds a snapshot in this
    // database, so each version is dead to everyone once its insert commits, and
    // every prune can free it.
    client
        .batch_execute(
            "ALTER TABLE tally.usage SET (autovacuum_enabled = off);
             ALTER TABLE tally.sessions SET (autovacuum_enabled = off);
             INSERT INTO tally.plans (plan_id, display_name, practice_sessions_limit)
             VALUES ('large', 'Large', 1000000);
             INSERT INTO tally.subscriptions (user_id, plan_id, period_anchor)
             VALUES ('hot', 'large', '2026-01-01 00:00+00');
             INSERT INTO tally.sessions (user_id, kind, started_at)
             VALUES ('hot', 'practice', '2026-03-01 10:00+00');",
        )
        .await
        .unwrap();
    let size = "SELECT pg_relation_size('tally.usage')";
    let before: i64 = client.query_one(size, &[]).await.unwrap().get(0);
    assert_eq!(before, 8192, "one usage row, one page");

    // One statement, one transaction each: the API's and every ORM's shape.
    let insert = client
        .prepare(
            "INSERT INTO tally.sessions (user_id, kind, started_at)
             VALUES ('hot', 'practice', '2026-03-02 10:00+00')",
        )
        .await
        .unwrap();
    for _ in 0..INSERTS {
        client.execute(&insert, &[]).await.unwrap();
    }

    let used: i32 = client
        .query_one(
            "SELECT practice_sessions_used FROM tally.usage WHERE user_id = 'hot'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(used as usize, INSERTS + 1);
    // Without pruning, 3,000 versions of the row would take about 25 pages.
    let after: i64 = client.query_one(size, &[]).await.unwrap().get(0);
    assert_eq!(
        after, before,
        "tally.usage grew from {before} to {after} bytes"
    );
    assert_consistent(&client).await;
}
