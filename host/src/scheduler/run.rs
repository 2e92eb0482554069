//! One workflow run: readiness, fan-out, attempts, child calls and state,
//! and what the journal hears of each.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytesize::ByteSize;
use serde_json::Value;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::record::{Done, Resume, Unit};
use super::report::{RunStatus, StepReport, StepStatus, WorkflowReport};
use super::{Inner, PreparedWorkflow};
use crate::metrics::AttemptSample;
use crate::outcome::{GuestErrorKind, Outcome, OutcomeKind, RunReport};
use crate::policy::{
    Admission, BreakerState, Deadline, QueueTicket, Rejected, TimeoutLevel, effective, step_deadline,
};
use crate::sandbox::{ChildCall, ChildResult, RunOptions, StepHost, add_to_json_integer};
use crate::store::{
    AttemptEnd, AttemptLimits, AttemptStatus, AttemptUsage, Event, Millis, RunId, RunState, Ticket,
    now_micros, now_millis,
};
use crate::workflow::Scope;

/// A run, before and while it executes.
pub(super) struct Run {
    shared: Arc<Shared>,
}

/// How a run gets going.
pub(super) struct Start {
    /// Its place in the admission queue.
    pub(super) ticket: QueueTicket,
    pub(super) submitted: Instant,
    /// The journal ticket of its acceptance: it starts once that is written.
    pub(super) accepted: Option<Ticket>,
}

/// What every step task of a run shares.
struct Shared {
    inner: Arc<Inner>,
    wf: Arc<PreparedWorkflow>,
    id: RunId,
    input: Value,
    /// What the run did before it was resumed.
    resume: Option<Resume>,
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

/// What a step task gives back: the step, its report and output, and the
/// journal position of its completion.
type StepResult = (usize, StepReport, Option<Value>, Option<Ticket>);

/// How the attempts at one instance's work ended.
struct Attempts {
    outcome: Outcome,
    attempts: u32,
    fuel: u64,
    peak_memory: u64,
    peak_scratch: u64,
    queue_wait: Duration,
    timeout_level: Option<TimeoutLevel>,
    /// The outcome in one line, when it did not complete: a timeout names
    /// the level that fired, which the sandbox's outcome cannot know.
    message: Option<String>,
    /// The host stopped it (shutdown, or a journal failure): it runs again on resume.
    interrupted: bool,
    /// The journal position of its last event, for durability waits.
    journaled: Option<Ticket>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section below leaves its data consistent at each step.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Run {
    pub(super) fn new(
        inner: Arc<Inner>,
        wf: Arc<PreparedWorkflow>,
        id: RunId,
        input: Value,
        cancel: CancellationToken,
        resume: Option<Resume>,
    ) -> Run {
        let mut state = State::default();
        for (key, value) in resume.iter().flat_map(|r| &r.state) {
            state.bytes += key.len() + value.len();
            state.values.insert(key.clone(), value.clone());
        }
        Run {
            shared: Arc::new(Shared {
                inner,
                wf,
                id,
                input,
                resume,
                steps_cancel: cancel.child_token(),
                cancel,
                deadline: Mutex::new(None),
                state: Mutex::new(state),
                children: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Waits for its acceptance to be recorded and for admission, runs every
    /// step as its needs complete, and reports.
    pub(super) async fn drive(self, start: Start) -> WorkflowReport {
        let shared = self.shared;
        let wf = &shared.wf;
        let steps = &wf.workflow.steps;
        let submitted = start.submitted;
        let mut reports: Vec<StepReport> = steps.iter().map(|s| StepReport::pending(&s.id, 0)).collect();

        if let (Some(journal), Some(accepted)) = (&shared.inner.journal, start.accepted)
            && let Err(e) = journal.commit(accepted).await
        {
            // Never accepted, so never run: the caller hears why.
            shared.inner.stop_on(e.clone());
            let mut report = shared.report(reports, None, submitted, Instant::now());
            report.status = RunStatus::Failed;
            report.error = Some(format!("the run was not accepted: {e}"));
            return report;
        }
        let slot = tokio::select! {
            biased;
            () = shared.cancel.cancelled() => None,
            () = shared.inner.draining.cancelled() => None,
            slot = start.ticket.admitted() => slot.ok(),
        };
        let started = Instant::now();
        let Some(_slot) = slot else {
            return shared.finish(reports, None, submitted, started, None).await;
        };
        let admitted_at = now_millis();
        // A fresh run's start is no write of its own: its first attempt
        // shows it running, and its end records when it started. A resumed
        // run was recorded interrupted (or running, by a host now gone), so
        // its status is set again.
        if let Some(journal) = &shared.inner.journal
            && shared.resume.is_some()
        {
            journal.append(Event::RunStarted {
                run: shared.id,
                at: admitted_at,
            });
        }
        let global = shared.inner.config.global_timeout.map(|d| Deadline {
            at: submitted + d,
            level: TimeoutLevel::Global,
        });
        let workflow = wf.workflow.timeout.map(|d| Deadline {
            at: started + d,
            level: TimeoutLevel::Workflow,
        });
        *lock(&shared.deadline) = effective([global, workflow]);

        let plan = wf.plan();
        let mut waiting: Vec<usize> = (0..steps.len()).map(|i| plan.needs(i).len()).collect();
        let mut outputs: Vec<Option<Value>> = vec![None; steps.len()];
        // Per finished step, the journal position of its completion.
        let mut journaled: Vec<Option<Ticket>> = vec![None; steps.len()];
        let mut tasks = JoinSet::new();
        let mut failed: Option<usize> = None;
        for (i, _) in waiting.iter().enumerate().filter(|(_, n)| **n == 0) {
            shared.start(i, &outputs, None, &mut tasks);
        }
        while let Some(joined) = tasks.join_next().await {
            let (i, report, output, ticket) = match joined {
                Ok(done) => done,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(e) => unreachable!("step tasks are never aborted: {e}"),
            };
            journaled[i] = ticket;
            let succeeded = report.status == StepStatus::Succeeded;
            let stopped = matches!(report.status, StepStatus::Cancelled | StepStatus::Interrupted);
            reports[i] = report;
            if succeeded || (steps[i].continue_on_error && !stopped && !shared.steps_cancel.is_cancelled()) {
                // A failed step that may fail passes `null` on to its dependents.
                outputs[i] = Some(output.unwrap_or(Value::Null));
                if failed.is_none() && !shared.inner.draining.is_cancelled() {
                    for &next in plan.dependents(i) {
                        waiting[next] -= 1;
                        if waiting[next] == 0 {
                            // Tickets are positions: the latest covers every need.
                            let fence = plan.needs(next).iter().filter_map(|&j| journaled[j]).max();
                            shared.start(next, &outputs, fence, &mut tasks);
                        }
                    }
                }
            } else if failed.is_none() && !stopped {
                failed = Some(i);
                shared.steps_cancel.cancel();
            }
        }
        let complete = outputs.iter().all(Option::is_some);
        let output = (failed.is_none() && complete && !shared.cancel.is_cancelled()).then(|| {
            let lookup = |id: &str| wf.workflow.step_index(id).and_then(|i| outputs[i].as_ref());
            wf.workflow.eval_output(&Scope::new(&shared.input, &lookup))
        });
        shared
            .finish(
                reports,
                output.map(|r| r.map_err(|e| e.to_string())),
                submitted,
                started,
                Some(admitted_at),
            )
            .await
    }
}

/// The report of a run that cannot be resumed (its code is gone), recorded
/// as failed so that it is not tried again.
pub(super) async fn fail_unresumable(inner: Arc<Inner>, id: RunId, message: String) -> WorkflowReport {
    tracing::error!(run = id, "{message}");
    if let Some(journal) = &inner.journal {
        let ticket = journal.append(Event::RunEnded {
            run: id,
            status: RunState::Failed,
            output: None,
            error: Some(message.clone()),
            started: None,
            at: now_millis(),
        });
        if let Err(e) = journal.durable(ticket).await {
            inner.stop_on(e);
        }
    }
    WorkflowReport {
        run_id: id,
        workflow: String::new(),
        status: RunStatus::Failed,
        output: None,
        error: Some(message),
        failed_kind: Some(OutcomeKind::HostFailure),
        steps: Vec::new(),
        children: Vec::new(),
        queue_wait: Duration::ZERO,
        wall_time: Duration::ZERO,
        open_breakers: Vec::new(),
    }
}

impl Shared {
    /// Builds step `i`'s input from the outputs so far and spawns it. It
    /// runs once `fence`, the completions of the steps it needs, is durable.
    fn start(
        self: &Arc<Self>,
        i: usize,
        outputs: &[Option<Value>],
        fence: Option<Ticket>,
        tasks: &mut JoinSet<StepResult>,
    ) {
        let def = &self.wf.workflow.steps[i];
        if def.for_each.is_none()
            && let Some(done) = self.resume.as_ref().and_then(|r| r.done((i, None)))
        {
            let (report, output) = restored(&def.id, done);
            tasks.spawn(async move { (i, report, output, None) });
            return;
        }
        let lookup = |id: &str| self.wf.workflow.step_index(id).and_then(|j| outputs[j].as_ref());
        let scope = Scope::new(&self.input, &lookup);
        let work = match &def.for_each {
            None => match self.wf.workflow.eval_input(i, &scope) {
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
                        .map(|(index, item)| self.wf.workflow.eval_input(i, &scope.with_item(item, index)))
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
        // Step tasks stay inside the run's span, so their logs name the run.
        tasks.spawn(
            async move {
                // The wait is the dependent's, not its needs': they finish
                // at once, on the thread and in the caches they ran in, and
                // only this task is woken when the commit lands.
                if !shared.durable(fence).await {
                    let mut report = StepReport::pending(&shared.wf.workflow.steps[i].id, 0);
                    report.status = StepStatus::Interrupted;
                    return (i, report, None, None);
                }
                let (report, output, ticket) = shared.run_step(i, work).await;
                (i, report, output, ticket)
            }
            .in_current_span(),
        );
    }

    /// Runs one step of the workflow: its single instance, or one per item.
    /// Returns, with its report and output, the journal position of its
    /// completion, which its dependents wait for.
    async fn run_step(self: Arc<Self>, i: usize, work: Work) -> (StepReport, Option<Value>, Option<Ticket>) {
        let def = &self.wf.workflow.steps[i];
        let ready = Instant::now();
        let mut report = StepReport::pending(&def.id, 0);
        let mut journaled = None;
        let output = match work {
            Work::Invalid(kind, message) => {
                report.status = StepStatus::Failed;
                report.outcome = Some(kind);
                report.message = Some(message);
                None
            }
            Work::One(input) => {
                let key: Arc<str> = format!("{}/{}", self.id, def.id).into();
                let attempts = self
                    .attempts(i, &input, Some((i, None)), key, 0, None, None, &self.steps_cancel)
                    .await;
                journaled = attempts.journaled;
                let output = attempts.output();
                attempts.fill(&mut report);
                if !self.journal_working() {
                    report.status = StepStatus::Interrupted;
                    return (report, None, None);
                }
                output
            }
            Work::Items(items) => self.run_items(i, items, &mut report, &mut journaled).await,
        };
        report.duration = ready.elapsed();
        (report, output, journaled)
    }

    /// Waits until the journal holds what `ticket` marks, as the durability
    /// level promises. False when the journal failed (the scheduler then
    /// stops: what it does can no longer be recorded).
    async fn durable(&self, ticket: Option<Ticket>) -> bool {
        let (Some(journal), Some(ticket)) = (&self.inner.journal, ticket) else {
            return true;
        };
        match journal.durable(ticket).await {
            Ok(()) => true,
            Err(e) => {
                self.inner.stop_on(e);
                false
            }
        }
    }

    /// Whether the journal still records what the run does. A finished step
    /// does not wait for its completion to be durable: its dependents do,
    /// before they start (see [`Shared::start`]), and the run's ending,
    /// appended after every step's, is awaited in [`Shared::finish`] (a
    /// commit that holds the ending holds every event before it).
    fn journal_working(&self) -> bool {
        self.inner.journal.as_ref().is_none_or(|j| j.status().is_ok())
    }

    /// Whether the host, not the run's owner, is stopping it: a shutdown or
    /// a journal failure. Such runs resume on restart.
    fn host_stopping(&self) -> bool {
        let cancelled_by_owner = self.cancel.is_cancelled() && !self.inner.interrupt.is_cancelled();
        self.inner.draining.is_cancelled() && !cancelled_by_owner
    }

    /// Runs a `for_each` step's items, `max_parallel` at a time, gathering
    /// their outputs in order. The first item that fails stops the others.
    async fn run_items(
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
                    report.fuel += done.usage.fuel;
                    report.peak_memory = report.peak_memory.max(done.usage.peak_memory);
                    report.peak_scratch = report.peak_scratch.max(done.usage.peak_scratch);
                    continue;
                }
                let (shared, cancel) = (Arc::clone(self), cancel.clone());
                let key: Arc<str> = format!("{}/{}/{index}", self.id, def.id).into();
                tasks.spawn(
                    async move {
                        let attempts = shared
                            .attempts(i, &input, Some((i, item)), key, 0, None, None, &cancel)
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
            report.fuel += attempts.fuel;
            report.peak_memory = report.peak_memory.max(attempts.peak_memory);
            report.peak_scratch = report.peak_scratch.max(attempts.peak_scratch);
            report.queue_wait += attempts.queue_wait;
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

    /// Runs one instance's work, with retries, under the breaker, deadlines
    /// and quotas. `unit` names a workflow step or item, which takes an
    /// instance slot and is journaled; child calls have none (they run on
    /// their caller's slot and are part of its attempt). `parent` and
    /// `fuel_cap` come from a calling step.
    #[allow(clippy::too_many_arguments)] // private; a struct would only rename them
    async fn attempts(
        self: &Arc<Self>,
        i: usize,
        input: &Value,
        unit: Option<Unit>,
        key: Arc<str>,
        depth: u32,
        parent: Option<Deadline>,
        fuel_cap: Option<u64>,
        cancel: &CancellationToken,
    ) -> Attempts {
        let inner = &self.inner;
        let def = &self.wf.workflow.steps[i];
        let component = &self.wf.components[i];
        let component_name = &self.wf.component_names[i];
        let digest = component.digest();
        let defaults = inner.sandbox.default_limits();
        let journal = inner.journal.as_ref().filter(|_| unit.is_some());
        let step_name = Arc::clone(&def.id);
        let item = unit.and_then(|(_, item)| item);
        let before = match (&self.resume, unit) {
            (Some(resume), Some(unit)) => resume.attempts(unit),
            _ => 0,
        };
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
            peak_scratch: 0,
            queue_wait: Duration::ZERO,
            timeout_level: None,
            message: None,
            interrupted: false,
            journaled: None,
        };
        let mut fuel_left = fuel_cap;
        loop {
            result.attempts += 1;
            let attempt = before + result.attempts;
            let now = Instant::now();
            let timeout = def.limits.timeout.unwrap_or(defaults.timeout);
            let deadline = step_deadline(now, None, run_deadline, parent, Some(timeout))
                .expect("a step timeout is always given");
            if let Some(journal) = journal {
                journal.append(Event::AttemptStarted {
                    run: self.id,
                    step: Arc::clone(&step_name),
                    item,
                    attempt,
                    at: now_millis(),
                });
            }
            result.timeout_level = None;
            let mut usage = AttemptUsage::default();
            let mut log = None;
            let started_us = now_micros();
            let mut attempt_limits = AttemptLimits {
                time: deadline.at.saturating_duration_since(now),
                ..AttemptLimits::default()
            };
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
                    let scratch = def.limits.scratch.unwrap_or(defaults.scratch);
                    // Files in a memory-backed /tmp take RAM like linear
                    // memory does: admission counts both.
                    let reserved = if inner.sandbox.scratch_in_memory() {
                        ByteSize(memory.as_u64().saturating_add(scratch.as_u64()))
                    } else {
                        memory
                    };
                    let slots = async {
                        if unit.is_none() {
                            // A child runs on its caller's slot, but its
                            // memory counts against the budget; it cannot
                            // wait for it (its caller holds some).
                            return Ok((None, inner.admission.try_reserve_memory(reserved)?));
                        }
                        let turn = inner.gate.acquire(self.id).await;
                        let slot = inner.admission.reserve_instance(reserved).await?;
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
                    usage.queue_wait = waited.elapsed();
                    result.queue_wait += usage.queue_wait;
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
                            attempt_limits.fuel = limits.fuel.unwrap_or(defaults.fuel);
                            attempt_limits.memory = memory.as_u64();
                            attempt_limits.scratch = scratch.as_u64();
                            let host: Arc<dyn StepHost> = Arc::new(RunHost {
                                shared: Arc::clone(self),
                                depth,
                                cancel: cancel.clone(),
                                key: Arc::clone(&key),
                                calls: AtomicU32::new(0),
                            });
                            let options = RunOptions::default()
                                .limits(limits)
                                .deadline(deadline.at)
                                .cancel_token(cancel.clone())
                                .host(host)
                                .work(Arc::clone(&key), attempt);
                            let span = tracing::info_span!(target: "stepbox::span", "step", step = %def.id, item, attempt, depth);
                            let report = inner
                                .sandbox
                                .run(component, &input, options)
                                .instrument(span.clone())
                                .await;
                            span.in_scope(|| report.log.emit(&def.id));
                            drop(slots);
                            inner
                                .breakers
                                .record(&digest, permit, report.outcome.kind(), Instant::now());
                            result.fuel += report.usage.fuel_consumed;
                            if let Some(cap) = &mut fuel_left {
                                *cap = cap.saturating_sub(report.usage.fuel_consumed);
                            }
                            result.peak_memory = result.peak_memory.max(report.usage.peak_memory);
                            result.peak_scratch = result.peak_scratch.max(report.usage.peak_scratch);
                            result.queue_wait += report.usage.queue_wait;
                            usage.queue_wait += report.usage.queue_wait;
                            usage.fuel = report.usage.fuel_consumed;
                            usage.peak_memory = report.usage.peak_memory;
                            usage.peak_scratch = report.usage.peak_scratch;
                            if journal.is_some() {
                                log = log_text(&report);
                            }
                            report.outcome
                        }
                    }
                }
            };
            usage.duration = now.elapsed();
            let kind = result.outcome.kind();
            inner.metrics.observe_attempt(&AttemptSample {
                component: component_name,
                outcome: kind.as_str(),
                duration: usage.duration,
                queue_wait: usage.queue_wait,
                fuel: usage.fuel,
                peak_memory: usage.peak_memory,
                peak_scratch: usage.peak_scratch,
                timeout_level: (kind == OutcomeKind::Timeout).then_some(deadline.level),
            });
            if kind == OutcomeKind::Timeout {
                result.timeout_level = Some(deadline.level);
            }
            result.message = match &result.outcome {
                Outcome::Completed { .. } => None,
                Outcome::Timeout { elapsed, .. } => {
                    let configured = match deadline.level {
                        TimeoutLevel::Step => Some(timeout),
                        TimeoutLevel::Workflow => self.wf.workflow.timeout,
                        TimeoutLevel::Global => inner.config.global_timeout,
                        TimeoutLevel::Parent => None,
                    };
                    Some(timeout_message(deadline.level, configured, *elapsed))
                }
                other => Some(other.to_string()),
            };
            result.interrupted = kind == OutcomeKind::Cancelled && self.host_stopping();
            let delay = def.retry.delay(result.attempts, fastrand::f64());
            // A retry that could not start before the run's deadline is not made.
            let wants_retry = !cancel.is_cancelled()
                && def.retry.should_retry(result.attempts, kind)
                && run_deadline.is_none_or(|d| Instant::now() + delay < d.at);
            // While the host stops, a retry is left to the resumed run.
            let draining = wants_retry && inner.draining.is_cancelled();
            result.interrupted |= draining;
            if let Some(journal) = journal {
                let status = match kind {
                    OutcomeKind::Completed => AttemptStatus::Completed,
                    OutcomeKind::Cancelled if result.interrupted => AttemptStatus::Interrupted,
                    OutcomeKind::Cancelled => AttemptStatus::Cancelled,
                    _ => AttemptStatus::Failed,
                };
                let last = matches!(status, AttemptStatus::Completed | AttemptStatus::Failed) && !wants_retry;
                result.journaled = Some(journal.append(Event::AttemptEnded(Box::new(AttemptEnd {
                    run: self.id,
                    step: Arc::clone(&step_name),
                    item,
                    attempt,
                    component: Arc::clone(component_name),
                    limits: attempt_limits,
                    status,
                    last,
                    outcome: kind,
                    message: result.message.clone(),
                    timeout_level: result.timeout_level,
                    output: result.outcome.output().map(<[u8]>::to_vec),
                    log,
                    usage,
                    started_us,
                    at: now_millis(),
                }))));
            }
            if !wants_retry || draining {
                return result;
            }
            inner.metrics.observe_retry(component_name);
            tracing::debug!(run = self.id, step = %def.id, attempt, outcome = %kind, ?delay, "retrying");
            tokio::select! {
                biased;
                () = cancel.cancelled() => {
                    result.interrupted = self.host_stopping();
                    return result;
                }
                () = inner.draining.cancelled() => {
                    result.interrupted = true;
                    return result;
                }
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Reports the run and records its ending; under strict durability,
    /// returns once the ending is durable.
    async fn finish(
        &self,
        steps: Vec<StepReport>,
        output: Option<Result<Value, String>>,
        submitted: Instant,
        started: Instant,
        admitted_at: Option<Millis>,
    ) -> WorkflowReport {
        let mut report = self.report(steps, output, submitted, started);
        if let Some(journal) = &self.inner.journal {
            let status = match report.status {
                RunStatus::Succeeded => RunState::Succeeded,
                RunStatus::Failed => RunState::Failed,
                RunStatus::Cancelled => RunState::Cancelled,
                RunStatus::Interrupted => RunState::Interrupted,
            };
            let ticket = journal.append(Event::RunEnded {
                run: self.id,
                status,
                output: report.output.as_ref().and_then(|o| serde_json::to_vec(o).ok()),
                error: report.error.clone(),
                started: admitted_at,
                at: now_millis(),
            });
            if !self.durable(Some(ticket)).await && report.status != RunStatus::Interrupted {
                // Its ending (and maybe its last steps' completions) is not
                // recorded, so the run resumes on the next start: it has
                // not finished, whatever it computed.
                let why = self
                    .inner
                    .fatal
                    .get()
                    .map(ToString::to_string)
                    .unwrap_or_default();
                report.status = RunStatus::Interrupted;
                report.output = None;
                report.error = Some(format!("interrupted: {why}"));
            }
        }
        tracing::debug!(run = self.id, workflow = %report.workflow, status = ?report.status, "run ended");
        self.inner.metrics.observe_workflow(report.status.as_str());
        report
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
        let (status, output, error) = if self.cancel.is_cancelled() && !self.host_stopping() {
            (
                RunStatus::Cancelled,
                None,
                Some("the run was cancelled".to_owned()),
            )
        } else if failed.is_none() && output.is_none() && self.host_stopping() {
            let why = match self.inner.fatal.get() {
                Some(e) => format!("interrupted: {e}"),
                None => "interrupted by the host's shutdown; it resumes on the next start".to_owned(),
            };
            (RunStatus::Interrupted, None, Some(why))
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

impl Shared {
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

/// The report and output of a step that ended for good before the resume.
fn restored(id: &str, done: &Done) -> (StepReport, Option<Value>) {
    let mut report = StepReport::pending(id, 0);
    report.status = if done.output.is_some() {
        StepStatus::Succeeded
    } else {
        StepStatus::Failed
    };
    report.outcome = Some(done.outcome);
    report.message = done.message.clone();
    report.attempts = done.attempt;
    report.fuel = done.usage.fuel;
    report.peak_memory = done.usage.peak_memory;
    report.peak_scratch = done.usage.peak_scratch;
    report.duration = done.usage.duration;
    report.queue_wait = done.usage.queue_wait;
    (report, done.output.clone())
}

/// A timeout in one line, naming the level that fired and its setting
/// (`configured`, when the level has one of its own).
fn timeout_message(level: TimeoutLevel, configured: Option<Duration>, elapsed: Duration) -> String {
    let ms =
        |d: Duration| humantime::format_duration(Duration::from_millis(d.as_millis() as u64)).to_string();
    let setting = configured.map(|d| format!("{} ", ms(d))).unwrap_or_default();
    let ran = ms(elapsed);
    match level {
        TimeoutLevel::Step => format!("timeout: the step's own {setting}timeout fired after {ran}"),
        TimeoutLevel::Workflow => {
            format!("timeout: the workflow's {setting}timeout fired after the step ran {ran}")
        }
        TimeoutLevel::Global => {
            format!("timeout: the host's global {setting}timeout fired after the step ran {ran}")
        }
        TimeoutLevel::Parent => format!("timeout: its calling step's deadline fired after it ran {ran}"),
    }
}

/// What an instance logged, as the journal keeps it (JSON records).
fn log_text(report: &RunReport) -> Option<String> {
    if report.log.records.is_empty() {
        return None;
    }
    serde_json::to_string(&report.log.records).ok()
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
            _ if self.interrupted => StepStatus::Interrupted,
            OutcomeKind::Completed => StepStatus::Succeeded,
            OutcomeKind::Cancelled => StepStatus::Cancelled,
            _ => StepStatus::Failed,
        };
        report.outcome = Some(kind);
        report.message = self
            .message
            .or_else(|| (kind != OutcomeKind::Completed).then(|| self.outcome.to_string()));
        report.attempts = self.attempts;
        report.timeout_level = self.timeout_level;
        report.fuel = self.fuel;
        report.peak_memory = self.peak_memory;
        report.peak_scratch = self.peak_scratch;
        report.queue_wait = self.queue_wait;
    }
}

/// What a step instance of a run reaches through the `host` interface.
struct RunHost {
    shared: Arc<Shared>,
    depth: u32,
    cancel: CancellationToken,
    /// The calling unit's idempotency key: children's keys extend it.
    key: Arc<str>,
    /// Child calls made so far by this attempt: numbers the children's keys,
    /// which come out the same when a deterministic step runs again.
    calls: AtomicU32,
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
            .attempts(
                i,
                &input,
                None,
                key,
                depth,
                Some(parent),
                Some(call.fuel),
                &self.cancel,
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
