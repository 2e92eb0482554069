//! Attempts to leave the sandbox: every one is denied.

use serde_json::json;

use super::{TestSandbox, limits, output};

#[tokio::test]
async fn escapes_through_paths_symlinks_env_and_sockets_are_denied() {
    // Make sure there is something to leak if the sandbox were open.
    // SAFETY: set before any thread of this test reads the environment.
    unsafe { std::env::set_var("STEPBOX_TEST_SECRET", "hunter2") };
    let sb = TestSandbox::new();
    let hostile = sb.load("hostile");
    let report = output(&sb.run(&hostile, json!({"mode": "escape"}), limits()).await);
    for attempt in ["parent_dir", "absolute", "symlink", "socket", "dotdot_listing"] {
        let result = report[attempt]
            .as_str()
            .unwrap_or_else(|| panic!("no `{attempt}` in {report}"));
        assert!(result.starts_with("denied"), "{attempt} was not denied: {result}");
    }
    assert_eq!(report["env"], json!([]), "the guest saw environment variables");
    assert!(sb.scratch_leftovers().is_empty());
    // The host's own files are untouched.
    assert!(std::path::Path::new("/etc/passwd").exists());
}

#[tokio::test]
async fn a_pooled_slot_holds_nothing_of_the_step_that_used_it_before() {
    // One slot, so every run reuses the memory the previous one dirtied.
    let sb = TestSandbox::with(|b| b.max_instances(1));
    let hostile = sb.load("hostile");
    let control = output(
        &sb.run(&hostile, json!({"mode": "residue", "again": true}), limits())
            .await,
    );
    assert_eq!(
        control["dirty_static"], 1024,
        "the check cannot see its own marker: {control}"
    );
    for run in 0..4 {
        let report = output(&sb.run(&hostile, json!({"mode": "residue"}), limits()).await);
        assert_eq!(
            report,
            json!({"dirty_static": 0, "dirty_grown": 0}),
            "run {run} saw what an earlier run wrote"
        );
    }
}
