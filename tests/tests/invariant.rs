//! Thousands of mixed writes from many connections at once (single and multi-row
//! INSERT, INSERT … SELECT, COPY, ON CONFLICT, completions, abandons, duration fixes,
//! DELETE, savepoint and whole-transaction rollbacks), then every counter is compared
//! with a recount from tally.sessions.

use futures_util::SinkExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tally_e2e::{assert_consistent, connect, fresh_database, sqlstate};
use tokio_postgres::Client;

const CLIENTS: usize = 16;
/// Operations per client; `make soak` raises it with TALLY_SOAK_OPS.
fn ops_per_client() -> usize {
    std::env::var("TALLY_SOAK_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(250)
}
const USERS: usize = 12;

fn user(rng: &mut StdRng) -> String {
    format!("user{}", rng.random_range(0..USERS))
}

fn started_at(rng: &mut StdRng) -> String {
    // Spread over six monthly periods, with some on period boundaries.
    let month = rng.random_range(1..=6);
    if rng.random_bool(0.1) {
        format!("2026-{month:02}-01 00:00:00+00")
    } else {
        format!(
            "2026-{month:02}-{:02} {:02}:{:02}:00+00",
            rng.random_range(1..=28),
            rng.random_range(0..24),
            rng.random_range(0..60)
        )
    }
}

fn kind(rng: &mut StdRng) -> &'static str {
    ["practice", "assessment", "learning_plan", "warmup"][rng.random_range(0..4)]
}

fn status(rng: &mut StdRng) -> &'static str {
    ["completed", "completed", "started", "abandoned"][rng.random_range(0..4)]
}

/// A VALUES row for a random session of `user`; learning_plan sessions use one of the user's plans.
fn row(rng: &mut StdRng, user: &str) -> String {
    let kind = kind(rng);
    let plan = if kind == "learning_plan" {
        // The fixtures' ids, computed rather than looked up: Citus takes no subquery in VALUES.
        format!("md5('{user}/{}')::uuid", rng.random_range(1..=2))
    } else {
        "NULL::uuid".to_string()
    };
    format!(
        "('{user}', '{kind}', {plan}, '{}', '{}'::timestamptz)",
        status(rng),
        started_at(rng)
    )
}

async fn one_operation(client: &mut Client, rng: &mut StdRng) -> Result<(), tokio_postgres::Error> {
    let u = user(rng);
    let insert =
        "INSERT INTO tally.sessions (user_id, kind, learning_plan_id, status, started_at) VALUES ";
    match rng.random_range(0..13) {
        0 | 1 => client.batch_execute(&format!("{insert}{}", row(rng, &u))).await,
        2 => {
            let rows: Vec<String> = (0..rng.random_range(2..8))
                .map(|_| {
                    let u = user(rng);
                    row(rng, &u)
                })
                .collect();
            client.batch_execute(&format!("{insert}{}", rows.join(", "))).await
        }
        3 => {
            client
                .batch_execute(&format!(
                    "INSERT INTO tally.sessions (user_id, kind, status, started_at)
                     SELECT 'user' || (i % {USERS}), CASE WHEN i % 3 = 0 THEN 'assessment' ELSE 'practice' END,
                            CASE WHEN i % 4 = 0 THEN 'started' ELSE 'completed' END,
                            '{}'::timestamptz + i * interval '7 hours'
                       FROM generate_series(1, {}) i",
                    started_at(rng),
                    rng.random_range(5..40)
                ))
                .await
        }
        4 => {
            let sink = client
                .copy_in("COPY tally.sessions (user_id, kind, status, started_at) FROM STDIN WITH (FORMAT csv)")
                .await?;
            futures_util::pin_mut!(sink);
            let mut data = String::new();
            for _ in 0..rng.random_range(1..30) {
                let k = ["practice", "assessment", "warmup"][rng.random_range(0..3)];
                data.push_str(&format!("{},{k},{},{}\n", user(rng), status(rng), started_at(rng)));
            }
            sink.send(bytes::Bytes::from(data)).await?;
            sink.finish().await.map(|_| ())
        }
        5 => {
            // ON CONFLICT DO NOTHING against an existing session, plus a new one. Without
            // a conflict target, as tally.record_session writes it: with one, a conflict
            // found first in another unique index (sessions_session_id_key on one node,
            // when a concurrent DELETE and re-insert of the same id race) raises 23505
            // instead of doing nothing.
            let existing = client
                .query_opt(
                    "SELECT session_id::text, kind, started_at::text FROM tally.sessions WHERE user_id = $1 LIMIT 1",
                    &[&u],
                )
                .await?;
            let new = format!("(gen_random_uuid(), '{u}', 'practice', '{}')", started_at(rng));
            let rows = match existing {
                Some(row) => format!(
                    "('{}'::uuid, '{u}', '{}', '{}'), {new}",
                    row.get::<_, String>(0),
                    row.get::<_, String>(1),
                    row.get::<_, String>(2)
                ),
                None => new,
            };
            client
                .batch_execute(&format!(
                    "INSERT INTO tally.sessions (session_id, user_id, kind, started_at) VALUES {rows}
                     ON CONFLICT DO NOTHING"
                ))
                .await
        }
        6 => {
            // ON CONFLICT DO UPDATE completing a started session. The session is locked
            // first, as a careful client does: unlocked, a concurrent DELETE of it and
            // another client's re-insert of the same id could meet first in
            // sessions_session_id_key, which is not the arbiter and raises 23505.
            client
                .batch_execute(&format!(
                    "WITH s AS (SELECT session_id, user_id, kind, started_at FROM tally.sessions
                                 WHERE user_id = '{u}' AND status = 'started' LIMIT 1 FOR UPDATE)
                     INSERT INTO tally.sessions (session_id, user_id, kind, status, started_at)
                     SELECT session_id, user_id, kind, 'completed', started_at FROM s
                     ON CONFLICT (user_id, session_id) DO UPDATE SET status = excluded.status
                        WHERE tally.sessions.status = 'started'"
                ))
                .await
        }
        7 | 8 => {
            let to = if rng.random_bool(0.6) { "completed" } else { "abandoned" };
            client
                .batch_execute(&format!(
                    // status = 'started' in the outer WHERE is re-checked if a concurrent
                    // writer finished the same session first, as a careful client writes it.
                    "UPDATE tally.sessions SET status = '{to}'
                      WHERE user_id = '{u}' AND status = 'started' AND session_id IN (SELECT session_id FROM tally.sessions
                                            WHERE user_id = '{u}' AND status = 'started' LIMIT {})",
                    rng.random_range(1..4)
                ))
                .await
        }
        9 => {
            client
                .batch_execute(&format!(
                    "UPDATE tally.sessions SET duration_seconds = {} WHERE user_id = '{u}' AND started_at < '{}'",
                    rng.random_range(0..3600),
                    started_at(rng)
                ))
                .await
        }
        10 => {
            client
                .batch_execute(&format!(
                    "DELETE FROM tally.sessions WHERE user_id = '{u}' AND session_id IN
                        (SELECT session_id FROM tally.sessions WHERE user_id = '{u}' ORDER BY random() LIMIT {})",
                    rng.random_range(1..5)
                ))
                .await
        }
        11 => {
            // savepoint rollback in the middle of a transaction
            let tx = client.transaction().await?;
            tx.batch_execute(&format!("{insert}{}", row(rng, &u))).await?;
            tx.batch_execute("SAVEPOINT sp").await?;
            tx.batch_execute(&format!("{insert}{}, {}", row(rng, &u), row(rng, &u))).await?;
            tx.batch_execute(&format!("DELETE FROM tally.sessions WHERE user_id = '{u}' AND status = 'completed' AND session_id IN (SELECT session_id FROM tally.sessions WHERE user_id = '{u}' LIMIT 1)")).await?;
            tx.batch_execute("ROLLBACK TO SAVEPOINT sp").await?;
            tx.commit().await
        }
        _ => {
            // a whole transaction rolled back
            let tx = client.transaction().await?;
            tx.batch_execute(&format!("{insert}{}, {}", row(rng, &u), row(rng, &u))).await?;
            tx.batch_execute(&format!("UPDATE tally.sessions SET status = 'completed' WHERE user_id = '{u}' AND status = 'started'")).await?;
            tx.rollback().await
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mixed_concurrent_writes_keep_every_counter_exact() {
    let url = fresh_database("tally_e2e_invariant").await;
    let setup = connect(&url).await;
    setup
        .batch_execute(&format!(
            "INSERT INTO tally.plans (plan_id, display_name) VALUES ('open', 'Open');
             INSERT INTO tally.session_kinds VALUES ('warmup', 'none');
             INSERT INTO tally.subscriptions (user_id, plan_id, period_anchor)
                  SELECT 'user' || i, 'open', '2026-01-01 00:00+00' FROM generate_series(0, {last}) i;
             INSERT INTO tally.learning_plans (learning_plan_id, user_id, title)
                  SELECT md5('user' || i || '/' || j)::uuid, 'user' || i, 'plan ' || j
                    FROM generate_series(0, {last}) i, generate_series(1, 2) j;",
            last = USERS - 1
        ))
        .await
        .expect("fixtures");

    let seed: u64 = std::env::var("TALLY_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("seed {seed} (set TALLY_TEST_SEED to replay)");
    let mut tasks = Vec::new();
    for client_no in 0..CLIENTS {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = connect(&url).await;
            let mut rng = StdRng::seed_from_u64(seed.wrapping_add(client_no as u64));
            let (mut ok, mut retryable) = (0usize, 0usize);
            for _ in 0..ops_per_client() {
                match one_operation(&mut client, &mut rng).await {
                    Ok(()) => ok += 1,
                    // Statements touching several users' rows can deadlock; PostgreSQL aborts one.
                    Err(e) if matches!(sqlstate(&e), Some("40P01" | "40001")) => retryable += 1,
                    Err(e) => panic!("unexpected error: {e:?}"),
                }
            }
            (ok, retryable)
        }));
    }
    let (mut ok, mut retryable) = (0, 0);
    for task in tasks {
        let (o, r) = task.await.expect("client task");
        ok += o;
        retryable += r;
    }
    println!("{ok} operations committed or rolled back as planned, {retryable} deadlock/serialization aborts");
    assert!(
        ok >= CLIENTS * ops_per_client() * 9 / 10,
        "too few operations went through: {ok}"
    );

    let sessions: i64 = setup
        .query_one("SELECT count(*) FROM tally.sessions", &[])
        .await
        .unwrap()
        .get(0);
    let completed: i64 = setup
        .query_one(
            "SELECT count(*) FROM tally.sessions WHERE status = 'completed' AND kind <> 'warmup'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    println!("{sessions} sessions, {completed} completed metered");
    assert!(
        completed > 1000,
        "the run should leave a substantial number of counted sessions"
    );
    assert_consistent(&setup).await;
}
