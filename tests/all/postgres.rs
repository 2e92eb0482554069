//! The CLI on a PostgreSQL journal: `--db postgres://…` runs, records and
//! lists runs as it does on SQLite; an unreachable server is one clear
//! line with exit code 4 and no password.

use std::process::{Command, Output};

use super::store_conformance::postgres::TestDatabase;

fn stepbox(db: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_stepbox"))
        .args(args)
        .arg("--db")
        .arg(db)
        .arg("--cache-dir")
        .arg(super::cache_dir())
        .env_remove("RUST_LOG")
        .env_remove("STEPBOX_SERVER")
        .output()
        .unwrap()
}

#[test]
fn runs_are_journaled_in_postgres_and_read_back_by_every_command() {
    let db = TestDatabase::new();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("greet.yaml");
    std::fs::write(
        &file,
        format!(
            "name: greet\nsteps:\n  - id: hello\n    component: {}\n",
            stepbox_tests::guest("hello").display()
        ),
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let ran = stepbox(
        db.url(),
        &["run", file, "--input", r#"{"name":"pg"}"#, "--repeat", "3"],
    );
    assert_eq!(ran.status.code(), Some(0), "{ran:?}");
    assert_eq!(
        String::from_utf8_lossy(&ran.stdout).matches("Hello, pg!").count(),
        3
    );

    let runs = stepbox(db.url(), &["runs", "--json"]);
    let listed: Vec<serde_json::Value> = String::from_utf8_lossy(&runs.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(listed.len(), 3, "{runs:?}");
    assert!(listed.iter().all(|r| r["status"] == "succeeded"), "{listed:?}");
    let ids: Vec<u64> = listed.iter().map(|r| r["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, [3, 2, 1], "ids from the database's counter, newest first");

    let show = stepbox(db.url(), &["show", "2"]);
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(
        text.contains("status:   succeeded") && text.contains("hello"),
        "{text}"
    );
    let metrics = stepbox(db.url(), &["metrics"]);
    assert!(
        String::from_utf8_lossy(&metrics.stdout).contains("stepbox_step_runs_total"),
        "{metrics:?}"
    );
    let gc = stepbox(db.url(), &["gc", "--older-than", "0s"]);
    assert_eq!(gc.status.code(), Some(0), "{gc:?}");
    let collected = stepbox(db.url(), &["show", "2"]);
    assert!(
        String::from_utf8_lossy(&collected.stdout).contains("(removed by retention)"),
        "{collected:?}"
    );
}

#[test]
fn an_unreachable_postgres_is_one_line_exit_4_without_the_password() {
    let out = stepbox("postgres://app:hunter2@127.0.0.1:1/stepbox", &["runs"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("postgres://app:***@127.0.0.1:1/stepbox"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}

#[test]
fn a_server_on_postgres_keeps_an_idempotent_run_across_a_restart() {
    use super::serve::{QUICK, Served, greet};

    let db = TestDatabase::new();
    let dir = tempfile::tempdir().unwrap();
    // Uploads in the test's directory, not the default one under the
    // working directory.
    let config = format!(
        "{QUICK}[server]\ndata = \"{}\"\n",
        dir.path().join("uploads").display()
    );
    let served = Served::start_on(dir.path(), &config, None, db.url());
    let digest = served.upload("hello", None);
    assert_eq!(
        served
            .send("PUT", "/v1/workflows/greet", None, greet(&digest).as_bytes())
            .status,
        201
    );
    let submit = |served: &Served| {
        served.request(
            "POST",
            "/v1/workflows/greet/runs?wait=30s",
            &[("content-type", "application/json"), ("idempotency-key", "k-1")],
            br#"{"name":"pg"}"#,
        )
    };
    let first = submit(&served).json();
    assert_eq!(first["output"]["message"], "Hello, pg!", "{first}");
    assert_eq!(served.terminate(), Some(0));
    let served = Served::start_on(dir.path(), &config, None, db.url());
    let again = submit(&served);
    assert_eq!(
        (again.status, again.json()["id"].clone()),
        (200, first["id"].clone())
    );
    let history = served.until_ended(first["id"].as_u64().unwrap(), None);
    assert_eq!(history["attempts"].as_array().unwrap().len(), 1);
    let metrics = served.get("/metrics", None).text();
    assert!(metrics.contains("stepbox_db_pool_max_connections 8"), "{metrics}");
    super::observability::promtool_accepts(&metrics);
}

#[test]
fn a_killed_hosts_runs_are_taken_over_and_no_completed_step_runs_again() {
    use std::time::{Duration, Instant};

    use super::serve::Served;
    let db = TestDatabase::new();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let config = |dir: &tempfile::TempDir| {
        format!(
            "[journal]\nshutdown_grace = \"0s\"\nlease = \"1s\"\n[server]\ndata = \"{}\"\n",
            dir.path().join("uploads").display()
        )
    };
    let a = Served::start_on(dir_a.path(), &config(&dir_a), None, db.url());
    let b = Served::start_on(dir_b.path(), &config(&dir_b), None, db.url());
    // Both are seen alive by their heartbeats, before they own any run.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let listed = stepbox(db.url(), &["hosts", "--json"]);
        let alive = String::from_utf8_lossy(&listed.stdout)
            .lines()
            .filter(|l| {
                serde_json::from_str::<serde_json::Value>(l).is_ok_and(|h| h["heartbeat_at"].is_i64())
            })
            .count();
        if alive == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "not two live hosts: {listed:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let digest = a.upload("hostile", None);
    let workflow = format!(
        "name: chain\nsteps:\n  - id: one\n    component: {digest}\n    input: {{mode: sleep, ms: 300}}\n  \
         - id: two\n    component: {digest}\n    needs: [one]\n    input: {{mode: sleep, ms: 300}}\n  \
         - id: three\n    component: {digest}\n    needs: [two]\n    input: {{mode: sleep, ms: 300}}\n"
    );
    assert_eq!(
        a.send("PUT", "/v1/workflows/chain", None, workflow.as_bytes())
            .status,
        201
    );
    let inputs = serde_json::json!({"inputs": vec![serde_json::json!({}); 6]});
    let accepted = a.send(
        "POST",
        "/v1/workflows/chain/runs",
        None,
        inputs.to_string().as_bytes(),
    );
    assert_eq!(accepted.status, 201, "{accepted:?}");
    let ids: Vec<u64> = accepted.json()["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_u64().unwrap())
        .collect();
    // Once a first step completed on A, kill it mid-work.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let run = b.get(&format!("/v1/runs/{}", ids[0]), None).json();
        let done = run["attempts"]
            .as_array()
            .is_some_and(|a| a.iter().any(|a| a["status"] == "completed"));
        if done {
            break;
        }
        assert!(Instant::now() < deadline, "A never completed a step: {run}");
        std::thread::sleep(Duration::from_millis(20));
    }
    a.kill();
    let killed = Instant::now();
    for &id in &ids {
        let run = b.until_ended(id, None);
        assert_eq!(run["status"], "succeeded", "{run}");
        let attempts = run["attempts"].as_array().unwrap();
        for step in ["one", "two", "three"] {
            let completed = attempts
                .iter()
                .filter(|a| a["step"] == step && a["status"] == "completed")
                .count();
            assert_eq!(
                completed, 1,
                "run {id}: step {step} completed {completed} times: {run}"
            );
        }
    }
    let took = killed.elapsed();
    eprintln!("B finished A's 6 runs {took:?} after A was killed (lease 1s)");
    assert!(took < Duration::from_secs(20), "took {took:?}");
}

#[test]
fn a_host_stopped_by_sigterm_hands_its_runs_over_at_once_not_after_its_lease() {
    use std::time::{Duration, Instant};

    use super::serve::{Served, sleepy};
    let db = TestDatabase::new();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // A lease far longer than the hand-off may take.
    let config = |dir: &tempfile::TempDir| {
        format!(
            "[journal]\nshutdown_grace = \"0s\"\nlease = \"30s\"\n[server]\ndata = \"{}\"\n",
            dir.path().join("uploads").display()
        )
    };
    let a = Served::start_on(dir_a.path(), &config(&dir_a), None, db.url());
    let b = Served::start_on(dir_b.path(), &config(&dir_b), None, db.url());
    let digest = a.upload("hostile", None);
    a.send(
        "PUT",
        "/v1/workflows/sleepy",
        None,
        sleepy(&digest, 1000).as_bytes(),
    );
    let id = a.send("POST", "/v1/workflows/sleepy/runs", None, b"{}").json()["id"]
        .as_u64()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while a.get(&format!("/v1/runs/{id}"), None).json()["live"] != "running" {
        assert!(Instant::now() < deadline, "never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let stopped = Instant::now();
    assert_eq!(a.terminate(), Some(0));
    let run = b.until_ended(id, None);
    let took = stopped.elapsed();
    assert_eq!(run["status"], "succeeded", "{run}");
    assert!(took < Duration::from_secs(8), "waited for the lease: {took:?}");
    let attempts = run["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "interrupted on A, run again on B: {run}");
}
