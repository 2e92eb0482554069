//! The library's `Host`: one call starts a whole host (store, recovery,
//! journal, scheduler), and what it accepted survives its shutdown.

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use stepbox::config::HostConfig;
use stepbox::host::{Host, LiveStatus, open_reader};
use stepbox::scheduler::RunStatus;
use stepbox::store::{RunFilter, RunState};
use stepbox::workflow::Workflow;

use super::TestSandbox;

fn config(db: &Path) -> HostConfig {
    let mut config = HostConfig::default();
    config.journal.db = db.to_owned();
    config.journal.shutdown_grace = Duration::ZERO;
    config
}

fn sleepy(dir: &Path, ms: u64) -> Workflow {
    let path = dir.join("sleepy.yaml");
    let yaml = format!(
        "name: sleepy\nsteps:\n  - id: nap\n    component: {}\n    input: {{mode: sleep, ms: {ms}}}\n    timeout: 60s\n",
        stepbox_tests::guest("hostile").display()
    );
    std::fs::write(&path, yaml).unwrap();
    Workflow::from_file(&path).unwrap()
}

async fn until_running(host: &Host, id: u64) {
    for _ in 0..500 {
        if host.live(id).is_some_and(|r| r.status() == LiveStatus::Running) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("run {id} never started");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_started_in_one_call_records_its_runs_and_forgets_them_once_ended() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("host.db");
    let sandbox = TestSandbox::new();
    let host = Host::start(sandbox.sandbox.clone(), config(&db)).await.unwrap();
    let wf = host.scheduler().prepare(sleepy(dir.path(), 1)).unwrap();
    let runs = host
        .submit_all([(wf.clone(), json!({})), (wf, json!({}))])
        .unwrap();
    let ids: Vec<u64> = runs.iter().map(|r| r.id()).collect();
    assert_ne!(ids[0], ids[1]);
    for run in runs {
        assert_eq!(run.wait().await.status, RunStatus::Succeeded);
    }
    assert!(
        ids.iter().all(|&id| host.live(id).is_none()),
        "ended runs stay live"
    );
    host.close().await.unwrap();
    let reader = open_reader(&config(&db).journal).unwrap();
    let listed = reader.runs(&RunFilter::default()).unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|r| r.status == RunState::Succeeded));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_run_is_cancelled_by_its_id() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("host.db");
    let sandbox = TestSandbox::new();
    let host = Host::start(sandbox.sandbox.clone(), config(&db)).await.unwrap();
    let wf = host.scheduler().prepare(sleepy(dir.path(), 30_000)).unwrap();
    let run = host.submit(&wf, json!({})).unwrap();
    until_running(&host, run.id()).await;
    assert_eq!(host.live_runs(), vec![(run.id(), LiveStatus::Running)]);
    assert!(host.cancel(run.id()));
    assert!(!host.cancel(run.id() + 1000), "cancelled a run it does not have");
    let report = tokio::time::timeout(Duration::from_secs(10), run.wait())
        .await
        .unwrap();
    assert_eq!(report.status, RunStatus::Cancelled);
    host.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_host_accepted_before_its_shutdown_resumes_on_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("host.db");
    let sandbox = TestSandbox::new();
    let first = Host::start(sandbox.sandbox.clone(), config(&db)).await.unwrap();
    let wf = first.scheduler().prepare(sleepy(dir.path(), 1_000)).unwrap();
    let run = first.submit(&wf, json!({})).unwrap();
    let id = run.id();
    until_running(&first, id).await;
    first.shutdown(None).await.unwrap();
    assert!(first.is_stopping());
    assert_eq!(run.wait().await.status, RunStatus::Interrupted);
    first.close().await.unwrap();
    drop(first);

    let second = Host::start(sandbox.sandbox.clone(), config(&db)).await.unwrap();
    assert_eq!(second.incomplete(), 1);
    let resumed = second.resume_incomplete().unwrap();
    assert_eq!(resumed.iter().map(|r| r.id()).collect::<Vec<_>>(), [id]);
    let report = resumed.into_iter().next().unwrap().wait().await;
    assert_eq!(report.status, RunStatus::Succeeded, "{:?}", report.error);
    // New runs get ids the first host never handed out.
    let wf = second.scheduler().prepare(sleepy(dir.path(), 1)).unwrap();
    let next = second.submit(&wf, json!({})).unwrap();
    assert!(next.id() > id);
    next.wait().await;
    second.close().await.unwrap();
}
