//! The events a journal records, and the small enums they carry.

use std::sync::Arc;
use std::time::Duration;

use super::{Millis, RunId};
use crate::outcome::{OutcomeKind, Usage};
use crate::policy::TimeoutLevel;

/// Something that happened to a run, as the journal records it.
#[derive(Debug, Clone)]
pub enum Event {
    /// A workflow definition and its components, recorded once, before the
    /// first run that uses them.
    WorkflowDefined(Arc<WorkflowRecord>),
    /// A run was accepted: from now on it must reach a final status.
    RunAccepted {
        /// The run.
        run: RunId,
        /// The digest of its [`WorkflowRecord`].
        workflow: Arc<str>,
        /// The workflow's name.
        name: Arc<str>,
        /// Its first lease's end. The run is owned by the writer that
        /// writes this event (the host that accepted it), unless it is
        /// `queued`.
        lease_until: Millis,
        /// Accepted for whichever host claims it first, on a store hosts
        /// share: no one owns it until then (the accepting host has no free
        /// slot for it), so its other events are refused until a claim.
        queued: bool,
        /// Its input (JSON).
        input: Vec<u8>,
        /// When.
        at: Millis,
        /// The tenant it was submitted for, on a server with tenants.
        tenant: Option<Arc<str>>,
        /// The submitter's idempotency key: within its tenant, a run with
        /// this key is the answer to any later submission with it (see
        /// [`StoreReader::run_by_key`](super::StoreReader::run_by_key)).
        key: Option<Arc<str>>,
    },
    /// A run started executing again: resumed after its host stopped or
    /// crashed. (A fresh run's start needs no event: its first attempt
    /// shows it running, and [`Event::RunEnded`] records when it started.
    /// Under load that spares the journal one write per run.)
    RunStarted {
        /// The run.
        run: RunId,
        /// When.
        at: Millis,
    },
    /// An attempt at a unit of work started.
    AttemptStarted {
        /// The run.
        run: RunId,
        /// The step's id.
        step: Arc<str>,
        /// The item, for a `for_each` step.
        item: Option<u32>,
        /// The attempt's number.
        attempt: u32,
        /// When.
        at: Millis,
    },
    /// An attempt ended.
    AttemptEnded(Box<AttemptEnd>),
    /// A step wrote the run's state.
    StateWritten {
        /// The run.
        run: RunId,
        /// The key.
        key: String,
        /// Its new value (JSON).
        value: String,
    },
    /// A run reached a status: final, or [`RunState::Interrupted`] when the
    /// host stopped before it finished (it resumes on restart).
    RunEnded {
        /// The run.
        run: RunId,
        /// Its status.
        status: RunState,
        /// Its output (JSON), when it succeeded.
        output: Option<Vec<u8>>,
        /// Why it did not succeed.
        error: Option<String>,
        /// When it was admitted and started executing, if it was.
        started: Option<Millis>,
        /// When.
        at: Millis,
    },
}

impl Event {
    /// The run the event is about; none for a workflow's definition, which
    /// runs share.
    ///
    /// ```
    /// use stepbox::store::Event;
    /// let event = Event::RunStarted { run: 7, at: 0 };
    /// assert_eq!(event.run(), Some(7));
    /// ```
    pub fn run(&self) -> Option<RunId> {
        match self {
            Event::WorkflowDefined(_) => None,
            Event::RunAccepted { run, .. }
            | Event::RunStarted { run, .. }
            | Event::AttemptStarted { run, .. }
            | Event::StateWritten { run, .. }
            | Event::RunEnded { run, .. } => Some(*run),
            Event::AttemptEnded(end) => Some(end.run),
        }
    }
}

/// How an attempt ended.
#[derive(Debug, Clone)]
pub struct AttemptEnd {
    /// The run.
    pub run: RunId,
    /// The step's id.
    pub step: Arc<str>,
    /// The item, for a `for_each` step.
    pub item: Option<u32>,
    /// The attempt's number.
    pub attempt: u32,
    /// The component it ran (its name).
    pub component: Arc<str>,
    /// The limits it ran under.
    pub limits: AttemptLimits,
    /// How it ended.
    pub status: AttemptStatus,
    /// Whether no retry follows: the unit's result is this attempt's.
    pub last: bool,
    /// The outcome's kind.
    pub outcome: OutcomeKind,
    /// The outcome in one line, when it did not complete.
    pub message: Option<String>,
    /// Which level of the timeout hierarchy fired, for a timeout.
    pub timeout_level: Option<TimeoutLevel>,
    /// Its output, when it completed.
    pub output: Option<Vec<u8>>,
    /// What it logged, if anything.
    pub log: Option<String>,
    /// What it used.
    pub usage: Usage,
    /// When it started, in microseconds since the Unix epoch (timelines
    /// of sub-millisecond steps need them).
    pub started_us: i64,
    /// When.
    pub at: Millis,
}

/// The limits an attempt ran under: what its usage is measured against.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct AttemptLimits {
    /// Fuel.
    pub fuel: u64,
    /// Linear memory, in bytes.
    pub memory: u64,
    /// Time, from the attempt's start to its effective deadline.
    #[serde(serialize_with = "crate::limits::serialize_millis")]
    pub time: Duration,
    /// Bytes it may keep in its `/tmp` (0 in journals from before the quota).
    pub scratch: u64,
}

/// How an attempt stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttemptStatus {
    /// Started and not (yet) ended: in flight, or cut short by a crash.
    Started,
    /// It produced output.
    Completed,
    /// It failed.
    Failed,
    /// The host stopped it (shutdown); it runs again on resume.
    Interrupted,
    /// The run was cancelled, or another step failed it.
    Cancelled,
}

/// Where a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunState {
    /// Accepted, not yet admitted.
    Accepted,
    /// Admitted and executing (or its host crashed): recorded for a
    /// resumed run; for a fresh one, known from its attempts.
    Running,
    /// Its host shut down before it finished; it resumes on restart.
    Interrupted,
    /// Finished with output.
    Succeeded,
    /// Finished without output.
    Failed,
    /// Cancelled from outside.
    Cancelled,
}

macro_rules! names {
    ($ty:ty { $($variant:ident = $name:literal),* $(,)? }) => {
        impl $ty {
            /// The name the journal stores and the CLI prints.
            pub fn as_str(self) -> &'static str {
                match self { $(<$ty>::$variant => $name),* }
            }

            /// Every value, in declaration order.
            pub const ALL: &'static [$ty] = &[$(<$ty>::$variant),*];
        }

        impl std::str::FromStr for $ty {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($name => Ok(<$ty>::$variant),)*
                    other => {
                        let known: Vec<&str> = vec![$($name),*];
                        Err(format!("unknown status `{other}` (one of {})", known.join(", ")))
                    }
                }
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

names!(AttemptStatus {
    Started = "started",
    Completed = "completed",
    Failed = "failed",
    Interrupted = "interrupted",
    Cancelled = "cancelled",
});

names!(RunState {
    Accepted = "accepted",
    Running = "running",
    Interrupted = "interrupted",
    Succeeded = "succeeded",
    Failed = "failed",
    Cancelled = "cancelled",
});

impl RunState {
    /// Whether the run still has to run (a host resumes it).
    ///
    /// ```
    /// use stepbox::store::RunState;
    /// assert!(RunState::Interrupted.is_incomplete());
    /// assert!(!RunState::Failed.is_incomplete());
    /// ```
    pub fn is_incomplete(self) -> bool {
        matches!(
            self,
            RunState::Accepted | RunState::Running | RunState::Interrupted
        )
    }
}

/// A workflow as a run started with it: the definition's text and every
/// step's component, so that the run resumes with the same code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkflowRecord {
    /// A digest of everything below: runs refer to their workflow by it.
    pub digest: String,
    /// The workflow's name.
    pub name: String,
    /// The file it was read from; components are resolved against its directory.
    pub path: String,
    /// The file's text.
    pub source: String,
    /// Per step, in file order, the component it runs.
    pub components: Vec<ComponentRecord>,
}

/// A component, by digest, with its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentRecord {
    /// The SHA-256 of `bytes`, in hex.
    pub digest: String,
    /// A name for messages (the file name).
    pub name: String,
    /// The component itself.
    pub bytes: Arc<[u8]>,
}
