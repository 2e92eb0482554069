//! Durability: the journal, crash recovery, graceful shutdown, retention and
//! what the CLI says when the journal cannot be used.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use stepbox::scheduler::{RunStatus, Scheduler, SchedulerConfig};
use stepbox::store::{
    AttemptRecord, AttemptStatus, Durability, Event, GcStats, Journal, JournalConfig, Millis, RecoveredRun,
    RunFilter, RunHistory, RunId, RunState, SqliteReader, SqliteStore, StoreError, StoreReader, StoreWriter,
    WriteReport, now_micros,
};
use stepbox::workflow::Workflow;

use super::TestSandbox;

/// A directory with workflow files and a journal, and the CLI pointed at them.
struct Place {
    dir: tempfile::TempDir,
}

impl Place {
    fn new() -> Place {
        Place {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn db(&self) -> PathBuf {
        self.dir.path().join("journal.db")
    }

    /// Writes a workflow, with `hostile`, `split`, `wordcount` and `merge`
    /// standing for the test guests.
    fn workflow(&self, name: &str, yaml: &str) -> String {
        let mut yaml = yaml.to_owned();
        for guest in ["hostile", "split", "wordcount", "merge"] {
            let path = stepbox_tests::guest(guest);
            yaml = yaml.replace(
                &format!("component: {guest}\n"),
                &format!("component: {}\n", path.display()),
            );
        }
        let file = self.dir.path().join(name);
        std::fs::write(&file, yaml).unwrap();
        file.display().to_string()
    }

    fn config(&self, toml: &str) -> String {
        let file = self.dir.path().join("stepbox.toml");
        std::fs::write(&file, toml).unwrap();
        file.display().to_string()
    }

    fn command(&self, args: &[&str]) -> Command {
        self.command_on(&self.db(), args)
    }

    fn command_on(&self, db: &Path, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_stepbox"));
        command
            .args(args)
            .arg("--cache-dir")
            .arg(super::cache_dir())
            .arg("--db")
            .arg(db)
            .env_remove("RUST_LOG");
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    fn spawn(&self, args: &[&str]) -> Child {
        self.command(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    fn store(&self) -> SqliteReader {
        SqliteReader::open(&self.db()).unwrap()
    }

    fn histories(&self) -> Vec<RunHistory> {
        let store = self.store();
        let runs = store.runs(&RunFilter::default()).unwrap();
        runs.iter()
            .map(|r| store.history(r.id).unwrap().unwrap())
            .collect()
    }
}

/// A scheduler journaling to `store` with the default journal settings.
fn journaled(sb: &TestSandbox, store: impl StoreWriter + 'static) -> Scheduler {
    let (journal, _) = Journal::start(Box::new(store), JournalConfig::default()).unwrap();
    Scheduler::with_journal(sb.sandbox.clone(), SchedulerConfig::default(), journal).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Waits for `child` at most `limit`; kills it and fails if it takes longer.
fn wait_within(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("the process did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Every unit of work (step, item) completed at most once, and no attempt
/// was made after the completed one.
fn assert_no_completed_unit_ran_again(history: &RunHistory) {
    let mut completed: HashMap<(String, Option<u32>), u32> = HashMap::new();
    for a in &history.attempts {
        if a.status == AttemptStatus::Completed {
            let unit = (a.step.clone(), a.item);
            assert!(
                completed.insert(unit.clone(), a.attempt).is_none(),
                "run {}: {unit:?} completed twice",
                history.summary.id
            );
        }
    }
    for a in &history.attempts {
        if let Some(&done) = completed.get(&(a.step.clone(), a.item)) {
            assert!(
                a.attempt <= done,
                "run {}: {}/{:?} ran again (attempt {}) after completing in attempt {done}",
                history.summary.id,
                a.step,
                a.item,
                a.attempt
            );
        }
    }
}

const CRASHY: &str = "\
name: crashy
steps:
  - id: split
    component: split
    input: {text: \"${input.text}\", lines_per_chunk: 1}
  - id: nap
    component: hostile
    needs: [split]
    input: {mode: sleep, ms: 30}
  - id: count
    component: wordcount
    needs: [split, nap]
    for_each: ${steps.split.chunks}
    max_parallel: 2
    input: {text: \"${item}\", top: 100}
  - id: merge
    component: merge
    needs: [count]
    input: {counts: \"${steps.count}\", top: 3}
";

const TEXT: &str = r#"{"text":"the cat sat\non the mat\nthe dog\nsat on the cat\nand the end\nof it all"}"#;

#[test]
fn a_killed_host_loses_no_accepted_run_and_reruns_no_completed_step() {
    let first = Place::new();
    let file = first.workflow("crashy.yaml", CRASHY);
    let expected = first.run(&["run", &file, "--input", TEXT, "--durability", "memory"]);
    assert_eq!(expected.status.code(), Some(0), "{}", stderr(&expected));
    let expected: Value = serde_json::from_slice(&expected.stdout).unwrap();

    const RUNS: usize = 12;
    let repeat = RUNS.to_string();
    let args = |file: &str| {
        [
            "run",
            file,
            "--input",
            TEXT,
            "--repeat",
            &repeat,
            "--parallel",
            "3",
        ]
        .map(str::to_owned)
    };
    // Kills land anywhere from start-up to the end of an uncrashed run.
    let started = Instant::now();
    let whole = first.run(&args(&file).each_ref().map(String::as_str));
    assert_eq!(whole.status.code(), Some(0), "{}", stderr(&whole));
    let span = started.elapsed().as_millis() as u64;
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    let mut killed_mid_run = 0;
    // At least 12 trials, and more (up to 40) until 3 of them killed the
    // host mid-run: on a loaded machine a kill more often lands in start-up.
    let mut trials = 0;
    for trial in 0..40 {
        if trial >= 12 && killed_mid_run >= 3 {
            break;
        }
        trials += 1;
        // A fresh journal each trial.
        let place = Place::new();
        let file = place.workflow("crashy.yaml", CRASHY);
        let mut child = place.spawn(&args(&file).each_ref().map(String::as_str));
        std::thread::sleep(Duration::from_millis(rng.u64(span / 10..span)));
        child.kill().unwrap();
        let _ = child.wait();
        if trial % 3 == 2 {
            // A crash while resuming, too.
            let mut again = place.spawn(&["resume"]);
            std::thread::sleep(Duration::from_millis(rng.u64(span / 10..span / 2)));
            again.kill().unwrap();
            let _ = again.wait();
        }
        // Killed before the journal existed (or before its tables were
        // laid out): nothing was accepted.
        let laid_out = place.db().exists()
            && !matches!(
                SqliteReader::open(&place.db()),
                Err(StoreError::Other { detail, .. }) if detail.starts_with("no journal here yet")
            );
        if !laid_out {
            continue;
        }
        let before = place.store().runs(&RunFilter::default()).unwrap();
        if before.iter().any(|r| r.status.is_incomplete()) {
            killed_mid_run += 1;
        }
        let resumed = place.run(&["resume"]);
        assert_eq!(
            resumed.status.code(),
            Some(0),
            "trial {trial}: {}",
            stderr(&resumed)
        );

        let histories = place.histories();
        assert!(
            histories.is_empty() || histories.len() == RUNS,
            "trial {trial}: runs are accepted all together or not at all, found {}",
            histories.len()
        );
        for history in &histories {
            assert_eq!(
                history.summary.status,
                RunState::Succeeded,
                "trial {trial}: {history:?}"
            );
            let output: Value = serde_json::from_slice(history.output.as_deref().unwrap()).unwrap();
            assert_eq!(output, expected, "trial {trial}, run {}", history.summary.id);
            assert_no_completed_unit_ran_again(history);
        }
        place.store().check_integrity().unwrap();
    }
    eprintln!("{killed_mid_run} of {trials} trials killed the host mid-run (span {span} ms)");
    assert!(
        killed_mid_run >= 3,
        "only {killed_mid_run} trials killed the host mid-run"
    );
}

const SLOW: &str = "\
name: slow
steps:
  - id: a
    component: hostile
    input: {mode: sleep, ms: SLEEP}
  - id: b
    component: hostile
    needs: [a]
    input: {mode: sleep, ms: SLEEP}
  - id: c
    component: hostile
    needs: [b]
    input: {mode: sleep, ms: SLEEP}
";

/// Polls the journal until every run in it (all accepted together) has an
/// attempt at `step` started: on a loaded machine one run may lag another.
fn wait_for_attempt(place: &Place, step: &str) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if place.db().exists()
            && let Ok(store) = SqliteReader::open(&place.db())
            && let Ok(runs) = store.runs(&RunFilter::default())
            && !runs.is_empty()
            && runs.iter().all(|r| {
                store
                    .history(r.id)
                    .ok()
                    .flatten()
                    .is_some_and(|h| h.attempts.iter().any(|a| a.step == step))
            })
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("no attempt at `{step}` started");
}

#[test]
fn sigterm_lets_running_steps_finish_starts_nothing_new_and_exits_zero() {
    let place = Place::new();
    let file = place.workflow("slow.yaml", &SLOW.replace("SLEEP", "600"));
    let config = place.config("[journal]\nshutdown_grace = \"10s\"\n");
    let mut child = place.spawn(&["run", &file, "--repeat", "2", "--config", &config]);
    wait_for_attempt(&place, "b");
    signal(&child, "TERM");
    let status = wait_within(&mut child, Duration::from_secs(10));
    assert_eq!(status.code(), Some(0));

    for history in place.histories() {
        assert_eq!(history.summary.status, RunState::Interrupted);
        let steps: Vec<(&str, AttemptStatus)> = history
            .attempts
            .iter()
            .map(|a| (a.step.as_str(), a.status))
            .collect();
        assert_eq!(
            steps,
            [("a", AttemptStatus::Completed), ("b", AttemptStatus::Completed)],
            "b finished within the grace period and c never started"
        );
    }
    let out = place.run(&["resume", "--config", &config]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    for history in place.histories() {
        assert_eq!(history.summary.status, RunState::Succeeded);
        let steps: Vec<(&str, u32)> = history
            .attempts
            .iter()
            .map(|a| (a.step.as_str(), a.attempt))
            .collect();
        assert_eq!(steps, [("a", 1), ("b", 1), ("c", 1)], "only c ran on resume");
    }
}

#[test]
fn after_the_grace_period_running_steps_are_interrupted_and_run_again_on_resume() {
    let place = Place::new();
    let file = place.workflow("slow.yaml", &SLOW.replace("SLEEP", "3000"));
    let config = place.config("[journal]\nshutdown_grace = \"100ms\"\n");
    let mut child = place.spawn(&["run", &file, "--config", &config]);
    wait_for_attempt(&place, "a");
    let signalled = Instant::now();
    signal(&child, "INT");
    let status = wait_within(&mut child, Duration::from_secs(10));
    assert_eq!(status.code(), Some(0));
    assert!(
        signalled.elapsed() < Duration::from_secs(2),
        "took {:?}",
        signalled.elapsed()
    );
    let history = &place.histories()[0];
    assert_eq!(history.summary.status, RunState::Interrupted);
    assert_eq!(history.attempts.len(), 1);
    assert_eq!(history.attempts[0].status, AttemptStatus::Interrupted);

    // Shorter sleeps for the resumed run: same code, new config is not how
    // it works, so resume the original (3 s steps) and only check the attempts.
    let out = place.run(&["resume", "--config", &config]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let history = &place.histories()[0];
    assert_eq!(history.summary.status, RunState::Succeeded);
    let a: Vec<(u32, AttemptStatus)> = history
        .attempts
        .iter()
        .filter(|a| a.step == "a")
        .map(|a| (a.attempt, a.status))
        .collect();
    assert_eq!(
        a,
        [(1, AttemptStatus::Interrupted), (2, AttemptStatus::Completed)]
    );
}

#[test]
fn a_second_signal_exits_at_once_and_the_journal_stays_whole() {
    let place = Place::new();
    let file = place.workflow("slow.yaml", &SLOW.replace("SLEEP", "2000"));
    let config = place.config("[journal]\nshutdown_grace = \"60s\"\n");
    let mut child = place.spawn(&["run", &file, "--repeat", "3", "--config", &config]);
    wait_for_attempt(&place, "a");
    signal(&child, "TERM");
    std::thread::sleep(Duration::from_millis(200));
    let signalled = Instant::now();
    signal(&child, "TERM");
    let status = wait_within(&mut child, Duration::from_secs(10));
    assert_eq!(status.code(), Some(130));
    assert!(
        signalled.elapsed() < Duration::from_secs(1),
        "took {:?}",
        signalled.elapsed()
    );
    place.store().check_integrity().unwrap();
    assert_eq!(place.store().runs(&RunFilter::default()).unwrap().len(), 3);
}

#[test]
fn a_resumed_run_uses_the_components_it_was_accepted_with() {
    let place = Place::new();
    // A private copy of the component, which the test then deletes.
    let copy = place.dir.path().join("mine.wasm");
    std::fs::copy(stepbox_tests::guest("hostile"), &copy).unwrap();
    let yaml = SLOW.replace("SLEEP", "400").replace(
        "component: hostile\n",
        &format!("component: {}\n", copy.display()),
    );
    let file = place.workflow("slow.yaml", &yaml);
    let mut child = place.spawn(&["run", &file]);
    wait_for_attempt(&place, "b");
    child.kill().unwrap();
    let _ = child.wait();
    std::fs::remove_file(&copy).unwrap();
    std::fs::remove_file(&file).unwrap();

    let out = place.run(&["resume"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let history = &place.histories()[0];
    assert_eq!(history.summary.status, RunState::Succeeded);
    assert_no_completed_unit_ran_again(history);
}

#[tokio::test]
async fn the_idempotency_key_names_the_unit_and_survives_retries() {
    let sb = TestSandbox::new();
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("j.db"), Durability::Strict).unwrap();
    let scheduler = journaled(&sb, store);
    let hostile = stepbox_tests::guest("hostile").display().to_string();
    let yaml = format!(
        "name: keys
steps:
  - id: once
    component: {hostile}
    input: {{mode: whoami, fail_below: 3}}
    retry: {{max_attempts: 3, backoff: 1ms, retry_on: [retryable]}}
  - id: each
    component: {hostile}
    for_each: ${{input.items}}
    input: {{mode: whoami}}
  - id: caller
    component: {hostile}
    input: {{mode: call, step: each, input: {{mode: whoami}}}}
"
    );
    let file = dir.path().join("keys.yaml");
    std::fs::write(&file, yaml).unwrap();
    let wf = scheduler.prepare(Workflow::from_file(&file).unwrap()).unwrap();
    let report = scheduler
        .submit(&wf, json!({"items": [1, 2]}))
        .unwrap()
        .wait()
        .await;
    assert_eq!(report.status, RunStatus::Succeeded, "{:?}", report.error);
    let id = report.run_id;
    let output = report.output.unwrap();
    assert_eq!(output["once"], json!({"key": format!("{id}/once"), "attempt": 3}));
    assert_eq!(
        output["each"],
        json!([{"key": format!("{id}/each/0"), "attempt": 1}, {"key": format!("{id}/each/1"), "attempt": 1}])
    );
    assert_eq!(
        output["caller"],
        json!({"key": format!("{id}/caller/each#1"), "attempt": 1})
    );

    let journal = scheduler.journal().unwrap().clone();
    journal.flush().await.unwrap();
    let reader = SqliteReader::open(&dir.path().join("j.db")).unwrap();
    let history = reader.history(id).unwrap().unwrap();
    let once: Vec<(u32, AttemptStatus, bool)> = history
        .attempts
        .iter()
        .filter(|a| a.step == "once")
        .map(|a| (a.attempt, a.status, a.last))
        .collect();
    assert_eq!(
        once,
        [
            (1, AttemptStatus::Failed, false),
            (2, AttemptStatus::Failed, false),
            (3, AttemptStatus::Completed, true)
        ]
    );
    tokio::task::spawn_blocking(move || journal.close())
        .await
        .unwrap()
        .unwrap();
}

/// A store whose commits of a chosen step's completion take a while, and
/// that notes when each such commit ended.
struct SlowCompletions {
    inner: SqliteStore,
    step: &'static str,
    delay: Duration,
    committed_us: std::sync::Arc<std::sync::Mutex<Vec<i64>>>,
}

impl StoreWriter for SlowCompletions {
    fn write(&mut self, owner: &str, events: &[Event]) -> Result<WriteReport, StoreError> {
        let slow = events
            .iter()
            .any(|e| matches!(e, Event::AttemptEnded(a) if &*a.step == self.step));
        if slow {
            std::thread::sleep(self.delay);
        }
        let report = self.inner.write(owner, events)?;
        if slow {
            self.committed_us.lock().unwrap().push(now_micros());
        }
        Ok(report)
    }

    fn allocate_run_ids(&mut self, count: u64) -> Result<std::ops::Range<RunId>, StoreError> {
        self.inner.allocate_run_ids(count)
    }

    fn release_run_ids(&mut self, unused: std::ops::Range<RunId>) -> Result<bool, StoreError> {
        self.inner.release_run_ids(unused)
    }

    fn renew_leases(&mut self, owner: &str, until: Millis) -> Result<u64, StoreError> {
        self.inner.renew_leases(owner, until)
    }

    fn claim_incomplete(&mut self, owner: &str, until: Millis) -> Result<Vec<RecoveredRun>, StoreError> {
        self.inner.claim_incomplete(owner, until)
    }

    fn release_leases(&mut self, owner: &str) -> Result<u64, StoreError> {
        self.inner.release_leases(owner)
    }

    fn collect(&mut self, before: Millis) -> Result<GcStats, StoreError> {
        self.inner.collect(before)
    }
}

/// Runs workflow `fenced` (`first`, then `then` and a fan-out `each`, both
/// needing it; `then` granted outbound HTTP when `reaches_out`) with the
/// commit of `first`'s completion held back 300 ms. Returns when that
/// commit landed, the dependents' attempts, and whether the run's end was in
/// the store when the run reported.
async fn fenced(reaches_out: bool) -> (i64, Vec<AttemptRecord>, bool) {
    let sb = TestSandbox::new();
    let dir = tempfile::tempdir().unwrap();
    let committed_us = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let store = SlowCompletions {
        inner: SqliteStore::open(&dir.path().join("j.db"), Durability::Strict).unwrap(),
        step: "first",
        delay: Duration::from_millis(300),
        committed_us: committed_us.clone(),
    };
    let scheduler = journaled(&sb, store);
    let trivial = stepbox_tests::guest("trivial").display().to_string();
    let grant = match reaches_out {
        true => "\n    allow_http: [\"127.0.0.1:9\"]",
        false => "",
    };
    let yaml = format!(
        "name: fenced
steps:
  - id: first
    component: {trivial}
  - id: then
    component: {trivial}
    needs: [first]{grant}
  - id: each
    component: {trivial}
    needs: [first]
    for_each: ${{input.items}}
"
    );
    let file = dir.path().join("fenced.yaml");
    std::fs::write(&file, yaml).unwrap();
    let wf = scheduler.prepare(Workflow::from_file(&file).unwrap()).unwrap();
    assert_eq!(wf.reaches_out(), reaches_out);
    let report = scheduler
        .submit(&wf, json!({"items": [1, 2, 3]}))
        .unwrap()
        .wait()
        .await;
    assert_eq!(report.status, RunStatus::Succeeded, "{:?}", report.error);
    let reader = SqliteReader::open(&dir.path().join("j.db")).unwrap();
    let ended_when_reported =
        reader.history(report.run_id).unwrap().unwrap().summary.status == RunState::Succeeded;

    let journal = scheduler.journal().unwrap().clone();
    journal.flush().await.unwrap();
    let committed = *committed_us
        .lock()
        .unwrap()
        .first()
        .expect("`first` ended in a commit");
    let history = reader.history(report.run_id).unwrap().unwrap();
    let dependents: Vec<AttemptRecord> = history
        .attempts
        .into_iter()
        .filter(|a| a.step != "first")
        .collect();
    assert_eq!(dependents.len(), 4, "{dependents:?}");
    tokio::task::spawn_blocking(move || journal.close())
        .await
        .unwrap()
        .unwrap();
    (committed, dependents, ended_when_reported)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_strict_durability_no_step_of_a_workflow_that_reaches_out_starts_before_its_needs_are_committed()
 {
    let (committed, dependents, ended) = fenced(true).await;
    for a in dependents {
        assert!(
            a.started_us >= committed,
            "`{}` item {:?} started {} µs before `first`'s completion was committed",
            a.step,
            a.item,
            committed - a.started_us
        );
    }
    assert!(ended, "the run reported before its end was in the store");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_strict_durability_a_workflow_that_cannot_reach_out_goes_on_while_it_commits_and_reports_once_durable()
 {
    let (committed, dependents, ended) = fenced(false).await;
    // Nothing these steps do leaves the host but through the journal, after
    // `first`'s completion: they need not wait for its commit.
    assert!(
        dependents.iter().all(|a| a.started_us < committed),
        "a dependent waited for the commit: {dependents:?}"
    );
    assert!(ended, "the run reported before its end was in the store");
}

#[test]
fn runs_show_and_gc_keep_the_audit_record_and_drop_payloads() {
    let place = Place::new();
    let file = place.workflow("slow.yaml", &SLOW.replace("SLEEP", "1"));
    let out = place.run(&["run", &file, "--repeat", "3"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    let out = place.run(&["runs", "--status", "succeeded"]);
    let listing = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        listing.lines().filter(|l| l.contains("succeeded")).count(),
        3,
        "{listing}"
    );
    let out = place.run(&["runs", "--status", "failed"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        1,
        "only the header"
    );

    let out = place.run(&["show", "2"]);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("status:   succeeded") && shown.contains(r#"{"slept":1}"#),
        "{shown}"
    );

    let out = place.run(&["gc", "--older-than", "0s"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("3 finished runs"));
    let out = place.run(&["show", "2", "--json"]);
    let history: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(history["summary"]["collected"], true);
    assert_eq!(history["summary"]["status"], "succeeded");
    assert_eq!(history["input"], Value::Null);
    assert_eq!(history["output"], Value::Null);
    let attempts = history["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 3);
    for a in attempts {
        assert_eq!(a["outcome"], "completed");
        assert_eq!(a["output"], Value::Null);
        assert!(a["usage"]["fuel_consumed"].as_u64().unwrap() > 0);
        assert!(a["usage"]["peak_memory"].as_u64().unwrap() > 0);
    }

    let out = place.run(&["show", "99"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("no run 99"), "{}", stderr(&out));
    let out = place.run(&["gc"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--older-than"), "{}", stderr(&out));
}

/// Exit code 4 and one line on stderr naming the file and `needle`.
fn assert_journal_error(out: &Output, db: &Path, needle: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    assert!(
        err.contains(&db.display().to_string()) && err.contains(needle),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn an_unusable_journal_gets_a_clear_error_and_nothing_runs() {
    let place = Place::new();
    let file = place.workflow("slow.yaml", &SLOW.replace("SLEEP", "1"));

    // Locked by another host.
    let holder = SqliteStore::open(&place.db(), Durability::Strict).unwrap();
    assert_journal_error(
        &place.run(&["run", &file]),
        &place.db(),
        "in use by another stepbox process",
    );
    drop(holder);

    // Written by a newer stepbox.
    let out = place.run(&["run", &file]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    set_user_version(&place.db(), 42);
    assert_journal_error(&place.run(&["run", &file]), &place.db(), "newer stepbox");
    assert_journal_error(&place.run(&["runs"]), &place.db(), "newer stepbox");

    // Not a database at all.
    let garbage = place.dir.path().join("garbage.db");
    std::fs::write(&garbage, vec![0x42; 10_000]).unwrap();
    let out = place.command_on(&garbage, &["run", &file]).output().unwrap();
    assert_journal_error(&out, &garbage, "not a usable stepbox database");

    // Nowhere to write (/sys refuses new files even to root).
    let nowhere = Path::new("/sys/stepbox/journal.db");
    let out = place.command_on(nowhere, &["run", &file]).output().unwrap();
    assert_journal_error(&out, nowhere, "cannot write");
}

/// Rewrites the journal format version in the file's header (offset 60,
/// big-endian), as a newer stepbox would have left it.
fn set_user_version(db: &Path, version: u32) {
    use std::io::{Seek, SeekFrom, Write};
    // Fold the WAL into the main file first, so the header is the truth.
    let mut store = SqliteStore::open(db, Durability::Strict).unwrap();
    store.check_integrity().unwrap();
    drop(store);
    let mut file = std::fs::OpenOptions::new().write(true).open(db).unwrap();
    file.seek(SeekFrom::Start(60)).unwrap();
    file.write_all(&version.to_be_bytes()).unwrap();
}

#[tokio::test]
async fn a_full_disk_stops_the_host_without_dropping_an_accepted_run() {
    let sb = TestSandbox::new();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("j.db");
    let hostile = stepbox_tests::guest("hostile").display().to_string();
    let file = dir.path().join("big.yaml");
    std::fs::write(
        &file,
        format!("name: big\nsteps:\n  - id: a\n    component: {hostile}\n    input: {{mode: big-output, bytes: 3000000}}\n"),
    )
    .unwrap();

    // The workflow and its component go in first, with room to spare...
    {
        let store = SqliteStore::open(&db, Durability::Strict).unwrap();
        let (journal, _) = Journal::start(Box::new(store), JournalConfig::default()).unwrap();
        let scheduler =
            Scheduler::with_journal(sb.sandbox.clone(), SchedulerConfig::default(), journal.clone()).unwrap();
        scheduler.prepare(Workflow::from_file(&file).unwrap()).unwrap();
        journal.flush().await.unwrap();
        tokio::task::spawn_blocking(move || journal.close())
            .await
            .unwrap()
            .unwrap();
    }
    // ...then room for the acceptances, not for the outputs.
    let pages = std::fs::metadata(&db).unwrap().len() / 4096;
    let mut store = SqliteStore::open(&db, Durability::Strict).unwrap();
    store.set_max_pages(pages + 300).unwrap();
    let scheduler = journaled(&sb, store);
    let wf = scheduler.prepare(Workflow::from_file(&file).unwrap()).unwrap();
    let handles = scheduler
        .submit_all((0..3).map(|_| (std::sync::Arc::clone(&wf), json!({}))))
        .unwrap();
    for handle in handles {
        let report = handle.wait().await;
        assert_eq!(report.status, RunStatus::Interrupted, "{:?}", report.error);
        assert!(
            report.error.as_deref().unwrap_or("").contains("disk is full"),
            "{:?}",
            report.error
        );
    }
    let error = scheduler.journal_error().expect("the journal failed").to_string();
    assert!(
        error.contains("disk is full") && error.contains("j.db"),
        "{error}"
    );
    let journal = scheduler.journal().unwrap().clone();
    drop(scheduler);
    let _ = tokio::task::spawn_blocking(move || journal.close())
        .await
        .unwrap();

    // With space again, every accepted run is still there and finishes.
    let store = SqliteStore::open(&db, Durability::Strict).unwrap();
    let (journal, recovered) = Journal::start(Box::new(store), JournalConfig::default()).unwrap();
    assert_eq!(recovered.len(), 3);
    let scheduler = Scheduler::with_journal(sb.sandbox.clone(), SchedulerConfig::default(), journal).unwrap();
    for run in recovered {
        let report = scheduler.resume(run).unwrap().wait().await;
        assert_eq!(report.status, RunStatus::Succeeded, "{:?}", report.error);
    }
    let journal = scheduler.journal().unwrap().clone();
    tokio::task::spawn_blocking(move || journal.close())
        .await
        .unwrap()
        .unwrap();
}
