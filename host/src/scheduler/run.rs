//! One workflow run: readiness, fan-out, attempts, child calls and state,
//! and what the journal hears of each.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::attempt::Job;
use super::calls::State;
use super::record::{Done, Resume};
use super::report::{RunStatus, StepReport, StepStatus, WorkflowReport};
use super::runner::Component as _;
use super::{Inner, PreparedWorkflow, StepRunner};
use crate::limits::Limits;
use crate::outcome::OutcomeKind;
use crate::policy::{BreakerState, Deadline, QueueTicket, TimeoutLevel, effective};
use crate::store::{Event, Millis, RunId, RunState, Ticket, now_millis};
use crate::workflow::Scope;

/// A run, before and while it executes.
pub(super) struct Run<R: StepRunner> {
    shared: Arc<Shared<R>>,
}

/// How a run gets going.
pub(super) struct Start {
    /// Its place in the admission queue.
    pub(super) ticket: QueueTicket,
    pub(super) submitted: Instant,
    /// The journal ticket of its acceptance: it starts once that is written.
    pub(super) accepted: Option<Ticket>,
    /// Set once it is admitted, for its handle.
    pub(super) admitted: Arc<AtomicBool>,
    /// A share it needs before admission (a tenant's running quota), held
    /// until it ends.
    pub(super) gate: Option<Arc<tokio::sync::Semaphore>>,
}

/// What every step task of a run shares.
pub(super) struct Shared<R: StepRunner> {
    pub(super) inner: Arc<Inner<R>>,
    pub(super) wf: Arc<PreparedWorkflow<R>>,
    pub(super) id: RunId,
    input: Value,
    /// What the run did before it was resumed.
    pub(super) resume: Option<Resume>,
    /// Cancelled from outside (the run's handle).
    cancel: CancellationToken,
    /// Cancelled from outside, or when a step fails the run.
    pub(super) steps_cancel: CancellationToken,
    /// The earliest of the global and workflow deadlines, set once admitted.
    pub(super) deadline: Mutex<Option<Deadline>>,
    /// The run's shared state, under its own lock: runs never wait on each other.
    pub(super) state: Mutex<State>,
    pub(super) children: Mutex<Vec<StepReport>>,
    /// The runner's defaults, for the limits a step does not set.
    pub(super) defaults: Limits,
    /// Whether a step's `/tmp` takes RAM.
    pub(super) scratch_in_memory: bool,
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

pub(super) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section below leaves its data consistent at each step.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<R: StepRunner> Run<R> {
    pub(super) fn new(
        inner: Arc<Inner<R>>,
        wf: Arc<PreparedWorkflow<R>>,
        id: RunId,
        input: Value,
        cancel: CancellationToken,
        resume: Option<Resume>,
    ) -> Run<R> {
        let mut state = State::default();
        for (key, value) in resume.iter().flat_map(|r| &r.state) {
            state.bytes += key.len() + value.len();
            state.values.insert(key.clone(), value.clone());
        }
        Run {
            shared: Arc::new(Shared {
                wf,
                id,
                input,
                resume,
                steps_cancel: cancel.child_token(),
                cancel,
                deadline: Mutex::new(None),
                state: Mutex::new(state),
                children: Mutex::new(Vec::new()),
                defaults: inner.runner.default_limits(),
                scratch_in_memory: inner.runner.scratch_in_memory(),
                inner,
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
        let mut ticket = start.ticket;
        let gate = start.gate;
        let admit = async move {
            let share = match gate {
                None => None,
                Some(gate) => match Arc::clone(&gate).try_acquire_owned() {
                    Ok(share) => Some(share),
                    Err(_) => {
                        ticket.give_back();
                        gate.acquire_owned().await.ok()
                    }
                },
            };
            ticket.admitted().await.ok().map(|slot| (slot, share))
        };
        let slot = tokio::select! {
            biased;
            () = shared.cancel.cancelled() => None,
            () = shared.inner.draining.cancelled() => None,
            slot = admit => slot,
        };
        let started = Instant::now();
        let Some(_slot) = slot else {
            return shared.finish(reports, None, submitted, started, None).await;
        };
        start.admitted.store(true, Ordering::Release);
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
                            // A step of a workflow that cannot act outside the
                            // host need not wait: what it does reaches only the
                            // journal, after its needs' completions, so a crash
                            // that loses those loses what it did too.
                            let fence = match wf.reaches_out() {
                                true => plan.needs(next).iter().filter_map(|&j| journaled[j]).max(),
                                false => None,
                            };
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
pub(super) async fn fail_unresumable<R: StepRunner>(
    inner: Arc<Inner<R>>,
    id: RunId,
    message: String,
) -> WorkflowReport {
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

impl<R: StepRunner> Shared<R> {
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
                    .attempts(Job {
                        step: i,
                        input: &input,
                        unit: Some((i, None)),
                        key,
                        depth: 0,
                        parent: None,
                        fuel_cap: None,
                        cancel: &self.steps_cancel,
                    })
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
            // Another host claimed the run (this one's lease ran out): its
            // writes for the run are refused, so nothing more of it may run here.
            Ok(()) if journal.lost(self.id) => {
                self.steps_cancel.cancel();
                false
            }
            Ok(()) => true,
            Err(e) => {
                self.inner.stop_on(e);
                false
            }
        }
    }

    /// Why what this run does can no longer be recorded, in one line.
    fn unrecorded(&self) -> String {
        if self.inner.journal.as_ref().is_some_and(|j| j.lost(self.id)) {
            return "another host took the run over after this one's lease ran out".to_owned();
        }
        self.inner
            .fatal
            .get()
            .map(ToString::to_string)
            .unwrap_or_default()
    }

    /// Whether the journal still records what the run does. A finished step
    /// does not wait for its completion to be durable: its dependents do,
    /// before they start (see [`Shared::start`]), and the run's ending,
    /// appended after every step's, is awaited in [`Shared::finish`] (a
    /// commit that holds the ending holds every event before it).
    pub(super) fn journal_working(&self) -> bool {
        self.inner
            .journal
            .as_ref()
            .is_none_or(|j| j.status().is_ok() && !j.lost(self.id))
    }

    /// Whether the host, not the run's owner, is stopping it: a shutdown or
    /// a journal failure. Such runs resume on restart.
    pub(super) fn host_stopping(&self) -> bool {
        let cancelled_by_owner = self.cancel.is_cancelled() && !self.inner.interrupt.is_cancelled();
        self.inner.draining.is_cancelled() && !cancelled_by_owner
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
                let why = self.unrecorded();
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
    report.usage = done.usage;
    report.duration = done.usage.total();
    (report, done.output.clone())
}
