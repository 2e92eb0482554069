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

mod fair;
mod report;
mod run;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use self::report::{RunStatus, StepReport, StepStatus, WorkflowReport};
use crate::policy::{Admission, AdmissionStats, BreakerConfig, BreakerState, Breakers, QuotaError, Quotas};
use crate::sandbox::{Digest, Sandbox, StepComponent};
use crate::workflow::{Plan, Workflow, WorkflowError};

/// Default bound on nested child calls (`call` from a step, from its child...).
pub const DEFAULT_MAX_CALL_DEPTH: u32 = 4;

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
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            quotas: Quotas::default(),
            global_timeout: None,
            breaker: BreakerConfig::default(),
            max_call_depth: DEFAULT_MAX_CALL_DEPTH,
        }
    }
}

/// Why a [`Scheduler`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// A setting is out of range.
    #[error("invalid scheduler configuration: {0}")]
    Config(String),
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
}

/// Runs workflows on one [`Sandbox`]; clones share everything.
#[derive(Clone)]
pub struct Scheduler {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    sandbox: Sandbox,
    admission: Admission,
    breakers: Breakers<Digest>,
    gate: Arc<fair::FairGate>,
    config: SchedulerConfig,
    next_run: AtomicU64,
    /// Component names by digest, for naming breakers in reports.
    names: Mutex<HashMap<Digest, String>>,
}

/// A workflow with its plan and its components loaded, ready to run many times.
pub struct PreparedWorkflow {
    workflow: Workflow,
    plan: Plan,
    components: Vec<StepComponent>,
}

impl PreparedWorkflow {
    /// The definition.
    pub fn workflow(&self) -> &Workflow {
        &self.workflow
    }

    /// The plan.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }
}

/// A submitted run: await its report, or cancel it.
#[derive(Debug)]
pub struct RunHandle {
    id: u64,
    cancel: CancellationToken,
    task: JoinHandle<WorkflowReport>,
}

impl RunHandle {
    /// The run's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Cancels the run: queued, it never starts; running, its steps stop
    /// promptly and clean up. [`RunHandle::wait`] still returns its report.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// A token that cancels this run when triggered.
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
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

impl Scheduler {
    /// A scheduler running steps on `sandbox` under `config`.
    ///
    /// # Errors
    ///
    /// [`SchedulerError::Config`] when a quota or the breaker settings are out
    /// of range, or the sandbox's instance pool is too small for
    /// `max_instances` steps that each make nested child calls (children run
    /// on their caller's slot, but each needs a pool instance).
    pub fn new(sandbox: Sandbox, config: SchedulerConfig) -> Result<Scheduler, SchedulerError> {
        config.quotas.validate().map_err(SchedulerError::Config)?;
        config.breaker.validate().map_err(SchedulerError::Config)?;
        let needed = config.quotas.max_instances as u64 * (1 + u64::from(config.max_call_depth));
        if u64::from(sandbox.max_instances()) < needed {
            return Err(SchedulerError::Config(format!(
                "the sandbox pools {} instances; {} step slots with calls nested {} deep need {needed}",
                sandbox.max_instances(),
                config.quotas.max_instances,
                config.max_call_depth
            )));
        }
        Ok(Scheduler {
            inner: Arc::new(Inner {
                admission: Admission::new(config.quotas.clone()),
                breakers: Breakers::new(config.breaker.clone()),
                gate: fair::FairGate::new(config.quotas.max_instances),
                sandbox,
                config,
                next_run: AtomicU64::new(1),
                names: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The sandbox steps run in.
    pub fn sandbox(&self) -> &Sandbox {
        &self.inner.sandbox
    }

    /// Loads every component of `workflow` (compiled once, cached) and checks
    /// it against the step world and the host's quotas.
    ///
    /// # Errors
    ///
    /// [`PrepareError::Workflow`] naming the step's `component` line when a
    /// component is missing or not a step; [`PrepareError::Quota`] when the
    /// workflow has more steps than allowed.
    pub fn prepare(&self, workflow: Workflow) -> Result<Arc<PreparedWorkflow>, PrepareError> {
        self.inner.admission.check_steps(workflow.steps.len())?;
        let sandbox = &self.inner.sandbox;
        let components = workflow
            .check_components(|step| sandbox.load_file(&step.component).map_err(|e| e.to_string()))?;
        let plan = workflow.plan();
        let mut names = self.inner.names.lock().unwrap_or_else(PoisonError::into_inner);
        for component in &components {
            names.insert(component.digest(), component.name().to_owned());
        }
        drop(names);
        Ok(Arc::new(PreparedWorkflow {
            workflow,
            plan,
            components,
        }))
    }

    /// Submits a run of `workflow` on `input`. It starts when admitted.
    ///
    /// # Errors
    ///
    /// [`QuotaError::QueueFull`] at once when `max_queued` runs already wait.
    pub fn submit(&self, workflow: &Arc<PreparedWorkflow>, input: Value) -> Result<RunHandle, QuotaError> {
        let ticket = self.inner.admission.enqueue_workflow()?;
        let id = self.inner.next_run.fetch_add(1, Ordering::Relaxed);
        let cancel = CancellationToken::new();
        let run = run::Run::new(
            Arc::clone(&self.inner),
            Arc::clone(workflow),
            id,
            input,
            cancel.clone(),
        );
        let task = tokio::spawn(run.drive(ticket, Instant::now()));
        Ok(RunHandle { id, cancel, task })
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
