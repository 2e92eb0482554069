//! The loader's tests: what loads, and where each error points.

use std::collections::HashMap;
use std::path::PathBuf;

use serde_json::json;

use super::super::{InputSource, Scope};
use super::*;

fn load_ok(text: &str) -> Workflow {
    Workflow::from_str(text, Path::new("flows/wf.yaml")).unwrap_or_else(|e| panic!("{e}"))
}

/// Loads `text`, expecting an error; returns it with its one-line message.
fn load_err(text: &str) -> (WorkflowError, String) {
    let err = Workflow::from_str(text, Path::new("flows/wf.yaml")).expect_err("expected an error");
    let line = err.to_string();
    assert!(!line.contains('\n'), "{line}");
    assert!(
        line.starts_with(&format!("flows/wf.yaml:{}:{}: ", err.line, err.column)),
        "{line}"
    );
    (err, line)
}

fn at(err: &WorkflowError) -> (usize, usize) {
    (err.line, err.column)
}

const FULL: &str = r#"name: docs
description: Split and count.
timeout: 1m
defaults:
  fuel: 1000000
  memory: 64MiB
  timeout: 5s
  retry: {max_attempts: 2}
output: ${steps.merge}
steps:
  - id: split
    component: ../target/split.wasm
    input: {text: "${input.text}"}
    timeout: 1s
  - id: count
    component: count.wasm
    needs: split
    for_each: ${steps.split.chunks}
    max_parallel: 4
    input:
      text: ${item}
      n: ${index}
    memory: 8MiB
    retry:
      max_attempts: 3
      backoff: 50ms
      max_backoff: 1s
      multiplier: 1.5
      jitter: false
      retry_on: [retryable, timeout]
    continue_on_error: true
  - id: merge
    component: /abs/merge.wasm
    needs: [count]
    input: ${steps.count}
"#;

#[test]
fn a_full_workflow_loads_with_defaults_merged_under_step_values() {
    let wf = load_ok(FULL);
    assert_eq!(wf.name, "docs");
    assert_eq!(wf.description.as_deref(), Some("Split and count."));
    assert_eq!(wf.timeout, Some(Duration::from_secs(60)));
    assert_eq!(wf.source, PathBuf::from("flows/wf.yaml"));
    let split = wf.step("split").unwrap();
    assert_eq!(&*split.component, Path::new("flows/../target/split.wasm"));
    assert_eq!(split.location, Location { line: 11, column: 9 });
    assert_eq!(split.component_location, Location { line: 12, column: 16 });
    assert_eq!(split.limits.timeout, Some(Duration::from_secs(1)));
    assert_eq!(split.limits.fuel, Some(1_000_000));
    assert_eq!(split.limits.memory, Some(ByteSize::mib(64)));
    assert_eq!(split.retry.max_attempts, 2, "defaults' retry applies");
    let count = wf.step("count").unwrap();
    assert_eq!(
        wf.needs(wf.step_index("count").unwrap()).collect::<Vec<_>>(),
        ["split"]
    );
    assert_eq!(count.limits.memory, Some(ByteSize::mib(8)));
    assert_eq!(count.limits.timeout, Some(Duration::from_secs(5)));
    assert_eq!(count.for_each.as_ref().unwrap().max_parallel, Some(4));
    assert_eq!(
        *count.retry,
        RetryPolicy {
            max_attempts: 3,
            backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
            multiplier: 1.5,
            jitter: false,
            retry_on: vec![OutcomeKind::Retryable, OutcomeKind::Timeout],
        }
    );
    assert!(count.continue_on_error);
    assert_eq!(
        &*wf.step("merge").unwrap().component,
        Path::new("/abs/merge.wasm")
    );
    assert_eq!(wf.step_index("merge"), Some(2));
    assert!(wf.step("nope").is_none());
}

#[test]
fn scratch_and_handle_limits_are_read_per_step_over_the_defaults() {
    let wf = load_ok(
        "name: w\ndefaults: {scratch: 8MiB, scratch_entries: 100, handles: 32}\nsteps:\n  - {id: a, component: a.wasm}\n  - {id: b, component: b.wasm, scratch: 1GiB, scratch_entries: 5, handles: 600}\n",
    );
    let a = &wf.step("a").unwrap().limits;
    assert_eq!(
        (a.scratch, a.scratch_entries, a.handles),
        (Some(ByteSize::mib(8)), Some(100), Some(32))
    );
    let b = &wf.step("b").unwrap().limits;
    assert_eq!(
        (b.scratch, b.scratch_entries, b.handles),
        (Some(ByteSize::gib(1)), Some(5), Some(600))
    );
    let (err, line) = load_err("name: w\nsteps:\n  - {id: a, component: a.wasm, handles: 5000000000}\n");
    assert!(matches!(err.kind, WorkflowErrorKind::WrongType { .. }), "{line}");
    let (_, line) = load_err("name: w\nsteps:\n  - {id: a, component: a.wasm, scratch: lots}\n");
    assert!(line.contains("scratch"), "{line}");
}

#[test]
fn http_grants_and_secrets_are_read_per_step_and_bad_ones_point_at_the_item() {
    let wf = load_ok(
        "name: w\nsteps:\n  - id: a\n    component: a.wasm\n    allow_http: [\"API.example.com:443\", \"127.0.0.1:8080\"]\n    secrets: [API_TOKEN, _x1]\n  - {id: b, component: b.wasm}\n",
    );
    let http = wf.steps[0].http.as_ref().unwrap();
    let grants: Vec<String> = http.allow.iter().map(ToString::to_string).collect();
    assert_eq!(grants, ["api.example.com:443", "127.0.0.1:8080"]);
    assert_eq!(&*wf.steps[0].secrets, [Arc::from("API_TOKEN"), Arc::from("_x1")]);
    assert!(wf.steps[1].http.is_none() && wf.steps[1].secrets.is_empty());

    let (err, line) = load_err(
        "name: w\nsteps:\n  - id: a\n    component: a.wasm\n    allow_http: [\"ok.example:1\", \"no-port\"]\n",
    );
    assert_eq!(at(&err), (5, 34), "{line}");
    assert!(line.contains("HOST:PORT"), "{line}");
    let (_, line) = load_err("name: w\nsteps:\n  - {id: a, component: a.wasm, allow_http: \"x:1\"}\n");
    assert!(line.contains("a list of HOST:PORT strings"), "{line}");
    let (err, line) = load_err("name: w\nsteps:\n  - {id: a, component: a.wasm, secrets: [OK, 9lives]}\n");
    assert_eq!(at(&err).0, 3);
    assert!(line.contains("`9lives` is not a secret name"), "{line}");
    let (_, line) = load_err("name: w\nsteps:\n  - {id: a, component: a.wasm, secrets: [T, T]}\n");
    assert!(line.contains("`T` is named twice"), "{line}");
}

#[test]
fn retry_defaults_to_one_attempt_on_retryable() {
    let wf = load_ok(
        "name: w\nsteps:\n  - id: a\n    component: a.wasm\n    retry: {max_attempts: 4}\n  - id: b\n    component: b.wasm\n",
    );
    let a = &wf.steps[0].retry;
    assert_eq!(
        (a.max_attempts, a.backoff, a.max_backoff),
        (4, Duration::from_millis(100), Duration::from_secs(10))
    );
    assert_eq!((a.multiplier, a.jitter), (2.0, true));
    assert_eq!(a.retry_on, [OutcomeKind::Retryable]);
    assert_eq!(*wf.steps[1].retry, RetryPolicy::default());
    assert_eq!(RetryPolicy::default().max_attempts, 1);
    assert!(a.should_retry(3, OutcomeKind::Retryable));
    assert!(!a.should_retry(4, OutcomeKind::Retryable));
    assert!(!a.should_retry(1, OutcomeKind::Trap));
}

#[test]
fn json_files_load_like_the_same_yaml() {
    let yaml = "name: w\nsteps:\n  - id: a\n    component: a.wasm\n    input: {x: \"${input.x}\", n: [1, 2.5, null, true]}\n  - id: b\n    component: b.wasm\n    needs: [a]\n";
    let json = r#"{
  "name": "w",
  "steps": [
    {"id": "a", "component": "a.wasm", "input": {"x": "${input.x}", "n": [1, 2.5, null, true]}},
    {"id": "b", "component": "b.wasm", "needs": ["a"]}
  ]
}"#;
    let (y, j) = (load_ok(yaml), load_ok(json));
    assert_eq!(y.name, j.name);
    assert_eq!(y.steps.len(), j.steps.len());
    for (i, (ys, js)) in y.steps.iter().zip(&j.steps).enumerate() {
        assert_eq!((&ys.id, &ys.component), (&js.id, &js.component));
        assert!(y.needs(i).eq(j.needs(i)));
        // JSON objects come without their key order (serde_json sorts
        // them), so compare what the templates produce.
        let input = serde_json::json!({"x": 5});
        let no_steps = |_: &str| None;
        let scope = crate::workflow::Scope::new(&input, &no_steps);
        assert_eq!(y.eval_input(i, &scope).ok(), j.eval_input(i, &scope).ok());
    }
    assert_eq!(
        j.eval_input(
            0,
            &crate::workflow::Scope::new(&serde_json::json!({"x": 5}), &|_: &str| None)
        )
        .ok(),
        Some(serde_json::json!({"x": 5, "n": [1, 2.5, null, true]}))
    );
    assert_eq!(y.plan(), j.plan());
    // JSON errors have positions too.
    let (err, _) = load_err("{\n  \"name\": \"w\",\n  \"stepz\": []\n}");
    assert!(matches!(err.kind, WorkflowErrorKind::UnknownField { ref field, .. } if field == "stepz"));
    assert_eq!(at(&err), (3, 3));
}

/// Found by the workflow_json fuzz target: JSON parsers read `-0` as the
/// float -0.0 and YAML as the integer 0, so the same file read two ways
/// gave two inputs.
#[test]
fn negative_zero_reads_as_zero_in_json_and_yaml_alike() {
    let json =
        r#"{"name": "w", "steps": [{"id": "a", "component": "a.wasm", "input": {"n": [-0, -0.0, 0]}}]}"#;
    let yaml = format!("# read by the YAML parser\n{json}");
    let input = json!({});
    let no_steps = |_: &str| None;
    let scope = crate::workflow::Scope::new(&input, &no_steps);
    for text in [json, yaml.as_str()] {
        let evaluated = load_ok(text).eval_input(0, &scope).unwrap();
        assert_eq!(evaluated.to_string(), r#"{"n":[0,0,0]}"#, "{text}");
    }
}

/// The JSON read by the tree of nodes, without positions.
fn load_as_tree(text: &str) -> Workflow {
    let root = node::parse_json_unpositioned(text).unwrap();
    build(&root, Path::new("flows/wf.json")).unwrap_or_else(|e| panic!("{e:?}"))
}

#[test]
fn the_streaming_json_path_reads_what_the_tree_reads() {
    // Escapes make strings that cannot borrow from the text.
    let text = r#"{
  "name": "w", "description": "d", "timeout": "1m",
  "defaults": {"fuel": 1000, "memory": "1MiB", "timeout": "5s", "retry": {"max_attempts": 3}},
  "output": {"last": "${steps.s2}"},
  "steps": [
    {"id": "s1", "component": "a.wasm", "input": {"x": "${input.x}"}},
    {"id": "s2", "component": "a.wasm", "needs": ["s1", "s1"], "for_each": "${steps.s1.items}",
     "max_parallel": 2, "input": {"v": "${item}"}, "timeout": "1s", "retry": {"max_attempts": 1},
     "continue_on_error": true},
    {"id": "s3", "component": "../b.wasm", "needs": "s1", "fuel": 7}
  ]
}"#;
    let streamed = super::json::load(text, Path::new("flows/wf.json")).expect("the fast path reads it");
    assert_eq!(summary(&streamed), summary(&load_as_tree(text)));
    assert_eq!(&*streamed.steps[0].id, "s1");
    assert_eq!(streamed.needs(1).collect::<Vec<_>>(), ["s1"]);
    assert_eq!(streamed.steps[2].limits.timeout, Some(Duration::from_secs(5)));
    // One resolved path for the steps that name the same file.
    assert!(Arc::ptr_eq(
        &streamed.steps[0].component,
        &streamed.steps[1].component
    ));
}

#[test]
fn json_the_streaming_path_leaves_loads_through_the_tree_or_with_positions() {
    // Defaults after the steps: the steps were read without them.
    let late = r#"{"name": "w", "steps": [{"id": "a", "component": "a.wasm"}], "defaults": {"fuel": 9}}"#;
    assert!(super::json::load(late, Path::new("w.json")).is_none());
    assert_eq!(load_ok(late).steps[0].limits.fuel, Some(9));
    // Errors are found again with their positions.
    let dup = r#"{"name": "w", "steps": [
 {"id": "a", "component": "a.wasm"},
 {"id": "a", "component": "a.wasm"}]}"#;
    assert!(super::json::load(dup, Path::new("w.json")).is_none());
    let (err, _) = load_err(dup);
    assert!(matches!(err.kind, WorkflowErrorKind::DuplicateId { .. }), "{err}");
    assert_eq!(at(&err), (3, 9));
    let trailing = r#"{"name": "w", "steps": [{"id": "a", "component": "a.wasm"}]} x"#;
    assert!(super::json::load(trailing, Path::new("w.json")).is_none());
    assert!(matches!(load_err(trailing).0.kind, WorkflowErrorKind::Syntax(_)));
}

#[test]
fn dollar_brace_needs_no_quotes_in_block_style_but_does_in_flow_style() {
    let wf = load_ok(
        "name: w\noutput: ${steps.a.x}\nsteps:\n  - id: a\n    component: a.wasm\n    input: ${input}\n",
    );
    assert_eq!(
        wf.output.as_ref().unwrap().references().collect::<Vec<_>>(),
        ["a"]
    );
    let outputs = HashMap::from([("a".to_owned(), json!({"x": [1]}))]);
    let steps = |id: &str| outputs.get(id);
    let input = json!(7);
    let scope = Scope::new(&input, &steps);
    assert_eq!(wf.eval_input(0, &scope).unwrap(), json!(7));
    assert_eq!(wf.eval_output(&scope).unwrap(), json!([1]));
    // Unquoted inside a flow mapping, `}` ends the mapping: YAML rejects it.
    let (err, _) =
        load_err("name: w\nsteps:\n  - id: a\n    component: a.wasm\n    input: {t: ${input.t}}\n");
    assert!(matches!(err.kind, WorkflowErrorKind::Syntax(_)), "{err}");
    assert_eq!(err.line, 5);
}

#[test]
fn syntax_error_has_line_and_column() {
    let (err, line) = load_err("name: w\nsteps:\n  - id: a\n   component: [x\n");
    assert!(matches!(err.kind, WorkflowErrorKind::Syntax(_)), "{line}");
    assert!(err.line >= 3, "{line}");
}

#[test]
fn read_error_names_the_file() {
    let err = Workflow::from_file(Path::new("/nonexistent/wf.yaml")).unwrap_err();
    assert!(matches!(err.kind, WorkflowErrorKind::Read(_)));
    assert!(
        err.to_string().starts_with("/nonexistent/wf.yaml: cannot read"),
        "{err}"
    );
}

#[test]
fn from_file_resolves_components_next_to_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wf.yml");
    std::fs::write(&path, "name: w\nsteps:\n  - {id: a, component: a.wasm}\n").unwrap();
    let wf = Workflow::from_file(&path).unwrap();
    assert_eq!(*wf.steps[0].component, *dir.path().join("a.wasm"));
}

#[test]
fn unknown_fields_are_named_everywhere() {
    let cases = [
        ("name: w\nsteps: []\nextra: 1\n", "extra", (3, 1)),
        (
            "name: w\ndefaults: {fuel: 1, cpu: 2}\nsteps: []\n",
            "cpu",
            (2, 21),
        ),
        (
            "name: w\nsteps:\n  - id: a\n    component: a.wasm\n    nedds: [b]\n",
            "nedds",
            (5, 5),
        ),
        (
            "name: w\nsteps:\n  - id: a\n    component: a.wasm\n    retry: {attempts: 2}\n",
            "attempts",
            (5, 13),
        ),
    ];
    for (text, field, pos) in cases {
        let (err, line) = load_err(text);
        assert!(
            matches!(&err.kind, WorkflowErrorKind::UnknownField { field: f, .. } if f == field),
            "{line}"
        );
        assert!(line.contains(&format!("unknown field `{field}`")), "{line}");
        assert_eq!(at(&err), pos, "{line}");
    }
}

#[test]
fn missing_fields_point_at_their_mapping() {
    let (err, line) = load_err("steps:\n  - id: a\n    component: a.wasm\n");
    assert!(
        matches!(err.kind, WorkflowErrorKind::MissingField { field: "name", .. }),
        "{line}"
    );
    assert_eq!(at(&err), (1, 1));
    let (err, line) = load_err("name: w\nsteps:\n  - id: a\n    needs: []\n");
    assert!(
        matches!(
            err.kind,
            WorkflowErrorKind::MissingField {
                field: "component",
                ..
            }
        ),
        "{line}"
    );
    assert!(line.ends_with("missing field `component` in step `a`"), "{line}");
    assert_eq!(at(&err), (3, 5));
    let (err, _) = load_err("name: w\n");
    assert!(matches!(
        err.kind,
        WorkflowErrorKind::MissingField { field: "steps", .. }
    ));
}

#[test]
fn wrong_types_say_what_was_expected() {
    let (err, line) = load_err("name: [w]\nsteps: []\n");
    assert!(matches!(err.kind, WorkflowErrorKind::WrongType { .. }), "{line}");
    assert!(line.ends_with("`name` must be a string, found a list"), "{line}");
    assert_eq!(at(&err), (1, 7));
    let (err, line) = load_err("name: w\nsteps:\n  - id: a\n    component: a.wasm\n    fuel: -1\n");
    assert!(line.contains("`fuel` must be a non-negative integer"), "{line}");
    assert_eq!(at(&err), (5, 11));
}

#[test]
fn empty_workflow_is_rejected() {
    let (err, _) = load_err("name: w\nsteps: []\n");
    assert!(matches!(err.kind, WorkflowErrorKind::EmptyWorkflow));
    assert_eq!(at(&err), (2, 8));
}

#[test]
fn bad_step_ids_are_rejected() {
    let (err, _) = load_err("name: w\nsteps:\n  - id: a.b\n    component: a.wasm\n");
    assert!(matches!(err.kind, WorkflowErrorKind::BadId(ref id) if id == "a.b"));
    assert_eq!(at(&err), (3, 9));
}

#[test]
fn duplicate_id_says_where_the_first_one_is() {
    let (err, line) =
        load_err("name: w\nsteps:\n  - id: a\n    component: a.wasm\n  - id: a\n    component: b.wasm\n");
    assert!(
        matches!(err.kind, WorkflowErrorKind::DuplicateId { .. }),
        "{line}"
    );
    assert_eq!(at(&err), (5, 9));
    assert!(
        line.ends_with("duplicate step id `a` (first defined at 3:9)"),
        "{line}"
    );
}

#[test]
fn duplicate_field_is_rejected() {
    let result = Workflow::from_str(
        "name: w\nname: v\nsteps:\n  - {id: a, component: a.wasm}\n",
        Path::new("w.yaml"),
    );
    // Either the parser or the loader rejects it, with a position.
    let err = result.unwrap_err();
    assert_eq!(err.line, 2, "{err}");
}

#[test]
fn unknown_need_points_at_the_need() {
    let (err, line) = load_err(
        "name: w\nsteps:\n  - id: a\n    component: a.wasm\n    needs: [a0, b]\n  - id: a0\n    component: x.wasm\n",
    );
    assert!(
        matches!(err.kind, WorkflowErrorKind::UnknownNeed { .. }),
        "{line}"
    );
    assert!(
        line.ends_with("step `a` needs `b`, which is not a step of this workflow"),
        "{line}"
    );
    assert_eq!(at(&err), (5, 17));
}

#[test]
fn cycle_message_prints_the_loop() {
    let text = "name: w\nsteps:\n  - id: a\n    component: a.wasm\n    needs: c\n  - id: b\n    component: b.wasm\n    needs: a\n  - id: c\n    component: c.wasm\n    needs: [b]\n  - id: d\n    component: d.wasm\n    needs: [a]\n";
    let (err, line) = load_err(text);
    let WorkflowErrorKind::Cycle { path } = &err.kind else {
        panic!("{line}")
    };
    assert_eq!(path, &["a", "c", "b", "a"]);
    assert!(
        line.ends_with("dependency cycle: a -> c -> b -> a (each step needs the next)"),
        "{line}"
    );
    assert_eq!(at(&err), (5, 12), "points at a's need of c");
    let (err, line) = load_err("name: w\nsteps:\n  - {id: s, component: s.wasm, needs: s}\n");
    assert!(
        line.ends_with("dependency cycle: s -> s (each step needs the next)"),
        "{line}"
    );
    assert_eq!(at(&err), (3, 39));
}

#[test]
fn expressions_must_name_existing_steps() {
    let (err, line) =
        load_err("name: w\nsteps:\n  - id: a\n    component: a.wasm\n    input: ${steps.zz.x}\n");
    assert!(
        matches!(err.kind, WorkflowErrorKind::UnknownStepInExpression { .. }),
        "{line}"
    );
    assert!(
        line.ends_with("`steps.zz` refers to no step of this workflow"),
        "{line}"
    );
    assert_eq!(at(&err), (5, 12));
    let (err, _) = load_err("name: w\noutput: ${steps.q}\nsteps:\n  - {id: a, component: a.wasm}\n");
    assert!(matches!(
        err.kind,
        WorkflowErrorKind::UnknownStepInExpression { .. }
    ));
    assert_eq!(at(&err), (2, 9));
}

#[test]
fn templates_may_use_only_steps_they_need_transitively() {
    let base = "name: w\nsteps:\n  - {id: a, component: a.wasm}\n  - {id: b, component: b.wasm, needs: a}\n  - {id: c, component: c.wasm, needs: b, input: \"${steps.a}\"}\n";
    load_ok(base);
    let text = "name: w\nsteps:\n  - {id: a, component: a.wasm}\n  - {id: b, component: b.wasm}\n  - id: c\n    component: c.wasm\n    needs: a\n    input: {x: \"${steps.b}\"}\n";
    let (err, line) = load_err(text);
    assert!(matches!(err.kind, WorkflowErrorKind::NotNeeded { .. }), "{line}");
    assert!(
        line.ends_with("step `c` uses `steps.b` but does not need it (add it to `needs`)"),
        "{line}"
    );
    assert_eq!(at(&err), (8, 16));
    // A step's own output is never available to it.
    let (err, _) = load_err("name: w\nsteps:\n  - {id: a, component: a.wasm, input: \"${steps.a}\"}\n");
    assert!(matches!(err.kind, WorkflowErrorKind::NotNeeded { .. }));
}

#[test]
fn bad_expression_points_at_its_string() {
    let (err, line) =
        load_err("name: w\nsteps:\n  - id: a\n    component: a.wasm\n    input:\n      x: ${input..y}\n");
    assert!(matches!(err.kind, WorkflowErrorKind::BadExpression(_)), "{line}");
    assert_eq!(at(&err), (6, 10));
    let (err, line) = load_err("name: w\nsteps:\n  - id: a\n    component: a.wasm\n    for_each: 5\n");
    assert!(matches!(err.kind, WorkflowErrorKind::BadExpression(_)), "{line}");
    assert_eq!(at(&err), (5, 15));
}

#[test]
fn item_outside_for_each_is_rejected() {
    let (err, line) = load_err("name: w\nsteps:\n  - id: a\n    component: a.wasm\n    input: ${item.x}\n");
    assert!(
        matches!(err.kind, WorkflowErrorKind::ItemOutsideForEach(_)),
        "{line}"
    );
    assert!(
        line.ends_with("`item.x` is only available in the `input` of a step with `for_each`"),
        "{line}"
    );
    assert_eq!(at(&err), (5, 12));
    let (err, _) = load_err("name: w\noutput: ${index}\nsteps:\n  - {id: a, component: a.wasm}\n");
    assert!(matches!(err.kind, WorkflowErrorKind::ItemOutsideForEach(_)));
    let (err, _) = load_err("name: w\nsteps:\n  - {id: a, component: a.wasm, for_each: \"${item}\"}\n");
    assert!(matches!(err.kind, WorkflowErrorKind::ItemOutsideForEach(_)));
}

#[test]
fn bad_sizes_and_durations_name_the_field() {
    let (err, line) = load_err("name: w\ndefaults:\n  memory: 64 parsecs\nsteps: []\n");
    assert!(matches!(err.kind, WorkflowErrorKind::BadSize { .. }), "{line}");
    assert!(
        line.contains("bad size for `defaults.memory`") && line.contains("64 parsecs"),
        "{line}"
    );
    assert_eq!(at(&err), (3, 11));
    let (err, line) = load_err("name: w\nsteps:\n  - id: a\n    component: a.wasm\n    timeout: soon\n");
    assert!(
        matches!(err.kind, WorkflowErrorKind::BadDuration { .. }),
        "{line}"
    );
    assert_eq!(at(&err), (5, 14));
    let (err, line) = load_err("name: w\ntimeout: 30\nsteps: []\n");
    assert!(
        matches!(err.kind, WorkflowErrorKind::BadDuration { .. }),
        "{line}"
    );
    assert_eq!(at(&err), (2, 10));
}

#[test]
fn bad_retry_policies_are_rejected() {
    let step =
        |retry: &str| format!("name: w\nsteps:\n  - id: a\n    component: a.wasm\n    retry: {retry}\n");
    let cases = [
        ("{max_attempts: 0}", "at least 1", (5, 27)),
        (
            "{retry_on: [retryable, invalid-input]}",
            "`invalid-input` cannot be retried",
            (5, 35),
        ),
        ("{retry_on: [completed]}", "`completed` is not a failure", (5, 24)),
        ("{retry_on: [sometimes]}", "unknown outcome `sometimes`", (5, 24)),
        ("{multiplier: 0.5}", "`multiplier` must be", (5, 25)),
        (
            "{backoff: 1m, max_backoff: 1s}",
            "longer than `max_backoff`",
            (5, 22),
        ),
    ];
    for (retry, message, pos) in cases {
        let (err, line) = load_err(&step(retry));
        assert!(matches!(err.kind, WorkflowErrorKind::BadRetry(_)), "{line}");
        assert!(line.contains(message), "{line}");
        assert_eq!(at(&err), pos, "{line}");
    }
    let (err, _) = load_err("name: w\ndefaults:\n  retry: {max_attempts: 0}\nsteps: []\n");
    assert!(matches!(err.kind, WorkflowErrorKind::BadRetry(_)));
}

#[test]
fn max_parallel_requires_for_each() {
    let (err, line) = load_err("name: w\nsteps:\n  - id: a\n    component: a.wasm\n    max_parallel: 2\n");
    assert!(
        matches!(err.kind, WorkflowErrorKind::MaxParallelWithoutForEach(_)),
        "{line}"
    );
    assert_eq!(at(&err), (5, 19));
    let (err, _) =
        load_err("name: w\nsteps:\n  - {id: a, component: a.wasm, for_each: [1], max_parallel: 0}\n");
    assert!(matches!(err.kind, WorkflowErrorKind::BadValue { .. }));
}

#[test]
fn check_components_reports_at_the_component() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.wasm"), b"").unwrap();
    let source = dir.path().join("wf.yaml");
    let text = "name: w\nsteps:\n  - id: a\n    component: a.wasm\n  - id: b\n    component: b.wasm\n";
    let wf = Workflow::from_str(text, &source).unwrap();
    let err = wf.check_components(|_| Ok::<_, String>(())).unwrap_err();
    assert!(matches!(err.kind, WorkflowErrorKind::Component(_)));
    assert_eq!(at(&err), (6, 16));
    assert!(err.to_string().ends_with("b.wasm` does not exist"), "{err}");
    std::fs::write(dir.path().join("b.wasm"), b"").unwrap();
    let err = wf
        .check_components(|s| {
            if &*s.id == "b" {
                Err("not a step component".into())
            } else {
                Ok(1)
            }
        })
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("{}:6:16: not a step component", source.display())
    );
    let ids = wf
        .check_components(|s| Ok::<_, String>(s.id.to_string()))
        .unwrap();
    assert_eq!(ids, ["a", "b"]);
}

#[test]
fn default_input_follows_for_each_then_needs() {
    let text = "name: w\nsteps:\n  - {id: a, component: a.wasm}\n  - {id: b, component: b.wasm, needs: a}\n  - {id: c, component: c.wasm, needs: [a, b]}\n  - {id: d, component: d.wasm, needs: c, for_each: \"${steps.c.a}\"}\n  - {id: e, component: e.wasm, needs: a, input: {k: 1}}\n";
    let wf = load_ok(text);
    let source = |id: &str| wf.input_source(wf.step_index(id).unwrap());
    assert_eq!(source("a"), InputSource::WorkflowInput);
    assert_eq!(source("b"), InputSource::Need("a"));
    assert_eq!(source("c"), InputSource::Needs(vec!["a", "b"]));
    assert_eq!(source("d"), InputSource::Item);
    assert!(matches!(source("e"), InputSource::Template(_)));

    let outputs = HashMap::from([("a".to_owned(), json!([1, 2])), ("b".to_owned(), json!("B"))]);
    let steps = |id: &str| outputs.get(id);
    let input = json!({"in": true});
    let scope = Scope::new(&input, &steps);
    let eval = |id: &str, scope: &Scope<'_>| wf.eval_input(wf.step_index(id).unwrap(), scope).unwrap();
    assert_eq!(eval("a", &scope), input);
    assert_eq!(eval("b", &scope), json!([1, 2]));
    assert_eq!(eval("c", &scope), json!({"a": [1, 2], "b": "B"}));
    let item = json!("it");
    assert_eq!(eval("d", &scope.with_item(&item, 0)), json!("it"));
    assert_eq!(eval("e", &scope), json!({"k": 1}));
}

#[test]
fn default_output_is_the_single_sink_or_an_object_of_sinks() {
    let outputs = HashMap::from([
        ("a".to_owned(), json!(1)),
        ("b".to_owned(), json!(2)),
        ("c".to_owned(), json!(3)),
    ]);
    let steps = |id: &str| outputs.get(id);
    let input = json!(null);
    let scope = Scope::new(&input, &steps);
    let one = load_ok(
        "name: w\nsteps:\n  - {id: a, component: a.wasm}\n  - {id: b, component: b.wasm, needs: a}\n",
    );
    assert_eq!(one.sinks(), [1]);
    assert_eq!(one.eval_output(&scope).unwrap(), json!(2));
    let two = load_ok(
        "name: w\nsteps:\n  - {id: a, component: a.wasm}\n  - {id: b, component: b.wasm, needs: a}\n  - {id: c, component: c.wasm, needs: a}\n",
    );
    assert_eq!(two.eval_output(&scope).unwrap(), json!({"b": 2, "c": 3}));
}

#[test]
fn for_each_items_must_be_a_list() {
    let wf = load_ok(
        "name: w\nsteps:\n  - {id: a, component: a.wasm}\n  - {id: b, component: b.wasm, needs: a, for_each: \"${steps.a}\"}\n",
    );
    let for_each = wf.steps[1].for_each.as_ref().unwrap();
    let input = json!(null);
    let list = HashMap::from([("a".to_owned(), json!([1, 2]))]);
    let steps = |id: &str| list.get(id);
    assert_eq!(
        for_each.eval_items(&Scope::new(&input, &steps)).unwrap(),
        [json!(1), json!(2)]
    );
    let scalar = HashMap::from([("a".to_owned(), json!("x"))]);
    let steps = |id: &str| scalar.get(id);
    let err = for_each.eval_items(&Scope::new(&input, &steps)).unwrap_err();
    assert!(err.to_string().contains("must give a list"), "{err}");
}

#[test]
fn levels_and_critical_path_follow_needs_and_timeouts() {
    let text = "name: w\nsteps:\n  - {id: a, component: x.wasm}\n  - {id: b, component: x.wasm, needs: a}\n  - {id: c, component: x.wasm, needs: a, timeout: 9s}\n  - {id: d, component: x.wasm, needs: [b, c]}\n  - {id: e, component: x.wasm}\n";
    let wf = load_ok(text);
    let plan = wf.plan();
    assert_eq!(plan.levels().collect::<Vec<_>>(), [&[0, 4][..], &[1, 2], &[3]]);
    assert_eq!(plan.critical_path(), [0, 2, 3]);
    assert_eq!(plan.needs(3), [1, 2]);
    assert_eq!(plan.dependents(0), [1, 2]);
    assert_eq!(
        plan.describe(&wf),
        "level 0: a, e\nlevel 1: b, c\nlevel 2: d\ncritical path: a -> c -> d\n"
    );
}

#[test]
fn a_ten_thousand_step_chain_validates_without_stack_overflow() {
    let mut text = String::from("name: chain\nsteps:\n  - {id: s0, component: x.wasm}\n");
    for i in 1..10_000 {
        text.push_str(&format!(
            "  - {{id: s{i}, component: x.wasm, needs: s{}, input: \"${{steps.s0}}\"}}\n",
            i - 1
        ));
    }
    // Run on a small stack: nothing may recurse per step.
    let handle = std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || {
            let wf = Workflow::from_str(&text, Path::new("chain.yaml")).unwrap();
            let plan = wf.plan();
            (plan.level_count(), plan.critical_path().len())
        })
        .unwrap();
    assert_eq!(handle.join().unwrap(), (10_000, 10_000));
}
