//! The fast path's split of a large JSON file into two halves read at once.
//!
//! The input is a small JSON workflow (its first byte picks the layout).
//! It is padded with plain steps before and after its own, past the size
//! from which files are read in halves, so that the cut falls among its
//! steps; then it is loaded as it is (in halves) and with its `steps` key
//! written `"st\u0065ps"`, which the cut cannot find (in one piece). Both
//! must read the same workflow.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value, json};
use stepbox::workflow::Workflow;
use stepbox_fuzz::{SOURCE, check_workflow, summary};

/// Past the size from which the fast path reads a file in halves.
const LARGE: usize = 300 * 1024;

fn serialize(value: &Value, pretty: bool) -> String {
    if pretty {
        serde_json::to_string_pretty(value).expect("JSON")
    } else {
        serde_json::to_string(value).expect("JSON")
    }
}

/// `{fields before, "KEY": [steps], fields after}`.
fn document(
    before: &Map<String, Value>,
    key: &str,
    steps: &str,
    after: &Map<String, Value>,
    pretty: bool,
) -> String {
    let fields = |map: &Map<String, Value>| {
        map.iter()
            .map(|(k, v)| format!("{}: {}", serialize(&json!(k), false), serialize(v, pretty)))
            .collect::<Vec<_>>()
    };
    let mut parts = fields(before);
    parts.push(format!("\"{key}\": {steps}"));
    parts.extend(fields(after));
    format!("{{{}}}", parts.join(if pretty { ",\n  " } else { "," }))
}

fuzz_target!(|data: &[u8]| {
    let Some((&layout, rest)) = data.split_first() else {
        return;
    };
    let Ok(Value::Object(mut fields)) = serde_json::from_slice::<Value>(rest) else {
        return;
    };
    let Some(Value::Array(own)) = fields.remove("steps") else {
        return;
    };
    if own.is_empty() {
        return;
    }
    let pretty = layout & 1 == 1;
    // Fields after the steps are read by the second half.
    let mut after = Map::new();
    if layout & 2 == 2 {
        for key in ["output", "timeout", "description"] {
            if let Some(v) = fields.remove(key) {
                after.insert(key.to_owned(), v);
            }
        }
    }
    // Only workflows that load unpadded are worth the large loads.
    let small = document(
        &fields,
        "steps",
        &serialize(&Value::Array(own.clone()), pretty),
        &after,
        pretty,
    );
    if Workflow::from_str(&small, Path::new(SOURCE)).is_err() {
        return;
    }

    let pad = |i: usize| json!({"component": "pad.wasm", "id": format!("zz-pad-{i}")});
    let one = serialize(&pad(0), pretty).len() + 2;
    let count = LARGE / one + 1;
    // Centre the workflow's own steps on the middle of the file.
    let own_len = serialize(&Value::Array(own.clone()), pretty).len();
    let before_count = (count / 2).saturating_sub(own_len / one / 2);
    let mut steps: Vec<Value> = (0..before_count).map(pad).collect();
    steps.extend(own);
    steps.extend((before_count..count).map(pad));
    let steps = serialize(&Value::Array(steps), pretty);

    let halves = document(&fields, "steps", &steps, &after, pretty);
    let whole = document(&fields, "st\\u0065ps", &steps, &after, pretty);
    assert!(halves.len() >= 256 * 1024);
    let a = Workflow::from_str(&halves, Path::new(SOURCE));
    let b = Workflow::from_str(&whole, Path::new(SOURCE));
    match (&a, &b) {
        (Ok(a), Ok(b)) => {
            assert_eq!(
                summary(a),
                summary(b),
                "read in halves, {small:?} padded reads differently"
            );
            check_workflow(a, &halves);
        }
        (Err(a), Err(b)) => assert_eq!(
            std::mem::discriminant(&a.kind),
            std::mem::discriminant(&b.kind),
            "{small:?} padded fails differently: {a} / {b}"
        ),
        (Ok(_), Err(e)) => panic!("{small:?} padded is read in halves only; in one piece: {e}"),
        (Err(e), Ok(_)) => panic!("{small:?} padded is read in one piece only; in halves: {e}"),
    }
});
