//! The template compiler and evaluator.
//!
//! The input's first byte chooses whether `item` and `index` are allowed;
//! the rest is a JSON template, or if it is not JSON, one template string.
//! Compiling gives a template or a one-line error; evaluating gives a value
//! or a one-line error; a template without `$` is its own value; and every
//! value with its `$` doubled compiles to a constant that evaluates to the
//! value itself.
#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};
use stepbox::workflow::{Scope, Template};
use stepbox_fuzz::{assert_one_line, sample, sample_ref};

/// Whether any string of `value` (keys aside) holds a `$`.
fn has_dollar(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('$'),
        Value::Array(items) => items.iter().any(has_dollar),
        Value::Object(map) => map.values().any(has_dollar),
        _ => false,
    }
}

/// `value` with every `$` of its strings (keys aside) written `$$`.
fn escape(value: &Value) -> Value {
    match value {
        Value::String(s) => Value::String(s.replace('$', "$$")),
        Value::Array(items) => Value::Array(items.iter().map(escape).collect()),
        Value::Object(map) => Value::Object(map.iter().map(|(k, v)| (k.clone(), escape(v))).collect()),
        other => other.clone(),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let allow_item = flags & 1 == 1;
    let value = match serde_json::from_slice::<Value>(rest) {
        Ok(value) => value,
        Err(_) => Value::String(String::from_utf8_lossy(rest).into_owned()),
    };

    let input = sample();
    let steps = |id: &str| match id {
        "a" | "split" | "s-1" | "0" => Some(sample_ref()),
        _ => None,
    };
    let item = json!(["x", {"y": 1}]);
    let scope = Scope::new(&input, &steps);
    let scope = if allow_item {
        scope.with_item(&item, 7)
    } else {
        scope
    };

    match Template::from_json(&value, allow_item) {
        Ok(template) => {
            let refs: Vec<&str> = template.references().collect();
            let unique: HashSet<&str> = refs.iter().copied().collect();
            assert_eq!(unique.len(), refs.len(), "references repeated: {refs:?}");
            assert!(allow_item || !template.uses_item());
            if !has_dollar(&value) {
                assert!(template.is_constant());
            }
            match template.eval(&scope) {
                Ok(out) => {
                    if template.is_constant() {
                        assert_eq!(
                            template.eval(&Scope::new(&Value::Null, &|_| None)).ok(),
                            Some(out.clone())
                        );
                    }
                    if !has_dollar(&value) {
                        assert_eq!(out, value);
                    }
                }
                Err(e) => {
                    assert!(!template.is_constant(), "a constant failed: {e}");
                    assert_one_line(e.message());
                }
            }
        }
        Err(e) => {
            assert!(has_dollar(&value), "no `$`, yet: {e}");
            assert_one_line(e.message());
        }
    }

    let escaped = escape(&value);
    let template = Template::from_json(&escaped, allow_item).expect("an escaped value compiles");
    assert!(template.is_constant());
    assert_eq!(template.references().count(), 0);
    assert_eq!(template.eval(&scope).expect("a constant evaluates"), value);
});
