//! Well-behaved steps: correct outputs, usage accounting, guest errors, logs.

use bytesize::ByteSize;
use serde_json::json;
use stepbox::outcome::{GuestErrorKind, LogLevel, LogSource};
use stepbox::{Outcome, OutcomeKind};

use super::{TestSandbox, fuel, limits, output};

#[tokio::test]
async fn hello_greets_by_name() {
    let sb = TestSandbox::new();
    let hello = sb.load("hello");
    let report = sb.run(&hello, json!({"name": "world"}), limits()).await;
    assert_eq!(output(&report), json!({"message": "Hello, world!"}));
    assert!(report.usage.fuel_consumed > 0);
    assert!(report.usage.peak_memory > 0);
    assert_eq!(
        report.usage.output_bytes as usize,
        report.outcome.output().unwrap().len()
    );
}

#[tokio::test]
async fn bad_input_json_is_invalid_input_with_serdes_message() {
    let sb = TestSandbox::new();
    let hello = sb.load("hello");
    let report = sb.sandbox.run(&hello, b"{\"nom\": 1}", Default::default()).await;
    match &report.outcome {
        Outcome::GuestError {
            error: GuestErrorKind::InvalidInput,
            message,
        } => assert!(message.contains("missing field `name`"), "{message}"),
        other => panic!("expected invalid-input, got {other}"),
    }
    let report = sb.sandbox.run(&hello, b"not json", Default::default()).await;
    assert_eq!(report.outcome.kind(), OutcomeKind::InvalidInput);
}

#[tokio::test]
async fn wordcount_counts_real_text() {
    let sb = TestSandbox::new();
    let wc = sb.load("wordcount");
    let text = "The cat sat.\nThe dog didn't sit; the cat did!\n";
    let out = output(&sb.run(&wc, json!({"text": text, "top": 2}), limits()).await);
    assert_eq!(out["words"], 10);
    assert_eq!(out["lines"], 2);
    assert_eq!(out["top"][0], json!({"word": "the", "count": 3}));
    assert_eq!(out["top"][1], json!({"word": "cat", "count": 2}));
}

#[tokio::test]
async fn scratch_example_uses_its_private_tmp() {
    let sb = TestSandbox::new();
    let scratch = sb.load("scratch");
    let out = output(
        &sb.run(&scratch, json!({"lines": ["pear", "apple", "fig"]}), limits())
            .await,
    );
    assert_eq!(out["sorted"], json!(["apple", "fig", "pear"]));
    // The next instance starts with an empty /tmp: nothing carries over.
    let again = output(&sb.run(&scratch, json!({"lines": ["b", "a"]}), limits()).await);
    assert_eq!(again["sorted"], json!(["a", "b"]));
    assert_eq!(again["files"], out["files"]);
    assert!(sb.scratch_leftovers().is_empty());
}

#[tokio::test]
async fn guest_errors_keep_their_kind_and_message() {
    let sb = TestSandbox::new();
    let hostile = sb.load("hostile");
    for (kind, expected) in [
        ("invalid-input", GuestErrorKind::InvalidInput),
        ("retryable", GuestErrorKind::Retryable),
        ("failed", GuestErrorKind::Failed),
    ] {
        let report = sb
            .run(
                &hostile,
                json!({"mode": "error", "kind": kind, "message": "nope"}),
                limits(),
            )
            .await;
        assert_eq!(
            report.outcome,
            Outcome::GuestError {
                error: expected,
                message: "nope".into()
            }
        );
    }
}

#[tokio::test]
async fn fuel_consumed_grows_with_the_work_done() {
    let sb = TestSandbox::new();
    let hostile = sb.load("hostile");
    let small = sb
        .run(
            &hostile,
            json!({"mode": "spin-for", "iterations": 1_000}),
            limits(),
        )
        .await;
    let large = sb
        .run(
            &hostile,
            json!({"mode": "spin-for", "iterations": 1_000_000}),
            limits(),
        )
        .await;
    output(&small);
    output(&large);
    assert!(
        large.usage.fuel_consumed > small.usage.fuel_consumed + 1_000_000,
        "{} vs {}",
        large.usage.fuel_consumed,
        small.usage.fuel_consumed
    );
    // And a budget well under what the large run used is not enough. (Not
    // just under: wasmtime checks fuel at loop headers and calls, so the
    // last straight-line stretch of a run may overdraw slightly.)
    let budget = large.usage.fuel_consumed / 10 * 9;
    let starved = sb
        .run(
            &hostile,
            json!({"mode": "spin-for", "iterations": 1_000_000}),
            fuel(budget),
        )
        .await;
    assert_eq!(starved.outcome.kind(), OutcomeKind::OutOfFuel);
}

#[tokio::test]
async fn peak_memory_reflects_what_the_step_allocated() {
    let sb = TestSandbox::new();
    let hostile = sb.load("hostile");
    let bytes = 20 * 1024 * 1024;
    let report = sb
        .run(&hostile, json!({"mode": "alloc", "bytes": bytes}), limits())
        .await;
    output(&report);
    assert!(
        report.usage.peak_memory >= bytes,
        "peak {}",
        report.usage.peak_memory
    );
    assert!(report.usage.peak_memory < ByteSize::mib(64).as_u64());
}

#[tokio::test]
async fn remaining_time_counts_down_from_the_timeout() {
    let sb = TestSandbox::new();
    let hostile = sb.load("hostile");
    let report = sb
        .run(
            &hostile,
            json!({"mode": "remaining"}),
            super::timeout(std::time::Duration::from_secs(5)),
        )
        .await;
    let remaining = output(&report)["remaining_ms"].as_u64().unwrap();
    assert!(remaining > 3_000 && remaining <= 5_000, "{remaining}");
}

#[tokio::test]
async fn stdout_stderr_and_log_records_are_captured_in_order_of_source() {
    let sb = TestSandbox::new();
    let hostile = sb.load("hostile");
    let report = sb
        .run(&hostile, json!({"mode": "log-flood", "count": 3}), limits())
        .await;
    output(&report);
    let count = |source: LogSource| report.log.records.iter().filter(|r| r.source == source).count();
    assert_eq!(count(LogSource::Log(LogLevel::Info)), 3);
    assert_eq!(count(LogSource::Stdout), 3);
    assert_eq!(count(LogSource::Stderr), 3);
    assert_eq!(report.log.dropped_bytes, 0);
}
