//! stepbox runs untrusted workflow steps as sandboxed WebAssembly components.
//!
//! A step is a WASI 0.2 component that exports `run` from the `step` world
//! (`wit/step.wit`). Guests get nothing they are not given: no environment
//! variables, no arguments, no stdin, no network, no host files but their
//! own metered `/tmp`; their stdout and stderr are captured into the step's
//! log.
//!
//! # A map
//!
//! Data flows one way, one module per concern:
//!
//! | module | what it holds |
//! |---|---|
//! | [`workflow`] | workflow files (YAML or JSON) read into a validated [`workflow::Workflow`] and its plan |
//! | [`scheduler`] | runs workflows: readiness, fan-out, fairness, retries, breakers, deadlines, quotas; reaches steps through a [`scheduler::StepRunner`] |
//! | [`sandbox`] | the [`StepRunner`](scheduler::StepRunner) that runs steps in wasmtime: [`Sandbox`], limits per instance, every wasmtime detail |
//! | [`outcome`] | how a step ended ([`Outcome`]) and what it used ([`Usage`]) |
//! | [`policy`] | the small pure decisions: retries, circuit breakers, the timeout hierarchy, quotas |
//! | [`store`] | the journal: events, the store's writing and query sides, group commit |
//! | [`host`] | a whole host assembled from the configuration: store, recovery, journal, scheduler, live runs, shutdown |
//! | [`server`] | `stepbox serve`: the HTTP API on a host |
//! | [`config`] | `stepbox.toml` |
//! | [`metrics`], [`report`] | Prometheus metrics; reports and timelines read from the journal |
//!
//! To run one step, use a [`Sandbox`]:
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
//! To run workflows durably, start a [`Host`] (see [`host`] for an example).

pub mod config;
pub mod host;
pub mod limits;
pub mod metrics;
pub mod outcome;
pub mod policy;
pub mod report;
pub mod sandbox;
pub mod scheduler;
pub mod server;
pub mod store;
pub mod workflow;

// The harness behind `stepbox bench`: the CLI's, not part of the API.
#[doc(hidden)]
pub mod bench;

pub use host::Host;
pub use limits::{LimitOverrides, Limits};
pub use outcome::{Outcome, OutcomeKind, RunReport, Usage};
pub use sandbox::{LoadError, RunOptions, Sandbox, SandboxBuilder, StepComponent};
pub use tokio_util::sync::CancellationToken;
