//! Component loading and `inspect` on bytes that are nearly a component
//! (the corpus starts from real step components): a `LoadError`, never a
//! panic, and the two agree on what the bytes are.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use stepbox::{LoadError, Sandbox};

/// One sandbox per process (building one reserves its instance pool), and
/// its disk cache: `inspect` finds there what `load_bytes` compiled, so
/// each input is compiled once. Emptied after each input.
fn sandbox() -> &'static (Sandbox, PathBuf) {
    static SANDBOX: OnceLock<(Sandbox, PathBuf)> = OnceLock::new();
    SANDBOX.get_or_init(|| {
        let cache = stepbox_fuzz::own_dir("stepbox-fuzz-component-");
        let sandbox = Sandbox::builder()
            .max_instances(2)
            .memory_cache_entries(0)
            .cache_dir(&cache)
            .build()
            .expect("a sandbox");
        (sandbox, cache)
    })
}

/// What kind of answer a load gave, for comparing load and inspect.
fn kind(result: &Result<(), &LoadError>) -> &'static str {
    match result {
        Ok(()) => "fits",
        Err(LoadError::Read { .. }) => "read",
        Err(LoadError::NotWasm { .. }) => "not wasm",
        Err(LoadError::CoreModule { .. }) => "core module",
        Err(LoadError::Invalid { .. }) => "invalid",
        Err(LoadError::WrongWorld { .. }) => "wrong world",
    }
}

fuzz_target!(|data: &[u8]| {
    let (sandbox, cache) = sandbox();
    let loaded = sandbox.load_bytes("fuzz.wasm", data);
    let inspected = sandbox.inspect("fuzz.wasm", data);
    if let Err(e) = &loaded {
        assert!(!e.to_string().is_empty());
        assert!(
            !matches!(e, LoadError::Read { .. }),
            "bytes cannot fail to be read"
        );
    }
    let from_inspect = match &inspected {
        Ok(info) if info.fits() => Ok(()),
        Ok(_) => Err("wrong world"),
        Err(e) => Err(kind(&Err(e))),
    };
    let from_load = match &loaded {
        Ok(_) => Ok(()),
        Err(e) => Err(kind(&Err(e))),
    };
    assert_eq!(
        from_load, from_inspect,
        "load says {loaded:?}, inspect says {inspected:?}"
    );
    if let Ok(entries) = std::fs::read_dir(cache) {
        for entry in entries.flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
});
