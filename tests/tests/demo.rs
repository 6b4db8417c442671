//! `make run`'s script (scripts/demo.sh) on a demo database an earlier release created:
//! it updates the extension in place (the session recorded before stays), runs the API
//! as a role of its own that is not a superuser, keeps the token secret private, and
//! its printed token works. Ctrl-C stops what it started, even when the demo was started
//! with SIGINT ignored, as every background job of a non-interactive shell is (`make run
//! &`, nohup, CI): the test starts it that way on purpose, whatever it inherited itself.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const PORT: u16 = 55437;
const BIND: &str = "127.0.0.1:18437";
const PAGE_BIND: &str = "127.0.0.1:18438";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

async fn sh(args: &[&str]) {
    let status = Command::new(args[0])
        .args(&args[1..])
        .current_dir(repo())
        .status()
        .await
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(status.success(), "{args:?} failed");
}

/// The cluster and, once started, the demo's process group: stopped even when an
/// assertion fails, so that a failed run leaves nothing on the test's port.
struct Running {
    pid: Option<u32>,
    cluster: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(pid) = self.pid {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .status();
        }
        let _ = std::process::Command::new("scripts/cluster.sh")
            .args(["stop", &self.cluster])
            .current_dir(repo())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn make_run_updates_an_old_demo_database_and_runs_the_api_unprivileged() {
    let cluster = repo().join("target/demo-test-cluster");
    let cluster_arg = cluster.to_str().unwrap();
    sh(&["scripts/cluster.sh", "stop", cluster_arg]).await;
    let _ = std::fs::remove_dir_all(&cluster);
    sh(&[
        "scripts/cluster.sh",
        "start",
        cluster_arg,
        &PORT.to_string(),
    ])
    .await;
    let mut running = Running {
        pid: None,
        cluster: cluster_arg.to_string(),
    };

    // The demo database as a 0.1.0 `make run` left it, with one session recorded.
    // Written as a restore writes, past tally's triggers and with its counter: this
    // library serves only its own release and the one before (served.rs), so the
    // demo must update the database before anything is written through tally.
    let admin = tally_e2e::connect(&format!("postgres://postgres@127.0.0.1:{PORT}/postgres")).await;
    admin.batch_execute("CREATE DATABASE tally").await.unwrap();
    let old = tally_e2e::connect(&format!("postgres://postgres@127.0.0.1:{PORT}/tally")).await;
    old.batch_execute(
        "CREATE EXTENSION tally VERSION '0.1.0';
         SET session_replication_role = replica;
         INSERT INTO tally.plans (plan_id, display_name, practice_sessions_limit, assessments_limit)
         VALUES ('fluency_builder', 'Fluency Builder', 30, 2);
         INSERT INTO tally.subscriptions (user_id, plan_id) VALUES ('kamile', 'fluency_builder');
         INSERT INTO tally.sessions (user_id, kind, completed_at) VALUES ('kamile', 'assessment', now());
         INSERT INTO tally.usage (user_id, period_start, period_end, assessments_used)
         SELECT s.user_id, tally.period_start_for(s.period_anchor, p.period, now()),
                tally.period_end_for(s.period_anchor, p.period, now()), 1
           FROM tally.subscriptions s JOIN tally.plans p USING (plan_id);
         RESET session_replication_role;",
    )
    .await
    .unwrap();

    let mut demo = Command::new("scripts/demo.sh");
    demo.current_dir(repo())
        .env("RUN_PORT", PORT.to_string())
        .env("RUN_CLUSTER", cluster_arg)
        .env("TALLY_BIND", BIND)
        .env("PAGE_BIND", PAGE_BIND)
        .env_remove("TALLY_CORS_ORIGINS")
        .env("TALLY_API_BIN", repo().join("target/debug/tally-api"))
        .env_remove("DATABASE_URL")
        .env_remove("TALLY_JWT_SECRET")
        .env_remove("TALLY_DEMO_SIGNALS")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0);
    // SAFETY: runs in the child between fork and exec, where only async-signal-safe
    // calls are allowed; signal(2) is one, and nothing here allocates or locks.
    unsafe {
        demo.pre_exec(|| {
            if libc::signal(libc::SIGINT, libc::SIG_IGN) == libc::SIG_ERR {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut demo = demo.spawn().expect("start scripts/demo.sh");
    running.pid = Some(demo.id().expect("demo pid"));
    let mut lines = BufReader::new(demo.stdout.take().unwrap()).lines();
    let mut token = None;
    let mut page_link = None;
    let printed = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(t) = line.trim().strip_prefix("export TOKEN=") {
                token = Some(t.to_string());
            }
            if line
                .trim()
                .starts_with(&format!("http://{PAGE_BIND}/#api="))
            {
                page_link = Some(line.trim().to_string());
            }
            if line.contains("Ctrl-C stops everything") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(printed, Ok(true), "the demo did not start");
    let token = token.expect("the demo prints a token");
    assert!(
        page_link.is_some_and(|link| link.ends_with(&format!("token={token}"))),
        "the demo prints a link to the usage page with the token"
    );

    let extension: String = old
        .query_one(
            "SELECT extversion FROM pg_extension WHERE extname = 'tally'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_ne!(
        extension, "0.1.0",
        "the demo database was not updated in place"
    );

    let mode = std::fs::metadata(cluster.join("jwt-secret"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o077,
        0,
        "the token secret is readable by others: {mode:o}"
    );

    let http = reqwest::Client::new();
    let response = http
        .post(format!("http://{BIND}/v1/sessions"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"kind": "assessment"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::CREATED);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        body["usage"]["assessments"]["used"], 2,
        "the session recorded before the update still counts"
    );

    // The usage page, from its own origin, which the API allows.
    let page = http
        .get(format!("http://{PAGE_BIND}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), reqwest::StatusCode::OK);
    assert!(page
        .text()
        .await
        .unwrap()
        .contains("Your practice this month"));
    let preflight = http
        .request(
            reqwest::Method::OPTIONS,
            format!("http://{BIND}/v1/sessions"),
        )
        .header("Origin", format!("http://{PAGE_BIND}"))
        .header("Access-Control-Request-Method", "POST")
        .header(
            "Access-Control-Request-Headers",
            "authorization,content-type",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        preflight
            .headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap().to_string()),
        Some(format!("http://{PAGE_BIND}"))
    );

    let roles = old
        .query(
            "SELECT DISTINCT a.usename, r.rolsuper FROM pg_stat_activity a JOIN pg_roles r ON r.rolname = a.usename
              WHERE a.application_name = 'tally-api'",
            &[],
        )
        .await
        .unwrap();
    assert!(!roles.is_empty(), "no connection of the API found");
    for role in &roles {
        let (name, superuser): (String, bool) = (role.get(0), role.get(1));
        assert!(!superuser, "the API connects as superuser {name}");
    }
    drop(old);
    drop(admin);

    let pid = demo.id().expect("demo pid") as i32;
    sh(&["kill", "-INT", &pid.to_string()]).await;
    let exited = tokio::time::timeout(Duration::from_secs(60), demo.wait()).await;
    if exited.is_err() {
        let left = std::process::Command::new("sh")
            .args([
                "-c",
                &format!("ps -o pid,stat,args --no-headers -p \"$(pgrep -d, -g {pid})\""),
            ])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        panic!("SIGINT did not stop the demo within 60 s; its process group still runs:\n{left}");
    }
    for address in [BIND, PAGE_BIND] {
        assert!(
            std::net::TcpStream::connect(address).is_err(),
            "{address} still listens after Ctrl-C"
        );
    }
    sh(&["scripts/cluster.sh", "stop", cluster_arg]).await;
}
