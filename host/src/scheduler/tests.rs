//! The scheduler's decisions, tested with a fake runner and no wasm:
//! readiness, fan-out, fairness across runs, cancellation, retries and
//! backoff, breakers, the deadline hierarchy, quotas and durability waits.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytesize::ByteSize;
use serde_json::json;

use super::{
    PreparedWorkflow, RunStatus, Scheduler, SchedulerConfig, SchedulerError, StepRunner, StepStatus,
    SubmitError,
};
use crate::limits::Limits;
use crate::outcome::{GuestErrorKind, Outcome, OutcomeKind, RunReport, StepLog, Usage};
use crate::policy::{BreakerConfig, Quotas, TimeoutLevel};
use crate::sandbox::{Digest, LoadError, RunOptions};
use crate::workflow::Workflow;

/// What a fake component does, read from its file's text.
#[derive(Debug, Clone, PartialEq)]
enum Script {
    /// Returns its input.
    Echo,
    /// Fails (retryably) on its first `n` attempts, then echoes.
    FailFirst(u32),
    /// Always fails.
    Fail,
    /// Sleeps this long (within its deadline and cancellation), then echoes.
    Sleep(Duration),
}

impl Script {
    fn parse(text: &str) -> Result<Script, String> {
        let mut words = text.split_whitespace();
        let script = match (words.next(), words.next()) {
            (Some("echo"), None) => Script::Echo,
            (Some("fail"), None) => Script::Fail,
            (Some("fail-first"), Some(n)) => Script::FailFirst(n.parse().map_err(|e| format!("{e}"))?),
            (Some("sleep"), Some(ms)) => {
                Script::Sleep(Duration::from_millis(ms.parse().map_err(|e| format!("{e}"))?))
            }
            _ => return Err(format!("unknown script `{text}`")),
        };
        Ok(script)
    }
}

#[derive(Debug, Clone)]
struct FakeComponent {
    name: String,
    digest: Digest,
    script: Script,
}

impl super::Component for FakeComponent {
    fn digest(&self) -> Digest {
        self.digest
    }

    fn name(&self) -> &str {
        &self.name
    }
}

/// One attempt the fake ran.
#[derive(Debug, Clone)]
struct Call {
    /// The unit's idempotency key (`run/step[/item]`).
    key: String,
    attempt: u32,
    started: Instant,
    ended: Instant,
    /// The deadline it was given.
    deadline: Option<Instant>,
    outcome: OutcomeKind,
}

/// Told the idempotency key of each attempt as it starts.
type OnStart = Arc<dyn Fn(&str) + Send + Sync>;

/// Runs scripts instead of components and remembers every attempt.
#[derive(Clone, Default)]
struct Fake {
    calls: Arc<Mutex<Vec<Call>>>,
    /// Told the key of every attempt as it starts.
    on_start: Option<OnStart>,
    memory: Option<ByteSize>,
}

impl Fake {
    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// The calls whose key ends with `suffix`, in the order they started.
    fn calls_of(&self, suffix: &str) -> Vec<Call> {
        let mut calls: Vec<Call> = self
            .calls()
            .into_iter()
            .filter(|c| c.key.ends_with(suffix))
            .collect();
        calls.sort_by_key(|c| c.started);
        calls
    }

    /// The most attempts that ran at the same time.
    fn max_overlap(&self) -> usize {
        let calls = self.calls();
        calls
            .iter()
            .map(|c| {
                calls
                    .iter()
                    .filter(|o| o.started <= c.started && c.started < o.ended)
                    .count()
            })
            .max()
            .unwrap_or(0)
    }
}

impl StepRunner for Fake {
    type Component = FakeComponent;

    fn load_file(&self, path: &Path) -> Result<FakeComponent, LoadError> {
        let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
            path: path.to_owned(),
            source,
        })?;
        self.load_bytes(&path.display().to_string(), &bytes)
    }

    fn load_bytes(&self, name: &str, bytes: &[u8]) -> Result<FakeComponent, LoadError> {
        let script =
            Script::parse(&String::from_utf8_lossy(bytes)).map_err(|message| LoadError::Invalid {
                name: name.to_owned(),
                message,
            })?;
        Ok(FakeComponent {
            name: name.to_owned(),
            digest: Digest::of(bytes),
            script,
        })
    }

    async fn run(&self, component: &FakeComponent, input: &[u8], options: RunOptions) -> RunReport {
        let key = options.idempotency_key.as_deref().unwrap_or("").to_owned();
        if let Some(on_start) = &self.on_start {
            on_start(&key);
        }
        let started = Instant::now();
        let deadline = options.deadline;
        let cancel = options.cancel.clone().unwrap_or_default();
        let echo = || Outcome::Completed {
            output: input.to_vec(),
        };
        let failed = || Outcome::GuestError {
            error: GuestErrorKind::Retryable,
            message: "the script fails".into(),
        };
        let outcome = match &component.script {
            Script::Echo => echo(),
            Script::Fail => failed(),
            Script::FailFirst(n) if options.attempt.max(1) <= *n => failed(),
            Script::FailFirst(_) => echo(),
            Script::Sleep(d) => {
                let until = deadline.map_or(started + *d, |at| at.min(started + *d));
                tokio::select! {
                    () = cancel.cancelled() => Outcome::Cancelled { elapsed: started.elapsed() },
                    () = tokio::time::sleep_until(until.into()) => {
                        if started.elapsed() >= *d {
                            echo()
                        } else {
                            Outcome::Timeout {
                                limit: deadline.map_or(Duration::ZERO, |at| at - started),
                                elapsed: started.elapsed(),
                            }
                        }
                    }
                }
            }
        };
        self.calls.lock().unwrap().push(Call {
            key,
            attempt: options.attempt,
            started,
            ended: Instant::now(),
            deadline,
            outcome: outcome.kind(),
        });
        RunReport {
            outcome,
            usage: Usage {
                wall_time: started.elapsed(),
                fuel_consumed: 1,
                peak_memory: self.memory.map_or(1, |m| m.as_u64()),
                ..Usage::default()
            },
            log: StepLog::default(),
        }
    }

    fn default_limits(&self) -> Limits {
        Limits::default()
    }

    fn scratch_in_memory(&self) -> bool {
        false
    }

    fn max_instances(&self) -> u32 {
        1000
    }
}

/// A workflow file and its fake components in a temporary directory.
struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    /// Components named by their scripts: `("slow", "sleep 100")`.
    fn new(components: &[(&str, &str)]) -> Files {
        let dir = tempfile::tempdir().unwrap();
        for (name, script) in components {
            std::fs::write(dir.path().join(name), script).unwrap();
        }
        Files { dir }
    }

    fn workflow(&self, yaml: &str) -> Workflow {
        let path: PathBuf = self.dir.path().join("w.yaml");
        std::fs::write(&path, yaml).unwrap();
        Workflow::from_file(&path).unwrap()
    }
}

fn config(max_workflows: usize, max_instances: usize) -> SchedulerConfig {
    SchedulerConfig {
        quotas: Quotas {
            max_workflows,
            max_instances,
            ..Quotas::default()
        },
        ..SchedulerConfig::default()
    }
}

fn prepare(scheduler: &Scheduler<Fake>, files: &Files, yaml: &str) -> Arc<PreparedWorkflow<Fake>> {
    scheduler.prepare(files.workflow(yaml)).unwrap()
}

/// A fake runner, a scheduler on it, and one workflow prepared from `yaml`
/// with the fake `components` beside it.
fn setup(
    components: &[(&str, &str)],
    config: SchedulerConfig,
    yaml: &str,
) -> (Fake, Scheduler<Fake>, Arc<PreparedWorkflow<Fake>>, Files) {
    let files = Files::new(components);
    let fake = Fake::default();
    let scheduler = Scheduler::new(fake.clone(), config).unwrap();
    let wf = prepare(&scheduler, &files, yaml);
    (fake, scheduler, wf, files)
}

#[tokio::test]
async fn a_step_starts_only_once_all_its_needs_are_done_and_independent_steps_overlap() {
    let (fake, scheduler, wf, _files) = setup(
        &[("slow", "sleep 80"), ("echo", "echo")],
        config(4, 4),
        "name: diamond
steps:
  - {id: a, component: echo, input: 1}
  - {id: b, component: slow, needs: [a], input: '${steps.a}'}
  - {id: c, component: slow, needs: [a], input: '${steps.a}'}
  - {id: d, component: echo, needs: [b, c], input: ['${steps.b}', '${steps.c}']}
output: ${steps.d}",
    );
    let report = scheduler.submit(&wf, json!({})).unwrap().wait().await;
    assert_eq!(report.status, RunStatus::Succeeded, "{:?}", report.error);
    assert_eq!(report.output, Some(json!([1, 1])));
    let (a, b, c, d) = (
        &fake.calls_of("/a")[0],
        &fake.calls_of("/b")[0],
        &fake.calls_of("/c")[0],
        &fake.calls_of("/d")[0],
    );
    assert!(b.started >= a.ended && c.started >= a.ended);
    assert!(
        d.started >= b.ended && d.started >= c.ended,
        "d started before its needs ended"
    );
    // b and c need only a: they run at once, not one after the other.
    assert!(
        b.started < c.ended && c.started < b.ended,
        "b and c did not overlap"
    );
}

#[tokio::test]
async fn a_fan_out_runs_at_most_max_parallel_items_at_once_and_keeps_their_order() {
    let (fake, scheduler, wf, _files) = setup(
        &[("slow", "sleep 20")],
        config(4, 16),
        "name: fan
steps:
  - {id: each, component: slow, for_each: '${input.items}', max_parallel: 3, input: '${item}'}
output: ${steps.each}",
    );
    let items: Vec<u32> = (0..12).collect();
    let report = scheduler
        .submit(&wf, json!({ "items": items }))
        .unwrap()
        .wait()
        .await;
    assert_eq!(report.status, RunStatus::Succeeded, "{:?}", report.error);
    assert_eq!(report.output, Some(json!(items)));
    assert_eq!(fake.calls().len(), 12);
    let overlap = fake.max_overlap();
    assert!(overlap <= 3, "{overlap} items ran at once");
    assert!(overlap >= 2, "the items ran one at a time");
}

#[tokio::test]
async fn a_run_submitted_behind_a_big_fan_out_gets_a_slot_before_the_fan_out_ends() {
    let files = Files::new(&[("slow", "sleep 10"), ("echo", "echo")]);
    let fake = Fake::default();
    let scheduler = Scheduler::new(fake.clone(), config(4, 2)).unwrap();
    let big = prepare(
        &scheduler,
        &files,
        "name: big
steps:
  - {id: each, component: slow, for_each: '${input.items}', input: '${item}'}
output: ${steps.each}",
    );
    let small = prepare(
        &scheduler,
        &files,
        "name: small
steps:
  - {id: one, component: echo, input: 1}
output: ${steps.one}",
    );
    let items: Vec<u32> = (0..40).collect();
    let first = scheduler.submit(&big, json!({ "items": items })).unwrap();
    tokio::time::sleep(Duration::from_millis(30)).await;
    let second = scheduler.submit(&small, json!({})).unwrap();
    let (first_id, second_id) = (first.id(), second.id());
    assert_eq!(second.wait().await.status, RunStatus::Succeeded);
    assert_eq!(first.wait().await.status, RunStatus::Succeeded);
    let small_started = fake.calls_of(&format!("{second_id}/one"))[0].started;
    let big_items_after = fake
        .calls()
        .iter()
        .filter(|c| c.key.starts_with(&format!("{first_id}/")) && c.started > small_started)
        .count();
    // The slots are shared by turns: the small run does not wait for 40 items.
    assert!(
        big_items_after >= 20,
        "the small run waited until {} of 40 items had started",
        40 - big_items_after
    );
}

#[tokio::test]
async fn cancelling_a_run_stops_its_running_step_promptly() {
    let (fake, scheduler, wf, _files) = setup(
        &[("slow", "sleep 30000")],
        config(4, 4),
        "name: long
steps:
  - {id: wait, component: slow, input: 1}
output: ${steps.wait}",
    );
    let handle = scheduler.submit(&wf, json!({})).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let asked = Instant::now();
    handle.cancel();
    let report = tokio::time::timeout(Duration::from_secs(5), handle.wait())
        .await
        .unwrap();
    assert_eq!(report.status, RunStatus::Cancelled);
    assert!(asked.elapsed() < Duration::from_secs(5));
    assert_eq!(fake.calls_of("/wait")[0].outcome, OutcomeKind::Cancelled);
    // Cancelled is final: it is not retried.
    assert_eq!(fake.calls().len(), 1);
}

#[tokio::test]
async fn a_failing_attempt_is_retried_after_its_backoff_until_it_succeeds() {
    let (fake, scheduler, wf, _files) = setup(
        &[("flaky", "fail-first 2")],
        config(4, 4),
        "name: flaky
steps:
  - id: try
    component: flaky
    input: 7
    retry: {max_attempts: 3, backoff: 40ms, jitter: false}
output: ${steps.try}",
    );
    let report = scheduler.submit(&wf, json!({})).unwrap().wait().await;
    assert_eq!(report.status, RunStatus::Succeeded, "{:?}", report.error);
    assert_eq!(report.steps[0].attempts, 3);
    let calls = fake.calls_of("/try");
    assert_eq!(
        calls.iter().map(|c| c.attempt).collect::<Vec<_>>(),
        [1, 2, 3],
        "attempt numbers count up"
    );
    for pair in calls.windows(2) {
        let gap = pair[1].started - pair[0].ended;
        assert!(gap >= Duration::from_millis(40), "retried after {gap:?}");
    }
}

#[tokio::test]
async fn attempts_stop_at_max_attempts_and_the_run_fails_with_the_last_outcome() {
    let (fake, scheduler, wf, _files) = setup(
        &[("bad", "fail")],
        config(4, 4),
        "name: bad
steps:
  - {id: try, component: bad, input: 1, retry: {max_attempts: 2, backoff: 1ms}}
output: ${steps.try}",
    );
    let report = scheduler.submit(&wf, json!({})).unwrap().wait().await;
    assert_eq!(report.status, RunStatus::Failed);
    assert_eq!(report.failed_kind, Some(OutcomeKind::Retryable));
    assert_eq!(fake.calls().len(), 2);
}

#[tokio::test]
async fn an_open_breaker_fails_fast_without_running_the_component() {
    let config = SchedulerConfig {
        breaker: BreakerConfig {
            consecutive_failures: 2,
            cooldown: Duration::from_secs(60),
            ..BreakerConfig::default()
        },
        ..config(4, 4)
    };
    let (fake, scheduler, wf, _files) = setup(
        &[("bad", "fail")],
        config,
        "name: bad
steps:
  - {id: try, component: bad, input: 1}
output: ${steps.try}",
    );
    for _ in 0..2 {
        let report = scheduler.submit(&wf, json!({})).unwrap().wait().await;
        assert_eq!(report.failed_kind, Some(OutcomeKind::Retryable));
    }
    let report = scheduler.submit(&wf, json!({})).unwrap().wait().await;
    assert_eq!(report.failed_kind, Some(OutcomeKind::CircuitOpen));
    assert_eq!(fake.calls().len(), 2, "the open breaker let a call through");
    assert_eq!(report.open_breakers.len(), 1);
}

#[tokio::test]
async fn the_workflow_timeout_stops_a_step_whose_own_is_longer_and_says_so() {
    let (fake, scheduler, wf, _files) = setup(
        &[("slow", "sleep 30000")],
        config(4, 4),
        "name: bounded
timeout: 150ms
steps:
  - {id: wait, component: slow, input: 1, timeout: 30s}
output: ${steps.wait}",
    );
    let submitted = Instant::now();
    let report = scheduler.submit(&wf, json!({})).unwrap().wait().await;
    assert_eq!(report.status, RunStatus::Failed);
    assert_eq!(report.failed_kind, Some(OutcomeKind::Timeout));
    assert_eq!(report.steps[0].timeout_level, Some(TimeoutLevel::Workflow));
    let error = report.error.unwrap();
    assert!(error.contains("the workflow's 150ms timeout fired"), "{error}");
    // The step was handed the workflow's deadline, not its own 30 s.
    let deadline = fake.calls_of("/wait")[0].deadline.unwrap();
    assert!(
        deadline <= submitted + Duration::from_secs(2),
        "{:?}",
        deadline - submitted
    );
}

#[tokio::test]
async fn the_global_timeout_bounds_a_run_from_its_submission() {
    let config = SchedulerConfig {
        global_timeout: Some(Duration::from_millis(100)),
        ..config(4, 4)
    };
    let (_, scheduler, wf, _files) = setup(
        &[("slow", "sleep 30000")],
        config,
        "name: bounded
timeout: 10s
steps:
  - {id: wait, component: slow, input: 1}
output: ${steps.wait}",
    );
    let report = scheduler.submit(&wf, json!({})).unwrap().wait().await;
    assert_eq!(report.steps[0].timeout_level, Some(TimeoutLevel::Global));
    assert!(report.error.unwrap().contains("global 100ms timeout"));
}

#[tokio::test]
async fn submissions_past_the_queue_quota_are_refused_at_once_and_the_rest_run() {
    let config = SchedulerConfig {
        quotas: Quotas {
            max_workflows: 1,
            max_queued: 1,
            ..Quotas::default()
        },
        ..SchedulerConfig::default()
    };
    let (fake, scheduler, wf, _files) = setup(
        &[("slow", "sleep 100")],
        config,
        "name: one
steps:
  - {id: wait, component: slow, input: 1}
output: ${steps.wait}",
    );
    let running = scheduler.submit(&wf, json!({})).unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let queued = scheduler.submit(&wf, json!({})).unwrap();
    let refused = scheduler.submit(&wf, json!({}));
    assert!(matches!(refused, Err(SubmitError::Quota(_))), "{refused:?}");
    assert_eq!(running.wait().await.status, RunStatus::Succeeded);
    assert_eq!(queued.wait().await.status, RunStatus::Succeeded);
    assert_eq!(fake.max_overlap(), 1, "two runs ran at once past max_workflows 1");
}

#[tokio::test]
async fn steps_share_the_memory_budget_so_no_more_run_than_it_holds() {
    let config = SchedulerConfig {
        quotas: Quotas {
            max_instances: 8,
            memory_budget: ByteSize::mib(128),
            ..Quotas::default()
        },
        ..SchedulerConfig::default()
    };
    let (fake, scheduler, wf, _files) = setup(
        &[("slow", "sleep 30")],
        config,
        "name: big
steps:
  - {id: each, component: slow, for_each: '${input.items}', memory: 64MiB, input: '${item}'}
output: ${steps.each}",
    );
    let report = scheduler
        .submit(&wf, json!({ "items": [1, 2, 3, 4, 5, 6] }))
        .unwrap()
        .wait()
        .await;
    assert_eq!(report.status, RunStatus::Succeeded, "{:?}", report.error);
    assert!(
        fake.max_overlap() <= 2,
        "{} steps of 64 MiB ran in 128 MiB",
        fake.max_overlap()
    );
}

#[tokio::test]
async fn a_failed_step_cancels_its_siblings_and_skips_its_dependents() {
    let (fake, scheduler, wf, _files) = setup(
        &[("slow", "sleep 30000"), ("bad", "fail"), ("echo", "echo")],
        config(4, 4),
        "name: failing
steps:
  - {id: wait, component: slow, input: 1}
  - {id: bad, component: bad, input: 1}
  - {id: after, component: echo, needs: [bad], input: '${steps.bad}'}
output: ${steps.after}",
    );
    let report = tokio::time::timeout(
        Duration::from_secs(5),
        scheduler.submit(&wf, json!({})).unwrap().wait(),
    )
    .await
    .unwrap();
    assert_eq!(report.status, RunStatus::Failed);
    assert!(report.error.unwrap().contains("step `bad` failed"));
    let status = |id: &str| report.steps.iter().find(|s| &*s.id == id).unwrap().status;
    assert_eq!(status("wait"), StepStatus::Cancelled);
    assert_eq!(status("after"), StepStatus::Skipped);
    assert!(fake.calls_of("/after").is_empty());
}

#[test]
fn a_pool_too_small_for_nested_calls_is_refused_with_the_numbers() {
    let err = Scheduler::new(
        Fake::default(),
        SchedulerConfig {
            quotas: Quotas {
                max_instances: 400,
                ..Quotas::default()
            },
            ..SchedulerConfig::default()
        },
    )
    .err()
    .unwrap();
    assert!(
        matches!(err, SchedulerError::PoolTooSmall { needed: 2000, .. }),
        "{err}"
    );
}

#[test]
fn invalid_quotas_are_refused_with_the_setting_named() {
    let err = Scheduler::new(Fake::default(), config(0, 4)).err().unwrap();
    assert!(matches!(err, SchedulerError::Quotas(_)), "{err}");
    assert!(err.to_string().contains("max-workflows"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_strict_durability_a_step_that_may_reach_out_starts_only_once_its_needs_are_in_the_store() {
    use crate::store::{
        AttemptStatus, Durability, Journal, JournalConfig, SqliteReader, SqliteStore, StoreReader as _,
    };

    let files = Files::new(&[("echo", "echo")]);
    let db = files.dir.path().join("journal.db");
    let (journal, _) = Journal::start(
        Box::new(SqliteStore::open(&db, Durability::Strict).unwrap()),
        JournalConfig::default(),
    )
    .unwrap();
    let reader = Arc::new(SqliteReader::open(&db).unwrap());
    // What the store held of `a` when `b` started, per run.
    let seen: Arc<Mutex<Vec<Option<AttemptStatus>>>> = Arc::default();
    let on_start: OnStart = {
        let (reader, seen) = (Arc::clone(&reader), Arc::clone(&seen));
        Arc::new(move |key: &str| {
            let Some(run) = key.strip_suffix("/b") else { return };
            let history = reader.history(run.parse().unwrap()).unwrap().unwrap();
            let a = history.attempts.iter().find(|a| a.step == "a").map(|a| a.status);
            seen.lock().unwrap().push(a);
        })
    };
    let fake = Fake {
        on_start: Some(on_start),
        ..Fake::default()
    };
    let scheduler = Scheduler::with_journal(fake, config(8, 8), journal.clone()).unwrap();
    let wf = prepare(
        &scheduler,
        &files,
        "name: chain
steps:
  - {id: a, component: echo, input: 1}
  - {id: b, component: echo, needs: [a], input: '${steps.a}', allow_http: ['127.0.0.1:9']}
output: ${steps.b}",
    );
    assert!(wf.reaches_out());
    let runs: Vec<_> = (0..20).map(|_| (Arc::clone(&wf), json!({}))).collect();
    for handle in scheduler.submit_all(runs).unwrap() {
        assert_eq!(handle.wait().await.status, RunStatus::Succeeded);
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 20);
    assert!(
        seen.iter().all(|a| *a == Some(AttemptStatus::Completed)),
        "a dependent started before its need's completion was durable: {seen:?}"
    );
    tokio::task::spawn_blocking(move || journal.close())
        .await
        .unwrap()
        .unwrap();
}
