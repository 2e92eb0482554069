//! Small, pure policies the workflow scheduler consults before and after each step run.
//!
//! Nothing here runs a component, reads a file or knows what a workflow file
//! looks like: the scheduler asks, the policy answers. Anything that depends on
//! time takes the current [`Instant`](std::time::Instant) (and any random
//! number) as an argument, so every decision is deterministic and testable
//! without sleeping.
//!
//! - [`retry`]: [`RetryPolicy`] decides whether a failed attempt is retried and
//!   how long to back off (exponential, capped, with caller-supplied full jitter).
//! - [`breaker`]: [`CircuitBreaker`] stops sending work to a component that keeps
//!   failing, then lets one probe through after a cooldown; [`Breakers`] keeps one
//!   per component behind per-component locks.
//! - [`deadline`]: [`effective`] and [`step_deadline`] pick the earliest of the
//!   global, workflow, parent and step deadlines and name the level that set it.
//! - [`quota`]: [`Admission`] bounds running and queued workflows, instances and
//!   the memory budget (async, FIFO), and checks size quotas ([`Quotas`]).
//!
//! ```
//! use std::time::{Duration, Instant};
//! use stepbox::OutcomeKind;
//! use stepbox::policy::{BreakerConfig, CircuitBreaker, RetryPolicy};
//!
//! let retry = RetryPolicy { max_attempts: 3, ..RetryPolicy::default() };
//! let mut breaker = CircuitBreaker::new(BreakerConfig::default());
//! let now = Instant::now();
//!
//! let permit = breaker.try_acquire(now).expect("a new breaker is closed");
//! let kind = OutcomeKind::Retryable; // what the run reported
//! breaker.record_kind(permit, kind, now);
//! assert!(retry.should_retry(1, kind));
//! assert_eq!(retry.delay(1, 0.5), Duration::from_millis(50));
//! ```

pub mod breaker;
pub mod deadline;
mod invalid;
pub mod quota;
pub mod retry;

pub use breaker::{
    BreakerConfig, BreakerState, Breakers, CircuitBreaker, Permit, Rejected, Verdict, counts_as_failure,
};
pub use deadline::{Deadline, TimeoutLevel, effective, step_deadline};
pub use invalid::InvalidSetting;
pub use quota::{Admission, AdmissionStats, InstanceSlot, QueueTicket, QuotaError, Quotas, WorkflowSlot};
pub use retry::RetryPolicy;
