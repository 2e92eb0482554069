//! The journal: what happened to every accepted run, durably, so that a host
//! that crashes, is killed or is upgraded loses nothing.
//!
//! Three layers, each with one job:
//!
//! - the events ([`Event`]) a scheduler records: a workflow defined, a run
//!   accepted, an attempt started and ended, a state write, a run ended;
//! - a store's two sides: the [`StoreWriter`] (one per host) writes
//!   batches of events in one transaction, each fenced by its run's owner,
//!   hands out run ids, and keeps leases and claims; the [`StoreReader`]
//!   answers operators' questions (a run's history, listings, counts)
//!   through `&self`, from many threads at once. Every line of SQL lives
//!   behind them: [`SqliteStore`] and [`SqliteReader`] now, a PostgreSQL
//!   store for several hosts later, and [`conformance`] is the suite every
//!   store must pass. The data model assumes no single process: runs carry
//!   an owner and a lease, and run ids are handed out by the store;
//! - the [`Journal`], one writer thread that gathers the events of many runs
//!   into each transaction (group commit) and tells each waiter when its
//!   events are durable, at the [`Durability`] level chosen.
//!
//! ```no_run
//! # async fn demo() -> Result<(), stepbox::store::StoreError> {
//! use stepbox::store::{Durability, Journal, JournalConfig, SqliteReader, SqliteStore, StoreReader};
//!
//! let path = ".stepbox/stepbox.db".as_ref();
//! let store = SqliteStore::open(path, Durability::Strict)?;
//! let (journal, incomplete) = Journal::start(Box::new(store), JournalConfig::default())?;
//! println!("{} runs to resume", incomplete.len());
//! let reader = SqliteReader::open(path)?;
//! println!("{:?}", reader.count_runs()?);
//! journal.close()?;
//! # Ok(()) }
//! ```

pub mod conformance;
mod error;
mod event;
mod journal;
mod postgres;
mod records;
mod sqlite;
mod traits;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use self::error::StoreError;
pub use self::event::{
    AttemptEnd, AttemptLimits, AttemptStatus, ComponentRecord, Event, RunState, WorkflowRecord,
};
pub use self::journal::{CommitObserver, Journal, JournalConfig, JournalStats, Ticket};
pub use self::postgres::{DEFAULT_POOL, PostgresReader, PostgresStore, listen_for_work, redact};
pub use self::records::{
    AttemptRecord, Definition, GcStats, HostSummary, RecoveredRun, RunFilter, RunHistory, RunSummary,
    WorkflowUnavailable,
};
pub use self::sqlite::{SqliteReader, SqliteStore};
pub use self::traits::{
    PoolState, Refused, StoreReader, StoreWriter, StoredWorkflow, UploadStore, WriteReport,
};

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
/// | `strict` | durable (fsynced) before its run reports, and before any step that depends on it starts if its workflow grants any step outbound HTTP | durable before it starts | one fsync per commit, shared by every run waiting on it |
/// | `batched` | durable within the batch window; a crash may lose the last window, whose steps then run again | durable before it starts | one fsync per window |
/// | `memory` | nothing is written; a crash loses every run in flight | not recorded | none |
///
/// Under every level a step may run more than once (at least once): a step
/// interrupted by a crash runs again on resume. Steps make that safe with
/// their idempotency key.
///
/// A step that cannot act outside the host (none of its workflow's steps
/// is granted outbound HTTP) reaches the outside only through the journal,
/// after its needs' completions: a crash that loses those loses what it
/// did too. So under `strict` such a workflow's steps do not wait for
/// commits between them; only its run's report does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Durability {
    /// Completions are durable before anything outside the host can depend on them.
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

/// How long a host's claim on a run lasts without renewal.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);
