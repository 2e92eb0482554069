//! One unit of work's attempts, in stages: the breaker, the fair gate and
//! admission, the run itself, then what metrics and the journal hear of it
//! and whether to retry. Each stage fills in the attempt's one [`Usage`].

use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::{Duration, Instant};

use bytesize::ByteSize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::StepRunner;
use super::calls::RunHost;
use super::record::Unit;
use super::report::{StepReport, StepStatus};
use super::run::{Shared, lock};
use super::runner::Component as _;
use crate::metrics::AttemptSample;
use crate::outcome::{Outcome, OutcomeKind, RunReport, Usage};
use crate::policy::{Deadline, InstanceSlot, QuotaError, Rejected, TimeoutLevel, step_deadline};
use crate::sandbox::{RunOptions, StepHost};
use crate::store::{AttemptEnd, AttemptLimits, AttemptStatus, Event, Ticket, now_micros, now_millis};

/// What one unit's attempts are for: which step, on what, under whose
/// deadline and cancellation.
pub(super) struct Job<'a> {
    /// The step's index in the workflow.
    pub(super) step: usize,
    pub(super) input: &'a Value,
    /// The workflow step or item it is, which takes an instance slot and is
    /// journaled; `None` for a child call (it runs on its caller's slot and
    /// is part of its caller's attempt).
    pub(super) unit: Option<Unit>,
    /// Its idempotency key.
    pub(super) key: Arc<str>,
    /// How deeply it is nested in child calls.
    pub(super) depth: u32,
    /// A calling step's deadline.
    pub(super) parent: Option<Deadline>,
    /// A calling step's remaining fuel.
    pub(super) fuel_cap: Option<u64>,
    pub(super) cancel: &'a CancellationToken,
}

/// How the attempts at one unit's work ended.
pub(super) struct Attempts {
    pub(super) outcome: Outcome,
    pub(super) attempts: u32,
    /// Summed over the attempts (fuel, waits, time); peaks are the highest.
    pub(super) usage: Usage,
    pub(super) timeout_level: Option<TimeoutLevel>,
    /// The outcome in one line, when it did not complete: a timeout names
    /// the level that fired, which the runner's outcome cannot know.
    pub(super) message: Option<String>,
    /// The host stopped it (shutdown, or a journal failure): it runs again on resume.
    pub(super) interrupted: bool,
    /// The journal position of its last event, for durability waits.
    pub(super) journaled: Option<Ticket>,
}

/// One attempt, as its stages fill it in.
struct Attempt {
    /// Its number, from 1, across restarts.
    number: u32,
    started: Instant,
    started_us: i64,
    deadline: Deadline,
    /// The step's own timeout.
    timeout: Duration,
    limits: AttemptLimits,
    usage: Usage,
    /// What it logged, as the journal keeps it.
    log: Option<String>,
}

/// What follows an attempt.
enum Next {
    /// Nothing: its outcome is the unit's.
    Done,
    /// Another attempt, after this delay.
    Retry(Duration),
    /// Another attempt, when the run resumes after the host's shutdown.
    OnResume,
}

/// What an attempt holds while it runs: its turn at the fair gate (none
/// for a child call) and its instance slot with its memory.
struct Admitted {
    _turn: Option<super::fair::FairPermit>,
    _slot: InstanceSlot,
}

impl<R: StepRunner> Shared<R> {
    /// Runs one unit's work, with retries, under the breaker, deadlines and
    /// quotas.
    pub(super) async fn attempts(self: &Arc<Self>, job: Job<'_>) -> Attempts {
        let before = match (&self.resume, job.unit) {
            (Some(resume), Some(unit)) => resume.attempts(unit),
            _ => 0,
        };
        let input = match serde_json::to_vec(job.input) {
            Ok(bytes) => bytes,
            Err(e) => unreachable!("a serde_json::Value always serializes: {e}"),
        };
        let run_deadline = *lock(&self.deadline);
        let mut result = Attempts {
            outcome: Outcome::Cancelled {
                elapsed: Duration::ZERO,
            },
            attempts: 0,
            usage: Usage::default(),
            timeout_level: None,
            message: None,
            interrupted: false,
            journaled: None,
        };
        let mut fuel_left = job.fuel_cap;
        loop {
            result.attempts += 1;
            let mut attempt = self.begin(&job, before + result.attempts, run_deadline);
            result.outcome = self.try_once(&job, &input, &mut attempt, fuel_left).await;
            if let Some(cap) = &mut fuel_left {
                *cap = cap.saturating_sub(attempt.usage.fuel_consumed);
            }
            attempt.usage.wall_time = attempt.started.elapsed().saturating_sub(attempt.usage.queue_wait);
            result.usage.add(&attempt.usage);
            self.observe(&job, &attempt, &mut result);
            let next = self.next(&job, &mut result, run_deadline);
            let more = !matches!(next, Next::Done);
            result.journaled = self
                .journal_end(&job, attempt, &result, more)
                .or(result.journaled);
            let Next::Retry(delay) = next else {
                return result;
            };
            let component = &self.wf.component_names[job.step];
            self.inner.metrics.observe_retry(component);
            tracing::debug!(run = self.id, step = %self.wf.workflow.steps[job.step].id, attempt = result.attempts, outcome = %result.outcome.kind(), ?delay, "retrying");
            tokio::select! {
                biased;
                () = job.cancel.cancelled() => {
                    result.interrupted = self.host_stopping();
                    return result;
                }
                () = self.inner.draining.cancelled() => {
                    result.interrupted = true;
                    return result;
                }
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Stage 1: the attempt's deadline (the earliest of the run's, its
    /// caller's and its own timeout) and its start in the journal.
    fn begin(&self, job: &Job<'_>, number: u32, run_deadline: Option<Deadline>) -> Attempt {
        let def = &self.wf.workflow.steps[job.step];
        let now = Instant::now();
        let timeout = def.limits.timeout.unwrap_or(self.defaults.timeout);
        let deadline = step_deadline(now, None, run_deadline, job.parent, Some(timeout))
            .expect("a step timeout is always given");
        if let (Some(journal), Some((_, item))) = (&self.inner.journal, job.unit) {
            journal.append(Event::AttemptStarted {
                run: self.id,
                step: Arc::clone(&def.id),
                item,
                attempt: number,
                at: now_millis(),
            });
        }
        Attempt {
            number,
            started: now,
            started_us: now_micros(),
            deadline,
            timeout,
            limits: AttemptLimits {
                time: deadline.at.saturating_duration_since(now),
                ..AttemptLimits::default()
            },
            usage: Usage::default(),
            log: None,
        }
    }

    /// Stages 2 to 4: through the component's breaker, then admission, then
    /// the runner. Every way out is an outcome.
    async fn try_once(
        self: &Arc<Self>,
        job: &Job<'_>,
        input: &[u8],
        attempt: &mut Attempt,
        fuel_left: Option<u64>,
    ) -> Outcome {
        let component = &self.wf.components[job.step];
        let digest = component.digest();
        let breakers = &self.inner.breakers;
        let permit = match breakers.acquire(&digest, attempt.started) {
            Ok(permit) => permit,
            Err(rejected) => {
                return Outcome::CircuitOpen {
                    component: component.name().to_owned(),
                    retry_after: match rejected {
                        Rejected::OpenUntil(until) => until.saturating_duration_since(attempt.started),
                        Rejected::ProbeInFlight => Duration::ZERO,
                    },
                };
            }
        };
        let admitted = match self.admit(job, attempt).await {
            Ok(admitted) => admitted,
            Err(outcome) => {
                breakers.release(&digest, permit);
                return outcome;
            }
        };
        let report = self.execute(job, input, attempt, fuel_left).await;
        drop(admitted);
        breakers.record(&digest, permit, report.outcome.kind(), Instant::now());
        report.outcome
    }

    /// Stage 3: a turn at the fair gate and an instance slot with the step's
    /// memory, waited for within its deadline and cancellation.
    async fn admit(&self, job: &Job<'_>, attempt: &mut Attempt) -> Result<Admitted, Outcome> {
        let inner = &self.inner;
        let def = &self.wf.workflow.steps[job.step];
        let waited = Instant::now();
        let memory = def.limits.memory.unwrap_or(self.defaults.memory);
        let scratch = def.limits.scratch.unwrap_or(self.defaults.scratch);
        attempt.limits.memory = memory.as_u64();
        attempt.limits.scratch = scratch.as_u64();
        // Files in a memory-backed /tmp take RAM like linear memory does:
        // admission counts both.
        let reserved = if self.scratch_in_memory {
            ByteSize(memory.as_u64().saturating_add(scratch.as_u64()))
        } else {
            memory
        };
        let slots = async {
            if job.unit.is_none() {
                // A child runs on its caller's slot, but its memory counts
                // against the budget; it cannot wait for it (its caller
                // holds some).
                let slot = inner.admission.try_reserve_memory(reserved)?;
                return Ok(Admitted {
                    _turn: None,
                    _slot: slot,
                });
            }
            let turn = inner.gate.acquire(self.id).await;
            let slot = inner.admission.reserve_instance(reserved).await?;
            Ok(Admitted {
                _turn: Some(turn),
                _slot: slot,
            })
        };
        let deadline = attempt.deadline.at;
        let admitted = tokio::select! {
            biased;
            () = job.cancel.cancelled() => Err(Outcome::Cancelled { elapsed: waited.elapsed() }),
            () = tokio::time::sleep_until(deadline.into()) => Err(Outcome::Timeout {
                limit: deadline.saturating_duration_since(attempt.started),
                elapsed: waited.elapsed(),
            }),
            slots = slots => slots.map_err(|e: QuotaError| Outcome::QuotaExceeded { message: e.to_string() }),
        };
        attempt.usage.queue_wait = waited.elapsed();
        admitted
    }

    /// Stage 4: the runner runs the step under its limits, serving its child
    /// calls and state through this run.
    async fn execute(
        self: &Arc<Self>,
        job: &Job<'_>,
        input: &[u8],
        attempt: &mut Attempt,
        fuel_left: Option<u64>,
    ) -> RunReport {
        let def = &self.wf.workflow.steps[job.step];
        let mut limits = def.limits;
        if let Some(cap) = fuel_left {
            limits.fuel = Some(limits.fuel.unwrap_or(self.defaults.fuel).min(cap));
        }
        attempt.limits.fuel = limits.fuel.unwrap_or(self.defaults.fuel);
        let host: Arc<dyn StepHost> = Arc::new(RunHost {
            shared: Arc::clone(self),
            depth: job.depth,
            cancel: job.cancel.clone(),
            key: Arc::clone(&job.key),
            calls: AtomicU32::new(0),
        });
        let mut options = RunOptions::default()
            .secrets(self.wf.secrets[job.step].clone())
            .limits(limits)
            .deadline(attempt.deadline.at)
            .cancel_token(job.cancel.clone())
            .host(host)
            .work(Arc::clone(&job.key), attempt.number);
        options.http = def.http.clone();
        let item = job.unit.and_then(|(_, item)| item);
        let span = tracing::info_span!(target: "stepbox::span", "step", step = %def.id, item, attempt = attempt.number, depth = job.depth);
        let report = self
            .inner
            .runner
            .run(&self.wf.components[job.step], input, options)
            .instrument(span.clone())
            .await;
        span.in_scope(|| report.log.emit(&def.id));
        let queue_wait = attempt.usage.queue_wait + report.usage.queue_wait;
        attempt.usage = Usage {
            queue_wait,
            ..report.usage
        };
        if job.unit.is_some() && self.inner.journal.is_some() {
            attempt.log = log_text(&report);
        }
        report
    }

    /// Stage 5: metrics, and the outcome in one line.
    fn observe(&self, job: &Job<'_>, attempt: &Attempt, result: &mut Attempts) {
        let kind = result.outcome.kind();
        let level = (kind == OutcomeKind::Timeout).then_some(attempt.deadline.level);
        self.inner.metrics.observe_attempt(&AttemptSample {
            component: &self.wf.component_names[job.step],
            outcome: kind.as_str(),
            usage: &attempt.usage,
            timeout_level: level,
        });
        result.timeout_level = level;
        result.message = match &result.outcome {
            Outcome::Completed { .. } => None,
            Outcome::Timeout { elapsed, .. } => {
                let configured = match attempt.deadline.level {
                    TimeoutLevel::Step => Some(attempt.timeout),
                    TimeoutLevel::Workflow => self.wf.workflow.timeout,
                    TimeoutLevel::Global => self.inner.config.global_timeout,
                    TimeoutLevel::Parent => None,
                };
                Some(timeout_message(attempt.deadline.level, configured, *elapsed))
            }
            other => Some(other.to_string()),
        };
    }

    /// Stage 6: whether to try again, and after how long. A retry that
    /// could not start before the run's deadline is not made; while the
    /// host stops, one is left to the resumed run (and the unit counts as
    /// interrupted).
    fn next(&self, job: &Job<'_>, result: &mut Attempts, run_deadline: Option<Deadline>) -> Next {
        let retry = &self.wf.workflow.steps[job.step].retry;
        let kind = result.outcome.kind();
        result.interrupted = kind == OutcomeKind::Cancelled && self.host_stopping();
        let delay = retry.delay(result.attempts, fastrand::f64());
        let wants_retry = !job.cancel.is_cancelled()
            && retry.should_retry(result.attempts, kind)
            && run_deadline.is_none_or(|d| Instant::now() + delay < d.at);
        match wants_retry {
            false => Next::Done,
            true if self.inner.draining.is_cancelled() => {
                result.interrupted = true;
                Next::OnResume
            }
            true => Next::Retry(delay),
        }
    }

    /// Stage 7: the attempt's ending in the journal, for a workflow step or
    /// item (a child call is part of its caller's attempt). `more` says
    /// whether another attempt follows (now or on resume), so that recovery
    /// knows whether this one was the unit's last word.
    fn journal_end(&self, job: &Job<'_>, attempt: Attempt, result: &Attempts, more: bool) -> Option<Ticket> {
        let journal = self.inner.journal.as_ref()?;
        let (_, item) = job.unit?;
        let kind = result.outcome.kind();
        let status = match kind {
            OutcomeKind::Completed => AttemptStatus::Completed,
            OutcomeKind::Cancelled if result.interrupted => AttemptStatus::Interrupted,
            OutcomeKind::Cancelled => AttemptStatus::Cancelled,
            _ => AttemptStatus::Failed,
        };
        let last = matches!(status, AttemptStatus::Completed | AttemptStatus::Failed) && !more;
        Some(journal.append(Event::AttemptEnded(Box::new(AttemptEnd {
            run: self.id,
            step: Arc::clone(&self.wf.workflow.steps[job.step].id),
            item,
            attempt: attempt.number,
            component: Arc::clone(&self.wf.component_names[job.step]),
            limits: attempt.limits,
            status,
            last,
            outcome: kind,
            message: result.message.clone(),
            timeout_level: result.timeout_level,
            output: result.outcome.output().map(<[u8]>::to_vec),
            log: attempt.log,
            usage: attempt.usage,
            started_us: attempt.started_us,
            at: now_millis(),
        }))))
    }
}

/// A timeout in one line, naming the level that fired and its setting
/// (`configured`, when the level has one of its own).
pub(super) fn timeout_message(
    level: TimeoutLevel,
    configured: Option<Duration>,
    elapsed: Duration,
) -> String {
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
    pub(super) fn output(&self) -> Option<Value> {
        let output = self.outcome.output()?;
        // Steps speak JSON by convention; other bytes travel on as a string.
        Some(
            serde_json::from_slice(output)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(output).into_owned())),
        )
    }

    pub(super) fn fill(self, report: &mut StepReport) {
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
        report.usage = self.usage;
    }
}
