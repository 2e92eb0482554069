//! Small, pure policies the workflow scheduler consults before and after each step run.
//!
//! Nothing here runs a component, reads a file or knows what a workflow file
//! looks like: the scheduler asks, the policy answers. Anything that depends on
//! time takes it as an argument, so every decision is deterministic.
//!
//! - [`retry`]: [`RetryPolicy`] decides whether a failed attempt is retried and
//!   how long to back off.
//! - [`breaker`]: [`CircuitBreaker`] stops sending work to a component that keeps
//!   failing; [`Breakers`] keeps one per component.
//! - [`deadline`]: [`effective`] and [`step_deadline`] pick the earliest of the
//!   global, workflow, parent and step deadlines and name the level that set it.

pub mod breaker;
pub mod deadline;
pub mod retry;

pub use breaker::{
    BreakerConfig, BreakerState, Breakers, CircuitBreaker, Permit, Rejected, Verdict, counts_as_failure,
};
pub use deadline::{Deadline, TimeoutLevel, effective, step_deadline};
pub use retry::RetryPolicy;
