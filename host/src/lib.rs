//! stepbox runs untrusted workflow steps as sandboxed WebAssembly components.
//!
//! A step is a WASI 0.2 component that exports `run` from the `step` world
//! (`wit/step.wit`). A [`Sandbox`] loads components once (compiled, cached in
//! memory and on disk, pre-instantiated) and runs each step in a fresh
//! instance with its own fuel, memory limit, deadline and temporary
//! directory, reporting a typed [`Outcome`] and its [`Usage`].
//!
//! ```no_run
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use stepbox::{RunOptions, Sandbox};
//!
//! let sandbox = Sandbox::builder().build()?;
//! let step = sandbox.load_file("target/wasm32-wasip2/release/hello.wasm")?;
//! let report = sandbox.run(&step, br#"{"name":"world"}"#, RunOptions::default()).await;
//! println!("{} in {:?}", report.outcome, report.usage.wall_time);
//! # Ok(()) }
//! ```
//!
//! Guests get nothing they are not given: no environment variables, no
//! arguments, no stdin, no network, no host files but their own `/tmp`. Their
//! stdout and stderr are captured into the step's log.
//!
//! Workflows build on that, one module per concern, with data flowing one
//! way: a file is read into a [`workflow::Workflow`] (validated, with its
//! plan), a [`scheduler::Scheduler`] runs it on a sandbox, consulting the
//! [`policy`] pieces (retries, circuit breakers, the deadline hierarchy,
//! quotas), and reports a [`scheduler::WorkflowReport`]. [`config`] reads the
//! host's `stepbox.toml`.

pub mod bench;
pub mod config;
pub mod limits;
pub mod metrics;
mod outcome;
pub mod policy;
pub mod report;
mod sandbox;
pub mod scheduler;
pub mod store;

pub use limits::{LimitOverrides, Limits};
pub use outcome::{
    GuestErrorKind, LogLevel, LogRecord, LogSource, MAX_GUEST_MESSAGE, Outcome, OutcomeKind, RunReport,
    ScratchResource, StepLog, Usage,
};
pub use sandbox::{
    ChildCall, ChildResult, ComponentInfo, DEFAULT_EPOCH_TICK, DEFAULT_MAX_INSTANCES, DEFAULT_MAX_WASM_STACK,
    DEFAULT_MEMORY_CACHE_ENTRIES, Digest, Item, LoadError, MAX_STACK_SIZES, RunOptions, STACK_RANGE, Sandbox,
    SandboxBuilder, SandboxError, StepComponent, StepHost, add_to_json_integer,
};
pub use tokio_util::sync::CancellationToken;
pub mod workflow;
