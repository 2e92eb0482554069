//! One workflow run: readiness, fan-out, attempts, child calls and state.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::report::{RunStatus, StepReport, StepStatus, WorkflowReport};
use super::{Inner, PreparedWorkflow};
use crate::outcome::{GuestErrorKind, Outcome, OutcomeKind};
use crate::policy::{
    Admission, BreakerState, Deadline, QueueTicket, Rejected, TimeoutLevel, effective, step_deadline,
};
use crate::sandbox::{ChildCall, ChildResult, RunOptions, StepHost, add_to_json_integer};
use crate::workflow::Scope;

/// A run, before and while it executes.
pub(super) struct Run {
    shared: Arc<Shared>,
}

/// What every step task of a run shares.
struct Shared {
    inner: Arc<Inner>,
    wf: Arc<PreparedWorkflow>,
    id: u64,
    input: Value,
    /// Cancelled from outside (the run's handle).
    cancel: CancellationToken,
    /// Cancelled from outside, or when a step fails the run.
    steps_cancel: CancellationToken,
    /// The earliest of the global and workflow deadlines, set once admitted.
    deadline: Mutex<Option<Deadline>>,
    /// The run's shared state, under its own lock: runs never wait on each other.
    state: Mutex<State>,
    children: Mutex<Vec<StepReport>>,
}

#[derive(Default)]
struct State {
    values: HashMap<String, String>,
    /// Keys and values, in bytes: what the state quota limits.
    bytes: usize,
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

/// The input a step starts with.
enum Work {
    One(Value),
    Items(Vec<Value>),
    /// The input could not be built: a template failed, or a quota.
    Invalid(OutcomeKind, String),
}

/// How the attempts at one instance's work ended.
struct Attempts {
    outcome: Outcome,
    attempts: u32,
    fuel: u64,
    peak_memory: u64,
    queue_wait: Duration,
    timeout_level: Option<TimeoutLevel>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section below leaves its data consistent at each step.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Run {
    pub(super) fn new(
        inner: Arc<Inner>,
        wf: Arc<PreparedWorkflow>,
        id: u64,
        input: Value,
        cancel: CancellationToken,
    ) -> Run {
        Run {
            shared: Arc::new(Shared {
                inner,
                wf,
                id,
                input,
                steps_cancel: cancel.child_token(),
                cancel,
                deadline: Mutex::new(None),
                state: Mutex::new(State::default()),
                children: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Waits for admission, runs every step as its needs complete, and reports.
    pub(super) async fn drive(self, ticket: QueueTicket, submitted: Instant) -> WorkflowReport {
        let shared = self.shared;
        let wf = &shared.wf;
        let steps = &wf.workflow.steps;
        let mut reports: Vec<StepReport> = steps.iter().map(|s| StepReport::pending(&s.id, 0)).collect();

        let slot = tokio::select! {
            biased;
            () = shared.cancel.cancelled() => None,
            slot = ticket.admitted() => slot.ok(),
        };
        let started = Instant::now();
        let Some(_slot) = slot else {
            return shared.report(reports, None, submitted, started);
        };
        let global = shared.inner.config.global_timeout.map(|d| Deadline {
            at: submitted + d,
            level: TimeoutLevel::Global,
        });
        let workflow = wf.workflow.timeout.map(|d| Deadline {
            at: started + d,
            level: TimeoutLevel::Workflow,
        });
        *lock(&shared.deadline) = effective([global, workflow]);

        let plan = &wf.plan;
        let mut waiting: Vec<usize> = plan.needs.iter().map(Vec::len).collect();
        let mut outputs: Vec<Option<Value>> = vec![None; steps.len()];
        let mut tasks = JoinSet::new();
        let mut failed: Option<usize> = None;
        for (i, _) in waiting.iter().enumerate().filter(|(_, n)| **n == 0) {
            shared.start(i, &outputs, &mut tasks);
        }
        while let Some(joined) = tasks.join_next().await {
            let (i, report, output) = match joined {
                Ok(done) => done,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(e) => unreachable!("step tasks are never aborted: {e}"),
            };
            let succeeded = report.status == StepStatus::Succeeded;
            reports[i] = report;
            if succeeded || (steps[i].continue_on_error && !shared.steps_cancel.is_cancelled()) {
                // A failed step that may fail passes `null` on to its dependents.
                outputs[i] = Some(output.unwrap_or(Value::Null));
                if failed.is_none() {
                    for &next in &plan.dependents[i] {
                        waiting[next] -= 1;
                        if waiting[next] == 0 {
                            shared.start(next, &outputs, &mut tasks);
                        }
                    }
                }
            } else if failed.is_none() && reports[i].status != StepStatus::Cancelled {
                failed = Some(i);
                shared.steps_cancel.cancel();
            }
        }
        let output = (failed.is_none() && !shared.cancel.is_cancelled()).then(|| {
            let lookup = |id: &str| wf.workflow.step_index(id).and_then(|i| outputs[i].as_ref());
            wf.workflow.eval_output(&Scope::new(&shared.input, &lookup))
        });
        let report = shared.report(
            reports,
            output.map(|r| r.map_err(|e| e.to_string())),
            submitted,
            started,
        );
        tracing::debug!(run = shared.id, workflow = %wf.workflow.name, status = ?report.status, "run ended");
        report
    }
}

impl Shared {
    /// Builds step `i`'s input from the outputs so far and spawns it.
    fn start(
        self: &Arc<Self>,
        i: usize,
        outputs: &[Option<Value>],
        tasks: &mut JoinSet<(usize, StepReport, Option<Value>)>,
    ) {
        let def = &self.wf.workflow.steps[i];
        let lookup = |id: &str| self.wf.workflow.step_index(id).and_then(|j| outputs[j].as_ref());
        let scope = Scope::new(&self.input, &lookup);
        let work = match &def.for_each {
            None => match def.eval_input(&scope) {
                Ok(input) => Work::One(input),
                Err(e) => Work::Invalid(OutcomeKind::InvalidInput, format!("input of `{}`: {e}", def.id)),
            },
            Some(for_each) => match for_each.eval_items(&scope) {
                Err(e) => Work::Invalid(
                    OutcomeKind::InvalidInput,
                    format!("for_each of `{}`: {e}", def.id),
                ),
                Ok(items) => match self.inner.admission.check_fan_out(items.len()) {
                    Err(e) => Work::Invalid(OutcomeKind::QuotaExceeded, e.to_string()),
                    Ok(()) => items
                        .iter()
                        .enumerate()
                        .map(|(index, item)| def.eval_input(&scope.with_item(item, index)))
                        .collect::<Result<Vec<_>, _>>()
                        .map_or_else(
                            |e| {
                                Work::Invalid(
                                    OutcomeKind::InvalidInput,
                                    format!("input of `{}`: {e}", def.id),
                                )
                            },
                            Work::Items,
                        ),
                },
            },
        };
        let shared = Arc::clone(self);
        tasks.spawn(async move {
            let (report, output) = shared.run_step(i, work).await;
            (i, report, output)
        });
    }

    /// Runs one step of the workflow: its single instance, or one per item.
    async fn run_step(self: Arc<Self>, i: usize, work: Work) -> (StepReport, Option<Value>) {
        let def = &self.wf.workflow.steps[i];
        let ready = Instant::now();
        let mut report = StepReport::pending(&def.id, 0);
        let output = match work {
            Work::Invalid(kind, message) => {
                report.status = StepStatus::Failed;
                report.outcome = Some(kind);
                report.message = Some(message);
                None
            }
            Work::One(input) => {
                let attempts = self
                    .attempts(i, &input, 0, None, None, &self.steps_cancel, true)
                    .await;
                let output = attempts.output();
                attempts.fill(&mut report);
                output
            }
            Work::Items(items) => self.run_items(i, items, &mut report).await,
        };
        report.duration = ready.elapsed();
        (report, output)
    }

    /// Runs a `for_each` step's items, `max_parallel` at a time, gathering
    /// their outputs in order. The first item that fails stops the others.
    async fn run_items(
        self: &Arc<Self>,
        i: usize,
        items: Vec<Value>,
        report: &mut StepReport,
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
        report.status = StepStatus::Succeeded;
        report.outcome = Some(OutcomeKind::Completed);
        loop {
            while tasks.len() < parallel && !cancel.is_cancelled() {
                let Some((index, input)) = pending.next() else {
                    break;
                };
                let (shared, cancel) = (Arc::clone(self), cancel.clone());
                tasks.spawn(async move {
                    let attempts = shared.attempts(i, &input, 0, None, None, &cancel, true).await;
                    (index, attempts)
                });
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
            report.attempts = report.attempts.max(attempts.attempts);
            report.fuel += attempts.fuel;
            report.peak_memory = report.peak_memory.max(attempts.peak_memory);
            report.queue_wait += attempts.queue_wait;
            match attempts.output() {
                Some(output) => outputs[index] = output,
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
        if first_failure.is_none() && finished < total {
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

    /// Runs one instance's work, with retries, under the breaker, deadlines
    /// and quotas. `parent` and `fuel_cap` come from a calling step; `gated`
    /// is false for child calls, which run on their caller's slot.
    #[allow(clippy::too_many_arguments)] // one private call site each; a struct would only rename them
    async fn attempts(
        self: &Arc<Self>,
        i: usize,
        input: &Value,
        depth: u32,
        parent: Option<Deadline>,
        fuel_cap: Option<u64>,
        cancel: &CancellationToken,
        gated: bool,
    ) -> Attempts {
        let inner = &self.inner;
        let def = &self.wf.workflow.steps[i];
        let component = &self.wf.components[i];
        let digest = component.digest();
        let defaults = inner.sandbox.default_limits();
        let input = match serde_json::to_vec(input) {
            Ok(bytes) => bytes,
            Err(e) => unreachable!("a serde_json::Value always serializes: {e}"),
        };
        let run_deadline = *lock(&self.deadline);
        let mut result = Attempts {
            outcome: Outcome::Cancelled {
                elapsed: Duration::ZERO,
            },
            attempts: 0,
            fuel: 0,
            peak_memory: 0,
            queue_wait: Duration::ZERO,
            timeout_level: None,
        };
        let mut fuel_left = fuel_cap;
        loop {
            result.attempts += 1;
            let attempt = result.attempts;
            let now = Instant::now();
            let timeout = def.limits.timeout.unwrap_or(defaults.timeout);
            let deadline = step_deadline(now, None, run_deadline, parent, Some(timeout))
                .expect("a step timeout is always given");
            result.timeout_level = None;
            result.outcome = match inner.breakers.acquire(&digest, now) {
                Err(rejected) => Outcome::CircuitOpen {
                    component: component.name().to_owned(),
                    retry_after: match rejected {
                        Rejected::OpenUntil(until) => until.saturating_duration_since(now),
                        Rejected::ProbeInFlight => Duration::ZERO,
                    },
                },
                Ok(permit) => {
                    let waited = Instant::now();
                    let memory = def.limits.memory.unwrap_or(defaults.memory);
                    let slots = async {
                        if !gated {
                            // A child runs on its caller's slot, but its
                            // memory counts against the budget; it cannot
                            // wait for it (its caller holds some).
                            return Ok((None, inner.admission.try_reserve_memory(memory)?));
                        }
                        let turn = inner.gate.acquire(self.id).await;
                        let slot = inner.admission.reserve_instance(memory).await?;
                        Ok((Some(turn), slot))
                    };
                    let slots = tokio::select! {
                        biased;
                        () = cancel.cancelled() => Err(Outcome::Cancelled { elapsed: waited.elapsed() }),
                        () = tokio::time::sleep_until(deadline.at.into()) => Err(Outcome::Timeout {
                            limit: deadline.at.saturating_duration_since(now),
                            elapsed: waited.elapsed(),
                        }),
                        slots = slots => slots.map_err(|e: crate::policy::QuotaError| Outcome::QuotaExceeded { message: e.to_string() }),
                    };
                    result.queue_wait += waited.elapsed();
                    match slots {
                        Err(outcome) => {
                            inner.breakers.release(&digest, permit);
                            outcome
                        }
                        Ok(slots) => {
                            let mut limits = def.limits;
                            if let Some(cap) = fuel_left {
                                limits.fuel = Some(limits.fuel.unwrap_or(defaults.fuel).min(cap));
                            }
                            let host: Arc<dyn StepHost> = Arc::new(RunHost {
                                shared: Arc::clone(self),
                                depth,
                                cancel: cancel.clone(),
                            });
                            let options = RunOptions::default()
                                .limits(limits)
                                .deadline(deadline.at)
                                .cancel_token(cancel.clone())
                                .host(host);
                            let report = inner.sandbox.run(component, &input, options).await;
                            drop(slots);
                            inner
                                .breakers
                                .record(&digest, permit, report.outcome.kind(), Instant::now());
                            result.fuel += report.usage.fuel_consumed;
                            if let Some(cap) = &mut fuel_left {
                                *cap = cap.saturating_sub(report.usage.fuel_consumed);
                            }
                            result.peak_memory = result.peak_memory.max(report.usage.peak_memory);
                            result.queue_wait += report.usage.queue_wait;
                            report.outcome
                        }
                    }
                }
            };
            let kind = result.outcome.kind();
            if kind == OutcomeKind::Timeout {
                result.timeout_level = Some(deadline.level);
            }
            if cancel.is_cancelled() || !def.retry.should_retry(attempt, kind) {
                return result;
            }
            let delay = def.retry.delay(attempt, fastrand::f64());
            // A retry that could not start before the run's deadline is not made.
            if run_deadline.is_some_and(|d| Instant::now() + delay >= d.at) {
                return result;
            }
            tracing::debug!(run = self.id, step = %def.id, attempt, outcome = %kind, ?delay, "retrying");
            tokio::select! {
                biased;
                () = cancel.cancelled() => return result,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    fn report(
        &self,
        steps: Vec<StepReport>,
        output: Option<Result<Value, String>>,
        submitted: Instant,
        started: Instant,
    ) -> WorkflowReport {
        let failed = steps.iter().find(|s| {
            s.status == StepStatus::Failed
                && !self.wf.workflow.step(&s.id).is_some_and(|d| d.continue_on_error)
        });
        let (status, output, error) = if self.cancel.is_cancelled() {
            (
                RunStatus::Cancelled,
                None,
                Some("the run was cancelled".to_owned()),
            )
        } else if let Some(step) = failed {
            let why = step.message.clone().unwrap_or_default();
            (
                RunStatus::Failed,
                None,
                Some(format!("step `{}` failed: {why}", step.id)),
            )
        } else {
            match output {
                Some(Ok(output)) => (RunStatus::Succeeded, Some(output), None),
                Some(Err(e)) => (RunStatus::Failed, None, Some(format!("output: {e}"))),
                None => (
                    RunStatus::Failed,
                    None,
                    Some("the run ended without output".to_owned()),
                ),
            }
        };
        let now = Instant::now();
        let open_breakers = self
            .wf
            .components
            .iter()
            .filter_map(|c| match self.inner.breakers.state(&c.digest(), now) {
                BreakerState::Closed => None,
                state => Some((c.name().to_owned(), state.as_str().to_owned())),
            })
            .collect::<std::collections::BTreeMap<_, _>>()
            .into_iter()
            .collect();
        WorkflowReport {
            run_id: self.id,
            workflow: self.wf.workflow.name.clone(),
            status,
            output,
            error,
            failed_kind: failed.and_then(|s| s.outcome),
            children: std::mem::take(&mut *lock(&self.children)),
            steps,
            queue_wait: started.saturating_duration_since(submitted),
            wall_time: started.elapsed(),
            open_breakers,
        }
    }
}

impl Attempts {
    fn output(&self) -> Option<Value> {
        let output = self.outcome.output()?;
        // Steps speak JSON by convention; other bytes travel on as a string.
        Some(
            serde_json::from_slice(output)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(output).into_owned())),
        )
    }

    fn fill(self, report: &mut StepReport) {
        let kind = self.outcome.kind();
        report.status = match kind {
            OutcomeKind::Completed => StepStatus::Succeeded,
            OutcomeKind::Cancelled => StepStatus::Cancelled,
            _ => StepStatus::Failed,
        };
        report.outcome = Some(kind);
        report.message = (kind != OutcomeKind::Completed).then(|| self.outcome.to_string());
        report.attempts = self.attempts;
        report.timeout_level = self.timeout_level;
        report.fuel = self.fuel;
        report.peak_memory = self.peak_memory;
        report.queue_wait = self.queue_wait;
    }
}

/// What a step instance of a run reaches through the `host` interface.
struct RunHost {
    shared: Arc<Shared>,
    depth: u32,
    cancel: CancellationToken,
}

#[async_trait::async_trait]
impl StepHost for RunHost {
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
        let attempts = shared
            .attempts(
                i,
                &input,
                depth,
                Some(parent),
                Some(call.fuel),
                &self.cancel,
                false,
            )
            .await;
        let fuel_consumed = attempts.fuel;
        let output = match &attempts.outcome {
            Outcome::Completed { output } => Ok(output.clone()),
            Outcome::GuestError { error, message } => Err((*error, format!("`{}`: {message}", call.step))),
            other => Err((GuestErrorKind::Failed, format!("`{}`: {other}", call.step))),
        };
        let mut report = StepReport::pending(&call.step, depth);
        attempts.fill(&mut report);
        report.duration = started.elapsed();
        lock(&shared.children).push(report);
        ChildResult {
            output,
            fuel_consumed,
        }
    }

    fn state_get(&self, key: &str) -> Option<String> {
        lock(&self.shared.state).values.get(key).cloned()
    }

    fn state_set(&self, key: &str, value: String) -> Result<(), String> {
        lock(&self.shared.state).put(key, value, &self.shared.inner.admission)
    }

    fn state_add(&self, key: &str, delta: i64) -> Result<i64, String> {
        let mut state = lock(&self.shared.state);
        let sum = add_to_json_integer(state.values.get(key).map(String::as_str), key, delta)?;
        state.put(key, sum.to_string(), &self.shared.inner.admission)?;
        Ok(sum)
    }
}
