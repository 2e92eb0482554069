//! The two sides of a store: one writer per host, owned by its
//! [`Journal`](super::Journal), and readers for everyone else.
//!
//! These traits are the contract every store implements (SQLite now,
//! PostgreSQL next) and [`conformance`](super::conformance) checks. They
//! assume nothing about which process wrote what: runs carry an owner and a
//! lease, ids come from the store, and every write is fenced by its run's
//! owner.

use std::ops::Range;

use super::{
    AttemptRecord, Definition, Event, GcStats, HostSummary, Millis, RecoveredRun, RunFilter, RunHistory,
    RunId, RunState, RunSummary, StoreError,
};

/// The writing side of a store: one per host, owned by its journal.
///
/// Several writers, in several processes, may share one store where the
/// implementation allows it (a SQLite file has one writer at a time, and
/// says so with [`StoreError::Locked`]). Between them, ownership of runs
/// keeps order: a run is owned by the writer that accepted or last claimed
/// it, a lease says how long that claim lasts without renewal, and a writer
/// may write only the runs it owns.
///
/// Owners are names unique per host process start (see
/// [`JournalConfig::owner`](super::JournalConfig::owner)): a restarted host
/// is a new owner, never mistaken for the one before.
///
/// ```no_run
/// use stepbox::store::{Durability, Event, SqliteStore, StoreWriter, now_millis};
///
/// let mut store = SqliteStore::open("j.db".as_ref(), Durability::Strict)?;
/// let run = store.allocate_run_ids(1)?.start;
/// let report = store.write(
///     "host-a",
///     &[Event::RunEnded {
///         run,
///         status: stepbox::store::RunState::Cancelled,
///         output: None,
///         error: None,
///         started: None,
///         at: now_millis(),
///     }],
/// )?;
/// // Never accepted, so not host-a's: refused, not applied.
/// assert_eq!(report.refused_events(), 1);
/// # Ok::<(), stepbox::store::StoreError>(())
/// ```
pub trait StoreWriter: Send {
    /// Writes `events`, in order, in one transaction, as `owner`: after a
    /// crash, all of a batch is in the store or none of it. Committed as
    /// durably as the store's [`Durability`](super::Durability) says.
    ///
    /// **Fencing.** [`Event::RunAccepted`] creates its run owned by
    /// `owner`. Every other event about a run is applied only if `owner`
    /// owns the run as the transaction runs (or accepts it earlier in the
    /// batch); otherwise it is refused, not applied, and the rest of the
    /// batch is written. A run is not `owner`'s once another writer has
    /// claimed it (after `owner`'s lease ended), once `owner` released it,
    /// or if it is not in the store at all. [`Event::WorkflowDefined`]
    /// belongs to no run and is always applied.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] (disk full, read-only...): none of the events are
    /// written. Accepting a run id that is already in the store is an
    /// error too: ids come from [`StoreWriter::allocate_run_ids`], never
    /// reused.
    fn write(&mut self, owner: &str, events: &[Event]) -> Result<WriteReport, StoreError>;

    /// Hands out `count` new run ids, in one block: no other call, by this
    /// writer or any other on the same store, returns any of them, and each
    /// is greater than the id of every run in the store. A fresh store's
    /// first block starts at 1. A `count` of 0 gives an empty range.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] if the store cannot be written.
    fn allocate_run_ids(&mut self, count: u64) -> Result<Range<RunId>, StoreError>;

    /// Gives back `unused`, the unused end of the last block this writer
    /// was handed, so that the next block starts with it: a host that
    /// stops gracefully leaves no gap, and a single host's ids stay 1, 2,
    /// 3... across restarts. Best effort: if any block was handed out after
    /// it (by any writer), nothing is given back. Returns whether it was.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] if the store cannot be written.
    fn release_run_ids(&mut self, unused: Range<RunId>) -> Result<bool, StoreError>;

    /// Extends to `until` the lease of every incomplete run `owner` still
    /// owns (a run another writer claimed is not renewed), and returns how
    /// many it holds. An `until` already past ends them (as a host paused
    /// past its lease).
    ///
    /// A lease is its owner's: the runs of one owner share one, renewed at
    /// once. A store shared by hosts keeps it as one heartbeat row per host
    /// (PostgreSQL), so that a renewal costs one row whatever the host
    /// runs; a store one host owns alone may keep it per run (SQLite).
    ///
    /// # Errors
    ///
    /// A [`StoreError`] if the store cannot be written.
    fn renew_leases(&mut self, owner: &str, until: Millis) -> Result<u64, StoreError>;

    /// Claims for `owner`, until `until`, every incomplete run that no
    /// live host holds: whose lease has ended, that its owner released, or
    /// that `owner` holds already. A run under another owner's live lease is
    /// left alone. Returns what resuming each claimed run needs (completed
    /// runs never come back); from now on only `owner` writes them.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] if the store cannot be read or written.
    fn claim_incomplete(&mut self, owner: &str, until: Millis) -> Result<Vec<RecoveredRun>, StoreError>;

    /// Claims for `owner`, until `until`, at most `limit` incomplete runs
    /// of *other* owners that no live host holds (their lease ended, or
    /// their owner released them), oldest first, and returns what resuming
    /// each needs: how a host that shares a store takes over the work of
    /// one that died or stopped. Never returns runs `owner` holds already,
    /// nor one that another claimant takes at the same moment.
    ///
    /// A store one host owns alone (a SQLite file, whose lock proves it)
    /// has no such runs while it is open: the default claims none.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] if the store cannot be read or written.
    fn claim_orphans(
        &mut self,
        owner: &str,
        until: Millis,
        limit: usize,
    ) -> Result<Vec<RecoveredRun>, StoreError> {
        let _ = (owner, until, limit);
        Ok(Vec::new())
    }

    /// Gives up every incomplete run `owner` holds, so that another host
    /// may claim them at once rather than when their leases end: for a
    /// host that stops gracefully. `owner`'s later writes for them are
    /// refused. Returns how many runs it gave up.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] if the store cannot be written.
    fn release_leases(&mut self, owner: &str) -> Result<u64, StoreError>;

    /// Removes the payloads (input, output, state, logs) of runs that
    /// finished before `before`, keeping their audit record (the runs and
    /// their attempts are still listed, marked collected), and reclaims the
    /// space.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] if the store cannot be written.
    fn collect(&mut self, before: Millis) -> Result<GcStats, StoreError>;
}

/// The query side of a store, through `&self`: share one between any
/// number of tasks and threads (in an `Arc`), while a writer writes.
///
/// Each call reads one consistent view: it sees every batch committed
/// before it began, each whole or not at all, never part of a batch.
///
/// ```no_run
/// use std::sync::Arc;
/// use stepbox::store::{SqliteReader, StoreReader};
///
/// let reader: Arc<dyn StoreReader> = Arc::new(SqliteReader::open("j.db".as_ref())?);
/// let counts = std::thread::spawn({
///     let reader = Arc::clone(&reader);
///     move || reader.count_runs()
/// });
/// println!("{:?} / {:?}", reader.history(1)?.map(|h| h.summary.status), counts.join().unwrap()?);
/// # Ok::<(), stepbox::store::StoreError>(())
/// ```
pub trait StoreReader: Send + Sync {
    /// Runs matching `filter`, newest (highest id) first.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] if the store cannot be read.
    fn runs(&self, filter: &RunFilter) -> Result<Vec<RunSummary>, StoreError>;

    /// Run `id`'s history (its summary, payloads, attempts in the order they
    /// started, and state by key), if there is such a run.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] if the store cannot be read.
    fn history(&self, id: RunId) -> Result<Option<RunHistory>, StoreError>;

    /// The definition (name, file, text) a workflow digest stands for,
    /// without its components.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] if the store cannot be read.
    fn definition(&self, digest: &str) -> Result<Option<Definition>, StoreError>;

    /// Calls `visit` with every attempt that ended at or after `since`,
    /// without its output and log.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] if the store cannot be read.
    fn scan_attempts(&self, since: Millis, visit: &mut dyn FnMut(&AttemptRecord)) -> Result<(), StoreError>;

    /// How many runs are in each state (states with none are left out).
    ///
    /// # Errors
    ///
    /// A [`StoreError`] if the store cannot be read.
    fn count_runs(&self) -> Result<Vec<(RunState, u64)>, StoreError>;

    /// How many runs matching `filter` are in each state (states with none
    /// are left out); the filter's status, cursor and limit are ignored.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] if the store cannot be read.
    fn count_matching(&self, filter: &RunFilter) -> Result<Vec<(RunState, u64)>, StoreError>;

    /// The first run accepted with idempotency key `key` for `tenant`
    /// (`None`: runs with no tenant), if any. Its journal is the one writer
    /// of its runs' acceptances, so it checks here before accepting a run
    /// with a key.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] if the store cannot be read.
    fn run_by_key(&self, tenant: Option<&str>, key: &str) -> Result<Option<RunId>, StoreError>;

    /// How many runs of `tenant` are accepted and not finished, whichever
    /// host holds them (or none, queued): what a tenant's quota of live
    /// runs counts on a store that hosts share. Read from the index of
    /// unfinished runs, so its cost does not grow with the history.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] if the store cannot be read.
    fn unfinished_runs_of(&self, tenant: &str) -> Result<u64, StoreError>;

    /// The hosts writing to the store: each owner of incomplete runs, and
    /// (where the store keeps heartbeats) each host whose lease is live,
    /// with how many incomplete runs it owns; by owner name.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] if the store cannot be read.
    fn hosts(&self) -> Result<Vec<HostSummary>, StoreError>;

    /// Its pool of database connections, where it keeps one (PostgreSQL):
    /// for the `stepbox_db_pool_*` metrics.
    fn pool(&self) -> Option<PoolState> {
        None
    }

    /// Where a server keeps what tenants upload, if this store is one that
    /// several hosts share (PostgreSQL): there, a workflow uploaded to one
    /// host can be submitted to any. A store of one host (SQLite) has
    /// none, and its server keeps uploads on its own disk.
    fn uploads(&self) -> Option<&dyn UploadStore> {
        None
    }
}

/// What tenants uploaded to servers sharing a store: components by digest
/// and workflows by name, each within its tenant.
///
/// Uploads are rare and small beside the journal, and go through the
/// reader's connections, not the writer's: an upload never waits behind a
/// batch of events.
pub trait UploadStore: Send + Sync {
    /// Keeps component `bytes` as `digest` (`sha256:HEX` of the bytes) for
    /// `tenant`; true if the tenant did not have it.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] if the store cannot be written.
    fn put_component(&self, tenant: &str, digest: &str, bytes: &[u8]) -> Result<bool, StoreError>;

    /// Component `digest` of `tenant`, if it was uploaded.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] if the store cannot be read.
    fn component(&self, tenant: &str, digest: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Keeps workflow `name` of `tenant` as uploaded, replacing the one of
    /// that name; returns its version, higher than any before it.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] if the store cannot be written.
    fn put_workflow(&self, tenant: &str, name: &str, text: &str, json: bool) -> Result<i64, StoreError>;

    /// Workflow `name` of `tenant` as last uploaded.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] if the store cannot be read.
    fn workflow(&self, tenant: &str, name: &str) -> Result<Option<StoredWorkflow>, StoreError>;

    /// The version of workflow `name` of `tenant`: what a host that
    /// prepared it checks before it uses it again.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] if the store cannot be read.
    fn workflow_version(&self, tenant: &str, name: &str) -> Result<Option<i64>, StoreError>;

    /// The names of `tenant`'s workflows, sorted.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] if the store cannot be read.
    fn workflow_names(&self, tenant: &str) -> Result<Vec<String>, StoreError>;
}

/// A workflow as a tenant uploaded it, from an [`UploadStore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredWorkflow {
    /// Its text.
    pub text: String,
    /// Whether it is JSON (else YAML).
    pub json: bool,
    /// Its version: each upload of the name gets a higher one.
    pub version: i64,
}

/// A reader's connection pool, as it is now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolState {
    /// Connections open.
    pub connections: u32,
    /// Of them, idle.
    pub idle: u32,
    /// The most it opens.
    pub max: u32,
}

/// What a [`StoreWriter::write`] refused.
///
/// ```
/// use stepbox::store::{Refused, WriteReport};
/// let report = WriteReport { refused: vec![Refused { run: 7, events: 3 }] };
/// assert_eq!(report.refused_events(), 3);
/// assert!(!WriteReport::default().refused_any());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteReport {
    /// The runs whose events were refused because the writer does not own
    /// them, by id.
    pub refused: Vec<Refused>,
}

/// A run whose events a write refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// The run.
    pub run: RunId,
    /// How many of the batch's events were about it.
    pub events: usize,
}

impl WriteReport {
    /// How many events were refused, in all.
    pub fn refused_events(&self) -> usize {
        self.refused.iter().map(|r| r.events).sum()
    }

    /// Whether anything was refused.
    pub fn refused_any(&self) -> bool {
        !self.refused.is_empty()
    }
}
