//! stepbox's integration tests, in one binary grouped by topic.
//!
//! Guest components are built on demand by the `stepbox-tests` crate.

mod cli;
mod concurrency;
mod dashboard;
mod durability;
mod host;
mod hostile;
mod hostile_suite;
mod loading;
mod multihost;
mod observability;
mod outbound;
mod polyglot;
mod postgres;
mod prometheus;
mod sandbox_escape;
mod scratch_quota;
pub(crate) mod serve;
pub(crate) mod store_conformance;
mod well_behaved;
mod workflows;

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use serde_json::Value;
use stepbox::{LimitOverrides, Outcome, RunOptions, RunReport, Sandbox, StepComponent};

/// A shared disk cache, so each guest is compiled once per test run, not once per test.
fn cache_dir() -> PathBuf {
    stepbox_tests::workspace_root()
        .join("target")
        .join("test-component-cache")
}

/// A sandbox with a private scratch directory the test can inspect afterwards.
struct TestSandbox {
    sandbox: Sandbox,
    _scratch_parent: tempfile::TempDir,
}

impl TestSandbox {
    fn new() -> TestSandbox {
        Self::with(|b| b)
    }

    fn with(configure: impl FnOnce(stepbox::SandboxBuilder) -> stepbox::SandboxBuilder) -> TestSandbox {
        let scratch_parent = tempfile::tempdir().unwrap();
        let builder = Sandbox::builder()
            .cache_dir(cache_dir())
            .scratch_dir(scratch_parent.path());
        TestSandbox {
            sandbox: configure(builder).build().unwrap(),
            _scratch_parent: scratch_parent,
        }
    }

    fn load(&self, guest: &str) -> StepComponent {
        self.sandbox.load_file(stepbox_tests::guest(guest)).unwrap()
    }

    async fn run(&self, step: &StepComponent, input: Value, limits: LimitOverrides) -> RunReport {
        let input = serde_json::to_vec(&input).unwrap();
        self.sandbox
            .run(step, &input, RunOptions::default().limits(limits))
            .await
    }

    /// What is left in the sandbox's scratch root, beside its lock file,
    /// the shard directories that hold instance directories and the empty
    /// instance directories no guest opened, kept for the next instances:
    /// nothing, once all runs ended.
    fn scratch_leftovers(&self) -> Vec<PathBuf> {
        let mut left = Vec::new();
        for entry in std::fs::read_dir(self.sandbox.scratch_dir()).unwrap() {
            let path = entry.unwrap().path();
            if path.file_name().is_some_and(|n| n == ".lock") {
                continue;
            }
            if !is_shard(&path) {
                left.push(path);
                continue;
            }
            for instance in std::fs::read_dir(&path).unwrap() {
                let instance = instance.unwrap().path();
                match std::fs::read_dir(&instance) {
                    Ok(mut inside) if instance.is_dir() && !instance.is_symlink() => {
                        left.extend(inside.next().map(|e| e.unwrap().path()));
                    }
                    _ => left.push(instance),
                }
            }
        }
        left
    }

    /// The instance directories in the sandbox's scratch root.
    fn instance_dirs(&self) -> Vec<PathBuf> {
        let mut dirs = Vec::new();
        for entry in std::fs::read_dir(self.sandbox.scratch_dir()).unwrap() {
            let path = entry.unwrap().path();
            if is_shard(&path) {
                dirs.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            }
        }
        dirs
    }

    /// Open descriptors of this process that point into the scratch root,
    /// beside the sandbox's own lock on it.
    fn descriptors_into_scratch(&self) -> Vec<PathBuf> {
        let lock = self.sandbox.scratch_dir().join(".lock");
        open_descriptors_under(self.sandbox.scratch_dir())
            .into_iter()
            .filter(|path| *path != lock)
            .collect()
    }
}

fn is_shard(path: &Path) -> bool {
    path.is_dir()
        && path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('s'))
}

fn open_descriptors_under(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.starts_with(dir))
        .collect()
}

fn limits() -> LimitOverrides {
    LimitOverrides::default()
}

fn fuel(n: u64) -> LimitOverrides {
    LimitOverrides {
        fuel: Some(n),
        ..limits()
    }
}

fn timeout(d: Duration) -> LimitOverrides {
    LimitOverrides {
        timeout: Some(d),
        ..limits()
    }
}

fn memory(size: ByteSize) -> LimitOverrides {
    LimitOverrides {
        memory: Some(size),
        ..limits()
    }
}

/// The output of a completed run as JSON; panics with the outcome otherwise.
fn output(report: &RunReport) -> Value {
    match &report.outcome {
        Outcome::Completed { output } => serde_json::from_slice(output).unwrap(),
        other => panic!(
            "expected the step to complete, got: {other} (log: {:?})",
            report.log.records
        ),
    }
}
