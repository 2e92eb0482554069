//! What a workflow run reports: its status and output, and per step its
//! status, attempts, outcome, durations and usage.

use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::outcome::{OutcomeKind, Usage};
use crate::policy::TimeoutLevel;

/// How a workflow run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunStatus {
    /// Every step succeeded (or failed with `continue_on_error`).
    Succeeded,
    /// A step failed and failed the workflow.
    Failed,
    /// The run was cancelled from outside.
    Cancelled,
    /// The host stopped (shutdown, or its journal failed) before the run
    /// finished; with a journal, it resumes on the next start.
    Interrupted,
}

impl RunStatus {
    /// The status's name, as reports and metrics print it.
    ///
    /// ```
    /// assert_eq!(stepbox::scheduler::RunStatus::Interrupted.as_str(), "interrupted");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
            RunStatus::Interrupted => "interrupted",
        }
    }
}

/// How one step of a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepStatus {
    /// It produced output.
    Succeeded,
    /// It failed (after its retries).
    Failed,
    /// It was stopped because the run was cancelled or another step failed it.
    Cancelled,
    /// It never started: a step it needs failed, or the run ended first.
    Skipped,
    /// The host stopped it; it runs again when the run resumes.
    Interrupted,
}

/// The report of one workflow run.
#[derive(Debug, Clone, Serialize)]
pub struct WorkflowReport {
    /// The run's id, unique within this host process.
    pub run_id: u64,
    /// The workflow's name.
    pub workflow: String,
    /// How the run ended.
    pub status: RunStatus,
    /// The workflow's output, when it succeeded.
    pub output: Option<Value>,
    /// Why it did not succeed, in one line.
    pub error: Option<String>,
    /// The outcome kind of the step that failed the workflow.
    pub failed_kind: Option<OutcomeKind>,
    /// One entry per step, in file order.
    pub steps: Vec<StepReport>,
    /// Child steps run through `call`, in the order they ended.
    pub children: Vec<StepReport>,
    /// Time from submission to admission.
    #[serde(serialize_with = "crate::limits::serialize_millis")]
    pub queue_wait: Duration,
    /// Time from admission to the end of the run.
    #[serde(serialize_with = "crate::limits::serialize_millis")]
    pub wall_time: Duration,
    /// Circuit breakers that were not closed when the run ended, by component.
    pub open_breakers: Vec<(String, String)>,
}

/// The report of one step of a run.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    /// The step's id.
    pub id: String,
    /// How it ended.
    pub status: StepStatus,
    /// Attempts made (for a `for_each` step: the most any item made).
    pub attempts: u32,
    /// The outcome kind of its last attempt (for `for_each`: of the first
    /// item that failed, or `completed`).
    pub outcome: Option<OutcomeKind>,
    /// The outcome in one line, when it did not complete.
    pub message: Option<String>,
    /// For a timeout, which deadline fired.
    pub timeout_level: Option<TimeoutLevel>,
    /// For a `for_each` step, how many items it ran.
    pub items: Option<usize>,
    /// Time from the step becoming ready to its end, including waits and backoff.
    #[serde(serialize_with = "crate::limits::serialize_millis")]
    pub duration: Duration,
    /// What all its attempts and items used: waits, instance time and fuel
    /// summed, the highest peaks.
    pub usage: Usage,
    /// Call depth: 0 for the workflow's own steps, 1 for their children...
    pub depth: u32,
}

impl StepReport {
    pub(crate) fn pending(id: &str, depth: u32) -> StepReport {
        StepReport {
            id: id.to_owned(),
            status: StepStatus::Skipped,
            attempts: 0,
            outcome: None,
            message: None,
            timeout_level: None,
            items: None,
            duration: Duration::ZERO,
            usage: Usage::default(),
            depth,
        }
    }
}
