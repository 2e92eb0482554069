//! The workflow loader's fast JSON path against its positioned path.
//!
//! Text that starts with `{` is first read by the fast path (streamed, or
//! as a tree without positions), and only on failure by the positioned
//! YAML parser. The same text behind a YAML comment line always takes the
//! positioned path. Both must accept the same files and read them alike,
//! and fail alike.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use stepbox::workflow::Workflow;
use stepbox_fuzz::{SOURCE, load_checked, summary};

/// Whether YAML 1.2 allows `c` in a document (its `c-printable`).
fn yaml_printable(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | ' '..='~' | '\u{85}' | '\u{a0}'..='\u{d7ff}' | '\u{e000}'..='\u{fffd}')
        || c >= '\u{10000}'
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // JSON strings may hold characters YAML does not allow anywhere (DEL,
    // C1 controls): such a file is read by the fast path, and any error in
    // it is reported as that character. Not a difference to find again.
    if !text.trim_start().starts_with('{') || !text.chars().all(yaml_printable) {
        return;
    }
    let fast = load_checked(text);
    let positioned = Workflow::from_str(&format!("#\n{text}"), Path::new(SOURCE));
    match (&fast, &positioned) {
        (Ok(a), Ok(b)) => assert_eq!(summary(a), summary(b), "the two paths read {text:?} differently"),
        (Err(a), Err(b)) => assert_eq!(
            std::mem::discriminant(&a.kind),
            std::mem::discriminant(&b.kind),
            "the two paths fail differently on {text:?}: {a} / {b}"
        ),
        (Ok(_), Err(e)) => panic!("only the fast path reads {text:?}; the positioned one says {e}"),
        (Err(e), Ok(_)) => panic!("only the positioned path reads {text:?}; the fast one says {e}"),
    }
});
