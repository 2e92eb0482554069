//! A step's `/tmp` and handles under quota: past its scratch quota a write
//! fails in the guest like a full disk, past its handle cap an open fails,
//! and either ends a run that does not recover in a typed outcome. Nothing
//! a step does takes more than its quota, nor the host's descriptors.

use bytesize::ByteSize;
use serde_json::{Value, json};
use stepbox::outcome::ScratchResource;
use stepbox::{LimitOverrides, Outcome, OutcomeKind, RunReport};

use super::{TestSandbox, limits, output};

fn scratch(bytes: ByteSize) -> LimitOverrides {
    LimitOverrides {
        scratch: Some(bytes),
        ..limits()
    }
}

async fn hostile(sb: &TestSandbox, input: Value, limits: LimitOverrides) -> RunReport {
    let step = sb.load("hostile");
    let report = sb.run(&step, input, limits).await;
    assert!(sb.scratch_leftovers().is_empty(), "{:?}", sb.scratch_leftovers());
    assert!(
        sb.descriptors_into_scratch().is_empty(),
        "{:?}",
        sb.descriptors_into_scratch()
    );
    report
}

#[tokio::test]
async fn a_write_past_the_scratch_quota_fails_like_a_full_disk_and_ends_in_scratch_limit() {
    let sb = TestSandbox::new();
    let report = hostile(
        &sb,
        json!({"mode": "scratch-write", "bytes": 8 << 20}),
        scratch(ByteSize::mib(1)),
    )
    .await;
    match &report.outcome {
        Outcome::ScratchLimit {
            resource: ScratchResource::Bytes,
            limit,
            requested,
        } => {
            assert_eq!(*limit, 1 << 20);
            assert!(*requested > 1 << 20, "{requested}");
        }
        other => panic!("expected a scratch limit, got {other}"),
    }
    assert!(report.usage.peak_scratch <= 1 << 20, "{:?}", report.usage);
    assert!(
        report.usage.peak_scratch >= (1 << 20) - (64 << 10),
        "{:?}",
        report.usage
    );
}

/// A write through a file stream fails as on a full disk: the stream's
/// `last-operation-failed`, whose `filesystem-error-code` is
/// `insufficient-space`. wasi-libc (and so Rust's std) reports every failed
/// stream write as EIO (29 in WASI's numbering), full disk or not.
#[tokio::test]
async fn a_stream_write_past_the_quota_fails_as_on_a_full_disk_and_a_step_that_handles_it_completes() {
    let sb = TestSandbox::new();
    let report = hostile(
        &sb,
        json!({"mode": "scratch-write", "bytes": 8 << 20, "files": 3, "chunk": 10_000, "tolerate": true}),
        scratch(ByteSize::kib(512)),
    )
    .await;
    let out = output(&report);
    assert_eq!(out["stopped"], "Uncategorized Some(29)", "{out}");
    assert!(out["written"].as_u64().unwrap() <= 512 << 10, "{out}");
    assert!(report.usage.peak_scratch <= 512 << 10);
}

#[tokio::test]
async fn removed_files_give_their_space_back() {
    let sb = TestSandbox::new();
    let report = hostile(
        &sb,
        json!({"mode": "scratch-churn", "bytes": 600 << 10, "rounds": 5}),
        scratch(ByteSize::mib(1)),
    )
    .await;
    assert_eq!(output(&report)["rounds"], 5);
    assert_eq!(report.usage.peak_scratch, 600 << 10);
}

#[tokio::test]
async fn a_removed_file_still_open_keeps_its_space_counted() {
    let sb = TestSandbox::new();
    let report = hostile(
        &sb,
        json!({"mode": "unlinked-write", "bytes": 2 << 20}),
        scratch(ByteSize::mib(1)),
    )
    .await;
    assert_eq!(
        report.outcome.kind(),
        OutcomeKind::ScratchLimit,
        "{}",
        report.outcome
    );
}

#[tokio::test]
async fn a_sparse_extension_counts_its_whole_length() {
    let sb = TestSandbox::new();
    let report = hostile(
        &sb,
        json!({"mode": "set-len", "bytes": 1u64 << 40}),
        scratch(ByteSize::mib(1)),
    )
    .await;
    assert_eq!(
        report.outcome.kind(),
        OutcomeKind::ScratchLimit,
        "{}",
        report.outcome
    );
    let report = hostile(
        &sb,
        json!({"mode": "set-len", "bytes": 1 << 19}),
        scratch(ByteSize::mib(1)),
    )
    .await;
    assert_eq!(output(&report)["len"], 1 << 19);
    assert_eq!(report.usage.peak_scratch, 1 << 19);
}

/// Runs `ops` under a `bytes`, 10-entry quota and returns each one's result.
async fn script_under(sb: &TestSandbox, bytes: ByteSize, ops: Value) -> Vec<String> {
    let report = hostile(
        sb,
        json!({"mode": "scratch-script", "ops": ops}),
        LimitOverrides {
            scratch: Some(bytes),
            scratch_entries: Some(10),
            ..limits()
        },
    )
    .await;
    serde_json::from_value(output(&report)).unwrap()
}

async fn script(sb: &TestSandbox, ops: Value) -> Vec<String> {
    script_under(sb, ByteSize::mib(1), ops).await
}

const K600: u64 = 600 << 10;

#[tokio::test]
async fn a_file_renamed_over_another_frees_the_one_it_replaced() {
    let sb = TestSandbox::new();
    let results = script(
        &sb,
        json!([
            {"op": "write", "path": "a", "bytes": K600},
            {"op": "rename", "from": "a", "to": "b"},
            {"op": "write", "path": "c", "bytes": 300 << 10},
            {"op": "rename", "from": "c", "to": "b"},
            {"op": "write", "path": "d", "bytes": K600},
            {"op": "write", "path": "e", "bytes": K600},
        ]),
    )
    .await;
    // b's 600 KiB went with the rename over it, so d fits, and then e does
    // not (a stream write: EIO, as on a full disk).
    assert_eq!(results, ["ok", "ok", "ok", "ok", "ok", "Uncategorized"]);
}

#[tokio::test]
async fn a_hard_linked_file_keeps_its_space_until_its_last_name_goes() {
    let sb = TestSandbox::new();
    let results = script(
        &sb,
        json!([
            {"op": "write", "path": "a", "bytes": K600},
            {"op": "link", "from": "a", "to": "l"},
            {"op": "remove", "path": "a"},
            {"op": "write", "path": "b", "bytes": K600},
            {"op": "remove", "path": "b"},
            {"op": "remove", "path": "l"},
            {"op": "write", "path": "b", "bytes": K600},
        ]),
    )
    .await;
    // The failed write leaves `b` behind; its removal is what the fourth op
    // made, and the space comes back only with `l`.
    assert_eq!(results, ["ok", "ok", "ok", "Uncategorized", "ok", "ok", "ok"]);
}

#[tokio::test]
async fn symlink_targets_count_as_bytes_and_links_as_entries() {
    let sb = TestSandbox::new();
    let ops: Vec<Value> = (0..4)
        .map(|i| json!({"op": "symlink", "path": format!("s{i}"), "target_len": 3000}))
        .collect();
    let results = script_under(&sb, ByteSize::b(10_000), json!(ops)).await;
    assert_eq!(results, ["ok", "ok", "ok", "StorageFull"]);
    // Names: ten in all, whatever they are; a removed one counts again.
    let mut ops: Vec<Value> = (0..5)
        .map(|i| json!({"op": "mkdir", "path": format!("d{i}")}))
        .collect();
    ops.extend((0..5).map(|i| json!({"op": "symlink", "path": format!("s{i}"), "target_len": 1})));
    ops.push(json!({"op": "mkdir", "path": "over"}));
    ops.push(json!({"op": "rmdir", "path": "d0"}));
    ops.push(json!({"op": "mkdir", "path": "over"}));
    let results = script(&sb, json!(ops)).await;
    assert_eq!(&results[10..], ["StorageFull", "ok", "ok"], "{results:?}");
}

#[tokio::test]
async fn files_and_directories_past_the_entry_quota_are_refused() {
    let sb = TestSandbox::new();
    for dirs in [false, true] {
        let report = hostile(
            &sb,
            json!({"mode": "scratch-entries", "count": 1000, "dirs": dirs}),
            LimitOverrides {
                scratch_entries: Some(25),
                ..limits()
            },
        )
        .await;
        let out = output(&report);
        assert_eq!(out["made"], 25, "{out}");
        assert_eq!(out["stopped"], "StorageFull", "{out}");
    }
}

#[tokio::test]
async fn holding_files_past_the_handle_cap_fails_the_open_in_the_guest() {
    let sb = TestSandbox::new();
    let report = hostile(
        &sb,
        json!({"mode": "hold-files", "count": 200_000}),
        LimitOverrides {
            handles: Some(64),
            ..limits()
        },
    )
    .await;
    let out = output(&report);
    let held = out["held"].as_u64().unwrap();
    assert!((50..64).contains(&held), "{out}");
    assert_eq!(out["stopped"], "OutOfMemory", "{out}");
}

#[tokio::test]
async fn directory_listings_held_open_are_capped() {
    let sb = TestSandbox::new();
    let report = hostile(&sb, json!({"mode": "hold-listings", "count": 1000}), limits()).await;
    let out = output(&report);
    assert_eq!(out["held"], 16, "{out}");
    assert_eq!(out["stopped"], "OutOfMemory", "{out}");
}

#[tokio::test]
async fn a_handle_table_too_small_for_the_step_ends_in_handle_limit_not_a_bare_trap() {
    let sb = TestSandbox::new();
    // The guest's own start-up (preopens, stdout, stderr) needs a few.
    let report = hostile(
        &sb,
        json!({"mode": "echo", "id": 1}),
        LimitOverrides {
            handles: Some(1),
            ..limits()
        },
    )
    .await;
    assert_eq!(
        report.outcome,
        Outcome::HandleLimit {
            limit: 1,
            host_wide: false
        }
    );
}

#[tokio::test]
async fn the_host_descriptor_budget_leaves_room_for_the_host() {
    let sb = TestSandbox::new();
    let open_limit = std::fs::read_to_string("/proc/self/limits")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3)?.parse::<u64>().ok())
        .unwrap();
    let budget = sb.sandbox.guest_descriptors();
    assert!(
        budget > 0 && budget <= open_limit - 1024,
        "{budget} of {open_limit}"
    );
}
