//! Limits under real concurrency: many connections racing for the last slots of a
//! plan can never together exceed the limit, under READ COMMITTED and REPEATABLE READ;
//! and repair() run during the race loses no increments.

use tally_e2e::{assert_consistent, connect, fresh_database, sqlstate};

const CLIENTS: usize = 8;
const INSERTS_PER_CLIENT: usize = 50;
const LIMIT: i64 = 50;

struct Outcome {
    committed: usize,
    refused: usize,
}

/// Every client inserts its share of sessions one by one; serialization failures are
/// retried as an application would. Returns how many committed and were refused.
async fn race(url: &str, isolation: &'static str, status: &'static str) -> Outcome {
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let url = url.to_string();
        tasks.push(tokio::spawn(async move {
            let mut client = connect(&url).await;
            let (mut committed, mut refused) = (0, 0);
            for _ in 0..INSERTS_PER_CLIENT {
                // Bounded: a serialization failure that never stops is a failure.
                let mut attempts = 0;
                loop {
                    attempts += 1;
                    assert!(
                        attempts <= 1000,
                        "an insert failed with 40001 1000 times in a row at {isolation}"
                    );
                    let tx = client.build_transaction();
                    let tx = match isolation {
                        "repeatable read" => {
                            tx.isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                        }
                        _ => tx.isolation_level(tokio_postgres::IsolationLevel::ReadCommitted),
                    };
                    let tx = tx.start().await.expect("begin");
                    let inserted = tx
                        .execute(
                            "INSERT INTO tally.sessions (user_id, kind, status, started_at)
                             VALUES ('racer', 'practice', $1, '2026-03-10 10:00+00')",
                            &[&status],
                        )
                        .await;
                    match inserted {
                        Ok(_) => {
                            tx.commit().await.expect("commit");
                            committed += 1;
                            break;
                        }
                        Err(e) if sqlstate(&e) == Some("TL001") => {
                            refused += 1;
                            break;
                        }
                        Err(e) if sqlstate(&e) == Some("40001") => continue,
                        Err(e) => panic!("unexpected error: {e:?}"),
                    }
                }
            }
            (committed, refused)
        }));
    }
    let mut outcome = Outcome {
        committed: 0,
        refused: 0,
    };
    for task in tasks {
        let (c, r) = task.await.expect("client");
        outcome.committed += c;
        outcome.refused += r;
    }
    outcome
}

async fn racer_database(name: &str) -> String {
    let url = fresh_database(name).await;
    connect(&url)
        .await
        .batch_execute(&format!(
            // For the racers' connections (a session SET would not reach Citus's workers).
            "ALTER DATABASE {name} SET tally.reservation_timeout = '100 years';
             INSERT INTO tally.plans (plan_id, display_name, practice_sessions_limit) VALUES ('fifty', 'Fifty', {LIMIT});
             INSERT INTO tally.subscriptions (user_id, plan_id, period_anchor) VALUES ('racer', 'fifty', '2026-01-01 00:00+00');"
        ))
        .await
        .expect("fixtures");
    url
}

async fn used(url: &str) -> (i64, i64) {
    let client = connect(url).await;
    let row = client
        .query_one(
            "SELECT (SELECT coalesce(sum(practice_sessions_used), 0)::bigint FROM tally.usage WHERE user_id = 'racer'),
                    (SELECT count(*) FROM tally.sessions WHERE user_id = 'racer')",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn read_committed_racers_never_exceed_the_limit() {
    let url = racer_database("tally_e2e_limit_rc").await;
    let outcome = race(&url, "read committed", "completed").await;
    assert_eq!(outcome.committed as i64, LIMIT, "exactly the limit commits");
    assert_eq!(
        outcome.refused,
        CLIENTS * INSERTS_PER_CLIENT - LIMIT as usize
    );
    assert_eq!(used(&url).await, (LIMIT, LIMIT));
    assert_consistent(&connect(&url).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn repeatable_read_racers_never_exceed_the_limit() {
    let url = racer_database("tally_e2e_limit_rr").await;
    let outcome = race(&url, "repeatable read", "completed").await;
    assert_eq!(outcome.committed as i64, LIMIT);
    assert_eq!(used(&url).await, (LIMIT, LIMIT));
    assert_consistent(&connect(&url).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn started_sessions_reserve_slots_under_concurrency() {
    let url = racer_database("tally_e2e_limit_started").await;
    let outcome = race(&url, "read committed", "started").await;
    assert_eq!(
        outcome.committed as i64, LIMIT,
        "reservations count against the limit"
    );
    // Nothing is used yet; completing every started session is never refused.
    assert_eq!(used(&url).await, (0, LIMIT));
    let client = connect(&url).await;
    client
        .batch_execute("UPDATE tally.sessions SET status = 'completed'")
        .await
        .expect("complete all");
    assert_eq!(used(&url).await, (LIMIT, LIMIT));
    assert_consistent(&client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn repair_during_concurrent_inserts_loses_no_increment() {
    let url = fresh_database("tally_e2e_repair").await;
    let setup = connect(&url).await;
    // One statement per call: Citus forwards a DDL statement's whole query text.
    for statement in [
        "INSERT INTO tally.plans (plan_id, display_name) VALUES ('open', 'Open')",
        "INSERT INTO tally.subscriptions (user_id, plan_id, period_anchor)
              SELECT 'writer' || i, 'open', '2026-01-01 00:00+00' FROM generate_series(0, 3) i",
        "ALTER TABLE tally.sessions DISABLE TRIGGER sessions_count_insert",
        "INSERT INTO tally.sessions (user_id, kind, started_at, completed_at)
              SELECT 'writer' || (i % 4), 'practice', '2026-03-01 10:00+00', '2026-03-01 10:30+00'
                FROM generate_series(1, 40) i",
        "ALTER TABLE tally.sessions ENABLE TRIGGER sessions_count_insert",
    ] {
        setup
            .batch_execute(statement)
            .await
            .expect("fixtures with drift");
    }
    let drift: i64 = setup
        .query_one("SELECT count(*) FROM tally.verify()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(drift, 4, "one drifted counter per writer");

    let mut writers = Vec::new();
    for w in 0..4 {
        let url = url.clone();
        writers.push(tokio::spawn(async move {
            let client = connect(&url).await;
            for i in 0..150 {
                client
                    .execute(
                        "INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ($1, 'practice', '2026-03-02 10:00+00')",
                        &[&format!("writer{}", (w + i) % 4)],
                    )
                    .await
                    .expect("insert during repair");
            }
        }));
    }
    let mut fixed_total = 0;
    for _ in 0..20 {
        let fixed: i64 = setup
            .query_one("SELECT tally.repair()", &[])
            .await
            .expect("repair")
            .get(0);
        fixed_total += fixed;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    for w in writers {
        w.await.expect("writer");
    }
    assert_eq!(fixed_total, 4, "each drifted counter is fixed exactly once");
    assert_eq!(
        setup
            .query_one("SELECT tally.repair()", &[])
            .await
            .unwrap()
            .get::<_, i64>(0),
        0
    );
    let used: i64 = setup
        .query_one(
            "SELECT sum(practice_sessions_used)::bigint FROM tally.usage",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(used, 40 + 4 * 150);
    assert_consistent(&setup).await;
}
