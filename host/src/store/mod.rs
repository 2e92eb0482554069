//! The journal: what happened to every accepted run, durably, so that a host
//! that crashes, is killed or is upgraded loses nothing.
//!
//! Three layers, each with one job:
//!
//! - the events ([`Event`]) a scheduler records: a workflow defined, a run
//!   accepted, an attempt started and ended, a state write, a run ended;
//! - the [`Store`] trait, which writes batches of events in one transaction
//!   and answers the questions recovery and operators ask (incomplete runs,
//!   a run's history, listings, retention). Every line of SQL lives behind
//!   it: [`SqliteStore`] now, a PostgreSQL store for several hosts later.
//!   The data model assumes no single process: runs carry an owner and a
//!   lease, and run ids are handed out by the store;
//! - the [`Journal`], one writer thread that gathers the events of many runs
//!   into each transaction (group commit) and tells each waiter when its
//!   events are durable, at the [`Durability`] level chosen.
//!
//! ```no_run
//! # async fn demo() -> Result<(), stepbox::store::StoreError> {
//! use stepbox::store::{Durability, Journal, JournalConfig, SqliteStore};
//!
//! let store = SqliteStore::open(".stepbox/stepbox.db".as_ref(), Durability::Strict)?;
//! let (journal, incomplete) = Journal::start(Box::new(store), JournalConfig::default())?;
//! println!("{} runs to resume", incomplete.len());
//! journal.close()?;
//! # Ok(()) }
//! ```

mod error;
mod event;
mod journal;
mod sqlite;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use self::error::StoreError;
pub use self::event::{
    AttemptEnd, AttemptLimits, AttemptStatus, AttemptUsage, ComponentRecord, Event, RunState, WorkflowRecord,
};
pub use self::journal::{CommitObserver, Journal, JournalConfig, JournalStats, Ticket};
pub use self::sqlite::SqliteStore;

/// A run's id: unique in its store and stable across restarts.
pub type RunId = u64;

/// Milliseconds since the Unix epoch: how the journal records instants.
pub type Millis = i64;

/// Now, as the journal records it.
///
/// ```
/// assert!(stepbox::store::now_millis() > 1_700_000_000_000);
/// ```
pub fn now_millis() -> Millis {
    millis(SystemTime::now())
}

/// Now, in microseconds since the Unix epoch.
pub fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// `t` as the journal records it.
pub fn millis(t: SystemTime) -> Millis {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// What a completed step's journaling promises.
///
/// | level | a step's completion | an accepted run | cost |
/// |---|---|---|---|
/// | `strict` | durable (fsynced) before any step that depends on it starts, and before its run reports | durable before it starts | one fsync per commit, shared by every run waiting on it |
/// | `batched` | durable within the batch window; a crash may lose the last window, whose steps then run again | durable before it starts | one fsync per window |
/// | `memory` | nothing is written; a crash loses every run in flight | not recorded | none |
///
/// Under every level a step may run more than once (at least once): a step
/// interrupted by a crash runs again on resume. Steps make that safe with
/// their idempotency key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Durability {
    /// Completions are durable before anything depends on them.
    #[default]
    Strict,
    /// Completions are durable within a bounded window.
    Batched,
    /// No journal.
    Memory,
}

impl Durability {
    /// The level's name, as in `stepbox.toml` and `--durability`.
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Strict => "strict",
            Durability::Batched => "batched",
            Durability::Memory => "memory",
        }
    }
}

impl std::str::FromStr for Durability {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "strict" => Ok(Durability::Strict),
            "batched" => Ok(Durability::Batched),
            "memory" => Ok(Durability::Memory),
            other => Err(format!(
                "unknown durability `{other}` (strict, batched or memory)"
            )),
        }
    }
}

/// One run, as `stepbox runs` lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RunSummary {
    /// The run's id.
    pub id: RunId,
    /// Its workflow's name.
    pub workflow: String,
    /// The digest of the definition and components it runs.
    pub workflow_digest: String,
    /// Where it is.
    pub status: RunState,
    /// When it was accepted.
    pub accepted_at: Millis,
    /// When it was first admitted, if it was.
    pub started_at: Option<Millis>,
    /// When it reached a final status.
    pub finished_at: Option<Millis>,
    /// Why it failed, in one line.
    pub error: Option<String>,
    /// Whether retention removed its payloads (input, output, state, logs).
    pub collected: bool,
}

/// One attempt at one unit of work (a step, or an item of a `for_each`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AttemptRecord {
    /// The step's id.
    pub step: String,
    /// The item's index, for a `for_each` step.
    pub item: Option<u32>,
    /// The attempt's number, from 1, across restarts.
    pub attempt: u32,
    /// The component it ran, once ended.
    pub component: Option<String>,
    /// The limits it ran under, once ended.
    pub limits: AttemptLimits,
    /// How it ended, or [`AttemptStatus::Started`] if it never did.
    pub status: AttemptStatus,
    /// Whether this attempt's ending was the unit's last word (no retry followed).
    pub last: bool,
    /// The outcome kind (`completed`, `timeout`...), once ended.
    pub outcome: Option<String>,
    /// The outcome in one line, when it did not complete.
    pub message: Option<String>,
    /// Which level of the timeout hierarchy fired, for a timeout (none in
    /// journals from before levels were recorded).
    pub timeout_level: Option<crate::policy::TimeoutLevel>,
    /// When it started.
    pub started_at: Millis,
    /// When it started, in microseconds since the Unix epoch.
    pub started_us: i64,
    /// When it ended.
    pub finished_at: Option<Millis>,
    /// What it used.
    pub usage: AttemptUsage,
    /// Its output, unless collected.
    pub output: Option<Vec<u8>>,
    /// Its log, unless empty or collected.
    pub log: Option<String>,
}

/// A run's whole history, as `stepbox show` prints it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RunHistory {
    /// The run.
    pub summary: RunSummary,
    /// Its input, unless collected.
    pub input: Option<Vec<u8>>,
    /// Its output, unless collected or not succeeded.
    pub output: Option<Vec<u8>>,
    /// Every attempt, in the order they started.
    pub attempts: Vec<AttemptRecord>,
    /// Its state at the end, unless collected.
    pub state: Vec<(String, String)>,
}

/// An incomplete run claimed for resumption.
#[derive(Debug, Clone)]
pub struct RecoveredRun {
    /// The run's id.
    pub id: RunId,
    /// The definition and components it started with, or why they are gone.
    pub workflow: Result<std::sync::Arc<WorkflowRecord>, String>,
    /// Its input.
    pub input: Vec<u8>,
    /// The last attempt of every unit of work that ended for good (completed,
    /// or failed with no retry to follow): these do not run again.
    pub done: Vec<AttemptRecord>,
    /// The highest attempt number recorded per unit (step id, item), so that
    /// attempt numbers go on counting.
    pub attempts: Vec<(String, Option<u32>, u32)>,
    /// Its state as last written.
    pub state: Vec<(String, String)>,
}

/// A workflow's definition as a run recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Definition {
    /// The workflow's name.
    pub name: String,
    /// The file it was read from.
    pub path: String,
    /// The file's text.
    pub source: String,
}

/// Which runs [`Store::runs`] lists.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    /// Only runs in these states; all when empty.
    pub status: Vec<RunState>,
    /// Only runs of this workflow (by name).
    pub workflow: Option<String>,
    /// At most this many, newest first; all when `None`.
    pub limit: Option<usize>,
}

/// What retention removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcStats {
    /// Runs whose payloads were removed.
    pub runs: u64,
    /// Bytes the database file shrank by.
    pub bytes_freed: u64,
}

/// Where a journal's events go, and where recovery and operators read them.
///
/// Implementations write each batch in one transaction, so a crash leaves
/// either all of a batch or none of it. They assume nothing about which
/// process wrote what: runs carry an owner and a lease, and run ids come from
/// [`Store::next_run_id`].
pub trait Store: Send {
    /// The first run id no run of this store has: the journal counts up from it.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] if the store cannot be read.
    fn next_run_id(&mut self) -> Result<RunId, StoreError>;

    /// Writes `events` in one transaction, durably as the store's level says.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] (disk full, read-only...): none of the events are written.
    fn write(&mut self, events: &[Event]) -> Result<(), StoreError>;

    /// Extends the lease of every incomplete run `owner` holds to `until`.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] if the store cannot be written.
    fn renew_leases(&mut self, owner: &str, until: Millis) -> Result<(), StoreError>;

    /// Claims, for `owner` until `until`, every incomplete run no live host
    /// holds, and returns what resuming each one needs.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] if the store cannot be read or written.
    fn claim_incomplete(&mut self, owner: &str, until: Millis) -> Result<Vec<RecoveredRun>, StoreError>;

    /// Runs matching `filter`, newest first.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] if the store cannot be read.
    fn runs(&mut self, filter: &RunFilter) -> Result<Vec<RunSummary>, StoreError>;

    /// Run `id`'s history, if there is such a run.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] if the store cannot be read.
    fn history(&mut self, id: RunId) -> Result<Option<RunHistory>, StoreError>;

    /// The definition (name, file, text) a workflow digest stands for,
    /// without its components.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] if the store cannot be read.
    fn definition(&mut self, digest: &str) -> Result<Option<Definition>, StoreError>;

    /// Calls `visit` with every attempt that ended at or after `since`,
    /// without its output and log.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] if the store cannot be read.
    fn scan_attempts(
        &mut self,
        since: Millis,
        visit: &mut dyn FnMut(&AttemptRecord),
    ) -> Result<(), StoreError>;

    /// How many runs are in each state.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] if the store cannot be read.
    fn count_runs(&mut self) -> Result<Vec<(RunState, u64)>, StoreError>;

    /// Removes the payloads (input, output, state, logs) of runs that
    /// finished before `before`, keeping their audit record, and reclaims
    /// the space.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] if the store cannot be written.
    fn collect(&mut self, before: Millis) -> Result<GcStats, StoreError>;
}

/// How long a host's claim on a run lasts without renewal.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);
