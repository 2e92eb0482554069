//! How the scheduler reaches steps: a [`StepRunner`] loads components and
//! runs one attempt. The [`Sandbox`] is the real one; the scheduler's own
//! tests use a fake that needs no wasm, so readiness, retries, breakers,
//! deadlines and quotas are tested for what they decide, not for what
//! wasmtime does.

use std::future::Future;
use std::path::Path;

use crate::limits::Limits;
use crate::outcome::RunReport;
use crate::sandbox::{Digest, LoadError, RunOptions, Sandbox, StepComponent};

/// A loaded step component, as the scheduler sees it: an identity (for
/// breakers, metrics and the journal) it hands back to its runner.
pub trait Component: Clone + Send + Sync + 'static {
    /// The SHA-256 digest of its bytes: its identity in breakers and the journal.
    fn digest(&self) -> Digest;
    /// The name it was loaded under (a file path, or a recorded name).
    fn name(&self) -> &str;
}

impl Component for StepComponent {
    fn digest(&self) -> Digest {
        StepComponent::digest(self)
    }

    fn name(&self) -> &str {
        StepComponent::name(self)
    }
}

/// What the scheduler needs to run steps: load their components once and
/// run one attempt of one on an input.
///
/// A runner enforces the limits in [`RunOptions`] (fuel, memory, deadline,
/// cancellation) and reports every ending as a [`RunReport`]; the
/// scheduler decides everything else (which step runs when, retries,
/// breakers, quotas, the journal). A runner must not panic on anything a
/// step does.
///
/// ```
/// use stepbox::scheduler::StepRunner;
/// use stepbox::Sandbox;
///
/// fn pool_size<R: StepRunner>(runner: &R) -> u32 {
///     runner.max_instances()
/// }
/// # let _ = pool_size::<Sandbox>;
/// ```
pub trait StepRunner: Send + Sync + 'static {
    /// A loaded component.
    type Component: Component;

    /// Loads (compiles, caches) the component in the file at `path`.
    ///
    /// # Errors
    ///
    /// A [`LoadError`] when the file cannot be read or is not a step component.
    fn load_file(&self, path: &Path) -> Result<Self::Component, LoadError>;

    /// Loads a component from its bytes (as the journal recorded them), under `name`.
    ///
    /// # Errors
    ///
    /// A [`LoadError`] when the bytes are not a step component.
    fn load_bytes(&self, name: &str, bytes: &[u8]) -> Result<Self::Component, LoadError>;

    /// Runs `component` once on `input` under `options`.
    fn run(
        &self,
        component: &Self::Component,
        input: &[u8],
        options: RunOptions,
    ) -> impl Future<Output = RunReport> + Send;

    /// The limits a step gets where it sets none.
    fn default_limits(&self) -> Limits;

    /// Whether a step's `/tmp` takes RAM (so admission counts it with memory).
    fn scratch_in_memory(&self) -> bool;

    /// How many instances may exist at once, child calls included.
    fn max_instances(&self) -> u32;
}

impl StepRunner for Sandbox {
    type Component = StepComponent;

    fn load_file(&self, path: &Path) -> Result<StepComponent, LoadError> {
        Sandbox::load_file(self, path)
    }

    fn load_bytes(&self, name: &str, bytes: &[u8]) -> Result<StepComponent, LoadError> {
        Sandbox::load_bytes(self, name, bytes)
    }

    fn run(
        &self,
        component: &StepComponent,
        input: &[u8],
        options: RunOptions,
    ) -> impl Future<Output = RunReport> + Send {
        Sandbox::run(self, component, input, options)
    }

    fn default_limits(&self) -> Limits {
        Sandbox::default_limits(self)
    }

    fn scratch_in_memory(&self) -> bool {
        Sandbox::scratch_in_memory(self)
    }

    fn max_instances(&self) -> u32 {
        Sandbox::max_instances(self)
    }
}
