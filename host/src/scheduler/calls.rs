//! What a running step reaches through the `host` interface: child calls
//! (run as attempts of the called step, on the caller's slot) and the run's
//! shared state, under the run's own lock and its state quota.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::StepRunner;
use super::attempt::Job;
use super::report::StepReport;
use super::run::{Shared, lock};
use crate::outcome::{GuestErrorKind, Outcome};
use crate::policy::{Admission, Deadline, TimeoutLevel};
use crate::sandbox::{ChildCall, ChildResult, StepHost, add_to_json_integer};
use crate::store::Event;

#[derive(Default)]
pub(super) struct State {
    pub(super) values: HashMap<String, String>,
    /// Keys and values, in bytes: what the state quota limits.
    pub(super) bytes: usize,
}

impl State {
    /// Sets `key` unless the state would outgrow its quota.
    fn put(&mut self, key: &str, value: String, admission: &Admission) -> Result<(), String> {
        let old = self.values.get(key).map_or(0, |v| key.len() + v.len());
        let bytes = self.bytes - old + key.len() + value.len();
        admission.check_state(bytes).map_err(|e| e.to_string())?;
        self.bytes = bytes;
        self.values.insert(key.to_owned(), value);
        Ok(())
    }
}

/// What a step instance of a run reaches through the `host` interface.
pub(super) struct RunHost<R: StepRunner> {
    pub(super) shared: Arc<Shared<R>>,
    pub(super) depth: u32,
    pub(super) cancel: CancellationToken,
    /// The calling unit's idempotency key: children's keys extend it.
    pub(super) key: Arc<str>,
    /// Child calls made so far by this attempt: numbers the children's keys,
    /// which come out the same when a deterministic step runs again.
    pub(super) calls: AtomicU32,
}

#[async_trait::async_trait]
impl<R: StepRunner> StepHost for RunHost<R> {
    async fn call(&self, call: ChildCall) -> ChildResult {
        let shared = &self.shared;
        let depth = self.depth + 1;
        if depth > shared.inner.config.max_call_depth {
            let max = shared.inner.config.max_call_depth;
            return ChildResult::error(
                GuestErrorKind::Failed,
                format!("cannot call `{}`: calls nest at most {max} deep", call.step),
            );
        }
        let Some(i) = shared.wf.workflow.step_index(&call.step) else {
            return ChildResult::error(
                GuestErrorKind::Failed,
                format!("cannot call `{}`: the workflow has no such step", call.step),
            );
        };
        let input = match serde_json::from_slice::<Value>(&call.input) {
            Ok(input) => input,
            Err(e) => {
                return ChildResult::error(
                    GuestErrorKind::InvalidInput,
                    format!("input for `{}` is not JSON: {e}", call.step),
                );
            }
        };
        let started = Instant::now();
        let parent = Deadline {
            at: call.deadline,
            level: TimeoutLevel::Parent,
        };
        // Children run on the caller's slot (taking another could deadlock
        // when every slot is held by a caller), reserve their memory from the
        // budget without waiting, and die with the caller.
        let n = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
        let max_calls = shared.inner.config.max_child_calls;
        if n > max_calls {
            return ChildResult::error(
                GuestErrorKind::Failed,
                format!(
                    "cannot call `{}`: a step may make at most {max_calls} calls",
                    call.step
                ),
            );
        }
        let key: Arc<str> = format!("{}/{}#{n}", self.key, call.step).into();
        let attempts = shared
            .attempts(Job {
                step: i,
                input: &input,
                unit: None,
                key,
                depth,
                parent: Some(parent),
                fuel_cap: Some(call.fuel),
                cancel: &self.cancel,
            })
            .await;
        let fuel_consumed = attempts.usage.fuel_consumed;
        let output = match &attempts.outcome {
            Outcome::Completed { output } => Ok(output.clone()),
            Outcome::GuestError { error, message } => Err((*error, format!("`{}`: {message}", call.step))),
            other => Err((GuestErrorKind::Failed, format!("`{}`: {other}", call.step))),
        };
        let mut report = StepReport::pending(&call.step, depth);
        attempts.fill(&mut report);
        report.duration = started.elapsed();
        let mut children = lock(&shared.children);
        if children.len() < super::MAX_CHILD_REPORTS {
            children.push(report);
        }
        drop(children);
        ChildResult {
            output,
            fuel_consumed,
        }
    }

    fn state_get(&self, key: &str) -> Option<String> {
        lock(&self.shared.state).values.get(key).cloned()
    }

    fn state_set(&self, key: &str, value: String) -> Result<(), String> {
        let mut state = lock(&self.shared.state);
        state.put(key, value.clone(), &self.shared.inner.admission)?;
        // Under the state lock, so the journal sees writes in their order.
        self.shared.journal_state(key, value);
        Ok(())
    }

    fn state_add(&self, key: &str, delta: i64) -> Result<i64, String> {
        let mut state = lock(&self.shared.state);
        let sum = add_to_json_integer(state.values.get(key).map(String::as_str), key, delta)?;
        state.put(key, sum.to_string(), &self.shared.inner.admission)?;
        self.shared.journal_state(key, sum.to_string());
        Ok(sum)
    }
}

impl<R: StepRunner> Shared<R> {
    fn journal_state(&self, key: &str, value: String) {
        if let Some(journal) = &self.inner.journal {
            journal.append(Event::StateWritten {
                run: self.id,
                key: key.to_owned(),
                value,
            });
        }
    }
}
