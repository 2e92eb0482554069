//! Steps written in Python (componentize-py) and JavaScript
//! (componentize-js), run through `stepbox step` and `stepbox run` beside
//! Rust steps: their outputs, their typed errors, and each limit a Rust step
//! can hit, with the same outcome and exit code.

use std::process::Output;
use std::sync::OnceLock;

use serde_json::{Value, json};

use super::cli::{stderr, stepbox};

/// A built Python or JavaScript step. The first call builds them all and
/// runs each once, so that its compiled code is in the shared cache before
/// tests running at once ask for it: compiling a 12–18 MiB runtime takes
/// seconds, and several tests compiling it together would only compete.
fn component(name: &str) -> String {
    static WARM: OnceLock<()> = OnceLock::new();
    WARM.get_or_init(|| {
        for step in stepbox_tests::POLYGLOT {
            let path = stepbox_tests::polyglot(step).display().to_string();
            let out = stepbox(&["step", &path, "--input", "{}", "--json"]);
            let report: Value = serde_json::from_slice(&out.stdout)
                .unwrap_or_else(|e| panic!("{step}: {e}: {}", stderr(&out)));
            assert_ne!(report["outcome"]["kind"], "host-failure", "{step}: {report}");
        }
    });
    stepbox_tests::polyglot(name).display().to_string()
}

/// `stepbox step COMPONENT --input INPUT --json` and its extra arguments:
/// the process's output and the report's outcome.
fn step(component: &str, input: &Value, extra: &[&str]) -> (Output, Value) {
    let input = input.to_string();
    let mut args = vec!["step", component, "--input", &input, "--json"];
    args.extend_from_slice(extra);
    let out = stepbox(&args);
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{component} {extra:?}: {e}: {}", stderr(&out)));
    (out, report["outcome"].clone())
}

/// The output of a step that completed; panics with its outcome otherwise.
fn completed(component: &str, input: &Value) -> Value {
    let (out, outcome) = step(component, input, &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{component}: {outcome}: {}",
        stderr(&out)
    );
    assert_eq!(outcome["kind"], "completed", "{outcome}");
    outcome["output"].clone()
}

#[test]
fn the_python_wordcount_answers_what_the_rust_wordcount_answers() {
    let python = component("wordcount-py");
    let rust = stepbox_tests::guest("wordcount").display().to_string();
    for input in [
        json!({"text": "the cat and the hat", "top": 1}),
        json!({"text": "Didn't 'quote' THE the.\nÉté été 3 x_y\r\nlast\n", "top": 20}),
        json!({"text": "b a b a c", "top": 2}),
        json!({"text": "a\n\nb", "top": 0}),
        json!({"text": ""}),
    ] {
        assert_eq!(completed(&python, &input), completed(&rust, &input), "{input}");
    }
    assert_eq!(
        completed(&python, &json!({"text": "the cat and the hat", "top": 1})),
        json!({"words": 5, "unique": 4, "lines": 1, "top": [{"word": "the", "count": 2}]})
    );
}

#[test]
fn the_javascript_transform_filters_sorts_picks_renames_and_limits() {
    let js = component("transform-js");
    let records = json!([
        {"word": "the", "count": 2, "lang": "en"},
        {"word": "cat", "count": 1, "lang": "en"},
        {"word": "été", "count": 3, "lang": "fr"},
        {"word": "and", "count": 2, "lang": "en"},
    ]);
    let out = completed(
        &js,
        &json!({
            "records": records,
            "where": {"count": {"min": 2}, "lang": {"in": ["en", "fr"]}},
            "sort": [{"by": "count", "descending": true}, {"by": "word"}],
            "pick": ["word", "count"],
            "rename": {"word": "term"},
            "limit": 2,
        }),
    );
    assert_eq!(
        out,
        json!({"records": [{"term": "été", "count": 3}, {"term": "and", "count": 2}], "count": 2, "dropped": 2})
    );
    let all = completed(&js, &json!({"records": records, "where": {"lang": "fr"}}));
    assert_eq!(all["records"], json!([{"word": "été", "count": 3, "lang": "fr"}]));
}

#[test]
fn bad_input_is_an_invalid_input_step_error_with_its_exit_code() {
    let cases = [
        ("wordcount-py", json!({"txt": "a"}), "unknown field `txt`"),
        ("wordcount-py", json!({"text": 1}), "`text` must be a string"),
        (
            "wordcount-py",
            json!({"text": "a", "top": -1}),
            "`top` must be a non-negative integer",
        ),
        ("transform-js", json!([1]), "input must be an object"),
        (
            "transform-js",
            json!({"records": [1]}),
            "records[0] is not an object",
        ),
        (
            "transform-js",
            json!({"records": [], "where": {"a": {"gt": 1}}}),
            "unknown operator `gt`",
        ),
    ];
    for (name, input, needle) in cases {
        let (out, outcome) = step(&component(name), &input, &[]);
        assert_eq!(out.status.code(), Some(10), "{name} {input}: {}", stderr(&out));
        assert_eq!(outcome["kind"], "guest-error", "{outcome}");
        assert_eq!(outcome["error"], "invalid-input", "{outcome}");
        let message = outcome["message"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "{name}: `{needle}` not in {message}");
    }
}

#[test]
fn python_and_javascript_steps_end_in_each_limits_typed_outcome() {
    let scratch_write = json!({"mode": "scratch-write", "bytes": 8 << 20});
    let cases: &[(Value, &[&str], &str, i32)] = &[
        (
            json!({"mode": "spin"}),
            &["--fuel", "100000000"],
            "out-of-fuel",
            20,
        ),
        (
            json!({"mode": "memory-bomb"}),
            &["--memory", "48MiB"],
            "memory-limit",
            21,
        ),
        (json!({"mode": "spin"}), &["--timeout", "300ms"], "timeout", 22),
        (scratch_write, &["--scratch", "1MiB"], "scratch-limit", 28),
        (
            json!({"mode": "error", "kind": "retryable", "message": "later"}),
            &[],
            "guest-error",
            11,
        ),
    ];
    for (name, panic) in [("hostile-py", "raise"), ("hostile-js", "throw")] {
        let hostile = component(name);
        for (input, flags, kind, code) in cases {
            let (out, outcome) = step(&hostile, input, flags);
            assert_eq!(outcome["kind"], *kind, "{name} {input} {flags:?}: {outcome}");
            assert_eq!(out.status.code(), Some(*code), "{name} {input}: {}", stderr(&out));
        }
        // An exception that is not a step error is a trap, as a Rust panic is.
        let (out, outcome) = step(&hostile, &json!({"mode": panic}), &[]);
        assert_eq!(outcome["kind"], "trap", "{name}: {outcome}");
        assert_eq!(out.status.code(), Some(25), "{name}: {}", stderr(&out));
        // Within its quota the same write completes.
        let (_, outcome) = step(&hostile, &json!({"mode": "scratch-write", "bytes": 100_000}), &[]);
        assert_eq!(
            outcome["output"],
            json!({"written": 100_000}),
            "{name}: {outcome}"
        );
    }
}

#[test]
fn a_memory_limit_below_the_runtimes_snapshot_fails_at_instantiation() {
    // The pre-initialised heaps: about 12.4 MiB for Python, 9.1 MiB for JS.
    for name in ["wordcount-py", "transform-js"] {
        let (out, outcome) = step(
            &component(name),
            &json!({"text": "", "records": []}),
            &["--memory", "8MiB"],
        );
        assert_eq!(outcome["kind"], "memory-limit", "{name}: {outcome}");
        assert_eq!(out.status.code(), Some(21));
    }
}

#[test]
fn a_workflow_runs_rust_python_and_javascript_steps_together() {
    let dir = tempfile::tempdir().unwrap();
    let rust = stepbox_tests::guest("wordcount").display().to_string();
    let (python, js) = (component("wordcount-py"), component("transform-js"));
    let yaml = format!(
        r#"
name: polyglot
steps:
  - id: rust
    component: {rust}
    input: {{text: "${{input.text}}", top: 10}}
  - id: python
    component: {python}
    input: {{text: "${{input.text}}", top: 10}}
  - id: shape
    component: {js}
    needs: [python]
    input:
      records: ${{steps.python.top}}
      where: {{count: {{min: 2}}}}
      rename: {{word: term}}
output: {{rust: "${{steps.rust}}", python: "${{steps.python}}", frequent: "${{steps.shape.records}}"}}
"#
    );
    let file = dir.path().join("polyglot.yaml");
    std::fs::write(&file, yaml).unwrap();
    let file = file.display().to_string();
    let out = stepbox(&["run", &file, "--input", r#"{"text":"b a b\na c b"}"#]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let output: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(output["rust"], output["python"], "{output}");
    assert_eq!(
        output["frequent"],
        json!([{"term": "b", "count": 3}, {"term": "a", "count": 2}])
    );

    // Input that is not text fails the run with the steps' typed error.
    let out = stepbox(&["run", &file, "--input", r#"{"text":{"not":"text"}}"#, "--json"]);
    let report: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", stderr(&out)));
    assert_eq!(report["status"], "failed", "{report}");
    assert_eq!(report["failed_kind"], "invalid-input", "{report}");
}

/// A sandbox's pool is sized by instances, and a Python step is 14 core
/// module instances (JavaScript 4, Rust 3): a sandbox for `n` instances must
/// run `n` Python steps at once, not fail them for want of core instances.
#[tokio::test]
async fn a_sandbox_for_two_instances_runs_two_python_steps_at_once() {
    component("hostile-py");
    let sb = super::TestSandbox::with(|b| b.max_instances(2));
    let step = sb
        .sandbox
        .load_file(stepbox_tests::polyglot("hostile-py"))
        .unwrap();
    let spin = json!({"mode": "spin"});
    let limits = super::timeout(std::time::Duration::from_millis(500));
    let (a, b) = tokio::join!(sb.run(&step, spin.clone(), limits), sb.run(&step, spin, limits));
    for report in [a, b] {
        assert_eq!(
            report.outcome.kind(),
            stepbox::OutcomeKind::Timeout,
            "{}",
            report.outcome
        );
    }
}
