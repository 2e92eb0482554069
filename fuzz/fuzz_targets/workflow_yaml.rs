//! The workflow loader on any text (YAML, JSON, or neither): it gives a
//! consistent workflow or a one-line positioned error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = stepbox_fuzz::load_checked(text);
    }
});
