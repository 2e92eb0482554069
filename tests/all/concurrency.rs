//! Many steps at once: isolation, typed outcomes and cleanup under load.

use std::sync::Arc;
use std::time::Duration;

use bytesize::ByteSize;
use serde_json::json;
use stepbox::{LimitOverrides, OutcomeKind, RunOptions};

use super::TestSandbox;

/// What each of the mixed steps does, and the outcome it must get.
fn plan(i: u64) -> (serde_json::Value, LimitOverrides, OutcomeKind) {
    let defaults = LimitOverrides {
        memory: Some(ByteSize::mib(16)),
        timeout: Some(Duration::from_secs(60)),
        ..LimitOverrides::default()
    };
    match i % 10 {
        1 => (
            json!({"mode": "spin"}),
            LimitOverrides {
                fuel: Some(5_000_000),
                ..defaults
            },
            OutcomeKind::OutOfFuel,
        ),
        3 => (json!({"mode": "memory-bomb"}), defaults, OutcomeKind::MemoryLimit),
        5 => (json!({"mode": "panic"}), defaults, OutcomeKind::Trap),
        7 => (
            json!({"mode": "sleep", "ms": 60_000}),
            LimitOverrides {
                timeout: Some(Duration::from_millis(300)),
                ..defaults
            },
            OutcomeKind::Timeout,
        ),
        9 => (json!({"mode": "recursion"}), defaults, OutcomeKind::StackOverflow),
        _ => (json!({"mode": "echo", "id": i}), defaults, OutcomeKind::Completed),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_mixed_steps_each_get_their_own_result_and_leave_nothing_behind() {
    let sb = Arc::new(TestSandbox::new());
    let hostile = sb.load("hostile");
    let tasks: Vec<_> = (0..1_000u64)
        .map(|i| {
            let sb = Arc::clone(&sb);
            let hostile = hostile.clone();
            tokio::spawn(async move {
                let (input, limits, expected) = plan(i);
                let input = serde_json::to_vec(&input).unwrap();
                let report = sb
                    .sandbox
                    .run(&hostile, &input, RunOptions::default().limits(limits))
                    .await;
                (i, expected, report)
            })
        })
        .collect();

    let mut completed = 0;
    for task in tasks {
        let (i, expected, report) = task.await.unwrap();
        assert_eq!(report.outcome.kind(), expected, "step {i}: {}", report.outcome);
        if expected == OutcomeKind::Completed {
            completed += 1;
            let out: serde_json::Value = serde_json::from_slice(report.outcome.output().unwrap()).unwrap();
            assert_eq!(out["id"], i, "step {i} got another step's output");
            assert_eq!(
                out["read_back"],
                i.to_string(),
                "step {i} read another step's file"
            );
            assert_eq!(
                out["files"],
                json!([format!("{i}.txt")]),
                "step {i} saw other steps' files"
            );
        }
    }
    assert_eq!(completed, 500);
    assert!(sb.scratch_leftovers().is_empty(), "{:?}", sb.scratch_leftovers());
    assert!(
        sb.descriptors_into_scratch().is_empty(),
        "{:?}",
        sb.descriptors_into_scratch()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_beyond_the_instance_limit_wait_for_a_slot_instead_of_failing() {
    let sb = Arc::new(TestSandbox::with(|b| b.max_instances(4)));
    let hostile = sb.load("hostile");
    let tasks: Vec<_> = (0..64u64)
        .map(|i| {
            let sb = Arc::clone(&sb);
            let hostile = hostile.clone();
            tokio::spawn(async move {
                let input = serde_json::to_vec(&json!({"mode": "echo", "id": i})).unwrap();
                sb.sandbox.run(&hostile, &input, RunOptions::default()).await
            })
        })
        .collect();
    let mut waited = false;
    for task in tasks {
        let report = task.await.unwrap();
        assert_eq!(
            report.outcome.kind(),
            OutcomeKind::Completed,
            "{}",
            report.outcome
        );
        waited |= report.usage.queue_wait > Duration::ZERO;
    }
    assert!(waited, "with 4 slots and 64 runs, some must have queued");
}
