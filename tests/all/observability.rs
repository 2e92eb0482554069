//! Observability: metrics that follow the work done, reports that find the
//! slow step and the step near its limit, the timeline picture, and logs
//! that carry run and step ids.

use std::process::{Command, Output};

use serde_json::{Value, json};
use stepbox::scheduler::{RunStatus, Scheduler, SchedulerConfig};
use stepbox::workflow::Workflow;

use super::TestSandbox;

fn hostile() -> String {
    stepbox_tests::guest("hostile").display().to_string()
}

fn metric(text: &str, line_start: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no `{line_start}` in:\n{text}"))
}

#[tokio::test]
async fn metrics_change_as_the_work_they_count_is_done() {
    let sb = TestSandbox::new();
    let scheduler = Scheduler::new(sb.sandbox.clone(), SchedulerConfig::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("m.yaml");
    std::fs::write(
        &file,
        format!(
            "name: m
steps:
  - id: flaky
    component: {h}
    input: {{mode: whoami, fail_below: 3}}
    retry: {{max_attempts: 3, backoff: 1ms, retry_on: [retryable]}}
  - id: fan
    component: {h}
    needs: [flaky]
    for_each: [1, 2, 3, 4]
    input: {{mode: spin-for, iterations: 1000}}
",
            h = hostile()
        ),
    )
    .unwrap();
    let wf = scheduler.prepare(Workflow::from_file(&file).unwrap()).unwrap();
    let before = scheduler.metrics_text();
    assert!(!before.contains("stepbox_step_runs_total{"), "{before}");

    for round in 1..=2 {
        let report = scheduler.submit(&wf, json!({})).unwrap().wait().await;
        assert_eq!(report.status, RunStatus::Succeeded, "{:?}", report.error);
        let text = scheduler.metrics_text();
        let r = f64::from(round);
        let runs = |outcome: &str| {
            metric(
                &text,
                &format!(r#"stepbox_step_runs_total{{component="hostile.wasm",outcome="{outcome}"}}"#),
            )
        };
        assert_eq!(runs("completed"), 5.0 * r, "1 flaky success and 4 items per run");
        assert_eq!(runs("retryable"), 2.0 * r);
        assert_eq!(
            metric(&text, r#"stepbox_step_retries_total{component="hostile.wasm"}"#),
            2.0 * r
        );
        assert_eq!(metric(&text, r#"stepbox_workflows_total{status="succeeded"}"#), r);
        assert_eq!(
            metric(
                &text,
                r#"stepbox_step_duration_seconds_count{component="hostile.wasm"}"#
            ),
            7.0 * r
        );
        assert!(metric(&text, r#"stepbox_step_fuel_total{component="hostile.wasm"}"#) > 0.0);
        assert_eq!(metric(&text, "stepbox_instances_in_use "), 0.0);
        assert_eq!(metric(&text, "stepbox_admission_queue_depth "), 0.0);
        assert_eq!(metric(&text, r#"stepbox_breaker_state{component="#), 0.0);
    }
}

/// The CLI with a journal in `dir`.
fn stepbox(dir: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_stepbox"))
        .args(args)
        .arg("--cache-dir")
        .arg(super::cache_dir())
        .arg("--db")
        .arg(dir.join("j.db"))
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

/// Where the test guests are built: `bench --components`.
fn components_dir() -> String {
    stepbox_tests::guest("hello")
        .parent()
        .unwrap()
        .display()
        .to_string()
}

fn ok(out: &Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_report_finds_the_slow_step_and_the_step_near_its_memory_limit() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("r.yaml");
    std::fs::write(
        &file,
        format!(
            "name: shape
steps:
  - id: start
    component: {h}
    input: {{mode: spin-for, iterations: 10}}
  - id: quick
    component: {h}
    needs: [start]
    input: {{mode: spin-for, iterations: 10}}
  - id: slow
    component: {h}
    needs: [start]
    input: {{mode: sleep, ms: 400}}
  - id: hungry
    component: {h}
    needs: [start]
    memory: 16MiB
    input: {{mode: alloc, bytes: 13631488}}
  - id: end
    component: {h}
    needs: [quick, slow, hungry]
    input: {{mode: spin-for, iterations: 10}}
",
            h = hostile()
        ),
    )
    .unwrap();
    let file = file.display().to_string();
    ok(&stepbox(dir.path(), &["run", &file]));

    let analysis: Value =
        serde_json::from_str(&ok(&stepbox(dir.path(), &["report", "1", "--json"]))).unwrap();
    assert_eq!(analysis["critical_path"], json!(["start", "slow", "end"]));
    let insights = analysis["insights"].as_array().unwrap();
    assert_eq!(insights[0]["kind"], "bottleneck");
    assert_eq!(insights[0]["step"], "slow");
    let memory: Vec<&Value> = insights.iter().filter(|i| i["kind"] == "memory").collect();
    assert_eq!(memory.len(), 1, "{insights:?}");
    assert_eq!(memory[0]["step"], "hungry");
    let share = memory[0]["share"].as_f64().unwrap();
    assert!((0.8..1.0).contains(&share), "{share}");
    assert!(memory[0]["message"].as_str().unwrap().contains("raise `memory`"));

    let text = ok(&stepbox(dir.path(), &["report", "1"]));
    assert!(text.contains("critical path: start -> slow -> end"), "{text}");
    assert!(text.contains("bottleneck"), "{text}");

    let svg_file = dir.path().join("run.svg");
    ok(&stepbox(
        dir.path(),
        &["report", "1", "--svg", svg_file.to_str().unwrap()],
    ));
    let svg = std::fs::read_to_string(&svg_file).unwrap();
    assert_eq!(svg.matches(r#"<g class="lane""#).count(), 5);
    assert!(svg.contains("★ slow"));

    let per_component = ok(&stepbox(dir.path(), &["report", "--workflow", "shape"]));
    assert!(per_component.contains("hostile.wasm"), "{per_component}");
}

#[test]
fn the_cli_exposes_metrics_from_the_journal_and_while_it_runs() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("one.yaml");
    std::fs::write(
        &file,
        format!(
            "name: one\nsteps:\n  - id: a\n    component: {}\n    input: {{mode: spin-for, iterations: 5}}\n",
            hostile()
        ),
    )
    .unwrap();
    let metrics_file = dir.path().join("live.prom");
    ok(&stepbox(
        dir.path(),
        &[
            "run",
            file.to_str().unwrap(),
            "--repeat",
            "3",
            "--metrics-file",
            metrics_file.to_str().unwrap(),
        ],
    ));
    let live = std::fs::read_to_string(&metrics_file).unwrap();
    assert_eq!(
        metric(&live, r#"stepbox_workflows_total{status="succeeded"}"#),
        3.0
    );
    assert!(metric(&live, "stepbox_journal_batch_events_count") >= 1.0);

    let from_journal = ok(&stepbox(dir.path(), &["metrics"]));
    assert_eq!(
        metric(
            &from_journal,
            r#"stepbox_step_runs_total{component="hostile.wasm",outcome="completed"}"#
        ),
        3.0
    );
    assert_eq!(
        metric(&from_journal, r#"stepbox_workflows_total{status="succeeded"}"#),
        3.0
    );
    // A real checker reads both as typed, documented families.
    promtool_accepts(&live);
    promtool_accepts(&from_journal);
}

/// `promtool check metrics` (Debian's `prometheus`, installed by
/// scripts/setup) finds nothing wrong with `text`.
pub(crate) fn promtool_accepts(text: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is installed by scripts/setup");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn json_logs_carry_the_run_and_the_step() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("log.yaml");
    std::fs::write(
        &file,
        format!("name: log\nsteps:\n  - id: chatty\n    component: {}\n    input: {{mode: log-flood, count: 1}}\n", hostile()),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_stepbox"))
        .args([
            "run",
            file.to_str().unwrap(),
            "--log-format",
            "json",
            "--cache-dir",
        ])
        .arg(super::cache_dir())
        .arg("--db")
        .arg(dir.path().join("j.db"))
        .env("RUST_LOG", "guest=info")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr
        .lines()
        .find(|l| l.contains(r#""target":"guest""#))
        .unwrap_or_else(|| panic!("no guest log line in: {stderr}"));
    let record: Value = serde_json::from_str(line).unwrap();
    let spans = record["spans"].as_array().unwrap();
    assert!(
        spans
            .iter()
            .any(|s| s["name"] == "run" && s["run"] == 1 && s["workflow"] == "log"),
        "{line}"
    );
    assert!(
        spans
            .iter()
            .any(|s| s["name"] == "step" && s["step"] == "chatty" && s["attempt"] == 1),
        "{line}"
    );
}

#[test]
fn the_regression_check_flags_a_slowed_scenario_and_passes_an_unchanged_one() {
    let dir = tempfile::tempdir().unwrap();
    let components = components_dir();
    let baselines = dir.path().join("baselines").display().to_string();
    let bench = |scenarios: &str, extra: &[&str]| {
        let mut args = vec![
            "bench",
            "--quick",
            "--repeat",
            "3",
            "--scenarios",
            scenarios,
            "--components",
            &components,
            "--baseline-dir",
            &baselines,
        ];
        args.extend_from_slice(extra);
        stepbox(dir.path(), &args)
    };
    let saved = ok(&bench("plan-10k,step-overhead", &["--save-baseline", "base"]));
    assert!(
        saved.contains("plan-10k") && saved.contains("step-overhead"),
        "{saved}"
    );

    // A scenario slowed on purpose (each repetition sleeps 300 ms more),
    // compared alone: the other one's noise on a busy machine is not the point.
    let out = bench(
        "plan-10k",
        &["--baseline", "base", "--inject-delay", "plan-10k=300ms"],
    );
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    let line = table.lines().find(|l| l.starts_with("plan-10k")).unwrap();
    assert!(line.ends_with("SLOWER"), "{table}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("slower than the baseline: plan-10k"));

    // The same results again: nothing moved.
    let base_file = format!("{baselines}/base.json");
    let out = stepbox(
        dir.path(),
        &[
            "bench",
            "--from",
            &base_file,
            "--baseline",
            "base",
            "--baseline-dir",
            &baselines,
        ],
    );
    let table = ok(&out);
    assert_eq!(
        table.lines().filter(|l| l.ends_with("same")).count(),
        2,
        "{table}"
    );

    let out = stepbox(
        dir.path(),
        &["bench", "--scenarios", "nope", "--components", &components],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown scenario `nope`"));
}

#[test]
fn the_server_and_outbound_http_scenarios_run_over_http_and_report_figures() {
    let dir = tempfile::tempdir().unwrap();
    let components = components_dir();
    let names = [
        "serve-3step",
        "serve-3step-p50",
        "serve-batch",
        "http-call",
        "http-call-native",
    ];
    let out = ok(&stepbox(
        dir.path(),
        &[
            "bench",
            "--quick",
            "--repeat",
            "1",
            "--scenarios",
            &names.join(","),
            "--components",
            &components,
            "--json",
        ],
    ));
    let results: serde_json::Value = serde_json::from_str(&out).unwrap();
    let text = results.to_string();
    for name in names {
        let figure = results["results"]["scenarios"]
            .as_array()
            .and_then(|all| all.iter().find(|m| m["name"] == name))
            .and_then(|m| m["samples"][0].as_f64());
        assert!(figure.is_some_and(|f| f > 0.0), "{name}: {text}");
    }
}
