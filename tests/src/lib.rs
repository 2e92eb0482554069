//! Builds the guest components that stepbox's integration tests run.
//!
//! The integration tests live in `tests/all` (compiled into the `stepbox`
//! package's single `all` test binary). Their guests — the examples, a
//! trivial echo step, a step that misbehaves in every way asked of it, and a
//! WASI command that is not a step — are ordinary workspace crates built for
//! `wasm32-wasip2`. This crate builds them once per test process, with the
//! same cargo that runs the tests, into `target/guests`, so that `cargo test`
//! on a fresh clone needs nothing but the toolchain.
//!
//! ```no_run
//! let hello = stepbox_tests::guest("hello");
//! assert!(hello.ends_with("hello.wasm"));
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The guest crates (each component file is named after its crate).
pub const GUESTS: &[&str] = &[
    "hello",
    "wordcount",
    "scratch",
    "split",
    "merge",
    "flaky",
    "runaway",
    "fib",
    "fetch",
    "trivial",
    "hostile",
    "not-a-step",
];

/// The workspace root.
pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives one level below the workspace root")
}

/// The path of a built guest component, building all guests first if this
/// process has not yet.
///
/// # Panics
///
/// If the guests do not build (the message carries cargo's output), or
/// `name` is not one of [`GUESTS`]: both are bugs in the test setup.
pub fn guest(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(build_all);
    let package = GUESTS
        .iter()
        .find(|package| **package == name)
        .unwrap_or_else(|| panic!("unknown guest `{name}`"));
    // cdylib artifacts use underscores; binaries keep the package name.
    let file = if *package == "not-a-step" {
        format!("{package}.wasm")
    } else {
        format!("{}.wasm", package.replace('-', "_"))
    };
    dir.join(file)
}

fn build_all() -> PathBuf {
    let root = workspace_root();
    let target_dir = root.join("target").join("guests");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(root)
        .args([
            "build",
            "--profile",
            "guest",
            "--target",
            "wasm32-wasip2",
            "--target-dir",
        ])
        .arg(&target_dir);
    for package in GUESTS {
        command.args(["-p", package]);
    }
    // Flags meant for the host build (coverage, sanitizers) must not leak into the guests.
    command
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS");
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run cargo to build the test guests: {e}"));
    assert!(
        output.status.success(),
        "building the test guests failed (is the wasm32-wasip2 target installed? `rustup target add wasm32-wasip2`):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    target_dir.join("wasm32-wasip2").join("guest")
}

/// The steps written in Python and JavaScript, built by
/// `scripts/build-polyglot` (each component file is named after its step).
pub const POLYGLOT: &[&str] = &["wordcount-py", "transform-js", "hostile-py", "hostile-js"];

/// The path of a step written in Python or JavaScript, building them all
/// first (`scripts/build-polyglot`, which installs componentize-py and
/// componentize-js from the registries) if this process has not yet.
///
/// ```no_run
/// let wordcount = stepbox_tests::polyglot("wordcount-py");
/// assert!(wordcount.ends_with("target/polyglot/wordcount-py.wasm"));
/// ```
///
/// # Panics
///
/// If the script fails (the message carries its output), or `name` is not
/// one of [`POLYGLOT`]: both are bugs in the test setup.
pub fn polyglot(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(build_polyglot);
    assert!(POLYGLOT.contains(&name), "unknown polyglot step `{name}`");
    dir.join(format!("{name}.wasm"))
}

fn build_polyglot() -> PathBuf {
    let root = workspace_root();
    let output = Command::new(root.join("scripts").join("build-polyglot"))
        .current_dir(root)
        .output()
        .unwrap_or_else(|e| panic!("cannot run scripts/build-polyglot: {e}"));
    assert!(
        output.status.success(),
        "scripts/build-polyglot failed (are python3 with venv and node with npm installed? `scripts/setup`):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    root.join("target").join("polyglot")
}
