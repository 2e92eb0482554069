//! Workflows: DAG execution, isolation between runs, the timeout hierarchy,
//! child calls, retries, circuit breakers, quotas and cancellation.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use stepbox::OutcomeKind;
use stepbox::policy::{BreakerConfig, QuotaError, Quotas, TimeoutLevel};
use stepbox::scheduler::{
    PreparedWorkflow, RunStatus, Scheduler, SchedulerConfig, StepReport, StepStatus, SubmitError,
    WorkflowReport,
};
use stepbox::workflow::Workflow;

use super::TestSandbox;

/// A scheduler over a [`TestSandbox`], and a place for workflow files.
struct Host {
    sb: TestSandbox,
    scheduler: Scheduler,
    dir: tempfile::TempDir,
}

impl Host {
    fn new() -> Host {
        Host::with(SchedulerConfig::default())
    }

    fn with(config: SchedulerConfig) -> Host {
        let sb = TestSandbox::new();
        let scheduler = Scheduler::new(sb.sandbox.clone(), config).unwrap();
        Host {
            sb,
            scheduler,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// Prepares a workflow whose `hostile:` components are the hostile guest.
    fn workflow(&self, yaml: &str) -> Arc<PreparedWorkflow> {
        let hostile = stepbox_tests::guest("hostile");
        let yaml = yaml.replace("component: hostile", &format!("component: {}", hostile.display()));
        let file = self.dir.path().join(format!("wf-{}.yaml", fastrand_name()));
        std::fs::write(&file, yaml).unwrap();
        let workflow = Workflow::from_file(&file).unwrap_or_else(|e| panic!("{e}"));
        self.scheduler.prepare(workflow).unwrap_or_else(|e| panic!("{e}"))
    }

    async fn run(&self, workflow: &Arc<PreparedWorkflow>, input: Value) -> WorkflowReport {
        self.scheduler.submit(workflow, input).unwrap().wait().await
    }
}

fn fastrand_name() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn step<'a>(report: &'a WorkflowReport, id: &str) -> &'a StepReport {
    report.steps.iter().find(|s| s.id == id).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_flow_along_needs_and_templates() {
    let host = Host::new();
    let wf = host.workflow(
        r#"
name: flow
steps:
  - id: first
    component: hostile
    input: {mode: echo, id: "${input.n}"}
  - id: second
    component: hostile
    needs: [first]
    input:
      mode: echo
      id: ${steps.first.id}
  - id: third
    component: hostile
    needs: [first]
    input: {mode: error, kind: failed, message: "got ${steps.first.read_back}"}
    continue_on_error: true
output:
  second: ${steps.second.files}
"#,
    );
    let report = host.run(&wf, json!({"n": 41})).await;
    assert_eq!(report.status, RunStatus::Succeeded, "{:?}", report.error);
    assert_eq!(report.output, Some(json!({"second": ["41.txt"]})));
    assert_eq!(step(&report, "third").status, StepStatus::Failed);
    assert_eq!(step(&report, "third").message.as_deref(), Some("failed: got 41"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_state_adds_from_100_steps_are_never_lost() {
    let host = Host::new();
    let wf = host.workflow(
        r#"
name: counters
steps:
  - id: add
    component: hostile
    for_each: ${input.items}
    input: {mode: count, key: total, times: 1000}
  - id: read
    component: hostile
    needs: [add]
    input: {mode: read, key: total}
"#,
    );
    let items: Vec<u32> = (0..100).collect();
    let report = host.run(&wf, json!({"items": items})).await;
    assert_eq!(report.status, RunStatus::Succeeded, "{:?}", report.error);
    assert_eq!(report.output, Some(json!({"value": 100_000})));
    assert_eq!(step(&report, "add").items, Some(100));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_runs_see_only_their_own_state_files_and_outputs() {
    let host = Host::with(SchedulerConfig {
        quotas: Quotas {
            max_instances: 8,
            ..Quotas::default()
        },
        ..SchedulerConfig::default()
    });
    let wf = host.workflow(
        r#"
name: isolated
steps:
  - id: count
    component: hostile
    for_each: ${input.items}
    input: {mode: count, key: mine, times: 1}
  - id: file
    component: hostile
    input: {mode: echo, id: "${input.id}"}
  - id: read
    component: hostile
    needs: [count, file]
    input: {mode: read, key: mine}
output:
  state: ${steps.read.value}
  file: ${steps.file}
"#,
    );
    let runs: Vec<_> = (0..100u64)
        .map(|id| {
            let items: Vec<u64> = (0..id % 7 + 1).collect();
            (
                id,
                host.scheduler
                    .submit(&wf, json!({"id": id, "items": items}))
                    .unwrap(),
            )
        })
        .collect();
    for (id, run) in runs {
        let report = run.wait().await;
        assert_eq!(
            report.status,
            RunStatus::Succeeded,
            "run {id}: {:?}",
            report.error
        );
        let output = report.output.unwrap();
        assert_eq!(output["state"], id % 7 + 1, "run {id} saw another run's state");
        assert_eq!(output["file"]["id"], id);
        assert_eq!(
            output["file"]["files"],
            json!([format!("{id}.txt")]),
            "run {id} saw another run's files"
        );
    }
    assert!(host.sb.scratch_leftovers().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_timeout_level_fires_and_is_named() {
    let sleepy = |timeouts: &str| {
        format!(
            "name: naps\n{timeouts}\nsteps:\n  - id: nap\n    component: hostile\n    input: {{mode: sleep, ms: 60000}}\n    timeout: 10s\n"
        )
    };
    // The step's own timeout.
    let host = Host::new();
    let wf = host.workflow(&sleepy("").replace("timeout: 10s", "timeout: 200ms"));
    let report = host.run(&wf, json!({})).await;
    assert_eq!(step(&report, "nap").outcome, Some(OutcomeKind::Timeout));
    assert_eq!(step(&report, "nap").timeout_level, Some(TimeoutLevel::Step));
    let error = report.error.unwrap();
    assert!(error.contains("the step's own 200ms timeout fired"), "{error}");

    // The workflow's timeout, earlier than the step's.
    let wf = host.workflow(&sleepy("timeout: 300ms"));
    let started = Instant::now();
    let report = host.run(&wf, json!({})).await;
    assert_eq!(step(&report, "nap").timeout_level, Some(TimeoutLevel::Workflow));
    assert!(started.elapsed() < Duration::from_secs(5));
    let error = report.error.unwrap();
    assert!(
        error.contains("step `nap` failed: timeout: the workflow's 300ms timeout fired"),
        "{error}"
    );

    // The host's global limit, earlier than both.
    let host = Host::with(SchedulerConfig {
        global_timeout: Some(Duration::from_millis(300)),
        ..SchedulerConfig::default()
    });
    let wf = host.workflow(&sleepy("timeout: 20s"));
    let report = host.run(&wf, json!({})).await;
    assert_eq!(report.status, RunStatus::Failed);
    assert_eq!(step(&report, "nap").timeout_level, Some(TimeoutLevel::Global));
    let error = report.error.unwrap();
    assert!(error.contains("the host's global 300ms timeout fired"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_inherits_its_callers_deadline_and_fuel() {
    let host = Host::new();
    let wf = host.workflow(
        r#"
name: parent
steps:
  - id: parent
    component: hostile
    timeout: 400ms
    fuel: 50000000
    input: {mode: call, step: "${input.child}", input: {mode: "${input.mode}", ms: 60000}}
  - id: napper
    component: hostile
    needs: [parent]
    timeout: 20s
  - id: spinner
    component: hostile
    needs: [parent]
"#,
    );
    let started = Instant::now();
    let report = host.run(&wf, json!({"child": "napper", "mode": "sleep"})).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    let child = &report.children[0];
    assert_eq!((child.id.as_str(), child.depth), ("napper", 1));
    assert_eq!(child.outcome, Some(OutcomeKind::Timeout));
    assert_eq!(child.timeout_level, Some(TimeoutLevel::Parent));
    assert_eq!(report.status, RunStatus::Failed);

    let report = host.run(&wf, json!({"child": "spinner", "mode": "spin"})).await;
    let child = &report.children[0];
    assert_eq!(child.outcome, Some(OutcomeKind::OutOfFuel));
    assert!(
        child.usage.fuel_consumed <= 50_000_000,
        "the child used {} fuel",
        child.usage.fuel_consumed
    );
    // The parent paid for its child: it has no fuel left either.
    let parent = step(&report, "parent");
    assert!(
        parent.usage.fuel_consumed + child.usage.fuel_consumed >= 49_000_000,
        "parent {} child {}",
        parent.usage.fuel_consumed,
        child.usage.fuel_consumed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_nest_only_to_the_configured_depth() {
    let host = Host::with(SchedulerConfig {
        max_call_depth: 2,
        ..SchedulerConfig::default()
    });
    let wf = host.workflow(
        r#"
name: deep
steps:
  - id: again
    component: hostile
    input: {mode: call, step: again, input: {mode: call, step: again, input: {mode: call, step: again, input: {mode: echo, id: 1}}}}
"#,
    );
    let report = host.run(&wf, json!({})).await;
    assert_eq!(report.status, RunStatus::Failed);
    assert!(
        report.error.as_deref().unwrap().contains("at most 2 deep"),
        "{:?}",
        report.error
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_calling_children_in_a_loop_is_cut_off_at_its_call_limit() {
    let host = Host::with(SchedulerConfig {
        max_child_calls: 50,
        ..SchedulerConfig::default()
    });
    let wf = host.workflow(
        r#"
name: caller
output: ${steps.loop}
steps:
  - id: loop
    component: hostile
    input: {mode: call-loop, step: child, input: {mode: echo, id: 1}}
  - id: child
    component: hostile
    needs: [loop]
    input: {mode: echo, id: 2}
"#,
    );
    let report = host.run(&wf, json!({})).await;
    assert_eq!(report.status, RunStatus::Succeeded, "{:?}", report.error);
    let output = report.output.unwrap();
    assert_eq!(output["calls"], 50, "{output}");
    assert!(
        output["stopped"].as_str().unwrap().contains("at most 50 calls"),
        "{output}"
    );
    // What the run keeps of its children is bounded by the calls made.
    assert_eq!(report.children.len(), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flaky_step_succeeds_on_retry_and_backs_off() {
    let host = Host::new();
    let wf = host.workflow(
        r#"
name: flaky
steps:
  - id: flaky
    component: hostile
    input: {mode: flaky, key: attempts, fail_times: 2}
    retry: {max_attempts: 3, backoff: 50ms, jitter: false}
"#,
    );
    let started = Instant::now();
    let report = host.run(&wf, json!({})).await;
    assert_eq!(report.status, RunStatus::Succeeded, "{:?}", report.error);
    assert_eq!(report.output, Some(json!({"attempt": 3})));
    assert_eq!(step(&report, "flaky").attempts, 3);
    // 50 ms, then 100 ms.
    assert!(started.elapsed() >= Duration::from_millis(150));

    let wf = host.workflow("name: retry\nsteps:\n  - id: flaky\n    component: hostile\n    input: {mode: flaky, key: a, fail_times: 5}\n    retry: {max_attempts: 2, backoff: 1ms}\n");
    let report = host.run(&wf, json!({})).await;
    assert_eq!(report.status, RunStatus::Failed);
    assert_eq!(step(&report, "flaky").attempts, 2);
    assert_eq!(report.failed_kind, Some(OutcomeKind::Retryable));

    // invalid-input is never retried, whatever the policy says.
    let wf = host.workflow("name: fan\nsteps:\n  - id: bad\n    component: hostile\n    input: {mode: nonsense}\n    retry: {max_attempts: 5, backoff: 1ms, retry_on: [retryable, trap]}\n");
    let report = host.run(&wf, json!({})).await;
    assert_eq!(step(&report, "bad").attempts, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_breaker_opens_fails_fast_and_recovers_after_a_probe() {
    let host = Host::with(SchedulerConfig {
        breaker: BreakerConfig {
            consecutive_failures: 3,
            cooldown: Duration::from_millis(300),
            ..BreakerConfig::default()
        },
        ..SchedulerConfig::default()
    });
    let wf =
        host.workflow("name: breaker\nsteps:\n  - id: s\n    component: hostile\n    input: \"${input}\"\n");
    for _ in 0..3 {
        let report = host.run(&wf, json!({"mode": "panic"})).await;
        assert_eq!(report.failed_kind, Some(OutcomeKind::Trap));
    }
    let started = Instant::now();
    let report = host.run(&wf, json!({"mode": "echo", "id": 1})).await;
    assert_eq!(report.failed_kind, Some(OutcomeKind::CircuitOpen));
    // Generous for a loaded machine: the point is that no instance ran.
    assert!(started.elapsed() < Duration::from_secs(1), "did not fail fast");
    assert_eq!(
        report.steps[0].usage.fuel_consumed, 0,
        "the step ran although its breaker was open"
    );
    assert_eq!(report.open_breakers.len(), 1);

    tokio::time::sleep(Duration::from_millis(350)).await;
    let report = host.run(&wf, json!({"mode": "echo", "id": 2})).await;
    assert_eq!(
        report.status,
        RunStatus::Succeeded,
        "the probe did not go through: {:?}",
        report.error
    );
    assert!(report.open_breakers.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_quota_is_enforced_with_a_clear_error() {
    let host = Host::with(SchedulerConfig {
        quotas: Quotas {
            max_workflows: 1,
            max_queued: 1,
            max_fan_out: 3,
            max_state_bytes: 64,
            memory_budget: bytesize::ByteSize::mib(100),
            ..Quotas::default()
        },
        ..SchedulerConfig::default()
    });
    let nap = host.workflow(
        "name: nap\nsteps:\n  - id: s\n    component: hostile\n    input: {mode: sleep, ms: 300}\n",
    );
    let running = host.scheduler.submit(&nap, json!({})).unwrap();
    let queued = host.scheduler.submit(&nap, json!({})).unwrap();
    let refused = host.scheduler.submit(&nap, json!({})).unwrap_err();
    assert!(
        matches!(
            refused,
            SubmitError::Quota(QuotaError::QueueFull { max_queued: 1 })
        ),
        "{refused}"
    );
    assert!(refused.to_string().starts_with("quota exceeded"));
    assert_eq!(running.wait().await.status, RunStatus::Succeeded);
    assert_eq!(queued.wait().await.status, RunStatus::Succeeded);

    let fan = host.workflow("name: fan\nsteps:\n  - id: s\n    component: hostile\n    for_each: ${input}\n    input: {mode: echo, id: 1}\n");
    let report = host.run(&fan, json!([1, 2, 3, 4])).await;
    assert_eq!(report.failed_kind, Some(OutcomeKind::QuotaExceeded));
    assert!(report.error.unwrap().contains("quota exceeded"));

    let big = host.workflow("name: mem\nsteps:\n  - id: s\n    component: hostile\n    memory: 128MiB\n    input: {mode: echo, id: 1}\n");
    let report = host.run(&big, json!({})).await;
    assert_eq!(report.failed_kind, Some(OutcomeKind::QuotaExceeded));

    // More steps than a workflow may have: refused when prepared.
    let host_small = Host::with(SchedulerConfig {
        quotas: Quotas {
            max_steps_per_workflow: 1,
            ..Quotas::default()
        },
        ..SchedulerConfig::default()
    });
    let two = "name: two\nsteps:\n  - id: a\n    component: C\n  - id: b\n    component: C\n"
        .replace('C', &stepbox_tests::guest("hostile").display().to_string());
    let file = host_small.dir.path().join("two.yaml");
    std::fs::write(&file, two).unwrap();
    let err = host_small
        .scheduler
        .prepare(Workflow::from_file(&file).unwrap())
        .err()
        .unwrap();
    assert!(err.to_string().starts_with("quota exceeded"), "{err}");

    let state = host.workflow("name: state\nsteps:\n  - id: s\n    component: hostile\n    input: {mode: count, key: a-very-long-key-name-that-does-not-fit-in-sixty-four-bytes-at-all, times: 1}\n");
    let report = host.run(&state, json!({})).await;
    assert_eq!(report.status, RunStatus::Failed);
    assert!(report.error.unwrap().contains("quota exceeded"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_cancels_running_steps_and_their_temp_dirs_go() {
    let host = Host::new();
    let wf = host.workflow(
        r#"
name: fail-fast
steps:
  - id: slow
    component: hostile
    input: {mode: sleep, ms: 60000}
  - id: boom
    component: hostile
    input: {mode: panic}
  - id: after
    component: hostile
    needs: [slow]
"#,
    );
    let started = Instant::now();
    let report = host.run(&wf, json!({})).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(report.status, RunStatus::Failed);
    assert_eq!(step(&report, "boom").outcome, Some(OutcomeKind::Trap));
    assert_eq!(step(&report, "slow").status, StepStatus::Cancelled);
    assert_eq!(step(&report, "after").status, StepStatus::Skipped);
    assert!(host.sb.scratch_leftovers().is_empty());
    assert!(host.sb.descriptors_into_scratch().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_run_stops_its_steps_promptly_and_cleans_up() {
    let host = Host::new();
    let wf = host.workflow("name: cancel\nsteps:\n  - id: s\n    component: hostile\n    for_each: [1, 2, 3]\n    input: {mode: sleep, ms: 60000}\n");
    let run = host.scheduler.submit(&wf, json!({})).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    run.cancel();
    let report = run.wait().await;
    assert_eq!(report.status, RunStatus::Cancelled);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(host.sb.scratch_leftovers().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_workflow_beside_100_good_ones_leaves_them_untouched() {
    let host = Host::with(SchedulerConfig {
        quotas: Quotas {
            max_instances: 8,
            ..Quotas::default()
        },
        ..SchedulerConfig::default()
    });
    let hostile = host.workflow(
        r#"
name: hostile
steps:
  - id: bomb
    component: hostile
    memory: 16MiB
    for_each: [1, 2, 3, 4]
    input: {mode: memory-bomb}
  - id: spin
    component: hostile
    fuel: 100000000
    input: {mode: spin}
"#,
    );
    let good = host.workflow("name: good\nsteps:\n  - id: a\n    component: hostile\n    input: {mode: echo, id: \"${input}\"}\n  - id: b\n    component: hostile\n    needs: [a]\n    input: {mode: echo, id: \"${steps.a.id}\"}\n");
    let bad = host.scheduler.submit(&hostile, json!({})).unwrap();
    let runs: Vec<_> = (0..100u64)
        .map(|i| (i, host.scheduler.submit(&good, json!(i)).unwrap()))
        .collect();
    for (i, run) in runs {
        let report = run.wait().await;
        assert_eq!(report.status, RunStatus::Succeeded, "{:?}", report.error);
        assert_eq!(report.output.unwrap()["id"], i);
    }
    let report = bad.wait().await;
    assert_eq!(report.status, RunStatus::Failed);
    assert!(matches!(
        report.failed_kind,
        Some(OutcomeKind::MemoryLimit | OutcomeKind::OutOfFuel)
    ));
    assert!(host.sb.scratch_leftovers().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_childs_memory_counts_against_the_budget_without_waiting() {
    let host = Host::with(SchedulerConfig {
        quotas: Quotas {
            memory_budget: bytesize::ByteSize::mib(100),
            ..Quotas::default()
        },
        ..SchedulerConfig::default()
    });
    let calls = |child_memory: &str| {
        format!(
            "name: greedy\nsteps:\n  - id: parent\n    component: hostile\n    memory: 64MiB\n    input: {{mode: call, step: child, input: {{mode: echo, id: 1}}}}\n  - id: child\n    component: hostile\n    needs: [parent]\n    memory: {child_memory}\n"
        )
    };
    let report = host.run(&host.workflow(&calls("16MiB")), json!({})).await;
    assert_eq!(report.children[0].outcome, Some(OutcomeKind::Completed));

    let report = host.run(&host.workflow(&calls("64MiB")), json!({})).await;
    assert_eq!(report.children[0].outcome, Some(OutcomeKind::QuotaExceeded));
    assert!(report.error.unwrap().contains("quota exceeded"));
    assert_eq!(host.scheduler.stats().memory_in_use, bytesize::ByteSize::b(0));
}
