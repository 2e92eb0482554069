//! What the fuzz targets share: the properties every loaded workflow and
//! every error must have, checked by panicking (which libFuzzer reports).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use stepbox::workflow::{Scope, Workflow, WorkflowError};

/// The file every fuzzed workflow claims to come from.
pub const SOURCE: &str = "flows/fuzz.yaml";

/// Everything a load decides but where things are written: two ways of
/// reading the same definition must agree on it.
pub fn summary(wf: &Workflow) -> String {
    let mut out = format!(
        "{:?} {:?} {:?} {:?} {:?}\n",
        wf.name,
        wf.description,
        wf.timeout,
        wf.output,
        wf.plan()
    );
    for step in &wf.steps {
        out.push_str(&format!(
            "{:?} {:?} {:?} {:?} {:?} {:?} {:?}\n",
            step.id,
            step.component,
            step.input,
            step.for_each,
            step.limits,
            step.retry,
            step.continue_on_error
        ));
    }
    out
}

/// Panics unless `message` is one line, as every error of stepbox promises.
pub fn assert_one_line(message: &str) {
    assert!(!message.is_empty(), "an empty message");
    assert!(
        !message.contains(['\n', '\r']),
        "a message of more than one line: {message:?}"
    );
}

/// Panics unless `err` is a well-formed load error of `text`.
pub fn check_error(err: &WorkflowError) {
    let line = err.to_string();
    assert_one_line(&line);
    let prefix = if err.line == 0 {
        format!("{SOURCE}: ")
    } else {
        format!("{SOURCE}:{}:{}: ", err.line, err.column)
    };
    assert!(
        line.starts_with(&prefix),
        "{line:?} does not start with {prefix:?}"
    );
}

/// Panics unless `wf`, loaded from `text`, is consistent: ids, the plan,
/// sinks and templates agree with each other.
pub fn check_workflow(wf: &Workflow, text: &str) {
    assert_eq!(wf.text(), text);
    assert!(!wf.steps.is_empty());
    let n = wf.steps.len();
    let mut ids = HashSet::new();
    for (i, step) in wf.steps.iter().enumerate() {
        assert!(ids.insert(&*step.id), "duplicate id {}", step.id);
        assert_eq!(wf.step_index(&step.id), Some(i));
        assert!(!step.id.is_empty());
        assert!(
            step.id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        );
    }

    // Levels: every step once, each after all of its needs, exactly one
    // level after its deepest need.
    let plan = wf.plan();
    let mut level = vec![usize::MAX; n];
    for (k, steps) in plan.levels().enumerate() {
        assert!(!steps.is_empty(), "an empty level");
        assert!(steps.windows(2).all(|w| w[0] < w[1]), "a level out of file order");
        for &s in steps {
            assert_eq!(level[s], usize::MAX, "step {s} in two levels");
            level[s] = k;
        }
    }
    assert!(level.iter().all(|&l| l != usize::MAX), "a step in no level");
    for s in 0..n {
        let needs = plan.needs(s);
        let deepest = needs.iter().map(|&j| level[j] + 1).max().unwrap_or(0);
        assert_eq!(
            level[s], deepest,
            "step {s} is not one level after its deepest need"
        );
        let unique: HashSet<_> = needs.iter().collect();
        assert_eq!(unique.len(), needs.len(), "needs repeated");
        for &j in needs {
            assert!(plan.dependents(j).contains(&s));
        }
        for &d in plan.dependents(s) {
            assert!(plan.needs(d).contains(&s));
        }
        assert_eq!(wf.needs(s).count(), needs.len());
    }
    let sinks: Vec<usize> = (0..n).filter(|&s| plan.dependents(s).is_empty()).collect();
    assert_eq!(wf.sinks(), sinks);
    let path = plan.critical_path();
    assert_eq!(path.len(), plan.level_count());
    for w in path.windows(2) {
        assert!(
            plan.needs(w[1]).contains(&w[0]),
            "the critical path is not a chain"
        );
    }
    let _ = plan.describe(wf);

    // Templates use only steps they need, transitively.
    for (s, step) in wf.steps.iter().enumerate() {
        let reachable = ancestors(wf, s);
        let templates = step.input.iter().chain(step.for_each.as_ref().map(|f| &f.items));
        for template in templates {
            for id in template.references() {
                let j = wf.step_index(id).expect("a reference to a step that exists");
                assert!(reachable.contains(&j), "step {s} uses {id} without needing it");
            }
        }
        if let Some(input) = &step.input {
            assert!(step.for_each.is_some() || !input.uses_item());
        }
    }
    if let Some(output) = &wf.output {
        for id in output.references() {
            assert!(wf.step(id).is_some());
        }
    }

    // Evaluating against made-up outputs never panics.
    let input = sample();
    let outputs = |_: &str| Some(sample_ref());
    let scope = Scope::new(&input, &outputs);
    let item = json!({"x": [1, 2]});
    for s in 0..n {
        let _ = wf.input_source(s);
        let _ = wf.eval_input(s, &scope.with_item(&item, 1));
        if let Some(for_each) = &wf.steps[s].for_each {
            let _ = for_each.eval_items(&scope);
        }
    }
    let _ = wf.eval_output(&scope);
    let no_steps = |_: &str| None;
    let _ = wf.eval_output(&Scope::new(&input, &no_steps));
}

/// The steps step `s` needs, directly or not.
fn ancestors(wf: &Workflow, s: usize) -> HashSet<usize> {
    let mut seen = HashSet::new();
    let mut stack = vec![s];
    while let Some(t) = stack.pop() {
        for &j in wf.plan().needs(t) {
            if seen.insert(j) {
                stack.push(j);
            }
        }
    }
    seen
}

/// A value with a bit of everything for templates to walk.
pub fn sample() -> Value {
    json!({
        "text": "hello",
        "n": 3,
        "list": [1, "two", {"three": 3}, [4], null],
        "nested": {"a": {"b": {"c": [true, false]}}},
        "0": "zero",
        "items": ["a", "b", "c"],
    })
}

/// [`sample`], as the `'static` reference step outputs are lent as.
pub fn sample_ref() -> &'static Value {
    static SAMPLE: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    SAMPLE.get_or_init(sample)
}

/// Loads `text`, checking the result whichever it is.
pub fn load_checked(text: &str) -> Result<Workflow, WorkflowError> {
    let result = Workflow::from_str(text, Path::new(SOURCE));
    match &result {
        Ok(wf) => check_workflow(wf, text),
        Err(err) => check_error(err),
    }
    result
}

/// A fresh directory of this process's own named `PREFIX` and its pid, in
/// memory where there is `/dev/shm`. Those left by processes that are gone
/// are removed: libFuzzer exits without dropping anything.
pub fn own_dir(prefix: &str) -> PathBuf {
    let shm = Path::new("/dev/shm");
    let parent = if shm.is_dir() {
        shm.to_owned()
    } else {
        std::env::temp_dir()
    };
    if let Ok(entries) = std::fs::read_dir(&parent) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let pid = name.to_str().and_then(|n| n.strip_prefix(prefix));
            if let Some(pid) = pid
                && !Path::new("/proc").join(pid).exists()
            {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    let dir = parent.join(format!("{prefix}{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a directory of this process's own");
    dir
}
