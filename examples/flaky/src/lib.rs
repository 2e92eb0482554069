//! `flaky`: fails with a retryable error on its first `fail_times` attempts
//! in a workflow run, then succeeds. It counts attempts in the run's shared
//! state, so it shows both retries and workflow state.

use serde::{Deserialize, Serialize};
use stepbox_guest::StepError;

/// The step's input.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// How many attempts fail before one succeeds.
    pub fail_times: i64,
}

/// The step's output.
#[derive(Serialize)]
pub struct Output {
    /// The attempt that succeeded (1-based).
    pub succeeded_on_attempt: i64,
}

/// Fails until the run has seen `fail_times` attempts.
pub fn flaky(input: Input) -> Result<Output, StepError> {
    let attempt = stepbox_guest::state::add("flaky-attempts", 1)?;
    if attempt <= input.fail_times {
        stepbox_guest::warn(format!("attempt {attempt}: the upstream service is busy"));
        return Err(StepError::retryable(format!(
            "attempt {attempt} failed: upstream busy"
        )));
    }
    Ok(Output {
        succeeded_on_attempt: attempt,
    })
}

stepbox_guest::step!(flaky);
