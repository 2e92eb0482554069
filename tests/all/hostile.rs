//! Hostile guests: each is contained with the right typed outcome, and the
//! host stays up and keeps serving well-behaved steps afterwards.

use std::time::{Duration, Instant};

use bytesize::ByteSize;
use serde_json::{Value, json};
use stepbox::{LimitOverrides, Outcome, OutcomeKind, RunReport};

use super::{TestSandbox, fuel, limits, memory, output, timeout};

async fn hostile(sb: &TestSandbox, input: Value, limits: LimitOverrides) -> RunReport {
    let step = sb.load("hostile");
    let report = sb.run(&step, input, limits).await;
    // Whatever happened, the instance's directory is gone and the host still works.
    assert!(sb.scratch_leftovers().is_empty(), "{:?}", sb.scratch_leftovers());
    let echo = sb
        .run(&step, json!({"mode": "echo", "id": 7}), super::limits())
        .await;
    assert_eq!(output(&echo)["id"], 7);
    report
}

#[tokio::test]
async fn a_pure_compute_loop_runs_out_of_fuel() {
    let sb = TestSandbox::new();
    let report = hostile(&sb, json!({"mode": "spin"}), fuel(50_000_000)).await;
    assert_eq!(report.outcome, Outcome::OutOfFuel { limit: 50_000_000 });
    assert!(report.usage.fuel_consumed >= 50_000_000 - 10_000);
}

#[tokio::test]
async fn a_pure_compute_loop_with_fuel_to_spare_times_out() {
    let sb = TestSandbox::new();
    let started = Instant::now();
    let report = hostile(&sb, json!({"mode": "spin"}), timeout(Duration::from_millis(200))).await;
    match report.outcome {
        Outcome::Timeout { limit, elapsed } => {
            assert_eq!(limit, Duration::from_millis(200));
            assert!(elapsed >= limit, "{elapsed:?}");
        }
        other => panic!("expected a timeout, got {other}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the loop was not stopped promptly"
    );
}

#[tokio::test]
async fn a_loop_calling_host_imports_is_stopped_by_fuel_and_by_time() {
    let sb = TestSandbox::new();
    let report = hostile(&sb, json!({"mode": "host-loop"}), fuel(20_000_000)).await;
    assert_eq!(report.outcome.kind(), OutcomeKind::OutOfFuel);
    let report = hostile(
        &sb,
        json!({"mode": "host-loop"}),
        LimitOverrides {
            timeout: Some(Duration::from_millis(200)),
            log: Some(ByteSize::kib(4)),
            ..limits()
        },
    )
    .await;
    assert_eq!(report.outcome.kind(), OutcomeKind::Timeout);
    // The trace records it floods the log with are capped, not accumulated.
    let kept: usize = report.log.records.iter().map(|r| r.message.len()).sum();
    assert!(kept <= 4 * 1024, "kept {kept} bytes");
    assert!(
        report.log.dropped_bytes > 0,
        "the loop wrote less than 4 KiB in 200 ms"
    );
}

#[tokio::test]
async fn a_tight_loop_over_every_host_import_is_stopped_by_fuel_and_by_its_deadline() {
    let sb = TestSandbox::new();
    let report = hostile(&sb, json!({"mode": "host-calls"}), fuel(30_000_000)).await;
    assert_eq!(report.outcome.kind(), OutcomeKind::OutOfFuel);
    let started = Instant::now();
    let report = hostile(
        &sb,
        json!({"mode": "host-calls"}),
        LimitOverrides {
            timeout: Some(Duration::from_millis(300)),
            log: Some(ByteSize::kib(8)),
            ..limits()
        },
    )
    .await;
    assert_eq!(report.outcome.kind(), OutcomeKind::Timeout);
    assert!(started.elapsed() < Duration::from_secs(5));
    let kept: usize = report.log.records.iter().map(|r| r.message.len()).sum();
    assert!(kept <= 8 * 1024, "kept {kept} bytes of log");
    // Every iteration is four host calls; none of them kept anything but
    // the capped log (the state is one key).
    assert!(report.log.dropped_bytes > 0);
}

#[tokio::test]
async fn a_memory_bomb_hits_the_memory_limit_with_the_request_named() {
    let sb = TestSandbox::new();
    let report = hostile(&sb, json!({"mode": "memory-bomb"}), memory(ByteSize::mib(32))).await;
    match report.outcome {
        Outcome::MemoryLimit { limit, requested } => {
            assert_eq!(limit, ByteSize::mib(32).as_u64());
            assert!(requested > limit);
        }
        other => panic!("expected a memory limit, got {other}"),
    }
    assert!(report.usage.peak_memory <= ByteSize::mib(32).as_u64());
    assert!(report.usage.peak_memory > ByteSize::mib(16).as_u64());
}

#[tokio::test]
async fn unbounded_recursion_overflows_the_wasm_stack() {
    let sb = TestSandbox::new();
    let report = hostile(&sb, json!({"mode": "recursion"}), limits()).await;
    assert_eq!(
        report.outcome,
        Outcome::StackOverflow {
            limit: stepbox::sandbox::DEFAULT_MAX_WASM_STACK.as_u64()
        }
    );
}

#[tokio::test]
async fn a_100_mib_output_is_refused_as_too_large() {
    let sb = TestSandbox::new();
    let report = hostile(
        &sb,
        json!({"mode": "big-output", "bytes": 100 * 1024 * 1024}),
        LimitOverrides {
            memory: Some(ByteSize::gib(1)),
            ..limits()
        },
    )
    .await;
    match report.outcome {
        Outcome::OutputTooLarge { limit, size } => {
            assert_eq!(limit, stepbox::limits::DEFAULT_OUTPUT.as_u64());
            assert!(size >= 100 * 1024 * 1024);
        }
        other => panic!("expected output-too-large, got {other}"),
    }
}

#[tokio::test]
async fn a_log_flood_is_capped_and_the_step_still_completes() {
    let sb = TestSandbox::new();
    let report = hostile(
        &sb,
        json!({"mode": "log-flood", "count": 100_000}),
        LimitOverrides {
            log: Some(ByteSize::kib(256)),
            ..limits()
        },
    )
    .await;
    assert_eq!(output(&report), json!({"ok": true}));
    let kept: usize = report.log.records.iter().map(|r| r.message.len()).sum();
    assert!(kept <= 256 * 1024, "kept {kept} bytes");
    // 100,000 KiB-sized records plus as many stdout and stderr lines.
    assert!(
        report.log.dropped_bytes > 100_000 * 1024,
        "{}",
        report.log.dropped_bytes
    );
}

#[tokio::test]
async fn a_panic_is_a_trap_carrying_the_panic_message() {
    let sb = TestSandbox::new();
    let report = hostile(&sb, json!({"mode": "panic"}), limits()).await;
    match &report.outcome {
        Outcome::Trap { message, backtrace } => {
            assert!(message.contains("hostile guest panicked on purpose"), "{message}");
            assert!(backtrace.as_deref().is_some_and(|bt| !bt.is_empty()));
        }
        other => panic!("expected a trap, got {other}"),
    }
}

#[tokio::test]
async fn a_sleep_past_the_deadline_times_out_though_epochs_do_not_fire_in_host_calls() {
    let sb = TestSandbox::new();
    let started = Instant::now();
    let report = hostile(
        &sb,
        json!({"mode": "sleep", "ms": 60_000}),
        timeout(Duration::from_millis(300)),
    )
    .await;
    assert_eq!(report.outcome.kind(), OutcomeKind::Timeout);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn a_deadline_from_above_wins_over_a_longer_step_timeout() {
    let sb = TestSandbox::new();
    let step = sb.load("hostile");
    let deadline = Instant::now() + Duration::from_millis(200);
    let options = stepbox::RunOptions::default().deadline(deadline);
    let report = sb
        .sandbox
        .run(&step, br#"{"mode":"sleep","ms":60000}"#, options)
        .await;
    match report.outcome {
        Outcome::Timeout { limit, .. } => assert!(limit <= Duration::from_millis(200), "{limit:?}"),
        other => panic!("expected a timeout, got {other}"),
    }
}

#[tokio::test]
async fn cancelling_a_running_step_stops_it_and_cleans_up() {
    let sb = TestSandbox::new();
    let step = sb.load("hostile");
    let cancel = stepbox::CancellationToken::new();
    let options = stepbox::RunOptions::default().cancel_token(cancel.clone());
    let trigger = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        cancel.cancel();
    });
    let started = Instant::now();
    let report = sb.sandbox.run(&step, br#"{"mode":"spin"}"#, options).await;
    trigger.await.unwrap();
    assert_eq!(report.outcome.kind(), OutcomeKind::Cancelled);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(sb.scratch_leftovers().is_empty());
    assert!(sb.descriptors_into_scratch().is_empty());
}

#[tokio::test]
async fn dropping_a_run_future_midway_cleans_up_too() {
    let sb = TestSandbox::new();
    let step = sb.load("hostile");
    let run = sb
        .sandbox
        .run(&step, br#"{"mode":"sleep","ms":60000}"#, Default::default());
    assert!(
        tokio::time::timeout(Duration::from_millis(100), run)
            .await
            .is_err()
    );
    assert!(sb.scratch_leftovers().is_empty());
    assert!(sb.descriptors_into_scratch().is_empty());
}

#[tokio::test]
async fn the_wasm_stack_is_a_per_run_limit() {
    let sb = TestSandbox::new();
    let small = LimitOverrides {
        stack: Some(ByteSize::kib(128)),
        ..limits()
    };
    let report = hostile(&sb, json!({"mode": "recursion"}), small).await;
    assert_eq!(
        report.outcome,
        Outcome::StackOverflow {
            limit: ByteSize::kib(128).as_u64()
        }
    );
    // Well-behaved steps run with that stack too, and with a larger one.
    let step = sb.load("hostile");
    for stack in [ByteSize::kib(128), ByteSize::mib(2)] {
        let stack = LimitOverrides {
            stack: Some(stack),
            ..limits()
        };
        let echo = sb.run(&step, json!({"mode": "echo", "id": 3}), stack).await;
        assert_eq!(output(&echo)["id"], 3);
    }
    // Each size costs an engine: a third size beyond the default is the last one.
    let third = LimitOverrides {
        stack: Some(ByteSize::kib(256)),
        ..limits()
    };
    output(&sb.run(&step, json!({"mode": "echo", "id": 4}), third).await);
    let fourth = LimitOverrides {
        stack: Some(ByteSize::mib(1)),
        ..limits()
    };
    let report = sb.run(&step, json!({"mode": "echo", "id": 5}), fourth).await;
    assert_eq!(
        report.outcome.kind(),
        stepbox::OutcomeKind::HostFailure,
        "{}",
        report.outcome
    );
    // A size outside the accepted range is refused, naming the range.
    let tiny = LimitOverrides {
        stack: Some(ByteSize::kib(1)),
        ..limits()
    };
    let report = sb.run(&step, json!({"mode": "echo", "id": 1}), tiny).await;
    match report.outcome {
        Outcome::HostFailure { message } => {
            assert!(message.contains("outside the accepted range"), "{message}")
        }
        other => panic!("expected a refusal, got {other}"),
    }
}

#[tokio::test]
async fn a_tmp_directory_is_handed_on_only_if_its_guest_never_opened_it() {
    let sb = TestSandbox::new();
    let step = sb.load("hostile");
    let hello = sb.load("hello");
    let greet = || sb.run(&hello, json!({"name": "x"}), limits());
    greet().await;
    let kept = sb.instance_dirs();
    assert_eq!(kept.len(), 1, "an unopened directory is kept: {kept:?}");
    for _ in 0..20 {
        greet().await;
    }
    assert_eq!(sb.instance_dirs(), kept, "and handed to each next instance");

    // The next instance gets it, opens it, leaves a file: it goes.
    let echo = sb.run(&step, json!({"mode": "echo", "id": 1}), limits()).await;
    assert_eq!(output(&echo)["id"], 1);
    assert!(sb.instance_dirs().is_empty(), "{:?}", sb.instance_dirs());

    // Opened only to be listed, and left empty: it goes all the same.
    greet().await;
    assert_eq!(sb.instance_dirs().len(), 1);
    let listed = sb
        .run(&step, json!({"mode": "hold-listings", "count": 1}), limits())
        .await;
    assert!(listed.outcome.output().is_some(), "{}", listed.outcome);
    assert!(sb.instance_dirs().is_empty(), "{:?}", sb.instance_dirs());
    assert!(sb.descriptors_into_scratch().is_empty());
}
