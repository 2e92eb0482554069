//! The `stepbox` command line: outputs, one-line errors and exit codes.

use std::process::{Command, Output};

/// Runs the CLI with the shared component cache and a journal of its own,
/// so that tests running at once never share a database.
pub(crate) fn stepbox(args: &[&str]) -> Output {
    let cache = super::cache_dir();
    let journal = tempfile::tempdir().unwrap();
    Command::new(env!("CARGO_BIN_EXE_stepbox"))
        .args(args)
        .arg("--cache-dir")
        .arg(&cache)
        .arg("--db")
        .arg(journal.path().join("stepbox.db"))
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn guest(name: &str) -> String {
    stepbox_tests::guest(name).display().to_string()
}

pub(crate) fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Exit code 2 and exactly one line on stderr, containing `needle`.
fn assert_bad_input(out: &Output, needle: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    assert!(err.contains(needle), "`{needle}` not in: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn step_prints_the_output_json() {
    let out = stepbox(&["step", &guest("hello"), "--input", r#"{"name":"cli"}"#]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["message"], "Hello, cli!");
}

#[test]
fn step_reads_input_from_a_file_and_from_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("input.json");
    std::fs::write(&file, r#"{"name":"file"}"#).unwrap();
    let out = stepbox(&[
        "step",
        &guest("hello"),
        "--input",
        &format!("@{}", file.display()),
    ]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Hello, file!"),
        "{}",
        stderr(&out)
    );

    let mut child = Command::new(env!("CARGO_BIN_EXE_stepbox"))
        .args(["step", &guest("hello"), "--input", "-", "--cache-dir"])
        .arg(super::cache_dir())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(br#"{"name":"stdin"}"#)
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("Hello, stdin!"));
}

#[test]
fn each_limit_outcome_has_its_exit_code_and_names_the_limit() {
    let hostile = guest("hostile");
    let cases: &[(&[&str], i32, &str)] = &[
        (
            &["--input", r#"{"mode":"spin"}"#, "--fuel", "1000000"],
            20,
            "1000000 fuel",
        ),
        (
            &["--input", r#"{"mode":"memory-bomb"}"#, "--memory", "8MiB"],
            21,
            "8.0 MiB",
        ),
        (
            &["--input", r#"{"mode":"sleep","ms":60000}"#, "--timeout", "200ms"],
            22,
            "200ms",
        ),
        (
            &["--input", r#"{"mode":"panic"}"#],
            25,
            "hostile guest panicked on purpose",
        ),
        (
            &[
                "--input",
                r#"{"mode":"error","kind":"retryable","message":"later"}"#,
            ],
            11,
            "retryable: later",
        ),
    ];
    for (args, code, needle) in cases {
        let mut full = vec!["step", hostile.as_str()];
        full.extend_from_slice(args);
        let out = stepbox(&full);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(*code), "{args:?}: {err}");
        let line = err
            .lines()
            .find(|l| l.starts_with("error: "))
            .unwrap_or_else(|| panic!("{err}"));
        assert!(line.contains(needle), "{args:?}: `{needle}` not in {line}");
    }
}

#[test]
fn json_report_has_outcome_usage_and_log() {
    let out = stepbox(&["step", &guest("hello"), "--input", r#"{"name":"x"}"#, "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["outcome"]["kind"], "completed");
    assert_eq!(report["outcome"]["output"]["message"], "Hello, x!");
    assert!(report["usage"]["fuel_consumed"].as_u64().unwrap() > 0);
}

#[test]
fn bad_input_is_one_line_and_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.wasm");
    std::fs::write(&text, "just text").unwrap();
    let core = dir.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\x00\x00\x00").unwrap();
    let hello = guest("hello");

    assert_bad_input(&stepbox(&["step", "/no/such.wasm"]), "/no/such.wasm");
    assert_bad_input(
        &stepbox(&["step", text.to_str().unwrap()]),
        "not a WebAssembly file",
    );
    assert_bad_input(
        &stepbox(&["step", core.to_str().unwrap()]),
        "core WebAssembly module",
    );
    assert_bad_input(
        &stepbox(&["step", &guest("not-a-step")]),
        "does not fit the stepbox step world",
    );
    assert_bad_input(&stepbox(&["step", &hello, "--input", "{nope"]), "not valid JSON");
    assert_bad_input(
        &stepbox(&["step", &hello, "--input", "@/no/input.json"]),
        "/no/input.json",
    );
    assert_bad_input(&stepbox(&["step", &hello, "--memory", "lots"]), "lots");
    assert_bad_input(&stepbox(&["step", &hello, "--timeout", "soon"]), "soon");
    assert_bad_input(&stepbox(&["step", &hello, "--fuel", "-3"]), "-3");
    assert_bad_input(&stepbox(&["step"]), "COMPONENT");
    assert_bad_input(&stepbox(&["frobnicate"]), "frobnicate");
}

#[test]
fn inspect_reports_fit_and_misfit() {
    let out = stepbox(&["inspect", &guest("hello")]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(text.contains("fits the stepbox step world"), "{text}");
    assert!(text.contains("stepbox:step/host@0.1.0"), "{text}");

    let out = stepbox(&["inspect", &guest("not-a-step")]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3));
    assert!(text.contains("does NOT fit"), "{text}");
    assert!(text.contains("`run`"), "{text}");
}

#[test]
fn help_and_version_work_for_every_command() {
    for args in [
        &["--help"][..],
        &["step", "--help"],
        &["inspect", "--help"],
        &["run", "--help"],
        &["validate", "--help"],
        &["plan", "--help"],
        &["--version"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_stepbox"))
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert!(!out.stdout.is_empty());
    }
    let help = Command::new(env!("CARGO_BIN_EXE_stepbox"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("Exit codes"));
}

/// Writes a workflow file whose `component: NAME.wasm` lines point at the built guests.
fn workflow_file(dir: &std::path::Path, yaml: &str) -> String {
    let mut yaml = yaml.to_owned();
    for name in stepbox_tests::GUESTS {
        yaml = yaml.replace(
            &format!("component: {name}.wasm"),
            &format!("component: {}", guest(name)),
        );
    }
    let file = dir.join("workflow.yaml");
    std::fs::write(&file, yaml).unwrap();
    file.display().to_string()
}

const DOCUMENTS: &str = r#"
name: documents
steps:
  - id: split
    component: split.wasm
    input: {text: "${input.text}", lines_per_chunk: 1}
  - id: count
    component: wordcount.wasm
    needs: [split]
    for_each: ${steps.split.chunks}
    input: {text: "${item}", top: 100}
  - id: merge
    component: merge.wasm
    needs: [count]
    input: {counts: "${steps.count}", top: 1}
"#;

#[test]
fn run_prints_the_workflows_output() {
    let dir = tempfile::tempdir().unwrap();
    let file = workflow_file(dir.path(), DOCUMENTS);
    let out = stepbox(&["run", &file, "--input", r#"{"text":"a b\nb c\nb"}"#]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"chunks": 3, "words": 5, "lines": 3, "top": [{"word": "b", "count": 3}]})
    );
}

#[test]
fn run_json_reports_every_step_with_its_usage() {
    let dir = tempfile::tempdir().unwrap();
    let file = workflow_file(dir.path(), DOCUMENTS);
    let out = stepbox(&["run", &file, "--input", r#"{"text":"x\ny"}"#, "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["status"], "succeeded");
    let steps = report["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 3);
    assert_eq!(steps[1]["items"], 2);
    for step in steps {
        assert_eq!(step["outcome"], "completed");
        assert_eq!(step["attempts"], 1);
        assert!(step["usage"]["fuel_consumed"].as_u64().unwrap() > 0);
        assert!(step["usage"]["peak_memory"].as_u64().unwrap() > 0);
    }
}

#[test]
fn run_repeat_runs_many_workflows_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let file = workflow_file(dir.path(), DOCUMENTS);
    let out = stepbox(&[
        "run",
        &file,
        "--input",
        r#"{"text":"x"}"#,
        "--repeat",
        "30",
        "--parallel",
        "8",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 30);
    assert!(stderr(&out).contains("30 runs: 30 succeeded"), "{}", stderr(&out));
}

#[test]
fn a_failed_run_exits_with_its_steps_outcome_code() {
    let dir = tempfile::tempdir().unwrap();
    let file = workflow_file(
        dir.path(),
        "name: boom\nsteps:\n  - id: boom\n    component: hostile.wasm\n    input: {mode: panic}\n",
    );
    let out = stepbox(&["run", &file]);
    assert_eq!(out.status.code(), Some(25), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("step `boom` failed: trap"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn validate_and_plan_point_at_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let file = workflow_file(
        dir.path(),
        "name: loop\nsteps:\n  - id: a\n    component: hello.wasm\n    needs: [b]\n  - id: b\n    component: hello.wasm\n    needs: [a]\n",
    );
    let out = stepbox(&["validate", &file]);
    assert_bad_input(&out, "workflow.yaml:5:");
    assert!(stderr(&out).contains("a -> b -> a"), "{}", stderr(&out));

    let file = workflow_file(
        dir.path(),
        "name: x\nsteps:\n  - id: a\n    component: hello.wasm\n    colour: red\n",
    );
    assert_bad_input(
        &stepbox(&["plan", &file]),
        "workflow.yaml:5:5: unknown field `colour`",
    );

    let file = workflow_file(
        dir.path(),
        "name: x\nsteps:\n  - id: a\n    component: not-a-step.wasm\n",
    );
    assert_bad_input(&stepbox(&["validate", &file]), "workflow.yaml:4:16");

    let file = workflow_file(dir.path(), DOCUMENTS);
    let out = stepbox(&["plan", &file]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let plan = String::from_utf8_lossy(&out.stdout);
    assert!(plan.contains("level 1: count"), "{plan}");
    assert!(plan.contains("critical path: split -> count -> merge"), "{plan}");
    assert_eq!(stepbox(&["validate", &file]).status.code(), Some(0));
}

#[test]
fn the_configuration_file_sets_quotas_and_rejects_typos() {
    let dir = tempfile::tempdir().unwrap();
    let file = workflow_file(
        dir.path(),
        "name: fan\nsteps:\n  - id: s\n    component: hostile.wasm\n    for_each: [1, 2, 3]\n    input: {mode: echo, id: 1}\n",
    );
    let config = dir.path().join("stepbox.toml");
    std::fs::write(&config, "[quotas]\nmax_fan_out = 2\n").unwrap();
    let config = config.display().to_string();
    let out = stepbox(&["run", &file, "--config", &config]);
    assert_eq!(out.status.code(), Some(27), "{}", stderr(&out));
    assert!(stderr(&out).contains("quota exceeded"), "{}", stderr(&out));
    // A flag overrides the file.
    let out = stepbox(&["run", &file, "--config", &config, "--max-fan-out", "3"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    std::fs::write(dir.path().join("stepbox.toml"), "[quotas]\nmax_fan_outs = 2\n").unwrap();
    assert_bad_input(&stepbox(&["run", &file, "--config", &config]), "max_fan_outs");
}
