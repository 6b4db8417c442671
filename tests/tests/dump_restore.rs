//! pg_dump of a database using tally, restored into a fresh database, gives the same
//! rows and consistent counters: usage is rebuilt from the sessions, never doubled.

use std::process::Command;

use tally_e2e::{
    admin_url, assert_consistent, connect, fresh_database, recreate_empty_database, url_for,
};

fn pg_bin(tool: &str) -> String {
    let dir = std::env::var("PGBIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into());
    format!("{dir}/{tool}")
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A fingerprint of every user-visible row, so two databases can be compared.
const FINGERPRINT: &str = r#"
SELECT 'plans', md5(string_agg(p::text, '|' ORDER BY plan_id)) FROM tally.plans p
UNION ALL SELECT 'subscriptions', md5(string_agg(s::text, '|' ORDER BY user_id)) FROM tally.subscriptions s
UNION ALL SELECT 'session_kinds', md5(string_agg(k::text, '|' ORDER BY kind)) FROM tally.session_kinds k
UNION ALL SELECT 'learning_plans', md5(string_agg(l::text, '|' ORDER BY learning_plan_id)) FROM tally.learning_plans l
UNION ALL SELECT 'sessions', md5(string_agg(x::text, '|' ORDER BY session_id)) FROM tally.sessions x
UNION ALL SELECT 'usage', md5(string_agg(u::text, '|' ORDER BY user_id, period_start)) FROM tally.usage u
          WHERE practice_sessions_used <> 0 OR assessments_used <> 0
UNION ALL SELECT 'adjustments', md5(string_agg(a::text, '|' ORDER BY adjustment_id)) FROM tally.adjustments a
UNION ALL SELECT 'session count', count(*)::text FROM tally.sessions
"#;

async fn fingerprint(url: &str) -> Vec<(String, Option<String>)> {
    connect(url)
        .await
        .query(FINGERPRINT, &[])
        .await
        .expect("fingerprint")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

async fn populate(url: &str) {
    connect(url)
        .await
        .batch_execute(
            "INSERT INTO tally.plans VALUES ('fluency_builder', 'Fluency Builder', 30, 2, '1 month'), ('open', 'Open', NULL, NULL, '1 month');
             INSERT INTO tally.session_kinds VALUES ('warmup', 'none');
             INSERT INTO tally.subscriptions (user_id, plan_id, period_anchor)
                  SELECT 'user' || i, CASE WHEN i % 2 = 0 THEN 'fluency_builder' ELSE 'open' END, '2026-01-01 00:00+00'
                    FROM generate_series(1, 20) i;
             INSERT INTO tally.learning_plans (user_id, title, total_sessions) SELECT user_id, 'Plan of ' || user_id, 10 FROM tally.subscriptions;
             -- users on fluency_builder end exactly at their limits: 30 practice, 2 assessments in March
             INSERT INTO tally.sessions (user_id, kind, learning_plan_id, started_at, duration_seconds)
                  SELECT s.user_id, 'learning_plan', lp.learning_plan_id, '2026-03-01 08:00+00'::timestamptz + g * interval '1 hour', 600
                    FROM tally.subscriptions s JOIN tally.learning_plans lp USING (user_id), generate_series(1, 30) g;
             INSERT INTO tally.sessions (user_id, kind, started_at)
                  SELECT user_id, 'assessment', '2026-03-20 10:00+00'::timestamptz + g * interval '1 day'
                    FROM tally.subscriptions, generate_series(0, 1) g;
             INSERT INTO tally.sessions (user_id, kind, status, started_at)
                  SELECT user_id, 'practice', st, '2026-04-02 10:00+00'
                    FROM tally.subscriptions, unnest(ARRAY['started', 'abandoned']) st;
             INSERT INTO tally.sessions (user_id, kind, started_at) SELECT user_id, 'warmup', '2026-04-03 10:00+00' FROM tally.subscriptions;
             -- deletes leave zero rows behind in usage; the dump need not carry them
             DELETE FROM tally.sessions WHERE kind = 'practice' AND status = 'abandoned';
             -- drift fixed by repair leaves an audit trail that must survive
             SET session_replication_role = replica;
             INSERT INTO tally.sessions (user_id, kind, started_at, completed_at) VALUES ('user1', 'practice', '2026-05-01 10:00+00', '2026-05-01 10:30+00');
             RESET session_replication_role;
             SELECT tally.repair();",
        )
        .await
        .expect("populate");
}

#[tokio::test]
async fn plain_dump_restores_with_the_same_rows_and_no_double_counting() {
    let source = fresh_database("tally_e2e_dump_source").await;
    populate(&source).await;
    assert_consistent(&connect(&source).await).await;

    let admin = connect(&admin_url()).await;
    recreate_empty_database(&admin, "tally_e2e_dump_target").await;
    let target = url_for("tally_e2e_dump_target");
    let dump = std::env::temp_dir().join("tally_e2e_dump.sql");
    run(Command::new(pg_bin("pg_dump"))
        .arg("-d")
        .arg(&source)
        .arg("-f")
        .arg(&dump));
    // Plain format through psql, stopping at the first error: a limit error or a
    // double count during restore would fail here.
    run(Command::new(pg_bin("psql"))
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d"])
        .arg(&target)
        .arg("-f")
        .arg(&dump));

    assert_eq!(fingerprint(&target).await, fingerprint(&source).await);
    assert_consistent(&connect(&target).await).await;
}

#[tokio::test]
async fn custom_format_restore_of_data_over_its_limits() {
    let source = fresh_database("tally_e2e_dump_over").await;
    populate(&source).await;
    // A historical import above the plan limit, loaded by a superuser with limits off.
    connect(&source)
        .await
        .batch_execute(
            "SET tally.enforce_limits = off;
             INSERT INTO tally.sessions (user_id, kind, started_at)
                  SELECT 'user2', 'assessment', '2026-02-10 10:00+00' FROM generate_series(1, 5);",
        )
        .await
        .unwrap();

    let admin = connect(&admin_url()).await;
    recreate_empty_database(&admin, "tally_e2e_restore_over").await;
    let target = url_for("tally_e2e_restore_over");
    let dump = std::env::temp_dir().join("tally_e2e_dump.custom");
    run(Command::new(pg_bin("pg_dump"))
        .args(["-Fc", "-d"])
        .arg(&source)
        .arg("-f")
        .arg(&dump));
    // Rows that were loaded with limits off are restored the same way (README: Backups).
    run(Command::new(pg_bin("pg_restore"))
        .env("PGOPTIONS", "-c tally.enforce_limits=off")
        .args(["--exit-on-error", "-d"])
        .arg(&target)
        .arg(&dump));

    assert_eq!(fingerprint(&target).await, fingerprint(&source).await);
    assert_consistent(&connect(&target).await).await;
}
