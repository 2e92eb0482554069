//! Runs workflows: many runs at once, each a DAG of sandboxed steps.
//!
//! A [`Scheduler`] takes a validated [`Workflow`], loads its components once
//! ([`Scheduler::prepare`]), and runs it as often as it is submitted. Each run:
//!
//! - waits for admission (at most [`Quotas::max_workflows`] run at once, at
//!   most [`Quotas::max_queued`] wait; beyond that, submission fails at once);
//! - starts each step as soon as its needs are done, with no level barrier;
//!   `for_each` steps run one instance per item, `max_parallel` at a time,
//!   and gather the outputs in order;
//! - gives each step instance a slot from a pool shared fairly between runs,
//!   and a share of the host's memory budget (its memory limit);
//! - stops each step at the earliest of the global, workflow and step
//!   deadlines, and reports which one fired;
//! - retries failed attempts by the step's retry policy, and fails fast with
//!   `circuit-open` while the component's breaker is open;
//! - on a failure (unless `continue_on_error`), cancels the steps still
//!   running in the run; their temporary directories are removed like any
//!   instance's.
//!
//! Runs share nothing but the host's capacity: each has its own state, its
//! own lock for it, and its own cancellation.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use stepbox::scheduler::{Scheduler, SchedulerConfig};
//! use stepbox::workflow::Workflow;
//! use stepbox::Sandbox;
//!
//! let scheduler = Scheduler::new(Sandbox::builder().build()?, SchedulerConfig::default())?;
//! let workflow = scheduler.prepare(Workflow::from_file("docs.yaml".as_ref())?)?;
//! let run = scheduler.submit(&workflow, serde_json::json!({"text": "a b a"}))?;
//! let report = run.wait().await;
//! println!("{:?}: {:?}", report.status, report.output);
//! # Ok(()) }
//! ```

mod attempt;
mod calls;
mod fair;
mod items;
mod record;
mod report;
mod run;
mod runner;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use self::report::{RunStatus, StepReport, StepStatus, WorkflowReport};
pub use self::runner::{Component, StepRunner};
use crate::metrics::{HostGauges, Metrics};
use crate::policy::{
    Admission, AdmissionStats, BreakerConfig, BreakerState, Breakers, InvalidSetting, QuotaError, Quotas,
};
use crate::sandbox::{Digest, HttpGrant, Sandbox, Secrets};
use crate::store::{Event, Journal, RecoveredRun, RunId, StoreError, WorkflowRecord, now_millis};
use crate::workflow::{Plan, Workflow, WorkflowError};

/// Default bound on nested child calls (`call` from a step, from its child...).
pub const DEFAULT_MAX_CALL_DEPTH: u32 = 4;

/// Default bound on the child calls one attempt of a step may make. Each
/// costs the host an instance and an entry in the run's report; fan-out
/// belongs in a `for_each`, whose items are journaled and resumed.
pub const DEFAULT_MAX_CHILD_CALLS: u32 = 10_000;

/// The child calls a run's report keeps (the first ones): a run whose steps
/// make millions of calls must not grow its report without end.
pub const MAX_CHILD_REPORTS: usize = 10_000;

/// How a [`Scheduler`] shares the host between workflow runs.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Admission and resource quotas.
    pub quotas: Quotas,
    /// The host-wide limit on a run, from its submission: the outermost
    /// level of the timeout hierarchy.
    pub global_timeout: Option<Duration>,
    /// When a component's circuit breaker opens, and for how long.
    pub breaker: BreakerConfig,
    /// How deeply child calls may nest.
    pub max_call_depth: u32,
    /// How many child calls one attempt of a step may make; past it `call`
    /// fails in the guest.
    pub max_child_calls: u32,
    /// The secret values this host holds: a step reads those its workflow
    /// names in its `secrets`, and no other.
    pub secrets: Secrets,
    /// Whether a secret missing from [`SchedulerConfig::secrets`] is read
    /// from the environment variable of the same name.
    pub secrets_from_env: bool,
    /// The HTTP destinations a workflow may grant its steps at most; `None`
    /// lets it grant any. A host whose workflows come from others (a
    /// server's tenants) sets this, so that a workflow cannot grant its
    /// steps the host's own network (a metadata service, a database).
    pub http_ceiling: Option<Vec<HttpGrant>>,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            quotas: Quotas::default(),
            global_timeout: None,
            breaker: BreakerConfig::default(),
            max_call_depth: DEFAULT_MAX_CALL_DEPTH,
            max_child_calls: DEFAULT_MAX_CHILD_CALLS,
            secrets: Secrets::default(),
            secrets_from_env: false,
            http_ceiling: None,
        }
    }
}

/// Why a [`Scheduler`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// A quota is out of range.
    #[error("invalid quotas: {0}")]
    Quotas(InvalidSetting),
    /// The circuit breaker settings are out of range.
    #[error("invalid breaker settings: {0}")]
    Breaker(InvalidSetting),
    /// The runner's instance pool cannot hold every step slot's nested calls.
    #[error(
        "the sandbox pools {pooled} instances; {slots} step slots with calls nested {depth} deep need {needed}"
    )]
    PoolTooSmall {
        /// Instances the runner pools.
        pooled: u32,
        /// Step slots ([`Quotas::max_instances`]).
        slots: usize,
        /// [`SchedulerConfig::max_call_depth`].
        depth: u32,
        /// Instances they need: one per slot and per level of nesting.
        needed: u64,
    },
}

/// Why a workflow could not be prepared to run.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// The workflow file is invalid, or one of its components is.
    #[error(transparent)]
    Workflow(#[from] WorkflowError),
    /// The workflow is larger than the host allows.
    #[error(transparent)]
    Quota(#[from] QuotaError),
    /// A component could not be read again to be recorded in the journal.
    #[error("cannot record component `{}` in the journal: {message}", path.display())]
    Record {
        /// The component file.
        path: std::path::PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A step grants itself an HTTP destination beyond the host's ceiling.
    #[error("step `{step}` grants `{grant}`, which this host does not allow (its [http] allow list)")]
    HttpNotAllowed {
        /// The step.
        step: String,
        /// The grant.
        grant: String,
    },
    /// A step names a secret this host does not hold.
    #[error(
        "step `{step}` needs secret `{name}`, which this host does not have \
         (set it under [secrets] in stepbox.toml, or in the environment)"
    )]
    MissingSecret {
        /// The step.
        step: String,
        /// The secret.
        name: String,
    },
}

/// Why a run could not be submitted. Nothing was accepted.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// A quota refused it (the admission queue is full).
    #[error(transparent)]
    Quota(#[from] QuotaError),
    /// The scheduler is shutting down.
    #[error("the host is shutting down and accepts no new runs")]
    ShuttingDown,
    /// The journal could not record the run as accepted.
    #[error("cannot record the run as accepted: {0}")]
    Journal(#[from] StoreError),
}

/// Runs workflows on one [`StepRunner`] (a [`Sandbox`] unless told
/// otherwise); clones share everything.
pub struct Scheduler<R: StepRunner = Sandbox> {
    inner: Arc<Inner<R>>,
}

impl<R: StepRunner> Clone for Scheduler<R> {
    fn clone(&self) -> Self {
        Scheduler {
            inner: Arc::clone(&self.inner),
        }
    }
}

pub(crate) struct Inner<R: StepRunner> {
    runner: R,
    admission: Admission,
    breakers: Breakers<Digest>,
    gate: Arc<fair::FairGate>,
    config: SchedulerConfig,
    next_run: AtomicU64,
    /// Component names by digest, for naming breakers in reports.
    names: Mutex<HashMap<Digest, String>>,
    /// Where runs are recorded; `None` under `memory` durability.
    journal: Option<Journal>,
    /// Set when shutting down: nothing new is admitted or started.
    draining: CancellationToken,
    /// Set when the grace period is over: running steps stop.
    interrupt: CancellationToken,
    /// Every run task, so that shutdown can wait for them.
    runs: TaskTracker,
    /// The journal failure that stopped the scheduler.
    fatal: OnceLock<StoreError>,
    /// Workflows rebuilt from the journal, by digest, for resumed runs.
    recorded: Mutex<HashMap<String, Arc<PreparedWorkflow<R>>>>,
    metrics: Arc<Metrics>,
}

impl<R: StepRunner> Inner<R> {
    /// Stops the scheduler for good after a journal failure: runs cannot be
    /// recorded, so none may go on. They stay incomplete in the journal.
    fn stop_on(&self, error: StoreError) {
        if self.fatal.set(error).is_ok() {
            tracing::error!(error = %self.fatal.get().map(ToString::to_string).unwrap_or_default(), "stopping: the journal failed");
        }
        self.draining.cancel();
        self.interrupt.cancel();
    }
}

/// One run to submit: a workflow, its input and where it came from.
/// A `(workflow, input)` pair converts into a submission with neither tenant
/// nor key.
///
/// ```no_run
/// # fn f(scheduler: &stepbox::scheduler::Scheduler, wf: std::sync::Arc<stepbox::scheduler::PreparedWorkflow>) {
/// use stepbox::scheduler::Submission;
/// let run = Submission {
///     tenant: Some("acme".into()),
///     key: Some("order-17".into()),
///     ..Submission::from((wf, serde_json::json!({"n": 17})))
/// };
/// let handles = scheduler.submit_all([run]);
/// # }
/// ```
pub struct Submission<R: StepRunner = Sandbox> {
    /// What to run.
    pub workflow: Arc<PreparedWorkflow<R>>,
    /// Its input.
    pub input: Value,
    /// The tenant it runs for, recorded with it (see
    /// [`RunFilter::tenant`](crate::store::RunFilter::tenant)).
    pub tenant: Option<Arc<str>>,
    /// The submitter's idempotency key, recorded with it. The scheduler
    /// does not look keys up: its caller checks one before submitting
    /// (see [`StoreReader::run_by_key`](crate::store::StoreReader::run_by_key)).
    pub key: Option<Arc<str>>,
    /// A share the run must hold while it executes: a permit of this
    /// semaphore, taken before admission and kept until the run ends, so
    /// that at most its permits' worth of the runs given it execute at
    /// once (a tenant's running quota). Waiting for it, a run holds no
    /// workflow slot.
    pub gate: Option<Arc<tokio::sync::Semaphore>>,
    /// Whether the submitter tells no one of the run until it ends (a
    /// server's `?wait=` request). Such a run starts without waiting for its
    /// acceptance to be durable: the acceptance is committed with the run's
    /// first completion instead of in a commit of its own, one fsync less
    /// on its way. A crash before then loses a run nobody was told of; the
    /// submitter sees its request fail and may submit again.
    pub waited: bool,
}

impl<R: StepRunner> From<(Arc<PreparedWorkflow<R>>, Value)> for Submission<R> {
    fn from((workflow, input): (Arc<PreparedWorkflow<R>>, Value)) -> Self {
        Submission {
            workflow,
            input,
            tenant: None,
            key: None,
            gate: None,
            waited: false,
        }
    }
}

/// A workflow with its plan and its components loaded, ready to run many times.
pub struct PreparedWorkflow<R: StepRunner = Sandbox> {
    workflow: Workflow,
    components: Vec<R::Component>,
    /// Per step, its component's file name, as journal events carry it:
    /// shared by every attempt rather than copied into each.
    component_names: Vec<Arc<str>>,
    /// Per step, the secrets it may read.
    secrets: Vec<Secrets>,
    /// How the journal knows it; `None` without a journal.
    record: Option<Recorded>,
    /// Whether any of its steps may act outside the host (is granted
    /// outbound HTTP): then, under strict durability, each step waits for
    /// its needs' completions to be durable before it starts.
    reaches_out: bool,
}

/// What every run's acceptance says of its workflow's journal record:
/// made once, shared by every run.
struct Recorded {
    digest: Arc<str>,
    name: Arc<str>,
}

impl<R: StepRunner> PreparedWorkflow<R> {
    /// The definition.
    pub fn workflow(&self) -> &Workflow {
        &self.workflow
    }

    /// Whether any of its steps is granted outbound HTTP, and so may act
    /// outside the host. Under strict durability the steps of such a
    /// workflow start only once their needs' completions are durable; the
    /// steps of one that cannot start at once, because all they do reaches
    /// only the journal (see [`Durability`](crate::store::Durability)).
    pub fn reaches_out(&self) -> bool {
        self.reaches_out
    }

    /// The plan.
    pub fn plan(&self) -> &Plan {
        self.workflow.plan()
    }
}

/// A submitted run: await its report, or cancel it.
#[derive(Debug)]
pub struct RunHandle {
    id: RunId,
    cancel: CancellationToken,
    admitted: Arc<AtomicBool>,
    task: JoinHandle<WorkflowReport>,
}

impl RunHandle {
    /// The run's id: with a journal, its id in the journal.
    pub fn id(&self) -> RunId {
        self.id
    }

    /// Cancels the run: queued, it never starts; running, its steps stop
    /// promptly and clean up. [`RunHandle::wait`] still returns its report.
    /// A cancelled run is final: it does not resume.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// A token that cancels this run when triggered.
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// A flag that turns true once the run is admitted (it left the queue).
    pub fn admitted_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.admitted)
    }

    /// Whether the run has ended (its report is ready for [`RunHandle::wait`]).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Waits for the run to end and returns its report.
    ///
    /// # Panics
    ///
    /// If the run's task panicked: a bug in stepbox, not in a step.
    pub async fn wait(self) -> WorkflowReport {
        match self.task.await {
            Ok(report) => report,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => panic!("workflow run {} was aborted: {e}", self.id),
        }
    }
}

impl<R: StepRunner> Scheduler<R> {
    /// A scheduler running steps on `runner` (a [`Sandbox`]) under `config`.
    ///
    /// # Errors
    ///
    /// [`SchedulerError::Quotas`] or [`SchedulerError::Breaker`] when a
    /// setting is out of range; [`SchedulerError::PoolTooSmall`] when the
    /// runner's instance pool is too small for `max_instances` steps that
    /// each make nested child calls (children run on their caller's slot,
    /// but each needs a pool instance).
    pub fn new(runner: R, config: SchedulerConfig) -> Result<Scheduler<R>, SchedulerError> {
        Scheduler::build(runner, config, None)
    }

    /// A scheduler that records every run in `journal`: accepted before it
    /// starts, every attempt, state write and ending, at the journal's
    /// durability level. Runs the journal gives back on start go to
    /// [`Scheduler::resume`].
    ///
    /// # Errors
    ///
    /// As [`Scheduler::new`].
    pub fn with_journal(
        runner: R,
        config: SchedulerConfig,
        journal: Journal,
    ) -> Result<Scheduler<R>, SchedulerError> {
        Scheduler::build(runner, config, Some(journal))
    }

    fn build(
        runner: R,
        config: SchedulerConfig,
        journal: Option<Journal>,
    ) -> Result<Scheduler<R>, SchedulerError> {
        config.quotas.validate().map_err(SchedulerError::Quotas)?;
        config.breaker.validate().map_err(SchedulerError::Breaker)?;
        let needed = config.quotas.max_instances as u64 * (1 + u64::from(config.max_call_depth));
        if u64::from(runner.max_instances()) < needed {
            return Err(SchedulerError::PoolTooSmall {
                pooled: runner.max_instances(),
                slots: config.quotas.max_instances,
                depth: config.max_call_depth,
                needed,
            });
        }
        let metrics = Arc::new(Metrics::new());
        if let Some(journal) = &journal {
            journal.observe(Arc::clone(&metrics) as Arc<dyn crate::store::CommitObserver>);
        }
        Ok(Scheduler {
            inner: Arc::new(Inner {
                admission: Admission::new(config.quotas.clone()),
                breakers: Breakers::new(config.breaker.clone()),
                gate: fair::FairGate::new(config.quotas.max_instances),
                runner,
                config,
                next_run: AtomicU64::new(1),
                names: Mutex::new(HashMap::new()),
                journal,
                draining: CancellationToken::new(),
                interrupt: CancellationToken::new(),
                runs: TaskTracker::new(),
                fatal: OnceLock::new(),
                recorded: Mutex::new(HashMap::new()),
                metrics,
            }),
        })
    }

    /// The metrics this scheduler keeps.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// The metrics in the Prometheus text format, with the gauges (queue
    /// depth, instances, memory, breakers) as they are now.
    pub fn metrics_text(&self) -> String {
        crate::metrics::to_classic(&self.metrics_openmetrics())
    }

    /// The metrics in the OpenMetrics text format (ending in `# EOF`), with
    /// the gauges as they are now.
    pub fn metrics_openmetrics(&self) -> String {
        let stats = self.stats();
        self.inner.metrics.set_gauges(&HostGauges {
            queued: stats.queued_workflows as u64,
            running: stats.running_workflows as u64,
            instances: stats.instances_in_use as u64,
            memory: stats.memory_in_use.as_u64(),
            breakers: self
                .breakers()
                .into_iter()
                .map(|(name, state)| (name, state.as_str().to_owned()))
                .collect(),
        });
        self.inner.metrics.encode_openmetrics()
    }

    /// The journal runs are recorded in, if any.
    pub fn journal(&self) -> Option<&Journal> {
        self.inner.journal.as_ref()
    }

    /// The journal failure that stopped this scheduler, if one did. Runs
    /// cut short by it end [`RunStatus::Interrupted`] and resume on restart.
    pub fn journal_error(&self) -> Option<&StoreError> {
        self.inner.fatal.get()
    }

    /// The runner steps run on: the sandbox.
    pub fn runner(&self) -> &R {
        &self.inner.runner
    }

    /// Loads every component of `workflow` (compiled once, cached) and checks
    /// it against the step world and the host's quotas.
    ///
    /// # Errors
    ///
    /// [`PrepareError::Workflow`] naming the step's `component` line when a
    /// component is missing or not a step; [`PrepareError::Quota`] when the
    /// workflow has more steps than allowed.
    pub fn prepare(&self, workflow: Workflow) -> Result<Arc<PreparedWorkflow<R>>, PrepareError> {
        self.inner.admission.check_steps(workflow.steps.len())?;
        let secrets = self.grants(&workflow)?;
        let runner = &self.inner.runner;
        let components =
            workflow.check_components(|step| runner.load_file(&step.component).map_err(|e| e.to_string()))?;
        let record = match &self.inner.journal {
            None => None,
            Some(journal) => {
                let record = record::record(&workflow, &components)?;
                journal.append(Event::WorkflowDefined(Arc::clone(&record)));
                Some(record)
            }
        };
        Ok(self.assemble(workflow, components, secrets, record))
    }

    /// Checks what `workflow` grants its steps against what this host
    /// allows: its HTTP destinations against the ceiling, its secrets
    /// against those the host holds. Returns each step's secrets.
    fn grants(&self, workflow: &Workflow) -> Result<Vec<Secrets>, PrepareError> {
        let config = &self.inner.config;
        if let Some(ceiling) = &config.http_ceiling {
            for step in &workflow.steps {
                let mut grants = step.http.iter().flat_map(|h| h.allow.iter());
                if let Some(beyond) = grants.find(|g| !ceiling.contains(g)) {
                    return Err(PrepareError::HttpNotAllowed {
                        step: step.id.to_string(),
                        grant: beyond.to_string(),
                    });
                }
            }
        }
        workflow
            .steps
            .iter()
            .map(|step| {
                config
                    .secrets
                    .select(&step.secrets, config.secrets_from_env)
                    .map_err(|name| PrepareError::MissingSecret {
                        step: step.id.to_string(),
                        name: name.to_owned(),
                    })
            })
            .collect()
    }

    fn assemble(
        &self,
        workflow: Workflow,
        components: Vec<R::Component>,
        secrets: Vec<Secrets>,
        record: Option<Arc<WorkflowRecord>>,
    ) -> Arc<PreparedWorkflow<R>> {
        let mut names = self.inner.names.lock().unwrap_or_else(PoisonError::into_inner);
        for component in &components {
            names.insert(component.digest(), component.name().to_owned());
        }
        drop(names);
        let component_names = components.iter().map(|c| short_name(c.name()).into()).collect();
        let reaches_out = workflow.steps.iter().any(|s| s.http.is_some());
        Arc::new(PreparedWorkflow {
            reaches_out,
            workflow,
            components,
            component_names,
            secrets,
            record: record.map(|record| Recorded {
                digest: record.digest.as_str().into(),
                name: record.name.as_str().into(),
            }),
        })
    }

    /// Submits a run of `workflow` on `input`. It starts when admitted; with
    /// a journal, once it is recorded as accepted.
    ///
    /// # Errors
    ///
    /// [`SubmitError::Quota`] at once when `max_queued` runs already wait;
    /// [`SubmitError::ShuttingDown`] once [`Scheduler::shutdown`] began.
    pub fn submit(
        &self,
        workflow: &Arc<PreparedWorkflow<R>>,
        input: Value,
    ) -> Result<RunHandle, SubmitError> {
        let mut handles = self.submit_all([(Arc::clone(workflow), input)])?;
        Ok(handles.remove(0))
    }

    /// Submits several runs, all or none: with a journal, every one of them
    /// is recorded as accepted (in one commit) before any starts, so a crash
    /// loses none of them.
    ///
    /// # Errors
    ///
    /// As [`Scheduler::submit`]; when one is refused, none is submitted.
    pub fn submit_all(
        &self,
        runs: impl IntoIterator<Item = impl Into<Submission<R>>>,
    ) -> Result<Vec<RunHandle>, SubmitError> {
        if self.inner.draining.is_cancelled() {
            return Err(SubmitError::ShuttingDown);
        }
        let runs: Vec<Submission<R>> = runs.into_iter().map(Into::into).collect();
        let tickets = runs
            .iter()
            .map(|_| self.inner.admission.enqueue_workflow())
            .collect::<Result<Vec<_>, _>>()
            .inspect_err(|_| self.inner.metrics.observe_rejection())?;
        let ids: Vec<RunId> = match &self.inner.journal {
            None => runs
                .iter()
                .map(|_| self.inner.next_run.fetch_add(1, Ordering::Relaxed))
                .collect(),
            Some(journal) => runs
                .iter()
                .map(|_| journal.next_run_id())
                .collect::<Result<_, _>>()?,
        };
        let accepted = self
            .inner
            .journal
            .as_ref()
            .map(|journal| journal.append_all(acceptances(journal, &runs, &ids, false)));
        let handles = runs
            .into_iter()
            .zip(ids)
            .zip(tickets)
            .map(|((run, id), ticket)| {
                let start = run::Start {
                    ticket,
                    submitted: Instant::now(),
                    accepted: if run.waited { None } else { accepted },
                    admitted: Arc::default(),
                    gate: run.gate,
                };
                self.spawn(run.workflow, id, run.input, start, None)
            })
            .collect();
        Ok(handles)
    }

    /// Records runs as accepted and queued for any host sharing the store
    /// to claim (see [`Event::RunAccepted`]'s `queued`), without running
    /// them here: for a host with no free slot for them. All or none, in
    /// one commit; returns their ids once it is durable.
    ///
    /// # Errors
    ///
    /// [`SubmitError::ShuttingDown`] once [`Scheduler::shutdown`] began;
    /// [`SubmitError::Journal`] without a journal, or when the journal
    /// cannot record them.
    pub async fn queue_all(&self, runs: Vec<Submission<R>>) -> Result<Vec<RunId>, SubmitError> {
        if self.inner.draining.is_cancelled() {
            return Err(SubmitError::ShuttingDown);
        }
        let Some(journal) = &self.inner.journal else {
            return Err(SubmitError::Journal(StoreError::Other {
                path: "(memory)".into(),
                detail: "runs are queued for other hosts only in a journal they share".into(),
            }));
        };
        let ids: Vec<RunId> = runs
            .iter()
            .map(|_| journal.next_run_id())
            .collect::<Result<_, _>>()?;
        let ticket = journal.append_all(acceptances(journal, &runs, &ids, true));
        journal.durable(ticket).await?;
        Ok(ids)
    }

    /// Resumes a run the journal gave back on start: steps it completed are
    /// not run again (their outputs come from the journal), steps that were
    /// in flight run again with the next attempt number, and its state is
    /// as it was last written. It runs the definition and components it was
    /// accepted with.
    ///
    /// A run whose code is gone from the journal, or no longer loads, ends
    /// [`RunStatus::Failed`] saying so.
    ///
    /// # Errors
    ///
    /// As [`Scheduler::submit`].
    pub fn resume(&self, run: RecoveredRun) -> Result<RunHandle, SubmitError> {
        self.resume_gated(run, None)
    }

    /// Resumes `run` as [`Scheduler::resume`] does, but admits it only
    /// with a permit of `gate` (its tenant's running quota on this host),
    /// as [`Submission::gate`] does: for a run this host claimed from the
    /// queue of a store that hosts share, never admitted before.
    ///
    /// # Errors
    ///
    /// As [`Scheduler::resume`].
    pub fn resume_gated(
        &self,
        run: RecoveredRun,
        gate: Option<Arc<tokio::sync::Semaphore>>,
    ) -> Result<RunHandle, SubmitError> {
        if self.inner.draining.is_cancelled() {
            return Err(SubmitError::ShuttingDown);
        }
        let ticket = self
            .inner
            .admission
            .enqueue_workflow()
            .inspect_err(|_| self.inner.metrics.observe_rejection())?;
        let input: Value = serde_json::from_slice(&run.input).unwrap_or(Value::Null);
        let prepared = run
            .workflow
            .as_ref()
            .map_err(ToString::to_string)
            .and_then(|record| self.prepare_recorded(record));
        let id = run.id;
        let start = run::Start {
            ticket,
            submitted: Instant::now(),
            accepted: None,
            admitted: Arc::default(),
            gate,
        };
        match prepared {
            Ok(wf) => {
                let resume = record::Resume::new(&wf, &run);
                Ok(self.spawn(wf, id, input, start, Some(resume)))
            }
            Err(why) => {
                let message = format!("cannot resume run {id}: {why}");
                let cancel = CancellationToken::new();
                let task = self
                    .inner
                    .runs
                    .spawn(run::fail_unresumable(Arc::clone(&self.inner), id, message));
                let admitted = Arc::new(AtomicBool::new(false));
                Ok(RunHandle {
                    id,
                    cancel,
                    admitted,
                    task,
                })
            }
        }
    }

    /// The prepared workflow for a journal record, built once per digest.
    fn prepare_recorded(&self, record: &Arc<WorkflowRecord>) -> Result<Arc<PreparedWorkflow<R>>, String> {
        let cached = self
            .inner
            .recorded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&record.digest)
            .cloned();
        if let Some(wf) = cached {
            return Ok(wf);
        }
        let (workflow, components) = record::rebuild(&self.inner.runner, record)?;
        self.inner
            .admission
            .check_steps(workflow.steps.len())
            .map_err(|e| e.to_string())?;
        let secrets = self.grants(&workflow).map_err(|e| e.to_string())?;
        let wf = self.assemble(workflow, components, secrets, Some(Arc::clone(record)));
        self.inner
            .recorded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(record.digest.clone(), Arc::clone(&wf));
        Ok(wf)
    }

    fn spawn(
        &self,
        wf: Arc<PreparedWorkflow<R>>,
        id: RunId,
        input: Value,
        start: run::Start,
        resume: Option<record::Resume>,
    ) -> RunHandle {
        let cancel = self.inner.interrupt.child_token();
        // Its own target, so a log filter that shows any event keeps the spans.
        let span =
            tracing::info_span!(target: "stepbox::span", "run", run = id, workflow = %wf.workflow.name);
        let run = run::Run::new(Arc::clone(&self.inner), wf, id, input, cancel.clone(), resume);
        let admitted = Arc::clone(&start.admitted);
        let task = self
            .inner
            .runs
            .spawn(tracing::Instrument::instrument(run.drive(start), span));
        RunHandle {
            id,
            cancel,
            admitted,
            task,
        }
    }

    /// Shuts down gracefully: admits and starts nothing new, lets the steps
    /// running finish within `grace`, then stops the rest. Runs that did not
    /// finish end [`RunStatus::Interrupted`]: with a journal they stay
    /// incomplete (their interrupted steps are recorded so) and resume on
    /// the next start. Returns once every run has ended and the journal is
    /// flushed.
    ///
    /// # Errors
    ///
    /// The journal's failure, if it failed.
    pub async fn shutdown(&self, grace: Duration) -> Result<(), StoreError> {
        let inner = &self.inner;
        inner.draining.cancel();
        inner.runs.close();
        if tokio::time::timeout(grace, inner.runs.wait()).await.is_err() {
            tracing::info!(?grace, "grace period over: interrupting the steps still running");
            inner.interrupt.cancel();
            inner.runs.wait().await;
        }
        match &inner.journal {
            Some(journal) => journal.flush().await,
            None => Ok(()),
        }
    }

    /// Whether [`Scheduler::shutdown`] has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.draining.is_cancelled()
    }

    /// Runs in flight and waiting, instances and memory in use.
    pub fn stats(&self) -> AdmissionStats {
        self.inner.admission.stats()
    }

    /// Every component's breaker state, by component name.
    pub fn breakers(&self) -> Vec<(String, BreakerState)> {
        let now = Instant::now();
        let names = self.inner.names.lock().unwrap_or_else(PoisonError::into_inner);
        self.inner
            .breakers
            .snapshot(now)
            .into_iter()
            .map(|(digest, state)| {
                let name = names.get(&digest).cloned().unwrap_or_else(|| digest.to_string());
                (name, state)
            })
            .collect()
    }
}

/// The events accepting `runs` as `ids` (queued for any host, or this one's).
fn acceptances<R: StepRunner>(
    journal: &Journal,
    runs: &[Submission<R>],
    ids: &[RunId],
    queued: bool,
) -> Vec<Event> {
    let at = now_millis();
    let lease_until = journal.lease_until();
    runs.iter()
        .zip(ids)
        .map(|(run, &id)| {
            let record = run
                .workflow
                .record
                .as_ref()
                .expect("workflows prepared with a journal have a record");
            Event::RunAccepted {
                run: id,
                workflow: Arc::clone(&record.digest),
                name: Arc::clone(&record.name),
                lease_until,
                queued,
                input: serde_json::to_vec(&run.input).unwrap_or_else(|_| b"null".to_vec()),
                at,
                tenant: run.tenant.clone(),
                key: run.key.clone(),
            }
        })
        .collect()
}

/// A component's file name: how metrics, reports and the journal name it.
fn short_name(name: &str) -> &str {
    name.rsplit(['/', '\\']).next().unwrap_or(name)
}
