//! Fault injection. PostgreSQL killed with SIGKILL in the middle of a mixed concurrent
//! load, then restarted: crash recovery leaves every counter consistent and every
//! acknowledged write in place. The API killed with SIGKILL mid-load while clients
//! retry with the same session_id: no session is lost and none is counted twice.
//!
//! Each test runs its own PostgreSQL cluster (durable settings) so that killing it
//! disturbs nothing else. TALLY_FAULT_ROUNDS repeats the kills (`make soak`).

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use tally_e2e::{assert_consistent, connect, sqlstate};
use uuid::Uuid;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn rounds() -> usize {
    std::env::var("TALLY_FAULT_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

/// A private cluster with default durability (fsync and synchronous_commit on).
struct Cluster {
    dir: PathBuf,
    port: u16,
}

impl Cluster {
    fn fresh(name: &str, port: u16) -> Cluster {
        let cluster = Cluster {
            dir: repo().join("target").join(name),
            port,
        };
        cluster.run("stop");
        let _ = std::fs::remove_dir_all(&cluster.dir);
        cluster.run("start");
        cluster
    }

    fn run(&self, action: &str) {
        let mut cmd = Command::new(repo().join("scripts/cluster.sh"));
        cmd.arg(action).arg(&self.dir);
        if action == "start" {
            cmd.arg(self.port.to_string())
                .arg("fsync = on")
                .arg("synchronous_commit = on");
        }
        let out = cmd.output().expect("run scripts/cluster.sh");
        assert!(
            out.status.success(),
            "cluster.sh {action}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// SIGKILL to the postmaster and every process it started, at once: a crash.
    fn crash(&self) {
        let pid_file =
            std::fs::read_to_string(self.dir.join("data/postmaster.pid")).expect("postmaster.pid");
        let postmaster = pid_file
            .lines()
            .next()
            .expect("pid line")
            .trim()
            .to_string();
        let children = Command::new("pgrep")
            .args(["-P", &postmaster])
            .output()
            .expect("pgrep");
        let mut pids = vec![postmaster];
        pids.extend(
            String::from_utf8_lossy(&children.stdout)
                .split_whitespace()
                .map(str::to_string),
        );
        let status = Command::new("kill")
            .arg("-9")
            .args(&pids)
            .status()
            .expect("kill");
        assert!(status.success(), "kill -9 {pids:?}");
        // Wait until they are gone. An orphan that nobody reaps stays a zombie, which
        // pg_ctl would take for a live server: the lock file it left is stale then.
        let dead = |pid: &String| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|stat| {
                    stat.rsplit(')')
                        .next()
                        .is_some_and(|rest| rest.trim_start().starts_with('Z'))
                })
                .unwrap_or(true)
        };
        for _ in 0..100 {
            if pids.iter().all(dead) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(pids.iter().all(dead), "the cluster's processes did not die");
        std::fs::remove_file(self.dir.join("data/postmaster.pid"))
            .expect("remove the stale lock file");
        let _ = std::fs::remove_file(self.dir.join(format!(".s.PGSQL.{}.lock", self.port)));
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.run("stop");
    }
}

async fn setup_schema(url: &str) {
    connect(url)
        .await
        .batch_execute(
            "CREATE EXTENSION tally;
             INSERT INTO tally.plans VALUES ('open', 'Open', NULL, NULL, '1 month');
             INSERT INTO tally.subscriptions (user_id, plan_id, period_anchor)
                  SELECT 'user' || i, 'open', '2026-01-01 00:00+00' FROM generate_series(0, 19) i;",
        )
        .await
        .expect("schema");
}

#[derive(Default)]
struct Acknowledged {
    inserted: HashSet<Uuid>,
    deleted: HashSet<Uuid>,
    /// Deletes cut off by the crash: committed or not, the client cannot know.
    in_doubt: HashSet<Uuid>,
}

/// A writer that records what the database acknowledged, until its connection dies.
async fn crash_writer(url: String, seed: u64, acked: Arc<Mutex<Acknowledged>>) {
    let Ok((client, connection)) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await
    else {
        return;
    };
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut mine: Vec<Uuid> = Vec::new();
    loop {
        let user = format!("user{}", rng.random_range(0..20));
        let day = rng.random_range(1..=28);
        let result = match rng.random_range(0..10) {
            0..=4 => {
                let ids: Vec<Uuid> = (0..rng.random_range(1..5)).map(|_| Uuid::new_v4()).collect();
                let status = if rng.random_bool(0.3) { "started" } else { "completed" };
                let kind = if rng.random_bool(0.2) { "assessment" } else { "practice" };
                let r = client
                    .execute(
                        "INSERT INTO tally.sessions (session_id, user_id, kind, status, started_at)
                         SELECT id, $2, $3, $4, make_timestamptz(2026, 3, $5, 10, 0, 0, 'UTC') FROM unnest($1::uuid[]) id",
                        &[&ids, &user, &kind, &status, &day],
                    )
                    .await;
                if r.is_ok() {
                    acked.lock().unwrap().inserted.extend(ids.iter().copied());
                    mine.extend(ids);
                }
                r.map(|_| ())
            }
            5..=6 => client
                .execute(
                    "UPDATE tally.sessions SET status = 'completed' WHERE status = 'started' AND session_id =
                        (SELECT session_id FROM tally.sessions WHERE user_id = $1 AND status = 'started' LIMIT 1)",
                    &[&user],
                )
                .await
                .map(|_| ()),
            7 => match mine.pop() {
                Some(id) => {
                    let r = client.execute("DELETE FROM tally.sessions WHERE session_id = $1", &[&id]).await;
                    match &r {
                        Ok(_) => {
                            acked.lock().unwrap().deleted.insert(id);
                        }
                        // No answer: the DELETE may have committed just before the crash.
                        Err(e) if e.as_db_error().is_none() => {
                            acked.lock().unwrap().in_doubt.insert(id);
                        }
                        Err(_) => {}
                    }
                    r.map(|_| ())
                }
                None => Ok(()),
            },
            _ => {
                let mut data = String::new();
                let ids: Vec<Uuid> = (0..rng.random_range(1..20)).map(|_| Uuid::new_v4()).collect();
                for id in &ids {
                    data.push_str(&format!("{id},{user},practice,2026-03-{day:02} 11:00:00+00\n"));
                }
                let copied = async {
                    let sink = client
                        .copy_in("COPY tally.sessions (session_id, user_id, kind, started_at) FROM STDIN WITH (FORMAT csv)")
                        .await?;
                    futures_util::pin_mut!(sink);
                    futures_util::SinkExt::send(&mut sink, bytes::Bytes::from(data)).await?;
                    sink.finish().await
                }
                .await;
                if copied.is_ok() {
                    acked.lock().unwrap().inserted.extend(ids.iter().copied());
                    mine.extend(ids);
                }
                copied.map(|_| ())
            }
        };
        if let Err(e) = result {
            // The crash: the connection is gone; anything unacknowledged is unknown.
            if e.is_closed()
                || e.as_db_error().is_none()
                || matches!(sqlstate(&e), Some(c) if c.starts_with("57") || c.starts_with("08"))
            {
                return;
            }
            if !matches!(sqlstate(&e), Some("40P01" | "40001")) {
                panic!("unexpected error before the crash: {e:?}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_killed_mid_load_recovers_consistent_with_every_acknowledged_write() {
    let cluster = Cluster::fresh("e2e-crash-cluster", 55441);
    setup_schema(&cluster.url()).await;
    for round in 0..rounds() {
        let acked = Arc::new(Mutex::new(Acknowledged::default()));
        let writers: Vec<_> = (0..8)
            .map(|i| {
                tokio::spawn(crash_writer(
                    cluster.url(),
                    (round * 100 + i) as u64,
                    acked.clone(),
                ))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        cluster.crash();
        for w in writers {
            w.await.expect("writer task");
        }
        cluster.run("start");
        let client = connect(&cluster.url()).await;
        let acked = std::mem::take(&mut *acked.lock().unwrap());
        assert!(
            acked.inserted.len() > 50,
            "the load ran before the crash ({} acknowledged)",
            acked.inserted.len()
        );
        let kept: Vec<Uuid> = acked
            .inserted
            .iter()
            .filter(|id| !acked.deleted.contains(id) && !acked.in_doubt.contains(id))
            .copied()
            .collect();
        let deleted: Vec<Uuid> = acked.deleted.iter().copied().collect();
        let present: i64 = client
            .query_one(
                "SELECT count(*) FROM tally.sessions WHERE session_id = ANY($1)",
                &[&kept],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(
            present,
            kept.len() as i64,
            "every acknowledged insert survives the crash"
        );
        let resurrected: i64 = client
            .query_one(
                "SELECT count(*) FROM tally.sessions WHERE session_id = ANY($1)",
                &[&deleted],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(
            resurrected, 0,
            "every acknowledged delete survives the crash"
        );
        assert_consistent(&client).await;
        println!(
            "round {round}: {} inserts and {} deletes acknowledged before the crash, {} deletes in doubt",
            acked.inserted.len(),
            acked.deleted.len(),
            acked.in_doubt.len()
        );
    }
}

struct ApiProcess(Child);

impl ApiProcess {
    fn start(database_url: &str, port: u16) -> ApiProcess {
        let binary = repo().join("target/debug/tally-api");
        assert!(
            binary.exists(),
            "build the API first: cargo build -p tally-api"
        );
        let child = Command::new(binary)
            .arg("serve")
            .env("DATABASE_URL", database_url)
            .env("TALLY_BIND", format!("127.0.0.1:{port}"))
            .env("TALLY_JWT_SECRET", API_SECRET)
            .env("RUST_LOG", "error")
            .spawn()
            .expect("start tally-api");
        ApiProcess(child)
    }

    fn kill(&mut self) {
        self.0.kill().expect("SIGKILL tally-api");
        let _ = self.0.wait();
    }
}

impl Drop for ApiProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const API_SECRET: &str = "fault-test-secret-that-is-long-enough-1234";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn api_killed_mid_load_loses_and_doubles_nothing_when_clients_retry() {
    let cluster = Cluster::fresh("e2e-api-kill-cluster", 55442);
    setup_schema(&cluster.url()).await;
    let port = 18121;
    let api = Arc::new(Mutex::new(ApiProcess::start(&cluster.url(), port)));
    let token =
        tally_api::Keys::new(API_SECRET.as_bytes()).mint("loadgen", tally_api::Role::Service, 3600);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let mut ready = false;
    for _ in 0..100 {
        if http
            .get(format!("{base}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "the API on port {port} was not ready within 10 s");

    let per_client = 250;
    let clients: Vec<_> = (0..8)
        .map(|c| {
            let (http, base, token) = (http.clone(), base.clone(), token.clone());
            tokio::spawn(async move {
                let mut ids = Vec::new();
                let mut retries = 0;
                for i in 0..per_client {
                    let id = Uuid::new_v4();
                    let body = serde_json::json!({
                        "session_id": id, "user_id": format!("user{}", (c + i) % 20),
                        "kind": if i % 5 == 0 { "assessment" } else { "practice" },
                        "started_at": "2026-03-15T10:00:00Z", "duration_seconds": 60
                    });
                    // The same body again until the API answers: 201 the first time, 200 if
                    // an earlier attempt committed without us seeing the answer. Bounded:
                    // 600 attempts 50 ms apart outlast every restart of the API here.
                    let mut attempts = 0;
                    loop {
                        attempts += 1;
                        assert!(
                            attempts <= 600,
                            "session {id} got no answer from the API in 600 attempts"
                        );
                        let sent = http
                            .post(format!("{base}/v1/sessions"))
                            .bearer_auth(&token)
                            .json(&body)
                            .send()
                            .await;
                        match sent {
                            Ok(r) if r.status() == 201 || r.status() == 200 => break,
                            Ok(r) if r.status().is_server_error() => {}
                            Ok(r) => panic!(
                                "unexpected status {}: {}",
                                r.status(),
                                r.text().await.unwrap_or_default()
                            ),
                            Err(_) => {}
                        }
                        retries += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    ids.push(id);
                }
                (ids, retries)
            })
        })
        .collect();

    for _ in 0..rounds().max(2) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        api.lock().unwrap().kill();
        tokio::time::sleep(Duration::from_millis(200)).await;
        *api.lock().unwrap() = ApiProcess::start(&cluster.url(), port);
    }
    let mut all = Vec::new();
    let mut retries = 0;
    for c in clients {
        let (ids, r) = c.await.expect("client");
        all.extend(ids);
        retries += r;
    }
    assert!(retries > 0, "the kills interrupted the load");
    let client = connect(&cluster.url()).await;
    let stored: i64 = client
        .query_one(
            "SELECT count(DISTINCT session_id) FROM tally.sessions WHERE session_id = ANY($1)",
            &[&all],
        )
        .await
        .unwrap()
        .get(0);
    let total: i64 = client
        .query_one("SELECT count(*) FROM tally.sessions", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        (stored, total),
        (all.len() as i64, all.len() as i64),
        "each session exactly once"
    );
    let used: i64 = client
        .query_one(
            "SELECT sum(practice_sessions_used + assessments_used)::bigint FROM tally.usage",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(used, all.len() as i64, "each session counted exactly once");
    assert_consistent(&client).await;
    println!(
        "{} sessions through {retries} retries across API kills",
        all.len()
    );
}
