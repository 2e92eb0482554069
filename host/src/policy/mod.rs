//! Small, pure policies the workflow scheduler consults before and after each step run.
//!
//! Nothing here runs a component, reads a file or knows what a workflow file
//! looks like: the scheduler asks, the policy answers. Anything that depends on
//! time takes it as an argument, so every decision is deterministic.
//!
//! - [`retry`]: [`RetryPolicy`] decides whether a failed attempt is retried and
//!   how long to back off.

pub mod retry;

pub use retry::RetryPolicy;
