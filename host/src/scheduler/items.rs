//! A `for_each` step: its items run `max_parallel` at a time, each an
//! attempt of its own (journaled, resumed item by item), gathered in order.

use std::sync::Arc;

use serde_json::Value;
use tokio::task::JoinSet;
use tracing::Instrument;

use super::StepRunner;
use super::attempt::{Attempts, Job};
use super::report::{StepReport, StepStatus};
use super::run::Shared;
use crate::outcome::OutcomeKind;
use crate::store::Ticket;

impl<R: StepRunner> Shared<R> {
    /// Runs a `for_each` step's items, `max_parallel` at a time, gathering
    /// their outputs in order. The first item that fails stops the others.
    pub(super) async fn run_items(
        self: &Arc<Self>,
        i: usize,
        items: Vec<Value>,
        report: &mut StepReport,
        journaled: &mut Option<Ticket>,
    ) -> Option<Value> {
        let def = &self.wf.workflow.steps[i];
        report.items = Some(items.len());
        // Items wait here rather than as tasks: 10,000 spawned tasks would
        // all sit in the runtime's queue ahead of other runs' work. Twice
        // the instance slots keeps every slot this run may get busy.
        let parallel = def
            .for_each
            .as_ref()
            .and_then(|f| f.max_parallel)
            .map_or(2 * self.inner.config.quotas.max_instances, |n| n as usize)
            .max(1);
        let cancel = self.steps_cancel.child_token();
        let total = items.len();
        let mut pending = items.into_iter().enumerate();
        let mut tasks = JoinSet::new();
        let mut outputs: Vec<Value> = vec![Value::Null; total];
        let mut first_failure: Option<(usize, Attempts)> = None;
        let mut finished = 0;
        let mut interrupted = false;
        report.status = StepStatus::Succeeded;
        report.outcome = Some(OutcomeKind::Completed);
        loop {
            while tasks.len() < parallel && !cancel.is_cancelled() && !self.inner.draining.is_cancelled() {
                let Some((index, input)) = pending.next() else {
                    break;
                };
                let item = u32::try_from(index).ok();
                if let Some(done) = self.resume.as_ref().and_then(|r| r.done((i, item)))
                    && let Some(output) = &done.output
                {
                    outputs[index] = output.clone();
                    finished += 1;
                    report.attempts = report.attempts.max(done.attempt);
                    report.usage.add(&done.usage);
                    continue;
                }
                let (shared, cancel) = (Arc::clone(self), cancel.clone());
                let key: Arc<str> = format!("{}/{}/{index}", self.id, def.id).into();
                tasks.spawn(
                    async move {
                        let attempts = shared
                            .attempts(Job {
                                step: i,
                                input: &input,
                                unit: Some((i, item)),
                                key,
                                depth: 0,
                                parent: None,
                                fuel_cap: None,
                                cancel: &cancel,
                            })
                            .await;
                        (index, attempts)
                    }
                    .in_current_span(),
                );
            }
            let Some(joined) = tasks.join_next().await else {
                break;
            };
            let (index, attempts) = match joined {
                Ok(done) => done,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(e) => unreachable!("item tasks are never aborted: {e}"),
            };
            finished += 1;
            *journaled = (*journaled).max(attempts.journaled);
            interrupted |= attempts.interrupted;
            report.attempts = report.attempts.max(attempts.attempts);
            report.usage.add(&attempts.usage);
            match attempts.output() {
                Some(output) => outputs[index] = output,
                // Not a failure: the item runs again when the run resumes.
                None if attempts.interrupted => {}
                None => {
                    let is_cancel = attempts.outcome.kind() == OutcomeKind::Cancelled;
                    if first_failure
                        .as_ref()
                        .is_none_or(|(_, f)| f.outcome.kind() == OutcomeKind::Cancelled && !is_cancel)
                    {
                        first_failure = Some((index, attempts));
                    }
                    cancel.cancel();
                }
            }
        }
        let failed_for_real = first_failure
            .as_ref()
            .is_some_and(|(_, f)| f.outcome.kind() != OutcomeKind::Cancelled);
        if !self.journal_working() || (interrupted && !failed_for_real) {
            report.status = StepStatus::Interrupted;
            report.outcome = Some(OutcomeKind::Cancelled);
            report.message = Some(format!("interrupted after {finished} of {total} items"));
            return None;
        }
        if first_failure.is_none() && finished < total {
            if self.host_stopping() {
                report.status = StepStatus::Interrupted;
                report.outcome = Some(OutcomeKind::Cancelled);
                report.message = Some(format!("interrupted after {finished} of {total} items"));
                return None;
            }
            // Cancelled from outside before every item started.
            report.status = StepStatus::Cancelled;
            report.outcome = Some(OutcomeKind::Cancelled);
            report.message = Some(format!("cancelled after {finished} of {total} items"));
            return None;
        }
        let Some((index, failure)) = first_failure else {
            return Some(Value::Array(outputs));
        };
        let attempts_made = report.attempts;
        failure.fill(report);
        report.attempts = attempts_made;
        if let Some(message) = &mut report.message {
            *message = format!("item {index}: {message}");
        }
        None
    }
}
