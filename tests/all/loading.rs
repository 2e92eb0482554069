//! Loading components: caches, bad files, components for other worlds.

use stepbox::{LoadError, Sandbox};

use super::TestSandbox;

#[test]
fn loading_the_same_bytes_twice_hits_the_memory_cache() {
    let sb = TestSandbox::new();
    let a = sb.load("hello");
    let b = sb.load("hello");
    assert_eq!(a.digest(), b.digest());
}

#[test]
fn a_corrupt_disk_cache_entry_is_discarded_and_recompiled() {
    let dir = tempfile::tempdir().unwrap();
    let path = stepbox_tests::guest("hello");
    let first = Sandbox::builder().cache_dir(dir.path()).build().unwrap();
    first.load_file(&path).unwrap();
    let entries: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let entry = &entries[0];
    let mut bytes = std::fs::read(entry).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(entry, &bytes).unwrap();

    // A fresh sandbox (empty memory cache) must not trust the altered file.
    let second = Sandbox::builder().cache_dir(dir.path()).build().unwrap();
    second.load_file(&path).unwrap();
    let repaired = std::fs::read(entry).unwrap();
    assert_ne!(repaired, bytes, "the corrupt entry should have been replaced");
}

#[test]
fn a_missing_file_is_a_read_error_naming_it() {
    let sb = TestSandbox::new();
    let err = sb.sandbox.load_file("/no/such/step.wasm").unwrap_err();
    assert!(matches!(err, LoadError::Read { .. }));
    assert!(err.to_string().contains("/no/such/step.wasm"), "{err}");
}

#[test]
fn text_core_modules_and_other_worlds_are_refused_clearly() {
    let sb = TestSandbox::new();
    let err = sb
        .sandbox
        .load_bytes("notes.txt", b"hello, I am text")
        .unwrap_err();
    assert!(matches!(err, LoadError::NotWasm { .. }), "{err}");

    let core = b"\0asm\x01\x00\x00\x00";
    let err = sb.sandbox.load_bytes("core.wasm", core).unwrap_err();
    assert!(matches!(err, LoadError::CoreModule { .. }), "{err}");
    assert!(err.to_string().contains("wasm32-wasip2"), "{err}");

    let err = sb
        .sandbox
        .load_file(stepbox_tests::guest("not-a-step"))
        .unwrap_err();
    match &err {
        LoadError::WrongWorld { problems, .. } => {
            assert!(problems.iter().any(|p| p.contains("`run`")), "{problems:?}")
        }
        other => panic!("expected wrong-world, got {other}"),
    }
    assert!(!err.to_string().contains('\n'), "{err}");

    let mut truncated = std::fs::read(stepbox_tests::guest("hello")).unwrap();
    truncated.truncate(truncated.len() / 2);
    let err = sb.sandbox.load_bytes("half.wasm", &truncated).unwrap_err();
    assert!(matches!(err, LoadError::Invalid { .. }), "{err}");
}

#[test]
fn inspect_lists_imports_and_exports_and_judges_the_fit() {
    let sb = TestSandbox::new();
    let bytes = std::fs::read(stepbox_tests::guest("hello")).unwrap();
    let info = sb.sandbox.inspect("hello", &bytes).unwrap();
    assert!(info.fits(), "{:?}", info.problems);
    assert!(info.exports.iter().any(|e| e.name == "run" && e.kind == "func"));
    assert!(
        info.imports
            .iter()
            .any(|i| i.name.starts_with("stepbox:step/host"))
    );

    let bytes = std::fs::read(stepbox_tests::guest("not-a-step")).unwrap();
    let info = sb.sandbox.inspect("not-a-step", &bytes).unwrap();
    assert!(!info.fits());
    assert!(info.exports.iter().any(|e| e.name.starts_with("wasi:cli/run")));
}
